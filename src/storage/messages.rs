//! Raw messages as received, their attachments, and the bookkeeping that keeps a poison
//! message from looping (prepare attempts); threading by Message-ID.

use sqlx::{AnyConnection, Row};

use super::queries::*;
use super::{QueryContext, StorageError};

// ---- Messages and attachments ------------------------------------------------------------

pub struct NewRawMessage<'a> {
    pub dedup_key: &'a str,
    pub message_id: Option<&'a str>,
    pub sha256: &'a str,
    pub source: &'a str,
    pub received_at: i64,
    pub from_address: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub sent_at: Option<i64>,
    pub sender_auth_json: &'a str,
    /// When to check the sender again (a DKIM key could not be fetched), if at all.
    pub sender_recheck_at: Option<i64>,
    pub automatic: Option<&'a str>,
    pub raw: &'a [u8],
}

/// Stores a raw message, or returns `None` when one with the same dedup key is already stored.
pub async fn insert_raw_message(conn: &mut AnyConnection, m: &NewRawMessage<'_>) -> Result<Option<i64>, StorageError> {
    Ok(insert_raw_messages(conn, std::slice::from_ref(m))
        .await?
        .pop()
        .flatten())
}

/// How many of these stored messages exist (`ids` holds each once).
pub async fn count_raw_messages(conn: &mut AnyConnection, ids: &[i64]) -> Result<usize, StorageError> {
    let mut found = 0;
    // In chunks: a placeholder list stays well inside both databases' limits.
    for chunk in ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM raw_messages WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        found += query
            .fetch_one(&mut *conn)
            .await
            .context("reading back stored messages")? as usize;
    }
    Ok(found)
}

pub async fn raw_message_id_by_dedup_key(
    conn: &mut AnyConnection,
    dedup_key: &str,
) -> Result<Option<i64>, StorageError> {
    sqlx::query_scalar("SELECT id FROM raw_messages WHERE dedup_key = $1")
        .bind(dedup_key)
        .fetch_optional(&mut *conn)
        .await
        .context("looking up a message by Message-ID")
}

/// The id and content hash of the message stored under a dedup key.
pub async fn raw_message_by_dedup_key(
    conn: &mut AnyConnection,
    dedup_key: &str,
) -> Result<Option<(i64, String)>, StorageError> {
    let row = sqlx::query("SELECT id, sha256 FROM raw_messages WHERE dedup_key = $1")
        .bind(dedup_key)
        .fetch_optional(&mut *conn)
        .await
        .context("looking up a message by Message-ID")?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
        .context("reading a stored message")
}

/// An attachment of a message being stored. Its bytes are not copied: they stay inside the
/// message's own bytes, and are read from them again when asked for (see
/// [`attachment_bytes`]). Storing them twice cost a third of the writes of every message.
/// `attachments.content` holds a copy only for rows from before, and for messages whose bytes
/// retention has cleared (see [`clear_raw_message`](super::clear_raw_message)).
pub struct NewAttachment<'a> {
    pub raw_message_id: i64,
    pub filename: Option<&'a str>,
    pub claimed_type: &'a str,
    pub detected_type: Option<&'a str>,
    pub sha256: &'a str,
    pub forwarded: bool,
    pub size_bytes: usize,
}

/// Where an attachment's bytes are: its own copy, or inside its message (read from a row that
/// starts `content, sha256, size_bytes, raw_message_id`).
struct KeptAttachment {
    content: Vec<u8>,
    sha256: String,
    size_bytes: i64,
    raw_message_id: i64,
}

impl KeptAttachment {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(KeptAttachment {
            content: row.try_get(0)?,
            sha256: row.try_get(1)?,
            size_bytes: row.try_get(2)?,
            raw_message_id: row.try_get(3)?,
        })
    }

    /// Whether the row holds no copy of a non-empty attachment: its bytes are in the message.
    /// ([`attachments_in_message`] asks the same of the table.)
    fn in_message(&self) -> bool {
        self.content.is_empty() && self.size_bytes > 0
    }
}

/// A stored message's bytes, unless retention has cleared them.
async fn raw_bytes(conn: &mut AnyConnection, raw_message_id: i64) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(sqlx::query_scalar("SELECT raw FROM raw_messages WHERE id = $1")
        .bind(raw_message_id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a stored message's bytes")?
        .flatten())
}

