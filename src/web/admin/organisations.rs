//! Organisations named on forms (admins): find one, correct its name.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;

use crate::storage;
use crate::web::auth::{CurrentUser, check_csrf, render};
use crate::web::{Access, AppState, Route, WebError};

pub(in crate::web) fn routes() -> Vec<Route> {
    vec![
        Route::get("/admin/organisations", Access::Admin, organisations),
        Route::post("/admin/organisations/{ods}", Access::Admin, edit_organisation),
    ]
}

#[derive(serde::Deserialize, Default)]
pub struct OrgSearch {
    #[serde(default)]
    q: String,
}

pub async fn organisations(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Query(search): Query<OrgSearch>,
) -> Result<Response, WebError> {
    let mut conn = state.engine.db().pool.acquire().await?;
    let orgs = storage::search_organisations(&mut conn, &search.q, 500).await?;
    drop(conn);
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    context.insert("orgs", &orgs);
    context.insert("q", &search.q);
    Ok((token, render(&state, "organisations.html.tera", &context)?).into_response())
}

#[derive(serde::Deserialize)]
pub struct OrgForm {
    csrf: String,
    name: String,
}

pub async fn edit_organisation(
    State(state): State<AppState>,
    _user: CurrentUser,
    token: CsrfToken,
    Path(ods): Path<String>,
    Form(form): Form<OrgForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    if form.name.trim().is_empty() {
        return Err(WebError::BadRequest("An organisation needs a name.".into()));
    }
    let mut conn = state.engine.db().pool.acquire().await?;
    if !storage::rename_organisation(&mut conn, &ods, form.name.trim(), state.engine.now_ms()).await? {
        return Err(WebError::NotFound);
    }
    Ok(Redirect::to("/admin/organisations").into_response())
}
