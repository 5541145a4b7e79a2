//! The caseworkers' queue: open cases, most urgent first, a page at a time (keyset), with
//! filters and search. The one query whose text is assembled (from placeholders only): it
//! starts from whichever index the search can use.

use sqlx::{AnyConnection, Row};

use super::{Backend, QueryContext, StorageError};
use crate::policy::Finding;

/// What the queue is asked for. Empty strings mean "any".
#[derive(Debug, Clone)]
pub struct QueueQuery<'a> {
    /// Open cases (most urgent first), closed ones or every case (both newest first).
    pub scope: QueueScope,
    pub state: &'a str,
    pub workflow: &'a str,
    /// A finding code the case must have.
    pub finding: &'a str,
    /// `mine` (assigned to `user_id`) or `unassigned`.
    pub assignee: &'a str,
    pub user_id: i64,
    /// Only cases due before this time.
    pub overdue_before: Option<i64>,
    /// A reference, ODS code, organisation, sender, or any text of the form.
    pub search: &'a str,
    /// Keyset cursor: the `(due_at, id)` of the last row of the previous page (open cases),
    /// or `(_, id)` (closed or every case; 0 for the first page).
    pub after: (i64, i64),
    /// Final states: left out of the open cases, the only ones of the closed.
    pub terminal_states: &'a [String],
    pub limit: i64,
}

/// Which cases the queue lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueScope {
    /// Cases still to be worked, most urgent first.
    #[default]
    Open,
    /// Cases in a final state, newest first ("what happened to our request?").
    Closed,
    /// Every case, newest first.
    All,
}

/// One row of the queue.
#[derive(Debug, Clone)]
pub struct QueueRecord {
    /// The SLA clock is stopped (the case waits on its sender).
    pub sla_paused: bool,
    pub id: i64,
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    pub org_name: Option<String>,
    pub org_ods_code: Option<String>,
    pub finding_codes: Vec<String>,
    pub created_at: i64,
    pub due_at: Option<i64>,
    /// The assignee's address.
    pub assignee: Option<String>,
}

/// The text a free-text search reads, and its pattern. On PostgreSQL the trigram index
/// (migration 0007) is built on exactly this expression, folded for case and diacritics. On
/// SQLite the FTS table (migration 0007) holds the text (the field values, not their names),
/// folds it for a rare term, and a common term is tested here against the same text, folded
/// for ASCII case only.
fn search_text_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => {
            "countersign_search_fold(COALESCE(c.org_name, '') || ' ' || COALESCE(c.sender, '') || ' ' || c.reference || ' ' || c.fields || ' ' || c.recorded) LIKE countersign_search_fold($8) ESCAPE '\\'"
        }
        Backend::Sqlite => "(SELECT LOWER(terms) FROM case_search WHERE rowid = c.id) LIKE $8 ESCAPE '\\'",
    }
}

/// Above this many indexed matches a search term is common: walking the queue in SLA order
/// finds a page of them sooner than sorting every match.
const SEARCH_INDEX_MAX_MATCHES: i64 = 1_000;

/// Where the queue query starts.
enum QueueSource {
    /// Every case, in SLA order (no search, or a common term tested row by row).
    Walk,
    /// The cases whose ODS code or reference is the search (indexed).
    Exact,
    /// The cases an FTS5 query (bound as this string) matches: a rare term on SQLite.
    Matched(String),
}

/// Escapes `%`, `_` and the escape character itself, for `LIKE ... ESCAPE '\'`.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The FTS5 phrase query for a search term: the whole term as one quoted string, so that its
/// punctuation (an email's `@` and `.`) is text, not query syntax.
fn fts_phrase(term: &str) -> String {
    format!("\"{}\"", term.replace('"', "\"\""))
}

/// On SQLite, a rare term (at most [`SEARCH_INDEX_MAX_MATCHES`] cases, by the trigram index)
/// starts from its matches; a common one, or one too short for trigrams, walks the queue.
async fn sqlite_free_text_source(conn: &mut AnyConnection, term: &str) -> Result<QueueSource, StorageError> {
    if term.chars().count() < 3 {
        return Ok(QueueSource::Walk);
    }
    let phrase = fts_phrase(term);
    let matches: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT rowid FROM case_search WHERE case_search MATCH $1 LIMIT $2)")
            .bind(&phrase)
            .bind(SEARCH_INDEX_MAX_MATCHES + 1)
            .fetch_one(&mut *conn)
            .await
            .context("counting a search's matches")?;
    Ok(if matches > SEARCH_INDEX_MAX_MATCHES {
        QueueSource::Walk
    } else {
        QueueSource::Matched(phrase)
    })
}

