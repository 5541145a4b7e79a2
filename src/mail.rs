//! Reading one email: its headers, its sender-authentication verdict, and every PDF it carries,
//! including PDFs inside forwarded messages. MIME is mail-parser's job; this module only decides
//! what in the parsed message matters to a case.
//!
//! ```
//! use countersign::mail::{parse, MailSettings};
//!
//! let raw = b"From: Jo <jo@nhs.net>\r\nSubject: Form\r\nMessage-ID: <1@nhs.net>\r\n\
//! Authentication-Results: mx.example; dmarc=pass header.from=nhs.net\r\n\r\nHello";
//! let email = parse(raw, &MailSettings { authserv_id: "mx.example".into(), our_addresses: vec![] });
//! assert_eq!(email.from_address.as_deref(), Some("jo@nhs.net"));
//! assert!(email.sender_auth.passed());
//! assert!(email.attachments.is_empty());
//! ```

pub mod auth_results;

use mail_parser::{MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};

/// How deep forwarded messages are followed. Real forwards nest two or three deep; the limit
/// stops a hostile message from making us recurse without end.
const MAX_FORWARD_DEPTH: usize = 8;

/// The most attachments read from one email. A real request carries one form, perhaps with a
/// covering letter; past this the rest stay in the stored email, unopened, with a finding.
pub const MAX_ATTACHMENTS: usize = 20;

/// Whether the sender's domain is proven, according to our own receiving server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum SenderAuth {
    /// DMARC passed for the From domain, or DKIM passed for an aligned domain.
    Pass { method: String },
    /// Our server checked, and the checks did not pass.
    Fail { reason: String },
    /// Our server left no verdict.
    Missing { reason: String },
    /// A DKIM key could not be fetched for now (a DNS failure): not a pass, and checked again.
    Temporary { reason: String },
}

impl SenderAuth {
    pub fn passed(&self) -> bool {
        matches!(self, SenderAuth::Pass { .. })
    }
}

/// A part of the email that may be a form.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: Option<String>,
    /// The content type the message claims; not trusted.
    pub claimed_type: String,
    /// The content type detected from the bytes themselves.
    pub detected_type: Option<String>,
    pub sha256: String,
    pub bytes: Vec<u8>,
    /// Found inside a forwarded (`message/rfc822`) part.
    pub forwarded: bool,
}

impl Attachment {
    fn new(filename: Option<String>, claimed_type: String, bytes: Vec<u8>, forwarded: bool) -> Self {
        let detected_type = detect_type(&bytes);
        Attachment {
            filename,
            claimed_type,
            detected_type,
            sha256: sha256_hex(&bytes),
            bytes,
            forwarded,
        }
    }

    /// A PDF by content, by claimed type, or by name (`application/octet-stream` with a `.pdf`
    /// name is what many mail clients send). A part that only claims to be a PDF still counts,
    /// so that a broken form becomes a finding rather than vanishing.
    pub fn looks_like_pdf(&self) -> bool {
        self.detected_type.as_deref() == Some("application/pdf")
            || self.claimed_type.eq_ignore_ascii_case("application/pdf")
            || self.claimed_type.eq_ignore_ascii_case("application/x-pdf")
            || self
                .filename
                .as_deref()
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(".pdf"))
    }
}

/// What Countersign keeps from one email.
#[derive(Debug, Clone)]
pub struct ParsedEmail {
    pub message_id: Option<String>,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub subject: Option<String>,
    /// Unix milliseconds, from the Date header.
    pub date_ms: Option<i64>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub text_body: Option<String>,
    pub sender_auth: SenderAuth,
    /// Why the message is automatic (auto-reply, bounce, list mail), if it is.
    pub automatic: Option<String>,
    /// Why the message is a bounce or delivery report, if it is: it is recorded against the
    /// case of the message it returns, and never opens a case that asks for work.
    pub bounce: Option<String>,
    /// The Message-IDs of the messages a bounce returns (from its `message/rfc822` or
    /// `text/rfc822-headers` part), for finding their case.
    pub returned_message_ids: Vec<String>,
    pub attachments: Vec<Attachment>,
    /// Attachments past [`MAX_ATTACHMENTS`], not read.
    pub attachments_dropped: usize,
    /// Set when the bytes could not be read as an email at all.
    pub malformed: Option<String>,
    /// The domain of the single From address, lower case (none when malformed).
    pub from_domain: Option<String>,
    /// Exchange Online marked it as sent inside its own tenant
    /// (`X-MS-Exchange-Organization-AuthAs: Internal`, exactly once).
    pub exchange_internal: bool,
}

