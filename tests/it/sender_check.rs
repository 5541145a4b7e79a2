//! Our own check of who sent an email, on both backends: DKIM signatures made here with a key
//! made here, verified against a DNS cache filled here (no test asks the internet). A good
//! aligned signature authenticates a form whose receiving server wrote no
//! Authentication-Results; a changed body, another domain's signature, a signature over part
//! of the body, and a missing key do not; a DNS failure is temporary, never a pass, and the
//! sender is checked again; the Exchange Online marker counts only when configured.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use countersign::app::{App, BuildOptions};
use countersign::dkim::SenderVerdict;
use countersign::domain::EventKind;
use countersign::pdf::PdfReader;
use countersign::storage;
use mail_auth::common::crypto::{Ed25519Key, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use crate::common::{TestApp, TestClock, TestDatabase, fixture, friday_morning, on_both_backends, test_settings};

/// A signing key (made here) and the DKIM record that publishes it.
struct Key {
    pkcs8: Vec<u8>,
    record: String,
}

impl Key {
    fn new() -> Key {
        let pkcs8 = Ed25519Key::generate_pkcs8().expect("a key");
        let public =
            base64::engine::general_purpose::STANDARD.encode(Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key());
        Key {
            pkcs8,
            record: format!("v=DKIM1; k=ed25519; p={public}"),
        }
    }

    /// The key, to sign with (a signer takes it).
    fn signer(&self) -> Ed25519Key {
        Ed25519Key::from_pkcs8_der(&self.pkcs8).expect("the key reads back")
    }
}

/// The fixture form as a receiving server that writes no Authentication-Results would hand
/// it over.
fn form_without_auth_results() -> Vec<u8> {
    let raw = String::from_utf8(fixture("mail/gp_form.eml")).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if !skipping {
                kept.push(line);
            }
            continue;
        }
        skipping = line.to_ascii_lowercase().starts_with("authentication-results:");
        if !skipping {
            kept.push(line);
        }
    }
    format!("{}\r\n\r\n{body}", kept.join("\r\n")).into_bytes()
}

/// `raw` with a DKIM-Signature by `domain`/`selector` on top.
fn signed<T: SigningKey<Hasher = mail_auth::common::crypto::Sha256>>(
    raw: &[u8],
    key: T,
    domain: &str,
    selector: &str,
    body_length: bool,
) -> Vec<u8> {
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .body_length(body_length)
        .sign(raw)
        .expect("signed");
    let mut out = signature.to_header().into_bytes();
    out.extend_from_slice(raw);
    out
}

/// The stored verdict on the email that opened case `reference`.
async fn verdict_of(app: &TestApp, reference: &str) -> SenderVerdict {
    verdict_of_message(app, app.case(reference).await.origin_message_id).await
}

/// The stored verdict on one email (a copy of a form already received joins the first one's
/// case, so a test that sends variants of one form reads each email's own verdict).
async fn verdict_of_message(app: &TestApp, raw_message_id: i64) -> SenderVerdict {
    let mut conn = app.db().pool.acquire().await.unwrap();
    let message = storage::origin_of(&mut conn, raw_message_id).await.unwrap();
    SenderVerdict::from_stored(&message.sender_auth_json)
}

fn finding_codes(case: &storage::CaseRecord) -> Vec<String> {
    case.findings.iter().map(|f| f.code.as_str().to_string()).collect()
}

#[tokio::test]
async fn an_aligned_dkim_signature_authenticates_a_form_with_no_authentication_results() {
    on_both_backends(|app| async move {
        let key = Key::new();
        app.config()
            .sender_checker
            .cache()
            .add_dkim_key("s2026", "nhs.net", &key.record, Duration::from_secs(3600))
            .unwrap();
        // Signed by nhs.net; no Authentication-Results from our server.
        let raw = signed(&form_without_auth_results(), key.signer(), "nhs.net", "s2026", false);
        let report = app.receive(&raw).await;
        let reference = &report.cases[0].reference;
        let case = app.case(reference).await;
        assert!(
            !finding_codes(&case).contains(&"sender_not_authenticated".to_string()),
            "{:?}",
            case.findings
        );
        let verdict = verdict_of(&app, reference).await;
        assert!(verdict.auth.passed(), "{verdict:?}");
        assert_eq!(verdict.decided_by, "dkim");
        let signature = &verdict.own_check.signatures[0];
        assert_eq!(
            (signature.domain.as_str(), signature.selector.as_str()),
            ("nhs.net", "s2026")
        );
        assert_eq!(signature.result, "pass");
        assert!(signature.aligned);
    })
    .await;
}

