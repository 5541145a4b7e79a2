//! The triage queue: open cases, most urgent first, with filters, search and bulk actions.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;
use chrono::{DateTime, Local};
use sqlx::AnyConnection;

use super::auth::{CurrentUser, check_csrf, render};
use super::{AppState, RequestConnection, WebError};
use crate::storage;

use super::case::assign_case;
use super::view::{Html, base_context, sla_status, when};
use super::{Access, Route};

/// Cases on one page of the queue.
pub(super) const PAGE_SIZE: i64 = 50;

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/", Access::Staff, queue),
        Route::post("/cases/bulk", Access::Staff, bulk),
    ]
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct QueueFilter {
    /// `open` (the default), `closed` or `all`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub workflow: String,
    #[serde(default)]
    pub finding: String,
    /// `mine` or `unassigned`.
    #[serde(default)]
    pub assignee: String,
    #[serde(default)]
    pub overdue: String,
    /// Reference, organisation name or ODS code, or sender.
    #[serde(default)]
    pub q: String,
    /// Keyset cursor: `due_at:id` of the last row of the previous page.
    #[serde(default)]
    pub after: String,
    /// After a bulk action: how many cases it changed, and how many it left with a colleague.
    #[serde(default)]
    pub done: String,
    #[serde(default)]
    pub left: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRow {
    pub id: i64,
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    /// The state as its workflow names it ("Reply proposed"), or its name in words.
    pub state_label: String,
    pub org_name: Option<String>,
    pub org_ods_code: Option<String>,
    /// Each finding once, in plain English.
    pub findings: Vec<String>,
    pub age_working_days: i64,
    pub due: Option<String>,
    pub due_at: Option<i64>,
    pub sla: &'static str,
    pub assignee: Option<String>,
}

impl QueueFilter {
    /// The filter as a query string, without its page cursor: for the next page's link, and
    /// for coming back to the same view after a bulk action or from a case.
    pub fn query_string(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("status", &self.status),
            ("q", &self.q),
            ("state", &self.state),
            ("workflow", &self.workflow),
            ("assignee", &self.assignee),
            ("overdue", &self.overdue),
            ("finding", &self.finding),
        ] {
            if !value.is_empty() {
                query.append_pair(key, value);
            }
        }
        query.finish()
    }

    /// `?back=<this view>` for links to a case opened from it, so that its "next case" stays
    /// in the view (empty for the whole open queue).
    pub fn view_suffix(&self) -> String {
        let view = self.query_string();
        if view.is_empty() {
            return String::new();
        }
        format!(
            "?back={}",
            url::form_urlencoded::byte_serialize(view.as_bytes()).collect::<String>()
        )
    }

    /// Which cases the filter lists: a final state asked for by name is among the closed.
    pub fn scope(&self, terminal: &[String]) -> storage::QueueScope {
        match self.status.as_str() {
            "closed" => storage::QueueScope::Closed,
            "all" => storage::QueueScope::All,
            _ if terminal.contains(&self.state) => storage::QueueScope::Closed,
            _ => storage::QueueScope::Open,
        }
    }
}

