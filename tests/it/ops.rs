//! What operators see, on both backends: `/healthz`, `/readyz` (the database, the workflows,
//! each mail source's last poll) and `/metrics`, scraped and read with a Prometheus text
//! parser, after real work (mail in, a page served, a PDF that cannot be read).

use axum::http::StatusCode;
use countersign::web::AppState;
use countersign::workflow::ActorRole;

use crate::common::{fixture, on_both_backends};
use crate::web::Browser;

/// The value of the sample `name` whose labels include every pair of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_are_scraped_and_parsed_after_real_work() {
    on_both_backends(|app| async move {
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        app.receive(&fixture("mail/gp_form.eml")).await; // the same message again
        app.receive(&fixture("mail/truncated_pdf.eml")).await;
        let mut browser = Browser::new(&app).await;
        browser.sign_in_as(&app, "cw@nhs.net", ActorRole::Caseworker).await;
        assert_eq!(browser.get(&format!("/cases/{reference}")).await.status, StatusCode::OK);

        let page = browser.get("/metrics").await;
        assert_eq!(page.status, StatusCode::OK);
        let lines = page.body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");

        assert_eq!(
            sample(&scrape, "countersign_messages_total", &[("outcome", "ingested")]),
            Some(2.0)
        );
        assert_eq!(
            sample(&scrape, "countersign_messages_total", &[("outcome", "duplicate")]),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &scrape,
                "countersign_open_cases",
                &[("workflow", "primary_user_gp"), ("state", "validated")]
            ),
            Some(1.0),
            "{}",
            page.body
        );
        assert!(sample(&scrape, "countersign_pdf_extraction_failures_total", &[]).unwrap() >= 1.0);
        assert!(sample(&scrape, "countersign_pdf_extraction_seconds", &[]).unwrap() >= 2.0);
        // The case page was timed under its route's pattern, not its path.
        assert_eq!(
            sample(
                &scrape,
                "countersign_http_request_duration_seconds",
                &[("route", "/cases/:reference"), ("method", "GET"), ("status", "2xx")]
            ),
            Some(1.0),
            "{}",
            page.body
        );
        assert!(!page.body.contains(&reference), "no case reference in the metrics");
        assert!(sample(&scrape, "countersign_outbox_messages", &[("status", "pending")]).unwrap() >= 1.0);
        assert!(sample(&scrape, "countersign_pending_timers", &[]).unwrap() >= 1.0);
        assert!(sample(&scrape, "countersign_db_pool_connections", &[("status", "open")]).unwrap() >= 1.0);
        assert!(
            sample(&scrape, "countersign_db_pool_returns_total", &[]).unwrap() >= 1.0,
            "connections handed back to the pool are counted"
        );
        assert!(sample(&scrape, "countersign_sla_cases", &[("sla", "breached")]).is_some());
    })
    .await;
}

#[tokio::test]
async fn ready_only_when_the_database_answers_and_each_mail_source_polled_recently() {
    on_both_backends(|app| async move {
        let health = countersign::ingest::HealthHandle::default();
        let mut state = AppState::new(
            app.engine(),
            &crate::common::root().join("templates"),
            false,
            "http://countersign.test".into(),
        )
        .await
        .unwrap();
        std::sync::Arc::make_mut(&mut state.live_mail_sources).push(("imap:pcse@INBOX".into(), health.clone()));
        state.ready_max_poll_age_ms = 60_000;
        let mut browser = Browser::with_state(state);

        let up = browser.get("/healthz").await;
        assert_eq!((up.status, up.body.as_str()), (StatusCode::OK, "ok"));

        let page = browser.get("/readyz").await;
        assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE, "{}", page.body);
        assert!(page.body.contains("has not polled successfully yet"), "{}", page.body);

        health.update(|h| h.last_success_at = Some(app.now_ms() - 5_000));
        let page = browser.get("/readyz").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let json: serde_json::Value = serde_json::from_str(&page.body).unwrap();
        assert_eq!(json["status"], "ready");
        assert!(json["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true));

        health.update(|h| h.last_success_at = Some(app.now_ms() - 61_000));
        let page = browser.get("/readyz").await;
        assert_eq!(
            page.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "a stale poller is not ready"
        );

        app.db().close().await;
        let page = browser.get("/readyz").await;
        assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(page.body.contains("database"), "{}", page.body);
        assert_eq!(
            browser.get("/healthz").await.status,
            StatusCode::OK,
            "up, though not ready"
        );
    })
    .await;
}

#[tokio::test]
async fn shedding_memory_closes_idle_postgres_connections_only() {
    // After the start-up job and the night's jobs, a PostgreSQL connection that read or wrote
    // a great deal keeps the buffers it grew: the idle ones are closed (opened again when
    // needed). SQLite connections hold a bounded page cache, and an in-memory SQLite database
    // lives only as long as its connections: they are kept.
    on_both_backends(|app| async move {
        let pool = &app.db().pool;
        let held: Vec<_> = futures::future::join_all((0..3).map(|_| pool.acquire())).await;
        drop(held);
        let before = pool.size();
        assert!(before >= 3, "{before}");
        // Released connections return to the pool after its release check.
        for _ in 0..100 {
            if pool.num_idle() == before as usize {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        app.db().shed_memory().await;
        match app.db().backend {
            countersign::storage::Backend::Postgres => assert_eq!(pool.size(), 0),
            countersign::storage::Backend::Sqlite => assert_eq!(pool.size(), before),
        }
        // And the service goes on: the next query opens what it needs.
        app.db().ping().await.unwrap();
    })
    .await;
}

/// SQLite: the commit of a group of mail asks for a checkpoint on a connection of its own, so
/// the write-ahead log reaches the database file beside the writer, long before the writer's
/// own backstop of 10,000 pages (about 40 MB) would copy it inside a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copies_its_log_into_the_database_file_after_mail_is_recorded() {
    use crate::common::{TestDatabase, engine_on};
    let database = TestDatabase::create(countersign::storage::Backend::Sqlite).await;
    let engine = engine_on(&database.url).await;
    let path = database
        .url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .expect("a path")
        .to_string();
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = size();
    engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
    let mut waited = 0;
    while size() <= before && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(
        size() > before,
        "the database file is still {before} bytes: the log was not checkpointed"
    );
    // Closed, nothing is left in the log: the checkpoint's own connection is closed too, so the
    // last connection to close folds the log in and removes it.
    engine.db().close().await;
    let log = format!("{path}-wal");
    assert!(
        !std::path::Path::new(&log).exists(),
        "{log} is left behind after the database was closed"
    );
}
