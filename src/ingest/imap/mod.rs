//! The IMAP source: takes every message in a mailbox exactly once, whatever happens to the
//! network, the server or the process.
//!
//! - Messages are fetched with `BODY.PEEK[]` (never marking them seen), in UID order, from the
//!   last UID taken under the mailbox's current UIDVALIDITY. A new UIDVALIDITY means a rescan,
//!   which deduplication turns into no new cases.
//! - The message and its cases commit first; only then is the message moved (MOVE where the
//!   server has it, else COPY + `\Deleted` + UID EXPUNGE), and the position saved.
//! - A message that cannot be read as an email is moved to the quarantine folder (its case
//!   says why); one that fails to store `max_attempts` times is quarantined with an ingest
//!   error. Quarantined mail is retried on request (`countersign mailbox retry`).
//! - A lease in the database keeps two instances from polling one mailbox at once.
//! - IDLE where the server offers it, polling where not; reconnection with backoff on any error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::types::Capabilities;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

mod connection;
mod drain;
mod session;

pub use connection::{ImapSession, ImapStream, connect};
use session::{ServerFeatures, uid_set};

use super::HealthHandle;
use crate::config::{ImapSettings, TransportSecurity};
use crate::engine::{Engine, IntakeReport};
use crate::storage::{self, QueryContext, StorageError};
use secrecy::ExposeSecret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest any one IMAP command may take (a 50 MB fetch on a slow link fits).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to the IMAP server {server}: {source}")]
    Connect { server: String, source: std::io::Error },
    #[error("TLS with the IMAP server {server} failed: {message}")]
    Tls { server: String, message: String },
    #[error("refusing a plain-text IMAP connection to {host}: use tls or starttls for anything but loopback")]
    PlainNotLoopback { host: String },
    #[error("IMAP login as {user} failed: {message}")]
    Login { user: String, message: String },
    #[error("IMAP error while {context}: {source}")]
    Protocol {
        context: &'static str,
        source: async_imap::error::Error,
    },
    #[error("the IMAP server did not answer in time while {context}")]
    Timeout { context: &'static str },
    #[error("the IMAP server gave no UIDVALIDITY for {mailbox}")]
    NoUidValidity { mailbox: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Intake(#[from] crate::engine::EngineError),
}

trait ImapContext<T> {
    fn imap(self, context: &'static str) -> Result<T, ImapError>;
}

impl<T> ImapContext<T> for Result<T, async_imap::error::Error> {
    fn imap(self, context: &'static str) -> Result<T, ImapError> {
        self.map_err(|source| ImapError::Protocol { context, source })
    }
}

/// Runs an IMAP step with the command timeout, so a stalled server becomes an error (and a
/// reconnect) rather than a hang.
async fn within<T>(context: &'static str, step: impl Future<Output = Result<T, ImapError>>) -> Result<T, ImapError> {
    tokio::time::timeout(COMMAND_TIMEOUT, step)
        .await
        .map_err(|_| ImapError::Timeout { context })?
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Whether this instance held the mailbox lease (if not, it did nothing).
    pub lease_held: bool,
    pub backlog: usize,
    pub ingested: usize,
    /// Messages that were already stored (a crash between commit and move, or a rescan).
    pub already_ingested: usize,
    pub quarantined: usize,
    /// The UIDs this poll took, in order (tests use it to prove no two pollers share one).
    pub uids: Vec<u32>,
}

impl PollSummary {
    pub(super) fn count_stored(&mut self, already_ingested: bool) {
        if already_ingested {
            self.already_ingested += 1;
        } else {
            self.ingested += 1;
        }
    }
}

/// Called after a message's cases commit and before the message is moved: the seam tests use
/// to kill a poller at the worst moment.
pub type AfterCommitHook = Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct ImapPoller {
    engine: Engine,
    settings: ImapSettings,
    /// This instance's name in the lease.
    holder: String,
    /// Whether this instance took the lease at its last try; the heartbeat renews only then.
    holding: std::sync::atomic::AtomicBool,
    health: HealthHandle,
    after_commit: Option<AfterCommitHook>,
}

/// How long the mailbox lease lasts unrenewed: how soon another instance takes over after this
/// one dies. A running instance renews it every [`LEASE_HEARTBEAT`], whatever it is doing (a
/// long IDLE wait, a long drain), so the lease can be short.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often a running instance renews its lease: three renewals fit in one lease, so one
/// slow database write does not lose it.
pub const LEASE_HEARTBEAT: Duration = Duration::from_secs(5);

impl ImapPoller {
    pub fn new(engine: Engine, settings: ImapSettings) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "countersign".into());
        let holder = format!("{host}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        ImapPoller {
            engine,
            settings,
            holder,
            holding: std::sync::atomic::AtomicBool::new(false),
            health: HealthHandle::default(),
            after_commit: None,
        }
    }

    pub fn with_after_commit_hook(mut self, hook: AfterCommitHook) -> Self {
        self.after_commit = Some(hook);
        self
    }

    pub fn health(&self) -> HealthHandle {
        self.health.clone()
    }

    fn lease_duration(&self) -> Duration {
        LEASE_DURATION
    }

    /// Renews the lease every [`LEASE_HEARTBEAT`] while this instance holds it. Never returns.
    async fn heartbeat(&self) {
        loop {
            tokio::time::sleep(LEASE_HEARTBEAT).await;
            if self.holding.load(std::sync::atomic::Ordering::Relaxed)
                && let Err(error) = self.hold_lease().await
            {
                warn!(error = %error, "renewing the mailbox lease failed");
            }
        }
    }

    async fn hold_lease(&self) -> Result<bool, ImapError> {
        let now = self.engine.now_ms();
        let until = now + self.lease_duration().as_millis() as i64;
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let held =
            storage::try_acquire_lease(&mut conn, &self.settings.mailbox_key(), &self.holder, now, until).await?;
        self.holding.store(held, std::sync::atomic::Ordering::Relaxed);
        Ok(held)
    }

    /// Waits for new mail: IDLE where the server has it, else sleeps. Returns the session and
    /// whether to stop.
    async fn wait_for_mail(
        &self,
        session: ImapSession,
        features: ServerFeatures,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(ImapSession, bool), ImapError> {
        if !(features.idle && self.settings.use_idle) {
            let stopped = tokio::select! {
                _ = stop.changed() => true,
                _ = tokio::time::sleep(self.settings.poll_interval) => false,
            };
            return Ok((session, stopped || *stop.borrow()));
        }
        self.health.update(|h| h.state = "idle".into());
        let mut idle = session.idle();
        within("starting IDLE", async { idle.init().await.imap("starting IDLE") }).await?;
        let stopped = {
            let (wait, interrupt) = idle.wait_with_timeout(self.settings.poll_interval);
            tokio::pin!(wait);
            tokio::select! {
                result = &mut wait => {
                    result.imap("waiting in IDLE")?;
                    false
                }
                _ = stop.changed() => {
                    drop(interrupt);
                    true
                }
            }
        };
        let session = within("ending IDLE", async { idle.done().await.imap("ending IDLE") }).await?;
        Ok((session, stopped || *stop.borrow()))
    }

    async fn run_session(&self, stop: &mut watch::Receiver<bool>, backoff: &mut Duration) -> Result<(), ImapError> {
        let mut session = connect(&self.settings).await?;
        let features = Self::features(&mut session).await?;
        loop {
            self.poll_once(&mut session, stop).await?;
            *backoff = Duration::from_secs(1);
            if *stop.borrow() {
                break;
            }
            let (next, stopped) = self.wait_for_mail(session, features, stop).await?;
            session = next;
            if stopped {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        Ok(())
    }

    /// Polls until `stop` is set, reconnecting with exponential backoff after any error.
    /// A message being ingested when the signal comes is finished first.
    pub async fn run_until_stopped(&self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.poll_until_stopped(&mut stop) => {}
            _ = self.heartbeat() => {}
        }
        self.holding.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut conn) = self.engine.db().pool.acquire().await {
            let _ = storage::release_lease(&mut conn, &self.settings.mailbox_key(), &self.holder).await;
        }
        self.health.update(|h| h.state = "stopped".into());
    }

    async fn poll_until_stopped(&self, stop: &mut watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        while !*stop.borrow() {
            match self.run_session(stop, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    warn!(error = %error, retry_in = ?backoff, "mailbox poll failed");
                    let message = error.to_string();
                    self.health.update(|h| {
                        h.state = "reconnecting".into();
                        h.last_error = Some(message.clone());
                    });
                    if let Ok(mut conn) = self.engine.db().pool.acquire().await {
                        let now = self.engine.now_ms();
                        let _ =
                            storage::record_poll(&mut conn, &self.settings.mailbox_key(), now, None, Some(&message))
                                .await;
                    }
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Sends everything in the quarantine folder back to the mailbox for another try, and marks
/// the mailbox's open ingest errors resolved. Returns how many messages were moved.
pub async fn retry_quarantined(engine: &Engine, settings: &ImapSettings) -> Result<usize, ImapError> {
    let mut session = connect(settings).await?;
    let features = ImapPoller::features(&mut session).await?;
    ImapPoller::ensure_folder(&mut session, &settings.quarantine_folder).await?;
    let mailbox = within("selecting quarantine", async {
        session
            .select(&settings.quarantine_folder)
            .await
            .imap("selecting quarantine")
    })
    .await?;
    let count = mailbox.exists as usize;
    if count > 0 {
        within("moving quarantined mail back", async {
            if features.r#move {
                session
                    .mv("1:*", &settings.mailbox)
                    .await
                    .imap("moving quarantined mail back")
            } else {
                session
                    .copy("1:*", &settings.mailbox)
                    .await
                    .imap("copying quarantined mail back")?;
                let _: Vec<_> = session
                    .store("1:*", "+FLAGS.SILENT (\\Deleted)")
                    .await
                    .imap("flagging")?
                    .try_collect()
                    .await
                    .imap("flagging")?;
                let _: Vec<_> = session
                    .expunge()
                    .await
                    .imap("expunging")?
                    .try_collect()
                    .await
                    .imap("expunging")?;
                Ok(())
            }
        })
        .await?;
    }
    let _ = session.logout().await;
    let mut conn = engine.db().pool.acquire().await.context("connecting")?;
    storage::resolve_ingest_errors(&mut conn, &settings.mailbox_key(), engine.now_ms()).await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::connection::is_loopback;
    use super::*;

    #[test]
    fn uid_sets_are_compact_ranges() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[3, 1, 2, 2]), "1:3");
    }

    #[test]
    fn plain_text_is_refused_for_anything_but_loopback() {
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("mail.example.com") && !is_loopback("10.0.0.1"));
    }
}
