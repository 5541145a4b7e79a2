//! Storage on SQLite (the embedded default) and PostgreSQL, through sqlx's Any driver: one
//! set of queries, `$n` placeholders, integers for times (unix milliseconds) and text for JSON.
//! The URL's scheme picks the backend; each backend has its own migrations folder.
//!
//! Every query the service runs is here, one module per table or concern; nothing outside
//! this module writes SQL or matches on the backend.

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection};

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
    #[error("case {0} was changed by someone else at the same time; reload it and try again")]
    Conflict(String),
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

impl Backend {
    /// Which database a connection speaks to: for the statements that differ by backend, run
    /// on a caller's connection (which carries no [`Db`]).
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// The database: a pool and which backend it is.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite: the connection [`Db::checkpoint_soon`] checkpoints on, opened on first use and
    /// kept apart from the pool (locked while a checkpoint runs).
    checkpointer: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::AnyConnection>>>,
    options: std::sync::Arc<AnyConnectOptions>,
    /// How many times a connection has been handed back to the pool: one per piece of work
    /// that took one (a page, a poll, a send). `/metrics` shows it.
    returns: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        let checkpoint_options = options.clone();
        let returns = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted_returns = returns.clone();
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer; more connections only queue on its lock.
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 10000;")
                            .execute(conn)
                            .await?;
                    } else {
                        // No JIT: every statement here is short, and compiling one costs more
                        // than it saves. The queue's finding count, priced above the JIT's
                        // threshold at a million cases, took a core for over a second to compile
                        // while two instances served the queue, halving one's throughput.
                        sqlx::raw_sql("SET jit = off").execute(conn).await?;
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
            .after_release(move |conn, _meta| {
                counted_returns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let db = Db {
            pool,
            backend,
            checkpointer: Default::default(),
            options: std::sync::Arc::new(checkpoint_options),
            returns,
        };
        db.migrate(url).await?;
        Ok(db)
    }

    /// How many times a connection has been handed back to the pool since it opened.
    pub fn connections_returned(&self) -> u64 {
        self.returns.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// SQLite: copies the write-ahead log into the database file on a connection of its own
    /// (outside the pool), beside the writers (a passive checkpoint waits for no one), unless
    /// one is running. A busy writer calls it after each commit. Left to SQLite, the checkpoint
    /// ran inside the commit that took the log past 1,000 pages, a quarter of a mailbox drain's
    /// writing; a writer's connection now checkpoints by itself only past 10,000 pages (about
    /// 40 MB), as a backstop. PostgreSQL: nothing to do.
    pub fn checkpoint_soon(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let Ok(mut connection) = self.checkpointer.clone().try_lock_owned() else {
            return;
        };
        let options = self.options.clone();
        tokio::spawn(async move {
            if connection.is_none() {
                match sqlx::AnyConnection::connect_with(&options).await {
                    Ok(opened) => *connection = Some(opened),
                    Err(error) => {
                        tracing::debug!(error = %error, "opening the checkpoint connection");
                        return;
                    }
                }
            }
            if let Some(conn) = connection.as_mut()
                && let Err(error) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *conn)
                    .await
            {
                tracing::debug!(error = %error, "checkpointing the write-ahead log");
                // Opened afresh next time.
                *connection = None;
            }
        });
    }

    /// Gives back memory after a job that read or wrote a great deal (the start-up keeping of
    /// past report days, the nightly audit anchor). A PostgreSQL connection keeps the buffers
    /// it grew for its largest message (the first anchor of a million cases binds a text of
    /// about 100 MB), so the pool's idle connections are closed, to be opened again when
    /// needed; then the process's freed heap goes back to the system (glibc keeps freed pages
    /// otherwise). An idle service after its first start held 127 MiB on PostgreSQL, 18–22
    /// MiB after a restart. SQLite connections keep no more than their bounded page cache,
    /// and an in-memory SQLite database lives only as long as its connections: left alone.
    pub async fn shed_memory(&self) {
        if self.backend == Backend::Postgres {
            let mut idle = Vec::new();
            for _ in 0..self.pool.num_idle() {
                match self.pool.try_acquire() {
                    Some(connection) => idle.push(connection),
                    None => break,
                }
            }
            for connection in idle {
                if let Err(error) = connection.close().await {
                    tracing::debug!(error = %error, "closing an idle database connection");
                }
            }
        }
        release_freed_heap();
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

    /// A write transaction for one job that reads or writes a great deal (the nightly audit
    /// anchor binds the heads of every chain that grew), on a connection that is closed when
    /// the transaction ends rather than returned to the pool: a PostgreSQL connection keeps
    /// the buffers it grew for its largest message, and this one's would otherwise stay, idle,
    /// for as long as the pool keeps it.
    pub async fn begin_bulk_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        match self.backend {
            Backend::Sqlite => {
                sqlx::Transaction::begin(conn, Some(sqlx::SqlSafeStr::into_sql_str("BEGIN IMMEDIATE"))).await
            }
            Backend::Postgres => sqlx::Transaction::begin(conn, None).await,
        }
    }

    /// Whether the database answers (the health check).
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("checking the database")?;
        Ok(())
    }

    /// Closes the pool and the checkpoint connection (after any checkpoint running on it), so
    /// that SQLite's last connection to close folds the log into the database file.
    pub async fn close(&self) {
        if let Some(checkpointer) = self.checkpointer.lock().await.take()
            && let Err(error) = checkpointer.close().await
        {
            tracing::debug!(error = %error, "closing the checkpoint connection");
        }
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

/// Reads a column holding one of the domain's stored words (`EventKind`, `OutboxStatus`,
/// `TimerStatus`); a word no variant names is a decoding error, not a silent default.
fn stored_word<T>(row: &sqlx::any::AnyRow, index: usize, parse: fn(&str) -> Option<T>) -> Result<T, sqlx::Error> {
    use sqlx::Row;
    let word: String = row.try_get(index)?;
    parse(&word).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: format!("unknown stored word {word:?}").into(),
    })
}

