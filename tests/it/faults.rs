//! The fault review's failures, each kept as a test on both backends: two writers of one
//! form, a NUL in a header, a half-written drop-folder file, two processes migrating at
//! once, and a disk that fills up mid-drain. Each is bounded in time and stops by itself.

use crate::common::{TestDatabase, engine_on, stored};
use countersign::engine::Engine;
use countersign::storage::{Backend, Db};
use sqlx::Row;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

fn sample_emails(count: usize) -> Vec<Vec<u8>> {
    let today = crate::common::friday_morning().date_naive();
    countersign::samples::sample_emails(&crate::common::workflows(), count, today, crate::common::AUTHSERV_ID).unwrap()
}

/// The same email with a new Message-ID: the same PDF, resent as a new message.
fn resent(email: &[u8]) -> Vec<u8> {
    retagged(email, "resent")
}

fn retagged(email: &[u8], tag: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(email);
    assert!(text.contains("<sample-"), "sample emails have sample- Message-IDs");
    text.replacen("<sample-", &format!("<{tag}-"), 1).into_bytes()
}

/// How many cases, outbound messages and message links of each kind a database holds.
async fn tally(engine: &Engine) -> countersign::storage::Inventory {
    let counted = stored(engine).await;
    // Only what a fault could double or lose: events and timers follow from these.
    countersign::storage::Inventory {
        case_events: 0,
        pending_timers: 0,
        prepare_attempts: 0,
        ..counted
    }
}

/// After a fault and a recovery: `total` messages stored, one case each, and no case's mail
/// written twice.
async fn assert_each_stored_once(engine: &Engine, total: usize) {
    let inventory = stored(engine).await;
    assert_eq!(inventory.raw_messages, total as i64);
    assert_eq!(inventory.cases, total as i64);
    // Deliberately below the storage API: a doubled row is what the API would never admit to.
    let doubled: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT case_id, template FROM outbox GROUP BY case_id, template HAVING COUNT(*) > 1) d",
    )
    .fetch_one(&engine.db().pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "no case's mail is written twice");
}

