//! The hash chains, pure: how an event and an anchor are hashed, and how a case's stored
//! chain is checked. No I/O; `audit::verify` feeds it what storage reads.

use sha2::{Digest, Sha256};

use crate::storage::CaseEvent;

/// What an event's hash covers, and the version of that definition (so that it can change
/// without making old chains unverifiable).
const EVENT_DOMAIN: &str = "countersign-event-v1";
const ANCHOR_DOMAIN: &str = "countersign-anchor-v1";

/// The hash of event number `seq` of case `case_id`, following `prev` (the hash of event
/// `seq - 1`, or `""` for the first). It covers every column a reader sees, the case and the
/// position, so that an event cannot be edited, moved to another case or moved within its
/// own without its hash (and so the next event's link) failing.
pub fn event_hash(case_id: i64, seq: i64, prev: &str, event: &CaseEvent) -> String {
    // A JSON array is an unambiguous encoding: strings are quoted and escaped, absent
    // values are `null`, so no two different events encode alike.
    let canonical = serde_json::to_vec(&(
        EVENT_DOMAIN,
        case_id,
        seq,
        prev,
        event.at,
        &event.actor,
        &event.actor_role,
        event.kind.as_str(),
        &event.transition,
        &event.from_state,
        &event.to_state,
        &event.reason,
        &event.data,
    ))
    .unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

/// One chain head an anchor vouches for: case `case_id` had `seq` events, the last hashing
/// to `hash`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub case_id: i64,
    pub seq: i64,
    pub hash: String,
}

/// The hash of an anchor: its time, the heads it lists, and the anchor before it.
pub fn anchor_hash(at: i64, since: i64, heads_json: &str, prev: &str) -> String {
    let canonical = serde_json::to_vec(&(ANCHOR_DOMAIN, at, since, heads_json, prev)).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

/// An event as stored: its row id (the order it was written in), its place in its chain and
/// its hash (absent only for an event written before the chain and not sealed yet).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub seq: Option<i64>,
    pub hash: Option<String>,
    pub event: CaseEvent,
}

/// Something wrong with a chain, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The event's contents no longer match its hash: it was edited (or its hash was).
    Edited { seq: i64 },
    /// Events in this range are missing from the chain: deleted.
    Missing { from_seq: i64, to_seq: i64 },
    /// The event stands out of its place: written after `after_seq` but numbered before it.
    OutOfOrder { seq: i64, after_seq: i64 },
    /// Two events claim one place.
    Repeated { seq: i64 },
    /// The event was never hashed (written before the chain, and not sealed).
    Unsealed { id: i64 },
    /// The case row says its chain is `recorded` long, but the events go to `found`.
    LengthMismatch { recorded: i64, found: i64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Edited { seq } => write!(f, "event #{seq} was altered: its contents do not match its hash"),
            Break::Missing { from_seq, to_seq } if from_seq == to_seq => {
                write!(f, "event #{from_seq} is missing: deleted")
            }
            Break::Missing { from_seq, to_seq } => write!(f, "events #{from_seq} to #{to_seq} are missing: deleted"),
            Break::OutOfOrder { seq, after_seq } => {
                write!(f, "event #{seq} is out of order: it is stored after event #{after_seq}")
            }
            Break::Repeated { seq } => write!(f, "event #{seq} appears more than once"),
            Break::Unsealed { id } => write!(f, "event (row {id}) has no hash: it was never sealed"),
            Break::LengthMismatch { recorded, found } => write!(
                f,
                "the case records {recorded} event(s) in its chain, but the log holds {found}"
            ),
        }
    }
}