#[tokio::test]
async fn a_changed_body_another_domain_a_partial_body_and_an_unknown_key_do_not_authenticate() {
    on_both_backends(|app| async move {
        let cache = app.config().sender_checker.cache();
        let nhs = Key::new();
        cache
            .add_dkim_key("s2026", "nhs.net", &nhs.record, Duration::from_secs(3600))
            .unwrap();
        let evil = Key::new();
        cache
            .add_dkim_key("s1", "evil.example", &evil.record, Duration::from_secs(3600))
            .unwrap();
        let variant = |id: &str| {
            String::from_utf8(form_without_auth_results())
                .unwrap()
                .replace("<gp-1@practice.nhs.net>", &format!("<{id}@practice.nhs.net>"))
                .into_bytes()
        };

        // Unsigned, with no header from our server: not authenticated, and nothing decided it.
        let plain = app.receive(&variant("plain")).await;
        let verdict = verdict_of_message(&app, plain.raw_message_id).await;
        assert_eq!((verdict.auth.passed(), verdict.decided_by.as_str()), (false, "none"));
        assert!(verdict.own_check.signatures.is_empty());
        assert!(
            finding_codes(&app.case(&plain.cases[0].reference).await).contains(&"sender_not_authenticated".to_string())
        );

        // The body changed after signing (a PDF swapped in transit): its hash no longer
        // matches, which DKIM calls neutral, never a pass.
        let mut tampered = signed(&variant("tampered"), nhs.signer(), "nhs.net", "s2026", false);
        let at = tampered.windows(9).position(|w| w == b"Please fi").unwrap();
        tampered[at] = b'p';
        let (result, aligned, passed) = check(&app, &tampered).await;
        assert_eq!((result.as_str(), aligned, passed), ("neutral", true, false));

        // A valid signature, but by a domain that is not the sender's.
        let other = signed(&variant("other-domain"), evil.signer(), "evil.example", "s1", false);
        let (result, aligned, passed) = check(&app, &other).await;
        assert_eq!((result.as_str(), aligned, passed), ("pass", false, false));

        // A signature over part of the body only (`l=`): the rest could have been added.
        // mail-auth refuses to read such a signature at all (and our own rule would not count
        // it either: `dkim::tests`).
        let partial = signed(&variant("partial"), nhs.signer(), "nhs.net", "s2026", true);
        let (result, _, passed) = check(&app, &partial).await;
        assert_eq!((result.as_str(), passed), ("neutral", false));

        // Signed with a key that is not the one published for the selector.
        let forged = signed(&variant("forged"), Key::new().signer(), "nhs.net", "s2026", false);
        let (result, aligned, passed) = check(&app, &forged).await;
        assert_eq!((result.as_str(), aligned, passed), ("fail", true, false));
    })
    .await;
}

