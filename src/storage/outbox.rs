//! The transactional outbox: mail queued inside a case's transaction, sent by the dispatcher.

use sqlx::{AnyConnection, Row};

use super::queries::*;
use super::{NewMail, QueryContext, StorageError};

/// Queues a message (about a case, or not: the daily digest). Changes to a case queue theirs
/// through [`super::apply_change`].
pub async fn enqueue_mail(
    conn: &mut AnyConnection,
    case_id: Option<i64>,
    m: &NewMail,
    now: i64,
) -> Result<(), StorageError> {
    let status = if m.suppressed_reason.is_some() {
        "suppressed"
    } else {
        "pending"
    };
    sqlx::query(
        "INSERT INTO outbox (case_id, template, recipient, context, message_id, in_reply_to, status, suppressed_reason, next_attempt_at, created_at, automatic)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
    )
    .bind(case_id)
    .bind(&m.template)
    .bind(&m.recipient)
    .bind(&m.context_json)
    .bind(&m.message_id)
    .bind(&m.in_reply_to)
    .bind(status)
    .bind(&m.suppressed_reason)
    .bind(now)
    .bind(i64::from(m.automatic))
    .execute(&mut *conn)
    .await
    .context("queueing an email")?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRecord {
    pub template: String,
    pub recipient: Option<String>,
    pub status: String,
    pub suppressed_reason: Option<String>,
    pub in_reply_to: Option<String>,
    pub created_at: i64,
    pub last_error: Option<String>,
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
                status: r.try_get(2)?,
                suppressed_reason: r.try_get(3)?,
                in_reply_to: r.try_get(4)?,
                created_at: r.try_get(5)?,
                last_error: r.try_get(6)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding outbound mail")
}