/// Checks one case's chain: `events` in the order they were stored (row id), `recorded` the
/// chain length the case row holds. Each event is checked against its own stored hash and the
/// stored hash of the event numbered before it, so that one edit is reported at the edit,
/// not at every event after it.
pub fn check_chain(case_id: i64, recorded: i64, events: &[StoredEvent]) -> Vec<Break> {
    let mut breaks = Vec::new();
    let mut by_seq: std::collections::BTreeMap<i64, &StoredEvent> = std::collections::BTreeMap::new();
    let mut highest_so_far = 0;
    for stored in events {
        let (Some(seq), Some(_)) = (stored.seq, stored.hash.as_ref()) else {
            breaks.push(Break::Unsealed { id: stored.id });
            continue;
        };
        if by_seq.insert(seq, stored).is_some() {
            breaks.push(Break::Repeated { seq });
        }
        if seq < highest_so_far {
            breaks.push(Break::OutOfOrder {
                seq,
                after_seq: highest_so_far,
            });
        }
        highest_so_far = highest_so_far.max(seq);
    }
    let mut expected = 1;
    for (&seq, stored) in &by_seq {
        if seq > expected {
            breaks.push(Break::Missing {
                from_seq: expected,
                to_seq: seq - 1,
            });
        }
        expected = seq + 1;
        let stored_hash = stored.hash.as_deref().unwrap_or_default();
        let prev = if seq == 1 {
            Some("")
        } else {
            by_seq.get(&(seq - 1)).and_then(|p| p.hash.as_deref())
        };
        // With the one before missing (reported above) there is nothing to check it against.
        if let Some(prev) = prev
            && event_hash(case_id, seq, prev, &stored.event) != stored_hash
        {
            // The contents were changed, or the hash was recomputed after an edit before it:
            // either way this is the first event whose hash does not hold.
            breaks.push(Break::Edited { seq });
        }
    }
    let found = by_seq.keys().next_back().copied().unwrap_or(0);
    if found < recorded {
        breaks.push(Break::Missing {
            from_seq: found + 1,
            to_seq: recorded,
        });
    } else if found > recorded {
        breaks.push(Break::LengthMismatch { recorded, found });
    }
    breaks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    fn chain(case_id: i64, n: i64) -> Vec<StoredEvent> {
        let mut prev = String::new();
        (1..=n)
            .map(|seq| {
                let event = CaseEvent {
                    reason: Some(format!("step {seq}")),
                    ..CaseEvent::system(EventKind::Claimed, 1_000 * seq)
                };
                let hash = event_hash(case_id, seq, &prev, &event);
                prev = hash.clone();
                StoredEvent {
                    id: 100 + seq,
                    seq: Some(seq),
                    hash: Some(hash),
                    event,
                }
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_has_no_breaks() {
        assert_eq!(check_chain(7, 5, &chain(7, 5)), vec![]);
        assert_eq!(check_chain(7, 0, &[]), vec![]);
    }

    #[test]
    fn an_edit_is_reported_at_the_edited_event_only() {
        let mut events = chain(7, 5);
        events[2].event.reason = Some("approved by someone else".into());
        assert_eq!(check_chain(7, 5, &events), vec![Break::Edited { seq: 3 }]);
    }

    #[test]
    fn an_edit_that_rehashes_the_event_breaks_the_next_link() {
        let mut events = chain(7, 5);
        events[2].event.actor = "mallory".into();
        let prev = events[1].hash.clone().unwrap();
        events[2].hash = Some(event_hash(7, 3, &prev, &events[2].event));
        assert_eq!(check_chain(7, 5, &events), vec![Break::Edited { seq: 4 }]);
    }

    #[test]
    fn a_deletion_is_reported_as_missing_events() {
        let mut events = chain(7, 5);
        events.remove(1);
        assert_eq!(
            check_chain(7, 5, &events),
            vec![Break::Missing { from_seq: 2, to_seq: 2 }]
        );
        let mut events = chain(7, 5);
        events.truncate(3);
        assert_eq!(
            check_chain(7, 5, &events),
            vec![Break::Missing { from_seq: 4, to_seq: 5 }]
        );
    }

    #[test]
    fn a_reordering_is_reported_where_it_is() {
        let mut events = chain(7, 5);
        // Swap the contents of rows 2 and 3: read in stored order, #3 comes before #2.
        let (a, b) = (events[1].clone(), events[2].clone());
        events[1] = StoredEvent { id: a.id, ..b };
        events[2] = StoredEvent { id: events[2].id, ..a };
        assert_eq!(
            check_chain(7, 5, &events),
            vec![Break::OutOfOrder { seq: 2, after_seq: 3 }]
        );
    }

    #[test]
    fn an_event_moved_to_another_case_does_not_verify_there() {
        let events = chain(7, 2);
        assert_eq!(
            check_chain(8, 2, &events),
            vec![Break::Edited { seq: 1 }, Break::Edited { seq: 2 }]
        );
    }

    #[test]
    fn a_chain_longer_than_the_case_records_is_reported() {
        assert_eq!(
            check_chain(7, 3, &chain(7, 4)),
            vec![Break::LengthMismatch { recorded: 3, found: 4 }]
        );
    }

    #[test]
    fn an_unsealed_event_is_reported() {
        let mut events = chain(7, 2);
        events[1].hash = None;
        let breaks = check_chain(7, 2, &events);
        assert!(breaks.contains(&Break::Unsealed { id: 102 }), "{breaks:?}");
    }

    #[test]
    fn hashes_differ_for_every_column() {
        let base = CaseEvent::system(EventKind::Claimed, 1);
        let h = |e: &CaseEvent| event_hash(1, 1, "", e);
        let variants = [
            CaseEvent { at: 2, ..base.clone() },
            CaseEvent {
                actor: "x".into(),
                ..base.clone()
            },
            CaseEvent {
                actor_role: "x".into(),
                ..base.clone()
            },
            CaseEvent {
                kind: EventKind::Created,
                ..base.clone()
            },
            CaseEvent {
                transition: Some("x".into()),
                ..base.clone()
            },
            CaseEvent {
                from_state: Some("x".into()),
                ..base.clone()
            },
            CaseEvent {
                to_state: Some("x".into()),
                ..base.clone()
            },
            CaseEvent {
                reason: Some("x".into()),
                ..base.clone()
            },
            CaseEvent {
                data: Some("x".into()),
                ..base.clone()
            },
            // An absent value and an empty one are different events.
            CaseEvent {
                reason: Some(String::new()),
                ..base.clone()
            },
        ];
        let mut seen = std::collections::BTreeSet::from([h(&base)]);
        for v in &variants {
            assert!(seen.insert(h(v)), "{v:?} hashes like another event");
        }
        assert_ne!(event_hash(1, 1, "", &base), event_hash(1, 2, "", &base));
        assert_ne!(event_hash(1, 1, "", &base), event_hash(1, 1, "ab", &base));
    }
}