/// Settings for reading mail.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The authserv-id our own receiving server writes in `Authentication-Results`.
    pub authserv_id: String,
    /// Our own addresses: mail from them is never answered automatically.
    pub our_addresses: Vec<String>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Detects a content type from the bytes. PDF readers accept a header anywhere in the first
/// kilobyte, so we do too.
pub fn detect_type(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        return Some("application/pdf".into());
    }
    infer::get(bytes).map(|t| t.mime_type().to_string())
}

/// Parses raw RFC 5322 bytes. Never fails: an unreadable message comes back with `malformed`
/// set, so the caller can still open a case for it.
///
/// mail-parser panics on some hostile input (fuzzing found "Invalid part ID, could not find
/// multipart" in 0.11.9, the last version this compiler builds). A panic here must not take
/// the service down, so it is caught and the message is malformed, with the reason.
pub fn parse(raw: &[u8], settings: &MailSettings) -> ParsedEmail {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_unguarded(raw, settings))) {
        Ok(parsed) => parsed,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unexpected failure".into());
            unreadable(format!("the email reader failed on this message ({why})"))
        }
    }
}

/// A message that could not be read at all, with why.
fn unreadable(why: String) -> ParsedEmail {
    ParsedEmail {
        message_id: None,
        from_address: None,
        from_name: None,
        subject: None,
        date_ms: None,
        in_reply_to: vec![],
        references: vec![],
        text_body: None,
        sender_auth: SenderAuth::Missing {
            reason: "the message could not be read".into(),
        },
        automatic: None,
        bounce: None,
        returned_message_ids: vec![],
        attachments: vec![],
        attachments_dropped: 0,
        malformed: Some(why),
        from_domain: None,
        exchange_internal: false,
    }
}

fn parse_unguarded(raw: &[u8], settings: &MailSettings) -> ParsedEmail {
    // mail-parser reads almost anything; a message with none of the headers every email has
    // (From, Date, Message-ID, Subject, To) is not one.
    let looks_like_mail = |m: &mail_parser::Message<'_>| {
        m.from().is_some()
            || m.date().is_some()
            || m.message_id().is_some()
            || m.subject().is_some()
            || m.to().is_some()
    };
    let Some(message) = MessageParser::default().parse(raw).filter(looks_like_mail) else {
        return unreadable("the bytes are not an email message (no headers could be read)".into());
    };
    let from = message.from().and_then(|a| a.first());
    let from_address = from.and_then(|a| a.address()).map(crate::domain::storable_text);
    let from_name = from.and_then(|a| a.name()).map(crate::domain::reveal_hidden_characters);
    let mut attachments = Vec::new();
    let mut attachments_dropped = 0;
    collect_attachments(&message, false, 0, &mut attachments, &mut attachments_dropped);
    let from_domain = from_address
        .as_deref()
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase());
    let auth_headers: Vec<&str> = message
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Authentication-Results"))
        .map(|(_, v)| v)
        .collect();
    // Two From headers, or one naming two people, is ambiguous: mail software disagrees on
    // which one counts (a DMARC checker reads the first, a parser may keep the last), so the
    // message is malformed and never authenticated.
    let from_headers = message
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("From"))
        .count();
    let from_count = message.from().map(|a| a.iter().count()).unwrap_or(0);
    let malformed = if from_address.as_deref().is_some_and(|a| a.contains('\u{FFFD}')) {
        Some("its From address contains control characters, so it names no real mailbox".to_string())
    } else if from_headers > 1 {
        Some(format!(
            "it has {from_headers} From headers, so who sent it is ambiguous"
        ))
    } else if from_count > 1 {
        Some(format!(
            "its From header names {from_count} addresses, so who sent it is ambiguous"
        ))
    } else {
        None
    };
    let sender_auth = match &malformed {
        Some(why) => SenderAuth::Fail { reason: why.clone() },
        None => sender_auth(&auth_headers, from_domain.as_deref(), &settings.authserv_id),
    };
    let bounce = bounce_reason(&message, from_address.as_deref());
    let auth_as: Vec<&str> = message
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("X-MS-Exchange-Organization-AuthAs"))
        .map(|(_, v)| v.trim())
        .collect();
    let exchange_internal = malformed.is_none() && auth_as.len() == 1 && auth_as[0].eq_ignore_ascii_case("Internal");
    let from_domain = if malformed.is_none() { from_domain } else { None };
    ParsedEmail {
        message_id: message.message_id().and_then(crate::domain::clean_message_id),
        subject: message.subject().map(crate::domain::reveal_hidden_characters),
        date_ms: message.date().map(|d| d.to_timestamp() * 1000),
        in_reply_to: message
            .in_reply_to()
            .as_text_list()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| crate::domain::clean_message_id(s))
            .collect(),
        references: message
            .references()
            .as_text_list()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| crate::domain::clean_message_id(s))
            .collect(),
        text_body: message.body_text(0).map(|b| b.into_owned()),
        sender_auth,
        automatic: bounce
            .clone()
            .or_else(|| automatic_reason(&message, from_address.as_deref(), &settings.our_addresses)),
        returned_message_ids: if bounce.is_some() {
            returned_message_ids(&message)
        } else {
            vec![]
        },
        bounce,
        from_address,
        from_name,
        attachments,
        attachments_dropped,
        malformed,
        from_domain,
        exchange_internal,
    }
}