/// Open cases, most urgent first, a page at a time (keyset, so it stays fast at any depth).
/// It reads on the caller's connection: a request holds at most one pooled connection.
pub async fn queue_page(conn: &mut AnyConnection, q: &QueueQuery<'_>) -> Result<Vec<QueueRecord>, StorageError> {
    let rows = queue_statement(conn, q, Explain::No).await?;
    rows.iter()
        .map(|row| {
            let findings_json: String = row.try_get(6)?;
            let findings: Vec<Finding> = serde_json::from_str(&findings_json).unwrap_or_default();
            Ok(QueueRecord {
                id: row.try_get(0)?,
                reference: row.try_get(1)?,
                workflow: row.try_get(2)?,
                state: row.try_get(3)?,
                org_name: row.try_get(4)?,
                org_ods_code: row.try_get(5)?,
                finding_codes: findings.iter().map(|f| f.code.as_str().to_string()).collect(),
                created_at: row.try_get(7)?,
                due_at: row.try_get(8)?,
                assignee: row.try_get(9)?,
                sla_paused: row.try_get::<Option<i64>, _>(10)?.is_some(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the queue")
}

/// The plan the database chooses for [`queue_page`]'s statement, with the same values bound:
/// one line per step (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL). The queue's
/// speed rests on the plan walking the `(due_at, id)` index, so the tests read it.
pub async fn queue_plan(conn: &mut AnyConnection, q: &QueueQuery<'_>) -> Result<Vec<String>, StorageError> {
    let rows = queue_statement(conn, q, Explain::Plan).await?;
    let column = match Backend::of(conn) {
        Backend::Postgres => 0,
        Backend::Sqlite => 3,
    };
    rows.iter()
        .map(|row| row.try_get::<String, _>(column))
        .collect::<Result<_, sqlx::Error>>()
        .context("reading the queue's plan")
}

/// Whether [`queue_statement`] runs the queue or asks for its plan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Explain {
    No,
    Plan,
}

/// Builds the queue's statement for `q`, binds its values and runs it (or its `EXPLAIN`).
async fn queue_statement(
    conn: &mut AnyConnection,
    q: &QueueQuery<'_>,
    explain: Explain,
) -> Result<Vec<sqlx::any::AnyRow>, StorageError> {
    let backend = Backend::of(conn);
    // A search that is an ODS code or a case reference is an exact (indexed) match; anything
    // else is a substring of the organisation, the sender, the reference or the form's fields.
    // Control characters (a NUL, a newline) are never part of what anyone searches for, and a
    // NUL is a syntax error to the full-text index.
    let cleaned: String = q.search.chars().filter(|c| !c.is_control()).collect();
    let term = cleaned.trim();
    let exact = crate::domain::CaseRef::parse(term)
        .map(|r| r.as_str().to_string())
        .or_else(|| {
            crate::domain::OdsCode::parse(term)
                .filter(|_| term.chars().any(|c| c.is_ascii_digit()))
                .map(|c| c.as_str().to_string())
        })
        .unwrap_or_default();
    let free_text = if term.is_empty() || !exact.is_empty() { "" } else { term };
    let source = if !exact.is_empty() {
        // Start from the few matching rows (by their indexes) rather than walking the whole
        // queue in SLA order looking for them.
        QueueSource::Exact
    } else if !free_text.is_empty() && backend == Backend::Sqlite {
        sqlite_free_text_source(conn, free_text).await?
    } else {
        // PostgreSQL's planner chooses between its trigram index and the SLA-order walk itself.
        QueueSource::Walk
    };
    let substring = if free_text.is_empty() || matches!(source, QueueSource::Matched(_)) {
        String::new()
    } else {
        format!("%{}%", escape_like(&free_text.to_lowercase()))
    };
    let search_clause = if substring.is_empty() {
        "$8 = ''".to_string()
    } else {
        search_text_sql(backend).to_string()
    };
    let mut next_placeholder = 13;
    let from = match &source {
        // SQLite's planner, asked for one row (the case page's "next case"), prefers a skip-scan
        // of the state index over every open case due later, sorted afterwards: 5 ms at
        // 100,000 cases instead of a few rows of the (due_at, id) index. The open queue is
        // always read in that index's order, so it is named.
        QueueSource::Walk if backend == Backend::Sqlite && q.scope == QueueScope::Open => {
            "cases c INDEXED BY cases_due_id"
        }
        QueueSource::Walk => "cases c",
        QueueSource::Exact => {
            "(SELECT id AS matched FROM cases WHERE org_ods_code = $12 UNION SELECT id FROM cases WHERE reference = $12) m JOIN cases c ON c.id = m.matched"
        }
        QueueSource::Matched(_) => {
            next_placeholder += 1;
            "(SELECT rowid AS matched FROM case_search WHERE case_search MATCH $13) m JOIN cases c ON c.id = m.matched"
        }
    };
    let placeholders: Vec<String> = (0..q.terminal_states.len())
        .map(|i| format!("${}", i + next_placeholder))
        .collect();
    // Open cases: the cursor is a row comparison, `(due_at, id) > (…)`: both databases read
    // it as a range of the (due_at, id) index. Spelled as `due_at > x OR (due_at = x AND id >
    // y)`, PostgreSQL scans the index from its start and filters, and a page deep in the
    // queue costs ~100 ms. Closed and all cases go newest first by id (a closed case may have
    // no due time); `$9` is still bound there, so it is named where it decides nothing.
    let placeholders = if q.scope == QueueScope::All {
        Vec::new()
    } else {
        placeholders
    };
    let in_final = if placeholders.is_empty() {
        "1 = 0".to_string()
    } else {
        format!("c.state IN ({})", placeholders.join(", "))
    };
    let (scope_clause, order) = match q.scope {
        QueueScope::Open => (
            format!("(c.due_at, c.id) > ($9, $10) AND NOT ({in_final})"),
            "c.due_at, c.id",
        ),
        QueueScope::Closed => (format!("(c.id < $10 OR $9 < -1) AND {in_final}"), "c.id DESC"),
        QueueScope::All => ("(c.id < $10 OR $9 < -1)".to_string(), "c.id DESC"),
    };
    let sql = format!(
        "SELECT c.id, c.reference, c.workflow, c.state, c.org_name, c.org_ods_code, c.findings, c.created_at, c.due_at, u.email, c.sla_paused_at
         FROM {from} LEFT JOIN users u ON u.id = c.assignee_id
         WHERE ($1 = '' OR c.state = $1) AND ($2 = '' OR c.workflow = $2) AND ($3 = '' OR c.findings LIKE $3 ESCAPE '\\')
           AND ($4 = '' OR ($4 = 'mine' AND c.assignee_id = $5) OR ($4 = 'unassigned' AND c.assignee_id IS NULL))
           AND ($6 = 0 OR c.due_at < $7)
           AND {search_clause}
           AND ($12 = '' OR c.org_ods_code = $12 OR c.reference = $12)
           AND {scope_clause}
         ORDER BY {order} LIMIT $11"
    );
    let finding = if q.finding.is_empty() {
        String::new()
    } else {
        format!("%\"code\":\"{}\"%", escape_like(q.finding))
    };
    // The SQL text is built only from placeholders; every value is bound. Not a cached
    // prepared statement: PostgreSQL then plans it for the values given (the trigram index for
    // a rare term, the SLA-order walk for a common one), never with a generic plan.
    let sql = match (explain, backend) {
        (Explain::No, _) => sql,
        (Explain::Plan, Backend::Sqlite) => format!("EXPLAIN QUERY PLAN {sql}"),
        (Explain::Plan, Backend::Postgres) => format!("EXPLAIN {sql}"),
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(q.state.to_string())
        .bind(q.workflow.to_string())
        .bind(finding)
        .bind(q.assignee.to_string())
        .bind(q.user_id)
        .bind(i64::from(q.overdue_before.is_some()))
        .bind(q.overdue_before.unwrap_or(0))
        .bind(substring)
        .bind(q.after.0)
        .bind(q.after.1)
        .bind(q.limit)
        .bind(exact);
    if let QueueSource::Matched(match_query) = source {
        query = query.bind(match_query);
    }
    if q.scope != QueueScope::All {
        for state_name in q.terminal_states {
            query = query.bind(state_name.clone());
        }
    }
    query.fetch_all(&mut *conn).await.context("reading the queue")
}
