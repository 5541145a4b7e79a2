//! The managers' pages: a dashboard of the queue as it is now, and the SLA reports for a
//! period compared with the one before, each table also as CSV and the main ones as charts.
//! The charts are drawn here as small SVG strings: a few bars and labels are simpler to draw
//! by hand than to configure a plotting crate for (plotters' SVG backend needs its own font
//! handling for text, and these charts need nothing but rectangles and labels), and they need
//! no JavaScript. Every chart has its numbers in a table beside it.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum_csrf::CsrfToken;
use chrono::{Duration, NaiveDate};

use crate::reports::lifecycle::LifecycleReport;
use crate::reports::{self, Period, Report, dashboard, open_now, report_and_previous};
use crate::storage::QueryContext;
use crate::web::auth::{CurrentUser, render};
use crate::web::view::escape;
use crate::web::{Access, AppState, Route, WebError};

pub(in crate::web) fn routes() -> Vec<Route> {
    vec![
        Route::get("/reports", Access::Manager, report_page),
        Route::get("/reports/coverage", Access::Manager, coverage_page),
        Route::get("/reports/lifecycle", Access::Manager, lifecycle_page),
        Route::get("/reports/lifecycle/{table}", Access::Manager, lifecycle_csv),
        Route::get("/reports/{table}", Access::Manager, report_csv),
    ]
}

/// How long a worked-out report is served again to whoever asks for the same period.
const REPORT_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Periods whose reports are kept at once.
const REPORTS_KEPT: usize = 8;

/// Reports worked out in the last [`REPORT_FRESH_FOR`], by period. Managers opening the same
/// report together (or refreshing it) share one working-out; and since the lock is held while
/// a report is worked out, a burst of report requests queues behind one rather than running
/// side by side on every core, starving the queue's pages. Past days are kept facts anyway;
/// only today's figures can be up to half a minute old.
pub struct ReportCache {
    reports: tokio::sync::Mutex<Vec<KeptReport>>,
    /// The queue as it is now, with when it was read.
    now: super::kept::Kept<std::sync::Arc<QueueNow>>,
    /// Held while the queue is read: one reading at a time.
    reading_now: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// How long a reading of the queue is shown as it is ([`NOW_FRESH_FOR`]).
    now_fresh_for: std::time::Duration,
    lifecycle: tokio::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<LifecycleReport>)>>,
}

impl Default for ReportCache {
    fn default() -> Self {
        ReportCache::with_now_fresh_for(NOW_FRESH_FOR)
    }
}

/// How long the queue as it is now (its open cases and the dashboard's figures) is shown
/// before it is read again.
const NOW_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// The queue as it is now: what every report page, the dashboard API and `/metrics` start
/// from. Reading a million cases' open ones takes a few hundred milliseconds; managers
/// opening the dashboard together share one reading (its figures can be 15 s old).
pub struct QueueNow {
    pub open: Vec<reports::OpenCase>,
    pub dashboard: reports::Dashboard,
}

/// A period, when its report was worked out, and the report with the one before it.
type KeptReport = (Period, std::time::Instant, std::sync::Arc<(Report, Report)>);

impl ReportCache {
    /// A cache that shows a reading of the queue for `fresh_for` before reading it again.
    pub fn with_now_fresh_for(fresh_for: std::time::Duration) -> Self {
        ReportCache {
            reports: Default::default(),
            now: Default::default(),
            reading_now: Default::default(),
            now_fresh_for: fresh_for,
            lifecycle: Default::default(),
        }
    }

    /// The queue as it is now, as last read. Only the first reading is waited for (by
    /// everyone who asks meanwhile, sharing it). After that nobody waits: a reading past its
    /// freshness is still shown while one background task reads the queue again. Every 15 s
    /// the dashboard (and each report page) had one request read the queue while the rest
    /// waited for it, a few hundred milliseconds at a million cases.
    pub async fn queue_now(
        self: &std::sync::Arc<Self>,
        engine: &crate::engine::Engine,
    ) -> Result<std::sync::Arc<QueueNow>, crate::storage::StorageError> {
        match self.now.last() {
            Some((at, now)) if at.elapsed() < self.now_fresh_for => Ok(now),
            Some((_, stale)) => {
                if let Ok(reading) = self.reading_now.clone().try_lock_owned() {
                    let (cache, engine) = (self.clone(), engine.clone());
                    tokio::spawn(async move {
                        let _reading = reading;
                        if let Err(error) = cache.read_now(&engine).await {
                            tracing::warn!(error = %error, "reading the queue for the dashboard");
                        }
                    });
                }
                Ok(stale)
            }
            None => {
                let _reading = self.reading_now.lock().await;
                match self.now.last() {
                    Some((_, now)) => Ok(now),
                    None => self.read_now(engine).await,
                }
            }
        }
    }