/// The attachments of `raw`, read from the message again, as [`parse`] found them when the
/// message arrived (attachments are stored once, inside their message): none if it cannot be
/// read.
pub fn attachments_of(raw: &[u8]) -> Vec<Attachment> {
    std::panic::catch_unwind(|| {
        let Some(message) = MessageParser::default().parse(raw) else {
            return Vec::new();
        };
        let (mut attachments, mut dropped) = (Vec::new(), 0);
        collect_attachments(&message, false, 0, &mut attachments, &mut dropped);
        attachments
    })
    .unwrap_or_default()
}

/// The bytes of the attachment of `raw` whose SHA-256 is `sha256` (see [`attachments_of`]);
/// `None` if no attachment of the message has that hash.
pub fn attachment_in_message(raw: &[u8], sha256: &str) -> Option<Vec<u8>> {
    attachments_of(raw)
        .into_iter()
        .find(|a| a.sha256 == sha256)
        .map(|a| a.bytes)
}

fn collect_attachments(
    message: &mail_parser::Message<'_>,
    forwarded: bool,
    depth: usize,
    out: &mut Vec<Attachment>,
    dropped: &mut usize,
) {
    for part in message.attachments() {
        if let Some(inner) = part.message() {
            if depth < MAX_FORWARD_DEPTH {
                collect_attachments(inner, true, depth + 1, out, dropped);
            }
            continue;
        }
        if out.len() >= MAX_ATTACHMENTS {
            *dropped += 1;
            continue;
        }
        let claimed_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
                None => ct.ctype().to_ascii_lowercase(),
            })
            .unwrap_or_else(|| "application/octet-stream".into());
        out.push(Attachment::new(
            part.attachment_name().map(crate::domain::storable_text),
            claimed_type,
            part.contents().to_vec(),
            forwarded,
        ));
    }
}

/// RFC 3834 and common practice: the signs that a message was sent by a machine, which we must
/// never answer automatically.
fn automatic_reason(message: &mail_parser::Message<'_>, from: Option<&str>, ours: &[String]) -> Option<String> {
    if let Some(from) = from
        && ours.iter().any(|o| o.eq_ignore_ascii_case(from))
    {
        return Some("our own mail".into());
    }
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    if let Some(auto) = header("Auto-Submitted")
        && !auto.starts_with("no")
    {
        return Some(format!("Auto-Submitted: {}", crate::domain::storable_text(&auto)));
    }
    if let Some(precedence) = header("Precedence")
        && ["bulk", "list", "junk", "auto_reply"].contains(&precedence.as_str())
    {
        return Some(format!("Precedence: {precedence}"));
    }
    if header("List-Id").is_some() {
        return Some("mailing-list mail (List-Id)".into());
    }
    if header("X-Autoreply").is_some() || header("X-Autorespond").is_some() {
        return Some("auto-reply header".into());
    }
    None
}

