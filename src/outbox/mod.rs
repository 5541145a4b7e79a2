//! Outbound mail through a transactional outbox.
//!
//! Rows are written in the same transaction as the change that causes them (see
//! `engine::notify` and `storage::apply_change`). The dispatcher claims due rows one at a time (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL; a claim lease column on both), renders them with tera, and sends them with
//! lettre, retrying with exponential backoff while the server is away. Delivery is at least
//! once: a crash between sending and marking sent resends with the same Message-ID, so the
//! copy is recognisable. Automatic mail carries `Auto-Submitted: auto-replied` and is
//! rate-limited per recipient.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod compose;
pub mod render;
mod transport;

pub use compose::compose;
pub use render::{RenderedMail, Renderer};
use transport::Transport;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::MailerSettings;
use crate::engine::Engine;
use crate::storage::{self, QueryContext, StorageError};

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
        let transport = Transport::from_settings(&settings)?;
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
            let context = match self.with_credential_link(&job, now).await? {
                Ok(context) => context,
                Err(why) => {
                    self.mark_failed(job.id, &why, now).await?;
                    summary.failed += 1;
                    continue;
                }
            };
            let message = self
                .renderer
                .render(&job.template, &context)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let message = compose(&self.settings, &job, &r)?;
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
            let result = self.transport.send(message).await;
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

    /// The job's template context, with a credential's one-time link put in when the message
    /// carries one. The link's token is minted now, at send time, and only its hash is kept
    /// (on the credential's row, where it replaces any earlier link): so no outbox row ever
    /// holds a working link, and a resend after a crash sends a new link that voids the old.
    /// Err (with why) when the credential has no secret left to link to.
    async fn with_credential_link(
        &self,
        job: &OutboxJob,
        now: i64,
    ) -> Result<Result<serde_json::Value, String>, OutboxError> {
        let key = crate::engine::credentials::LINK_CONTEXT_KEY;
        let credential = &job.context[key];
        let (Some(name), Some(hours)) = (credential["name"].as_str(), credential["link_valid_hours"].as_i64()) else {
            return Ok(Ok(job.context.clone()));
        };
        let token = crate::users::random_token();
        let link_expires_at = now + hours * 3_600_000;
        let mut conn = self.connection().await?;
        let linked = storage::set_credential_link(
            &mut conn,
            name,
            &crate::mail::sha256_hex(token.as_bytes()),
            link_expires_at,
        )
        .await?;
        if !linked {
            return Ok(Err(
                "the password was already shown or withdrawn: there is nothing to link to".to_string(),
            ));
        }
        let mut context = job.context.clone();
        context[key]["link"] = serde_json::Value::String(format!(
            "{}/credential/{token}",
            self.settings.web_base_url.trim_end_matches('/')
        ));
        context[key]["link_expires"] = chrono::DateTime::from_timestamp_millis(link_expires_at)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%H:%M on %A %-d %B %Y")
                    .to_string()
            })
            .into();
        Ok(Ok(context))
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
            "workflow": { "name": "primary_user_gp", "title": "Primary User request: GP practice", "request": "request for a Primary User account" },
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
            "case": { "reference": "CS-2026-000001", "state": "validated", "org_name": "X", "due_at": "27/11/2026 10:00", "due_date": "Friday 27 November 2026", "updated_at": "20/11/2026 10:00" },
            "workflow": { "name": "w", "title": "T", "request": "request for a thing", "sla_working_days": 5 },
            "reason": "r", "findings": [], "recorded": { "open_exeter_user_id": "OE1" },
            "open_total": 3, "breached": 1, "at_risk": 0, "paused": 1, "week_from": "16 November",
            "week_to": "22 November", "received": 5, "completed": 4, "percent_within_sla": "75%",
            "reports_link": "http://127.0.0.1:8080/reports",
            "user_id": "OE1", "ods_code": "A81001", "days": 3, "days_ago": 4,
            "fields": { "smartcard_id": "555123456789" },
            "credential": { "link": "http://127.0.0.1:8080/credential/t", "link_expires": "09:00 on Monday 23 November 2026",
                            "lifetime_days": 30, "username": "OE1", "user_address": "new.user@nhs.net" },
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
