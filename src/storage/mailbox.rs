//! Mailbox bookkeeping: position, lease, health, and ingest errors.

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};

// ---- Mailbox bookkeeping: position, lease, health, ingest errors -------------------------------

/// Takes (or renews) the lease on a mailbox for `holder` until `until`, unless another holder
/// has a lease that has not yet expired. Returns whether `holder` now holds it.
pub async fn try_acquire_lease(
    conn: &mut AnyConnection,
    mailbox: &str,
    holder: &str,
    now: i64,
    until: i64,
) -> Result<bool, StorageError> {
    sqlx::query("INSERT INTO mailbox_state (mailbox) VALUES ($1) ON CONFLICT (mailbox) DO NOTHING")
        .bind(mailbox)
        .execute(&mut *conn)
        .await
        .context("registering a mailbox")?;
    let taken = sqlx::query(
        "UPDATE mailbox_state SET lease_holder = $1, lease_until = $2
         WHERE mailbox = $3 AND (lease_holder IS NULL OR lease_holder = $1 OR lease_until IS NULL OR lease_until < $4)",
    )
    .bind(holder)
    .bind(until)
    .bind(mailbox)
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("taking the mailbox lease")?;
    Ok(taken.rows_affected() == 1)
}

pub async fn release_lease(conn: &mut AnyConnection, mailbox: &str, holder: &str) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE mailbox_state SET lease_holder = NULL, lease_until = NULL WHERE mailbox = $1 AND lease_holder = $2",
    )
    .bind(mailbox)
    .bind(holder)
    .execute(&mut *conn)
    .await
    .context("releasing the mailbox lease")?;
    Ok(())
}

/// The UIDVALIDITY and the last UID taken, as stored for a mailbox.
pub async fn mailbox_position(
    conn: &mut AnyConnection,
    mailbox: &str,
) -> Result<(Option<i64>, Option<i64>), StorageError> {
    let row = sqlx::query("SELECT uidvalidity, last_uid FROM mailbox_state WHERE mailbox = $1")
        .bind(mailbox)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a mailbox position")?;
    match row {
        Some(r) => Ok((
            r.try_get(0).context("decoding a mailbox position")?,
            r.try_get(1).context("decoding a mailbox position")?,
        )),
        None => Ok((None, None)),
    }
}

pub async fn set_mailbox_position(
    conn: &mut AnyConnection,
    mailbox: &str,
    uidvalidity: i64,
    last_uid: i64,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE mailbox_state SET uidvalidity = $1, last_uid = $2 WHERE mailbox = $3")
        .bind(uidvalidity)
        .bind(last_uid)
        .bind(mailbox)
        .execute(&mut *conn)
        .await
        .context("saving a mailbox position")?;
    Ok(())
}

