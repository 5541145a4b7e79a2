//! Writes synthetic cases ([`crate::seed`]) in bulk: multi-row inserts, one transaction per
//! batch. Only `countersign dev seed` and the reports' benchmark call it.

use sqlx::{AnyConnection, Row};

use super::CaseEvent;
use super::batch::multi_row_insert;
use super::{QueryContext, StorageError};
use crate::audit::chain::event_hash;
use crate::seed::SeedCase;

/// Case rows per statement (16 values each): well inside both databases' limits on bound
/// values.
const CASES_PER_STATEMENT: usize = 200;

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
            super::Backend::of(conn),
            "INSERT INTO cases (reference, workflow, state, version, fields, findings, org_ods_code, org_name, sender, origin_message_id, created_at, updated_at, due_at, recorded, chain_seq, chain_at) VALUES",
            16,
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
                .bind("{}")
                .bind(case.moves.len() as i64)
                .bind(updated);
        }
        let rows = query.fetch_all(&mut *conn).await.context("storing synthetic cases")?;
        let mut ids = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).context("reading a synthetic case's id")?;
            let reference: String = row.try_get(1).context("reading a synthetic case's id")?;
            ids.insert(reference, id);
        }
        // Each linked to its email as the email that opened it, as every real case is: the
        // case page finds a case's emails by these links.
        let links: Vec<(i64, i64, &'static str)> = ids.values().map(|id| (*id, origin, "origin")).collect();
        super::batch::link_messages(conn, &links).await?;
        // Each synthetic case's state moves, chained as the service chains events.
        let mut events = Vec::new();
        for case in chunk {
            let Some(&case_id) = ids.get(&case.reference) else {
                continue;
            };
            let mut prev = String::new();
            for (index, m) in case.moves.iter().enumerate() {
                let seq = index as i64 + 1;
                let event = CaseEvent {
                    transition: m.transition.map(str::to_string),
                    from_state: m.from_state.clone(),
                    to_state: Some(m.to_state.clone()),
                    ..CaseEvent::by(&m.actor, m.actor_role, m.kind, m.at)
                };
                let hash = event_hash(case_id, seq, &prev, &event);
                prev = hash.clone();
                events.push((case_id, seq, hash, event));
            }
        }
        super::audit::insert_chained(conn, &events).await?;
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
