//! The transactional outbox: mail queued inside a case's transaction, sent by the dispatcher.

use sqlx::{AnyConnection, Row};

use super::queries::*;
use super::{Backend, QueryContext, StorageError, stored_word};
use crate::domain::OutboxStatus;

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRecord {
    pub template: String,
    pub recipient: Option<String>,
    pub status: OutboxStatus,
    pub suppressed_reason: Option<String>,
    pub in_reply_to: Option<String>,
    pub created_at: i64,
    pub last_error: Option<String>,
    /// What its template is given (JSON): the case page renders the mail from it.
    pub context_json: String,
}

pub async fn outbox_for_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<OutboxRecord>, StorageError> {
    let rows = sqlx::query(OUTBOX_FOR_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading a case's outbound mail")?;
    rows.iter()
        .map(|r| {
            Ok(OutboxRecord {
                template: r.try_get(0)?,
                recipient: r.try_get(1)?,
                status: stored_word(r, 2, OutboxStatus::parse)?,
                suppressed_reason: r.try_get(3)?,
                in_reply_to: r.try_get(4)?,
                created_at: r.try_get(5)?,
                last_error: r.try_get(6)?,
                context_json: r.try_get(7)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding outbound mail")
}

/// How many outbound messages stand in each status (the health view).
pub async fn outbox_counts_by_status(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>, StorageError> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        .fetch_all(&mut *conn)
        .await
        .context("counting outbound mail")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .context("counting outbound mail")
}

/// An outbound message as `countersign outbox list` shows it.
#[derive(Debug, Clone)]
pub struct OutboxListing {
    pub id: i64,
    pub case_reference: Option<String>,
    pub template: String,
    pub recipient: Option<String>,
    pub status: OutboxStatus,
    pub attempts: i64,
    /// The last error, or why it was suppressed.
    pub note: String,
}

/// The newest outbound messages, optionally of one status.
pub async fn list_outbox(
    conn: &mut AnyConnection,
    status: Option<OutboxStatus>,
    limit: i64,
) -> Result<Vec<OutboxListing>, StorageError> {
    let rows = sqlx::query(
        "SELECT o.id, c.reference, o.template, o.recipient, o.status, o.attempts, COALESCE(o.last_error, o.suppressed_reason, '')
         FROM outbox o LEFT JOIN cases c ON c.id = o.case_id
         WHERE ($1 IS NULL OR o.status = $1) ORDER BY o.id DESC LIMIT $2",
    )
    .bind(status.map(OutboxStatus::as_str))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .context("listing outbound mail")?;
    rows.iter()
        .map(|r| {
            Ok(OutboxListing {
                id: r.try_get(0)?,
                case_reference: r.try_get(1)?,
                template: r.try_get(2)?,
                recipient: r.try_get(3)?,
                status: stored_word(r, 4, OutboxStatus::parse)?,
                attempts: r.try_get(5)?,
                note: r.try_get(6)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("listing outbound mail")
}

/// Queues every failed message again, from its first attempt; returns how many.
pub async fn retry_failed_mail(conn: &mut AnyConnection, now: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_until = NULL WHERE status = 'failed'",
    )
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("queueing failed mail again")?;
    Ok(done.rows_affected())
}

/// A message claimed for sending.
#[derive(Debug, Clone)]
pub struct OutboxJob {
    pub id: i64,
    pub template: String,
    pub recipient: Option<String>,
    pub context: serde_json::Value,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub attempts: i64,
    pub automatic: bool,
}

/// Claims the next message due by `now` for `holder` until `lease_until`, counting the
/// attempt. Another instance skips it while claimed (`FOR UPDATE SKIP LOCKED` on PostgreSQL;
/// SQLite has one writer at a time), and a claim whose holder died lapses.
pub async fn claim_mail(
    conn: &mut AnyConnection,
    holder: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<OutboxJob>, StorageError> {
    let sql = if Backend::of(conn) == Backend::Postgres {
        "UPDATE outbox SET claimed_until = $1, claimed_by = $2, attempts = attempts + 1
         WHERE id = (SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $3
                     AND (claimed_until IS NULL OR claimed_until < $3)
                     ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, template, recipient, context, message_id, in_reply_to, attempts, automatic"
    } else {
        "UPDATE outbox SET claimed_until = $1, claimed_by = $2, attempts = attempts + 1
         WHERE id = (SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $3
                     AND (claimed_until IS NULL OR claimed_until < $3)
                     ORDER BY next_attempt_at, id LIMIT 1)
         RETURNING id, template, recipient, context, message_id, in_reply_to, attempts, automatic"
    };
    let row = sqlx::query(sql)
        .bind(lease_until)
        .bind(holder)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .context("claiming outbound mail")?;
    let Some(row) = row else { return Ok(None) };
    let decode = |row: &sqlx::any::AnyRow| -> Result<OutboxJob, sqlx::Error> {
        let context: String = row.try_get(3)?;
        Ok(OutboxJob {
            id: row.try_get(0)?,
            template: row.try_get(1)?,
            recipient: row.try_get(2)?,
            context: serde_json::from_str(&context).unwrap_or(serde_json::Value::Null),
            message_id: row.try_get(4)?,
            in_reply_to: row.try_get(5)?,
            attempts: row.try_get(6)?,
            automatic: row.try_get::<i64, _>(7)? != 0,
        })
    };
    decode(&row).map(Some).context("decoding outbound mail")
}

pub async fn mark_mail_sent(conn: &mut AnyConnection, id: i64, subject: &str, now: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE outbox SET status = 'sent', sent_at = $1, subject = $2, claimed_until = NULL, last_error = NULL WHERE id = $3")
        .bind(now)
        .bind(subject)
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("marking mail sent")?;
    Ok(())
}

pub async fn mark_mail_failed(conn: &mut AnyConnection, id: i64, error: &str, now: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE outbox SET status = 'failed', last_error = $1, claimed_until = NULL, sent_at = NULL, next_attempt_at = $2 WHERE id = $3")
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("marking mail failed")?;
    Ok(())
}

/// Releases a claimed message to be tried again at `at`, with why it waits. `refund` gives
/// back the attempt its claim counted (a message held back was never tried).
pub async fn retry_mail_at(
    conn: &mut AnyConnection,
    id: i64,
    at: i64,
    why: &str,
    refund: bool,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE outbox SET next_attempt_at = $1, claimed_until = NULL, last_error = $2, attempts = attempts - $3 WHERE id = $4")
        .bind(at)
        .bind(why)
        .bind(i64::from(refund))
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("scheduling a retry")?;
    Ok(())
}

/// How many automatic messages went to `recipient` since `since`, and when the oldest did.
pub async fn automatic_mail_sent_since(
    conn: &mut AnyConnection,
    recipient: &str,
    since: i64,
) -> Result<(i64, Option<i64>), StorageError> {
    let row = sqlx::query("SELECT COUNT(*), MIN(sent_at) FROM outbox WHERE recipient = $1 AND automatic = 1 AND status = 'sent' AND sent_at > $2")
        .bind(recipient)
        .bind(since)
        .fetch_one(&mut *conn)
        .await
        .context("checking the rate limit")?;
    Ok((
        row.try_get(0).context("checking the rate limit")?,
        row.try_get(1).context("checking the rate limit")?,
    ))
}
