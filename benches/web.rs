//! Page render times with 100,000 cases in the database (`cargo bench --bench web`):
//! server-side time for the queue (first page, deep in the keyset, filtered, searched), a case
//! page and the JSON API, through the real router. `COUNTERSIGN_BENCH_CASES` sets the count.
//! SQLite always; PostgreSQL too when `COUNTERSIGN_BENCH_POSTGRES_URL` names a server (a
//! database is created there for the run and dropped after).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use countersign::app::{App, BuildOptions};
use countersign::config::Settings;
use countersign::workflow::{ActorRole, WorkflowSet};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Surnames for the generated cases: each is common (about 1% of cases) but for one rare one.
const SURNAMES: [&str; 10] = [
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Roberts",
];

/// Realistic form fields (about 600 bytes of JSON), so that free-text search reads real text.
fn fields_for(n: usize) -> String {
    let surname = if n == 4242 {
        "Ó Briain-Åkesson".to_string()
    } else {
        format!("{}-{}", SURNAMES[n % SURNAMES.len()], n % 97)
    };
    serde_json::json!({
        "form_id": "PU-GP-1",
        "org_name": format!("Practice {n} Surgery"),
        "org_ods_code": format!("A{:05}", n % 90_000),
        "user_title": "Dr",
        "user_first_name": "Alex",
        "user_last_name": surname,
        "user_job_title": "Practice Manager",
        "user_email": format!("alex.user{n}@nhs.net"),
        "user_phone": "01632 960000",
        "request_kind": "New",
        "signatory_name": "Dr Sam Partner",
        "signatory_role": "GP Partner",
        "signatory_email": format!("manager{n}@nhs.net"),
        "signed_date": "2026-11-20",
        "declaration": "Yes",
    })
    .to_string()
}

