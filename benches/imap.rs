//! IMAP benchmark (`cargo bench --bench imap`): drains a local Dovecot mailbox of generated
//! form emails through the whole pipeline, and fetches the same mailbox raw with the same IMAP
//! client and no processing, as the ceiling. Prints messages per second and peak memory.
//! `COUNTERSIGN_BENCH_IMAP_EMAILS` sets the mailbox size (default 5000).

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::dovecot;

use std::time::Instant;

use countersign::engine::{Engine, SystemClock};
use countersign::ingest::imap::ImapPoller;
use countersign::workflow::WorkflowSet;
use futures::TryStreamExt;
use sqlx::Connection;

/// Resets the RSS high-water mark (Linux 4.0 and later), so that the next reading is the peak
/// of what follows rather than of the generated corpus before it.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The service's engine, built as `serve` builds it, on the system clock.
async fn engine(database_url: &str) -> Engine {
    common::engine_at(database_url, Some(std::sync::Arc::new(SystemClock))).await
}

/// Fetches every message in groups of `GROUP_MESSAGES`, one command a group, as the poller
/// does, but does nothing with them.
async fn raw_fetch(server: &dovecot::Dovecot) -> (usize, usize) {
    let mut session = server.session().await;
    session.examine("INBOX").await.unwrap();
    let mut uids: Vec<u32> = session.uid_search("ALL").await.unwrap().into_iter().collect();
    uids.sort_unstable();
    let mut bytes = 0;
    for group in uids.chunks(countersign::ingest::GROUP_MESSAGES) {
        let set: Vec<String> = group.iter().map(u32::to_string).collect();
        let fetches: Vec<_> = session
            .uid_fetch(set.join(","), "(UID BODY.PEEK[])")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        bytes += fetches.iter().filter_map(|f| f.body()).map(<[u8]>::len).sum::<usize>();
    }
    session.logout().await.ok();
    (uids.len(), bytes)
}

async fn run(n: usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let workflows = WorkflowSet::load(&root.join("workflows"), &root.join("templates")).unwrap();
    let authserv = common::AUTHSERV_ID.to_string();
    let corpus =
        countersign::samples::sample_emails(&workflows, n, chrono::Local::now().date_naive(), &authserv).unwrap();
    let server = dovecot::Dovecot::start();
    let start = Instant::now();
    server.deliver("INBOX", &corpus).await;
    println!(
        "delivered {n} emails by APPEND in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // The corpus is in the mailbox now: what the drains' peaks measure is the service alone.
    drop(corpus);
    countersign::storage::release_freed_heap();

    let start = Instant::now();
    let (count, bytes) = raw_fetch(&server).await;
    let raw_rate = count as f64 / start.elapsed().as_secs_f64();
    println!(
        "raw fetch (no processing):   {count} messages, {:.1} MiB, {raw_rate:.0} messages/s",
        bytes as f64 / 1048576.0
    );

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
    let sqlite = engine(&url).await;
    reset_peak_rss();
    let start = Instant::now();
    let summary = ImapPoller::new(sqlite.clone(), server.settings())
        .drain_once()
        .await
        .unwrap();
    let rate = summary.ingested as f64 / start.elapsed().as_secs_f64();
    println!(
        "full pipeline into SQLite:   {} messages, {rate:.0} messages/s ({:.0}% of raw), peak {:.1} MiB",
        summary.ingested,
        100.0 * rate / raw_rate,
        peak_rss_mib()
    );
    sqlite.db().close().await;

    let admin =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        server.move_all("Processed", "INBOX").await;
        let name = format!("countersign_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        let pg = engine(url.as_str()).await;
        reset_peak_rss();
        let start = Instant::now();
        let summary = ImapPoller::new(pg.clone(), server.settings())
            .drain_once()
            .await
            .unwrap();
        let rate = summary.ingested as f64 / start.elapsed().as_secs_f64();
        println!(
            "full pipeline into Postgres: {} messages, {rate:.0} messages/s ({:.0}% of raw), peak {:.1} MiB",
            summary.ingested,
            100.0 * rate / raw_rate,
            peak_rss_mib()
        );
        pg.db().close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COUNTERSIGN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let n = std::env::var("COUNTERSIGN_BENCH_IMAP_EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(n));
}