/// Open cases, most urgent first, a page at a time (keyset, so it stays fast at any depth).
///
/// It reads on the caller's connection. A handler holds at most one pooled connection at a
/// time: one that held a connection and then waited for a second (as the case page once did,
/// for its "next case" link) deadlocks as soon as every connection is held by such a request
/// (four case pages at once on SQLite's pool of four).
pub async fn load_queue(
    state: &AppState,
    conn: &mut AnyConnection,
    filter: &QueueFilter,
    user_id: i64,
) -> Result<(Vec<QueueRow>, Option<String>), WebError> {
    let terminal = state.engine.workflows().terminal_states();
    let rows = read_queue(state, conn, filter, terminal, user_id, PAGE_SIZE + 1).await?;
    let now = state.engine.now_ms();
    let today = state.engine.clock().now().date_naive();
    let at_risk_until = state.engine.working_days_from_now(1);
    let more = rows.len() as i64 > PAGE_SIZE;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.into_iter().take(PAGE_SIZE as usize) {
        let due_at = row.due_at;
        let created = DateTime::from_timestamp_millis(row.created_at)
            .map(|t| t.with_timezone(&Local).date_naive())
            .unwrap_or(today);
        let state_label = state
            .engine
            .workflows()
            .state_label(row.workflow.as_deref(), &row.state);
        let sla = if terminal.contains(&row.state) {
            "closed"
        } else if row.workflow.is_none() {
            // No workflow, no SLA: an unclassified case arms no SLA timers, so it shows none.
            ""
        } else {
            sla_status(due_at, row.sla_paused, now, at_risk_until)
        };
        let mut findings: Vec<String> = row
            .finding_codes
            .iter()
            .map(|c| crate::policy::finding_label(c))
            .collect();
        findings.sort();
        findings.dedup();
        out.push(QueueRow {
            id: row.id,
            reference: row.reference,
            workflow: row.workflow,
            state: row.state,
            state_label,
            org_name: row.org_name,
            org_ods_code: row.org_ods_code,
            findings,
            age_working_days: state.engine.calendar().working_days_between(created, today),
            due: when(due_at),
            due_at,
            sla,
            assignee: row.assignee,
        });
    }
    let next = more
        .then(|| out.last().map(|r| format!("{}:{}", r.due_at.unwrap_or(0), r.id)))
        .flatten();
    Ok((out, next))
}

/// The first case in a queue view after its cursor (`filter.after`): the case page's "next
/// case". One row, not a page: the case page asks for it on every view.
pub async fn next_in_view(
    state: &AppState,
    conn: &mut AnyConnection,
    filter: &QueueFilter,
    user_id: i64,
) -> Result<Option<String>, WebError> {
    let terminal = state.engine.workflows().terminal_states();
    let rows = read_queue(state, conn, filter, terminal, user_id, 1).await?;
    Ok(rows.into_iter().next().map(|row| row.reference))
}

/// Up to `limit` cases of a queue view, from its cursor on, as storage reads them.
async fn read_queue(
    state: &AppState,
    conn: &mut AnyConnection,
    filter: &QueueFilter,
    terminal: &[String],
    user_id: i64,
    limit: i64,
) -> Result<Vec<storage::QueueRecord>, WebError> {
    let scope = filter.scope(terminal);
    let (after_due, after_id) = filter
        .after
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<i64>().ok()?, i.parse::<i64>().ok()?)))
        .unwrap_or((-1, 0));
    // Closed and all cases go newest first: the first page starts above every id.
    let after_id = if scope != storage::QueueScope::Open && after_id == 0 {
        i64::MAX
    } else {
        after_id
    };
    let query = storage::QueueQuery {
        scope,
        state: &filter.state,
        workflow: &filter.workflow,
        finding: &filter.finding,
        assignee: &filter.assignee,
        user_id,
        overdue_before: (filter.overdue == "yes").then_some(state.engine.now_ms()),
        search: &filter.q,
        after: (after_due, after_id),
        terminal_states: terminal,
        limit,
    };
    Ok(storage::queue_page(conn, &query).await?)
}

