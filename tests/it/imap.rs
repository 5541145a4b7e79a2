//! The IMAP source against a real Dovecot (Debian's `dovecot-imapd`), started by each test on a
//! free loopback port, with mail delivered by IMAP APPEND as a mail server would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::dovecot::{Dovecot, DovecotOptions};
use crate::common::{TestDatabase, engine_on, fixture, on_both_backends, stored};
use countersign::config::TransportSecurity;
use countersign::ingest::imap::{AfterCommitHook, ImapError, ImapPoller, retry_quarantined};
use countersign::storage::{self, Backend};

fn samples(n: usize) -> Vec<Vec<u8>> {
    let workflows = crate::common::workflows();
    countersign::samples::sample_emails(
        &workflows,
        n,
        crate::common::friday_morning().date_naive(),
        crate::common::AUTHSERV_ID,
    )
    .unwrap()
}

/// A message with no headers any email has: mail-parser reads it, but it is not mail.
const NOT_AN_EMAIL: &[u8] = b"this is not an email\r\nbut some text someone piped to sendmail\r\n";

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn messages_are_ingested_once_and_moved() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        let names = [
            "gp_form.eml",
            "no_form.eml",
            "forwarded.eml",
            "two_forms.eml",
            "octet_stream_rfc2231.eml",
        ];
        dovecot
            .deliver("INBOX", &names.map(|n| fixture(&format!("mail/{n}"))))
            .await;
        let poller = ImapPoller::new(crate::common::live(&engine), dovecot.settings());
        let summary = poller.drain_once().await.unwrap();
        assert!(summary.lease_held);
        assert_eq!((summary.backlog, summary.ingested, summary.quarantined), (5, 5, 0));
        assert_eq!(dovecot.count("INBOX").await, 0);
        assert_eq!(dovecot.count("Processed").await, 5);
        // two_forms.eml has two forms, but its GP form is the very PDF gp_form.eml brought, so
        // it is linked to that case rather than opened again.
        assert_eq!(stored(&engine).await.cases, 5);
        assert_eq!(stored(&engine).await.duplicate_links, 1);
        assert_eq!(stored(&engine).await.raw_messages, 5);

        // Nothing new: nothing done.
        let again = poller.drain_once().await.unwrap();
        assert_eq!((again.backlog, again.ingested), (0, 0));
        let health = poller.health().snapshot();
        assert!(
            health.last_success_at.is_some() && health.last_error.is_none(),
            "{health:?}"
        );
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let stored = storage::mailbox_health(&mut conn).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].backlog, Some(0));
        assert_eq!(stored[0].last_uid, Some(5));
        assert!(stored[0].uidvalidity.is_some());
        // The raw message keeps where it came from.
        let source: String = sqlx::query_scalar("SELECT source FROM raw_messages ORDER BY id LIMIT 1")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert!(
            source.starts_with("imap://test@127.0.0.1:") && source.ends_with(";UID=1"),
            "{source}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_malformed_message_goes_to_quarantine_with_its_reason_and_is_retried_on_request() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        dovecot
            .deliver("INBOX", &[NOT_AN_EMAIL.to_vec(), fixture("mail/gp_form.eml")])
            .await;
        let poller = ImapPoller::new(crate::common::live(&engine), dovecot.settings());
        let summary = poller.drain_once().await.unwrap();
        assert_eq!((summary.ingested, summary.quarantined), (2, 1));
        assert_eq!(dovecot.count("Quarantine").await, 1);
        assert_eq!(dovecot.count("Processed").await, 1);
        // Still visible: as a case with its finding, and as an ingest error with its reason.
        let codes: Vec<String> = sqlx::query_scalar("SELECT findings FROM cases ORDER BY id")
            .fetch_all(&engine.db().pool)
            .await
            .unwrap();
        assert!(codes[0].contains("message_malformed"), "{codes:?}");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let errors = storage::open_ingest_errors(&mut conn).await.unwrap();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].quarantined && errors[0].reason.contains("CS-2026-000001"),
            "{errors:?}"
        );
        drop(conn);

        let moved = retry_quarantined(&engine, &dovecot.settings()).await.unwrap();
        assert_eq!(moved, 1);
        assert_eq!(dovecot.count("INBOX").await, 1);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        assert!(storage::open_ingest_errors(&mut conn).await.unwrap().is_empty());
        drop(conn);
        // Retried: already ingested, so no new case; still not mail, so back to quarantine.
        let summary = poller.drain_once().await.unwrap();
        assert_eq!((summary.already_ingested, summary.quarantined), (1, 1));
        assert_eq!(stored(&engine).await.cases, 2);
    })
    .await;
}