/// Writer B records its emails in groups, as a mailbox drain does, falling back to one at a
/// time when a group fails.
async fn record_in_groups(engine: &Engine, emails: &[Vec<u8>]) {
    for chunk in emails.chunks(8) {
        let mut prepared = Vec::new();
        for raw in chunk {
            prepared.push((raw.as_slice(), engine.prepare(raw).await, "writer-b"));
        }
        if engine.record_group(prepared).await.is_err() {
            for raw in chunk {
                engine.intake(raw, "writer-b").await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_of_the_same_forms_make_one_case_per_form() {
    let originals = sample_emails(48);
    let copies: Vec<Vec<u8>> = originals.iter().map(|e| resent(e)).collect();
    for backend in BACKENDS {
        // What one writer alone makes of both sets: the oracle.
        let alone = TestDatabase::create(backend).await;
        let engine = engine_on(&alone.url).await;
        for raw in originals.iter().chain(&copies) {
            engine.intake(raw, "alone").await.unwrap();
        }
        let expected = tally(&engine).await;
        engine.db().close().await;
        alone.drop_database().await;

        // Two instances (two pools) on one database, each given one set, at once.
        let shared = TestDatabase::create(backend).await;
        let a = engine_on(&shared.url).await;
        let b = engine_on(&shared.url).await;
        let writer_a = {
            let (a, originals) = (a.clone(), originals.clone());
            tokio::spawn(async move {
                for raw in &originals {
                    a.intake(raw, "writer-a").await.unwrap();
                }
            })
        };
        let writer_b = {
            let (b, copies) = (b.clone(), copies.clone());
            tokio::spawn(async move { record_in_groups(&b, &copies).await })
        };
        let limit = std::time::Duration::from_secs(300);
        tokio::time::timeout(limit, writer_a)
            .await
            .expect("writer A finished")
            .unwrap();
        tokio::time::timeout(limit, writer_b)
            .await
            .expect("writer B finished")
            .unwrap();
        let found = tally(&a).await;
        a.db().close().await;
        b.db().close().await;
        shared.drop_database().await;
        assert_eq!(
            found, expected,
            "{backend:?}: two writers made something one writer does not"
        );
    }
}

/// An email whose headers carry NULs and bytes that are not UTF-8, in every place a header
/// value is stored: subject (encoded and raw), sender name and address, attachment name.
fn email_with_nul_headers(pdf: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let mut raw = Vec::new();
    raw.extend_from_slice(b"Message-ID: <nul-header-1@practice.nhs.net>\r\n");
    raw.extend_from_slice(b"From: =?utf-8?q?Practice=00Manager?= <manager\x00@nhs.net>\r\n");
    raw.extend_from_slice(b"To: pcse.openexeter@nhs.net\r\n");
    raw.extend_from_slice(b"Subject: =?utf-8?q?Open_Exeter=00form?= \xff\xfe raw \x00 bytes\r\n");
    raw.extend_from_slice(b"Date: Fri, 20 Nov 2026 09:00:00 +0000\r\n");
    raw.extend_from_slice(b"MIME-Version: 1.0\r\n");
    raw.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n");
    raw.extend_from_slice(b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nForm attached \x00 \xc3\x28\r\n");
    raw.extend_from_slice(b"--b\r\nContent-Type: application/pdf; name=\"=?utf-8?q?form=00one.pdf?=\"\r\n");
    raw.extend_from_slice(b"Content-Disposition: attachment; filename=\"form\x00\xff.pdf\"\r\n");
    raw.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
    raw.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(pdf).as_bytes());
    raw.extend_from_slice(b"\r\n--b--\r\n");
    raw
}

#[tokio::test]
async fn a_nul_or_invalid_utf8_in_any_header_is_stored_on_both_backends() {
    // The form's own fields carry a NUL too.
    let workflows = crate::common::workflows();
    let workflow = workflows.get("primary_user_gp").unwrap();
    let mut values = countersign::samples::good_values(workflow, 1, crate::common::friday_morning().date_naive());
    values.insert("org_name".into(), "Riverside\0Surgery".into());
    let pdf = countersign::pdf::generate::filled_form(workflow, &values).unwrap();
    let raw = email_with_nul_headers(&pdf);
    crate::common::on_both_backends(|engine| {
        let raw = raw.clone();
        async move {
            let report = engine
                .intake(&raw, "test")
                .await
                .unwrap_or_else(|e| panic!("{:?}: {e:#}", engine.db().backend));
            assert_eq!(report.cases.len(), 1, "{report:?}");
            let mut conn = engine.db().pool.acquire().await.unwrap();
            let row = sqlx::query("SELECT raw, subject, from_address FROM raw_messages")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let stored: Vec<u8> = row.try_get(0).unwrap();
            assert_eq!(stored, raw, "the raw bytes are kept exactly, NULs and all");
            let subject: Option<String> = row.try_get(1).unwrap();
            let subject = subject.expect("a subject");
            assert!(
                subject.contains("Open Exeter") && !subject.contains('\0'),
                "{subject:?}"
            );
            let from: Option<String> = row.try_get(2).unwrap();
            assert!(!from.unwrap_or_default().contains('\0'));
            let filename: Option<String> = sqlx::query_scalar("SELECT filename FROM attachments")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert!(!filename.unwrap_or_default().contains('\0'));
            // And the case page shows it.
            let case = countersign::storage::case_by_reference(&mut conn, &report.cases[0].reference)
                .await
                .unwrap()
                .unwrap();
            assert!(!case.sender.unwrap_or_default().contains('\0'));
            let org = case.org_name.unwrap_or_default();
            assert!(org.contains("Riverside") && !org.contains('\0'), "{org:?}");
        }
    })
    .await;
}

/// A tmpfs of `size` mounted at a fresh folder, unmounted when dropped. Needs root (CI runs
/// as root); a real small filesystem is what fills up in production, so no fake stands in.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the full-disk test runs as root in CI)"
        );
        SmallDisk { dir }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The SHA-256 of every file in `dir`.
fn hashes_in(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| countersign::mail::sha256_hex(&std::fs::read(e.path()).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_marks_nothing_done_that_was_not_stored_and_the_drain_recovers_by_itself() {
    // SQLite on a filesystem that fills up mid-drain. (PostgreSQL's own disk is not ours to
    // fill; its transactions are never left in doubt on a live connection.)
    // Room for the migrated schema and a few groups of mail, not for all 120 emails: it grows
    // with the schema (1200k left no room for the first group once the events gained an index).
    let disk = SmallDisk::mount("1300k");
    let url = format!("sqlite://{}?mode=rwc", disk.path().join("countersign.db").display());
    let engine = engine_on(&url).await;
    let drop_folder = tempfile::tempdir().unwrap();
    let emails = sample_emails(120);
    for (n, email) in emails.iter().enumerate() {
        std::fs::write(drop_folder.path().join(format!("{n:04}.eml")), email).unwrap();
    }
    let processed = drop_folder.path().join("processed");
    let stored_hashes = |engine: Engine| async move {
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let hashes: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM raw_messages")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        hashes
    };

    // Fill the disk: the drain goes on, and every file it moved is in the database.
    let mut folder = countersign::ingest::dropfolder::DropFolder::new(
        drop_folder.path(),
        countersign::ingest::dropfolder::MAX_MESSAGE_BYTES,
        std::time::Duration::ZERO,
    );
    // Bounded: before the fix, the drain froze for good once the disk was full.
    let limit = std::time::Duration::from_secs(90);
    for _ in 0..2 {
        tokio::time::timeout(limit, folder.scan(&engine))
            .await
            .expect("a scan on a full disk finishes")
            .unwrap();
    }
    let moved = hashes_in(&processed);
    let waiting = countersign::ingest::dropfolder::pending_files(drop_folder.path());
    assert!(
        !moved.is_empty() && !waiting.is_empty(),
        "the disk filled part-way: {} moved, {} waiting",
        moved.len(),
        waiting.len()
    );
    assert!(
        countersign::ingest::dropfolder::quarantined_files(drop_folder.path()).is_empty(),
        "a full disk is not the message's fault: nothing is set aside"
    );
    // The failure shows in the scanner's health (what `/api/health` serves), which needs no
    // database write.
    let health = folder.health().snapshot();
    assert_eq!(health.state, "failing");
    assert_eq!(health.backlog, waiting.len());
    assert!(
        health.last_error.as_deref().is_some_and(|e| e.contains("full")),
        "{health:?}"
    );
    // Read on a fresh pool, as another process would see it.
    let reader = engine_on(&url).await;
    let in_database = stored_hashes(reader.clone()).await;
    reader.db().close().await;
    let lost: Vec<_> = moved.iter().filter(|h| !in_database.contains(h)).collect();
    assert!(
        lost.is_empty(),
        "{} file(s) moved to processed/ but never stored",
        lost.len()
    );

    // Space returns: the same running engine finishes the folder, with no restart.
    disk.resize("64m");
    tokio::time::timeout(limit, folder.scan(&engine))
        .await
        .expect("a scan after space returns finishes")
        .unwrap();
    assert!(countersign::ingest::dropfolder::pending_files(drop_folder.path()).is_empty());
    let health = folder.health().snapshot();
    assert_eq!(
        (health.state.as_str(), health.last_error.as_deref(), health.backlog),
        ("watching", None, 0)
    );
    let mut in_database = stored_hashes(engine.clone()).await;
    in_database.sort();
    let mut all: Vec<String> = emails.iter().map(|e| countersign::mail::sha256_hex(e)).collect();
    all.sort();
    assert_eq!(in_database, all, "every message stored exactly once");
    let cases: i64 = stored(&engine).await.cases;
    assert_eq!(cases, 120, "one case per message, none doubled");
    engine.db().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_an_imap_drain_moves_nothing_unstored_and_doubles_no_mail() {
    // Room for the schema and a group or two of mail, not for all 120 messages (each migration
    // that adds a table takes some of it: 1200k was once enough).
    let disk = SmallDisk::mount("1400k");
    let url = format!("sqlite://{}?mode=rwc", disk.path().join("countersign.db").display());
    let engine = engine_on(&url).await;
    let dovecot = crate::common::dovecot::Dovecot::start();
    let total = 120;
    dovecot.deliver("INBOX", &sample_emails(total)).await;
    let poller = countersign::ingest::imap::ImapPoller::new(crate::common::live(&engine), dovecot.settings());
    let limit = std::time::Duration::from_secs(120);

    // The disk fills mid-drain: the drain stops with the error, and what it moved is stored.
    let failed = tokio::time::timeout(limit, poller.drain_once())
        .await
        .expect("a drain on a full disk finishes");
    let error = failed.expect_err("the disk filled before the mailbox was drained");
    assert!(format!("{error:#}").contains("full"), "{error:#}");
    let processed = dovecot.message_ids("Processed").await;
    assert!(!processed.is_empty(), "the disk filled part-way");
    let stored: Vec<String> = sqlx::query_scalar("SELECT message_id FROM raw_messages")
        .fetch_all(&engine.db().pool)
        .await
        .unwrap();
    let lost: Vec<_> = processed.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} message(s) moved to Processed but never stored",
        lost.len()
    );

    // Space returns: the same poller drains the rest, and nothing is doubled.
    disk.resize("64m");
    tokio::time::timeout(limit, poller.drain_once())
        .await
        .expect("a drain after space returns finishes")
        .unwrap();
    assert_eq!(dovecot.count("INBOX").await, 0);
    assert_eq!(dovecot.count("Processed").await as usize, total);
    assert_each_stored_once(&engine, total).await;
    engine.db().close().await;
}

#[tokio::test]
async fn a_quarantine_counts_no_extra_attempt() {
    crate::common::on_both_backends(|engine| async move {
        let mut conn = engine.db().pool.acquire().await.unwrap();
        for now in 1..=5 {
            countersign::storage::record_ingest_error(&mut conn, "imap:x;UID=7", "imap:x", "database is locked", now)
                .await
                .unwrap();
        }
        countersign::storage::record_quarantine(&mut conn, "imap:x;UID=7", "imap:x", "ingesting failed 5 times", 6)
            .await
            .unwrap();
        let errors = countersign::storage::open_ingest_errors(&mut conn).await.unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].attempts, 5, "the reason says 5 tries, and so does the count");
        assert!(errors[0].quarantined);
    })
    .await;
}

#[tokio::test]
async fn the_drop_folder_takes_only_finished_files() {
    let email = sample_emails(1).remove(0);
    crate::common::on_both_backends(|engine| {
        let email = email.clone();
        async move {
            use countersign::ingest::dropfolder::{DropFolder, MAX_MESSAGE_BYTES};
            let dir = tempfile::tempdir().unwrap();
            let settle = std::time::Duration::from_millis(600);
            let mut folder = DropFolder::new(dir.path(), MAX_MESSAGE_BYTES, settle);
            let file = dir.path().join("form.eml");
            let (first, second) = email.split_at(email.len() / 2);

            // Written in two halves: neither scan takes it until it has stopped changing.
            std::fs::write(&file, first).unwrap();
            assert_eq!(folder.scan(&engine).await.unwrap().ingested, 0, "just written");
            tokio::time::sleep(settle / 2).await;
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap()
                .write_all(second)
                .unwrap();
            assert_eq!(folder.scan(&engine).await.unwrap().ingested, 0, "still changing");
            tokio::time::sleep(settle + std::time::Duration::from_millis(100)).await;
            assert_eq!(folder.scan(&engine).await.unwrap().ingested, 1, "settled");
            let stored: Vec<u8> = sqlx::query_scalar("SELECT raw FROM raw_messages")
                .fetch_one(&engine.db().pool)
                .await
                .unwrap();
            assert_eq!(stored, email, "stored whole");

            // A `.part` file, and a Maildir's tmp/, are being written: never read.
            let part = dir.path().join("second.eml.part");
            std::fs::write(&part, resent(&email)).unwrap();
            std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
            std::fs::create_dir_all(dir.path().join("new")).unwrap();
            let maildir_tmp = dir.path().join("tmp").join("1234.host");
            std::fs::write(&maildir_tmp, retagged(&email, "maildir")).unwrap();
            tokio::time::sleep(settle * 2).await;
            assert_eq!(folder.scan(&engine).await.unwrap().ingested, 0);
            // Renamed when done: taken (a Maildir's new/ at once).
            std::fs::rename(&maildir_tmp, dir.path().join("new").join("1234.host")).unwrap();
            assert_eq!(folder.scan(&engine).await.unwrap().ingested, 1, "new/ is finished mail");
            std::fs::rename(&part, dir.path().join("second.eml")).unwrap();
            assert_eq!(
                folder.scan(&engine).await.unwrap().ingested,
                0,
                "a new name settles first"
            );
            tokio::time::sleep(settle + std::time::Duration::from_millis(100)).await;
            assert_eq!(folder.scan(&engine).await.unwrap().ingested, 1);
        }
    })
    .await;
}

#[tokio::test]
async fn a_complete_copy_of_a_message_once_taken_truncated_is_not_already_ingested() {
    let email = sample_emails(1).remove(0);
    crate::common::on_both_backends(|engine| {
        let email = email.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            // A truncated copy got in (a one-shot run while a writer was still writing).
            std::fs::write(dir.path().join("form.eml"), &email[..email.len() / 2]).unwrap();
            let first = countersign::ingest::dropfolder::scan_once(&engine, dir.path())
                .await
                .unwrap();
            assert_eq!(first.ingested, 1);
            // The complete file, dropped again under the same name and Message-ID.
            std::fs::write(dir.path().join("form.eml"), &email).unwrap();
            let report = engine.intake(&email, "drop:again").await.unwrap();
            assert!(
                !report.already_ingested,
                "the complete message is not the truncated one"
            );
            let codes = &report.cases[0].finding_codes;
            assert!(
                !codes.iter().any(|c| c == "pdf_unreadable"),
                "the form is read: {codes:?}"
            );
            assert!(codes.iter().any(|c| c == "message_id_reused"), "and flagged: {codes:?}");
            let second = countersign::ingest::dropfolder::scan_once(&engine, dir.path())
                .await
                .unwrap();
            assert_eq!(second.ingested, 1, "and the file is moved, once");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_instances_migrating_one_new_database_at_once_all_succeed() {
    for backend in BACKENDS {
        for _round in 0..3 {
            let database = TestDatabase::create(backend).await;
            let url = database.url.clone();
            let connects = (0..4).map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Db::connect(&url).await })
            });
            for connected in futures::future::join_all(connects).await {
                let db = connected
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{backend:?}: a concurrent migration failed: {e}"));
                db.close().await;
            }
            database.drop_database().await;
        }
    }
}

/// PostgreSQL's counterpart of the full disk: its connections are killed mid-drain
/// (`pg_terminate_backend`, as a failover or an administrator would), again and again. A
/// transaction in doubt (killed during COMMIT) must leave its file for the next scan, which
/// finds it stored or stores it: nothing moved unstored, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_drain_lose_and_double_nothing_on_postgres() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let engine = engine_on(&database.url).await;
    let drop_folder = tempfile::tempdir().unwrap();
    let total = 120;
    let emails = sample_emails(total);
    for (n, email) in emails.iter().enumerate() {
        std::fs::write(drop_folder.path().join(format!("{n:04}.eml")), email).unwrap();
    }
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&engine.db().pool)
        .await
        .unwrap();
    let killing = tokio::spawn(async move {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&crate::common::postgres_admin_url())
            .await
            .unwrap();
        let mut killed = 0_i64;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            killed += n;
        }
        killed
    });
    let mut folder = countersign::ingest::dropfolder::DropFolder::new(
        drop_folder.path(),
        countersign::ingest::dropfolder::MAX_MESSAGE_BYTES,
        std::time::Duration::ZERO,
    );
    let limit = std::time::Duration::from_secs(120);
    let started = std::time::Instant::now();
    while !killing.is_finished() {
        let _ = tokio::time::timeout(limit, folder.scan(&engine))
            .await
            .expect("a scan finishes");
    }
    let killed = killing.await.unwrap();
    assert!(killed > 0, "connections were killed");
    // Every file moved so far is stored.
    let stored: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM raw_messages")
        .fetch_all(&engine.db().pool)
        .await
        .unwrap();
    let moved = hashes_in(&drop_folder.path().join("processed"));
    assert!(
        moved.iter().all(|h| stored.contains(h)),
        "a file was moved but never stored"
    );
    // With the database left alone, the folder drains.
    for _ in 0..10 {
        if countersign::ingest::dropfolder::pending_files(drop_folder.path()).is_empty() {
            break;
        }
        tokio::time::timeout(limit, folder.scan(&engine))
            .await
            .expect("a scan finishes")
            .unwrap();
    }
    assert!(started.elapsed() < limit * 4);
    assert!(countersign::ingest::dropfolder::pending_files(drop_folder.path()).is_empty());
    assert!(countersign::ingest::dropfolder::quarantined_files(drop_folder.path()).is_empty());
    assert_each_stored_once(&engine, total).await;
    engine.db().close().await;
    database.drop_database().await;
}