/// Records the outcome of a poll for the health view.
pub async fn record_poll(
    conn: &mut AnyConnection,
    mailbox: &str,
    now: i64,
    backlog: Option<i64>,
    error: Option<&str>,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO mailbox_state (mailbox) VALUES ($1) ON CONFLICT (mailbox) DO NOTHING")
        .bind(mailbox)
        .execute(&mut *conn)
        .await
        .context("registering a mailbox")?;
    let query = if error.is_none() {
        "UPDATE mailbox_state SET last_poll_at = $1, last_success_at = $1, backlog = COALESCE($2, backlog), last_error = $3 WHERE mailbox = $4"
    } else {
        "UPDATE mailbox_state SET last_poll_at = $1, backlog = COALESCE($2, backlog), last_error = $3 WHERE mailbox = $4"
    };
    sqlx::query(query)
        .bind(now)
        .bind(backlog)
        .bind(error)
        .bind(mailbox)
        .execute(&mut *conn)
        .await
        .context("recording a poll")?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MailboxHealth {
    pub mailbox: String,
    pub uidvalidity: Option<i64>,
    pub last_uid: Option<i64>,
    pub lease_holder: Option<String>,
    pub lease_until: Option<i64>,
    pub last_poll_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub backlog: Option<i64>,
    pub last_error: Option<String>,
}

pub async fn mailbox_health(conn: &mut AnyConnection) -> Result<Vec<MailboxHealth>, StorageError> {
    let rows = sqlx::query(
        "SELECT mailbox, uidvalidity, last_uid, lease_holder, lease_until, last_poll_at, last_success_at, backlog, last_error
         FROM mailbox_state ORDER BY mailbox",
    )
    .fetch_all(&mut *conn)
    .await
    .context("reading mailbox health")?;
    rows.iter()
        .map(|r| {
            Ok(MailboxHealth {
                mailbox: r.try_get(0)?,
                uidvalidity: r.try_get(1)?,
                last_uid: r.try_get(2)?,
                lease_holder: r.try_get(3)?,
                lease_until: r.try_get(4)?,
                last_poll_at: r.try_get(5)?,
                last_success_at: r.try_get(6)?,
                backlog: r.try_get(7)?,
                last_error: r.try_get(8)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding mailbox health")
}

/// Counts a failed attempt to ingest the message at `source`; returns the attempts so far.
pub async fn record_ingest_error(
    conn: &mut AnyConnection,
    source: &str,
    mailbox: &str,
    reason: &str,
    now: i64,
) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO ingest_errors (source, mailbox, reason, attempts, first_seen_at, last_seen_at) VALUES ($1, $2, $3, 1, $4, $4)
         ON CONFLICT (source) DO UPDATE SET reason = $3, attempts = ingest_errors.attempts + 1, last_seen_at = $4, resolved_at = NULL
         RETURNING attempts",
    )
    .bind(source)
    .bind(mailbox)
    .bind(reason)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .context("recording an ingest error")
}

/// Records that a message was set aside, with why. The attempts already counted stand (a
/// quarantine is not one more attempt), so the count agrees with the reason's "failed N times".
pub async fn record_quarantine(
    conn: &mut AnyConnection,
    source: &str,
    mailbox: &str,
    reason: &str,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO ingest_errors (source, mailbox, reason, attempts, quarantined, first_seen_at, last_seen_at) VALUES ($1, $2, $3, 1, 1, $4, $4)
         ON CONFLICT (source) DO UPDATE SET reason = $3, quarantined = 1, last_seen_at = $4, resolved_at = NULL",
    )
    .bind(source)
    .bind(mailbox)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("recording a quarantined message")?;
    Ok(())
}

/// Marks a mailbox's open errors resolved (when its quarantine is sent back for a retry).
pub async fn resolve_ingest_errors(conn: &mut AnyConnection, mailbox: &str, now: i64) -> Result<u64, StorageError> {
    let done = sqlx::query("UPDATE ingest_errors SET resolved_at = $1 WHERE mailbox = $2 AND resolved_at IS NULL")
        .bind(now)
        .bind(mailbox)
        .execute(&mut *conn)
        .await
        .context("resolving ingest errors")?;
    Ok(done.rows_affected())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestErrorRecord {
    pub source: String,
    pub mailbox: Option<String>,
    pub reason: String,
    pub attempts: i64,
    pub quarantined: bool,
    pub last_seen_at: i64,
}

pub async fn open_ingest_errors(conn: &mut AnyConnection) -> Result<Vec<IngestErrorRecord>, StorageError> {
    let rows = sqlx::query("SELECT source, mailbox, reason, attempts, quarantined, last_seen_at FROM ingest_errors WHERE resolved_at IS NULL ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .context("reading ingest errors")?;
    rows.iter()
        .map(|r| {
            Ok(IngestErrorRecord {
                source: r.try_get(0)?,
                mailbox: r.try_get(1)?,
                reason: r.try_get(2)?,
                attempts: r.try_get(3)?,
                quarantined: r.try_get::<i64, _>(4)? != 0,
                last_seen_at: r.try_get(5)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding ingest errors")
}
