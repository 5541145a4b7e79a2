//! Synthetic history for the managers' reports: `countersign dev seed --cases N` and the
//! reports' benchmark fill a database with years of realistic cases, each with the state
//! moves a real one would have (checks, send-backs and replies, authorisation by one
//! caseworker and provisioning by another, rejections), ending open where "now" cuts it off.
//! Pure: [`crate::storage::insert_seeded`] writes what this makes. Deterministic for a seed.

use crate::domain::EventKind;
use crate::policy::FindingCode;
use crate::workflow::wellknown;

/// One synthetic case and its state moves, in order.
#[derive(Debug, Clone)]
pub struct SeedCase {
    pub reference: String,
    pub workflow: &'static str,
    pub state: String,
    pub ods_code: String,
    pub org_name: String,
    pub findings_json: String,
    pub created_at: i64,
    pub due_at: Option<i64>,
    pub moves: Vec<SeedMove>,
}

/// One state move: when, by whom, by which transition, to which state.
#[derive(Debug, Clone)]
pub struct SeedMove {
    pub at: i64,
    pub actor: String,
    pub actor_role: &'static str,
    pub kind: crate::domain::EventKind,
    pub transition: Option<&'static str>,
    pub from_state: Option<String>,
    pub to_state: String,
}

/// A small, fast, deterministic generator (SplitMix64): no need for cryptographic quality.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const ORGANISATIONS: u64 = 2_000;
const CASEWORKERS: u64 = 8;
/// The findings synthetic cases are held for: real codes, so every seeded case reads back.
const FINDINGS: &[FindingCode] = &[
    FindingCode::SignatoryRoleNotAllowed,
    FindingCode::RequiredFieldMissing,
    FindingCode::EmailNotNhs,
    FindingCode::OdsCodeMalformed,
    FindingCode::DeclarationNotTicked,
];

/// `count` cases received between `now - years` and `now`, numbered from `first_number`.
pub fn cases(count: usize, first_number: u64, now_ms: i64, years: u32, seed: u64) -> Vec<SeedCase> {
    let mut random = Random(seed);
    let span = i64::from(years.max(1)) * 365 * DAY;
    (0..count as u64)
        .map(|i| one_case(&mut random, first_number + i, now_ms, span))
        .collect()
}

