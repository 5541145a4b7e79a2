//! Test harness: an engine on a fresh database of each backend. SQLite lives in a temporary
//! folder; PostgreSQL gets a database named by a UUID, dropped when the test ends (also when it
//! fails).

#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{Local, TimeZone};
use countersign::app::{App, BuildOptions};
use countersign::config::Settings;
use countersign::engine::{Clock, Engine, FixedClock};
use countersign::pdf::PdfReader;
use countersign::storage::Backend;
use countersign::workflow::WorkflowSet;
use futures::FutureExt;
use sqlx::Connection;

pub const AUTHSERV_ID: &str = "mx.countersign.test";
pub const OUR_ADDRESS: &str = "pcse.openexeter@nhs.net";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(path)).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

pub fn workflows() -> WorkflowSet {
    WorkflowSet::load(&root().join("workflows"), &root().join("templates")).expect("shipped workflows")
}

/// Friday 20 November 2026, 10:00 in England: the fixtures are signed on 10/11/2026.
pub fn friday_morning() -> chrono::DateTime<Local> {
    Local.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap()
}

/// A test CA (`ca.pem`), and a server certificate it signed for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`), written into `dir` with Debian's openssl.
pub fn make_test_certificates(dir: &std::path::Path) {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "30",
        "-subj",
        "/CN=Countersign Test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.pem"),
        "-days",
        "30",
        "-extfile",
        &p("server.ext"),
    ]);
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// An email from `from` carrying `workflow`'s form, filled with sample `n`'s good values and
/// then `changes`.
pub fn form_email(
    workflow: &countersign::workflow::WorkflowDef,
    n: usize,
    changes: &[(&str, &str)],
    from: &str,
    message_id: &str,
    subject: &str,
) -> Vec<u8> {
    let mut values = countersign::samples::good_values(workflow, n, friday_morning().date_naive());
    for (field, value) in changes {
        values.insert(field.to_string(), value.to_string());
    }
    let pdf = countersign::pdf::generate::filled_form(workflow, &values).expect("a generated form");
    countersign::samples::email_with_form(from, AUTHSERV_ID, message_id, subject, Some(("f.pdf", pdf)))
        .expect("an email")
}

/// A clock a test can move: across weekends, bank holidays and SLA deadlines.
pub struct TestClock(std::sync::Mutex<chrono::DateTime<Local>>);

impl TestClock {
    pub fn at(time: chrono::DateTime<Local>) -> Arc<TestClock> {
        Arc::new(TestClock(std::sync::Mutex::new(time)))
    }

    pub fn set(&self, time: chrono::DateTime<Local>) {
        *self.0.lock().unwrap() = time;
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap();
        *now += by;
    }
}

impl countersign::engine::Clock for TestClock {
    fn now(&self) -> chrono::DateTime<Local> {
        *self.0.lock().unwrap()
    }
}

/// The settings the tests run with: the shipped workflows, templates and calendar, our
/// test authserv-id, and the database at `database_url`.
pub fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.database_url = database_url.into();
    settings.workflows_dir = root().join("workflows");
    settings.templates_dir = root().join("templates");
    settings.authserv_id = AUTHSERV_ID.into();
    settings.mailer.from_address = OUR_ADDRESS.into();
    // No test asks the real DNS: a DKIM key not filled into the cache in advance meets a
    // port where nothing answers, which is a (temporary) DNS failure.
    settings.sender_check.dns_servers = vec!["127.0.0.1:9".into()];
    settings.sender_check.dns_timeout_ms = 500;
    // One key for every test run, outside the checkout.
    settings.credential_key_file = Some(std::env::temp_dir().join("countersign-tests-credential.key"));
    settings
}

/// The engine the tests use, built by the composition root as `serve` builds it, except that
/// PDFs are read in process and the clock is the test's (by default stopped on Friday 20
/// November 2026, 10:00).
pub async fn engine_at(database_url: &str, clock: Option<Arc<dyn Clock>>) -> Engine {
    let options = BuildOptions {
        clock: Some(clock.unwrap_or_else(|| Arc::new(FixedClock(friday_morning())))),
        pdf_reader: Some(PdfReader::InProcess),
    };
    App::build_with(&test_settings(database_url), options)
        .await
        .unwrap_or_else(|e| panic!("building the service on {database_url}: {e:#}"))
        .into_engine()
}