#[tokio::test]
async fn a_poller_killed_between_commit_and_move_restarts_without_a_duplicate() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        dovecot.deliver("INBOX", &samples(3)).await;
        let committed = Arc::new(tokio::sync::Notify::new());
        let signal = committed.clone();
        let hook: AfterCommitHook = Arc::new(move |_uid| {
            let signal = signal.clone();
            Box::pin(async move {
                signal.notify_one();
                // Hang here, after the commit and before the move, until killed.
                std::future::pending::<()>().await;
            })
        });
        let doomed = ImapPoller::new(crate::common::live(&engine), dovecot.settings()).with_after_commit_hook(hook);
        let task = tokio::spawn(async move { doomed.drain_once().await });
        committed.notified().await;
        task.abort();
        let _ = task.await;
        // Messages commit in groups: the first group (here, all three) is stored...
        let committed = stored(&engine).await.raw_messages;
        assert!((1..=3).contains(&committed), "the first group committed: {committed}");
        assert_eq!(dovecot.count("INBOX").await, 3, "...but was not moved");

        // The killed instance's lease must lapse before another may take the mailbox.
        sqlx::query("UPDATE mailbox_state SET lease_until = 0")
            .execute(&engine.db().pool)
            .await
            .unwrap();
        let summary = ImapPoller::new(crate::common::live(&engine), dovecot.settings())
            .drain_once()
            .await
            .unwrap();
        let committed = usize::try_from(committed).unwrap();
        assert_eq!((summary.already_ingested, summary.ingested), (committed, 3 - committed));
        assert_eq!(stored(&engine).await.raw_messages, 3);
        assert_eq!(stored(&engine).await.cases, 3, "no duplicate case");
        assert_eq!(dovecot.count("INBOX").await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_new_uidvalidity_means_a_rescan_not_a_reimport() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        dovecot.deliver("INBOX", &samples(4)).await;
        let poller = ImapPoller::new(crate::common::live(&engine), dovecot.settings());
        assert_eq!(poller.drain_once().await.unwrap().ingested, 4);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let before = storage::mailbox_health(&mut conn).await.unwrap()[0].clone();
        drop(conn);

        // A restore from backup: the mail is back in the INBOX, which has a new UIDVALIDITY and
        // renumbered UIDs, below the last UID we took.
        dovecot.move_all("Processed", "INBOX").await;
        dovecot.reset_uidvalidity();
        dovecot.deliver("INBOX", &[fixture("mail/no_form.eml")]).await;

        let summary = poller.drain_once().await.unwrap();
        assert_eq!((summary.already_ingested, summary.ingested), (4, 1), "{summary:?}");
        assert_eq!(stored(&engine).await.cases, 5);
        assert_eq!(dovecot.count("INBOX").await, 0);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let after = storage::mailbox_health(&mut conn).await.unwrap()[0].clone();
        assert_ne!(after.uidvalidity, before.uidvalidity);
    })
    .await;
}

#[tokio::test]
async fn a_20_mb_message_is_ingested() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        let pdf = fixture("pdf/pdftk_gp.pdf");
        let scan: Vec<u8> = (0..14 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let email = mail_builder::MessageBuilder::new()
            .from(("Practice", "wyn.apgruffydd@nhs.net"))
            .to("pcse.openexeter@nhs.net")
            .subject("Form and a large scan")
            .message_id("big-1@practice.nhs.net")
            .text_body("Form attached, with the original scan.")
            .attachment("application/pdf", "form.pdf", pdf)
            .attachment("image/tiff", "scan.tif", scan)
            .write_to_vec()
            .unwrap();
        assert!(email.len() > 19 * 1024 * 1024, "{} bytes", email.len());
        dovecot.deliver("INBOX", std::slice::from_ref(&email)).await;
        let summary = ImapPoller::new(crate::common::live(&engine), dovecot.settings())
            .drain_once()
            .await
            .unwrap();
        assert_eq!(summary.ingested, 1);
        let raw: Vec<u8> = sqlx::query_scalar("SELECT raw FROM raw_messages")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(raw.len(), email.len(), "stored whole");
        let workflow: Option<String> = sqlx::query_scalar("SELECT workflow FROM cases")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(workflow.as_deref(), Some("primary_user_gp"));
        assert_eq!(dovecot.count("Processed").await, 1);
    })
    .await;
}

