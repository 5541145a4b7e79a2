//! Storage on SQLite (the embedded default) and PostgreSQL, through sqlx's Any driver: one
//! set of queries, `$n` placeholders, integers for times (unix milliseconds) and text for JSON.
//! The URL's scheme picks the backend; each backend has its own migrations folder.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Row};

use crate::policy::Finding;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot create the folder for the SQLite database {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("cannot take the migration lock {path}: {source}")]
    MigrationLock { path: String, source: std::io::Error },
    #[error("database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while {context}: {source}")]
    Query { context: &'static str, source: sqlx::Error },
    #[error("stored data is corrupt ({context}): {message}")]
    Corrupt { context: &'static str, message: String },
}

/// Adds what we were doing to a sqlx error.
pub trait QueryContext<T> {
    fn context(self, context: &'static str) -> Result<T, StorageError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Query { context, source })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: a pool and which backend it is.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Db, StorageError> {
        sqlx::any::install_default_drivers();
        let shown = crate::config::redact_url(url);
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url)?;
        }
        let options = AnyConnectOptions::from_str(url).map_err(|source| StorageError::Connect {
            url: shown.clone(),
            source,
        })?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer; more connections only queue on its lock.
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            // A connection whose transaction state is in doubt is closed, never reused. When
            // SQLite rolls a transaction back by itself (a full disk), sqlx's own ROLLBACK then
            // fails and it still counts a transaction open; reused, that connection's next
            // BEGIN became a SAVEPOINT and its "commit" committed nothing, while the mail
            // source went on to mark mail done. The queued ROLLBACK of a dropped transaction
            // is waited for first (a ping runs after it), so a healthy connection is kept.
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        let _ = conn.ping().await;
                    }
                    if conn.is_in_transaction() {
                        tracing::warn!("closing a database connection left inside a transaction");
                        return Ok(false);
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StorageError::Connect { url: shown, source })?;
        let db = Db { pool, backend };
        db.migrate(url).await?;
        Ok(db)
    }

    /// Brings the schema up to date. Safe to run from several processes at once: PostgreSQL's
    /// migrator holds an advisory lock; on SQLite, whose migrator takes none, a lock file
    /// beside the database serialises them (without it, two processes starting on a new file
    /// both ran the first migration, and one failed).
    async fn migrate(&self, url: &str) -> Result<(), StorageError> {
        match self.backend {
            Backend::Sqlite => {
                let _lock = match sqlite_path(url) {
                    Some(path) => Some(MigrationLock::take(&path).await?),
                    None => None,
                };
                sqlx::migrate!("./migrations/sqlite").run(&self.pool).await?
            }
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&self.pool).await?,
        }
        Ok(())
    }

    /// Starts a transaction that writes. On SQLite it takes the write lock at BEGIN
    /// (`BEGIN IMMEDIATE`, waiting its turn up to the busy timeout): a transaction that read
    /// first and wrote later could not wait for the lock, and failed at once with "database
    /// is locked" whenever another writer had committed since its read. It also refuses to
    /// start on a connection that still counts a transaction open, rather than nesting in it.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file of a SQLite URL; `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// An exclusive lock on `<database>.migrate-lock`, released when dropped (or when the process
/// dies: the kernel drops `flock` locks with their file).
struct MigrationLock {
    _held: std::fs::File,
}

impl MigrationLock {
    async fn take(database: &std::path::Path) -> Result<MigrationLock, StorageError> {
        let path = std::path::PathBuf::from(format!("{}.migrate-lock", database.display()));
        let failed = |source: std::io::Error| StorageError::MigrationLock {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(failed)?;
        let locked = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                Ok(file)
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(|e| failed(std::io::Error::other(e)))?;
        Ok(MigrationLock {
            _held: locked.map_err(failed)?,
        })
    }
}

fn create_sqlite_parent_dir(url: &str) -> Result<(), StorageError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| StorageError::CreateDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn json_column<T: serde::de::DeserializeOwned>(text: &str, context: &'static str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Corrupt {
        context,
        message: e.to_string(),
    })
}

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
    pub automatic: Option<&'a str>,
    pub raw: &'a [u8],
}

