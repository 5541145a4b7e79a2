//! Every query that reads one case's rows finds them through an index, on both backends: the
//! case page once read the whole outbox and every note to show one case, so it slowed as the
//! service aged. The check asks each database for its plan (`EXPLAIN QUERY PLAN` on SQLite,
//! `EXPLAIN` with sequential scans priced out on PostgreSQL) over the migrated schema.

use crate::common::on_both_backends;
use countersign::storage::{Backend, CaseKey, PER_CASE_QUERIES};
use sqlx::Row;

/// The plan's lines for `sql`, keyed by a sample value.
async fn plan(engine: &countersign::engine::Engine, sql: &str, key: CaseKey) -> Vec<String> {
    let mut tx = engine.db().pool.begin().await.unwrap();
    let explain = match engine.db().backend {
        Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
        Backend::Postgres => {
            // On empty tables PostgreSQL rightly prefers reading the table; priced out, a
            // sequential scan is still chosen when it is the only way, which is what we catch.
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await
                .unwrap();
            format!("EXPLAIN {sql}")
        }
    };
    let query = sqlx::query(sqlx::AssertSqlSafe(explain));
    let query = match key {
        CaseKey::Id => query.bind(1_i64),
        CaseKey::Text => query.bind("CS-2026-000001"),
    };
    let rows = query.fetch_all(&mut *tx).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let column = match engine.db().backend {
        Backend::Sqlite => 3,
        Backend::Postgres => 0,
    };
    rows.iter().map(|r| r.try_get::<String, _>(column).unwrap()).collect()
}

/// A plan line that reads a whole table (or a whole index) rather than the rows it needs.
fn full_scan(backend: Backend, line: &str) -> bool {
    match backend {
        // "SEARCH t USING INDEX …" is a lookup; "SCAN t" (with or without a covering index)
        // reads every row.
        Backend::Sqlite => line.trim_start().starts_with("SCAN "),
        Backend::Postgres => line.contains("Seq Scan"),
    }
}

#[tokio::test]
async fn every_per_case_query_reads_through_an_index() {
    on_both_backends(|engine| async move {
        let mut scans = Vec::new();
        for (name, sql, key) in PER_CASE_QUERIES {
            let lines = plan(&engine, sql, *key).await;
            assert!(!lines.is_empty(), "{name}: no plan");
            for line in lines.iter().filter(|l| full_scan(engine.db().backend, l)) {
                scans.push(format!("{name}: {line}"));
            }
        }
        assert!(
            scans.is_empty(),
            "{:?} reads whole tables:\n{}",
            engine.db().backend,
            scans.join("\n")
        );
    })
    .await;
}

#[tokio::test]
async fn the_check_does_catch_a_query_with_no_index() {
    // The same check on a query no index serves: it must report a scan, or the test above
    // proves nothing.
    on_both_backends(|engine| async move {
        let lines = plan(&engine, "SELECT id FROM case_notes WHERE body = $1", CaseKey::Text).await;
        assert!(
            lines.iter().any(|l| full_scan(engine.db().backend, l)),
            "{:?}: {lines:?}",
            engine.db().backend
        );
    })
    .await;
}