/// Runs `body` against a fresh service on SQLite, then on PostgreSQL, each built from the
/// test settings as `adjust` changes them (on the default clock, Friday 20 November 2026).
pub async fn on_both_backends_with<A, F, Fut>(adjust: A, body: F)
where
    A: Fn(&mut Settings),
    F: Fn(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = TestDatabase::create(backend).await;
        let mut settings = test_settings(&database.url);
        adjust(&mut settings);
        let options = BuildOptions {
            clock: Some(Arc::new(FixedClock(friday_morning()))),
            pdf_reader: Some(PdfReader::InProcess),
        };
        let engine = App::build_with(&settings, options)
            .await
            .unwrap_or_else(|e| panic!("building the service on {backend:?}: {e:#}"))
            .into_engine();
        let db = engine.db().clone();
        let outcome = AssertUnwindSafe(body(TestApp::new(engine))).catch_unwind().await;
        db.close().await;
        database.drop_database().await;
        if let Err(panic) = outcome {
            eprintln!("failed on {backend:?}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// [`engine_at`] on the system-clock-free default: Friday 20 November 2026, 10:00.
pub async fn engine_on(database_url: &str) -> Engine {
    engine_at(database_url, None).await
}

/// [`engine_at`] on a clock the test moves.
pub async fn engine_with_clock(database_url: &str, clock: Arc<TestClock>) -> Engine {
    engine_at(database_url, Some(clock)).await
}

/// A clock that starts on Friday 20 November 2026, 10:00 (the fixtures' week) and runs at
/// the speed of real time: for the mail sources, whose leases and heartbeats are real waits.
pub struct RunningClock {
    start: chrono::DateTime<Local>,
    started: std::time::Instant,
}

impl countersign::engine::Clock for RunningClock {
    fn now(&self) -> chrono::DateTime<Local> {
        self.start + chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default()
    }
}

/// The same engine on a [`RunningClock`], for a mail source.
pub fn live(engine: &Engine) -> Engine {
    engine.clone().with_clock(Arc::new(RunningClock {
        start: friday_morning(),
        started: std::time::Instant::now(),
    }))
}

/// What the engine's database holds, counted through the storage API.
pub async fn stored(engine: &Engine) -> countersign::storage::Inventory {
    let mut conn = engine.db().pool.acquire().await.expect("a connection");
    countersign::storage::inventory(&mut conn)
        .await
        .expect("counting stored records")
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                TestDatabase {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("countersign_test_{}", uuid::Uuid::new_v4().simple());
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL must be running for the tests ({admin}): {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let url = replace_database(&admin, &name);
                TestDatabase {
                    url,
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    pub async fn drop_database(&self) {
        if let Some(name) = &self.pg_name
            && let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("database url");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// Runs `body` against a fresh service on SQLite, then on PostgreSQL.
pub async fn on_both_backends<F, Fut>(body: F)
where
    F: Fn(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    on_both_backends_with(|_| {}, body).await
}

/// Like [`on_both_backends`], with a clock the test can move (starting Friday 20 November
/// 2026, 10:00).
pub async fn on_both_backends_clocked<F, Fut>(body: F)
where
    F: Fn(TestApp, Arc<TestClock>) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = TestDatabase::create(backend).await;
        let clock = TestClock::at(friday_morning());
        let engine = engine_with_clock(&database.url, clock.clone()).await;
        let db = engine.db().clone();
        let outcome = AssertUnwindSafe(body(TestApp::new(engine), clock)).catch_unwind().await;
        db.close().await;
        database.drop_database().await;
        if let Err(panic) = outcome {
            eprintln!("failed on {backend:?}");
            std::panic::resume_unwind(panic);
        }
    }
}
mod app;
pub mod dovecot;
pub mod logs;
pub mod postfix;

pub use app::TestApp;

/// Stores synthetic cases (`countersign::seed::cases`) as `dev seed` does, each linked to the
/// one synthetic email; returns that email's id.
pub async fn store_seeded(engine: &Engine, seeded: &[countersign::seed::SeedCase]) -> i64 {
    let mut conn = engine.db().pool.acquire().await.unwrap();
    let origin = countersign::storage::seed_origin_message(&mut conn, engine.now_ms())
        .await
        .unwrap();
    countersign::storage::insert_seeded(&mut conn, seeded, origin)
        .await
        .unwrap();
    origin
}
