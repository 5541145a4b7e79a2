//! How much the database holds: a count of each kind of record, for operators (the health
//! view, metrics) and for tests that check what an operation stored without reading tables.

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};

/// Rows of each kind the service keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inventory {
    pub cases: i64,
    /// Cases opened for a form (not for an email without one).
    pub form_cases: i64,
    /// Emails stored (their raw bytes may since have been cleared by retention).
    pub raw_messages: i64,
    /// Emails whose raw bytes are still kept.
    pub raw_messages_kept: i64,
    pub attachments: i64,
    /// Links from a case to the email that opened it.
    pub origin_links: i64,
    /// Links from a case to a copy of its form that came again.
    pub duplicate_links: i64,
    pub case_events: i64,
    pub pending_timers: i64,
    pub outbox: i64,
    /// Messages whose preparation started and has not finished (a crash or a hang, or one in
    /// progress).
    pub prepare_attempts: i64,
}

/// Counts every kind of record, in one statement.
pub async fn inventory(conn: &mut AnyConnection) -> Result<Inventory, StorageError> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM cases), \
                    (SELECT COUNT(*) FROM cases WHERE form_sha256 IS NOT NULL), \
                    (SELECT COUNT(*) FROM raw_messages), \
                    (SELECT COUNT(*) FROM raw_messages WHERE raw IS NOT NULL), \
                    (SELECT COUNT(*) FROM attachments), \
                    (SELECT COUNT(*) FROM case_messages WHERE relation = 'origin'), \
                    (SELECT COUNT(*) FROM case_messages WHERE relation = 'duplicate'), \
                    (SELECT COUNT(*) FROM case_events), \
                    (SELECT COUNT(*) FROM timers WHERE status = 'pending'), \
                    (SELECT COUNT(*) FROM outbox), \
                    (SELECT COUNT(*) FROM prepare_attempts)",
    )
    .fetch_one(&mut *conn)
    .await
    .context("counting stored records")?;
    let count = |i: usize| row.try_get::<i64, _>(i).context("reading a count");
    Ok(Inventory {
        cases: count(0)?,
        form_cases: count(1)?,
        raw_messages: count(2)?,
        raw_messages_kept: count(3)?,
        attachments: count(4)?,
        origin_links: count(5)?,
        duplicate_links: count(6)?,
        case_events: count(7)?,
        pending_timers: count(8)?,
        outbox: count(9)?,
        prepare_attempts: count(10)?,
    })
}
