//! Outbound mail through a transactional outbox.
//!
//! Rows are written in the same transaction as the change that causes them (see
//! `Engine::notify`). The dispatcher claims due rows one at a time (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL; a claim lease column on both), renders them with tera, and sends them with
//! lettre, retrying with exponential backoff while the server is away. Delivery is at least
//! once: a crash between sending and marking sent resends with the same Message-ID, so the
//! copy is recognisable. Automatic mail carries `Auto-Submitted: auto-replied` and is
//! rate-limited per recipient.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{MailerSettings, TransportSecurity};
use crate::engine::Engine;
use crate::storage::{self, QueryContext, StorageError};
use secrecy::ExposeSecret;

/// How long a claimed message is reserved for the instance sending it.
const CLAIM_LEASE: Duration = Duration::from_secs(120);
const FIRST_RETRY: Duration = Duration::from_secs(30);
const LONGEST_RETRY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot load the email templates from {dir}: {message}")]
    Templates { dir: String, message: String },
    #[error("email template `{template}` failed: {message}")]
    Render { template: String, message: String },
    #[error("cannot set up the SMTP connection to {host}: {message}")]
    Transport { host: String, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// `Auto-Submitted` (RFC 3834), which lettre does not define.
#[derive(Debug, Clone)]
struct AutoSubmitted(String);

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted(s.trim().to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// A rendered email: the first line of the plain-text template is `Subject: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The email templates (`templates/email/NAME.txt.tera` and `NAME.html.tera`).
pub struct Renderer {
    tera: tera::Tera,
}

impl Renderer {
    pub fn load(templates_dir: &Path) -> Result<Self, OutboxError> {
        let glob = format!("{}/email/**/*.tera", templates_dir.display());
        let mut tera = tera::Tera::new(&glob).map_err(|e| OutboxError::Templates {
            dir: templates_dir.display().to_string(),
            message: format!("{e:?}"),
        })?;
        // Tera escapes by file ending; ours end in `.tera`, so name the HTML ones. Values from
        // forms and caseworkers must never become markup.
        tera.autoescape_on(vec![".html.tera"]);
        Ok(Renderer { tera })
    }

    pub fn render(&self, template: &str, context: &serde_json::Value) -> Result<RenderedMail, OutboxError> {
        let failed = |e: tera::Error| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            OutboxError::Render {
                template: template.to_string(),
                message,
            }
        };
        let mut ctx = tera::Context::from_value(context.clone()).map_err(failed)?;
        let plain = self
            .tera
            .render(&format!("{template}.txt.tera"), &ctx)
            .map_err(failed)?;
        let (first, rest) = plain.split_once('\n').unwrap_or((plain.as_str(), ""));
        let subject = first
            .strip_prefix("Subject:")
            .map(str::trim)
            .unwrap_or("Countersign")
            .to_string();
        let text = rest.trim().to_string() + "\n";
        ctx.insert("subject", &subject);
        ctx.insert("plain", &text);
        let html = self
            .tera
            .render(&format!("{template}.html.tera"), &ctx)
            .map_err(failed)?;
        Ok(RenderedMail { subject, text, html })
    }
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// The embedded default: `.eml` files in a folder.
    Files(AsyncFileTransport<Tokio1Executor>),
}

/// A claimed outbox row.
pub use crate::storage::OutboxJob;

/// What one dispatch run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchSummary {
    pub sent: usize,
    pub retrying: usize,
    pub failed: usize,
    /// Held back by the per-recipient rate limit.
    pub deferred: usize,
}

/// Called after a message is handed to the server and before it is marked sent: the seam
/// tests use to crash at the worst moment.
pub type AfterSendHook =
    Arc<dyn Fn(i64) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

pub struct Dispatcher {
    engine: Engine,
    settings: MailerSettings,
    renderer: Renderer,
    transport: Transport,
    holder: String,
    after_send: Option<AfterSendHook>,
}

fn backoff(attempts: i64) -> Duration {
    let exponent = attempts.clamp(1, 16) as u32 - 1;
    (FIRST_RETRY * 2u32.pow(exponent)).min(LONGEST_RETRY)
}

