//! What the managers' reports read: each case's state moves in a period, the facts of those
//! cases, the cases open now, and the dashboard's counts. The figures themselves are worked
//! out in [`crate::reports`].

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};
use crate::reports::{CaseFacts, LifecycleEvent, OpenCase};

/// Ids in one `IN (...)` list, at most: well inside both databases' limits.
const IDS_PER_QUERY: usize = 500;

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every state move (creation included) of each case that moved in `[from_ms, to_ms)`, in
/// order per case, with those cases' facts.
pub async fn report_lifecycles(
    conn: &mut AnyConnection,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Vec<LifecycleEvent>, HashMap<i64, CaseFacts>), StorageError> {
    // The cases that moved in the period, found by the (at, case_id) index of moves; their
    // whole lives then read by (case_id, id). One statement each, not a round trip per batch.
    const MOVED: &str = "SELECT case_id FROM case_events WHERE at >= $1 AND at < $2 AND to_state IS NOT NULL";
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT case_id, at, to_state, actor, actor_role FROM case_events \
         WHERE to_state IS NOT NULL AND case_id IN ({MOVED}) ORDER BY case_id, id"
    )))
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(&mut *conn)
    .await
    .context("reading the state moves of a period's cases")?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        events.push(LifecycleEvent {
            case_id: row.try_get(0).context("decoding a state move")?,
            at: row.try_get(1).context("decoding a state move")?,
            to_state: row.try_get(2).context("decoding a state move")?,
            actor: row.try_get(3).context("decoding a state move")?,
            actor_role: row.try_get(4).context("decoding a state move")?,
        });
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, workflow, COALESCE(org_name, org_ods_code), findings FROM cases WHERE id IN ({MOVED})"
    )))
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(&mut *conn)
    .await
    .context("reading the facts of a period's cases")?;
    let mut facts = HashMap::with_capacity(rows.len());
    for row in &rows {
        let findings: String = row.try_get(3).context("decoding a case's facts")?;
        facts.insert(
            row.try_get(0).context("decoding a case's facts")?,
            CaseFacts {
                workflow: row.try_get(1).context("decoding a case's facts")?,
                organisation: row.try_get(2).context("decoding a case's facts")?,
                findings: finding_codes(&findings),
            },
        );
    }
    Ok((events, facts))
}

/// The distinct codes of a case's stored findings (a list of `{ "code": ... }` objects):
/// only the codes are read, not the messages beside them.
pub(super) fn finding_codes(json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Coded {
        code: String,
    }
    let mut codes: Vec<String> = serde_json::from_str::<Vec<Coded>>(json)
        .map(|found| found.into_iter().map(|f| f.code).collect())
        .unwrap_or_default();
    codes.sort();
    codes.dedup();
    codes
}

/// The statement [`open_cases`] runs for `states` open states. Every column it reads of
/// `cases` is in the `cases_state_due` index, so it reads the index alone (its plan is tested).
pub fn open_cases_statement(states: usize) -> String {
    format!(
        "SELECT c.workflow, c.state, c.created_at, u.email, c.due_at, c.sla_paused_at \
         FROM cases c LEFT JOIN users u ON u.id = c.assignee_id WHERE c.state IN ({})",
        placeholders(1, states)
    )
}