/// Stores a raw message, or returns `None` when one with the same dedup key is already stored.
pub async fn insert_raw_message(conn: &mut AnyConnection, m: &NewRawMessage<'_>) -> Result<Option<i64>, StorageError> {
    let row = sqlx::query(
        "INSERT INTO raw_messages (dedup_key, message_id, sha256, source, received_at, from_address, subject, sent_at, sender_auth, automatic, size_bytes, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
    )
    .bind(m.dedup_key)
    .bind(m.message_id)
    .bind(m.sha256)
    .bind(m.source)
    .bind(m.received_at)
    .bind(m.from_address)
    .bind(m.subject)
    .bind(m.sent_at)
    .bind(m.sender_auth_json)
    .bind(m.automatic)
    .bind(m.raw.len() as i64)
    .bind(m.raw)
    .fetch_optional(&mut *conn)
    .await
    .context("storing a raw message")?;
    row.map(|r| r.try_get::<i64, _>(0))
        .transpose()
        .context("reading a raw message id")
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

pub struct NewAttachment<'a> {
    pub raw_message_id: i64,
    pub filename: Option<&'a str>,
    pub claimed_type: &'a str,
    pub detected_type: Option<&'a str>,
    pub sha256: &'a str,
    pub forwarded: bool,
    pub content: &'a [u8],
}

pub async fn insert_attachment(conn: &mut AnyConnection, a: &NewAttachment<'_>) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO attachments (raw_message_id, filename, claimed_type, detected_type, sha256, size_bytes, forwarded, content)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(a.raw_message_id)
    .bind(a.filename)
    .bind(a.claimed_type)
    .bind(a.detected_type)
    .bind(a.sha256)
    .bind(a.content.len() as i64)
    .bind(i64::from(a.forwarded))
    .bind(a.content)
    .fetch_one(&mut *conn)
    .await
    .context("storing an attachment")
}

/// An attachment's bytes, with the type detected from them (for serving the PDF).
pub async fn attachment_content(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<(Option<String>, Vec<u8>)>, StorageError> {
    let row = sqlx::query(ATTACHMENT_CONTENT)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading an attachment")?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
        .context("decoding an attachment")
}

// ---- Cases ---------------------------------------------------------------------------------

/// Hands out the next case number for `year`; runs inside the case's transaction, so a rolled
/// back case gives its number back.
pub async fn next_case_number(conn: &mut AnyConnection, year: i32) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO reference_counters (year, last_number) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last_number = reference_counters.last_number + 1
         RETURNING last_number",
    )
    .bind(i64::from(year))
    .fetch_one(&mut *conn)
    .await
    .context("numbering a case")
}

pub struct NewCase<'a> {
    pub reference: &'a str,
    pub workflow: Option<&'a str>,
    pub state: &'a str,
    pub fields: &'a BTreeMap<String, String>,
    pub extraction_json: Option<&'a str>,
    pub findings: &'a [Finding],
    pub org_ods_code: Option<&'a str>,
    pub org_name: Option<&'a str>,
    pub sender: Option<&'a str>,
    pub origin_message_id: i64,
    pub form_attachment_id: Option<i64>,
    pub form_sha256: Option<&'a str>,
    pub organisation_id: Option<i64>,
    /// The case this email named but was not allowed to change.
    pub related_case_id: Option<i64>,
    pub now: i64,
    pub due_at: Option<i64>,
}