impl Dispatcher {
    pub fn new(engine: Engine, settings: MailerSettings, templates_dir: &Path) -> Result<Self, OutboxError> {
        let renderer = Renderer::load(templates_dir)?;
        let transport = match &settings.smtp {
            None => {
                std::fs::create_dir_all(&settings.mail_folder).map_err(|e| OutboxError::Transport {
                    host: settings.mail_folder.display().to_string(),
                    message: e.to_string(),
                })?;
                Transport::Files(AsyncFileTransport::<Tokio1Executor>::new(&settings.mail_folder))
            }
            Some(smtp) => {
                let failed = |e: lettre::transport::smtp::Error| OutboxError::Transport {
                    host: smtp.host.clone(),
                    message: e.to_string(),
                };
                let tls_parameters = || -> Result<TlsParameters, OutboxError> {
                    let mut tls = TlsParameters::builder(smtp.host.clone());
                    if let Some(path) = &smtp.ca_file {
                        let pem = std::fs::read(path).map_err(|e| OutboxError::Transport {
                            host: smtp.host.clone(),
                            message: format!("cannot read CA file {}: {e}", path.display()),
                        })?;
                        tls = tls.add_root_certificate(Certificate::from_pem(&pem).map_err(failed)?);
                    }
                    tls.build_rustls().map_err(failed)
                };
                let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host);
                let mut builder = match smtp.security {
                    TransportSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters()?)),
                    TransportSecurity::Starttls => builder.tls(Tls::Required(tls_parameters()?)),
                    TransportSecurity::Plain => {
                        let loopback = smtp.host == "localhost"
                            || smtp.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                        if !loopback {
                            return Err(OutboxError::Transport {
                                host: smtp.host.clone(),
                                message: "plain SMTP is only allowed to a loopback address; use tls or starttls".into(),
                            });
                        }
                        builder
                    }
                };
                builder = builder.port(smtp.port).timeout(Some(Duration::from_secs(30)));
                if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
                    builder = builder.credentials(Credentials::new(user.clone(), password.expose_secret().to_string()));
                }
                Transport::Smtp(builder.build())
            }
        };
        let holder = format!("outbox-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Ok(Dispatcher {
            engine,
            settings,
            renderer,
            transport,
            holder,
            after_send: None,
        })
    }

    pub fn with_after_send_hook(mut self, hook: AfterSendHook) -> Self {
        self.after_send = Some(hook);
        self
    }

    /// Claims the next due message, if any.
    async fn claim_next(&self, now: i64) -> Result<Option<OutboxJob>, OutboxError> {
        let mut conn = self.connection().await?;
        Ok(storage::claim_mail(&mut conn, &self.holder, now, now + CLAIM_LEASE.as_millis() as i64).await?)
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, OutboxError> {
        Ok(self.engine.db().pool.acquire().await.context("connecting")?)
    }

    /// Builds the email for a job.
    pub fn compose(&self, job: &OutboxJob, rendered: &RenderedMail) -> Result<Message, String> {
        let from: Mailbox = format!("{} <{}>", self.settings.from_name, self.settings.from_address)
            .parse()
            .map_err(|e| format!("our From address: {e}"))?;
        let to: Mailbox = job
            .recipient
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("recipient: {e}"))?;
        let mut builder = Message::builder()
            .from(from)
            .to(to)
            .subject(&rendered.subject)
            .date_now()
            .message_id(Some(job.message_id.clone()));
        if let Some(parent) = &job.in_reply_to {
            let parent = format!("<{}>", parent.trim().trim_start_matches('<').trim_end_matches('>'));
            builder = builder.in_reply_to(parent.clone()).references(parent);
        }
        if job.automatic {
            builder = builder.header(AutoSubmitted("auto-replied".into()));
        }
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(rendered.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(rendered.html.clone()),
                    ),
            )
            .map_err(|e| e.to_string())
    }

    /// Sends everything due now; returns what happened.
    pub async fn dispatch_due(&self) -> Result<DispatchSummary, OutboxError> {
        let mut summary = DispatchSummary::default();
        loop {
            let now = self.engine.now_ms();
            let Some(job) = self.claim_next(now).await? else { break };
            if job.automatic && self.defer_for_rate_limit(&job, now).await? {
                summary.deferred += 1;
                continue;
            }
            let message = self
                .renderer
                .render(&job.template, &job.context)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let message = self.compose(&job, &r)?;
                    Ok((r.subject, message))
                });
            let (subject, message) = match message {
                Ok(built) => built,
                Err(error) => {
                    // A broken template or address will not mend itself by retrying.
                    self.mark_failed(job.id, &error, now).await?;
                    summary.failed += 1;
                    continue;
                }
            };
            let result = match &self.transport {
                Transport::Smtp(smtp) => smtp
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.is_permanent(), e.to_string())),
                Transport::Files(files) => files
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| (false, e.to_string())),
            };
            match result {
                Ok(()) => {
                    if let Some(hook) = &self.after_send {
                        hook(job.id).await;
                    }
                    let mut conn = self.connection().await?;
                    storage::mark_mail_sent(&mut conn, job.id, &subject, self.engine.now_ms()).await?;
                    info!(id = job.id, template = %job.template, "mail sent");
                    summary.sent += 1;
                }
                Err((permanent, error)) if permanent || job.attempts >= self.settings.max_attempts => {
                    self.mark_failed(job.id, &error, now).await?;
                    summary.failed += 1;
                }
                Err((_, error)) => {
                    let retry_at = now + backoff(job.attempts).as_millis() as i64;
                    warn!(id = job.id, attempts = job.attempts, error = %error, "mail not sent; will retry");
                    let mut conn = self.connection().await?;
                    storage::retry_mail_at(&mut conn, job.id, retry_at, &error, false).await?;
                    summary.retrying += 1;
                    // The server is likely down: the rest can wait for the next round.
                    break;
                }
            }
        }
        Ok(summary)
    }

    async fn mark_failed(&self, id: i64, error: &str, now: i64) -> Result<(), OutboxError> {
        warn!(id, error, "mail failed for good");
        let mut conn = self.connection().await?;
        storage::mark_mail_failed(&mut conn, id, error, now).await?;
        Ok(())
    }

    /// Holds automatic mail back when its recipient has had `per_recipient_per_hour` of them
    /// in the last hour, until the oldest of those is an hour old.
    async fn defer_for_rate_limit(&self, job: &OutboxJob, now: i64) -> Result<bool, OutboxError> {
        let Some(recipient) = &job.recipient else {
            return Ok(false);
        };
        let hour_ago = now - 3_600_000;
        let mut conn = self.connection().await?;
        let (count, oldest) = storage::automatic_mail_sent_since(&mut conn, recipient, hour_ago).await?;
        if count < self.settings.per_recipient_per_hour {
            return Ok(false);
        }
        let until = oldest.unwrap_or(now) + 3_600_000;
        let why = format!("held back: {recipient} has had {count} automatic messages in the last hour");
        storage::retry_mail_at(&mut conn, job.id, until, &why, true).await?;
        Ok(true)
    }

    /// Sends until `stop` is set; woken early when a transaction queues mail.
    pub async fn run_until_stopped(&self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(error) = self.dispatch_due().await {
                warn!(error = %error, "dispatching mail failed");
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.engine.wakers().outbox.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer() -> Renderer {
        Renderer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")).unwrap()
    }

    #[test]
    fn a_request_for_correction_lists_each_finding_and_escapes_html() {
        let context = serde_json::json!({
            "case": { "reference": "CS-2026-000042", "org_name": "Riverside <Surgery>" },
            "workflow": { "name": "primary_user_gp", "title": "Primary User request: GP practice" },
            "reason": "Please re-sign <b>page 2</b>.",
            "findings": [{ "code": "declaration_not_ticked", "message": "Tick the declaration." }],
        });
        let mail = renderer().render("request_for_correction", &context).unwrap();
        assert!(mail.subject.contains("[CS-2026-000042]"), "{}", mail.subject);
        assert!(mail.text.contains("Tick the declaration.") && mail.text.contains("<b>page 2</b>"));
        assert!(
            mail.html.contains("&lt;b&gt;page 2&lt;&#x2F;b&gt;") || mail.html.contains("&lt;b&gt;page 2&lt;/b&gt;"),
            "{}",
            mail.html
        );
        assert!(!mail.html.contains("<b>page 2</b>"));
        // Line breaks are real breaks, not escaped text.
        assert!(
            mail.html.contains("<br>") && !mail.html.contains("&lt;br&gt;"),
            "{}",
            mail.html
        );
    }

    #[test]
    fn every_shipped_template_renders() {
        let context = serde_json::json!({
            "case": { "reference": "CS-2026-000001", "state": "validated", "org_name": "X", "due_at": "27/11/2026 10:00", "updated_at": "20/11/2026 10:00" },
            "workflow": { "name": "w", "title": "T" },
            "reason": "r", "findings": [], "recorded": { "open_exeter_user_id": "OE1" },
            "open_total": 3, "by_state": [], "breaching": [],
        });
        let names = crate::workflow::definition::email_template_names(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/email"),
        )
        .unwrap();
        assert!(names.len() >= 9);
        for name in names {
            let mail = renderer()
                .render(&name, &context)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!mail.subject.is_empty() && !mail.text.trim().is_empty(), "{name}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(4), Duration::from_secs(240));
        assert_eq!(backoff(12), LONGEST_RETRY);
    }
}
