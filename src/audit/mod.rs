//! The tamper-evident event log. Every case's events form a hash chain ([`chain`]): each event
//! carries its number in the case and a hash over its contents and the hash before it. Once a
//! day an anchor records the head of every chain that grew, chained to the anchor before, so
//! that deleting a whole case (its events and its row) shows too. `countersign audit verify`
//! checks all of it and says where anything was edited, deleted or reordered.
//!
//! What this protects against: a change to the log made around the service (a database
//! console, a restored backup) is found. Someone able to rewrite the database can recompute
//! every hash, so the anchors' hashes are also written to the service log, and the README asks
//! operators to keep the latest one somewhere the database's administrators cannot write.

pub mod chain;

use std::collections::BTreeMap;

use crate::storage::{self, Db, StorageError};
use chain::{Head, anchor_hash, check_chain};

/// Chains that grew less than this long before an anchor's `since` are listed again: a
/// transaction that started before the last anchor may have committed after it.
pub const ANCHOR_OVERLAP_MS: i64 = 3_600_000;

/// Cases read per round trip while verifying.
const CASES_PER_PAGE: i64 = 1_000;

/// One problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The case reference (or the case id, for a case whose row is gone), or `anchor #n`.
    pub place: String,
    pub problem: String,
}

/// What `audit verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub cases: u64,
    pub events: u64,
    pub anchors: u64,
    /// The newest anchor's hash: compare it with the copy kept elsewhere.
    pub latest_anchor: Option<String>,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// One case's chain, checked: what the case page, the API and the evidence pack show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ChainVerdict {
    /// Every event follows the one before, none is missing, none was altered.
    pub intact: bool,
    pub events: usize,
    /// Where the chain is broken, when it is.
    pub problems: Vec<String>,
}

/// Checks the chain of case `case_id` (its events, and the length its row records).
pub async fn case_chain(conn: &mut sqlx::AnyConnection, case_id: i64) -> Result<ChainVerdict, StorageError> {
    let chain = storage::read_case_chain(conn, case_id).await?;
    Ok(verdict(case_id, chain.recorded_length, &chain.events))
}

/// The verdict on the chain of case `case_id`, from its events and the length its row
/// records (a case file holds both: see [`storage::CaseFile`]).
pub fn verdict(case_id: i64, recorded: i64, chain: &[chain::StoredEvent]) -> ChainVerdict {
    let problems: Vec<String> = check_chain(case_id, recorded, chain)
        .iter()
        .map(ToString::to_string)
        .collect();
    ChainVerdict {
        intact: problems.is_empty(),
        events: chain.len(),
        problems,
    }
}

/// Hashes events written before the chain existed. Run at start-up.
pub async fn seal_unsealed(db: &Db) -> Result<u64, StorageError> {
    let mut tx = db.begin_write().await.map_err(|source| StorageError::Query {
        context: "starting to seal the event log",
        source,
    })?;
    let sealed = storage::seal_unsealed_events(&mut tx).await?;
    tx.commit().await.map_err(|source| StorageError::Query {
        context: "sealing the event log",
        source,
    })?;
    Ok(sealed)
}

/// Writes today's anchor: every chain that grew since the last anchor (with an overlap).
pub async fn write_anchor(db: &Db, now: i64) -> Result<storage::StoredAnchor, StorageError> {
    let mut tx = db.begin_bulk_write().await.map_err(|source| StorageError::Query {
        context: "starting an audit anchor",
        source,
    })?;
    let last = storage::last_anchor(&mut tx).await?;
    let since = last.as_ref().map_or(0, |last| (last.at - ANCHOR_OVERLAP_MS).max(0));
    let anchor = storage::write_anchor(&mut tx, since, last.map(|last| last.hash), now).await?;
    tx.commit().await.map_err(|source| StorageError::Query {
        context: "writing an audit anchor",
        source,
    })?;
    tracing::info!(anchor = anchor.id, hash = %anchor.hash, "audit log anchored");
    Ok(anchor)
}

/// Checks every case's chain, the anchors' own chain, and that every head an anchor vouches
/// for is still in the log.
pub async fn verify(db: &Db) -> Result<VerifyReport, StorageError> {
    let mut conn = db.pool.acquire().await.map_err(|source| StorageError::Query {
        context: "connecting to verify the event log",
        source,
    })?;
    let mut report = VerifyReport::default();

    // The anchors: their own chain, and the heads they vouch for, by case.
    let anchors = storage::anchors(&mut conn).await?;
    let mut vouched: BTreeMap<i64, Vec<(i64, Head)>> = BTreeMap::new();
    let mut prev = String::new();
    for anchor in &anchors {
        let place = format!("anchor #{}", anchor.id);
        if anchor.prev_hash.as_deref().unwrap_or("") != prev {
            report.findings.push(Finding {
                place: place.clone(),
                problem: "does not follow the anchor before it: an anchor was deleted or replaced".into(),
            });
        }
        let expected = anchor_hash(
            anchor.at,
            anchor.since,
            &anchor.heads_json,
            anchor.prev_hash.as_deref().unwrap_or(""),
        );
        if expected != anchor.hash {
            report.findings.push(Finding {
                place: place.clone(),
                problem: "was altered: its contents do not match its hash".into(),
            });
        }
        match serde_json::from_str::<Vec<Head>>(&anchor.heads_json) {
            Ok(heads) => {
                for head in heads {
                    vouched.entry(head.case_id).or_default().push((anchor.id, head));
                }
            }
            Err(e) => report.findings.push(Finding {
                place,
                problem: format!("its list of chain heads cannot be read: {e}"),
            }),
        }
        prev = anchor.hash.clone();
    }
    report.anchors = anchors.len() as u64;
    report.latest_anchor = anchors.last().map(|a| a.hash.clone());

    // Every case's chain, a page of cases at a time.
    let mut after = 0;
    loop {
        let page = storage::chains_after(&mut conn, after, CASES_PER_PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.case_id;
        for (owner, events) in page {
            report.cases += 1;
            report.events += events.len() as u64;
            for broken in check_chain(owner.case_id, owner.chain_seq, &events) {
                report.findings.push(Finding {
                    place: owner.reference.clone(),
                    problem: broken.to_string(),
                });
            }
            if let Some(heads) = vouched.remove(&owner.case_id) {
                for (anchor, head) in heads {
                    let found = events
                        .iter()
                        .find(|e| e.seq == Some(head.seq))
                        .and_then(|e| e.hash.as_deref());
                    if found != Some(head.hash.as_str()) {
                        report.findings.push(Finding {
                            place: owner.reference.clone(),
                            problem: anchored_problem(anchor, &head, found.is_some()),
                        });
                    }
                }
            }
        }
    }
    // Heads vouched for whose case is gone altogether.
    for (case_id, heads) in vouched {
        let Some((anchor, head)) = heads.first() else { continue };
        report.findings.push(Finding {
            place: format!("case id {case_id}"),
            problem: format!(
                "anchor #{anchor} vouches for {} event(s) of this case, but the case and its log are gone: deleted",
                head.seq
            ),
        });
    }
    for case_id in storage::orphaned_chains(&mut conn).await? {
        report.findings.push(Finding {
            place: format!("case id {case_id}"),
            problem: "the log holds events of a case that does not exist".into(),
        });
    }
    Ok(report)
}

fn anchored_problem(anchor: i64, head: &Head, present: bool) -> String {
    let seq = head.seq;
    if present {
        format!("event #{seq} is not the one anchor #{anchor} vouched for: the log was rewritten")
    } else {
        format!("event #{seq}, vouched for by anchor #{anchor}, is gone: deleted")
    }
}
