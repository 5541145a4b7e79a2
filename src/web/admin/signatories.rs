//! The signatory register (admins): who may sign for an organisation; add one, take one off.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;

use crate::signatories::KnownSignatory;
use crate::storage;
use crate::web::auth::{CurrentUser, check_csrf, render};
use crate::web::{Access, AppState, Route, WebError};

pub(in crate::web) fn routes() -> Vec<Route> {
    vec![
        Route::get("/admin/signatories", Access::Admin, register),
        Route::post("/admin/signatories", Access::Admin, add),
        Route::post("/admin/signatories/{id}/remove", Access::Admin, remove),
    ]
}

#[derive(serde::Deserialize, Default)]
pub struct RegisterQuery {
    #[serde(default)]
    ods: String,
}

pub async fn register(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Query(query): Query<RegisterQuery>,
) -> Result<Response, WebError> {
    let ods = query.ods.trim().to_ascii_uppercase();
    let mut conn = state.engine.db().pool.acquire().await?;
    let rows = storage::register_rows(&mut conn, Some(ods.as_str()).filter(|o| !o.is_empty()), 500).await?;
    drop(conn);
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    context.insert("rows", &rows);
    context.insert("ods", &ods);
    Ok((token, render(&state, "signatories.html.tera", &context)?).into_response())
}

#[derive(serde::Deserialize)]
pub struct AddForm {
    csrf: String,
    ods_code: String,
    role: String,
    name: String,
    #[serde(default)]
    email: String,
}

/// Adds a signatory, recorded as added by this admin.
pub async fn add(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Form(form): Form<AddForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let code = crate::domain::OdsCode::parse(&form.ods_code)
        .ok_or_else(|| WebError::BadRequest(format!("“{}” is not an ODS code.", form.ods_code.trim())))?;
    let (role, name) = (
        crate::domain::storable_text(form.role.trim()),
        crate::domain::storable_text(form.name.trim()),
    );
    if role.is_empty() || name.is_empty() {
        return Err(WebError::BadRequest("A signatory needs a role and a name.".into()));
    }
    let email = Some(form.email.trim()).filter(|e| !e.is_empty());
    if let Some(email) = email
        && crate::domain::EmailAddress::parse(email).is_none()
    {
        return Err(WebError::BadRequest(format!("“{email}” is not an email address.")));
    }
    let entry = storage::NewSignatory {
        signatory: KnownSignatory {
            ods_code: code.as_str().to_string(),
            role,
            name,
            email: email.map(str::to_string),
            source: "admin".into(),
        },
        verified_by: Some(user.0.email.clone()),
        note: Some(format!("added by {}", user.0.email)),
        case_reference: None,
    };
    let mut conn = state.engine.db().pool.acquire().await?;
    storage::add_signatories(&mut conn, &[entry], state.engine.now_ms()).await?;
    tracing::info!(actor = %user.0.email, ods = %code.as_str(), "signatory added");
    Ok(Redirect::to(&format!("/admin/signatories?ods={}", code.as_str())).into_response())
}

#[derive(serde::Deserialize)]
pub struct RemoveForm {
    csrf: String,
    #[serde(default)]
    ods: String,
}

/// Takes a signatory off the register (kept, inactive, for the record).
pub async fn remove(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(id): Path<i64>,
    Form(form): Form<RemoveForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let mut conn = state.engine.db().pool.acquire().await?;
    if !storage::deactivate_signatory(&mut conn, id, state.engine.now_ms()).await? {
        return Err(WebError::NotFound);
    }
    tracing::info!(actor = %user.0.email, signatory = id, "signatory removed");
    let ods: String = form.ods.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    Ok(Redirect::to(&format!("/admin/signatories?ods={ods}")).into_response())
}
