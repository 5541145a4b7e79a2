//! What operators and load balancers ask: `/healthz` (the process answers), `/readyz` (it can
//! do its work: the database answers, the workflows are loaded, and each mail source polled
//! recently), and `/metrics` (Prometheus text). None of them needs sign-in, and none says
//! anything about a case or a person: counts only. Every request's time is measured here too,
//! by route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Access, AppState, Route, WebError};
use crate::metrics::Snapshot;
use crate::storage;

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/healthz", Access::Public, healthz),
        Route::get("/readyz", Access::Public, readyz),
        Route::get("/metrics", Access::Public, metrics),
    ]
}

/// The process is up and answering.
pub async fn healthz() -> &'static str {
    "ok"
}

/// One readiness check and what it found.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Ready when the database answers, the workflows are loaded and every mail source of this
/// process polled within `ready_max_poll_age` (settings). 503 otherwise, with what failed.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = Vec::new();
    checks.push(match state.engine.db().ping().await {
        Ok(()) => Check {
            name: "database".into(),
            ok: true,
            detail: "answers".into(),
        },
        Err(e) => Check {
            name: "database".into(),
            ok: false,
            detail: e.to_string(),
        },
    });
    let workflows = state.engine.workflows().iter().count();
    checks.push(Check {
        name: "workflows".into(),
        ok: workflows > 0,
        detail: format!("{workflows} loaded"),
    });
    let now = state.engine.now_ms();
    for (name, health) in state.live_mail_sources.iter() {
        let polled = health.snapshot().last_success_at;
        let age_ms = polled.map(|at| now - at);
        let ok = age_ms.is_some_and(|age| age <= state.ready_max_poll_age_ms);
        checks.push(Check {
            name: format!("mail source {name}"),
            ok,
            detail: match age_ms {
                Some(age) => format!(
                    "last polled successfully {}s ago (at most {}s allowed)",
                    age / 1000,
                    state.ready_max_poll_age_ms / 1000
                ),
                None => "has not polled successfully yet".into(),
            },
        });
    }
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks });
    (status, axum::Json(body)).into_response()
}

/// Every metric, in Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, WebError> {
    let engine = &state.engine;
    let mut conn = engine.db().pool.acquire().await?;
    let outbox = storage::outbox_counts_by_status(&mut conn).await?;
    let pending_timers = storage::pending_timer_count(&mut conn).await?;
    drop(conn);
    // The queue as the managers' pages see it (read once, shared for a few seconds): the
    // dashboard's SLA figures and the counts by workflow and state both come from it.
    let queue = state.reports.queue_now(engine).await?;
    let dashboard = &queue.dashboard;
    let mut by_workflow: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for case in &queue.open {
        let workflow = case.workflow.clone().unwrap_or_else(|| "unclassified".into());
        *by_workflow.entry((workflow, case.state.clone())).or_insert(0) += 1;
    }
    let open_cases = by_workflow
        .into_iter()
        .map(|((workflow, state), count)| (workflow, state, count))
        .collect();
    let now = engine.now_ms();
    let sources = state
        .live_mail_sources
        .iter()
        .map(|(name, health)| {
            let health = health.snapshot();
            let lag = health.last_success_at.map(|at| (now - at).max(0) as f64 / 1000.0);
            (name.clone(), lag, health.backlog as i64)
        })
        .collect();
    let pool = &engine.db().pool;
    let snapshot = Snapshot {
        open_cases,
        sla_at_risk: dashboard.at_risk as i64,
        sla_breached: dashboard.breached as i64,
        sla_paused: dashboard.paused as i64,
        outbox,
        pending_timers,
        sources,
        pool_size: i64::from(pool.size()),
        pool_idle: pool.num_idle() as i64,
        pool_returns: engine.db().connections_returned(),
    };
    let text = crate::metrics::render(engine.metrics(), &snapshot).map_err(WebError::internal)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Measures each request's time by its route (the route's pattern, never its path, so that
/// case references make no series of their own). Parameters are written `:name` rather than
/// `{name}`: braces inside label values are valid, but simple exposition parsers drop such
/// lines.
pub(super) async fn measure(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().replace('{', ":").replace('}', ""))
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.engine.metrics().http(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
