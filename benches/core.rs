//! Benchmarks that print figures (`cargo bench`): field extraction per form, and ingest
//! throughput into SQLite and PostgreSQL for a corpus of generated emails. Not a test: nothing
//! here asserts a time.
//!
//! `COUNTERSIGN_BENCH_EMAILS` sets the corpus size (default 3000); `TEST_DATABASE_URL` points
//! at a PostgreSQL server (default the local one); PostgreSQL is skipped if it cannot be reached.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use countersign::app::{App, BuildOptions};
use countersign::config::Settings;
use countersign::engine::Engine;
use countersign::pdf::worker::{WorkerPool, WorkerSettings};
use countersign::pdf::{ExtractLimits, PdfReader, extract, extract_in_place};
use countersign::workflow::WorkflowSet;
use sqlx::Connection;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn bench_extraction(root: &Path) {
    let ids: Vec<String> = ["PU-GP-1", "PU-ORG-1", "AP-1"].map(String::from).to_vec();
    println!("field extraction (two-page form), {} runs each:", 2000);
    for name in [
        "pdftk_gp.pdf",
        "pypdf_gp.pdf",
        "qpdf_object_streams.pdf",
        "qpdf_aes_256.pdf",
    ] {
        let bytes = std::fs::read(root.join("tests/fixtures/pdf").join(name)).expect("fixture");
        for _ in 0..100 {
            extract_in_place(&bytes, &ids, ExtractLimits::default()).expect("warm-up");
        }
        let mut times: Vec<Duration> = (0..2000)
            .map(|_| {
                let start = Instant::now();
                let form = extract_in_place(&bytes, &ids, ExtractLimits::default()).expect("extract");
                let elapsed = start.elapsed();
                assert!(form.has_fields());
                elapsed
            })
            .collect();
        times.sort();
        println!(
            "  {name:<26} median {:>7.3} ms   p99 {:>7.3} ms",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        );
    }
    // Through a worker process (what the service does): the pipe round trip on top.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = WorkerPool::new(WorkerSettings::new(env!("CARGO_BIN_EXE_countersign").into()));
    let bytes = std::fs::read(root.join("tests/fixtures/pdf/pdftk_gp.pdf")).unwrap();
    let times = runtime.block_on(async {
        for _ in 0..100 {
            pool.extract(&bytes, &ids, ExtractLimits::default())
                .await
                .expect("warm-up");
        }
        let mut times = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let start = Instant::now();
            pool.extract(&bytes, &ids, ExtractLimits::default())
                .await
                .expect("extract");
            times.push(start.elapsed());
        }
        times
    });
    let mut times = times;
    times.sort();
    println!(
        "  {:<26} median {:>7.3} ms   p99 {:>7.3} ms",
        "pdftk_gp.pdf (worker)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
    // The same with the guard thread (bounded time, big stack) of in-process extraction.
    let bytes = std::fs::read(root.join("tests/fixtures/pdf/pdftk_gp.pdf")).unwrap();
    let mut times: Vec<Duration> = (0..2000)
        .map(|_| {
            let start = Instant::now();
            extract(&bytes, &ids, ExtractLimits::default()).expect("extract");
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "  {:<26} median {:>7.3} ms   p99 {:>7.3} ms",
        "pdftk_gp.pdf (guarded)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
}

/// The service's engine, built as `serve` builds it, reading PDFs in worker processes as the
/// service does.
async fn engine(database_url: &str) -> Engine {
    let workers = PdfReader::Workers(Arc::new(WorkerPool::new(WorkerSettings::new(
        env!("CARGO_BIN_EXE_countersign").into(),
    ))));
    let options = BuildOptions {
        clock: None,
        pdf_reader: Some(workers),
    };
    App::build_with(&Settings::for_database(database_url), options)
        .await
        .expect("building the service")
        .into_engine()
}

async fn ingest_all(engine: &Engine, corpus: &[Vec<u8>], concurrency: usize) -> Duration {
    let start = Instant::now();
    let corpus = Arc::new(corpus.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (engine, corpus, next) = (engine.clone(), corpus.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(email) = corpus.get(i) else { break };
                engine.intake(email, "bench").await.expect("intake");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

/// As the mailbox drain ingests: groups of 16 emails, each group prepared (parsed, its PDFs
/// read) on other workers while the previous group is recorded in one transaction.
async fn ingest_grouped(engine: &Engine, corpus: &[Vec<u8>]) -> Duration {
    type Preparing = tokio::task::JoinHandle<(Vec<u8>, countersign::engine::PreparedEmail)>;
    async fn record(engine: &Engine, group: Vec<Preparing>) {
        let (mut raws, mut prepared) = (Vec::new(), Vec::new());
        for handle in group {
            let (raw, email) = handle.await.expect("prepare");
            raws.push(raw);
            prepared.push(email);
        }
        if raws.is_empty() {
            return;
        }
        let group = raws
            .iter()
            .zip(prepared)
            .map(|(raw, email)| (raw.as_slice(), email, "bench"))
            .collect();
        engine.record_group(group).await.expect("record a group");
    }
    let start = Instant::now();
    let mut previous: Vec<Preparing> = Vec::new();
    for chunk in corpus.chunks(16) {
        let next = chunk
            .iter()
            .map(|raw| {
                let (engine, raw) = (engine.clone(), raw.clone());
                tokio::spawn(async move {
                    let email = engine.prepare(&raw).await;
                    (raw, email)
                })
            })
            .collect();
        record(engine, std::mem::replace(&mut previous, next)).await;
    }
    record(engine, previous).await;
    start.elapsed()
}

async fn bench_ingest(corpus: &[Vec<u8>]) {
    let n = corpus.len();
    let dir = tempfile::tempdir().unwrap();
    for concurrency in [1, 4] {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join(format!("bench-{concurrency}.db")).display()
        );
        let engine = engine(&url).await;
        let elapsed = ingest_all(&engine, corpus, concurrency).await;
        println!(
            "  SQLite,     {concurrency} at a time: {n} emails in {:.2} s = {:.0} emails/s",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        engine.db().close().await;
    }
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bench-grouped.db").display());
    let grouped = engine(&url).await;
    let elapsed = ingest_grouped(&grouped, corpus).await;
    println!(
        "  SQLite,     groups of 16 (as the mailbox drain): {n} emails in {:.2} s = {:.0} emails/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    grouped.db().close().await;
    let admin =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await else {
        println!("  PostgreSQL: skipped ({admin} not reachable)");
        return;
    };
    for concurrency in [1, 8] {
        let name = format!("countersign_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        let engine = engine(url.as_str()).await;
        let elapsed = ingest_all(&engine, corpus, concurrency).await;
        println!(
            "  PostgreSQL, {concurrency} at a time: {n} emails in {:.2} s = {:.0} emails/s",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        engine.db().close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

fn main() {
    // `cargo test --benches` runs this with --test-ish flags; only run figures under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench_extraction(root);
    let workflows = WorkflowSet::load(&root.join("workflows"), &root.join("templates")).expect("workflows");
    let n: usize = std::env::var("COUNTERSIGN_BENCH_EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let start = Instant::now();
    let corpus = countersign::samples::sample_emails(
        &workflows,
        n,
        chrono::Local::now().date_naive(),
        &Settings::defaults().authserv_id,
    )
    .expect("corpus");
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    println!(
        "\ningest throughput ({n} generated emails, {:.1} MiB, made in {:.1} s):",
        bytes as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench_ingest(&corpus));
    println!("\npeak memory (RSS high-water mark): {:.1} MiB", peak_rss_mib());
}