pub async fn queue(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    conn: RequestConnection,
    Query(filter): Query<QueueFilter>,
) -> Result<Response, WebError> {
    let mut conn = conn.acquire(&state).await?;
    let (rows, next) = load_queue(&state, &mut conn, &filter, user.0.id).await?;
    let open_states = state.engine.workflows().open_states();
    let (state_counts, finding_counts) = queue_counts(&state, &mut conn, open_states).await?;
    drop(conn);
    let mut context = base_context(&user, &token)?;
    let terminal = state.engine.workflows().terminal_states();
    // Each finding once, in plain English, with how many open cases have it (most first).
    let mut findings: Vec<(&str, &str, usize)> = crate::policy::FindingCode::ALL
        .iter()
        .map(|f| {
            (
                f.as_str(),
                f.label(),
                finding_counts.get(f.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    findings.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(b.1)));
    let heading = match filter.scope(terminal) {
        storage::QueueScope::Open => "Open cases",
        storage::QueueScope::Closed => "Closed cases",
        storage::QueueScope::All => "All cases",
    };
    let next_url = next.map(|cursor| {
        let mut query = url::form_urlencoded::Serializer::new(filter.query_string());
        query.append_pair("after", &cursor);
        format!("/?{}", query.finish())
    });
    // Cases opened from here keep this view for their "next case" link.
    context.insert("rows_html", &table_rows(&rows, &filter.view_suffix(), heading));
    let workflows: Vec<(&str, &str)> = state
        .engine
        .workflows()
        .iter()
        .map(|w| (w.name.as_str(), w.title.as_str()))
        .collect();
    let choices = FilterChoices {
        state_counts: &state_counts,
        open_states,
        // Every workflow declares the final states an unclassified case may be sent to.
        closed_states: terminal,
        workflows: &workflows,
        findings: &findings,
    };
    context.insert("state_counts_html", &choices.state_counts_html(&filter));
    context.insert("state_options_html", &choices.state_options_html(&filter));
    context.insert("workflow_options_html", &choices.workflow_options_html(&filter));
    context.insert("finding_options_html", &choices.finding_options_html(&filter));
    // Bulk actions come back to this same view of the queue.
    context.insert("back", &filter.query_string());
    context.insert(
        "success",
        &filter.done.parse::<usize>().ok().map(|n| {
            let left = filter.left.parse::<usize>().unwrap_or(0);
            let mut said = format!("{n} case{} updated.", if n == 1 { "" } else { "s" });
            if left > 0 {
                said.push_str(&format!(
                    " {left} left with the colleague who has {}: open {} to take {}.",
                    if left == 1 { "it" } else { "them" },
                    if left == 1 { "it" } else { "each" },
                    if left == 1 { "it" } else { "one" }
                ));
            }
            said
        }),
    );
    context.insert("next_url", &next_url);
    context.insert("filter", &filter);
    context.insert("heading", heading);
    Ok((token, render(&state, "queue.html.tera", &context)?).into_response())
}

/// What the queue's filters offer: the open cases counted by state (links), and the states,
/// workflows and findings to choose from, the filter's own choice selected.
///
/// Drawn here, as the rows are (see [`table_rows`]): with the rows out of the template, these
/// sixty-odd options were most of what Tera still did for a queue page, a third of the
/// server's instructions for it (callgrind), each option looking up the filter again.
struct FilterChoices<'a> {
    state_counts: &'a [(String, i64)],
    open_states: &'a [String],
    closed_states: &'a [String],
    /// (name, title)
    workflows: &'a [(&'a str, &'a str)],
    /// (code, label, open cases with it)
    findings: &'a [(&'a str, &'a str, usize)],
}

/// A state's name in words: `awaiting_information` → "awaiting information".
fn state_words(state: &str) -> String {
    state.replace('_', " ")
}

impl FilterChoices<'_> {
    /// The open cases by state, each a link to its view (marked when it is this one); empty
    /// when there are none.
    fn state_counts_html(&self, filter: &QueueFilter) -> String {
        if self.state_counts.is_empty() {
            return String::new();
        }
        let mut html = Html::default();
        html.markup("<ul class=\"state-counts\" aria-label=\"Open cases by state\">");
        for (state, count) in self.state_counts {
            html.markup("<li><a href=\"/?state=")
                .text(state)
                .markup("\"")
                .markup_if(filter.state == *state, " aria-current=\"true\"")
                .markup(">")
                .text(&crate::workflow::definition::state_in_words(state))
                .markup(" <span class=\"count\">")
                .number(*count)
                .markup("</span></a></li>");
        }
        html.markup("</ul>");
        html.into_string()
    }

    /// The state select's options: any, then the open states and the closed ones in groups.
    fn state_options_html(&self, filter: &QueueFilter) -> String {
        let mut html = Html::default();
        html.markup("<option value=\"\">Any</option><optgroup label=\"Open\">");
        for state in self.open_states {
            html.option(state, &state_words(state), filter.state == *state);
        }
        html.markup("</optgroup><optgroup label=\"Closed\">");
        for state in self.closed_states {
            html.option(state, &state_words(state), filter.state == *state);
        }
        html.markup("</optgroup>");
        html.into_string()
    }

    /// The workflow select's options.
    fn workflow_options_html(&self, filter: &QueueFilter) -> String {
        let mut html = Html::default();
        html.markup("<option value=\"\">Any</option>");
        for (name, title) in self.workflows {
            html.option(name, title, filter.workflow == *name);
        }
        html.into_string()
    }

    /// The finding select's options, each with how many open cases have it.
    fn finding_options_html(&self, filter: &QueueFilter) -> String {
        let mut html = Html::default();
        html.markup("<option value=\"\">Any</option>");
        for (code, label, count) in self.findings {
            html.option(code, &format!("{label} ({count})"), filter.finding == *code);
        }
        html.into_string()
    }
}

