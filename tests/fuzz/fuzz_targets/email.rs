//! Whole-email preparation, as intake does it before storing: MIME parsing, attachments and
//! forwarded messages, sender authentication, every PDF, the workflow rules. Any bytes must
//! give a prepared email, never a panic that escapes, or a hang.
#![no_main]

use std::sync::OnceLock;

use countersign::calendar::WorkingCalendar;
use countersign::dkim::{SenderCheckSettings, SenderChecker};
use countersign::domain::NhsDomains;
use countersign::engine::{Engine, EngineConfig};
use countersign::mail::MailSettings;
use countersign::pdf::ExtractLimits;
use countersign::policy::PolicySettings;
use countersign::storage::Db;
use countersign::workflow::WorkflowSet;
use libfuzzer_sys::fuzz_target;

struct Harness {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // libfuzzer-sys installs a panic hook that aborts on every panic, even one the code
        // under test catches on purpose (intake catches mail-parser's and the PDF reader's
        // panics and turns them into findings). Back to the default hook: a panic that escapes
        // preparation still aborts, through the fuzz_target! wrapper.
        let _ = std::panic::take_hook();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Preparation reads the organisation registry and the signatory register (empty here):
        // an in-memory SQLite.
        let db = runtime.block_on(Db::connect("sqlite::memory:")).unwrap();
        let workflows = WorkflowSet::load(&root.join("workflows"), &root.join("templates")).unwrap();
        let engine = Engine::new(
            db,
            workflows,
            WorkingCalendar::shipped(),
            EngineConfig {
                policy: PolicySettings { nhs_domains: NhsDomains::default(), ..PolicySettings::default() },
                mail: MailSettings {
                    authserv_id: "mx.countersign.test".into(),
                    our_addresses: vec!["pcse.openexeter@nhs.net".into()],
                },
                limits: ExtractLimits::default(),
                pdf_reader: Default::default(),
                // Our own DKIM check runs on every input (mail-auth parses the attacker's
                // signatures); a key lookup meets a loopback port where nothing answers, fast.
                sender_checker: SenderChecker::new(SenderCheckSettings {
                    dns_servers: vec!["127.0.0.1:9".into()],
                    dns_timeout_ms: 50,
                    ..SenderCheckSettings::default()
                })
                .unwrap(),
                credential_keys: std::sync::Arc::new(countersign::credentials::CredentialKeys::ephemeral()),
            },
        );
        Harness { runtime, engine }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let _ = h.runtime.block_on(h.engine.prepare(data));
    // Attachments are stored once, inside their message, and read back from it by hash: every
    // attachment the intake found must be found again, byte for byte.
    let parsed = countersign::mail::parse(data, &h.engine.config().mail);
    for attachment in &parsed.attachments {
        assert_eq!(
            countersign::mail::attachment_in_message(data, &attachment.sha256).as_deref(),
            Some(attachment.bytes.as_slice()),
            "an attachment the intake found is not found again in its message"
        );
    }
});
