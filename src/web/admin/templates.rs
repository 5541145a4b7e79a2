//! Every email template, rendered with a made-up case of a chosen workflow, so that admins
//! (and managers) can read what practices and managers will receive before it is sent.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum_csrf::CsrfToken;

use crate::web::auth::{CurrentUser, render};
use crate::web::view::base_context;
use crate::web::{Access, AppState, Route, WebError};

pub(in crate::web) fn routes() -> Vec<Route> {
    vec![Route::get("/admin/templates", Access::Manager, templates_page)]
}

#[derive(serde::Deserialize, Default)]
pub struct PreviewQuery {
    #[serde(default)]
    workflow: String,
}

pub async fn templates_page(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Query(query): Query<PreviewQuery>,
) -> Result<Response, WebError> {
    let workflows = state.engine.workflows();
    let workflow = workflows
        .get(&query.workflow)
        .or_else(|| workflows.iter().next())
        .ok_or(WebError::NotFound)?;
    let now = state.engine.clock().now();
    let due = crate::engine::change::When {
        now,
        calendar: state.engine.calendar(),
    }
    .working_days_later(workflow.sla.target_working_days);
    let sample = crate::engine::notify::preview_context(workflow, now, due);
    let previews: Vec<serde_json::Value> = state
        .mail
        .names()
        .into_iter()
        .map(|name| match state.mail.render(&name, &sample) {
            Ok(mail) => serde_json::json!({ "name": name, "subject": mail.subject, "text": mail.text }),
            Err(error) => serde_json::json!({ "name": name, "error": error.to_string() }),
        })
        .collect();
    let mut context = base_context(&user, &token)?;
    context.insert("previews", &previews);
    context.insert("workflow", &workflow.name);
    context.insert(
        "workflows",
        &workflows.iter().map(|w| (&w.name, &w.title)).collect::<Vec<_>>(),
    );
    Ok((token, render(&state, "templates.html.tera", &context)?).into_response())
}