/// Creates a case and returns it as stored (without reading it back).
pub async fn insert_case(conn: &mut AnyConnection, c: &NewCase<'_>) -> Result<CaseRecord, StorageError> {
    let fields = serde_json::to_string(c.fields).unwrap_or_else(|_| "{}".into());
    let findings = serde_json::to_string(c.findings).unwrap_or_else(|_| "[]".into());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO cases (reference, workflow, state, version, fields, extraction, findings, org_ods_code, org_name, sender,
                            origin_message_id, form_attachment_id, form_sha256, created_at, updated_at, due_at, organisation_id, related_case_id)
         VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16) RETURNING id",
    )
    .bind(c.reference)
    .bind(c.workflow)
    .bind(c.state)
    .bind(fields)
    .bind(c.extraction_json)
    .bind(findings)
    .bind(c.org_ods_code)
    .bind(c.org_name)
    .bind(c.sender)
    .bind(c.origin_message_id)
    .bind(c.form_attachment_id)
    .bind(c.form_sha256)
    .bind(c.now)
    .bind(c.due_at)
    .bind(c.organisation_id)
    .bind(c.related_case_id)
    .fetch_one(&mut *conn)
    .await
    .context("creating a case")?;
    Ok(CaseRecord {
        id,
        reference: c.reference.to_string(),
        workflow: c.workflow.map(str::to_string),
        state: c.state.to_string(),
        version: 1,
        fields: c.fields.clone(),
        findings: c.findings.to_vec(),
        org_ods_code: c.org_ods_code.map(str::to_string),
        org_name: c.org_name.map(str::to_string),
        sender: c.sender.map(str::to_string),
        origin_message_id: c.origin_message_id,
        form_attachment_id: c.form_attachment_id,
        duplicate_of: None,
        related_case_id: c.related_case_id,
        assignee_id: None,
        recorded: BTreeMap::new(),
        created_at: c.now,
        updated_at: c.now,
        due_at: c.due_at,
    })
}

/// A case as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseRecord {
    pub id: i64,
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    pub version: i64,
    pub fields: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
    pub org_ods_code: Option<String>,
    pub org_name: Option<String>,
    pub sender: Option<String>,
    pub origin_message_id: i64,
    pub form_attachment_id: Option<i64>,
    pub duplicate_of: Option<i64>,
    /// The case this one's email named, when it was not allowed to change that case.
    pub related_case_id: Option<i64>,
    pub assignee_id: Option<i64>,
    pub recorded: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub due_at: Option<i64>,
}

/// `SELECT <every case column> FROM cases <rest>`, as a static string (sqlx refuses SQL built
/// at run time, which is how injection creeps in).
macro_rules! select_cases {
    ($rest:literal) => {
        concat!(
            "SELECT id, reference, workflow, state, version, fields, findings, org_ods_code, org_name, sender, origin_message_id,
                    form_attachment_id, duplicate_of, related_case_id, assignee_id, recorded, created_at, updated_at, due_at FROM cases ",
            $rest
        )
    };
}

fn case_from_row(row: &sqlx::any::AnyRow) -> Result<CaseRecord, StorageError> {
    let get = |e: sqlx::Error| StorageError::Query {
        context: "decoding a case",
        source: e,
    };
    Ok(CaseRecord {
        id: row.try_get("id").map_err(get)?,
        reference: row.try_get("reference").map_err(get)?,
        workflow: row.try_get("workflow").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
        fields: json_column(&row.try_get::<String, _>("fields").map_err(get)?, "case fields")?,
        findings: json_column(&row.try_get::<String, _>("findings").map_err(get)?, "case findings")?,
        org_ods_code: row.try_get("org_ods_code").map_err(get)?,
        org_name: row.try_get("org_name").map_err(get)?,
        sender: row.try_get("sender").map_err(get)?,
        origin_message_id: row.try_get("origin_message_id").map_err(get)?,
        form_attachment_id: row.try_get("form_attachment_id").map_err(get)?,
        duplicate_of: row.try_get("duplicate_of").map_err(get)?,
        related_case_id: row.try_get("related_case_id").map_err(get)?,
        assignee_id: row.try_get("assignee_id").map_err(get)?,
        recorded: json_column(
            &row.try_get::<String, _>("recorded").map_err(get)?,
            "case recorded values",
        )?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        due_at: row.try_get("due_at").map_err(get)?,
    })
}

pub async fn case_by_reference(conn: &mut AnyConnection, reference: &str) -> Result<Option<CaseRecord>, StorageError> {
    let row = sqlx::query(CASE_BY_REFERENCE)
        .bind(reference)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a case")?;
    row.as_ref().map(case_from_row).transpose()
}

