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

use super::HealthHandle;
use crate::config::{ImapSettings, TransportSecurity};
use crate::engine::{Engine, IntakeReport};
use crate::storage::{self, QueryContext, StorageError};
use secrecy::ExposeSecret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest any one IMAP command may take (a 50 MB fetch on a slow link fits).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Messages committed before they are moved out of the mailbox together.
const MOVE_BATCH: usize = 100;
/// Messages recorded in one transaction, at most: one commit for many is most of the gain,
/// and a failed group is redone one message at a time.
const GROUP_MESSAGES: usize = 16;
/// A group stops growing once this much mail is fetched for it (a 20 MB message is alone).
const GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Messages taken but not yet moved.
#[derive(Debug, Default)]
struct MoveBatch {
    processed: Vec<u32>,
    /// UID, source and reason.
    quarantined: Vec<(u32, String, String)>,
    /// The highest UID dealt with, moved or not there any more.
    last_uid: Option<u32>,
}

/// Where a message came from, as stored with it and in ingest errors: the mailbox's key, its
/// UIDVALIDITY and the message's UID.
fn message_source(key: &str, uidvalidity: i64, uid: u32) -> String {
    format!("{key};UIDVALIDITY={uidvalidity};UID={uid}")
}

/// A message fetched and not yet recorded, in the drain's pipeline.
enum InFlight {
    /// Expunged by someone else between the search and the fetch.
    Gone(u32),
    /// Over the size limit, or set aside after it stopped the service before: quarantined
    /// without reading it.
    TooLarge(u32, String),
    /// Being prepared (parsed, its PDFs read) on another worker: the raw bytes come back with it.
    Preparing(u32, tokio::task::JoinHandle<(Vec<u8>, crate::engine::PreparedEmail)>),
}

/// What recording a message means for it on the server.
enum Recorded {
    /// Nothing there to move.
    Gone,
    /// Stored (now or before): move it to the processed folder.
    Stored { already_ingested: bool },
    /// Move it to the quarantine folder, for this reason. `stored` is as for `Stored` when the
    /// message was stored all the same (a malformed email is kept on a case), `None` if not.
    Quarantine { reason: String, stored: Option<bool> },
    /// Leave it, and stop this poll with the error: it is tried again on the next one.
    Retry(ImapError),
}

impl MoveBatch {
    fn len(&self) -> usize {
        self.processed.len() + self.quarantined.len()
    }
}

/// A compact IMAP UID set for sorted UIDs: `1:3,7,9:10`.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

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

