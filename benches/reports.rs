//! Reports benchmark (`cargo bench --bench reports`): seeds synthetic years of cases
//! (`COUNTERSIGN_BENCH_REPORT_CASES`, default 100,000; the figure is 1,000,000) into a
//! fresh SQLite database (unless `COUNTERSIGN_BENCH_SQLITE=0`), and into PostgreSQL too when
//! `COUNTERSIGN_BENCH_POSTGRES_URL` names
//! a server, then times the managers' dashboard and reports over a quarter and a year (each
//! report also works out the period before, as the page does), after keeping every past
//! day's figures as `serve` does when it starts (timed too); then imports an account register
//! and times the account lifecycle report and the outreach job's checks.
//! Prints figures; asserts nothing.

use std::time::Instant;

use chrono::Local;
use countersign::reports::Period;
use countersign::reports::{dashboard, open_now, report_and_previous};
use sqlx::Connection;

async fn engine(database_url: &str) -> countersign::engine::Engine {
    let settings = countersign::config::Settings::for_database(database_url);
    countersign::app::App::build_with(&settings, countersign::app::BuildOptions::in_process())
        .await
        .expect("building the service")
        .into_engine()
}

async fn run(label: &str, url: &str, cases: usize) {
    let engine = engine(url).await;
    let started = Instant::now();
    let now = engine.now_ms();
    let mut conn = engine.db().pool.acquire().await.unwrap();
    let origin = countersign::storage::seed_origin_message(&mut conn, now).await.unwrap();
    drop(conn);
    let mut written = 0;
    while written < cases {
        let batch = 20_000.min(cases - written);
        let made = countersign::seed::cases(batch, written as u64 + 1, now, 4, written as u64 + 1);
        let mut tx = engine.db().begin_write().await.unwrap();
        countersign::storage::insert_seeded(&mut tx, &made, origin)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        written += batch;
    }
    println!(
        "{label}: seeded {cases} cases (4 years) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let today = Local::now().date_naive();
    let periods = [
        ("quarter (13 weeks)", Period::last_weeks(today, 13)),
        ("year (52 weeks)", Period::last_weeks(today, 52)),
        ("four years (208 weeks)", Period::last_weeks(today, 208)),
    ];
    let time = |runs: &mut Vec<f64>, since: Instant| runs.push(since.elapsed().as_secs_f64() * 1000.0);
    let summary = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        format!(
            "median {:.0} ms, worst {:.0} ms",
            runs[runs.len() / 2],
            runs[runs.len() - 1]
        )
    };
    let mut runs = Vec::new();
    for _ in 0..5 {
        let since = Instant::now();
        let open = open_now(&engine).await.unwrap();
        dashboard(&engine, &open).await.unwrap();
        time(&mut runs, since);
    }
    println!("{label}: dashboard: {}", summary(runs));
    // What `serve` does in the background when it starts: keep every past day's figures.
    let since = Instant::now();
    let kept = countersign::reports::keep_all_past_days(&engine).await.unwrap();
    println!(
        "{label}: keeping every past day's figures ({kept} days), as serve does when it starts: {:.1} s",
        since.elapsed().as_secs_f64()
    );
    for (name, period) in periods {
        // The first request also works out the days of the period before that are older than
        // the first case (empty), and keeps them; later ones add up kept days only.
        let since = Instant::now();
        let open = open_now(&engine).await.unwrap();
        report_and_previous(&engine, period, &open).await.unwrap();
        println!(
            "{label}: report page, {name}, first request: {:.0} ms",
            since.elapsed().as_secs_f64() * 1000.0
        );
        let mut runs = Vec::new();
        let mut completed = 0;
        for _ in 0..5 {
            let since = Instant::now();
            // As the page does: the open cases once, then the report and the period before.
            let open = open_now(&engine).await.unwrap();
            let (report, _) = report_and_previous(&engine, period, &open).await.unwrap();
            time(&mut runs, since);
            completed = report.headline.completed;
        }
        println!(
            "{label}: report page, {name} and the period before ({completed} cases completed): {}",
            summary(runs)
        );
    }
    lifecycle(label, &engine).await;
    engine.db().close().await;
}