/// The queue table's rows, as HTML.
///
/// Drawn here rather than in the template because they are most of the page: at a million
/// cases Tera took 36% of the server's CPU for a queue page (perf), most of it looking up each
/// value of these fifty rows, and turning the rows into JSON values for its context another
/// 8%. Drawn here, two instances on one PostgreSQL served 690–740 queue pages a second each
/// instead of 490–550. Every value is escaped on its way in ([`Html::text`]), and the tests
/// below read the markup.
fn table_rows(rows: &[QueueRow], view_suffix: &str, heading: &str) -> String {
    let mut html = Html::with_capacity(rows.len() * 900 + 100);
    for row in rows {
        let reference = row.reference.as_str();
        html.markup("<tr data-case=\"")
            .text(reference)
            .markup("\">\n<td><input type=\"checkbox\" name=\"case\" value=\"")
            .text(reference)
            .markup("\" aria-label=\"Select ")
            .text(reference)
            .markup("\"></td>\n<td><a href=\"/cases/")
            .text(reference)
            .text(view_suffix)
            .markup("\">")
            .text(reference)
            .markup("</a></td>\n<td>")
            .text(row.org_name.as_deref().unwrap_or("–"));
        if let Some(ods) = row.org_ods_code.as_deref().filter(|c| !c.is_empty()) {
            html.markup(" <span class=\"muted\">(").text(ods).markup(")</span>");
        }
        html.markup("</td>\n<td class=\"hide-narrow\">")
            .text(&row.workflow.as_deref().unwrap_or("unclassified").replace('_', " "))
            .markup("</td>\n<td>")
            .text(&row.state_label)
            .markup("</td>\n<td class=\"hide-narrow\">")
            .number(row.age_working_days)
            .markup("</td>\n<td>");
        if row.sla.is_empty() {
            html.markup("<span class=\"muted\">no SLA yet</span>");
        } else {
            html.markup("<span class=\"tag sla-")
                .text(&row.sla.replace(' ', "-"))
                .markup("\">")
                .text(row.sla)
                .markup("</span>");
            if row.sla != "closed" {
                html.markup("<br><span class=\"muted\">")
                    .text(row.due.as_deref().unwrap_or(""))
                    .markup("</span>");
            }
        }
        html.markup("</td>\n<td>");
        for (n, finding) in row.findings.iter().enumerate() {
            html.markup_if(n > 0, "; ")
                .markup("<span class=\"finding-code\">")
                .text(finding)
                .markup("</span>");
        }
        html.markup("</td>\n<td class=\"hide-narrow\">")
            .text(row.assignee.as_deref().unwrap_or("unassigned"))
            .markup("</td>\n</tr>\n");
    }
    if rows.is_empty() {
        html.markup("<tr><td colspan=\"9\">No ")
            .text(&heading.to_lowercase())
            .markup(" match.</td></tr>\n");
    }
    html.into_string()
}

/// The open cases by state, and by finding code.
pub type QueueCounts = (Vec<(String, i64)>, std::collections::BTreeMap<String, usize>);