/// A TCP connection, with or without TLS.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type ImapSession = async_imap::Session<ImapStream>;

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn tls_connector(settings: &ImapSettings) -> Result<tokio_rustls::TlsConnector, ImapError> {
    use tokio_rustls::rustls;
    let server = settings.host.clone();
    let tls_error = |message: String| ImapError::Tls {
        server: server.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = &settings.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| tls_error(format!("cannot read CA file {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| tls_error(format!("bad certificate in {}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| tls_error(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn tls_wrap(settings: &ImapSettings, tcp: TcpStream) -> Result<ImapStream, ImapError> {
    let server = settings.host.clone();
    let name = rustls_pki_types::ServerName::try_from(settings.host.clone()).map_err(|e| ImapError::Tls {
        server: server.clone(),
        message: e.to_string(),
    })?;
    let stream = tls_connector(settings)?
        .connect(name, tcp)
        .await
        .map_err(|e| ImapError::Tls {
            server,
            message: e.to_string(),
        })?;
    Ok(ImapStream::Tls(Box::new(stream)))
}

/// Connects, protects and logs in. The password goes only to the server.
pub async fn connect(settings: &ImapSettings) -> Result<ImapSession, ImapError> {
    let server = format!("{}:{}", settings.host, settings.port);
    if settings.security == TransportSecurity::Plain && !is_loopback(&settings.host) {
        return Err(ImapError::PlainNotLoopback {
            host: settings.host.clone(),
        });
    }
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((settings.host.as_str(), settings.port)),
    )
    .await
    .map_err(|_| ImapError::Connect {
        server: server.clone(),
        source: std::io::ErrorKind::TimedOut.into(),
    })?
    .map_err(|source| ImapError::Connect {
        server: server.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let stream = match settings.security {
        TransportSecurity::Plain => ImapStream::Plain(tcp),
        TransportSecurity::Tls => tls_wrap(settings, tcp).await?,
        TransportSecurity::Starttls => {
            let mut client = async_imap::Client::new(ImapStream::Plain(tcp));
            within("reading the greeting", async {
                client.read_response().await.map_err(|e| ImapError::Protocol {
                    context: "reading the greeting",
                    source: e.into(),
                })
            })
            .await?;
            within("starting TLS", async {
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .imap("starting TLS")
            })
            .await?;
            let ImapStream::Plain(tcp) = client.into_inner() else {
                unreachable!("STARTTLS starts from a plain stream")
            };
            tls_wrap(settings, tcp).await?
        }
    };
    let mut client = async_imap::Client::new(stream);
    if settings.security != TransportSecurity::Starttls {
        // async-imap does not read the greeting itself (there is none after STARTTLS).
        within("reading the greeting", async {
            client.read_response().await.map_err(|e| ImapError::Protocol {
                context: "reading the greeting",
                source: e.into(),
            })
        })
        .await?;
    }
    within("logging in", async {
        client
            .login(&settings.user, settings.password.expose_secret())
            .await
            .map_err(|(e, _)| ImapError::Login {
                user: settings.user.clone(),
                message: e.to_string(),
            })
    })
    .await
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
    fn count_stored(&mut self, already_ingested: bool) {
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

/// The server's relevant capabilities, asked again after login (Dovecot adds MOVE then).
#[derive(Debug, Clone, Copy, Default)]
struct ServerFeatures {
    r#move: bool,
    uidplus: bool,
    idle: bool,
}

impl ServerFeatures {
    fn from(caps: &Capabilities) -> Self {
        ServerFeatures {
            r#move: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
            idle: caps.has_str("IDLE"),
        }
    }
}

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

    async fn features(session: &mut ImapSession) -> Result<ServerFeatures, ImapError> {
        let caps = within("asking for capabilities", async {
            session.capabilities().await.imap("asking for capabilities")
        })
        .await?;
        Ok(ServerFeatures::from(&caps))
    }

    async fn ensure_folder(session: &mut ImapSession, folder: &str) -> Result<(), ImapError> {
        let existing: Vec<_> = within("listing folders", async {
            session
                .list(None, Some(folder))
                .await
                .imap("listing folders")?
                .try_collect::<Vec<_>>()
                .await
                .imap("listing folders")
        })
        .await?;
        if existing.is_empty() {
            within("creating a folder", async {
                session.create(folder).await.imap("creating a folder")
            })
            .await?;
        }
        Ok(())
    }

    async fn fetch_body(session: &mut ImapSession, uid: u32) -> Result<Option<Vec<u8>>, ImapError> {
        within("fetching a message", async {
            let fetches: Vec<_> = session
                .uid_fetch(uid.to_string(), "(UID BODY.PEEK[])")
                .await
                .imap("fetching a message")?
                .try_collect()
                .await
                .imap("fetching a message")?;
            Ok(fetches
                .into_iter()
                .find(|f| f.uid == Some(uid))
                .and_then(|f| f.body().map(<[u8]>::to_vec)))
        })
        .await
    }

    async fn move_messages(
        session: &mut ImapSession,
        features: ServerFeatures,
        set: &str,
        folder: &str,
    ) -> Result<(), ImapError> {
        within("moving a message", async {
            if features.r#move {
                session.uid_mv(&set, folder).await.imap("moving a message")?;
            } else {
                session.uid_copy(&set, folder).await.imap("copying a message")?;
                let _: Vec<_> = session
                    .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
                    .await
                    .imap("flagging a message deleted")?
                    .try_collect()
                    .await
                    .imap("flagging a message deleted")?;
                if features.uidplus {
                    let _: Vec<_> = session
                        .uid_expunge(&set)
                        .await
                        .imap("expunging a message")?
                        .try_collect()
                        .await
                        .imap("expunging a message")?;
                } else {
                    let _: Vec<_> = session
                        .expunge()
                        .await
                        .imap("expunging")?
                        .try_collect()
                        .await
                        .imap("expunging")?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Moves a batch of committed messages out of the mailbox, then saves the position.
    /// Moving in batches keeps the server from rewriting its index once per message; a crash
    /// before the move only means the batch is found again, already ingested, and moved then.
    /// Returns whether this instance still holds the mailbox lease.
    async fn flush(
        &self,
        session: &mut ImapSession,
        features: ServerFeatures,
        uidvalidity: i64,
        batch: &mut MoveBatch,
        summary: &mut PollSummary,
    ) -> Result<bool, ImapError> {
        let key = self.settings.mailbox_key();
        if !batch.processed.is_empty() {
            Self::move_messages(
                session,
                features,
                &uid_set(&batch.processed),
                &self.settings.processed_folder,
            )
            .await?;
        }
        if !batch.quarantined.is_empty() {
            let uids: Vec<u32> = batch.quarantined.iter().map(|(uid, _, _)| *uid).collect();
            Self::move_messages(session, features, &uid_set(&uids), &self.settings.quarantine_folder).await?;
        }
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let now = self.engine.now_ms();
        for (uid, source, reason) in &batch.quarantined {
            storage::record_quarantine(&mut conn, source, &key, reason, now).await?;
            warn!(uid, reason = %reason, "message quarantined");
        }
        if let Some(last) = batch.last_uid {
            storage::set_mailbox_position(&mut conn, &key, uidvalidity, i64::from(last)).await?;
        }
        drop(conn);
        let (moved, quarantined) = (batch.processed.len(), batch.quarantined.len());
        summary.uids.extend(
            batch
                .processed
                .iter()
                .copied()
                .chain(batch.quarantined.iter().map(|(uid, _, _)| *uid)),
        );
        summary.quarantined += quarantined;
        self.health.update(|h| {
            h.backlog = h.backlog.saturating_sub(moved + quarantined);
            h.ingested += moved as u64;
            h.quarantined += quarantined as u64;
        });
        *batch = MoveBatch::default();
        // Renewed per batch, so a long drain never outlives the lease.
        self.hold_lease().await
    }

    /// Fetches the next group of messages (up to `GROUP_MESSAGES`, or until `GROUP_BYTES` are
    /// fetched), starting each one's preparation on another worker as soon as it arrives.
    async fn fetch_group(
        &self,
        session: &mut ImapSession,
        uids: &mut std::iter::Peekable<std::vec::IntoIter<u32>>,
    ) -> Result<Vec<InFlight>, ImapError> {
        let (mut group, mut bytes) = (Vec::new(), 0);
        while group.len() < GROUP_MESSAGES && bytes < GROUP_BYTES {
            let Some(uid) = uids.next() else { break };
            group.push(match Self::fetch_body(session, uid).await? {
                // Expunged by someone else since the search: nothing to take.
                None => InFlight::Gone(uid),
                Some(raw) if raw.len() > self.settings.max_message_bytes => InFlight::TooLarge(
                    uid,
                    format!(
                        "the message is {} bytes, over the limit of {}",
                        raw.len(),
                        self.settings.max_message_bytes
                    ),
                ),
                Some(raw) => {
                    bytes += raw.len();
                    // A message the service died on before is not read again more than a few
                    // times; an error counting the try leaves it for the next poll.
                    if let Some(reason) = self.engine.guard_preparation(&raw).await? {
                        group.push(InFlight::TooLarge(uid, reason));
                        continue;
                    }
                    let engine = self.engine.clone();
                    InFlight::Preparing(
                        uid,
                        tokio::spawn(async move {
                            let prepared = engine.prepare(&raw).await;
                            (raw, prepared)
                        }),
                    )
                }
            });
        }
        Ok(group)
    }

    /// Records a group of fetched messages (waiting for their preparation first) in one
    /// transaction, and says, in UID order, what to do with each on the server. If the group
    /// fails, its messages are recorded one at a time, each with its own attempt count.
    async fn record_group(
        &self,
        items: Vec<InFlight>,
        key: &str,
        uidvalidity: i64,
    ) -> Vec<(u32, Result<Recorded, ImapError>)> {
        // Each message's outcome, in UID order; `None` for those the group transaction records.
        let mut outcomes: Vec<(u32, Option<Result<Recorded, ImapError>>)> = Vec::with_capacity(items.len());
        let (mut ready, mut prepared) = (Vec::new(), Vec::new());
        for item in items {
            let outcome = match item {
                InFlight::Gone(uid) => (uid, Some(Ok(Recorded::Gone))),
                InFlight::TooLarge(uid, reason) => (uid, Some(Ok(Recorded::Quarantine { reason, stored: None }))),
                InFlight::Preparing(uid, preparing) => match preparing.await {
                    Ok((raw, email)) => {
                        ready.push((raw, message_source(key, uidvalidity, uid)));
                        prepared.push(email);
                        (uid, None)
                    }
                    Err(crashed) => {
                        let error = crate::engine::EngineError::PreparationFailed(crashed.to_string());
                        let source = message_source(key, uidvalidity, uid);
                        (uid, Some(self.record_failure(key, &source, error).await))
                    }
                },
            };
            outcomes.push(outcome);
        }
        let results = self.record_ready(&ready, prepared).await;
        let mut recorded = ready.iter().zip(results);
        let mut done = Vec::with_capacity(outcomes.len());
        for (uid, outcome) in outcomes {
            let outcome = match outcome {
                Some(outcome) => outcome,
                None => {
                    let Some(((raw, source), result)) = recorded.next() else {
                        unreachable!("one result per message given to the group")
                    };
                    if result.is_err() {
                        // Prepared to the end, then a storage failure: not a poison message.
                        let _ = self.engine.preparation_finished(raw).await;
                    }
                    self.outcome(uid, key, source, result).await
                }
            };
            done.push((uid, outcome));
        }
        done
    }

    /// Records the prepared messages of a group in one transaction or, if that fails, one at
    /// a time: one result per message, in order. The one-at-a-time path prepares each message
    /// again, because the failed transaction consumed the prepared forms (a rare path).
    async fn record_ready(
        &self,
        ready: &[(Vec<u8>, String)],
        prepared: Vec<crate::engine::PreparedEmail>,
    ) -> Vec<Result<IntakeReport, crate::engine::EngineError>> {
        if ready.is_empty() {
            return Vec::new();
        }
        let group = ready
            .iter()
            .zip(prepared)
            .map(|((raw, source), email)| (raw.as_slice(), email, source.as_str()))
            .collect();
        match self.engine.record_group(group).await {
            Ok(reports) => reports.into_iter().map(Ok).collect(),
            Err(error) => {
                warn!(error = %error, messages = ready.len(), "recording a group failed: recording its messages one at a time");
                let mut one_by_one = Vec::with_capacity(ready.len());
                for (raw, source) in ready {
                    let email = self.engine.prepare(raw).await;
                    one_by_one.push(self.engine.record(raw, email, source).await);
                }
                one_by_one
            }
        }
    }

    /// What recording one message means for it on the server.
    async fn outcome(
        &self,
        uid: u32,
        key: &str,
        source: &str,
        result: Result<IntakeReport, crate::engine::EngineError>,
    ) -> Result<Recorded, ImapError> {
        match result {
            Ok(report) => {
                if let Some(hook) = &self.after_commit {
                    hook(uid).await;
                }
                let malformed = report
                    .cases
                    .iter()
                    .any(|c| c.finding_codes.iter().any(|f| f == "message_malformed"));
                if malformed {
                    let refs: Vec<&str> = report.cases.iter().map(|c| c.reference.as_str()).collect();
                    Ok(Recorded::Quarantine {
                        reason: format!(
                            "the message could not be read as an email; it is kept on case {}",
                            refs.join(", ")
                        ),
                        stored: Some(report.already_ingested),
                    })
                } else {
                    Ok(Recorded::Stored {
                        already_ingested: report.already_ingested,
                    })
                }
            }
            Err(error) => self.record_failure(key, source, error).await,
        }
    }

    /// Counts a failed attempt at a message: quarantine after too many, else retry later.
    async fn record_failure(
        &self,
        key: &str,
        source: &str,
        error: crate::engine::EngineError,
    ) -> Result<Recorded, ImapError> {
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let now = self.engine.now_ms();
        let attempts = storage::record_ingest_error(&mut conn, source, key, &format!("{error:#}"), now).await?;
        if attempts >= self.settings.max_attempts {
            return Ok(Recorded::Quarantine {
                reason: format!("ingesting failed {attempts} times: {error:#}"),
                stored: None,
            });
        }
        Ok(Recorded::Retry(ImapError::Intake(error)))
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

    /// Takes every new message in the mailbox once. Stops early (between messages) when
    /// `stop` is set.
    #[instrument(skip_all, fields(mailbox = %self.settings.mailbox_key()))]
    pub async fn poll_once(
        &self,
        session: &mut ImapSession,
        stop: &watch::Receiver<bool>,
    ) -> Result<PollSummary, ImapError> {
        let key = self.settings.mailbox_key();
        let mut summary = PollSummary::default();
        if !self.hold_lease().await? {
            self.health.update(|h| h.state = "waiting for the mailbox lease".into());
            return Ok(summary);
        }
        summary.lease_held = true;
        let features = Self::features(session).await?;
        Self::ensure_folder(session, &self.settings.processed_folder).await?;
        Self::ensure_folder(session, &self.settings.quarantine_folder).await?;
        let mailbox = within("selecting the mailbox", async {
            session
                .select(&self.settings.mailbox)
                .await
                .imap("selecting the mailbox")
        })
        .await?;
        let uidvalidity = i64::from(mailbox.uid_validity.ok_or_else(|| ImapError::NoUidValidity {
            mailbox: self.settings.mailbox.clone(),
        })?);

        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let (stored_validity, stored_last) = storage::mailbox_position(&mut conn, &key).await?;
        let last_uid = match stored_validity {
            Some(v) if v == uidvalidity => stored_last.unwrap_or(0),
            Some(v) => {
                warn!(
                    old = v,
                    new = uidvalidity,
                    "UIDVALIDITY changed: rescanning the mailbox; deduplication keeps it from re-importing"
                );
                0
            }
            None => 0,
        };
        storage::set_mailbox_position(&mut conn, &key, uidvalidity, last_uid).await?;
        drop(conn);

        // Dovecot answers `UID n:*` with the highest UID even when it is below n: filter.
        let mut uids: Vec<u32> = within("searching for new mail", async {
            session
                .uid_search(format!("UID {}:*", last_uid + 1))
                .await
                .imap("searching for new mail")
        })
        .await?
        .into_iter()
        .filter(|uid| i64::from(*uid) > last_uid)
        .collect();
        uids.sort_unstable();
        summary.backlog = uids.len();
        self.health.update(|h| {
            h.state = "polling".into();
            h.backlog = uids.len();
        });

        let mut batch = MoveBatch::default();
        // Where a drain spends its time, logged at debug level for tuning.
        let (mut waiting, mut moving) = (Duration::ZERO, Duration::ZERO);
        // A pipeline: while one group of messages is recorded (in one transaction), the next
        // is fetched and prepared (parsed, its PDFs read) on other workers. Messages are
        // recorded, moved and counted strictly in UID order, so the saved position never
        // passes a message that is not stored yet.
        let mut in_flight: Vec<InFlight> = Vec::new();
        let mut uids = uids.into_iter().peekable();
        loop {
            if *stop.borrow() {
                // What is fetched but not recorded is left for next time: it is not moved,
                // and the saved position has not passed it.
                break;
            }
            if batch.len() >= MOVE_BATCH {
                let started = std::time::Instant::now();
                let still_held = self
                    .flush(session, features, uidvalidity, &mut batch, &mut summary)
                    .await?;
                moving += started.elapsed();
                if !still_held {
                    warn!("lost the mailbox lease; another instance has it");
                    return Ok(summary);
                }
            }
            if uids.peek().is_none() && in_flight.is_empty() {
                break;
            }
            let started = std::time::Instant::now();
            let previous = std::mem::take(&mut in_flight);
            let (fetched, recorded) = tokio::join!(
                self.fetch_group(session, &mut uids),
                self.record_group(previous, &key, uidvalidity)
            );
            waiting += started.elapsed();
            for (uid, recorded) in recorded {
                match recorded? {
                    Recorded::Gone => {}
                    Recorded::Stored { already_ingested } => {
                        summary.count_stored(already_ingested);
                        batch.processed.push(uid);
                    }
                    Recorded::Quarantine { reason, stored } => {
                        if let Some(already_ingested) = stored {
                            summary.count_stored(already_ingested);
                        }
                        batch
                            .quarantined
                            .push((uid, message_source(&key, uidvalidity, uid), reason));
                    }
                    Recorded::Retry(error) => {
                        // Likely passing (the database is down): move what is done, leave this
                        // one, and retry from here on the next poll.
                        self.flush(session, features, uidvalidity, &mut batch, &mut summary)
                            .await?;
                        return Err(error);
                    }
                }
                batch.last_uid = Some(uid);
            }
            in_flight = fetched?;
        }
        let started = std::time::Instant::now();
        self.flush(session, features, uidvalidity, &mut batch, &mut summary)
            .await?;
        moving += started.elapsed();
        tracing::debug!(?waiting, ?moving, "drain timings");
        let now = self.engine.now_ms();
        let backlog = summary.backlog - summary.uids.len();
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        storage::record_poll(&mut conn, &key, now, Some(backlog as i64), None).await?;
        self.health.update(|h| {
            h.last_poll_at = Some(now);
            h.last_success_at = Some(now);
            h.last_error = None;
        });
        info!(
            ingested = summary.ingested,
            already = summary.already_ingested,
            quarantined = summary.quarantined,
            "poll done"
        );
        Ok(summary)
    }

    /// Connects, polls once and logs out: `serve --once`, and tests.
    pub async fn drain_once(&self) -> Result<PollSummary, ImapError> {
        let (_keep, stop) = watch::channel(false);
        let mut session = connect(&self.settings).await?;
        let summary = self.poll_once(&mut session, &stop).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        summary
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
