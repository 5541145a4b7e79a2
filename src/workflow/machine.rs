//! The state machine, as pure functions: given a workflow, a case's state and who is acting,
//! decide whether a transition may fire and what it sets in motion. No I/O here; the engine
//! applies the plan inside one transaction.

use super::definition::{ActorRole, FourEyesPart, TimerDef, TransitionDef, WorkflowDef};

/// Why a transition was refused. Each says what was asked and what would be allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("workflow `{workflow}` has no state `{state}`")]
    UnknownState { workflow: String, state: String },
    #[error("the case is {from}; it cannot move to {to} (allowed from here: {allowed})")]
    NotAllowedFromState { from: String, to: String, allowed: String },
    #[error("a {role} may not move a case from {from} to {to} (that is for: {allowed_roles})")]
    RoleNotAllowed {
        role: String,
        from: String,
        to: String,
        allowed_roles: String,
    },
    #[error("moving the case to {to} needs a reason")]
    ReasonRequired { to: String },
    #[error("moving the case to {to} needs `{value}` to be recorded")]
    MissingRecordedValue { to: String, value: String },
    #[error("“{given}” is not a valid {label}. {hint}")]
    RecordedValueInvalid { label: String, given: String, hint: String },
    #[error("four-eyes check: {actor} already {did} this case, so someone else must authorise it")]
    FourEyes { actor: String, did: String },
}

/// Who is asking for a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: ActorRole,
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            name: "system".into(),
            role: ActorRole::System,
        }
    }
}

/// What a caller wants: a target state, with the reason and any recorded values.
#[derive(Debug, Clone, Default)]
pub struct TransitionRequest {
    pub to: String,
    pub reason: Option<String>,
    /// Values the transition records, e.g. `open_exeter_user_id`.
    pub recorded: Vec<(String, String)>,
    /// The case version the actor saw (a page's hidden field): checked inside the
    /// transaction, so that of two people acting on one page exactly one wins. `None` for
    /// the system and the command line, which act on the case as it is.
    pub expected_version: Option<i64>,
    /// For "mark as duplicate": the reference of the case this one repeats, linked in the
    /// same transaction as the state change.
    pub duplicate_of: Option<String>,
    /// A caseworker's own words for the email the move sends, in place of its template's body
    /// (after previewing it); the subject stays the template's.
    pub mail_text: Option<String>,
}

/// What the engine must do, all in one transaction, for an allowed transition.
#[derive(Debug, Clone)]
pub struct TransitionPlan<'w> {
    pub transition: &'w TransitionDef,
    pub from: String,
    pub to: String,
    /// Timers to cancel: every pending timer of the case, since they belong to the old state.
    pub cancel_pending_timers: bool,
    /// Timers to arm for the new state.
    pub arm_timers: Vec<&'w TimerDef>,
    /// The template to queue for the sender, if any.
    pub notify_template: Option<&'w str>,
}

/// The people who have taken the decisions that four-eyes keeps apart from authorisation.
#[derive(Debug, Clone, Default)]
pub struct CaseHistory {
    /// Actors who accepted the case or keyed its fields by hand.
    pub accepted_or_keyed_by: Vec<String>,
}

/// Whether four-eyes keeps `actor` from taking `transition`: it authorises, and they accepted
/// or keyed the case themselves. (The case page offers no action this forbids.)
pub fn four_eyes_forbids(
    workflow: &WorkflowDef,
    transition: &TransitionDef,
    actor: &Actor,
    history: &CaseHistory,
) -> bool {
    workflow.four_eyes
        && transition.four_eyes == Some(FourEyesPart::Authorises)
        && actor.role != ActorRole::System
        && history.accepted_or_keyed_by.iter().any(|name| name == &actor.name)
}