pub async fn case_by_id(conn: &mut AnyConnection, id: i64) -> Result<Option<CaseRecord>, StorageError> {
    let row = sqlx::query(CASE_BY_ID)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading a case")?;
    row.as_ref().map(case_from_row).transpose()
}

/// Serialises the writers of one form until the transaction ends: on PostgreSQL, a
/// transaction-scoped advisory lock on the form's hash, so that a second writer of the same
/// PDF waits for the first, then finds its case and links to it rather than making another.
/// (SQLite has one writer at a time already.) The unique index `cases_one_per_form` is the
/// backstop: a writer that skipped the lock fails rather than make a second case.
pub async fn lock_form(conn: &mut AnyConnection, sha256: &str) -> Result<(), StorageError> {
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(sha256)
            .execute(&mut *conn)
            .await
            .context("waiting for another writer of the same form")?;
    }
    Ok(())
}

/// The case that first received this exact PDF, if any.
pub async fn case_by_form_sha256(conn: &mut AnyConnection, sha256: &str) -> Result<Option<CaseRecord>, StorageError> {
    let row = sqlx::query(CASE_BY_FORM)
        .bind(sha256)
        .fetch_optional(&mut *conn)
        .await
        .context("looking for an earlier copy of a form")?;
    row.as_ref().map(case_from_row).transpose()
}

/// The cases a stored message opened or was linked to.
pub async fn cases_for_message(conn: &mut AnyConnection, raw_message_id: i64) -> Result<Vec<CaseRecord>, StorageError> {
    let rows = sqlx::query(CASES_FOR_MESSAGE)
        .bind(raw_message_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing a message's cases")?;
    rows.iter().map(case_from_row).collect()
}

pub async fn list_cases(
    conn: &mut AnyConnection,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<CaseRecord>, StorageError> {
    let rows = match state {
        Some(state) => {
            sqlx::query(select_cases!("WHERE state = $1 ORDER BY id LIMIT $2"))
                .bind(state)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
        }
        None => {
            sqlx::query(select_cases!("ORDER BY id LIMIT $1"))
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
        }
    }
    .context("listing cases")?;
    rows.iter().map(case_from_row).collect()
}

/// Moves a case to a new state if nobody else changed it since `expected_version` was read.
/// Returns false when someone did (the caller reports a conflict rather than overwrite).
pub async fn update_case_state(
    conn: &mut AnyConnection,
    case_id: i64,
    expected_version: i64,
    state: &str,
    recorded: &BTreeMap<String, String>,
    now: i64,
) -> Result<bool, StorageError> {
    let recorded = serde_json::to_string(recorded).unwrap_or_else(|_| "{}".into());
    let result = sqlx::query("UPDATE cases SET state = $1, recorded = $2, updated_at = $3, version = version + 1 WHERE id = $4 AND version = $5")
        .bind(state)
        .bind(recorded)
        .bind(now)
        .bind(case_id)
        .bind(expected_version)
        .execute(&mut *conn)
        .await
        .context("changing a case's state")?;
    Ok(result.rows_affected() == 1)
}

/// Gives a case to a member of staff (or to no one); same concurrency rule.
pub async fn update_case_assignee(
    conn: &mut AnyConnection,
    case_id: i64,
    expected_version: i64,
    assignee_id: Option<i64>,
    now: i64,
) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE cases SET assignee_id = $1, updated_at = $2, version = version + 1 WHERE id = $3 AND version = $4",
    )
    .bind(assignee_id)
    .bind(now)
    .bind(case_id)
    .bind(expected_version)
    .execute(&mut *conn)
    .await
    .context("assigning a case")?;
    Ok(result.rows_affected() == 1)
}

