//! Scheduled jobs: claiming an occurrence once across instances, and the queries the daily
//! digest and housekeeping read and write.

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};

/// Claims one occurrence of a scheduled job; false when another instance (or an earlier run)
/// already has it.
pub async fn claim_job_run(
    conn: &mut AnyConnection,
    job: &str,
    scheduled_for: i64,
    now: i64,
) -> Result<bool, StorageError> {
    let claimed = sqlx::query(
        "INSERT INTO cron_runs (job, scheduled_for, started_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(job)
    .bind(scheduled_for)
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("claiming a scheduled job")?;
    Ok(claimed.rows_affected() == 1)
}

pub async fn finish_job_run(
    conn: &mut AnyConnection,
    job: &str,
    scheduled_for: i64,
    now: i64,
    outcome: &str,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE cron_runs SET finished_at = $1, outcome = $2 WHERE job = $3 AND scheduled_for = $4")
        .bind(now)
        .bind(outcome)
        .bind(job)
        .bind(scheduled_for)
        .execute(&mut *conn)
        .await
        .context("recording a scheduled job")?;
    Ok(())
}

/// How many cases stand in each workflow and state (`None`: unclassified).
pub async fn case_counts_by_state(
    conn: &mut AnyConnection,
) -> Result<Vec<(Option<String>, String, i64)>, StorageError> {
    let rows =
        sqlx::query("SELECT workflow, state, COUNT(*) FROM cases GROUP BY workflow, state ORDER BY workflow, state")
            .fetch_all(&mut *conn)
            .await
            .context("counting the backlog")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()
        .context("counting the backlog")
}

/// A case due by some time, as the digest lists it.
#[derive(Debug, Clone)]
pub struct DueCase {
    pub reference: String,
    pub org_ods_code: Option<String>,
    pub state: String,
    pub due_at: i64,
}

/// Cases due by `by`, earliest first (at most `limit`; final ones included, for the caller to
/// leave out by its workflows' terminal states).
pub async fn cases_due_by(conn: &mut AnyConnection, by: i64, limit: i64) -> Result<Vec<DueCase>, StorageError> {
    let rows = sqlx::query(
        "SELECT reference, org_ods_code, state, due_at FROM cases WHERE due_at <= $1 ORDER BY due_at LIMIT $2",
    )
    .bind(by)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .context("listing cases due")?;
    rows.iter()
        .map(|r| {
            Ok(DueCase {
                reference: r.try_get(0)?,
                org_ods_code: r.try_get(1)?,
                state: r.try_get(2)?,
                due_at: r.try_get(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("listing cases due")
}

/// Raw messages received before `cutoff` whose bytes are still kept, each with the state of
/// every case it belongs to (`None`: it has no case).
pub async fn old_raw_messages(
    conn: &mut AnyConnection,
    cutoff: i64,
) -> Result<Vec<(i64, Option<String>)>, StorageError> {
    let rows = sqlx::query(
        "SELECT r.id, c.state FROM raw_messages r LEFT JOIN case_messages cm ON cm.raw_message_id = r.id LEFT JOIN cases c ON c.id = cm.case_id
         WHERE r.received_at < $1 AND r.raw IS NOT NULL",
    )
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await
    .context("finding old raw messages")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .context("finding old raw messages")
}