    /// Reads the queue as it is now and keeps it (the caller holds `reading_now`).
    async fn read_now(
        &self,
        engine: &crate::engine::Engine,
    ) -> Result<std::sync::Arc<QueueNow>, crate::storage::StorageError> {
        let open = open_now(engine).await?;
        let dashboard = dashboard(engine, &open).await?;
        let now = std::sync::Arc::new(QueueNow { open, dashboard });
        self.now.keep(now.clone());
        Ok(now)
    }

    /// The account register's lifecycle report, worked out now or shared from the last
    /// half-minute (reading the register takes most of a second at 60,000 accounts on SQLite;
    /// managers opening it together, and its CSVs and API, share one reading).
    pub async fn lifecycle(
        &self,
        engine: &crate::engine::Engine,
        password_warning_days: i64,
    ) -> Result<std::sync::Arc<LifecycleReport>, crate::storage::StorageError> {
        let mut kept = self.lifecycle.lock().await;
        if let Some((at, report)) = kept.as_ref()
            && at.elapsed() < REPORT_FRESH_FOR
            && report.today == engine.today()
        {
            return Ok(report.clone());
        }
        let mut conn = engine.db().pool.acquire().await.context("connecting")?;
        let accounts = crate::storage::list_accounts(&mut conn, None).await?;
        let registry = crate::storage::registry_names_and_regions(&mut conn).await?;
        drop(conn);
        let report = std::sync::Arc::new(crate::reports::lifecycle::lifecycle_report(
            &accounts,
            &registry,
            engine.today(),
            password_warning_days,
        ));
        *kept = Some((std::time::Instant::now(), report.clone()));
        Ok(report)
    }

    /// The report for `period` and the one before it, worked out now or shared from the last
    /// half-minute; its backlog is [`ReportCache::queue_now`]'s open cases.
    pub async fn report_and_previous(
        self: &std::sync::Arc<Self>,
        engine: &crate::engine::Engine,
        period: Period,
    ) -> Result<std::sync::Arc<(Report, Report)>, crate::storage::StorageError> {
        let mut kept = self.reports.lock().await;
        kept.retain(|(_, at, _)| at.elapsed() < REPORT_FRESH_FOR);
        if let Some((_, _, both)) = kept.iter().find(|(p, _, _)| *p == period) {
            return Ok(both.clone());
        }
        let now = self.queue_now(engine).await?;
        let both = std::sync::Arc::new(report_and_previous(engine, period, &now.open).await?);
        if kept.len() >= REPORTS_KEPT {
            kept.remove(0);
        }
        kept.push((period, std::time::Instant::now(), both.clone()));
        Ok(both)
    }
}

/// The widest period a report may cover.
const MAX_DAYS: i64 = 5 * 366;
/// The period shown when none is asked for: the last 13 weeks (a quarter).
const DEFAULT_WEEKS: u32 = 13;

#[derive(serde::Deserialize, Default)]
pub struct PeriodQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl PeriodQuery {
    pub(in crate::web) fn new(from: String, to: String) -> PeriodQuery {
        PeriodQuery { from, to }
    }

    /// The period asked for, or the default; a clear message when the dates make no sense.
    pub(in crate::web) fn period(&self, today: NaiveDate) -> Result<Period, String> {
        let date = |text: &str, name: &str| {
            NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map_err(|_| format!("Enter the {name} date as year-month-day, for example 2026-11-02."))
        };
        let period = match (self.from.trim().is_empty(), self.to.trim().is_empty()) {
            (true, true) => return Ok(Period::last_weeks(today, DEFAULT_WEEKS)),
            (false, true) => Period {
                from: date(&self.from, "start")?,
                to: today,
            },
            (true, false) => {
                let to = date(&self.to, "end")?;
                Period {
                    from: to - Duration::weeks(i64::from(DEFAULT_WEEKS)) + Duration::days(1),
                    to,
                }
            }
            (false, false) => Period {
                from: date(&self.from, "start")?,
                to: date(&self.to, "end")?,
            },
        };
        if period.to < period.from {
            return Err("The end date must be on or after the start date.".into());
        }
        if (period.to - period.from).num_days() > MAX_DAYS {
            return Err("A report covers five years at most: choose a shorter period.".into());
        }
        Ok(period)
    }
}

