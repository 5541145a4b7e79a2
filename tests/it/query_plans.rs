//! Every query that reads one case's rows finds them through an index, on both backends: the
//! case page once read the whole outbox and every note to show one case, so it slowed as the
//! service aged. The check asks each database for its plan (`EXPLAIN QUERY PLAN` on SQLite,
//! `EXPLAIN` with sequential scans priced out on PostgreSQL) over the migrated schema.

use crate::common::on_both_backends;
use countersign::storage::{self, Backend, CaseKey, PER_CASE_QUERIES};
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

/// The plan's lines for `sql` with `values` bound, sequential scans priced out on PostgreSQL
/// (as in [`plan`]) and the planner settings in `postgres_settings` made too.
async fn plan_with(
    engine: &countersign::engine::Engine,
    sql: &str,
    values: &[&str],
    postgres_settings: &[&str],
) -> Vec<String> {
    let mut tx = engine.db().pool.begin().await.unwrap();
    let (explain, column) = match engine.db().backend {
        Backend::Sqlite => (format!("EXPLAIN QUERY PLAN {sql}"), 3),
        Backend::Postgres => {
            for setting in ["SET LOCAL enable_seqscan = off"].iter().chain(postgres_settings) {
                sqlx::query(sqlx::AssertSqlSafe(*setting))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            (format!("EXPLAIN {sql}"), 0)
        }
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(explain));
    for value in values {
        query = query.bind(*value);
    }
    let rows = query.fetch_all(&mut *tx).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
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

#[tokio::test]
async fn the_next_case_is_read_from_the_due_order_index() {
    // The case page asks for one row of the open queue after the case shown (its "next case").
    // Asked for one row, with statistics gathered, SQLite chose a skip-scan of the state index
    // over every open case due later and sorted them: 5 ms a page at 100,000 cases, the most
    // costly statement of the case page under load. The walk must be the (due_at, id) index,
    // in its order, with no sort.
    on_both_backends(|engine| async move {
        let now = engine.now_ms();
        let seeded = countersign::seed::cases(3000, 1, now, 2, 11);
        crate::common::store_seeded(&engine, &seeded).await;
        engine.clear_due_times_of_closed_cases().await.unwrap();
        let mut conn = engine.db().pool.acquire().await.unwrap();
        storage::refresh_statistics(&mut conn).await.unwrap();
        let terminal = engine.workflows().terminal_states();
        let first = seeded
            .iter()
            .filter(|c| !terminal.contains(&c.state))
            .min_by_key(|c| c.due_at)
            .unwrap();
        let mut query = storage::QueueQuery {
            scope: storage::QueueScope::Open,
            state: "",
            workflow: "",
            finding: "",
            assignee: "",
            user_id: 0,
            overdue_before: None,
            search: "",
            after: (first.due_at.unwrap(), 1),
            terminal_states: terminal,
            limit: 1,
        };
        for limit in [1, 51] {
            query.limit = limit;
            let lines = storage::queue_plan(&mut conn, &query).await.unwrap();
            let plan = lines.join("\n");
            match engine.db().backend {
                Backend::Sqlite => assert!(
                    plan.contains("cases_due_id") && !plan.contains("TEMP B-TREE"),
                    "limit {limit}: {plan}"
                ),
                // PostgreSQL weighs a sort of the few rows it expects in a small table against
                // the walk, and may sort them; it must still find them through the index.
                Backend::Postgres => assert!(
                    plan.contains(" on cases_due_id") || plan.contains("using cases_due_id on cases"),
                    "limit {limit}: {plan}"
                ),
            }
        }
        // And the row it finds is the next one in due order.
        query.limit = 1;
        let next = storage::queue_page(&mut conn, &query).await.unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].due_at >= first.due_at);
    })
    .await;
}

