//! Ingests generated emails into a fresh database in a loop: a target for profilers. Prepares
//! every email first (parse, read the PDFs, check the rules), then records them in groups of
//! `GROUP` (one transaction each, as the mailbox drain does), and prints the time per message
//! of each half, so the database's share is seen apart from the parsing.
//! Usage: ingest_loop [COUNT] [GROUP]; `COUNTERSIGN_DATABASE_URL` picks the database (a fresh
//! SQLite file by default).

#[tokio::main]
async fn main() {
    // RUST_LOG=sqlx::query=debug shows every statement an intake runs.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let count = args.next().flatten().unwrap_or(3000);
    let group = args.next().flatten().unwrap_or(16).max(1);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let workflows =
        countersign::workflow::WorkflowSet::load(&root.join("workflows"), &root.join("templates")).expect("workflows");
    let corpus = countersign::samples::sample_emails(
        &workflows,
        count,
        chrono::Local::now().date_naive(),
        &countersign::config::Settings::defaults().authserv_id,
    )
    .expect("corpus");
    let dir = std::env::temp_dir().join(format!("ingest-loop-{}", std::process::id()));
    let url = std::env::var("COUNTERSIGN_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}?mode=rwc", dir.join("loop.db").display()));
    let mut settings = countersign::config::Settings::for_database(&url);
    (settings.workflows_dir, settings.templates_dir) = (root.join("workflows"), root.join("templates"));
    let engine = countersign::app::App::build_with(&settings, countersign::app::BuildOptions::in_process())
        .await
        .expect("building the service")
        .into_engine();
    let (started, cpu_before) = (std::time::Instant::now(), cpu_time());
    let mut prepared = Vec::with_capacity(count);
    for email in &corpus {
        prepared.push(engine.prepare(email).await);
    }
    let (prep, prep_cpu) = (started.elapsed(), cpu_time() - cpu_before);
    let (t, cpu_before) = (std::time::Instant::now(), cpu_time());
    let mut prepared = prepared.into_iter();
    for (i, emails) in corpus.chunks(group).enumerate() {
        let batch = emails
            .iter()
            .zip(prepared.by_ref())
            .map(|(raw, email)| (raw.as_slice(), email, "loop"))
            .collect();
        engine
            .record_group(batch)
            .await
            .unwrap_or_else(|e| panic!("group {i}: {e}"));
    }
    let (rec, rec_cpu) = (t.elapsed(), cpu_time() - cpu_before);
    println!(
        "{count} emails, groups of {group}: prepare {:?}/msg ({:?} CPU), record {:?}/msg ({:?} CPU in this process; {:.0} recorded/s)",
        prep / count as u32,
        prep_cpu / count as u32,
        rec / count as u32,
        rec_cpu / count as u32,
        count as f64 / rec.as_secs_f64()
    );
    engine.db().close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// CPU time this process has used (user and system, every thread): beside the wall time, it
/// tells work from waiting.
fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}