/// A message the database refuses while it takes every other (a failing constraint, a bug) is
/// retried on each scan, then set aside after `MAX_STORE_FAILURES` with its reason; the rest
/// of the folder is not held up.
#[tokio::test]
async fn a_message_that_never_stores_is_set_aside_after_its_tries_and_holds_up_no_other() {
    crate::common::on_both_backends(|engine| async move {
        use countersign::ingest::dropfolder::{DropFolder, MAX_MESSAGE_BYTES, MAX_STORE_FAILURES, quarantined_files};
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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0-poison.eml"),
            crate::common::form_email(&workflow, 7, &[], "poison@nhs.net", "poison-7@nhs.net", "Poison"),
        )
        .unwrap();
        for (n, email) in sample_emails(2).iter().enumerate() {
            std::fs::write(dir.path().join(format!("{}.eml", n + 1)), email).unwrap();
        }
        let mut folder = DropFolder::new(dir.path(), MAX_MESSAGE_BYTES, std::time::Duration::ZERO);
        let first = folder.scan(&engine).await.unwrap();
        assert_eq!((first.ingested, first.left, first.quarantined), (2, 1, 0), "{first:?}");
        for _ in 1..MAX_STORE_FAILURES - 1 {
            assert_eq!(
                folder.scan(&engine).await.unwrap().left,
                1,
                "tried again, not yet set aside"
            );
        }
        let last = folder.scan(&engine).await.unwrap();
        assert_eq!((last.left, last.quarantined), (0, 1), "{last:?}");
        let set_aside = quarantined_files(dir.path());
        assert_eq!(set_aside.len(), 1);
        assert!(
            set_aside[0].1.contains(&format!("failed {MAX_STORE_FAILURES} times"))
                && set_aside[0].1.contains("poisoned"),
            "{set_aside:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn two_instances_scanning_one_drop_folder_store_each_message_once_and_neither_fails() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = TestDatabase::create(backend).await;
        let (a, b) = (engine_on(&database.url).await, engine_on(&database.url).await);
        let dir = tempfile::tempdir().unwrap();
        let workflows = crate::common::workflows();
        let emails = countersign::samples::sample_emails(
            &workflows,
            60,
            crate::common::friday_morning().date_naive(),
            crate::common::AUTHSERV_ID,
        )
        .unwrap();
        for (n, email) in emails.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{n:03}.eml")), email).unwrap();
        }
        // Both take the same files at once: one moves each file, the other finds it gone.
        let (first, second) = tokio::join!(
            countersign::ingest::dropfolder::scan_once(&a, dir.path()),
            countersign::ingest::dropfolder::scan_once(&b, dir.path())
        );
        let (first, second) = (
            first.unwrap_or_else(|e| panic!("{backend:?}: {e:#}")),
            second.unwrap_or_else(|e| panic!("{backend:?}: {e:#}")),
        );
        assert!(
            first.ingested + second.ingested >= 60,
            "{backend:?}: {first:?} {second:?}"
        );
        assert_eq!(
            stored(&a).await.raw_messages,
            60,
            "{backend:?}: each message stored once"
        );
        let processed = std::fs::read_dir(dir.path().join("processed")).unwrap().count();
        let left = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
            .count();
        assert_eq!((processed, left), (60, 0), "{backend:?}");
        a.db().close().await;
        b.db().close().await;
        database.drop_database().await;
    }
}