/// Replaces a case's fields, findings and workflow after keying; same concurrency rule.
#[allow(clippy::too_many_arguments)]
pub async fn update_case_fields(
    conn: &mut AnyConnection,
    case_id: i64,
    expected_version: i64,
    workflow: Option<&str>,
    fields: &BTreeMap<String, String>,
    findings: &[Finding],
    org_ods_code: Option<&str>,
    org_name: Option<&str>,
    now: i64,
) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE cases SET workflow = $1, fields = $2, findings = $3, org_ods_code = $4, org_name = $5, updated_at = $6, version = version + 1
         WHERE id = $7 AND version = $8",
    )
    .bind(workflow)
    .bind(serde_json::to_string(fields).unwrap_or_else(|_| "{}".into()))
    .bind(serde_json::to_string(findings).unwrap_or_else(|_| "[]".into()))
    .bind(org_ods_code)
    .bind(org_name)
    .bind(now)
    .bind(case_id)
    .bind(expected_version)
    .execute(&mut *conn)
    .await
    .context("updating a case's fields")?;
    Ok(result.rows_affected() == 1)
}

pub async fn set_duplicate_of(conn: &mut AnyConnection, case_id: i64, original_id: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE cases SET duplicate_of = $1 WHERE id = $2")
        .bind(original_id)
        .bind(case_id)
        .execute(&mut *conn)
        .await
        .context("linking a duplicate")?;
    Ok(())
}

pub async fn link_message(
    conn: &mut AnyConnection,
    case_id: i64,
    raw_message_id: i64,
    relation: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO case_messages (case_id, raw_message_id, relation) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(case_id)
    .bind(raw_message_id)
    .bind(relation)
    .execute(&mut *conn)
    .await
    .context("linking a message to a case")?;
    Ok(())
}

// ---- Event log -----------------------------------------------------------------------------

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseEvent {
    pub at: i64,
    pub actor: String,
    pub actor_role: String,
    pub kind: String,
    pub transition: Option<String>,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub reason: Option<String>,
    pub data: Option<String>,
}

impl CaseEvent {
    /// An event the engine records itself; set the other fields with `..CaseEvent::system(…)`.
    pub fn system(kind: &str, at: i64) -> Self {
        CaseEvent {
            at,
            actor: "system".into(),
            actor_role: "system".into(),
            kind: kind.into(),
            transition: None,
            from_state: None,
            to_state: None,
            reason: None,
            data: None,
        }
    }

    /// An event a member of staff caused; set the other fields with `..CaseEvent::by(…)`.
    pub fn by(actor: &str, actor_role: &str, kind: &str, at: i64) -> Self {
        CaseEvent {
            actor: actor.into(),
            actor_role: actor_role.into(),
            ..CaseEvent::system(kind, at)
        }
    }
}

pub async fn append_event(conn: &mut AnyConnection, case_id: i64, e: &CaseEvent) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO case_events (case_id, at, actor, actor_role, kind, transition, from_state, to_state, reason, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(case_id)
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.actor_role)
    .bind(&e.kind)
    .bind(&e.transition)
    .bind(&e.from_state)
    .bind(&e.to_state)
    .bind(&e.reason)
    .bind(&e.data)
    .execute(&mut *conn)
    .await
    .context("writing the event log")?;
    Ok(())
}