#[tokio::test]
async fn a_dns_failure_is_temporary_never_a_pass_and_the_sender_is_checked_again() {
    for backend in [storage::Backend::Sqlite, storage::Backend::Postgres] {
        let database = TestDatabase::create(backend).await;
        let clock = TestClock::at(friday_morning());
        let app = TestApp::new(crate::common::engine_with_clock(&database.url, clock.clone()).await);
        let key = Key::new();
        // The key is not in the cache, and DNS does not answer.
        let raw = signed(&form_without_auth_results(), key.signer(), "nhs.net", "late", false);
        let report = app.receive(&raw).await;
        let reference = report.cases[0].reference.clone();
        let verdict = verdict_of(&app, &reference).await;
        assert!(
            matches!(verdict.auth, countersign::mail::SenderAuth::Temporary { .. }),
            "{verdict:?}"
        );
        assert!(!verdict.auth.passed());
        assert_eq!(verdict.own_check.signatures[0].result, "temperror");
        let case = app.case(&reference).await;
        assert_eq!(case.state, "needs_review");
        assert!(finding_codes(&case).contains(&"sender_not_authenticated".to_string()));

        // Not due yet; then due, but DNS still fails: still temporary, nothing decided.
        assert_eq!(app.recheck_senders().await.unwrap(), 0);
        clock.advance(chrono::Duration::minutes(11));
        assert_eq!(app.recheck_senders().await.unwrap(), 0);
        assert!(matches!(
            verdict_of(&app, &reference).await.auth,
            countersign::mail::SenderAuth::Temporary { .. }
        ));

        // DNS answers now (the key reaches the cache): the next check passes, the case logs it,
        // and its rules run again, so the finding goes.
        app.config()
            .sender_checker
            .cache()
            .add_dkim_key("late", "nhs.net", &key.record, Duration::from_secs(3600))
            .unwrap();
        clock.advance(chrono::Duration::minutes(11));
        assert_eq!(app.recheck_senders().await.unwrap(), 1);
        let verdict = verdict_of(&app, &reference).await;
        assert!(verdict.auth.passed(), "{verdict:?}");
        assert_eq!(verdict.decided_by, "dkim");
        let case = app.case(&reference).await;
        assert!(
            !finding_codes(&case).contains(&"sender_not_authenticated".to_string()),
            "{:?}",
            case.findings
        );
        assert!(app.event_kinds(&reference).await.contains(&EventKind::SenderRechecked));
        // Decided: never checked again.
        clock.advance(chrono::Duration::hours(1));
        assert_eq!(app.recheck_senders().await.unwrap(), 0);
        // The log stays intact through it all.
        assert!(countersign::audit::verify(app.db()).await.unwrap().intact());

        app.db().close().await;
        database.drop_database().await;
    }
}

#[tokio::test]
async fn the_exchange_internal_marker_counts_only_when_the_mailbox_is_in_the_tenant() {
    let internal = String::from_utf8(form_without_auth_results())
        .unwrap()
        .replacen(
            "MIME-Version: 1.0",
            "X-MS-Exchange-Organization-AuthAs: Internal\r\nMIME-Version: 1.0",
            1,
        )
        .into_bytes();
    for trusted in [false, true] {
        let database = TestDatabase::create(storage::Backend::Sqlite).await;
        let mut settings = test_settings(&database.url);
        settings.sender_check.trust_exchange_internal = trusted;
        let options = BuildOptions {
            clock: Some(Arc::new(countersign::engine::FixedClock(friday_morning()))),
            pdf_reader: Some(PdfReader::InProcess),
        };
        let app = TestApp::new(App::build_with(&settings, options).await.unwrap().into_engine());
        let report = app.receive(&internal).await;
        let verdict = verdict_of(&app, &report.cases[0].reference).await;
        assert_eq!(verdict.auth.passed(), trusted, "{verdict:?}");
        if trusted {
            assert_eq!(verdict.decided_by, "exchange_internal");
        }
        // Two markers (one added by the sender) are never trusted.
        let twice = String::from_utf8(internal.clone())
            .unwrap()
            .replacen(
                "X-MS-Exchange-Organization-AuthAs: Internal",
                "X-MS-Exchange-Organization-AuthAs: Internal\r\nX-MS-Exchange-Organization-AuthAs: Internal",
                1,
            )
            .replace("<gp-1@practice.nhs.net>", "<gp-twice@practice.nhs.net>");
        let report = app.receive(twice.as_bytes()).await;
        assert!(!verdict_of_message(&app, report.raw_message_id).await.auth.passed());
        app.db().close().await;
        database.drop_database().await;
    }
}