/// Primary User coverage: organisations with no active Primary User, then those with one (and
/// whose only one is being replaced), from our own records.
pub async fn coverage_page(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
) -> Result<Response, WebError> {
    let mut conn = state.engine.db().pool.acquire().await?;
    let open = state.engine.workflows().open_states();
    let mut short = crate::storage::primary_user_coverage(&mut conn, open).await?;
    drop(conn);
    short.sort_by_key(|c| (c.primary_users, c.replacing.is_none(), c.ods_code.clone()));
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    context.insert(
        "none",
        &short.iter().filter(|c| c.primary_users == 0).collect::<Vec<_>>(),
    );
    context.insert(
        "one",
        &short.iter().filter(|c| c.primary_users == 1).collect::<Vec<_>>(),
    );
    Ok((token, render(&state, "coverage.html.tera", &context)?).into_response())
}

/// The account register's lifecycle report on `state`'s today (shared for half a minute).
pub(super) async fn lifecycle_report(state: &AppState) -> Result<std::sync::Arc<LifecycleReport>, WebError> {
    Ok(state
        .reports
        .lifecycle(&state.engine, state.password_warning_days)
        .await?)
}

/// Account lifecycle and coverage by commissioning region and by organisation, from the
/// Open Exeter account register: the organisations nobody can manage first.
pub async fn lifecycle_page(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
) -> Result<Response, WebError> {
    let report = lifecycle_report(&state).await?;
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    context.insert("today", &report.today.format("%A %-d %B %Y").to_string());
    context.insert("warning_days", &state.password_warning_days);
    context.insert("regions", &report.regions);
    let organisations: Vec<serde_json::Value> = report
        .organisations
        .iter()
        .map(|o| {
            let mut row = serde_json::to_value(o).unwrap_or_default();
            row["coverage_label"] = o.coverage.label().into();
            row["region_name"] = o
                .region
                .as_deref()
                .map(|r| crate::registry::region_name(r).unwrap_or(r))
                .into();
            row
        })
        .collect();
    context.insert("organisations", &organisations);
    Ok((token, render(&state, "lifecycle.html.tera", &context)?).into_response())
}

/// `regions.csv` or `organisations.csv` of the lifecycle report.
pub async fn lifecycle_csv(State(state): State<AppState>, Path(table): Path<String>) -> Result<Response, WebError> {
    let name = table.strip_suffix(".csv").ok_or(WebError::NotFound)?;
    let report = lifecycle_report(&state).await?;
    let rows = crate::reports::lifecycle::csv_rows(&report, name).ok_or(WebError::NotFound)?;
    csv_response(&rows, &format!("countersign-lifecycle-{name}-{}.csv", report.today))
}

/// Rows as a CSV download named `filename`.
fn csv_response(rows: &[Vec<String>], filename: &str) -> Result<Response, WebError> {
    let mut response = to_csv(rows).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

pub async fn report_page(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Query(query): Query<PeriodQuery>,
) -> Result<Response, WebError> {
    let today = state.engine.clock().now().date_naive();
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    // The queue now (shared for a few seconds) gives the dashboard and the report's backlog.
    let now = state.reports.queue_now(&state.engine).await?;
    context.insert("dashboard", &now.dashboard);
    context.insert("from", &query.from);
    context.insert("to", &query.to);
    match query.period(today) {
        Ok(period) => {
            let both = state.reports.report_and_previous(&state.engine, period).await?;
            let (report, previous) = (&both.0, &both.1);
            context.insert("charts", &charts(report));
            context.insert("period_query", &format!("from={}&to={}", period.from, period.to));
            context.insert("period_from", &period.from.format("%-d %B %Y").to_string());
            context.insert("period_to", &period.to.format("%-d %B %Y").to_string());
            context.insert("period_days", &((period.to - period.from).num_days() + 1));
            context.insert("report", report);
            context.insert("previous", previous);
        }
        Err(message) => context.insert("error", &message),
    }
    Ok((token, render(&state, "reports.html.tera", &context)?).into_response())
}

/// One table of the report as CSV: `/reports/weeks.csv?from=…&to=…`.
pub async fn report_csv(
    State(state): State<AppState>,
    Path(table): Path<String>,
    Query(query): Query<PeriodQuery>,
) -> Result<Response, WebError> {
    let name = table.strip_suffix(".csv").ok_or(WebError::NotFound)?;
    let today = state.engine.clock().now().date_naive();
    let period = query.period(today).map_err(WebError::BadRequest)?;
    let both = state.reports.report_and_previous(&state.engine, period).await?;
    let rows = csv_rows(&both.0, name).ok_or(WebError::NotFound)?;
    csv_response(&rows, &format!("countersign-{name}-{}-{}.csv", period.from, period.to))
}

fn days(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.1}")).unwrap_or_default()
}

