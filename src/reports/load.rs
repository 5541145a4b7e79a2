//! Reading what the reports need through storage, for the web pages, the digest and the
//! benchmark; the figures themselves are worked out by the pure [`super::daily_facts`] and
//! [`super::assemble`]. Days that are over are worked out once and kept.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};

use super::{DayFacts, Period, Report};
use crate::engine::Engine;
use crate::storage::{self, QueryContext, StorageError};

/// Days worked out in one go when filling in kept days: a month's cases, a bounded read.
const DAYS_PER_READ: i64 = 31;

/// Each day's facts from `first` to `last`, worked out from the event log (every case that
/// moved in those days, read in one go).
async fn work_out_days(
    engine: &Engine,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<BTreeMap<NaiveDate, DayFacts>, StorageError> {
    let (from, to) = Period { from: first, to: last }.bounds_ms();
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
    let (events, facts) = storage::report_lifecycles(&mut conn, from, to).await?;
    drop(conn);
    let inputs = super::Inputs {
        events: &events,
        facts: &facts,
        open: &[],
        now: engine.clock().now(),
    };
    Ok(super::daily_facts(
        first,
        last,
        &inputs,
        engine.workflows(),
        engine.calendar(),
    ))
}

/// The facts of every day of `period`: past days from those kept (working out and keeping
/// any not kept yet, a month at a time), today and later from the event log as it is now.
pub async fn days_of(engine: &Engine, period: Period) -> Result<BTreeMap<NaiveDate, DayFacts>, StorageError> {
    Ok(days_and_worked_out(engine, period, Want::Facts).await?.0)
}

/// What [`days_and_worked_out`] is asked for: the days' facts (a report), or only that every
/// past day is kept (the warm-up and housekeeping, which hold no facts in memory: years of
/// them are hundreds of megabytes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Facts,
    KeptOnly,
}

/// [`days_of`], and how many past days it had to work out (and keep).
async fn days_and_worked_out(
    engine: &Engine,
    period: Period,
    want: Want,
) -> Result<(BTreeMap<NaiveDate, DayFacts>, usize), StorageError> {
    let mut worked_out = 0;
    let today = engine.clock().now().date_naive();
    let mut days = BTreeMap::new();
    let last_past = period.to.min(today - Duration::days(1));
    if period.from <= last_past {
        let (first, last) = (period.from.to_string(), last_past.to_string());
        let mut conn = engine.db().pool.acquire().await.context("connecting")?;
        let mut kept_days = std::collections::BTreeSet::new();
        if want == Want::Facts {
            for (day, json) in storage::cached_report_days(&mut conn, &first, &last).await? {
                // A kept day that no longer reads (an older shape) is worked out again.
                if let (Ok(day), Ok(facts)) = (day.parse::<NaiveDate>(), serde_json::from_str::<DayFacts>(&json)) {
                    days.insert(day, facts);
                    kept_days.insert(day);
                }
            }
        } else {
            kept_days.extend(
                storage::kept_report_day_names(&mut conn, &first, &last)
                    .await?
                    .iter()
                    .filter_map(|day| day.parse::<NaiveDate>().ok()),
            );
        }
        drop(conn);
        let missing: Vec<NaiveDate> = period
            .from
            .iter_days()
            .take_while(|d| *d <= last_past)
            .filter(|d| !kept_days.contains(d))
            .collect();
        for run in missing.chunk_by(|a, b| (*b - *a).num_days() == 1) {
            for block in run.chunks(DAYS_PER_READ as usize) {
                let (first, last) = (block[0], block[block.len() - 1]);
                let mut worked = work_out_days(engine, first, last).await?;
                let keep: Vec<(String, String)> = block
                    .iter()
                    .map(|day| {
                        let facts = worked.remove(day).unwrap_or_default();
                        let json = serde_json::to_string(&facts).unwrap_or_else(|_| "{}".into());
                        if want == Want::Facts {
                            days.insert(*day, facts);
                        }
                        (day.to_string(), json)
                    })
                    .collect();
                let mut conn = engine.db().pool.acquire().await.context("connecting")?;
                storage::keep_report_days(&mut conn, &keep, engine.now_ms()).await?;
                worked_out += keep.len();
            }
        }
    }
    let first_live = period.from.max(today);
    if want == Want::Facts && first_live <= period.to {
        days.extend(work_out_days(engine, first_live, period.to).await?);
    }
    Ok((days, worked_out))
}

/// Works out and keeps the facts of the `back` days before today that are not kept yet, so
/// that reports read kept days only (the nightly housekeeping calls it). Returns how many
/// days it worked out.
pub async fn keep_past_days(engine: &Engine, back: i64) -> Result<usize, StorageError> {
    // One keeper at a time for the service: on a first start the start-up job (every past
    // day) and the night's housekeeping (the last 400) ran side by side, working out the same
    // days twice at once (a peak of 740 MiB at a million cases). The second now finds them
    // kept.
    let _keeping = engine.report_keeper().lock().await;
    let today = engine.clock().now().date_naive();
    let period = Period {
        from: today - Duration::days(back.max(1)),
        to: today - Duration::days(1),
    };
    Ok(days_and_worked_out(engine, period, Want::KeptOnly).await?.1)
}

/// Works out and keeps every past day's facts not kept yet, back to the first state move:
/// what `serve` does in the background when it starts, so that a report over any period,
/// years included, adds up kept days. Returns how many days it worked out.
pub async fn keep_all_past_days(engine: &Engine) -> Result<usize, StorageError> {
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
    let first = storage::first_move_at(&mut conn).await?;
    drop(conn);
    let Some(first) = first else { return Ok(0) };
    let first_day = chrono::DateTime::from_timestamp_millis(first)
        .map(|t| t.with_timezone(&chrono::Local).date_naive())
        .unwrap_or_else(|| engine.clock().now().date_naive());
    let back = (engine.clock().now().date_naive() - first_day).num_days();
    keep_past_days(engine, back).await
}

/// The cases open now: read once per page, for its dashboard and its report's backlog.
pub async fn open_now(engine: &Engine) -> Result<Vec<super::OpenCase>, StorageError> {
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
    storage::open_cases(&mut conn, engine.workflows().open_states()).await
}

/// Works out the report for `period`: its days' facts, the cases open now.
pub async fn report_for(engine: &Engine, period: Period) -> Result<Report, StorageError> {
    report_with_open(engine, period, &open_now(engine).await?).await
}

/// The report for `period` and the one for the period before it, to compare, with `open`
/// (the cases open now) as the first's backlog: the backlog is today's, whatever the period.
pub async fn report_and_previous(
    engine: &Engine,
    period: Period,
    open: &[super::OpenCase],
) -> Result<(Report, Report), StorageError> {
    let report = report_with_open(engine, period, open).await?;
    let previous = report_with_open(engine, period.previous(), &[]).await?;
    Ok((report, previous))
}

/// The report for `period` with `open` as its backlog and workload (none, for a report that
/// shows only the period's own figures).
pub async fn report_with_open(
    engine: &Engine,
    period: Period,
    open: &[super::OpenCase],
) -> Result<Report, StorageError> {
    let days = days_of(engine, period).await?;
    let mut report = super::assemble(
        period,
        &days,
        open,
        engine.clock().now(),
        engine.workflows(),
        engine.calendar(),
    );
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

/// The dashboard, over `open` (the cases open now, from [`open_now`]).
pub async fn dashboard(engine: &Engine, open: &[super::OpenCase]) -> Result<Dashboard, StorageError> {
    let now = engine.clock().now();
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
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
    for case in open {
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