/// The account register: an import of `COUNTERSIGN_BENCH_ACCOUNTS` accounts (default 60,000,
/// about England's GP practices' worth) over 7,500 organisations in the seven regions, a
/// second import of the same file (nothing changes), then the lifecycle report and the
/// coverage check as the page and the job make them.
async fn lifecycle(label: &str, engine: &countersign::engine::Engine) {
    let accounts: usize = std::env::var("COUNTERSIGN_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let organisations = 7_500;
    let regions = ["Y56", "Y58", "Y59", "Y60", "Y61", "Y62", "Y63"];
    let registry: Vec<countersign::registry::RegisteredOrganisation> = (0..organisations)
        .map(|n| countersign::registry::RegisteredOrganisation {
            code: format!("B{n:05}"),
            name: format!("PRACTICE {n}"),
            gp_practice: true,
            roles: vec!["RO76".into()],
            status: countersign::registry::OrgStatus::Active,
            closed_on: None,
            region: Some(regions[n % regions.len()].to_string()),
        })
        .collect();
    let mut conn = engine.db().pool.acquire().await.unwrap();
    countersign::storage::import_registry(&mut conn, &registry, "bench", engine.now_ms())
        .await
        .unwrap();
    drop(conn);
    let today = engine.today();
    let mut csv = String::from("user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n");
    for n in 0..accounts {
        // Every eighth account is a Primary User; passwords and sign-ins spread over 120 days.
        let changed = today - chrono::Duration::days((n * 7 % 40) as i64);
        let signed_in = today - chrono::Duration::days((n * 13 % 120) as i64);
        csv.push_str(&format!(
            "OE{n:07},B{:05},User {n},user{n}@nhs.net,{},{changed},{signed_in},{}\n",
            n % organisations,
            if n % 8 == 0 { "Y" } else { "N" },
            if n % 50 == 0 { "suspended" } else { "active" }
        ));
    }
    for round in ["first import", "same file again"] {
        let since = Instant::now();
        let summary = engine.import_accounts(csv.as_bytes(), "bench.csv").await.unwrap();
        println!(
            "{label}: account register, {round} of {accounts} rows ({} added, {} unchanged): {:.0} ms",
            summary.added.len(),
            summary.unchanged,
            since.elapsed().as_secs_f64() * 1000.0
        );
    }
    let mut runs = Vec::new();
    let mut shape = String::new();
    for _ in 0..5 {
        let since = Instant::now();
        // As `/reports/lifecycle` does: the register and the registry, then the figures.
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let held = countersign::storage::list_accounts(&mut conn, None).await.unwrap();
        let names = countersign::storage::registry_names_and_regions(&mut conn)
            .await
            .unwrap();
        drop(conn);
        let report = countersign::reports::lifecycle::lifecycle_report(&held, &names, today, 5);
        runs.push(since.elapsed().as_secs_f64() * 1000.0);
        shape = format!(
            "{} organisations, {} regions",
            report.organisations.len(),
            report.regions.len()
        );
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "{label}: lifecycle report ({shape}): median {:.0} ms, slowest {:.0} ms",
        runs[runs.len() / 2],
        runs[runs.len() - 1]
    );
    let mut conn = engine.db().pool.acquire().await.unwrap();
    let held = countersign::storage::list_accounts(&mut conn, None).await.unwrap();
    drop(conn);
    let since = Instant::now();
    let gaps = countersign::accounts::coverage_gaps(&held, today);
    let notices = countersign::accounts::notices_due(&held, today, 5);
    println!(
        "{label}: the outreach job's checks ({} notices due, {} organisations none of whose Primary Users can sign in): {:.1} ms",
        notices.len(),
        gaps.len(),
        since.elapsed().as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let cases: usize = std::env::var("COUNTERSIGN_BENCH_REPORT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("reports.db").display());
    // `COUNTERSIGN_BENCH_SQLITE=0` measures PostgreSQL alone.
    if std::env::var("COUNTERSIGN_BENCH_SQLITE").as_deref() != Ok("0") {
        run("SQLite", &url, cases).await;
    }
    if let Ok(admin) = std::env::var("COUNTERSIGN_BENCH_POSTGRES_URL") {
        let name = format!("countersign_reports_bench_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        run("PostgreSQL", url.as_str(), cases).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