/// An attachment's bytes: its own copy if it has one, else read again from its message and
/// checked against the hash stored when it arrived.
async fn attachment_bytes(conn: &mut AnyConnection, kept: KeptAttachment) -> Result<Vec<u8>, StorageError> {
    if !kept.in_message() {
        return Ok(kept.content);
    }
    let raw = raw_bytes(conn, kept.raw_message_id).await?;
    raw.and_then(|raw| crate::mail::attachment_in_message(&raw, &kept.sha256))
        .ok_or_else(|| StorageError::Corrupt {
            context: "reading an attachment",
            message: format!(
                "attachment {} of message {} is neither kept apart nor found in the message",
                kept.sha256, kept.raw_message_id
            ),
        })
}

/// A stored message as the case page shows it.
pub struct StoredMessage {
    pub from_address: Option<String>,
    pub subject: Option<String>,
    pub sent_at: Option<i64>,
    pub received_at: i64,
    pub sender_auth_json: String,
    pub raw: Option<Vec<u8>>,
}

pub async fn stored_message(conn: &mut AnyConnection, raw_message_id: i64) -> Result<StoredMessage, StorageError> {
    let row = sqlx::query(ORIGIN_MESSAGE)
        .bind(raw_message_id)
        .fetch_one(&mut *conn)
        .await
        .context("reading a case's message")?;
    Ok(StoredMessage {
        from_address: row.try_get(0).context("decoding a message")?,
        subject: row.try_get(1).context("decoding a message")?,
        sent_at: row.try_get(2).context("decoding a message")?,
        received_at: row.try_get(3).context("decoding a message")?,
        sender_auth_json: row.try_get(4).context("decoding a message")?,
        raw: row.try_get(5).context("decoding a message")?,
    })
}

/// An attachment as the case page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachmentSummary {
    pub id: i64,
    pub filename: Option<String>,
    pub claimed: String,
    pub detected: Option<String>,
    pub size: i64,
}

