//! Durable timers: armed and cancelled with case changes, claimed once by the scheduler.

use sqlx::{AnyConnection, Row};

use super::queries::*;
use super::{Backend, CancelTimers, QueryContext, StorageError, stored_word};
use crate::domain::TimerStatus;

/// The `state` of timers that belong to the case rather than to one state (the SLA timers).
pub const ANY_STATE: &str = "*";

/// Cancels a case's pending timers: those of its state, the case-wide ones, or both.
pub(super) async fn cancel_pending_timers(
    conn: &mut AnyConnection,
    case_id: i64,
    now: i64,
    which: CancelTimers,
) -> Result<u64, StorageError> {
    let query = match (which.of_state, which.case_wide) {
        (false, false) => return Ok(0),
        (true, true) => {
            "UPDATE timers SET status = 'cancelled', finished_at = $1 WHERE case_id = $2 AND status = 'pending'"
        }
        (true, false) => {
            "UPDATE timers SET status = 'cancelled', finished_at = $1 WHERE case_id = $2 AND status = 'pending' AND state <> '*'"
        }
        (false, true) => {
            "UPDATE timers SET status = 'cancelled', finished_at = $1 WHERE case_id = $2 AND status = 'pending' AND state = '*'"
        }
    };
    let done = sqlx::query(query)
        .bind(now)
        .bind(case_id)
        .execute(&mut *conn)
        .await
        .context("cancelling a case's timers")?;
    Ok(done.rows_affected())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TimerRecord {
    pub name: String,
    pub state: String,
    pub due_at: i64,
    pub status: TimerStatus,
}

pub async fn timers_for_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<TimerRecord>, StorageError> {
    let rows = sqlx::query(TIMERS_FOR_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading a case's timers")?;
    rows.iter()
        .map(|r| {
            Ok(TimerRecord {
                name: r.try_get(0)?,
                state: r.try_get(1)?,
                due_at: r.try_get(2)?,
                status: stored_word(r, 3, TimerStatus::parse)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding timers")
}

/// A timer claimed to fire.
#[derive(Debug, Clone)]
pub struct DueTimer {
    pub case_id: i64,
    pub name: String,
    /// The state it was armed for, or [`ANY_STATE`].
    pub state: String,
}

/// Claims the earliest pending timer due by `now`, marking it fired inside the caller's
/// transaction (which commits its effect with it). On PostgreSQL other instances skip the row
/// while it is claimed (`FOR UPDATE SKIP LOCKED`); SQLite has one writer at a time.
pub async fn claim_due_timer(conn: &mut AnyConnection, now: i64) -> Result<Option<DueTimer>, StorageError> {
    let sql = if Backend::of(conn) == Backend::Postgres {
        "UPDATE timers SET status = 'fired', finished_at = $1
         WHERE id = (SELECT id FROM timers WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING case_id, name, state"
    } else {
        "UPDATE timers SET status = 'fired', finished_at = $1
         WHERE id = (SELECT id FROM timers WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT 1)
         RETURNING case_id, name, state"
    };
    let row = sqlx::query(sql)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .context("claiming a due timer")?;
    row.map(|r| {
        Ok(DueTimer {
            case_id: r.try_get(0)?,
            name: r.try_get(1)?,
            state: r.try_get(2)?,
        })
    })
    .transpose()
    .context("decoding a timer")
}

/// When the next pending timer falls due, if any is pending.
pub async fn next_timer_due(conn: &mut AnyConnection) -> Result<Option<i64>, StorageError> {
    sqlx::query_scalar("SELECT MIN(due_at) FROM timers WHERE status = 'pending'")
        .fetch_one(&mut *conn)
        .await
        .context("finding the next timer")
}

/// How many timers are pending (the health view).
pub async fn pending_timer_count(conn: &mut AnyConnection) -> Result<i64, StorageError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM timers WHERE status = 'pending'")
        .fetch_one(&mut *conn)
        .await
        .context("counting pending timers")
}