/// RFC 3464 and common practice: the signs of a bounce or delivery report.
fn bounce_reason(message: &mail_parser::Message<'_>, from: Option<&str>) -> Option<String> {
    if let Some(ct) = message.content_type()
        && ct.ctype().eq_ignore_ascii_case("multipart")
        && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        return Some("delivery report (multipart/report)".into());
    }
    if message.header_raw("Return-Path").is_some_and(|rp| rp.trim() == "<>") {
        return Some("null return path (a bounce)".into());
    }
    let local = from.and_then(|a| a.split('@').next()).map(str::to_ascii_lowercase);
    if local
        .as_deref()
        .is_some_and(|l| l == "mailer-daemon" || l == "postmaster")
    {
        return Some("sent by a mail system (MAILER-DAEMON or postmaster)".into());
    }
    None
}

/// The Message-IDs of the messages a bounce returns, whole (`message/rfc822`) or as headers
/// only (`text/rfc822-headers`).
fn returned_message_ids(message: &mail_parser::Message<'_>) -> Vec<String> {
    let mut ids = Vec::new();
    for part in message.parts.iter().take(64) {
        let id = match &part.body {
            mail_parser::PartType::Message(inner) => inner.message_id().map(str::to_string),
            mail_parser::PartType::Text(text)
                if part
                    .content_type()
                    .and_then(|ct| ct.subtype())
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers")) =>
            {
                MessageParser::default()
                    .parse(text.as_bytes())
                    .and_then(|m| m.message_id().map(str::to_string))
            }
            _ => None,
        };
        if let Some(id) = id.map(|i| i.trim().to_string()).filter(|i| !i.is_empty()) {
            ids.push(id);
        }
    }
    ids
}

/// A DKIM signing domain is aligned with the From domain when it is the same domain or a
/// parent of it (relaxed alignment, as DMARC uses by default).
pub fn aligned(signing_domain: &str, from_domain: &str) -> bool {
    let d = signing_domain.trim_end_matches('.');
    let from_domain = from_domain.trim_end_matches('.');
    !d.is_empty() && d.contains('.') && (from_domain == d || from_domain.ends_with(&format!(".{d}")))
}