fn one_case(random: &mut Random, number: u64, now: i64, span: i64) -> SeedCase {
    let workflow = match random.below(100) {
        0..60 => "primary_user_gp",
        60..85 => "primary_user_org",
        _ => "additional_permissions",
    };
    let created_at = now - (random.below(span as u64) as i64);
    let org = random.below(ORGANISATIONS);
    let worker = |random: &mut Random| format!("caseworker{}@nhs.net", random.below(CASEWORKERS) + 1);
    let mut moves = Vec::new();
    let mut at = created_at;
    let mut state = wellknown::RECEIVED.to_string();
    let push = |moves: &mut Vec<SeedMove>,
                at: i64,
                actor: String,
                transition: Option<&'static str>,
                state: &mut String,
                to: &str| {
        moves.push(SeedMove {
            at,
            actor_role: if actor == "system" { "system" } else { "caseworker" },
            actor,
            kind: if transition.is_some() {
                EventKind::Transition
            } else {
                EventKind::Created
            },
            transition,
            from_state: transition.map(|_| state.clone()),
            to_state: to.to_string(),
        });
        *state = to.to_string();
    };
    push(&mut moves, at, "system".into(), None, &mut state, wellknown::RECEIVED);
    let held = random.chance(30);
    let findings: Vec<&str> = if held {
        (0..=random.below(2))
            .map(|_| FINDINGS[random.below(FINDINGS.len() as u64) as usize].as_str())
            .collect()
    } else {
        Vec::new()
    };
    if held {
        push(
            &mut moves,
            at,
            "system".into(),
            Some("hold_for_review"),
            &mut state,
            wellknown::NEEDS_REVIEW,
        );
        let mut rounds = 0;
        while random.chance(if rounds == 0 { 45 } else { 25 }) {
            rounds += 1;
            at += random.below(2 * DAY as u64) as i64 + HOUR;
            push(
                &mut moves,
                at,
                worker(random),
                Some("request_information"),
                &mut state,
                wellknown::AWAITING_INFORMATION,
            );
            if random.chance(15) {
                break;
            }
            at += random.below(6 * DAY as u64) as i64 + HOUR;
            push(
                &mut moves,
                at,
                "system".into(),
                Some("information_received"),
                &mut state,
                wellknown::NEEDS_REVIEW,
            );
        }
        if state == wellknown::NEEDS_REVIEW {
            at += random.below(2 * DAY as u64) as i64 + HOUR;
            if random.chance(15) {
                push(&mut moves, at, worker(random), Some("reject"), &mut state, "rejected");
            } else {
                push(
                    &mut moves,
                    at,
                    worker(random),
                    Some("accept"),
                    &mut state,
                    wellknown::VALIDATED,
                );
            }
        }
    } else {
        push(
            &mut moves,
            at,
            "system".into(),
            Some("validate"),
            &mut state,
            wellknown::VALIDATED,
        );
    }
    if state == wellknown::VALIDATED {
        at += random.below(4 * DAY as u64) as i64 + HOUR;
        push(
            &mut moves,
            at,
            worker(random),
            Some("authorise"),
            &mut state,
            wellknown::AUTHORISED,
        );
        at += random.below(2 * DAY as u64) as i64 + HOUR;
        push(
            &mut moves,
            at,
            worker(random),
            Some("provision"),
            &mut state,
            wellknown::PROVISIONED,
        );
    }
    // "Now" cuts the story off: a recent case is still open where it had got to.
    moves.retain(|m| m.at <= now);
    let state = moves
        .last()
        .map(|m| m.to_state.clone())
        .unwrap_or_else(|| wellknown::RECEIVED.into());
    let findings_json = serde_json::to_string(
        &findings
            .iter()
            .map(|code| serde_json::json!({ "code": code, "message": "synthetic" }))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| "[]".into());
    let year = chrono::DateTime::from_timestamp_millis(created_at).map_or(2026, |t| chrono::Datelike::year(&t));
    SeedCase {
        reference: format!("SD-{year}-{number:07}"),
        workflow,
        state,
        ods_code: format!("S{org:05}"),
        org_name: format!("Synthetic Practice {org}"),
        findings_json,
        created_at,
        due_at: Some(created_at + 7 * DAY),
        moves,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeded_cases_follow_the_workflow_and_stop_at_now() {
        let now = 1_800_000_000_000;
        let cases = super::cases(2_000, 1, now, 2, 7);
        let workflows = crate::workflow::shipped();
        for case in &cases {
            let def = workflows.get(case.workflow).unwrap();
            assert!(case.moves.iter().all(|m| m.at <= now && m.at >= case.created_at));
            assert_eq!(case.moves[0].to_state, "received");
            // Every move is one the workflow allows from the state before it.
            for pair in case.moves.windows(2) {
                let transition = pair[1].transition.unwrap();
                let def_transition = def.transitions.iter().find(|t| t.name == transition).unwrap();
                assert!(
                    def_transition.from.contains(&pair[0].to_state),
                    "{transition} from {}",
                    pair[0].to_state
                );
                assert_eq!(def_transition.to, pair[1].to_state);
            }
            assert_eq!(case.state, case.moves.last().unwrap().to_state);
        }
        let open = cases
            .iter()
            .filter(|c| !matches!(c.state.as_str(), "provisioned" | "rejected"))
            .count();
        assert!(
            open > 0 && open < cases.len() / 10,
            "a few recent cases are open: {open}"
        );
        // Deterministic for a seed.
        assert_eq!(
            super::cases(5, 1, now, 2, 7)[4].created_at,
            super::cases(5, 1, now, 2, 7)[4].created_at
        );
    }
}
