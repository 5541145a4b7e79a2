//! Writes synthetic cases ([`crate::seed`]) in bulk: multi-row inserts, one transaction per
//! batch. Only `countersign dev seed` and the reports' benchmark call it.

use sqlx::{AnyConnection, Row};

use super::batch::multi_row_insert;
use super::{QueryContext, StorageError};
use crate::seed::SeedCase;

/// Case rows per statement (14 values each) and event rows (10 values each): well inside
/// both databases' limits on bound values.
const CASES_PER_STATEMENT: usize = 200;
const EVENTS_PER_STATEMENT: usize = 500;

/// The stored email every synthetic case points at (a case needs one): made once.
pub async fn seed_origin_message(conn: &mut AnyConnection, now: i64) -> Result<i64, StorageError> {
    sqlx::query(
        "INSERT INTO raw_messages (dedup_key, sha256, source, received_at, sender_auth, size_bytes) \
         VALUES ('seed:synthetic', 'synthetic', 'seed', $1, '{}', 0) ON CONFLICT (dedup_key) DO NOTHING",
    )
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("storing the synthetic cases' email")?;
    sqlx::query_scalar("SELECT id FROM raw_messages WHERE dedup_key = 'seed:synthetic'")
        .fetch_one(&mut *conn)
        .await
        .context("finding the synthetic cases' email")
}

/// Inserts `cases` and their state moves (in the caller's transaction).
/// Brings the query planner's statistics up to date (after a bulk load).
pub async fn refresh_statistics(conn: &mut AnyConnection) -> Result<(), StorageError> {
    sqlx::query("ANALYZE")
        .execute(&mut *conn)
        .await
        .context("refreshing the planner's statistics")?;
    Ok(())
}

pub async fn insert_seeded(conn: &mut AnyConnection, cases: &[SeedCase], origin: i64) -> Result<(), StorageError> {
    for chunk in cases.chunks(CASES_PER_STATEMENT) {
        let sql = multi_row_insert(
            "INSERT INTO cases (reference, workflow, state, version, fields, findings, org_ods_code, org_name, sender, origin_message_id, created_at, updated_at, due_at, recorded) VALUES",
            14,
            chunk.len(),
            " RETURNING id, reference",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for case in chunk {
            let updated = case.moves.last().map_or(case.created_at, |m| m.at);
            query = query
                .bind(case.reference.as_str())
                .bind(case.workflow)
                .bind(case.state.as_str())
                .bind(case.moves.len() as i64)
                .bind("{}")
                .bind(case.findings_json.as_str())
                .bind(case.ods_code.as_str())
                .bind(case.org_name.as_str())
                .bind("practice@nhs.net")
                .bind(origin)
                .bind(case.created_at)
                .bind(updated)
                .bind(case.due_at)
                .bind("{}");
        }
        let rows = query.fetch_all(&mut *conn).await.context("storing synthetic cases")?;
        let mut ids = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).context("reading a synthetic case's id")?;
            let reference: String = row.try_get(1).context("reading a synthetic case's id")?;
            ids.insert(reference, id);
        }
        let events: Vec<(i64, &crate::seed::SeedMove)> = chunk
            .iter()
            .filter_map(|case| ids.get(&case.reference).map(|id| (*id, case)))
            .flat_map(|(id, case)| case.moves.iter().map(move |m| (id, m)))
            .collect();
        for events in events.chunks(EVENTS_PER_STATEMENT) {
            let sql = multi_row_insert(
                "INSERT INTO case_events (case_id, at, actor, actor_role, kind, transition, from_state, to_state, reason, data) VALUES",
                10,
                events.len(),
                "",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, m) in events {
                query = query
                    .bind(*id)
                    .bind(m.at)
                    .bind(m.actor.as_str())
                    .bind(m.actor_role)
                    .bind(m.kind.as_str())
                    .bind(m.transition)
                    .bind(m.from_state.as_deref())
                    .bind(m.to_state.as_str())
                    .bind(None::<String>)
                    .bind(None::<String>);
            }
            query
                .execute(&mut *conn)
                .await
                .context("storing synthetic state moves")?;
        }
    }
    Ok(())
}

/// The highest synthetic case number so far, so that a second seeding numbers on from it.
pub async fn seeded_count(conn: &mut AnyConnection) -> Result<i64, StorageError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM cases WHERE reference LIKE 'SD-%'")
        .fetch_one(&mut *conn)
        .await
        .context("counting synthetic cases")
}