/// Decides whether `actor` may move a case in `from` to `request.to`.
pub fn plan_transition<'w>(
    workflow: &'w WorkflowDef,
    from: &str,
    request: &TransitionRequest,
    actor: &Actor,
    history: &CaseHistory,
) -> Result<TransitionPlan<'w>, TransitionError> {
    let to = request.to.as_str();
    if workflow.state(to).is_none() {
        return Err(TransitionError::UnknownState {
            workflow: workflow.name.clone(),
            state: to.to_string(),
        });
    }
    if workflow.state(from).is_none() {
        return Err(TransitionError::UnknownState {
            workflow: workflow.name.clone(),
            state: from.to_string(),
        });
    }
    let candidates: Vec<&TransitionDef> = workflow.transitions_from(from).filter(|t| t.to == to).collect();
    if candidates.is_empty() {
        let mut allowed: Vec<&str> = workflow.transitions_from(from).map(|t| t.to.as_str()).collect();
        allowed.sort();
        allowed.dedup();
        return Err(TransitionError::NotAllowedFromState {
            from: from.to_string(),
            to: to.to_string(),
            allowed: if allowed.is_empty() {
                "nowhere, it is final".to_string()
            } else {
                allowed.join(", ")
            },
        });
    }
    let permits = |t: &TransitionDef| actor.role.is_among(&t.by);
    let Some(transition) = candidates.iter().copied().find(|t| permits(t)) else {
        let mut roles: Vec<&str> = candidates
            .iter()
            .flat_map(|t| t.by.iter().map(|r| r.as_str()))
            .collect();
        roles.sort();
        roles.dedup();
        return Err(TransitionError::RoleNotAllowed {
            role: actor.role.as_str().to_string(),
            from: from.to_string(),
            to: to.to_string(),
            allowed_roles: roles.join(", "),
        });
    };
    if transition.reason_required && request.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(TransitionError::ReasonRequired { to: to.to_string() });
    }
    for value in &transition.records {
        let Some((_, given)) = request
            .recorded
            .iter()
            .find(|(k, v)| k == value && !v.trim().is_empty())
        else {
            return Err(TransitionError::MissingRecordedValue {
                to: to.to_string(),
                value: workflow.recorded_def(value).label,
            });
        };
        let def = workflow.recorded_def(value);
        if def.check(given).is_none() {
            return Err(TransitionError::RecordedValueInvalid {
                label: def.label,
                given: given.trim().chars().take(60).collect(),
                hint: def.hint,
            });
        }
    }
    if four_eyes_forbids(workflow, transition, actor, history) {
        return Err(TransitionError::FourEyes {
            actor: actor.name.clone(),
            did: "accepted or keyed".into(),
        });
    }
    Ok(TransitionPlan {
        transition,
        from: from.to_string(),
        to: to.to_string(),
        cancel_pending_timers: true,
        arm_timers: workflow.timers.iter().filter(|t| t.state == to).collect(),
        notify_template: transition.template.as_deref(),
    })
}