/// A table of the report as rows of cells, its header first; None for an unknown table.
pub fn csv_rows(report: &Report, table: &str) -> Option<Vec<Vec<String>>> {
    let tally = |rows: &[reports::Tally], label: &str| {
        std::iter::once(vec![label.to_string(), "count".to_string()])
            .chain(rows.iter().map(|t| vec![t.label.clone(), t.count.to_string()]))
            .collect()
    };
    Some(match table {
        "weeks" => std::iter::once(
            [
                "week",
                "workflow",
                "received",
                "completed",
                "completed_with_sla",
                "within_sla",
            ]
            .map(String::from)
            .to_vec(),
        )
        .chain(report.weeks.iter().map(|w| {
            vec![
                w.week.to_string(),
                w.workflow.clone(),
                w.received.to_string(),
                w.completed.to_string(),
                w.with_sla.to_string(),
                w.within_sla.to_string(),
            ]
        }))
        .collect(),
        "sla" => std::iter::once(
            [
                "workflow",
                "target_working_days",
                "completed",
                "within_sla",
                "percent_within_sla",
                "median_days_to_provisioned",
                "p90_days_to_provisioned",
                "median_sla_days",
                "p90_sla_days",
            ]
            .map(String::from)
            .to_vec(),
        )
        .chain(report.sla.iter().map(|s| {
            vec![
                s.workflow.clone(),
                s.target_working_days.to_string(),
                s.completed.to_string(),
                s.within.to_string(),
                days(s.percent_within),
                days(s.to_provisioned.map(|d| d.median)),
                days(s.to_provisioned.map(|d| d.p90)),
                days(s.sla_days.map(|d| d.median)),
                days(s.sla_days.map(|d| d.p90)),
            ]
        }))
        .collect(),
        "state_times" => std::iter::once(
            ["state", "visits", "median_working_days", "p90_working_days"]
                .map(String::from)
                .to_vec(),
        )
        .chain(report.state_times.iter().map(|s| {
            vec![
                s.state.clone(),
                s.spread.count.to_string(),
                days(Some(s.spread.median)),
                days(Some(s.spread.p90)),
            ]
        }))
        .collect(),
        "breaches_by_workflow" => tally(&report.breaches_by_workflow, "workflow"),
        "breaches_by_organisation" => tally(&report.breaches_by_organisation, "organisation"),
        "breaches_by_finding" => tally(&report.breaches_by_finding, "finding"),
        "sent_back_for" => tally(&report.sent_back_for, "finding"),
        "second_rounds" => tally(&report.second_rounds_by_organisation, "organisation"),
        "backlog" => std::iter::once(vec!["age".to_string(), "open_cases".to_string()])
            .chain(
                report
                    .backlog
                    .iter()
                    .map(|b| vec![b.label.to_string(), b.count.to_string()]),
            )
            .collect(),
        "caseworkers" => std::iter::once(
            ["caseworker", "moves", "completed", "open_now"]
                .map(String::from)
                .to_vec(),
        )
        .chain(report.caseworkers.iter().map(|c| {
            vec![
                c.name.clone(),
                c.moves.to_string(),
                c.completed.to_string(),
                c.open.to_string(),
            ]
        }))
        .collect(),
        _ => return None,
    })
}

/// CSV text, every cell quoted. A cell that a spreadsheet would run as a formula (an
/// organisation's name comes from a form anyone can send) is prefixed with `'`.
pub fn to_csv(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|cell| {
                let guarded = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell.parse::<f64>().is_err() {
                    format!("'{cell}")
                } else {
                    cell.clone()
                };
                format!("\"{}\"", guarded.replace('"', "\"\""))
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A bar chart's bars: a label and one or two values.
struct Bars<'a> {
    title: &'a str,
    series: &'a [&'a str],
    bars: Vec<(String, Vec<f64>)>,
    max: Option<f64>,
}