fn json_column<T: serde::de::DeserializeOwned>(text: &str, context: &'static str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Corrupt {
        context,
        message: e.to_string(),
    })
}

/// Runs the statement `sql(n)` makes for `n` bound strings over `items`, 500 at a time, binding
/// each chunk's items in order: for `IN ($1, …)` lists and `VALUES ($1), …` rows.
async fn execute_in_chunks(
    conn: &mut sqlx::AnyConnection,
    items: &[&str],
    sql: impl Fn(usize) -> String,
    context: &'static str,
) -> Result<(), StorageError> {
    for chunk in items.chunks(500) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql(chunk.len())));
        for item in chunk {
            query = query.bind(*item);
        }
        query.execute(&mut *conn).await.context(context)?;
    }
    Ok(())
}

/// `sql` (a static query with one `IN ($1)`) for `n` values: `IN ($1, …, $n)`. The per-case
/// plan check runs the static one-value form, so the query checked is the query run.
fn in_list(sql: &'static str, n: usize) -> String {
    debug_assert!(sql.matches("IN ($1)").count() == 1, "{sql}");
    sql.replacen("IN ($1)", &format!("IN ({})", numbered(n, |i| format!("${i}"))), 1)
}

/// `$1, $2, …, $n`, each placeholder written by `each`.
fn numbered(n: usize, each: impl Fn(usize) -> String) -> String {
    (1..=n).map(each).collect::<Vec<_>>().join(", ")
}

/// `SELECT <every case column> FROM cases <rest>`, as a static string (sqlx refuses SQL built
/// at run time, which is how injection creeps in).
macro_rules! select_cases {
    ($rest:literal) => {
        select_cases!("", $rest)
    };
    // `$extra`: more columns after the case's own (", chain_seq").
    ($extra:literal, $rest:literal) => {
        concat!(
            "SELECT id, reference, workflow, state, version, fields, findings, org_ods_code, org_name, sender, origin_message_id,
                    form_attachment_id, duplicate_of, related_case_id, assignee_id, recorded, created_at, updated_at, due_at, sla_paused_at",
            $extra,
            " FROM cases ",
            $rest
        )
    };
}

/// The columns of a stored (hash-chained) event, as a literal so that queries can be static.
macro_rules! stored_event_columns {
    () => {
        "id, case_id, seq, hash, at, actor, actor_role, kind, transition, from_state, to_state, reason, data"
    };
}

/// The columns of a signatory register row.
macro_rules! signatory_columns {
    () => {
        "ods_code, role, name, email, source"
    };
}

mod accounts;
mod audit;
mod batch;
mod case_file;
mod cases;
mod credentials;
mod events;
mod inventory;
mod jobs;
mod mailbox;
mod messages;
mod organisations;
mod outbox;
mod queries;
mod queue;
mod registry;
mod reports;
mod seed;
mod signatories;
mod timers;
mod tokens;
mod users;

pub use accounts::{accounts_by_ids, claim_notice, list_accounts, upsert_accounts};
pub use audit::{
    CaseChain, ChainOwner, LastAnchor, StoredAnchor, UNSEALED_EVENTS, anchors, chain_length, chain_of, chains_after,
    event_hash_at, last_anchor, orphaned_chains, read_case_chain, seal_unsealed_events, write_anchor,
};
pub use batch::{Deferred, apply_change_deferred, enqueue_mail, flush};
pub use case_file::{CaseFile, case_file};
pub use cases::*;
pub use credentials::{
    CredentialRecord, NewCredential, SpentLink, credential_link_open, credentials_for_case, fingerprint_issued,
    insert_credentials, set_credential_link, spend_credential_link, withdraw_credentials,
};
pub use events::*;
pub use inventory::{Inventory, inventory};
pub use jobs::*;
pub use mailbox::*;
pub use messages::*;
pub use organisations::*;
pub use outbox::*;
pub use queries::{CaseKey, PER_CASE_QUERIES};
pub use queue::{QueueQuery, QueueRecord, QueueScope, queue_page, queue_plan};
pub use registry::{
    import_registry, records_of, records_of_codes, registry_counts, registry_lookup, registry_names_and_regions,
};
pub use reports::{
    cached_report_days, cases_received_since, clear_due_times_in_states, count_cases_in_states, finding_counts,
    first_move_at, keep_report_days, kept_report_day_names, open_cases, open_cases_statement, report_lifecycles,
};
pub use seed::{insert_seeded, refresh_statistics, seed_origin_message, seeded_count};
pub use signatories::{
    Coverage, NewSignatory, RegisterRow, add_signatories, deactivate_signatory, list_signatories,
    primary_user_coverage, register_rows,
};
pub use timers::*;
pub use tokens::*;
pub use users::*;

/// Hands memory the process has freed back to the system: glibc's allocator keeps freed pages
/// for reuse, and an idle service would look hundreds of megabytes larger than it is.
pub fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no memory
    // in use and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