/// Whether `event` took a decision that four-eyes keeps apart from authorisation in
/// `workflow`: a person accepted the case (a transition marked `four_eyes = "accepts"`) or
/// keyed its fields by hand.
pub fn is_first_pair_of_eyes(workflow: &WorkflowDef, transition: Option<&str>, keyed: bool) -> bool {
    keyed
        || transition
            .and_then(|name| workflow.transition(name))
            .is_some_and(|t| t.four_eyes == Some(FourEyesPart::Accepts))
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::workflow::shipped as workflows;

    fn actor(role: ActorRole) -> Actor {
        Actor {
            name: format!("{}-1", role.as_str()),
            role,
        }
    }

    fn request(to: &str) -> TransitionRequest {
        TransitionRequest {
            to: to.into(),
            reason: Some("because".into()),
            recorded: vec![("open_exeter_user_id".into(), "OE123456".into())],
            ..TransitionRequest::default()
        }
    }

    /// The transitions every shipped workflow must allow, written out by hand: (from, to,
    /// roles). Everything not listed must be refused.
    const EXPECTED: &[(&str, &str, &[ActorRole])] = {
        use ActorRole::*;
        &[
            ("received", "validated", &[System]),
            ("received", "needs_review", &[System]),
            // A clean replacement form validates a case in review (checks_passed).
            ("needs_review", "validated", &[System, Caseworker, Manager, Admin]),
            // A replacement form with findings sends a validated case back (checks_failed).
            ("validated", "needs_review", &[System]),
            ("needs_review", "awaiting_information", &[Caseworker, Manager, Admin]),
            ("validated", "awaiting_information", &[Caseworker, Manager, Admin]),
            (
                "awaiting_information",
                "needs_review",
                &[System, Caseworker, Manager, Admin],
            ),
            ("validated", "authorised", &[Caseworker, Manager, Admin]),
            ("authorised", "provisioned", &[System, Caseworker, Manager, Admin]),
            ("received", "rejected", &[Caseworker, Manager, Admin]),
            ("needs_review", "rejected", &[Caseworker, Manager, Admin]),
            ("validated", "rejected", &[Caseworker, Manager, Admin]),
            ("awaiting_information", "rejected", &[Caseworker, Manager, Admin]),
            ("authorised", "rejected", &[Caseworker, Manager, Admin]),
            ("received", "withdrawn", &[Caseworker, Manager, Admin]),
            ("needs_review", "withdrawn", &[Caseworker, Manager, Admin]),
            ("validated", "withdrawn", &[Caseworker, Manager, Admin]),
            ("awaiting_information", "withdrawn", &[Caseworker, Manager, Admin]),
            ("authorised", "withdrawn", &[Caseworker, Manager, Admin]),
            ("received", "duplicate", &[System, Caseworker, Manager, Admin]),
            ("needs_review", "duplicate", &[System, Caseworker, Manager, Admin]),
            ("validated", "duplicate", &[System, Caseworker, Manager, Admin]),
            (
                "awaiting_information",
                "duplicate",
                &[System, Caseworker, Manager, Admin],
            ),
            ("awaiting_information", "closed", &[System]),
            ("rejected", "needs_review", &[Manager, Admin]),
            ("withdrawn", "needs_review", &[Manager, Admin]),
            ("duplicate", "needs_review", &[Manager, Admin]),
            ("closed", "needs_review", &[Manager, Admin]),
        ]
    };

    /// The same table for the support workflow (plain emails): the system only sorts; a
    /// caseworker confirms every reply.
    const EXPECTED_SUPPORT: &[(&str, &str, &[ActorRole])] = {
        use ActorRole::*;
        &[
            ("received", "validated", &[System]),
            ("received", "needs_review", &[System]),
            ("needs_review", "validated", &[Caseworker, Manager, Admin]),
            ("validated", "replied", &[Caseworker, Manager, Admin]),
            ("needs_review", "closed", &[Caseworker, Manager, Admin]),
            ("validated", "closed", &[Caseworker, Manager, Admin]),
            ("replied", "needs_review", &[Manager, Admin]),
            ("closed", "needs_review", &[Manager, Admin]),
        ]
    };

    #[test]
    fn every_transition_of_the_support_workflow_is_allowed_or_refused_as_specified() {
        let set = workflows();
        let workflow = set.get("support").expect("the support workflow ships");
        assert_eq!(
            exercise(workflow, EXPECTED_SUPPORT),
            EXPECTED_SUPPORT.iter().map(|(_, _, roles)| roles.len()).sum::<usize>()
        );
    }

    /// And for new-user notifications: checked by the system, authorised by a person (a
    /// second one after an acceptance), the password recorded through the provisioner seam.
    const EXPECTED_NEW_USER: &[(&str, &str, &[ActorRole])] = {
        use ActorRole::*;
        &[
            ("received", "validated", &[System]),
            ("received", "needs_review", &[System]),
            ("needs_review", "validated", &[Caseworker, Manager, Admin]),
            ("validated", "authorised", &[Caseworker, Manager, Admin]),
            ("authorised", "provisioned", &[System, Caseworker, Manager, Admin]),
            ("received", "rejected", &[Caseworker, Manager, Admin]),
            ("needs_review", "rejected", &[Caseworker, Manager, Admin]),
            ("validated", "rejected", &[Caseworker, Manager, Admin]),
            ("authorised", "rejected", &[Caseworker, Manager, Admin]),
            ("rejected", "needs_review", &[Manager, Admin]),
        ]
    };

    #[test]
    fn every_transition_of_the_new_user_workflow_is_allowed_or_refused_as_specified() {
        let set = workflows();
        let workflow = set.get("new_user").expect("the new-user workflow ships");
        assert_eq!(
            exercise(workflow, EXPECTED_NEW_USER),
            EXPECTED_NEW_USER.iter().map(|(_, _, roles)| roles.len()).sum::<usize>()
        );
    }

    /// Tries every move between the workflow's states by every role against `expected`, and
    /// returns how many were allowed.
    fn exercise(workflow: &WorkflowDef, expected_moves: &[(&str, &str, &[ActorRole])]) -> usize {
        let roles = [
            ActorRole::System,
            ActorRole::Caseworker,
            ActorRole::Manager,
            ActorRole::Admin,
        ];
        let mut allowed_count = 0;
        for from in &workflow.states {
            for to in &workflow.states {
                for role in roles {
                    let expected = expected_moves
                        .iter()
                        .any(|(f, t, rs)| *f == from.name && *t == to.name && rs.contains(&role));
                    let result = plan_transition(
                        workflow,
                        &from.name,
                        &request(&to.name),
                        &actor(role),
                        &CaseHistory::default(),
                    );
                    assert_eq!(
                        result.is_ok(),
                        expected,
                        "{}: {} -> {} by {}: {:?}",
                        workflow.name,
                        from.name,
                        to.name,
                        role.as_str(),
                        result.err()
                    );
                    allowed_count += usize::from(expected);
                }
            }
        }
        allowed_count
    }

    #[test]
    fn every_transition_of_every_workflow_is_allowed_or_refused_as_specified() {
        for workflow in workflows().form_workflows() {
            let allowed_count = exercise(workflow, EXPECTED);
            assert!(allowed_count > 50, "{}: the table was not exercised", workflow.name);
        }
    }

    #[test]
    fn a_refusal_from_the_wrong_state_lists_where_the_case_can_go() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let err = plan_transition(
            wf,
            "received",
            &request("provisioned"),
            &actor(ActorRole::Caseworker),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert!(matches!(err, TransitionError::NotAllowedFromState { .. }));
        assert!(err.to_string().contains("rejected"), "{err}");
        let err = plan_transition(
            wf,
            "provisioned",
            &request("needs_review"),
            &actor(ActorRole::Manager),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("final"), "{err}");
    }

    #[test]
    fn a_refusal_for_the_wrong_role_names_who_may() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let err = plan_transition(
            wf,
            "rejected",
            &request("needs_review"),
            &actor(ActorRole::Caseworker),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TransitionError::RoleNotAllowed {
                role: "caseworker".into(),
                from: "rejected".into(),
                to: "needs_review".into(),
                allowed_roles: "manager".into()
            }
        );
    }

    #[test]
    fn unknown_states_are_refused() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let err = plan_transition(
            wf,
            "received",
            &request("approved"),
            &actor(ActorRole::Manager),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert!(matches!(err, TransitionError::UnknownState { .. }));
    }

    #[test]
    fn rejecting_needs_a_reason() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let mut req = request("rejected");
        req.reason = Some("  ".into());
        let err = plan_transition(
            wf,
            "needs_review",
            &req,
            &actor(ActorRole::Caseworker),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert_eq!(err, TransitionError::ReasonRequired { to: "rejected".into() });
    }

    #[test]
    fn provisioning_needs_the_open_exeter_user_id() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let mut req = request("provisioned");
        req.recorded.clear();
        let err = plan_transition(
            wf,
            "authorised",
            &req,
            &actor(ActorRole::Caseworker),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TransitionError::MissingRecordedValue {
                to: "provisioned".into(),
                value: "Open Exeter user ID".into()
            }
        );
        // Given, it must have the workflow's declared format.
        req.recorded = vec![("open_exeter_user_id".into(), "hello world".into())];
        let err = plan_transition(
            wf,
            "authorised",
            &req,
            &actor(ActorRole::Caseworker),
            &CaseHistory::default(),
        )
        .unwrap_err();
        assert!(matches!(err, TransitionError::RecordedValueInvalid { .. }), "{err:?}");
    }

    #[test]
    fn four_eyes_keeps_the_acceptor_from_authorising() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let history = CaseHistory {
            accepted_or_keyed_by: vec!["caseworker-1".into()],
        };
        let err = plan_transition(
            wf,
            "validated",
            &request("authorised"),
            &actor(ActorRole::Caseworker),
            &history,
        )
        .unwrap_err();
        assert!(matches!(err, TransitionError::FourEyes { .. }));
        let other = Actor {
            name: "caseworker-2".into(),
            role: ActorRole::Caseworker,
        };
        assert!(plan_transition(wf, "validated", &request("authorised"), &other, &history).is_ok());
        let mut relaxed = wf.clone();
        relaxed.four_eyes = false;
        assert!(
            plan_transition(
                &relaxed,
                "validated",
                &request("authorised"),
                &actor(ActorRole::Caseworker),
                &history
            )
            .is_ok()
        );
    }

    #[test]
    fn a_plan_arms_the_new_states_timers_and_names_its_template() {
        let set = workflows();
        let wf = set.get("primary_user_gp").unwrap();
        let plan = plan_transition(
            wf,
            "needs_review",
            &request("awaiting_information"),
            &actor(ActorRole::Caseworker),
            &CaseHistory::default(),
        )
        .unwrap();
        let armed: Vec<&str> = plan.arm_timers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(armed, vec!["remind_sender", "close_without_reply"]);
        assert_eq!(plan.notify_template, Some("request_for_correction"));
        assert!(plan.cancel_pending_timers);
    }

    #[test]
    fn checks_decide_the_first_state() {
        use crate::workflow::wellknown::state_after_checks;
        assert_eq!(state_after_checks(false), "validated");
        assert_eq!(state_after_checks(true), "needs_review");
    }

    #[test]
    fn four_eyes_follows_the_workflow_file_not_the_transitions_names() {
        let set = workflows();
        let mut wf = set.get("primary_user_gp").unwrap().clone();
        // Renamed transitions keep their parts: the check is declared, not keyed on names.
        for t in &mut wf.transitions {
            if t.name == "authorise" {
                t.name = "sign_off".into();
            }
            if t.name == "accept" {
                t.name = "approve_after_review".into();
            }
        }
        assert!(is_first_pair_of_eyes(&wf, Some("approve_after_review"), false));
        assert!(is_first_pair_of_eyes(&wf, None, true));
        assert!(!is_first_pair_of_eyes(&wf, Some("reject"), false));
        let history = CaseHistory {
            accepted_or_keyed_by: vec!["caseworker-1".into()],
        };
        let err = plan_transition(
            &wf,
            "validated",
            &request("authorised"),
            &actor(ActorRole::Caseworker),
            &history,
        )
        .unwrap_err();
        assert!(matches!(err, TransitionError::FourEyes { .. }));
        // Unmarked, the same transition is no second pair of eyes.
        for t in &mut wf.transitions {
            t.four_eyes = None;
        }
        assert!(
            plan_transition(
                &wf,
                "validated",
                &request("authorised"),
                &actor(ActorRole::Caseworker),
                &history
            )
            .is_ok()
        );
    }
}