/// How long the queue's counts (by state, by finding) are reused before they are read again:
/// reading every open case's findings on each page view would cost a large backlog dearly,
/// and counts a few seconds old serve a caseworker choosing a filter just as well.
const COUNTS_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// The open cases counted by state and by finding, read at most every [`COUNTS_FRESH_FOR`].
async fn queue_counts(
    state: &AppState,
    conn: &mut AnyConnection,
    open_states: &[String],
) -> Result<QueueCounts, WebError> {
    // One reader at a time, and no one waits for a refresh: when the counts go stale, one
    // request counts again while the others show the counts it is replacing; only before the
    // first count do they wait for it. (At a million cases, right after a start, 32 connections
    // each counting the open cases put the queue's p99 at 600–870 ms on PostgreSQL.)
    let _counting = match state.queue_counts.last() {
        Some((at, counts)) if at.elapsed() < COUNTS_FRESH_FOR => return Ok(counts),
        Some((_, stale)) => match state.queue_counter.try_lock() {
            Ok(counting) => counting,
            Err(_) => return Ok(stale),
        },
        None => {
            let counting = state.queue_counter.lock().await;
            if let Some((_, counts)) = state.queue_counts.last() {
                return Ok(counts);
            }
            counting
        }
    };
    let counts = (
        storage::count_cases_in_states(conn, open_states).await?,
        storage::finding_counts(conn, open_states).await?,
    );
    state.queue_counts.keep(counts.clone());
    Ok(counts)
}