/// The cases in any of `open_states` now, with their assignee's address.
pub async fn open_cases(conn: &mut AnyConnection, open_states: &[String]) -> Result<Vec<OpenCase>, StorageError> {
    if open_states.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(open_cases_statement(open_states.len())));
    for state in open_states {
        query = query.bind(state.as_str());
    }
    let rows = query.fetch_all(&mut *conn).await.context("reading the open cases")?;
    rows.iter()
        .map(|row| {
            Ok(OpenCase {
                workflow: row.try_get(0)?,
                state: row.try_get(1)?,
                created_at: row.try_get(2)?,
                assignee: row.try_get(3)?,
                due_at: row.try_get(4)?,
                sla_paused: row.try_get::<Option<i64>, _>(5)?.is_some(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding an open case")
}

/// Cases received since `since_ms`: the dashboard's intake today.
pub async fn cases_received_since(conn: &mut AnyConnection, since_ms: i64) -> Result<i64, StorageError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM cases WHERE created_at >= $1")
        .bind(since_ms)
        .fetch_one(&mut *conn)
        .await
        .context("counting today's intake")
}

/// The kept facts of the days from `first` to `last` (`YYYY-MM-DD`, both included).
pub async fn cached_report_days(
    conn: &mut AnyConnection,
    first: &str,
    last: &str,
) -> Result<Vec<(String, String)>, StorageError> {
    let rows = sqlx::query("SELECT day, facts FROM report_days WHERE day >= $1 AND day <= $2 ORDER BY day")
        .bind(first)
        .bind(last)
        .fetch_all(&mut *conn)
        .await
        .context("reading kept report days")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding kept report days")
}

/// Which days between `first` and `last` have their facts kept (the days only).
pub async fn kept_report_day_names(
    conn: &mut AnyConnection,
    first: &str,
    last: &str,
) -> Result<Vec<String>, StorageError> {
    sqlx::query_scalar("SELECT day FROM report_days WHERE day >= $1 AND day <= $2 ORDER BY day")
        .bind(first)
        .bind(last)
        .fetch_all(&mut *conn)
        .await
        .context("listing kept report days")
}

/// Keeps the facts of days that are over. A day kept already is left as it is (two instances
/// working out the same day get the same facts).
pub async fn keep_report_days(
    conn: &mut AnyConnection,
    days: &[(String, String)],
    now: i64,
) -> Result<(), StorageError> {
    for chunk in days.chunks(IDS_PER_QUERY / 3) {
        let sql = super::batch::multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO report_days (day, facts, computed_at) VALUES",
            3,
            chunk.len(),
            " ON CONFLICT (day) DO NOTHING",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (day, facts) in chunk {
            query = query.bind(day.as_str()).bind(facts.as_str()).bind(now);
        }
        query.execute(&mut *conn).await.context("keeping report days")?;
    }
    Ok(())
}

/// How many cases are in each of `states` now (states with none are left out), by the
/// (state, id) index.
pub async fn count_cases_in_states(
    conn: &mut AnyConnection,
    states: &[String],
) -> Result<Vec<(String, i64)>, StorageError> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT state, COUNT(*) FROM cases WHERE state IN ({}) GROUP BY state ORDER BY state",
        placeholders(1, states.len())
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for state in states {
        query = query.bind(state.as_str());
    }
    let rows = query.fetch_all(&mut *conn).await.context("counting cases by state")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding counts by state")
}

/// Clears the due time of up to `limit` cases in `states` that still have one; how many.
pub async fn clear_due_times_in_states(
    conn: &mut AnyConnection,
    states: &[String],
    limit: i64,
) -> Result<u64, StorageError> {
    if states.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE cases SET due_at = NULL WHERE id IN (SELECT id FROM cases WHERE state IN ({}) AND due_at IS NOT NULL LIMIT ${})",
        placeholders(1, states.len()),
        states.len() + 1
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for state in states {
        query = query.bind(state.as_str());
    }
    let done = query
        .bind(limit)
        .execute(&mut *conn)
        .await
        .context("clearing the due times of closed cases")?;
    Ok(done.rows_affected())
}

/// How many of the cases in `states` have each finding (each case counted once per code).
///
/// Counted by the database, which reads each case's findings where they lie: reading every
/// open case's findings out to count them here moved 27,000 rows (5 MB) at a million cases and
/// decoded each on a web worker, a 300 ms stall every time the queue's counts were refreshed.
pub async fn finding_counts(
    conn: &mut AnyConnection,
    states: &[String],
) -> Result<std::collections::BTreeMap<String, usize>, StorageError> {
    let mut counts = std::collections::BTreeMap::new();
    if states.is_empty() {
        return Ok(counts);
    }
    // Findings are only ever written by the engine, as a JSON array of objects with a code.
    let (code, each_finding) = match super::Backend::of(conn) {
        super::Backend::Postgres => ("f.value->>'code'", "json_array_elements(c.findings::json) AS f(value)"),
        super::Backend::Sqlite => ("json_extract(f.value, '$.code')", "json_each(c.findings) AS f"),
    };
    let sql = format!(
        "SELECT {code} AS code, COUNT(DISTINCT c.id) FROM cases c CROSS JOIN {each_finding}
         WHERE c.state IN ({}) AND c.findings <> '[]' GROUP BY 1",
        placeholders(1, states.len())
    );
    let mut query = sqlx::query_as::<_, (Option<String>, i64)>(sqlx::AssertSqlSafe(sql));
    for state in states {
        query = query.bind(state.as_str());
    }
    for (code, cases) in query.fetch_all(&mut *conn).await.context("counting findings")? {
        if let Some(code) = code {
            counts.insert(code, usize::try_from(cases).unwrap_or(0));
        }
    }
    Ok(counts)
}

/// When the first state move happened (None before any case): how far back report days go.
pub async fn first_move_at(conn: &mut AnyConnection) -> Result<Option<i64>, StorageError> {
    sqlx::query_scalar("SELECT MIN(at) FROM case_events WHERE to_state IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .context("finding the first state move")
}

#[cfg(test)]
mod tests {
    #[test]
    fn finding_codes_are_read_once_each_and_bad_json_gives_none() {
        let json = r#"[{"code":"b","message":"x"},{"code":"a"},{"code":"b"}]"#;
        assert_eq!(super::finding_codes(json), vec!["a", "b"]);
        assert!(super::finding_codes("not json").is_empty());
    }
}
