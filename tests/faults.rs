//! The fault review's failures, each kept as a test on both backends: two writers of one
//! form, a NUL in a header, a half-written drop-folder file, two processes migrating at
//! once, and a disk that fills up mid-drain. Each is bounded in time and stops by itself.

mod common;

use common::{TestDatabase, engine_on};
use countersign::engine::Engine;
use countersign::storage::{Backend, Db};
use sqlx::Row;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

fn sample_emails(count: usize) -> Vec<Vec<u8>> {
    let today = common::friday_morning().date_naive();
    countersign::samples::sample_emails(&common::workflows(), count, today, common::AUTHSERV_ID).unwrap()
}

/// The same email with a new Message-ID: the same PDF, resent as a new message.
fn resent(email: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(email);
    assert!(text.contains("<sample-"), "sample emails have sample- Message-IDs");
    text.replacen("<sample-", "<resent-", 1).into_bytes()
}

/// How many cases, outbound messages and message links of each kind a database holds.
async fn tally(engine: &Engine) -> Vec<(String, i64)> {
    let mut conn = engine.db.pool.acquire().await.unwrap();
    let mut out = Vec::new();
    for (name, sql) in [
        ("cases", "SELECT COUNT(*) FROM cases"),
        ("cases with a form", "SELECT COUNT(*) FROM cases WHERE form_sha256 IS NOT NULL"),
        ("messages", "SELECT COUNT(*) FROM raw_messages"),
        ("outbox", "SELECT COUNT(*) FROM outbox"),
        ("origin links", "SELECT COUNT(*) FROM case_messages WHERE relation = 'origin'"),
        ("duplicate links", "SELECT COUNT(*) FROM case_messages WHERE relation = 'duplicate'"),
    ] {
        let n: i64 = sqlx::query(sql).fetch_one(&mut *conn).await.unwrap().try_get(0).unwrap();
        out.push((name.to_string(), n));
    }
    out
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
        let engine = engine_on(Db::connect(&alone.url).await.unwrap());
        for raw in originals.iter().chain(&copies) {
            engine.intake(raw, "alone").await.unwrap();
        }
        let expected = tally(&engine).await;
        engine.db.close().await;
        alone.drop_database().await;

        // Two instances (two pools) on one database, each given one set, at once.
        let shared = TestDatabase::create(backend).await;
        let a = engine_on(Db::connect(&shared.url).await.unwrap());
        let b = engine_on(Db::connect(&shared.url).await.unwrap());
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
        tokio::time::timeout(limit, writer_a).await.expect("writer A finished").unwrap();
        tokio::time::timeout(limit, writer_b).await.expect("writer B finished").unwrap();
        let found = tally(&a).await;
        a.db.close().await;
        b.db.close().await;
        shared.drop_database().await;
        assert_eq!(found, expected, "{backend:?}: two writers made something one writer does not");
    }
}