/// Receives `raw`; returns its first signature's result and alignment, and whether the
/// sender counts as authenticated.
async fn check(app: &TestApp, raw: &[u8]) -> (String, bool, bool) {
    let report = app.receive(raw).await;
    let verdict = verdict_of_message(app, report.raw_message_id).await;
    let signature = verdict
        .own_check
        .signatures
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no signature checked: {verdict:?} {report:?}"));
    (signature.result, signature.aligned, verdict.auth.passed())
}

/// A mailing list (`lists.example`) that checked the practice's DKIM signature, then added a
/// footer (which breaks that signature) and sealed the message with ARC, recording the pass.
fn forwarded_by_a_list(nhs: &Key, list: &Key) -> Vec<u8> {
    use mail_auth::arc::ArcSealer;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput};
    let original = form_without_auth_results();
    let signature = DkimSigner::from_key(nhs.signer())
        .domain("nhs.net")
        .selector("s2026")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(&original)
        .unwrap();
    let mut forwarded = signature.to_header().into_bytes();
    forwarded.extend_from_slice(&original);
    forwarded.extend_from_slice(b"\r\nSent through the practice managers' list\r\n");
    let message = AuthenticatedMessage::parse(&forwarded).unwrap();
    let results = AuthenticationResults::new("lists.example")
        .with_dkim_result(&DkimOutput::pass().with_signature(&signature), "nhs.net");
    let seal = ArcSealer::from_key(list.signer())
        .domain("lists.example")
        .selector("arc")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&message, &results, &ArcOutput::default())
        .unwrap();
    let mut sealed = seal.to_header().into_bytes();
    sealed.extend_from_slice(&forwarded);
    sealed
}

#[tokio::test]
async fn an_arc_seal_counts_only_from_a_trusted_forwarder() {
    let (nhs, list) = (Key::new(), Key::new());
    let sealed = forwarded_by_a_list(&nhs, &list);
    for backend in [storage::Backend::Sqlite, storage::Backend::Postgres] {
        for trusted in [
            vec![],
            vec!["other.example".to_string()],
            vec!["lists.example".to_string()],
        ] {
            let database = TestDatabase::create(backend).await;
            let mut settings = test_settings(&database.url);
            settings.sender_check.trusted_arc_sealers = trusted.clone();
            let options = BuildOptions {
                clock: Some(Arc::new(countersign::engine::FixedClock(friday_morning()))),
                pdf_reader: Some(PdfReader::InProcess),
            };
            let app = TestApp::new(App::build_with(&settings, options).await.unwrap().into_engine());
            let cache = app.config().sender_checker.cache();
            cache
                .add_dkim_key("s2026", "nhs.net", &nhs.record, Duration::from_secs(3600))
                .unwrap();
            cache
                .add_dkim_key("arc", "lists.example", &list.record, Duration::from_secs(3600))
                .unwrap();
            let report = app.receive(&sealed).await;
            let verdict = verdict_of_message(&app, report.raw_message_id).await;
            // The footer broke the practice's own signature.
            let own = &verdict.own_check.signatures[0];
            assert_eq!(
                (own.domain.as_str(), own.result.as_str()),
                ("nhs.net", "neutral"),
                "{verdict:?}"
            );
            match trusted.first().map(String::as_str) {
                Some("lists.example") => {
                    assert!(verdict.auth.passed(), "{verdict:?}");
                    assert_eq!(verdict.decided_by, "arc");
                    assert_eq!(verdict.own_check.arc_vouched_by.as_deref(), Some("lists.example"));
                }
                Some(_) => {
                    assert!(!verdict.auth.passed(), "{verdict:?}");
                    assert!(
                        verdict
                            .own_check
                            .arc_detail
                            .as_deref()
                            .is_some_and(|d| d.contains("not a trusted forwarder")),
                        "{verdict:?}"
                    );
                }
                None => assert!(
                    !verdict.auth.passed(),
                    "no forwarder is trusted by default: {verdict:?}"
                ),
            }
            app.db().close().await;
            database.drop_database().await;
        }
    }
}