/// Draws a bar chart as SVG; it is described by `title` and read in full from its table.
fn bar_chart(chart: &Bars<'_>) -> String {
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 200.0;
    const LEFT: f64 = 40.0;
    const BOTTOM: f64 = 40.0;
    let top = chart
        .max
        .unwrap_or_else(|| {
            chart
                .bars
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .fold(0.0, f64::max)
        })
        .max(1.0);
    let slots = chart.bars.len().max(1) as f64;
    let slot = (WIDTH - LEFT) / slots;
    let per_series = chart.series.len().max(1) as f64;
    let bar = (slot * 0.8 / per_series).max(1.0);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(chart.title)
    );
    let plot = HEIGHT - BOTTOM;
    svg.push_str(&format!(
        r#"<line x1="{LEFT}" y1="{plot}" x2="{WIDTH}" y2="{plot}" class="axis"/><text x="{}" y="12" class="tick">{}</text><text x="{}" y="{plot}" class="tick">0</text>"#,
        LEFT - 4.0,
        top.round(),
        LEFT - 4.0
    ));
    let label_every = (chart.bars.len() / 8).max(1);
    for (i, (label, values)) in chart.bars.iter().enumerate() {
        let x0 = LEFT + i as f64 * slot + slot * 0.1;
        for (s, value) in values.iter().enumerate() {
            let h = (value / top * (plot - 16.0)).max(0.0);
            svg.push_str(&format!(
                r#"<rect class="series-{s}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
                x0 + s as f64 * bar,
                plot - h,
                bar,
                h
            ));
        }
        if i % label_every == 0 {
            svg.push_str(&format!(
                r#"<text x="{:.1}" y="{}" class="label">{}</text>"#,
                x0,
                plot + 16.0,
                escape(label)
            ));
        }
    }
    for (s, name) in chart.series.iter().enumerate() {
        let x = LEFT + s as f64 * 160.0;
        svg.push_str(&format!(
            r#"<rect class="series-{s}" x="{x}" y="{}" width="10" height="10"/><text x="{}" y="{}" class="label">{}</text>"#,
            HEIGHT - 12.0,
            x + 14.0,
            HEIGHT - 3.0,
            escape(name)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The report's charts, as SVG: weekly throughput, the weekly SLA trend, the backlog's age.
#[derive(serde::Serialize)]
struct Charts {
    throughput: String,
    sla_trend: String,
    backlog: String,
}

fn charts(report: &Report) -> Charts {
    let mut by_week: std::collections::BTreeMap<NaiveDate, (f64, f64, f64, f64)> = Default::default();
    for w in &report.weeks {
        let entry = by_week.entry(w.week).or_default();
        entry.0 += w.received as f64;
        entry.1 += w.completed as f64;
        entry.2 += w.within_sla as f64;
        entry.3 += w.with_sla as f64;
    }
    let label = |week: &NaiveDate| week.format("%d %b").to_string();
    Charts {
        throughput: bar_chart(&Bars {
            title: "Cases received and completed per week",
            series: &["received", "completed"],
            bars: by_week.iter().map(|(w, v)| (label(w), vec![v.0, v.1])).collect(),
            max: None,
        }),
        sla_trend: bar_chart(&Bars {
            title: "Percentage completed within the SLA, per week",
            series: &["% within SLA"],
            bars: by_week
                .iter()
                .map(|(w, v)| (label(w), vec![if v.3 > 0.0 { 100.0 * v.2 / v.3 } else { 0.0 }]))
                .collect(),
            max: Some(100.0),
        }),
        backlog: bar_chart(&Bars {
            title: "Open cases by working days since received",
            series: &["open cases"],
            bars: report
                .backlog
                .iter()
                .map(|b| (b.label.to_string(), vec![b.count as f64]))
                .collect(),
            max: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_every_cell_and_defuses_formulas() {
        let rows = vec![
            vec!["organisation".to_string(), "count".to_string()],
            vec!["=HYPERLINK(\"http://x\")".to_string(), "-3".to_string()],
        ];
        assert_eq!(
            to_csv(&rows),
            "\"organisation\",\"count\"\r\n\"'=HYPERLINK(\"\"http://x\"\")\",\"-3\"\r\n"
        );
    }

    #[test]
    fn a_period_is_checked_and_defaults_to_a_quarter() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        let default = PeriodQuery::default().period(today).unwrap();
        assert_eq!(default.to, NaiveDate::from_ymd_opt(2026, 12, 6).unwrap());
        assert_eq!((default.to - default.from).num_days() + 1, 13 * 7);
        let backwards = PeriodQuery {
            from: "2026-12-01".into(),
            to: "2026-11-01".into(),
        };
        assert!(backwards.period(today).unwrap_err().contains("on or after"));
        let garbage = PeriodQuery {
            from: "yesterday".into(),
            to: String::new(),
        };
        assert!(garbage.period(today).unwrap_err().contains("year-month-day"));
    }

    #[test]
    fn chart_labels_are_escaped() {
        let svg = bar_chart(&Bars {
            title: "a <title>",
            series: &["x"],
            bars: vec![("<b>".into(), vec![1.0])],
            max: None,
        });
        assert!(svg.contains("a &lt;title&gt;") && svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
    }
}