#[tokio::test]
async fn the_queue_counts_each_open_case_once_under_each_of_its_findings() {
    // The database counts the findings (JSON functions differ by backend): checked against a
    // count made here of the same seeded cases, and a case holding one finding twice counts once.
    on_both_backends(|engine| async move {
        let now = engine.now_ms();
        let mut seeded = countersign::seed::cases(600, 1, now, 1, 5);
        let open = engine.workflows().open_states();
        let twice = seeded.iter_mut().find(|c| open.contains(&c.state)).unwrap();
        twice.findings_json =
            r#"[{"code":"declaration_not_ticked","message":"a"},{"code":"declaration_not_ticked","message":"b"}]"#
                .into();
        crate::common::store_seeded(&engine, &seeded).await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let mut expected = std::collections::BTreeMap::<String, usize>::new();
        for case in seeded.iter().filter(|c| open.contains(&c.state)) {
            let findings: Vec<serde_json::Value> = serde_json::from_str(&case.findings_json).unwrap();
            let mut codes: Vec<&str> = findings.iter().map(|f| f["code"].as_str().unwrap()).collect();
            codes.sort();
            codes.dedup();
            for code in codes {
                *expected.entry(code.to_string()).or_default() += 1;
            }
        }
        assert!(
            expected.len() >= 2,
            "the seed holds open cases with findings: {expected:?}"
        );
        let counted = storage::finding_counts(&mut conn, open).await.unwrap();
        assert_eq!(counted, expected, "{:?}", engine.db().backend);
        assert!(storage::finding_counts(&mut conn, &[]).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_start_finds_unsealed_events_without_reading_every_event() {
    // Every start asks for the events not yet sealed into a chain; it must not read them all.
    on_both_backends(|engine| async move {
        let lines = plan_with(&engine, storage::UNSEALED_EVENTS, &[], &[]).await;
        // Through the partial index (SQLite "scans" it, but it holds only unsealed events).
        let plan = lines.join("\n");
        assert!(
            plan.contains("case_events_unsealed"),
            "{:?}: {plan}",
            engine.db().backend
        );
    })
    .await;
}

#[tokio::test]
async fn the_unfiltered_queue_is_prepared_once_with_one_plan_and_a_filtered_view_is_not() {
    // PostgreSQL planned the queue afresh on every page (more time than running it). The
    // unfiltered queue is now a prepared statement that runs on its one generic plan; a
    // filtered view is planned for its own values, so it is never kept. (SQLite has no plan
    // cache to look into; its queue reads are covered by the plan test above.)
    on_both_backends(|engine| async move {
        if engine.db().backend == Backend::Sqlite {
            return;
        }
        let now = engine.now_ms();
        let seeded = countersign::seed::cases(300, 1, now, 1, 3);
        crate::common::store_seeded(&engine, &seeded).await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let terminal = engine.workflows().terminal_states();
        let mut query = storage::QueueQuery {
            scope: storage::QueueScope::Open,
            state: "",
            workflow: "",
            finding: "",
            assignee: "",
            user_id: 0,
            overdue_before: None,
            search: "",
            after: (-1, 0),
            terminal_states: terminal,
            limit: 51,
        };
        // PostgreSQL plans a prepared statement for its values five times, then weighs its
        // generic plan.
        for _ in 0..8 {
            storage::queue_page(&mut conn, &query).await.unwrap();
        }
        query.state = "needs_review";
        storage::queue_page(&mut conn, &query).await.unwrap();
        let kept: Vec<(String, i64)> = sqlx::query_as(
            "SELECT statement, generic_plans FROM pg_prepared_statements WHERE statement LIKE 'SELECT c.id, c.reference%'",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(kept.len(), 1, "only the unfiltered queue is kept: {kept:?}");
        assert!(!kept[0].0.contains("c.state = $"), "{kept:?}");
        assert!(kept[0].1 >= 3, "the queue ran on its generic plan: {kept:?}");
    })
    .await;
}

#[tokio::test]
async fn the_open_cases_are_read_from_the_state_index_alone() {
    // The dashboard, the reports' backlog and /metrics read every open case. Through an index
    // that did not carry the columns they need, PostgreSQL fetched each case's row from the
    // table: 18,000 pages and 170 ms of a core at a million cases, every 15 s on each instance.
    // The (state, due_at) index now carries them: the plan must read it alone.
    on_both_backends(|engine| async move {
        let open: Vec<&str> = engine.workflows().open_states().iter().map(String::as_str).collect();
        // Priced out, the table and a bitmap of it leave the index scan, which reads the index
        // alone only if it holds every column the statement needs.
        let statement = storage::open_cases_statement(open.len());
        let plan = plan_with(&engine, &statement, &open, &["SET LOCAL enable_bitmapscan = off"]).await;
        let plan = plan.join("\n");
        match engine.db().backend {
            Backend::Sqlite => assert!(plan.contains("USING COVERING INDEX cases_state_due"), "{plan}"),
            Backend::Postgres => assert!(
                plan.contains("Index Only Scan using cases_state_due on cases"),
                "{plan}"
            ),
        }
    })
    .await;
}
