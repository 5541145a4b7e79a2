//! What the pages load besides themselves (the stylesheet, the keyboard shortcuts), and the
//! health check a load balancer asks.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, WebError};

use super::{Access, Route};

const STYLESHEET: &str = include_str!("../../templates/ui/app.css");
const SCRIPT: &str = include_str!("../../templates/ui/app.js");

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/health", Access::Public, health),
        Route::get("/static/app.css", Access::Public, stylesheet),
        Route::get("/static/app.js", Access::Public, script),
    ]
}

/// Keyboard shortcuts; the pages work without it.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

pub async fn health(State(state): State<AppState>) -> Result<Response, WebError> {
    state.engine.db().ping().await?;
    Ok((StatusCode::OK, "ok").into_response())
}

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}