/// Bulk actions from the queue: claim, assign or unassign every ticked case.
pub async fn bulk(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let value = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    check_csrf(&token, &value("csrf"))?;
    let references: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "case")
        .map(|(_, v)| v.clone())
        .collect();
    if references.is_empty() {
        return Err(WebError::BadRequest("Tick at least one case.".into()));
    }
    let assignee = match value("action").as_str() {
        "claim" => Some(user.0.clone()),
        "assign" => {
            let mut conn = state.engine.db().pool.acquire().await?;
            let email = value("assignee");
            let found = crate::users::find_by_email(&mut conn, &email)
                .await?
                .filter(|u| !u.disabled);
            Some(found.ok_or_else(|| WebError::BadRequest(format!("No active user {email}")))?)
        }
        "unassign" => None,
        other => return Err(WebError::BadRequest(format!("Unknown bulk action “{other}”"))),
    };
    let claiming = value("action") == "claim";
    let (mut done, mut left) = (0, 0);
    for reference in &references {
        if claiming {
            // Claiming never takes a colleague's case unasked: those are left, and said so.
            let mut conn = state.engine.db().pool.acquire().await?;
            let held = storage::case_by_reference(&mut conn, reference)
                .await?
                .and_then(|c| c.assignee_id)
                .is_some_and(|id| id != user.0.id);
            drop(conn);
            if held {
                left += 1;
                continue;
            }
        }
        assign_case(&state, &user, reference, assignee.as_ref()).await?;
        done += 1;
    }
    // Back to the same view of the queue (only ever this app's own queue).
    let back = value("back");
    let back: String = back.chars().filter(|c| !c.is_control() && *c != '#').collect();
    let separator = if back.is_empty() { "" } else { "&" };
    Ok(Redirect::to(&format!("/?{back}{separator}done={done}&left={left}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::{FilterChoices, QueueFilter, QueueRow, table_rows};

    fn choices<'a>(
        counts: &'a [(String, i64)],
        open: &'a [String],
        closed: &'a [String],
        workflows: &'a [(&'a str, &'a str)],
        findings: &'a [(&'a str, &'a str, usize)],
    ) -> FilterChoices<'a> {
        FilterChoices {
            state_counts: counts,
            open_states: open,
            closed_states: closed,
            workflows,
            findings,
        }
    }

    #[test]
    fn the_filters_offer_each_choice_escaped_with_the_filters_own_selected() {
        let counts = vec![
            ("awaiting_information".to_string(), 12),
            ("needs_review".to_string(), 3),
        ];
        let open = vec!["awaiting_information".to_string(), "needs_review".to_string()];
        let closed = vec!["rejected".to_string()];
        let workflows = [("primary_user_gp", "Primary User <GP>")];
        let findings = [("sender_not_nhs", "Sender is not an NHS address", 4)];
        let offered = choices(&counts, &open, &closed, &workflows, &findings);
        let filter = QueueFilter {
            state: "needs_review".into(),
            workflow: "primary_user_gp".into(),
            finding: "sender_not_nhs".into(),
            ..QueueFilter::default()
        };
        let counted = offered.state_counts_html(&filter);
        assert!(
            counted.contains(
                "<li><a href=\"/?state=awaiting_information\">Awaiting information <span class=\"count\">12</span></a></li>"
            ),
            "{counted}"
        );
        assert!(
            counted.contains("<a href=\"/?state=needs_review\" aria-current=\"true\">Needs review <span"),
            "the view shown is marked: {counted}"
        );
        let states = offered.state_options_html(&filter);
        assert!(
            states.starts_with("<option value=\"\">Any</option><optgroup label=\"Open\"><option value=\"awaiting_information\">awaiting information</option><option value=\"needs_review\" selected>needs review</option></optgroup><optgroup label=\"Closed\"><option value=\"rejected\">rejected</option></optgroup>"),
            "{states}"
        );
        let workflows = offered.workflow_options_html(&filter);
        assert_eq!(
            workflows,
            "<option value=\"\">Any</option><option value=\"primary_user_gp\" selected>Primary User &lt;GP&gt;</option>"
        );
        let findings = offered.finding_options_html(&QueueFilter::default());
        assert_eq!(
            findings,
            "<option value=\"\">Any</option><option value=\"sender_not_nhs\">Sender is not an NHS address (4)</option>"
        );
        assert_eq!(
            choices(&[], &open, &closed, &[], &[]).state_counts_html(&filter),
            "",
            "no counts, no list"
        );
    }

    fn row() -> QueueRow {
        QueueRow {
            id: 7,
            reference: "CS-2026-000007".into(),
            workflow: Some("primary_user_gp".into()),
            state: "awaiting_review".into(),
            state_label: "Awaiting review".into(),
            org_name: Some("<b>Evil</b> & \"Sons\" Surgery".into()),
            org_ods_code: Some("A12345".into()),
            findings: vec![
                "Signatory not on the register".into(),
                "Sender's domain failed DMARC".into(),
            ],
            age_working_days: 3,
            due: Some("07/12/2026 17:00".into()),
            due_at: Some(1),
            sla: "at risk",
            assignee: None,
        }
    }

    #[test]
    fn a_row_escapes_what_the_sender_wrote_and_links_the_case_in_its_view() {
        let html = table_rows(&[row()], "?back=status%3Dall&x='", "Open cases");
        assert!(
            html.contains("&lt;b&gt;Evil&lt;/b&gt; &amp; &quot;Sons&quot; Surgery"),
            "{html}"
        );
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains(r#"<a href="/cases/CS-2026-000007?back=status%3Dall&amp;x=&#x27;">CS-2026-000007</a>"#));
        assert!(html.contains(r#"<span class="muted">(A12345)</span>"#));
        assert!(html.contains("<td class=\"hide-narrow\">primary user gp</td>"));
        assert!(html.contains(
            r#"<span class="tag sla-at-risk">at risk</span><br><span class="muted">07/12/2026 17:00</span>"#
        ));
        assert!(html.contains(
            r#"<span class="finding-code">Signatory not on the register</span>; <span class="finding-code">Sender&#x27;s domain failed DMARC</span></td>"#
        ));
        assert!(html.contains("<td class=\"hide-narrow\">unassigned</td>"));
        assert!(html.contains(r#"aria-label="Select CS-2026-000007""#));
    }

    #[test]
    fn a_row_without_organisation_workflow_or_sla_says_so_and_a_closed_one_shows_no_due_time() {
        let bare = QueueRow {
            workflow: None,
            org_name: None,
            org_ods_code: None,
            sla: "",
            findings: vec![],
            assignee: Some("sam@nhs.net".into()),
            ..row()
        };
        let html = table_rows(&[bare], "", "Open cases");
        assert!(
            html.contains("<td>–</td>") && !html.contains("class=\"muted\">("),
            "{html}"
        );
        assert!(html.contains("<td class=\"hide-narrow\">unclassified</td>"));
        assert!(html.contains(r#"<span class="muted">no SLA yet</span>"#));
        assert!(html.contains("<td class=\"hide-narrow\">sam@nhs.net</td>"));
        let closed = table_rows(&[QueueRow { sla: "closed", ..row() }], "", "Closed cases");
        assert!(
            closed.contains(r#"<span class="tag sla-closed">closed</span></td>"#),
            "{closed}"
        );
    }

    #[test]
    fn an_empty_view_says_nothing_matches() {
        assert_eq!(
            table_rows(&[], "", "Closed cases"),
            "<tr><td colspan=\"9\">No closed cases match.</td></tr>\n"
        );
    }
}