/// Messages are fetched a group at a time (their sizes first, then the bodies of those within
/// the limit, in one command each): a message over the limit in the middle of a backlog larger
/// than a group is set aside by its size, and every other message is taken in order.
#[tokio::test]
async fn a_message_over_the_size_limit_is_set_aside_and_the_groups_around_it_are_taken() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        let mut mail = samples(countersign::ingest::GROUP_MESSAGES + 8);
        let padding = "x".repeat(300_000);
        let big = format!(
            "From: someone@example.com\r\nTo: pcse.openexeter@nhs.net\r\nSubject: big\r\nMessage-ID: <big@example.com>\r\n\r\n{padding}\r\n"
        );
        mail.insert(5, big.into_bytes());
        dovecot.deliver("INBOX", &mail).await;
        let mut settings = dovecot.settings();
        settings.max_message_bytes = 200_000;
        let summary = ImapPoller::new(crate::common::live(&engine), settings)
            .drain_once()
            .await
            .unwrap();
        assert_eq!((summary.ingested, summary.quarantined), (mail.len() - 1, 1));
        assert_eq!(dovecot.count("Quarantine").await, 1);
        assert_eq!(dovecot.count("Processed").await as usize, mail.len() - 1);
        assert_eq!(dovecot.count("INBOX").await, 0);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let errors = storage::open_ingest_errors(&mut conn).await.unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].reason.contains("over the limit of 200000"), "{errors:?}");
        assert_eq!(stored(&engine).await.raw_messages, (mail.len() - 1) as i64);
    })
    .await;
}

#[tokio::test]
async fn the_server_restarting_in_the_middle_of_a_poll_loses_and_doubles_nothing() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        let total = 150;
        dovecot.deliver("INBOX", &samples(total)).await;
        let poller = Arc::new(ImapPoller::new(crate::common::live(&engine), dovecot.settings()));
        let (stop_tx, stop_rx) = countersign::ingest::shutdown_channel();
        let running = poller.clone();
        let task = tokio::spawn(async move { running.run_until_stopped(stop_rx).await });

        wait_until("some mail is taken", Duration::from_secs(60), async || {
            stored(&engine).await.raw_messages >= 10
        })
        .await;
        dovecot.restart();
        let taken_at_restart = stored(&engine).await.raw_messages;
        wait_until("all mail is taken", Duration::from_secs(120), async || {
            stored(&engine).await.raw_messages == total as i64
        })
        .await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops when asked")
            .unwrap();

        assert!(
            taken_at_restart < total as i64,
            "the restart came mid-poll ({taken_at_restart} of {total} taken)"
        );
        assert_eq!(stored(&engine).await.cases, total as i64);
        assert_eq!(dovecot.count("INBOX").await, 0);
        assert_eq!(dovecot.count("Processed").await, total as u32);
        assert_eq!(poller.health().snapshot().state, "stopped");
    })
    .await;
}

