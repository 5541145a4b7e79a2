//! The event log's hash chains and the daily anchors: appending chained events, sealing events
//! written before the chain, and reading chains back for `countersign audit verify`.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sqlx::{AnyConnection, Row};

use super::batch::multi_row_insert;
use super::{CaseEvent, QueryContext, StorageError, stored_word};
use crate::audit::chain::{Head, StoredEvent, anchor_hash, event_hash};
use crate::domain::EventKind;

/// Event rows per statement: 12 values each.
const EVENTS_PER_STATEMENT: usize = 200;

/// Cases whose chains one statement advances (3 values each) or whose heads it reads (2).
const ADVANCES_PER_STATEMENT: usize = 500;

/// Appends `events` (case id, event; in the order they happened) to their cases' chains, in the
/// caller's transaction. Each case's chain length is advanced first, which on PostgreSQL locks
/// the case row, so that two transactions never number events of one case alike (the unique
/// index on `(case_id, seq)` would refuse the second anyway); on SQLite the write lock is held
/// from BEGIN. `fresh` names the cases whose rows were written just now with their chain's
/// length and time already set (new cases, whose chains start with these events).
pub(super) async fn append_events(
    conn: &mut AnyConnection,
    events: Vec<(i64, CaseEvent)>,
    fresh: &BTreeMap<i64, (i64, i64)>,
) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    // Per case: how many events, and when the last happened. Ordered by case id, so that
    // concurrent writers lock case rows in one order.
    let mut per_case: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (case_id, event) in &events {
        let entry = per_case.entry(*case_id).or_insert((0, event.at));
        entry.0 += 1;
        entry.1 = entry.1.max(event.at);
    }
    // Per case: the next number to give, and the hash to follow. One statement advances
    // every case's chain (a round trip per case cost PostgreSQL ingest a third of its rate),
    // one more reads the heads to follow.
    let cases: Vec<(i64, i64, i64)> = per_case
        .iter()
        .filter(|(id, _)| !fresh.contains_key(id))
        .map(|(&id, &(count, at))| (id, count, at))
        .collect();
    let mut lengths: BTreeMap<i64, i64> = fresh.iter().map(|(&id, &(count, _))| (id, count)).collect();
    for chunk in cases.chunks(ADVANCES_PER_STATEMENT) {
        let values = multi_row_insert(
            super::Backend::of(conn),
            "WITH advance (id, n, at) AS (VALUES",
            3,
            chunk.len(),
            ")",
        );
        let sql = format!(
            "{values} UPDATE cases SET chain_seq = chain_seq + (SELECT n FROM advance WHERE advance.id = cases.id), \
             chain_at = (SELECT at FROM advance WHERE advance.id = cases.id) \
             WHERE id IN (SELECT id FROM advance) RETURNING id, chain_seq"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, count, at) in chunk {
            query = query.bind(*id).bind(*count).bind(*at);
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .context("advancing the cases' event chains")?;
        for row in &rows {
            lengths.insert(
                row.try_get(0).context("advancing the cases' event chains")?,
                row.try_get(1).context("advancing the cases' event chains")?,
            );
        }
    }
    let mut next: BTreeMap<i64, (i64, String)> = BTreeMap::new();
    let mut heads_wanted = Vec::new();
    for (&case_id, &(count, _)) in &per_case {
        let length = lengths.get(&case_id).copied().unwrap_or(count);
        let first = length - count + 1;
        next.insert(case_id, (first, String::new()));
        if first > 1 {
            heads_wanted.push((case_id, first - 1));
        }
    }
    for chunk in heads_wanted.chunks(ADVANCES_PER_STATEMENT) {
        let mut sql = String::from("SELECT case_id, hash FROM case_events WHERE ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!("(case_id = ${} AND seq = ${})", 2 * i + 1, 2 * i + 2));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (case_id, seq) in chunk {
            query = query.bind(*case_id).bind(*seq);
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .context("reading the heads of the cases' event chains")?;
        for row in &rows {
            let case_id: i64 = row.try_get(0).context("reading the heads of the cases' event chains")?;
            let hash: Option<String> = row.try_get(1).context("reading the heads of the cases' event chains")?;
            if let Some(entry) = next.get_mut(&case_id) {
                entry.1 = hash.unwrap_or_default();
            }
        }
    }
    let mut rows = Vec::with_capacity(events.len());
    for (case_id, event) in events {
        let Some((seq, prev)) = next.get_mut(&case_id) else {
            continue;
        };
        let hash = event_hash(case_id, *seq, prev, &event);
        rows.push((case_id, *seq, hash.clone(), event));
        *seq += 1;
        *prev = hash;
    }
    insert_chained(conn, &rows).await
}

/// Inserts events whose place and hash are worked out already.
pub(super) async fn insert_chained(
    conn: &mut AnyConnection,
    rows: &[(i64, i64, String, CaseEvent)],
) -> Result<(), StorageError> {
    for chunk in rows.chunks(EVENTS_PER_STATEMENT) {
        let sql = multi_row_insert(
            super::Backend::of(conn),
            "INSERT INTO case_events (case_id, seq, hash, at, actor, actor_role, kind, transition, from_state, to_state, reason, data) VALUES",
            12,
            chunk.len(),
            "",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (case_id, seq, hash, e) in chunk {
            query = query
                .bind(*case_id)
                .bind(*seq)
                .bind(hash.as_str())
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.actor_role)
                .bind(e.kind.as_str())
                .bind(&e.transition)
                .bind(&e.from_state)
                .bind(&e.to_state)
                .bind(&e.reason)
                .bind(&e.data);
        }
        query.execute(&mut *conn).await.context("writing the event log")?;
    }
    Ok(())
}

const STORED_EVENT_COLUMNS: &str = stored_event_columns!();

fn stored_event(r: &sqlx::any::AnyRow) -> Result<(i64, StoredEvent), sqlx::Error> {
    Ok((
        r.try_get(1)?,
        StoredEvent {
            id: r.try_get(0)?,
            seq: r.try_get(2)?,
            hash: r.try_get(3)?,
            event: CaseEvent {
                at: r.try_get(4)?,
                actor: r.try_get(5)?,
                actor_role: r.try_get(6)?,
                kind: stored_word(r, 7, EventKind::parse)?,
                transition: r.try_get(8)?,
                from_state: r.try_get(9)?,
                to_state: r.try_get(10)?,
                reason: r.try_get(11)?,
                data: r.try_get(12)?,
            },
        },
    ))
}

/// The cases with events not yet sealed: read through a partial index (migration
/// `unsealed_events`) that is empty once every event is sealed, so a start costs nothing.
pub const UNSEALED_EVENTS: &str = "SELECT DISTINCT case_id FROM case_events WHERE hash IS NULL";

/// Hashes events written before the chain existed (the migration numbered them), a batch at a
/// time, in their cases' order; returns how many it sealed. Run at start-up, before anything
/// appends, so that new events follow sealed ones.
pub async fn seal_unsealed_events(conn: &mut AnyConnection) -> Result<u64, StorageError> {
    let cases: Vec<i64> = sqlx::query_scalar(UNSEALED_EVENTS)
        .fetch_all(&mut *conn)
        .await
        .context("finding events to seal")?;
    let mut sealed = 0;
    for case_id in cases {
        let events = chain_of(conn, case_id).await?;
        let mut prev = String::new();
        for stored in events {
            let seq = stored.seq.unwrap_or(0);
            let hash = match stored.hash {
                Some(hash) => hash,
                None => {
                    let hash = event_hash(case_id, seq, &prev, &stored.event);
                    sqlx::query("UPDATE case_events SET hash = $1 WHERE id = $2 AND hash IS NULL")
                        .bind(&hash)
                        .bind(stored.id)
                        .execute(&mut *conn)
                        .await
                        .context("sealing an event")?;
                    sealed += 1;
                    hash
                }
            };
            prev = hash;
        }
    }
    Ok(sealed)
}

/// One case's events as stored, in the order they were written.
pub async fn chain_of(conn: &mut AnyConnection, case_id: i64) -> Result<Vec<StoredEvent>, StorageError> {
    let rows = sqlx::query(super::queries::EVENT_CHAIN_OF_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading a case's event chain")?;
    rows.iter()
        .map(|r| stored_event(r).map(|(_, e)| e))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding a case's event chain")
}

/// A case as the audit sees it: its id, reference and recorded chain length.
#[derive(Debug, Clone)]
pub struct ChainOwner {
    pub case_id: i64,
    pub reference: String,
    pub chain_seq: i64,
}

/// A page of cases (ids above `after`, in id order) and every event of theirs, grouped by case.
pub async fn chains_after(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<(ChainOwner, Vec<StoredEvent>)>, StorageError> {
    let owners = sqlx::query("SELECT id, reference, chain_seq FROM cases WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .context("listing cases to verify")?;
    let owners: Vec<ChainOwner> = owners
        .iter()
        .map(|r| {
            Ok(ChainOwner {
                case_id: r.try_get(0)?,
                reference: r.try_get(1)?,
                chain_seq: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("listing cases to verify")?;
    let (Some(first), Some(last)) = (owners.first(), owners.last()) else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT {STORED_EVENT_COLUMNS} FROM case_events WHERE case_id >= $1 AND case_id <= $2 ORDER BY case_id, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(first.case_id)
        .bind(last.case_id)
        .fetch_all(&mut *conn)
        .await
        .context("reading event chains")?;
    let mut events: BTreeMap<i64, Vec<StoredEvent>> = BTreeMap::new();
    for row in &rows {
        let (case_id, event) = stored_event(row).context("decoding event chains")?;
        events.entry(case_id).or_default().push(event);
    }
    Ok(owners
        .into_iter()
        .map(|owner| {
            let chain = events.remove(&owner.case_id).unwrap_or_default();
            (owner, chain)
        })
        .collect())
}

/// Case ids that have events but no case row (which the foreign key should make impossible).
pub async fn orphaned_chains(conn: &mut AnyConnection) -> Result<Vec<i64>, StorageError> {
    sqlx::query_scalar(
        "SELECT DISTINCT case_id FROM case_events WHERE NOT EXISTS (SELECT 1 FROM cases WHERE cases.id = case_events.case_id)",
    )
    .fetch_all(&mut *conn)
    .await
    .context("looking for events without a case")
}

/// A stored anchor.
#[derive(Debug, Clone)]
pub struct StoredAnchor {
    pub id: i64,
    pub at: i64,
    pub since: i64,
    pub heads_json: String,
    pub prev_hash: Option<String>,
    pub hash: String,
}

/// The last anchor written: when, and its hash (the next one chains to it). `None` before
/// the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAnchor {
    pub at: i64,
    pub hash: String,
}

/// The last anchor, read alone: an anchor carries the heads it vouches for, and the first of a
/// large database is about 100 MB.
pub async fn last_anchor(conn: &mut AnyConnection) -> Result<Option<LastAnchor>, StorageError> {
    let row = sqlx::query("SELECT at, hash FROM audit_anchors ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .context("reading the last audit anchor")?;
    row.map(|r| {
        Ok(LastAnchor {
            at: r.try_get(0)?,
            hash: r.try_get(1)?,
        })
    })
    .transpose()
    .context("decoding the last audit anchor")
}

pub async fn anchors(conn: &mut AnyConnection) -> Result<Vec<StoredAnchor>, StorageError> {
    let rows = sqlx::query("SELECT id, at, since, heads, prev_hash, hash FROM audit_anchors ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .context("reading the audit anchors")?;
    rows.iter()
        .map(|r| {
            Ok(StoredAnchor {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                since: r.try_get(2)?,
                heads_json: r.try_get(3)?,
                prev_hash: r.try_get(4)?,
                hash: r.try_get(5)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the audit anchors")
}

/// Writes an anchor: the head of every chain that grew at or after `since`, chained to the
/// anchor before (`prev_hash`, from [`last_anchor`] in the same transaction). Returns the new
/// anchor (its hash is what to keep a copy of elsewhere).
pub async fn write_anchor(
    conn: &mut AnyConnection,
    since: i64,
    prev_hash: Option<String>,
    now: i64,
) -> Result<StoredAnchor, StorageError> {
    // Streamed, row by row: the first anchor of a database holds every case's head (a
    // million rows), and the rows themselves are several times the size of the heads.
    let heads: Vec<Head> = sqlx::query(
        "SELECT c.id, c.chain_seq, e.hash FROM cases c JOIN case_events e ON e.case_id = c.id AND e.seq = c.chain_seq \
         WHERE c.chain_at >= $1 AND c.chain_seq > 0 ORDER BY c.id",
    )
    .bind(since)
    .fetch(&mut *conn)
    .and_then(|r| async move {
        Ok(Head {
            case_id: r.try_get(0)?,
            seq: r.try_get(1)?,
            hash: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        })
    })
    .try_collect()
    .await
    .context("reading the chains' heads")?;
    let heads_json = serde_json::to_string(&heads).unwrap_or_else(|_| "[]".into());
    let hash = anchor_hash(now, since, &heads_json, prev_hash.as_deref().unwrap_or(""));
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO audit_anchors (at, since, heads, prev_hash, hash) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(now)
    .bind(since)
    .bind(&heads_json)
    .bind(prev_hash.as_deref())
    .bind(&hash)
    .fetch_one(&mut *conn)
    .await
    .context("writing an audit anchor")?;
    Ok(StoredAnchor {
        id,
        at: now,
        since,
        heads_json,
        prev_hash,
        hash,
    })
}

/// Hashes of the events at given places (case id, seq), for checking an anchor's heads.
pub async fn event_hash_at(conn: &mut AnyConnection, case_id: i64, seq: i64) -> Result<Option<String>, StorageError> {
    Ok(
        sqlx::query_scalar::<_, Option<String>>("SELECT hash FROM case_events WHERE case_id = $1 AND seq = $2")
            .bind(case_id)
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await
            .context("reading an anchored event")?
            .flatten(),
    )
}

/// A case's events as its hash chain stores them, with the chain's length as the case row
/// records it: what checking the chain needs, and the case's event list besides.
pub struct CaseChain {
    pub events: Vec<StoredEvent>,
    pub recorded_length: i64,
}

/// Reads a case's chain and its recorded length (see [`CaseChain`]).
pub async fn read_case_chain(conn: &mut AnyConnection, case_id: i64) -> Result<CaseChain, StorageError> {
    Ok(CaseChain {
        events: chain_of(conn, case_id).await?,
        recorded_length: chain_length(conn, case_id).await?,
    })
}

/// How long the case row says its event chain is.
pub async fn chain_length(conn: &mut AnyConnection, case_id: i64) -> Result<i64, StorageError> {
    sqlx::query_scalar(super::queries::CHAIN_LENGTH_OF_CASE)
        .bind(case_id)
        .fetch_one(&mut *conn)
        .await
        .context("reading a case's chain length")
}