/// Judges the sender by the topmost `Authentication-Results` header, and only when our own
/// server wrote it. Any header below it could have been written by the sender before the
/// message reached us, so none of them counts, even one carrying our authserv-id.
///
/// A pass needs DMARC to pass for exactly the From domain (`header.from` given, once, and
/// equal), or a DKIM signature whose `d=` is aligned with it. `header.i` is the signer's
/// claim about an identity, not the signing domain, and never aligns.
pub fn sender_auth(headers_top_down: &[&str], from_domain: Option<&str>, authserv_id: &str) -> SenderAuth {
    let Some(topmost) = headers_top_down.first() else {
        return SenderAuth::Missing {
            reason: format!("no Authentication-Results header from our mail server ({authserv_id})"),
        };
    };
    let Some(ours) = auth_results::parse(topmost) else {
        return SenderAuth::Missing {
            reason: "the topmost Authentication-Results header could not be read".into(),
        };
    };
    if !ours.authserv_id.eq_ignore_ascii_case(authserv_id) {
        return SenderAuth::Missing {
            reason: format!(
                "the topmost Authentication-Results header is from {}, not our mail server ({authserv_id})",
                ours.authserv_id
            ),
        };
    }
    let results = ours.results;
    let Some(from_domain) = from_domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase()) else {
        return SenderAuth::Fail {
            reason: "the email has no From address to check".into(),
        };
    };
    let dmarc_pass = results.iter().any(|r| {
        r.method == "dmarc"
            && r.result == "pass"
            && r.property_count("header.from") == 1
            && r.property("header.from")
                .is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(&from_domain))
    });
    if dmarc_pass {
        return SenderAuth::Pass { method: "dmarc".into() };
    }
    let dkim_aligned = results.iter().any(|r| {
        r.method == "dkim"
            && r.result == "pass"
            && r.property("header.d")
                .is_some_and(|d| aligned(&d.to_ascii_lowercase(), &from_domain))
    });
    if dkim_aligned {
        return SenderAuth::Pass { method: "dkim".into() };
    }
    let reason = match results.iter().find(|r| r.method == "dmarc") {
        Some(r) if r.result == "pass" => format!("DMARC passed, but not for the From domain {from_domain}"),
        Some(r) => format!("DMARC result for {from_domain} was {}", r.result),
        None => format!("no DMARC pass and no DKIM signature aligned with {from_domain}"),
    };
    SenderAuth::Fail { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "mx.countersign.test";

    fn verdict(headers: &[&str], from: &str) -> SenderAuth {
        sender_auth(headers, Some(from), OURS)
    }

    #[test]
    fn dmarc_pass_from_our_server_authenticates_the_sender() {
        let h = [
            "mx.countersign.test; spf=pass smtp.mailfrom=nhs.net; dkim=pass header.d=nhs.net; dmarc=pass (p=reject) header.from=nhs.net",
        ];
        assert_eq!(verdict(&h, "nhs.net"), SenderAuth::Pass { method: "dmarc".into() });
    }

    #[test]
    fn aligned_dkim_pass_authenticates_without_dmarc() {
        let h = ["mx.countersign.test; dkim=pass header.d=nhs.uk header.s=s1"];
        assert_eq!(
            verdict(&h, "practice.nhs.uk"),
            SenderAuth::Pass { method: "dkim".into() }
        );
    }

    #[test]
    fn unaligned_dkim_pass_does_not_authenticate() {
        let h = ["mx.countersign.test; dkim=pass header.d=example.com"];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }));
        let h = ["mx.countersign.test; dkim=pass header.d=net"];
        assert!(
            matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }),
            "a bare TLD is no alignment"
        );
    }

    #[test]
    fn dmarc_pass_for_another_domain_does_not_count() {
        let h = ["mx.countersign.test; dmarc=pass header.from=evil.example"];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }));
    }

    #[test]
    fn headers_from_other_servers_are_ignored() {
        let h = ["mx.elsewhere.example; dmarc=pass header.from=nhs.net"];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Missing { .. }));
    }

    #[test]
    fn only_the_topmost_of_our_headers_counts() {
        // The lower one could have been written by the sender before the message reached us.
        let h = [
            "mx.countersign.test; dmarc=fail header.from=nhs.net",
            "mx.countersign.test; dmarc=pass header.from=nhs.net",
        ];
        assert_eq!(
            verdict(&h, "nhs.net"),
            SenderAuth::Fail {
                reason: "DMARC result for nhs.net was fail".into()
            }
        );
    }

    #[test]
    fn a_forged_header_with_our_id_below_another_servers_does_not_count() {
        let h = [
            "mx.elsewhere.example; dmarc=none",
            "mx.countersign.test; dmarc=pass header.from=nhs.net",
        ];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Missing { .. }));
    }

    #[test]
    fn a_quoted_semicolon_cannot_smuggle_in_a_pass() {
        let h = [
            "mx.countersign.test; spf=fail smtp.mailfrom=\"x; dmarc=pass header.from=nhs.net y\"@evil.example; dkim=none; dmarc=fail header.from=nhs.net",
        ];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }));
    }

    #[test]
    fn dmarc_pass_without_header_from_does_not_count() {
        let h = ["mx.countersign.test; dmarc=pass"];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }));
        let h = ["mx.countersign.test; dmarc=pass header.from=nhs.net header.from=evil.example"];
        assert!(
            matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }),
            "two header.from"
        );
    }

    #[test]
    fn dkim_aligns_on_d_never_on_i() {
        let h = ["mx.countersign.test; dkim=pass header.d=evil.example header.i=@nhs.net"];
        assert!(matches!(verdict(&h, "nhs.net"), SenderAuth::Fail { .. }));
    }

    #[test]
    fn two_from_headers_or_two_addresses_are_malformed_and_never_authenticated() {
        let auth = "Authentication-Results: mx.countersign.test; dmarc=pass header.from=nhs.net\r\n";
        let two = format!("From: a@nhs.net\r\nFrom: b@evil.example\r\n{auth}Subject: x\r\n\r\nx");
        let parsed = parse(two.as_bytes(), &settings());
        assert!(parsed.malformed.is_some());
        assert!(!parsed.sender_auth.passed());
        let pair = format!("From: a@nhs.net, b@evil.example\r\n{auth}Subject: x\r\n\r\nx");
        let parsed = parse(pair.as_bytes(), &settings());
        assert!(parsed.malformed.is_some());
        assert!(!parsed.sender_auth.passed());
        let one = format!("From: a@nhs.net\r\n{auth}Subject: x\r\n\r\nx");
        assert!(parse(one.as_bytes(), &settings()).sender_auth.passed());
    }

    #[test]
    fn no_header_means_not_authenticated() {
        assert!(matches!(verdict(&[], "nhs.net"), SenderAuth::Missing { .. }));
    }

    #[test]
    fn comments_and_folding_are_understood() {
        let h = ["mx.countersign.test 1;\r\n\tdmarc=pass (policy=reject (strict)) header.from=nhs.net"];
        assert!(verdict(&h, "nhs.net").passed());
    }

    fn settings() -> MailSettings {
        MailSettings {
            authserv_id: OURS.into(),
            our_addresses: vec!["pcse@nhs.net".into()],
        }
    }

    #[test]
    fn a_message_that_makes_the_mail_parser_panic_is_malformed_not_a_crash() {
        // Found by the `email` fuzz target: mail-parser panics on it.
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mail/fuzz/mail_parser_invalid_part_id.eml"
        ))
        .unwrap();
        let parsed = parse(&raw, &settings());
        let why = parsed.malformed.expect("malformed");
        assert!(why.contains("email reader failed"), "{why}");
        assert!(!parsed.sender_auth.passed());
    }

    #[test]
    fn garbage_is_reported_as_malformed_not_dropped() {
        let parsed = parse(b"\x00\x01\x02 not mail", &settings());
        assert!(parsed.malformed.is_some());
        let parsed = parse(b"", &settings());
        assert!(parsed.malformed.is_some());
    }

    #[test]
    fn auto_replies_and_bounces_are_recognised() {
        let auto = parse(
            b"From: a@nhs.net\r\nAuto-Submitted: auto-replied\r\nSubject: OOO\r\n\r\nAway",
            &settings(),
        );
        assert!(auto.automatic.is_some());
        let human = parse(
            b"From: a@nhs.net\r\nAuto-Submitted: no\r\nSubject: hi\r\n\r\nhi",
            &settings(),
        );
        assert!(human.automatic.is_none());
        let bounce = parse(
            b"From: MAILER-DAEMON@mx.example.com\r\nSubject: fail\r\n\r\nx",
            &settings(),
        );
        assert!(bounce.automatic.is_some());
        let list = parse(b"From: a@nhs.net\r\nList-Id: <x.lists.example>\r\n\r\nx", &settings());
        assert!(list.automatic.is_some());
        let ours = parse(b"From: PCSE@NHS.NET\r\nSubject: x\r\n\r\nx", &settings());
        assert!(ours.automatic.is_some(), "our own mail, coming back");
        let precedence = parse(b"From: a@nhs.net\r\nPrecedence: bulk\r\n\r\nx", &settings());
        assert!(precedence.automatic.is_some());
        let report = parse(b"From: a@nhs.net\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n", &settings());
        assert!(report.automatic.is_some());
        let null_path = parse(b"Return-Path: <>\r\nFrom: a@nhs.net\r\n\r\nx", &settings());
        assert!(null_path.automatic.is_some());
    }

    #[test]
    fn pdf_is_detected_from_content_not_the_claimed_type() {
        let a = Attachment::new(
            Some("form.bin".into()),
            "application/octet-stream".into(),
            b"%PDF-1.7\n...".to_vec(),
            false,
        );
        assert_eq!(a.detected_type.as_deref(), Some("application/pdf"));
        assert!(a.looks_like_pdf());
        let b = Attachment::new(
            Some("photo.jpg".into()),
            "image/jpeg".into(),
            b"\xFF\xD8\xFF\xE0....".to_vec(),
            false,
        );
        assert!(!b.looks_like_pdf());
    }

    #[test]
    fn an_attachment_is_read_again_from_its_message_by_its_hash() {
        let raw = b"From: a@nhs.net\r\nSubject: form\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n\
--b\r\nContent-Type: application/pdf; name=one.pdf\r\nContent-Disposition: attachment; filename=one.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgb25l\r\n\
--b\r\nContent-Type: application/pdf; name=two.pdf\r\nContent-Disposition: attachment; filename=two.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgdHdv\r\n--b--\r\n";
        let parsed = parse(raw, &settings());
        assert_eq!(parsed.attachments.len(), 2);
        for attachment in &parsed.attachments {
            assert_eq!(
                attachment_in_message(raw, &attachment.sha256).as_deref(),
                Some(attachment.bytes.as_slice())
            );
        }
        assert_eq!(
            attachment_in_message(raw, &sha256_hex(b"%PDF-1.4 two")).as_deref(),
            Some(&b"%PDF-1.4 two"[..])
        );
        assert_eq!(attachment_in_message(raw, &sha256_hex(b"something else")), None);
        assert_eq!(attachment_in_message(b"\xff\xfe not mail", &sha256_hex(b"")), None);
    }
}