#[tokio::test]
async fn new_mail_is_noticed_while_idle() {
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        let mut settings = dovecot.settings();
        settings.poll_interval = Duration::from_secs(30); // only IDLE can notice within the test
        let poller = Arc::new(ImapPoller::new(crate::common::live(&engine), settings));
        let (stop_tx, stop_rx) = countersign::ingest::shutdown_channel();
        let running = poller.clone();
        let task = tokio::spawn(async move { running.run_until_stopped(stop_rx).await });
        wait_until("the poller is idle", Duration::from_secs(30), async || {
            poller.health().snapshot().state == "idle"
        })
        .await;
        dovecot.deliver("INBOX", &[fixture("mail/gp_form.eml")]).await;
        wait_until("the mail is taken", Duration::from_secs(30), async || {
            stored(&engine).await.cases == 1
        })
        .await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops out of IDLE")
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn two_pollers_on_one_postgres_database_never_both_take_a_message() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let dovecot = Dovecot::start();
    let total = 60;
    dovecot.deliver("INBOX", &samples(total)).await;
    // Two instances: each built as `serve` builds it, with its own connection pool.
    let (one, two) = (engine_on(&database.url).await, engine_on(&database.url).await);
    let first = ImapPoller::new(crate::common::live(&one), dovecot.settings());
    let second = ImapPoller::new(crate::common::live(&two), dovecot.settings());
    let (a, b) = tokio::join!(first.drain_once(), second.drain_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.lease_held ^ b.lease_held, "exactly one holds the lease: {a:?} {b:?}");
    let mut all: Vec<u32> = a.uids.iter().chain(&b.uids).copied().collect();
    let before = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), before, "no UID taken twice");
    assert_eq!(all.len(), total);
    assert_eq!(stored(&one).await.cases, total as i64);
    one.db().close().await;
    two.db().close().await;
    database.drop_database().await;
}

#[tokio::test]
async fn mail_is_taken_over_implicit_tls_and_starttls_with_the_certificate_checked() {
    let dovecot = Dovecot::start_with(DovecotOptions {
        tls: true,
        capability: None,
    });
    dovecot
        .deliver("INBOX", &[fixture("mail/gp_form.eml"), fixture("mail/no_form.eml")])
        .await;
    let database = TestDatabase::create(Backend::Sqlite).await;
    let engine = engine_on(&database.url).await;

    let mut tls = dovecot.settings();
    tls.security = TransportSecurity::Tls;
    tls.port = dovecot.tls_port.unwrap();
    // Without our CA the server's certificate must be refused.
    let refused = ImapPoller::new(crate::common::live(&engine), tls.clone())
        .drain_once()
        .await
        .unwrap_err();
    assert!(matches!(refused, ImapError::Tls { .. }), "{refused}");
    tls.ca_file = Some(dovecot.ca_file());
    let summary = ImapPoller::new(crate::common::live(&engine), tls)
        .drain_once()
        .await
        .unwrap();
    assert_eq!(summary.ingested, 2);

    dovecot.deliver("INBOX", &[fixture("mail/forwarded.eml")]).await;
    let mut starttls = dovecot.settings();
    starttls.security = TransportSecurity::Starttls;
    starttls.ca_file = Some(dovecot.ca_file());
    let summary = ImapPoller::new(crate::common::live(&engine), starttls)
        .drain_once()
        .await
        .unwrap();
    assert_eq!(summary.ingested, 1);
    assert_eq!(dovecot.count("Processed").await, 3);
}

#[tokio::test]
async fn a_server_without_move_gets_copy_delete_and_expunge() {
    for capability in ["IMAP4rev1 IDLE UIDPLUS", "IMAP4rev1 IDLE"] {
        let dovecot = Dovecot::start_with(DovecotOptions {
            tls: false,
            capability: Some(capability.into()),
        });
        let mut session = dovecot.session().await;
        let caps = session.capabilities().await.unwrap();
        assert!(!caps.has_str("MOVE"), "the server must not offer MOVE for this test");
        assert_eq!(caps.has_str("UIDPLUS"), capability.contains("UIDPLUS"));
        session.logout().await.ok();
        dovecot.deliver("INBOX", &samples(3)).await;
        let database = TestDatabase::create(Backend::Sqlite).await;
        let engine = engine_on(&database.url).await;
        let summary = ImapPoller::new(crate::common::live(&engine), dovecot.settings())
            .drain_once()
            .await
            .unwrap();
        assert_eq!(summary.ingested, 3, "{capability}");
        assert_eq!(dovecot.count("INBOX").await, 0, "{capability}");
        assert_eq!(dovecot.count("Processed").await, 3, "{capability}");
    }
}