async fn run(url: &str, backend: &str, cases: usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let workflows = WorkflowSet::load(&root.join("workflows"), &root.join("templates")).unwrap();
    let engine = App::build_with(&Settings::for_database(url), BuildOptions::in_process())
        .await
        .expect("building the service")
        .into_engine();
    // A few real cases (with events, mail and timers), then many more written directly.
    let samples = countersign::samples::sample_emails(
        &workflows,
        20,
        chrono::Local::now().date_naive(),
        &Settings::defaults().authserv_id,
    )
    .unwrap();
    for email in &samples {
        engine.intake(email, "bench").await.unwrap();
    }
    let start = Instant::now();
    let mut tx = engine.db().pool.begin().await.unwrap();
    let states = [
        "needs_review",
        "validated",
        "awaiting_information",
        "authorised",
        "provisioned",
        "rejected",
    ];
    let now = engine.now_ms();
    // Organisations, each with its share of the cases (the admin page counts them).
    const ORGANISATIONS: usize = 2_000;
    for n in 0..ORGANISATIONS {
        sqlx::query(
            "INSERT INTO organisations (ods_code, name, kind, created_at, updated_at) VALUES ($1, $2, 'gp', $3, $3)",
        )
        .bind(format!("B{n:05}"))
        .bind(format!("Practice {n} Surgery"))
        .bind(now)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let first_org: i64 = sqlx::query_scalar("SELECT MIN(id) FROM organisations WHERE ods_code LIKE 'B%'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    for n in 0..cases {
        sqlx::query(
            "INSERT INTO cases (reference, workflow, state, version, fields, findings, org_ods_code, org_name, sender, origin_message_id, created_at, updated_at, due_at, organisation_id)
             VALUES ($1, 'primary_user_gp', $2, 1, $9, $3, $4, $5, $6, 1, $7, $7, $8, $10)",
        )
        .bind(format!("CS-2025-{:06}", n + 1))
        .bind(states[n % states.len()])
        .bind(if n % 7 == 0 { r#"[{"code":"signatory_role_not_allowed","field":"signatory_role","message":"x"}]"# } else { "[]" })
        .bind(format!("A{:05}", n % 90_000))
        .bind(format!("Practice {n} Surgery"))
        .bind(format!("manager{n}@nhs.net"))
        .bind(now - (n as i64 % 1000) * 3_600_000)
        .bind(now + ((n as i64 * 7919) % 2_000_000) * 1000)
        .bind(fields_for(n))
        .bind(first_org + (n % ORGANISATIONS) as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    println!("{cases} cases written in {:.1} s", start.elapsed().as_secs_f64());

    let mut conn = engine.db().pool.acquire().await.unwrap();
    let (user, token) = countersign::users::add(&mut conn, "bench@nhs.net", "Bench", ActorRole::Admin, now)
        .await
        .unwrap();
    countersign::users::set_password_with_token(&mut conn, &token, "river otter lantern", now)
        .await
        .unwrap();
    let session = countersign::users::start_session(&mut conn, user.id, now)
        .await
        .unwrap();
    let deep: (i64, i64) = {
        use sqlx::Row;
        let row = sqlx::query("SELECT due_at, id FROM cases ORDER BY due_at, id LIMIT 1 OFFSET $1")
            .bind((cases as i64 * 9) / 10)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    drop(conn);
    let state = countersign::web::AppState::new(engine.clone(), &root.join("templates"), false, "http://bench".into())
        .await
        .unwrap();
    let app = countersign::web::router(state);
    let pages = [
        ("queue, first page", "/".to_string()),
        ("queue, 90% deep (keyset)", format!("/?after={}:{}", deep.0, deep.1)),
        (
            "queue, filtered by finding",
            "/?finding=signatory_role_not_allowed".to_string(),
        ),
        ("queue, searched by ODS code", "/?q=a0123".to_string()),
        ("queue, searched: rare name", "/?q=akesson".to_string()),
        ("queue, searched: rare email", "/?q=manager54321%40".to_string()),
        ("queue, searched: common name", "/?q=williams".to_string()),
        ("queue, searched: in every case", "/?q=surgery".to_string()),
        (
            "case page",
            "/cases/CS-2026-000005".replace("2026", &chrono::Local::now().format("%Y").to_string()),
        ),
        ("API: queue as JSON", "/api/cases".to_string()),
        ("admin: organisations", "/admin/organisations".to_string()),
        (
            "admin: organisations searched",
            "/admin/organisations?q=b0123".to_string(),
        ),
        ("admin: users", "/admin/users".to_string()),
        ("admin: workflows", "/admin/workflows".to_string()),
    ];
    if backend == "PostgreSQL" {
        // Fresh statistics, as autovacuum would have by the time anyone searched.
        sqlx::query("ANALYZE").execute(&engine.db().pool).await.unwrap();
    }
    println!(
        "\nserver-side render time, {} runs each (release build, {backend}):",
        50
    );
    for (name, path) in pages {
        let mut times = Vec::new();
        for i in 0..55 {
            let request = Request::get(&path)
                .header(header::COOKIE, format!("cs_session={session}"))
                .body(Body::empty())
                .unwrap();
            let started = Instant::now();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await.unwrap();
            if i >= 5 {
                times.push(started.elapsed());
            }
            assert!(status.is_success(), "{name}: {status}");
        }
        times.sort();
        println!(
            "  {name:<30} median {:>6.2} ms   p99 {:>6.2} ms",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cases = std::env::var("COUNTERSIGN_BENCH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("web.db").display());
    runtime.block_on(run(&url, "SQLite", cases));
    if let Ok(server) = std::env::var("COUNTERSIGN_BENCH_POSTGRES_URL") {
        runtime.block_on(async {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let name = format!("countersign_bench_web_{}", std::process::id());
            let mut admin = sqlx::AnyConnection::connect(&server).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            let mut url = url::Url::parse(&server).unwrap();
            url.set_path(&name);
            run(url.as_str(), "PostgreSQL", cases).await;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
                .execute(&mut admin)
                .await
                .unwrap();
        });
    }
}
