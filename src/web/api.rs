//! The JSON API: the queue and a case, for other tools. Same sign-in and roles as the pages.

use axum::Json;
use axum::extract::{Path, Query, State};

use super::auth::CurrentUser;
use super::error::ApiError;
use super::queue::{QueueFilter, load_queue};
use super::{Access, AppState, Route, WebError};
use crate::storage;

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/cases", Access::Staff, list_cases),
        Route::get("/api/cases/{reference}", Access::Staff, show_case),
        Route::get("/api/health", Access::Staff, health),
    ]
}

pub async fn list_cases(
    State(state): State<AppState>,
    user: Result<CurrentUser, WebError>,
    Query(filter): Query<QueueFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user?;
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let (rows, next) = load_queue(&state, &mut conn, &filter, user.0.id).await?;
    drop(conn);
    Ok(Json(serde_json::json!({ "cases": rows, "next": next })))
}

pub async fn show_case(
    State(state): State<AppState>,
    user: Result<CurrentUser, WebError>,
    Path(reference): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user?;
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let case = storage::case_by_reference(&mut conn, &reference)
        .await?
        .ok_or(WebError::NotFound)?;
    let events = storage::events_for_case(&mut conn, case.id).await?;
    let timers = storage::timers_for_case(&mut conn, case.id).await?;
    let mail = storage::outbox_for_case(&mut conn, case.id).await?;
    Ok(Json(
        serde_json::json!({ "case": case, "events": events, "timers": timers, "mail": mail }),
    ))
}

/// What the workers are doing: each mailbox's last poll, backlog and error; messages not
/// ingested; outbound mail by status; timers waiting. For dashboards and monitoring.
pub async fn health(
    State(state): State<AppState>,
    user: Result<CurrentUser, WebError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user?;
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let mailboxes = storage::mailbox_health(&mut conn).await?;
    let ingest_errors = storage::open_ingest_errors(&mut conn).await?;
    let mut outbox = serde_json::Map::new();
    for (status, count) in storage::outbox_counts_by_status(&mut conn).await? {
        outbox.insert(status, count.into());
    }
    let timers = storage::pending_timer_count(&mut conn).await?;
    let live: Vec<serde_json::Value> = state
        .live_mail_sources
        .iter()
        .map(|(name, health)| serde_json::json!({ "source": name, "health": health.snapshot() }))
        .collect();
    Ok(Json(serde_json::json!({
        "mail_sources": live, "mailboxes": mailboxes, "ingest_errors": ingest_errors,
        "outbox": outbox, "pending_timers": timers,
    })))
}