pub async fn attachments_of_message(
    conn: &mut AnyConnection,
    raw_message_id: i64,
) -> Result<Vec<AttachmentSummary>, StorageError> {
    let rows = sqlx::query(ATTACHMENTS_OF_MESSAGE)
        .bind(raw_message_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing a message's attachments")?;
    rows.iter()
        .map(attachment_summary)
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding attachments")
}

/// An attachment's summary from a row that starts `id, filename, claimed_type,
/// detected_type, size_bytes`.
fn attachment_summary(row: &sqlx::any::AnyRow) -> Result<AttachmentSummary, sqlx::Error> {
    Ok(AttachmentSummary {
        id: row.try_get(0)?,
        filename: row.try_get(1)?,
        claimed: row.try_get(2)?,
        detected: row.try_get(3)?,
        size: row.try_get(4)?,
    })
}

// ---- Threading ---------------------------------------------------------------------------------

/// The case a reply belongs to: one whose mail (ours, or the practice's) has one of these
/// Message-IDs (given without angle brackets).
pub async fn case_for_message_ids(
    conn: &mut AnyConnection,
    message_ids: &[String],
) -> Result<Option<i64>, StorageError> {
    // The caller caps the list (a hostile email may carry hundreds of thousands); this cap
    // keeps the query's size bounded whatever the caller does.
    let ids = &message_ids[..message_ids.len().min(MAX_THREAD_IDS)];
    if ids.is_empty() {
        return Ok(None);
    }
    // One query for all of them, in both places a Message-ID can point at a case: our own
    // mail (stored with angle brackets) and the mail we received (stored without). The ids
    // come first-match-wins in the caller's order, so the match is picked below.
    let placeholders = |offset: usize| {
        (0..ids.len())
            .map(|i| format!("${}", offset + i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = format!(
        "SELECT message_id, case_id FROM outbox WHERE case_id IS NOT NULL AND message_id IN ({})
         UNION ALL
         SELECT r.message_id, cm.case_id FROM raw_messages r JOIN case_messages cm ON cm.raw_message_id = r.id
          WHERE r.message_id IN ({})",
        placeholders(0),
        placeholders(ids.len())
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(format!("<{id}>"));
    }
    for id in ids {
        query = query.bind(id.clone());
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .context("matching a reply to a case")?;
    let mut found: Vec<(String, i64)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let message_id: String = row.try_get(0).context("decoding a message id")?;
        let case_id: i64 = row.try_get(1).context("decoding a case id")?;
        found.push((message_id.trim_matches(['<', '>']).to_string(), case_id));
    }
    Ok(ids
        .iter()
        .find_map(|id| found.iter().filter(|(m, _)| m == id).map(|(_, case_id)| *case_id).min()))
}

/// The most Message-IDs (In-Reply-To, then the latest References) considered for threading.
pub const MAX_THREAD_IDS: usize = 20;

// ---- Crash-loop protection ------------------------------------------------------------------

/// Counts an attempt at preparing each of several messages (by SHA-256, each once), in one
/// statement: the attempts each has now.
pub async fn note_prepare_attempts(
    conn: &mut AnyConnection,
    sha256s: &[&str],
    now: i64,
) -> Result<std::collections::HashMap<String, i64>, StorageError> {
    let mut attempts = std::collections::HashMap::with_capacity(sha256s.len());
    for chunk in sha256s.chunks(400) {
        let sql = super::batch::multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO prepare_attempts (sha256, attempts, updated_at) VALUES",
            3,
            chunk.len(),
            " ON CONFLICT (sha256) DO UPDATE SET attempts = prepare_attempts.attempts + 1, updated_at = excluded.updated_at
             RETURNING sha256, attempts",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for sha256 in chunk {
            query = query.bind(*sha256).bind(1_i64).bind(now);
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .context("counting attempts to prepare messages")?;
        for row in &rows {
            attempts.insert(
                row.try_get::<String, _>(0).context("reading an attempt count")?,
                row.try_get::<i64, _>(1).context("reading an attempt count")?,
            );
        }
    }
    Ok(attempts)
}

/// Forgets a message's attempts: it was recorded, or set aside.
pub async fn clear_prepare_attempts(conn: &mut AnyConnection, sha256: &str) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM prepare_attempts WHERE sha256 = $1")
        .bind(sha256)
        .execute(&mut *conn)
        .await
        .context("clearing a message's prepare attempts")?;
    Ok(())
}

/// What the engine needs of the email that opened a case: its Message-ID (threading), its
/// automatic-mail marker (loop safety), its sender and the verdict on them.
#[derive(Debug, Clone)]
pub struct OriginMessage {
    pub message_id: Option<String>,
    pub automatic: Option<String>,
    pub from_address: Option<String>,
    pub sender_auth_json: String,
}

pub async fn origin_of(conn: &mut AnyConnection, raw_message_id: i64) -> Result<OriginMessage, StorageError> {
    let row = sqlx::query("SELECT message_id, automatic, from_address, sender_auth FROM raw_messages WHERE id = $1")
        .bind(raw_message_id)
        .fetch_one(&mut *conn)
        .await
        .context("reading a case's first message")?;
    Ok(OriginMessage {
        message_id: row.try_get(0).context("decoding a message")?,
        automatic: row.try_get(1).context("decoding a message")?,
        from_address: row.try_get(2).context("decoding a message")?,
        sender_auth_json: row.try_get(3).context("decoding a message")?,
    })
}

/// Stores several raw messages with one statement (per 200): for each, in order, its new id,
/// or `None` when its dedup key was already taken (before, or by an earlier one of these).
pub async fn insert_raw_messages(
    conn: &mut AnyConnection,
    messages: &[NewRawMessage<'_>],
) -> Result<Vec<Option<i64>>, StorageError> {
    let mut ids = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(200) {
        let sql = super::batch::multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO raw_messages (dedup_key, message_id, sha256, source, received_at, from_address, subject, sent_at, sender_auth, sender_recheck_at, automatic, size_bytes, raw) VALUES",
            13,
            chunk.len(),
            " ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for m in chunk {
            query = query
                .bind(m.dedup_key)
                .bind(m.message_id)
                .bind(m.sha256)
                .bind(m.source)
                .bind(m.received_at)
                .bind(m.from_address)
                .bind(m.subject)
                .bind(m.sent_at)
                .bind(m.sender_auth_json)
                .bind(m.sender_recheck_at)
                .bind(m.automatic)
                .bind(m.raw.len() as i64)
                .bind(m.raw);
        }
        let rows = query.fetch_all(&mut *conn).await.context("storing raw messages")?;
        let mut inserted: Vec<(String, i64)> = rows
            .iter()
            .map(|r| Ok((r.try_get(1)?, r.try_get(0)?)))
            .collect::<Result<_, sqlx::Error>>()
            .context("reading raw message ids")?;
        // A key given twice was inserted once: the first message with it gets the row.
        for m in chunk {
            let found = inserted.iter().position(|(key, _)| key == m.dedup_key);
            ids.push(found.map(|i| inserted.swap_remove(i).1));
        }
    }
    Ok(ids)
}

/// Stores several attachments with one statement (per 200); their ids, in order.
pub async fn insert_attachments(
    conn: &mut AnyConnection,
    attachments: &[NewAttachment<'_>],
) -> Result<Vec<i64>, StorageError> {
    let mut ids = Vec::with_capacity(attachments.len());
    for chunk in attachments.chunks(200) {
        let sql = super::batch::multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO attachments (raw_message_id, filename, claimed_type, detected_type, sha256, size_bytes, forwarded, content) VALUES",
            8,
            chunk.len(),
            " RETURNING id",
        );
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            query = query
                .bind(a.raw_message_id)
                .bind(a.filename)
                .bind(a.claimed_type)
                .bind(a.detected_type)
                .bind(a.sha256)
                .bind(a.size_bytes as i64)
                .bind(i64::from(a.forwarded))
                // No copy: the bytes stay inside the message (see `NewAttachment`).
                .bind(&[][..]);
        }
        let mut chunk_ids = query.fetch_all(&mut *conn).await.context("storing attachments")?;
        // Both databases number the rows of one VALUES list in order; sorting makes the
        // order of RETURNING irrelevant.
        chunk_ids.sort_unstable();
        if chunk_ids.len() != chunk.len() {
            return Err(StorageError::Corrupt {
                context: "storing attachments",
                message: format!("{} rows given, {} ids returned", chunk.len(), chunk_ids.len()),
            });
        }
        ids.extend(chunk_ids);
    }
    Ok(ids)
}

/// Forgets the prepare attempts of several messages (they are being recorded).
pub async fn clear_prepare_attempts_of(conn: &mut AnyConnection, sha256s: &[&str]) -> Result<(), StorageError> {
    super::execute_in_chunks(
        conn,
        sha256s,
        |n| {
            format!(
                "DELETE FROM prepare_attempts WHERE sha256 IN ({})",
                super::numbered(n, |i| format!("${i}"))
            )
        },
        "clearing messages' prepare attempts",
    )
    .await
}

/// An email linked to a case (the one that opened it, replies, copies of its form), with its
/// attachments.
#[derive(Debug, Clone)]
pub struct CaseMessage {
    pub id: i64,
    /// `origin`, `reply`, `auto_reply`, `duplicate`...
    pub relation: String,
    pub from_address: Option<String>,
    pub subject: Option<String>,
    pub sent_at: Option<i64>,
    pub received_at: i64,
    /// None once retention has cleared it.
    pub raw: Option<Vec<u8>>,
    /// The sender-authentication verdict worked out when it arrived (JSON).
    pub sender_auth_json: String,
    /// SHA-256 of the bytes as they arrived (kept after retention clears the bytes).
    pub sha256: String,
    pub attachments: Vec<AttachmentSummary>,
}

/// Every email linked to a case, oldest first.
pub async fn messages_of_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseMessage>, StorageError> {
    let rows = sqlx::query(super::queries::MESSAGES_OF_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading a case's emails")?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get(0).context("decoding a case's email")?;
        messages.push(CaseMessage {
            id,
            relation: row.try_get(1).context("decoding a case's email")?,
            from_address: row.try_get(2).context("decoding a case's email")?,
            subject: row.try_get(3).context("decoding a case's email")?,
            sent_at: row.try_get(4).context("decoding a case's email")?,
            received_at: row.try_get(5).context("decoding a case's email")?,
            raw: row.try_get(6).context("decoding a case's email")?,
            sender_auth_json: row.try_get(7).context("decoding a case's email")?,
            sha256: row.try_get(8).context("decoding a case's email")?,
            attachments: Vec::new(),
        });
    }
    // Every email's attachments in one read, whatever the number of emails.
    let attachments = sqlx::query(super::queries::ATTACHMENTS_OF_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing a case's attachments")?;
    for row in &attachments {
        let message_id: i64 = row.try_get(5).context("decoding a case's attachments")?;
        let attachment = attachment_summary(row).context("decoding a case's attachments")?;
        if let Some(message) = messages.iter_mut().find(|m| m.id == message_id) {
            message.attachments.push(attachment);
        }
    }
    Ok(messages)
}

/// An attachment's name, detected type and bytes, when it belongs to an email of `case_id`
/// (never another case's: the address names both).
pub async fn case_attachment(
    conn: &mut AnyConnection,
    case_id: i64,
    attachment_id: i64,
) -> Result<Option<(Option<String>, Option<String>, Vec<u8>)>, StorageError> {
    let row = sqlx::query(
        "SELECT a.content, a.sha256, a.size_bytes, a.raw_message_id, a.filename, a.detected_type FROM attachments a \
         JOIN case_messages cm ON cm.raw_message_id = a.raw_message_id \
         WHERE a.id = $1 AND cm.case_id = $2",
    )
    .bind(attachment_id)
    .bind(case_id)
    .fetch_optional(&mut *conn)
    .await
    .context("reading an attachment of a case")?;
    let Some(row) = row else { return Ok(None) };
    let (kept, filename, detected) =
        (|| Ok::<_, sqlx::Error>((KeptAttachment::from_row(&row)?, row.try_get(4)?, row.try_get(5)?)))()
            .context("decoding an attachment")?;
    Ok(Some((filename, detected, attachment_bytes(conn, kept).await?)))
}

/// The attachments of a message that hold no copy of their bytes (they are inside the
/// message): their ids and hashes.
async fn attachments_in_message(
    conn: &mut AnyConnection,
    raw_message_id: i64,
) -> Result<Vec<(i64, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT id, sha256 FROM attachments WHERE raw_message_id = $1 AND size_bytes > 0 AND LENGTH(content) = 0",
    )
    .bind(raw_message_id)
    .fetch_all(&mut *conn)
    .await
    .context("listing the attachments kept inside a message")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .context("listing the attachments kept inside a message")
}

/// Clears a raw message's bytes (retention); the row (hash, Message-ID, sender) stays, and so
/// do its attachments: those kept inside the message are given a copy of their own first, in
/// the same transaction. If one cannot be found in the message, nothing is cleared.
pub async fn clear_raw_message(conn: &mut AnyConnection, id: i64) -> Result<(), StorageError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await.context("starting to clear a raw message")?;
    let inside = attachments_in_message(&mut tx, id).await?;
    if !inside.is_empty() {
        // The message is read once for all of its attachments (it may carry hundreds).
        let found = raw_bytes(&mut tx, id)
            .await?
            .map(|raw| crate::mail::attachments_of(&raw))
            .unwrap_or_default();
        for (attachment_id, sha256) in inside {
            let bytes = found
                .iter()
                .find(|a| a.sha256 == sha256)
                .map(|a| a.bytes.clone())
                .ok_or_else(|| StorageError::Corrupt {
                    context: "keeping an attachment before its message is cleared",
                    message: format!("attachment {sha256} is not in message {id}"),
                })?;
            sqlx::query("UPDATE attachments SET content = $1 WHERE id = $2")
                .bind(bytes)
                .bind(attachment_id)
                .execute(&mut *tx)
                .await
                .context("keeping an attachment before its message is cleared")?;
        }
    }
    sqlx::query("UPDATE raw_messages SET raw = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("clearing a raw message")?;
    tx.commit().await.context("clearing a raw message")?;
    Ok(())
}

/// A message whose sender is due to be checked again: its id, bytes (if still kept) and when
/// it arrived.
pub struct SenderRecheck {
    pub id: i64,
    pub raw: Option<Vec<u8>>,
    pub received_at: i64,
}

/// Messages whose sender check is due again by `now` (at most `limit`, the longest waiting
/// first).
pub async fn senders_due_for_recheck(
    conn: &mut AnyConnection,
    now: i64,
    limit: i64,
) -> Result<Vec<SenderRecheck>, StorageError> {
    let rows = sqlx::query(
        "SELECT id, raw, received_at FROM raw_messages WHERE sender_recheck_at IS NOT NULL AND sender_recheck_at <= $1 \
         ORDER BY sender_recheck_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .context("finding senders to check again")?;
    rows.iter()
        .map(|r| {
            Ok(SenderRecheck {
                id: r.try_get(0)?,
                raw: r.try_get(1)?,
                received_at: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("finding senders to check again")
}

/// Stores a message's sender verdict, and when to check it again (`None`: decided).
pub async fn set_sender_verdict(
    conn: &mut AnyConnection,
    raw_message_id: i64,
    verdict_json: &str,
    recheck_at: Option<i64>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE raw_messages SET sender_auth = $1, sender_recheck_at = $2 WHERE id = $3")
        .bind(verdict_json)
        .bind(recheck_at)
        .bind(raw_message_id)
        .execute(&mut *conn)
        .await
        .context("storing a sender verdict")?;
    Ok(())
}
