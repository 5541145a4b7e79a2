//! An outbox row and its rendered template made into an email: our From, its own Message-ID,
//! threading headers to the practice's email, `Auto-Submitted` on automatic mail, and plain
//! text with HTML beside it.

use lettre::Message;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use super::{OutboxJob, RenderedMail};
use crate::config::MailerSettings;

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

/// Builds the email for a job.
pub fn compose(settings: &MailerSettings, job: &OutboxJob, rendered: &RenderedMail) -> Result<Message, String> {
    let from: Mailbox = format!("{} <{}>", settings.from_name, settings.from_address)
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
