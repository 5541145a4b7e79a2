//! The one-time credential link a new user opens from their NHS mailbox: a page with a
//! button (a mail scanner's prefetch of the link must not spend it), then the password, shown
//! once and never again. Public: the link's token is the only key, and it works once.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum_csrf::CsrfToken;
use secrecy::ExposeSecret;

use super::auth::{CsrfOnly, check_csrf, csrf_value, render};
use super::{Access, AppState, Route, WebError};
use crate::engine::credentials::LinkState;

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/credential/{token}", Access::Public, credential_page),
        Route::post("/credential/{token}", Access::Public, reveal_credential),
    ]
}

/// The link's page: a button while the link works, and what to do when it does not.
pub async fn credential_page(
    State(state): State<AppState>,
    Path(link): Path<String>,
    token: CsrfToken,
) -> Result<Response, WebError> {
    let open = state.engine.credential_link_state(&link).await? == LinkState::Open;
    let mut context = tera::Context::new();
    context.insert("csrf", &csrf_value(&token)?);
    context.insert("open", &open);
    let status = if open {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::GONE
    };
    Ok((status, token, render(&state, "credential.html.tera", &context)?).into_response())
}

/// Spends the link and shows the password, once.
pub async fn reveal_credential(
    State(state): State<AppState>,
    Path(link): Path<String>,
    token: CsrfToken,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let revealed = state.engine.reveal_credential(&link).await?;
    let mut context = tera::Context::new();
    context.insert("csrf", &csrf_value(&token)?);
    context.insert("open", &false);
    let Some(revealed) = revealed else {
        return Ok((
            axum::http::StatusCode::GONE,
            token,
            render(&state, "credential.html.tera", &context)?,
        )
            .into_response());
    };
    context.insert("secret", revealed.secret.expose_secret());
    context.insert(
        "expires_on",
        &chrono::DateTime::from_timestamp_millis(revealed.expires_at)
            .map(|t| t.with_timezone(&chrono::Local).format("%A %-d %B %Y").to_string()),
    );
    Ok((token, render(&state, "credential.html.tera", &context)?).into_response())
}
