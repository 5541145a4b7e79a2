//! Ingests generated emails into a fresh SQLite database in a loop: a target for profilers.
//! Prints the time per message of each half of intake: `prepare` (parse, read the PDFs) and
//! `record` (the database transaction).
//! Usage: ingest_loop [COUNT]

#[tokio::main]
async fn main() {
    // RUST_LOG=sqlx::query=debug shows every statement an intake runs.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(3000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let workflows =
        countersign::workflow::WorkflowSet::load(&root.join("workflows"), &root.join("templates")).expect("workflows");
    let corpus =
        countersign::samples::sample_emails(&workflows, count, chrono::Local::now().date_naive(), "mx.example")
            .expect("corpus");
    let dir = std::env::temp_dir().join(format!("ingest-loop-{}", std::process::id()));
    let url = format!("sqlite://{}?mode=rwc", dir.join("loop.db").display());
    let engine = countersign::engine::Engine::new(
        countersign::storage::Db::connect(&url).await.expect("database"),
        workflows,
        countersign::calendar::WorkingCalendar::shipped(),
        countersign::engine::EngineConfig {
            policy: Default::default(),
            mail: countersign::mail::MailSettings {
                authserv_id: "mx.example".into(),
                our_addresses: vec![],
            },
            limits: Default::default(),
            pdf_reader: Default::default(),
        },
    );
    let started = std::time::Instant::now();
    let (mut prep, mut rec) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for (i, email) in corpus.iter().enumerate() {
        let t = std::time::Instant::now();
        let p = engine.prepare(email).await;
        prep += t.elapsed();
        let t = std::time::Instant::now();
        engine.record(email, p, &format!("loop{i}")).await.expect("intake");
        rec += t.elapsed();
    }
    println!(
        "prepare {:?}/msg, record {:?}/msg",
        prep / count as u32,
        rec / count as u32
    );
    let elapsed = started.elapsed();
    println!(
        "{count} emails in {:.2} s = {:.0}/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    engine.db().close().await;
    let _ = std::fs::remove_dir_all(dir);
}
