//! Reading what the reports need through storage, for the web pages, the digest and the
//! benchmark; the figures themselves are worked out by the pure [`super::compute`].

use super::{Period, Report};
use crate::engine::Engine;
use crate::storage::{self, QueryContext, StorageError};
use crate::workflow::wellknown;

/// Works out the report for `period` from the database.
pub async fn report_for(engine: &Engine, period: Period) -> Result<Report, StorageError> {
    let (from, to) = period.bounds_ms();
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
    let (events, facts) = storage::report_lifecycles(&mut conn, from, to).await?;
    let open = storage::open_cases(&mut conn, &open_states(engine.workflows())).await?;
    drop(conn);
    let inputs = super::Inputs {
        events: &events,
        facts: &facts,
        open: &open,
        now: engine.clock().now(),
    };
    let mut report = super::compute(period, &inputs, engine.workflows(), engine.calendar());
    // Findings are shown to managers in plain English, not as stored codes.
    for tally in report
        .breaches_by_finding
        .iter_mut()
        .chain(report.sent_back_for.iter_mut())
    {
        tally.label = crate::policy::finding_label(&tally.label);
    }
    Ok(report)
}

/// Every state that is not final in some workflow, or where an unclassified case waits.
fn open_states(workflows: &crate::workflow::WorkflowSet) -> Vec<String> {
    let mut states: Vec<String> = workflows
        .iter()
        .flat_map(|w| w.states.iter().filter(|s| !s.terminal).map(|s| s.name.clone()))
        .chain([wellknown::unclassified::STATE.to_string()])
        .collect();
    states.sort();
    states.dedup();
    states
}

/// The queue now: cases by state, at risk and breached, and today's intake.
#[derive(Debug, serde::Serialize)]
pub struct Dashboard {
    pub by_state: Vec<(String, i64)>,
    pub open: usize,
    pub breached: usize,
    pub at_risk: usize,
    pub paused: usize,
    pub received_today: i64,
}

pub async fn dashboard(engine: &Engine) -> Result<Dashboard, StorageError> {
    let now = engine.clock().now();
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
    let open = storage::open_cases(&mut conn, &open_states(engine.workflows())).await?;
    let midnight = Period {
        from: now.date_naive(),
        to: now.date_naive(),
    }
    .bounds_ms()
    .0;
    let received_today = storage::cases_received_since(&mut conn, midnight).await?;
    drop(conn);
    let now_ms = now.timestamp_millis();
    let tomorrow = crate::engine::change::When {
        now,
        calendar: engine.calendar(),
    }
    .working_days_later(1);
    let mut by_state: std::collections::BTreeMap<String, i64> = Default::default();
    let (mut breached, mut at_risk, mut paused) = (0, 0, 0);
    for case in &open {
        *by_state.entry(case.state.clone()).or_insert(0) += 1;
        match case.due_at {
            _ if case.sla_paused => paused += 1,
            Some(due) if due < now_ms => breached += 1,
            Some(due) if due < tomorrow => at_risk += 1,
            _ => {}
        }
    }
    Ok(Dashboard {
        by_state: by_state.into_iter().collect(),
        open: open.len(),
        breached,
        at_risk,
        paused,
        received_today,
    })
}
