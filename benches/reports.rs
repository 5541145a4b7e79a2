//! Reports benchmark (`cargo bench --bench reports`): seeds synthetic years of cases
//! (`COUNTERSIGN_BENCH_REPORT_CASES`, default 100,000; the figure is 1,000,000) into a
//! fresh SQLite database (unless `COUNTERSIGN_BENCH_SQLITE=0`), and into PostgreSQL too when
//! `COUNTERSIGN_BENCH_POSTGRES_URL` names
//! a server, then times the managers' dashboard and reports over a quarter and a year (each
//! report also works out the period before, as the page does), after keeping every past
//! day's figures as `serve` does when it starts (timed too).
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
    engine.db().close().await;
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