pub async fn events_for_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseEvent>, StorageError> {
    let rows = sqlx::query(EVENTS_FOR_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading the event log")?;
    rows.iter()
        .map(|r| {
            Ok(CaseEvent {
                at: r.try_get(0)?,
                actor: r.try_get(1)?,
                actor_role: r.try_get(2)?,
                kind: r.try_get(3)?,
                transition: r.try_get(4)?,
                from_state: r.try_get(5)?,
                to_state: r.try_get(6)?,
                reason: r.try_get(7)?,
                data: r.try_get(8)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the event log")
}

// ---- Timers and outbox (written with transitions; run by later workers) ------------------------

/// The `state` of timers that belong to the case rather than to one state (the SLA timers).
pub const ANY_STATE: &str = "*";

/// Cancels a case's pending timers: those of its state, or all of them (`include_case_wide`)
/// when the case reaches a final state.
pub async fn cancel_pending_timers(
    conn: &mut AnyConnection,
    case_id: i64,
    now: i64,
    include_case_wide: bool,
) -> Result<u64, StorageError> {
    let query = if include_case_wide {
        "UPDATE timers SET status = 'cancelled', finished_at = $1 WHERE case_id = $2 AND status = 'pending'"
    } else {
        "UPDATE timers SET status = 'cancelled', finished_at = $1 WHERE case_id = $2 AND status = 'pending' AND state <> '*'"
    };
    let done = sqlx::query(query)
        .bind(now)
        .bind(case_id)
        .execute(&mut *conn)
        .await
        .context("cancelling a case's timers")?;
    Ok(done.rows_affected())
}

pub async fn arm_timer(
    conn: &mut AnyConnection,
    case_id: i64,
    name: &str,
    state: &str,
    due_at: i64,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO timers (case_id, name, state, due_at, status, created_at) VALUES ($1, $2, $3, $4, 'pending', $5)",
    )
    .bind(case_id)
    .bind(name)
    .bind(state)
    .bind(due_at)
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("arming a timer")?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TimerRecord {
    pub name: String,
    pub state: String,
    pub due_at: i64,
    pub status: String,
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
                status: r.try_get(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding timers")
}

pub struct NewOutboxMessage<'a> {
    pub case_id: Option<i64>,
    pub template: &'a str,
    pub recipient: Option<&'a str>,
    pub context_json: &'a str,
    pub message_id: &'a str,
    pub in_reply_to: Option<&'a str>,
    /// Why the message must not be sent (loop safety), if it must not.
    pub suppressed_reason: Option<&'a str>,
    /// Sent by the system rather than on a person's decision: marked `Auto-Submitted` and
    /// rate-limited per recipient.
    pub automatic: bool,
    pub now: i64,
}

pub async fn enqueue_mail(conn: &mut AnyConnection, m: &NewOutboxMessage<'_>) -> Result<(), StorageError> {
    let status = if m.suppressed_reason.is_some() {
        "suppressed"
    } else {
        "pending"
    };
    sqlx::query(
        "INSERT INTO outbox (case_id, template, recipient, context, message_id, in_reply_to, status, suppressed_reason, next_attempt_at, created_at, automatic)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
    )
    .bind(m.case_id)
    .bind(m.template)
    .bind(m.recipient)
    .bind(m.context_json)
    .bind(m.message_id)
    .bind(m.in_reply_to)
    .bind(status)
    .bind(m.suppressed_reason)
    .bind(m.now)
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

/// Records the organisation a case names, creating it on first sight.
pub async fn upsert_organisation(
    conn: &mut AnyConnection,
    ods_code: &str,
    name: &str,
    kind: &str,
    now: i64,
) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO organisations (ods_code, name, kind, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (ods_code) DO UPDATE SET updated_at = $4 RETURNING id",
    )
    .bind(ods_code)
    .bind(name)
    .bind(kind)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .context("recording an organisation")
}

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

// ---- One case: every query keyed by a case (or its message), each on an index -------------

const CASE_BY_REFERENCE: &str = select_cases!("WHERE reference = $1");
const CASE_BY_ID: &str = select_cases!("WHERE id = $1");
const CASE_BY_FORM: &str = select_cases!("WHERE form_sha256 = $1 ORDER BY id LIMIT 1");
const CASES_FOR_MESSAGE: &str =
    select_cases!("WHERE id IN (SELECT case_id FROM case_messages WHERE raw_message_id = $1) ORDER BY id");
const RELATED_CASES: &str = select_cases!("WHERE related_case_id = $1 ORDER BY id LIMIT 100");
const EVENTS_FOR_CASE: &str = "SELECT at, actor, actor_role, kind, transition, from_state, to_state, reason, data FROM case_events WHERE case_id = $1 ORDER BY id";
const TIMERS_FOR_CASE: &str = "SELECT name, state, due_at, status FROM timers WHERE case_id = $1 ORDER BY id";
const OUTBOX_FOR_CASE: &str = "SELECT template, recipient, status, suppressed_reason, in_reply_to, created_at, last_error FROM outbox WHERE case_id = $1 ORDER BY id";
const NOTES_FOR_CASE: &str = "SELECT author, body, created_at FROM case_notes WHERE case_id = $1 ORDER BY id";
const ORIGIN_MESSAGE: &str =
    "SELECT from_address, subject, sent_at, received_at, sender_auth, raw FROM raw_messages WHERE id = $1";
const ATTACHMENT_CONTENT: &str = "SELECT detected_type, content FROM attachments WHERE id = $1";
const ATTACHMENTS_OF_MESSAGE: &str = "SELECT id, filename, claimed_type, detected_type, size_bytes FROM attachments WHERE raw_message_id = $1 ORDER BY id";

/// What a per-case query is keyed by, so that a check can bind a sample key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKey {
    /// A row id (a case's, or its message's).
    Id,
    /// A case reference or a form's hash.
    Text,
}

/// Every query that reads one case's rows, by name. Each must find its rows through an index,
/// never by scanning a table that grows with the service's age (the outbox, the event log):
/// `tests/query_plans.rs` runs `EXPLAIN` on each, on both backends.
pub const PER_CASE_QUERIES: &[(&str, &str, CaseKey)] = &[
    ("case by reference", CASE_BY_REFERENCE, CaseKey::Text),
    ("case by id", CASE_BY_ID, CaseKey::Id),
    ("case by form", CASE_BY_FORM, CaseKey::Text),
    ("cases of a message", CASES_FOR_MESSAGE, CaseKey::Id),
    ("related cases", RELATED_CASES, CaseKey::Id),
    ("events of a case", EVENTS_FOR_CASE, CaseKey::Id),
    ("timers of a case", TIMERS_FOR_CASE, CaseKey::Id),
    ("outbox of a case", OUTBOX_FOR_CASE, CaseKey::Id),
    ("notes of a case", NOTES_FOR_CASE, CaseKey::Id),
    ("an attachment's bytes", ATTACHMENT_CONTENT, CaseKey::Id),
    ("a case's message", ORIGIN_MESSAGE, CaseKey::Id),
    ("attachments of a message", ATTACHMENTS_OF_MESSAGE, CaseKey::Id),
];

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
        .map(|r| {
            Ok(AttachmentSummary {
                id: r.try_get(0)?,
                filename: r.try_get(1)?,
                claimed: r.try_get(2)?,
                detected: r.try_get(3)?,
                size: r.try_get(4)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding attachments")
}

#[derive(Debug, Clone)]
pub struct CaseNote {
    pub author: String,
    pub body: String,
    pub created_at: i64,
}

pub async fn notes_for_case(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseNote>, StorageError> {
    let rows = sqlx::query(NOTES_FOR_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading a case's notes")?;
    rows.iter()
        .map(|r| {
            Ok(CaseNote {
                author: r.try_get(0)?,
                body: r.try_get(1)?,
                created_at: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding notes")
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

/// Cases opened by mail that named `case_id` but was not allowed to change it.
pub async fn related_cases(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<CaseRecord>, StorageError> {
    let rows = sqlx::query(RELATED_CASES)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing related cases")?;
    rows.iter().map(case_from_row).collect()
}

/// Points a case at a newly received copy of its form.
pub async fn replace_case_form(
    conn: &mut AnyConnection,
    case_id: i64,
    attachment_id: i64,
    sha256: &str,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE cases SET form_attachment_id = $1, form_sha256 = $2 WHERE id = $3")
        .bind(attachment_id)
        .bind(sha256)
        .bind(case_id)
        .execute(&mut *conn)
        .await
        .context("replacing a case's form")?;
    Ok(())
}

// ---- Crash-loop protection ------------------------------------------------------------------

/// Counts one more attempt at preparing the message with this hash; returns the count,
/// including this one. Runs in its own commit, before the preparation it guards.
pub async fn note_prepare_attempt(conn: &mut AnyConnection, sha256: &str, now: i64) -> Result<i64, StorageError> {
    sqlx::query_scalar(
        "INSERT INTO prepare_attempts (sha256, attempts, updated_at) VALUES ($1, 1, $2)
         ON CONFLICT (sha256) DO UPDATE SET attempts = prepare_attempts.attempts + 1, updated_at = $2
         RETURNING attempts",
    )
    .bind(sha256)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .context("counting an attempt to prepare a message")
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
