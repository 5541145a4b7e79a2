//! The caseworkers' queue: open cases, most urgent first, a page at a time (keyset), with
//! filters and search. The one query whose text is assembled (from placeholders only): it
//! starts from whichever index the search can use.

use sqlx::{AnyConnection, Row};

use super::{Backend, QueryContext, StorageError};

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

/// The text a free-text search reads, tested against the pattern bound as `pattern`. On
/// PostgreSQL the trigram index (migration 0007) is built on exactly this expression, folded
/// for case and diacritics. On SQLite the FTS table (migration 0007) holds the text (the field
/// values, not their names), folds it for a rare term, and a common term is tested here against
/// the same text, folded for ASCII case only.
fn search_clause(backend: Backend, pattern: &str) -> String {
    match backend {
        Backend::Postgres => format!(
            "countersign_search_fold(COALESCE(c.org_name, '') || ' ' || COALESCE(c.sender, '') || ' ' || c.reference || ' ' || c.fields || ' ' || c.recorded) LIKE countersign_search_fold({pattern}) ESCAPE '\\'"
        ),
        Backend::Sqlite => {
            format!("(SELECT LOWER(terms) FROM case_search WHERE rowid = c.id) LIKE {pattern} ESCAPE '\\'")
        }
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
            Ok(QueueRecord {
                id: row.try_get(0)?,
                reference: row.try_get(1)?,
                workflow: row.try_get(2)?,
                state: row.try_get(3)?,
                org_name: row.try_get(4)?,
                org_ods_code: row.try_get(5)?,
                finding_codes: super::reports::finding_codes(&findings_json),
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

/// A value bound to the queue's statement.
enum Bound {
    Text(String),
    Int(i64),
}

/// The queue statement's values, in placeholder order.
#[derive(Default)]
struct BoundValues(Vec<Bound>);

impl BoundValues {
    /// Binds `text`; returns its placeholder.
    fn text(&mut self, text: &str) -> String {
        self.0.push(Bound::Text(text.to_string()));
        format!("${}", self.0.len())
    }

    /// Binds `number`; returns its placeholder.
    fn int(&mut self, number: i64) -> String {
        self.0.push(Bound::Int(number));
        format!("${}", self.0.len())
    }
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
    // Only the clauses this view uses are in the statement, each value bound in turn.
    let mut values = BoundValues::default();
    let mut clauses: Vec<String> = Vec::new();
    let from = match &source {
        // SQLite's planner, asked for one row (the case page's "next case"), prefers a skip-scan
        // of the state index over every open case due later, sorted afterwards: 5 ms at
        // 100,000 cases instead of a few rows of the (due_at, id) index. The open queue is
        // always read in that index's order, so it is named.
        QueueSource::Walk if backend == Backend::Sqlite && q.scope == QueueScope::Open => {
            "cases c INDEXED BY cases_due_id".to_string()
        }
        QueueSource::Walk => "cases c".to_string(),
        QueueSource::Exact => {
            let code = values.text(&exact);
            format!(
                "(SELECT id AS matched FROM cases WHERE org_ods_code = {code} UNION SELECT id FROM cases WHERE reference = {code}) m JOIN cases c ON c.id = m.matched"
            )
        }
        QueueSource::Matched(phrase) => {
            let phrase = values.text(phrase);
            format!(
                "(SELECT rowid AS matched FROM case_search WHERE case_search MATCH {phrase}) m JOIN cases c ON c.id = m.matched"
            )
        }
    };
    if !free_text.is_empty() && !matches!(source, QueueSource::Matched(_)) {
        let pattern = values.text(&format!("%{}%", escape_like(&free_text.to_lowercase())));
        clauses.push(search_clause(backend, &pattern));
    }
    if !q.state.is_empty() {
        clauses.push(format!("c.state = {}", values.text(q.state)));
    }
    if !q.workflow.is_empty() {
        clauses.push(format!("c.workflow = {}", values.text(q.workflow)));
    }
    if !q.finding.is_empty() {
        let pattern = format!("%\"code\":\"{}\"%", escape_like(q.finding));
        clauses.push(format!("c.findings LIKE {} ESCAPE '\\'", values.text(&pattern)));
    }
    match q.assignee {
        "" => {}
        "mine" => clauses.push(format!("c.assignee_id = {}", values.int(q.user_id))),
        "unassigned" => clauses.push("c.assignee_id IS NULL".to_string()),
        // An assignee filter it does not know matches no case, rather than every case.
        _ => clauses.push("1 = 0".to_string()),
    }
    if let Some(before) = q.overdue_before {
        clauses.push(format!("c.due_at < {}", values.int(before)));
    }
    // Any clause so far, or a start from the search's matches, is a filter or a search.
    let filtered = !clauses.is_empty() || !matches!(source, QueueSource::Walk);
    // Open cases: the cursor is a row comparison, `(due_at, id) > (…)`: both databases read
    // it as a range of the (due_at, id) index. Spelled as `due_at > x OR (due_at = x AND id >
    // y)`, PostgreSQL scans the index from its start and filters, and a page deep in the
    // queue costs ~100 ms. Closed and all cases go newest first by id (a closed case may have
    // no due time).
    let in_final = |values: &mut BoundValues| {
        if q.terminal_states.is_empty() {
            return "1 = 0".to_string();
        }
        let placeholders: Vec<String> = q.terminal_states.iter().map(|s| values.text(s)).collect();
        format!("c.state IN ({})", placeholders.join(", "))
    };
    let order = match q.scope {
        QueueScope::Open => {
            let (due, id) = (values.int(q.after.0), values.int(q.after.1));
            clauses.push(format!("(c.due_at, c.id) > ({due}, {id})"));
            clauses.push(format!("NOT ({})", in_final(&mut values)));
            "c.due_at, c.id"
        }
        QueueScope::Closed => {
            clauses.push(format!("c.id < {}", values.int(q.after.1)));
            clauses.push(in_final(&mut values));
            "c.id DESC"
        }
        QueueScope::All => {
            clauses.push(format!("c.id < {}", values.int(q.after.1)));
            "c.id DESC"
        }
    };
    // The limit is written into the statement, not bound: PostgreSQL prices a bound limit as a
    // tenth of the rows, so the prepared statement's one generic plan looked dearer than
    // planning afresh, and it planned every call (156 µs of its CPU a page, more than running
    // it). It is an integer, so the text stays free of any value from a request.
    let limit = q.limit;
    let sql = format!(
        "SELECT c.id, c.reference, c.workflow, c.state, c.org_name, c.org_ods_code, c.findings, c.created_at, c.due_at, u.email, c.sla_paused_at
         FROM {from} LEFT JOIN users u ON u.id = c.assignee_id
         WHERE {}
         ORDER BY {order} LIMIT {limit}",
        clauses.join(" AND ")
    );
    // The SQL text is built only from placeholders; every value is bound. A view with no
    // filter and no search (the whole queue, a page at a time, and the case page's "next
    // case") is one statement whatever its values, prepared once per connection: PostgreSQL
    // then neither parses nor plans it again, and its one plan is the walk of the (due_at, id)
    // index. A filtered or searched view is not cached: PostgreSQL plans it for the values
    // given (the trigram index for a rare term, the SLA-order walk for a common one; the state
    // index for a rare state), never with a generic plan.
    let (sql, persistent) = match (explain, backend) {
        (Explain::No, _) => (sql, !filtered),
        (Explain::Plan, Backend::Sqlite) => (format!("EXPLAIN QUERY PLAN {sql}"), false),
        (Explain::Plan, Backend::Postgres) => (format!("EXPLAIN {sql}"), false),
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(persistent);
    for value in values.0 {
        query = match value {
            Bound::Text(text) => query.bind(text),
            Bound::Int(number) => query.bind(number),
        };
    }
    query.fetch_all(&mut *conn).await.context("reading the queue")
}