#[test]
fn plain_text_to_a_remote_server_is_refused_before_connecting() {
    let dovecot_settings = {
        let mut s = Dovecot::start().settings();
        s.host = "imap.example.invalid".into();
        s
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let err = runtime
        .block_on(countersign::ingest::imap::connect(&dovecot_settings))
        .unwrap_err();
    assert!(matches!(err, ImapError::PlainNotLoopback { .. }), "{err}");
}

#[tokio::test]
async fn a_message_that_fails_to_store_holds_up_no_other_in_its_group() {
    on_both_backends(|engine| async move {
        // A trigger refuses one message, as a failing constraint or a bug might.
        let poison = match engine.db().backend {
            Backend::Sqlite => {
                "CREATE TRIGGER poison BEFORE INSERT ON raw_messages WHEN new.subject = 'Poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned message'); END;"
            }
            Backend::Postgres => {
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.subject = 'Poison' THEN RAISE EXCEPTION 'poisoned message'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER poison BEFORE INSERT ON raw_messages FOR EACH ROW EXECUTE FUNCTION poison();"
            }
        };
        sqlx::raw_sql(poison).execute(&engine.db().pool).await.unwrap();
        let workflow = crate::common::workflows().get("primary_user_gp").unwrap().clone();
        let mut mail = samples(2);
        mail.push(crate::common::form_email(
            &workflow,
            7,
            &[],
            "poison@nhs.net",
            "poison-7@nhs.net",
            "Poison",
        ));
        mail.extend(samples(4).split_off(2));
        let dovecot = Dovecot::start();
        dovecot.deliver("INBOX", &mail).await;
        let mut settings = dovecot.settings();
        settings.max_attempts = 1;

        // All five are fetched into one group; the group fails as a whole, and is recorded
        // again one message at a time: four stored, the poisoned one quarantined.
        let summary = ImapPoller::new(crate::common::live(&engine), settings)
            .drain_once()
            .await
            .unwrap();
        assert_eq!((summary.ingested, summary.quarantined), (4, 1), "{summary:?}");
        let mut taken = summary.uids.clone();
        taken.sort_unstable();
        assert_eq!(taken, vec![1, 2, 3, 4, 5], "each message taken once");
        assert_eq!(dovecot.count("Processed").await, 4);
        assert_eq!(dovecot.count("Quarantine").await, 1);
        assert_eq!(stored(&engine).await.raw_messages, 4);
        assert_eq!(stored(&engine).await.cases, 4);
        // Its preparation finished; only storing it failed: that is not counted as a poison
        // message (which would be set aside, with the wrong reason, after three polls).
        assert_eq!(stored(&engine).await.prepare_attempts, 0);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let errors = storage::open_ingest_errors(&mut conn).await.unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].quarantined
                && errors[0].reason.contains("poisoned message")
                && errors[0].source.ends_with(";UID=3"),
            "{errors:?}"
        );
    })
    .await;
}

/// A running instance keeps the mailbox through waits longer than the lease (its heartbeat
/// renews it), and one that dies without releasing it loses it within a lease, not a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_keeps_the_lease_and_a_dead_ones_lapses_within_one_lease() {
    use countersign::ingest::imap::{LEASE_DURATION, LEASE_HEARTBEAT};
    on_both_backends(|engine| async move {
        let dovecot = Dovecot::start();
        let mut settings = dovecot.settings();
        // Waits in IDLE far longer than the lease.
        settings.poll_interval = LEASE_DURATION * 3;
        let first = Arc::new(ImapPoller::new(crate::common::live(&engine), settings.clone()));
        let (_stop, stop) = countersign::ingest::shutdown_channel();
        let running = {
            let first = first.clone();
            tokio::spawn(async move { first.run_until_stopped(stop).await })
        };
        wait_until(
            "the first instance holds the lease",
            Duration::from_secs(20),
            async || {
                let mut conn = engine.db().pool.acquire().await.unwrap();
                let health = storage::mailbox_health(&mut conn).await.unwrap();
                health.iter().any(|mailbox| mailbox.lease_holder.is_some())
            },
        )
        .await;
        let second = ImapPoller::new(crate::common::live(&engine), settings);
        tokio::time::sleep(LEASE_DURATION + LEASE_HEARTBEAT).await;
        let tried = second.drain_once().await.unwrap();
        assert!(
            !tried.lease_held,
            "the first instance still runs, so it still holds the mailbox"
        );

        // The first instance dies: nothing releases its lease.
        running.abort();
        let died = Instant::now();
        let limit = LEASE_DURATION + LEASE_HEARTBEAT * 2;
        loop {
            if second.drain_once().await.unwrap().lease_held {
                break;
            }
            assert!(
                died.elapsed() < limit,
                "no takeover within {limit:?} of the first instance dying"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
}
