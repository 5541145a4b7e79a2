//! The one path every case change takes.
//!
//! A command (a transition, an assignment, keyed fields, a form arriving, a timer firing) is
//! turned by the pure planner below into a [`CaseChangeset`]: the case's new columns, its
//! events, the timers to cancel and arm, and the mail to queue. [`Engine::apply`] hands it to
//! the one storage call that writes all of it in the caller's transaction, where the version
//! check happens. Nothing else in the service writes a case.

use crate::domain::EventKind;
use std::collections::BTreeMap;

use chrono::{DateTime, Local, TimeZone};
use sqlx::AnyConnection;
use tracing::instrument;

use super::{Engine, EngineError, notify, sla};
use crate::calendar::WorkingCalendar;
use crate::domain::OdsCode;
use crate::mail::SenderAuth;
use crate::policy::{self, Facts, Finding};
use crate::storage::{self, CancelTimers, CaseChangeset, CaseColumns, CaseEvent, CaseRecord, FormColumns, NewTimer};
use crate::workflow::wellknown::{self, unclassified};
use crate::workflow::{
    Actor, ActorRole, CaseHistory, TransitionError, TransitionPlan, TransitionRequest, WorkflowDef, machine,
};

/// The time a change is planned at, and the working-day calendar its deadlines count on.
#[derive(Clone, Copy)]
pub struct When<'a> {
    pub now: DateTime<Local>,
    pub calendar: &'a WorkingCalendar,
}

impl When<'_> {
    pub fn ms(&self) -> i64 {
        self.now.timestamp_millis()
    }

    /// `days` working days from now, at the same time of day.
    pub fn working_days_later(&self, days: u32) -> i64 {
        let date = self.calendar.add_working_days(self.now.date_naive(), days);
        Local
            .from_local_datetime(&date.and_time(self.now.time()))
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|| self.ms())
    }
}

/// What the planner knows of the email that opened a case: for threading the mail a change
/// sends, for loop safety, and for whether mail may go to its sender unasked.
#[derive(Debug, Clone)]
pub struct Origin {
    pub message_id: Option<String>,
    /// Set when the email came from a machine (auto-reply, bounce, list).
    pub automatic: Option<String>,
    pub sender_auth: SenderAuth,
}

/// A state move to plan: the machine's verdict, who asked, and what they said.
pub struct Move<'a> {
    pub plan: &'a TransitionPlan<'a>,
    pub actor: &'a Actor,
    pub reason: Option<&'a str>,
    pub recorded: &'a [(String, String)],
    /// The case the move marks this one a duplicate of, linked with it.
    pub duplicate_of: Option<i64>,
    /// A person's own words for the move's email, in place of the template's body.
    pub mail_text: Option<&'a str>,
}

/// Plans a state move the machine allowed: the new state and recorded values, its event,
/// the timers of the old state cancelled and the new state's armed, the SLA clock paused or
/// resumed, and the workflow's mail for the move. Pure.
pub fn plan_move(
    when: When<'_>,
    settings: &notify::MailPolicy<'_>,
    case: &CaseRecord,
    workflow: &WorkflowDef,
    origin: &Origin,
    step: &Move<'_>,
) -> CaseChangeset {
    let plan = step.plan;
    let now = when.ms();
    // Only the values the transition declares (`records` in the workflow file) are kept.
    // ...as the workflow declares them kept (trimmed; identifiers in capitals).
    let given: Vec<(String, String)> = step
        .recorded
        .iter()
        .filter(|(name, _)| plan.transition.records.contains(name))
        .map(|(name, value)| {
            let kept = workflow
                .recorded_def(name)
                .check(value)
                .unwrap_or_else(|| value.clone());
            (name.clone(), kept)
        })
        .collect();
    let mut recorded = case.recorded.clone();
    recorded.extend(given.iter().cloned());
    let terminal = workflow.state(&plan.to).is_some_and(|s| s.terminal);
    let mut change = changeset(case, now);
    change.columns.state = Some(plan.to.clone());
    if !given.is_empty() {
        change.columns.recorded = Some(recorded.clone());
    }
    change.columns.duplicate_of = step.duplicate_of;
    change.events.push(CaseEvent {
        transition: Some(plan.transition.name.clone()),
        from_state: Some(plan.from.clone()),
        to_state: Some(plan.to.clone()),
        reason: step.reason.map(str::to_string),
        data: (!given.is_empty())
            .then(|| serde_json::to_string(&given.iter().cloned().collect::<BTreeMap<_, _>>()).unwrap_or_default()),
        ..CaseEvent::by(&step.actor.name, step.actor.role.as_str(), EventKind::Transition, now)
    });
    change.cancel_timers = CancelTimers {
        of_state: plan.cancel_pending_timers,
        case_wide: plan.cancel_pending_timers && terminal,
    };
    let mut due_at = case.due_at;
    if !terminal {
        let running = |state: &str| workflow.state(state).is_none_or(|s| s.sla_running);
        match (running(&plan.from), running(&plan.to)) {
            (true, false) => sla::pause(&mut change, now),
            (false, true) => due_at = sla::resume(&mut change, when, case, workflow),
            _ => {}
        }
    }
    change.arm_timers.extend(plan.arm_timers.iter().map(|timer| NewTimer {
        name: timer.name.clone(),
        state: plan.to.clone(),
        due_at: when.working_days_later(timer.after_working_days),
    }));
    // The transition's template, or (a support reply) the one of the case's class.
    if let Some(template) = workflow.template_for(plan.transition, &case.fields) {
        let mut snapshot = case.clone();
        snapshot.state = plan.to.clone();
        snapshot.recorded = recorded;
        snapshot.due_at = due_at;
        let mail = notify::Notification {
            template,
            recipient: case.sender.as_deref(),
            reason: step.reason,
            automatic: step.actor.role == ActorRole::System,
            in_reply_to: origin.message_id.as_deref(),
            suppress_because: origin.automatic.as_deref(),
        };
        let mut composed = notify::compose(settings, &snapshot, Some(workflow), &mail, &origin.sender_auth);
        if step.actor.role != ActorRole::System
            && let Some(text) = step.mail_text
        {
            notify::replace_body(&mut composed, text);
        }
        change.mail.push(composed);
    }
    change
}

/// What four-eyes needs to know of a case's past, from its events: who accepted or keyed it.
pub fn history_of(workflow: &WorkflowDef, events: &[CaseEvent]) -> CaseHistory {
    CaseHistory {
        accepted_or_keyed_by: events
            .iter()
            .filter(|e| {
                e.actor_role != ActorRole::System.as_str()
                    && machine::is_first_pair_of_eyes(
                        workflow,
                        e.transition.as_deref(),
                        e.kind == EventKind::FieldKeyed,
                    )
            })
            .map(|e| e.actor.clone())
            .collect(),
    }
}

/// Plans asking the sender of an email that came with no form for the form, by a member of
/// staff: the request in the log and the mail queued, threaded to their email so that the
/// form, when it comes in reply, joins this case (and gives it its workflow). Pure.
pub fn plan_form_request(
    now: i64,
    settings: &notify::MailPolicy<'_>,
    case: &CaseRecord,
    actor: &Actor,
    origin: &Origin,
) -> Result<CaseChangeset, EngineError> {
    if case.workflow.is_some() || case.state != unclassified::STATE {
        return Err(EngineError::NoFormToAskFor {
            reference: case.reference.clone(),
        });
    }
    if !actor.role.is_among(unclassified::BY) {
        return Err(EngineError::Transition {
            reference: case.reference.clone(),
            source: TransitionError::RoleNotAllowed {
                role: actor.role.as_str().to_string(),
                from: case.state.clone(),
                to: case.state.clone(),
                allowed_roles: unclassified::BY
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        });
    }
    let mut change = changeset(case, now);
    change.events.push(CaseEvent {
        reason: Some(format!(
            "asked {} for the form",
            case.sender.as_deref().unwrap_or("the sender")
        )),
        ..CaseEvent::by(&actor.name, actor.role.as_str(), EventKind::FormRequested, now)
    });
    let mail = notify::Notification {
        template: "request_form",
        recipient: case.sender.as_deref(),
        reason: None,
        automatic: false,
        in_reply_to: origin.message_id.as_deref(),
        suppress_because: origin.automatic.as_deref(),
    };
    change
        .mail
        .push(notify::compose(settings, case, None, &mail, &origin.sender_auth));
    Ok(change)
}

/// The timers `workflow` arms for a case that starts waiting in `state` now.
pub fn state_timers(when: When<'_>, workflow: &WorkflowDef, state: &str) -> Vec<NewTimer> {
    workflow
        .timers
        .iter()
        .filter(|t| t.state == state)
        .map(|timer| NewTimer {
            name: timer.name.clone(),
            state: state.to_string(),
            due_at: when.working_days_later(timer.after_working_days),
        })
        .collect()
}

/// Plans sending an unclassified case (no workflow yet) to one of its final states, by a
/// caseworker or a manager, with a reason. Pure.
pub fn plan_unclassified_exit(
    now: i64,
    case: &CaseRecord,
    actor: &Actor,
    to: &str,
    reason: Option<&str>,
    duplicate_of: Option<i64>,
) -> Result<CaseChangeset, EngineError> {
    if case.state != unclassified::STATE || !unclassified::EXITS.iter().any(|(state, _)| *state == to) {
        return Err(EngineError::Unclassified {
            reference: case.reference.clone(),
            allowed: unclassified::exit_names(),
        });
    }
    let refused = |source| EngineError::Transition {
        reference: case.reference.clone(),
        source,
    };
    if !actor.role.is_among(unclassified::BY) {
        return Err(refused(TransitionError::RoleNotAllowed {
            role: actor.role.as_str().into(),
            from: case.state.clone(),
            to: to.to_string(),
            allowed_roles: "caseworker, manager".into(),
        }));
    }
    if reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(refused(TransitionError::ReasonRequired { to: to.to_string() }));
    }
    let mut change = changeset(case, now);
    change.columns.state = Some(to.to_string());
    change.columns.duplicate_of = duplicate_of;
    change.events.push(CaseEvent {
        transition: Some(to.to_string()),
        from_state: Some(case.state.clone()),
        to_state: Some(to.to_string()),
        reason: reason.map(str::to_string),
        ..CaseEvent::by(&actor.name, actor.role.as_str(), EventKind::Transition, now)
    });
    change.cancel_timers = CancelTimers {
        of_state: true,
        case_wide: true,
    };
    Ok(change)
}

/// Plans giving a case to a member of staff (`assignee`: their id and address), or to no one.
pub fn plan_assignment(now: i64, case: &CaseRecord, actor: &Actor, assignee: Option<(i64, &str)>) -> CaseChangeset {
    let claimed = assignee.is_some_and(|(_, email)| email.eq_ignore_ascii_case(&actor.name));
    let mut change = changeset(case, now);
    change.columns.assignee_id = Some(assignee.map(|(id, _)| id));
    change.events.push(CaseEvent {
        reason: Some(
            assignee
                .map(|(_, email)| format!("to {email}"))
                .unwrap_or_else(|| "unassigned".into()),
        ),
        ..CaseEvent::by(
            &actor.name,
            actor.role.as_str(),
            if claimed {
                EventKind::Claimed
            } else {
                EventKind::Assigned
            },
            now,
        )
    });
    change
}

/// The Primary User a case adds to our records when it reaches the workflow's
/// `records.primary_user_on` state: its proposed user, for its organisation.
pub fn primary_user_record(workflow: &WorkflowDef, case: &CaseRecord, to: &str) -> Option<storage::NewSignatory> {
    if workflow.records.primary_user_on.as_deref() != Some(to) {
        return None;
    }
    let field = |name: &str| case.fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let ods_code = case.org_ods_code.clone()?;
    let name = [field("user_first_name"), field("user_last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let email = field("user_email").map(str::to_string);
    if name.is_empty() && email.is_none() {
        return None;
    }
    Some(storage::NewSignatory {
        signatory: crate::signatories::KnownSignatory {
            ods_code,
            role: crate::signatories::PRIMARY_USER.into(),
            name,
            email,
            source: "provisioned".into(),
        },
        verified_by: None,
        note: Some(format!("provisioned by {}", case.reference)),
        case_reference: Some(case.reference.clone()),
    })
}

/// The account a case moving to `to` puts in the Open Exeter account register, when its
/// workflow says so (`records.account_on`): the user ID recorded now, recorded before, or in
/// a field; active, with its password set today (it was just issued) and no sign-in yet.
pub fn account_record(
    workflow: &WorkflowDef,
    case: &CaseRecord,
    to: &str,
    recorded_now: &[(String, String)],
    today: chrono::NaiveDate,
) -> Option<crate::accounts::OeAccount> {
    let records = &workflow.records;
    if records.account_on.as_deref() != Some(to) {
        return None;
    }
    let id_name = records.account_user_id.as_deref()?;
    let field = |name: &str| case.fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let user_id = recorded_now
        .iter()
        .find(|(k, v)| k == id_name && !v.trim().is_empty())
        .map(|(_, v)| {
            workflow
                .recorded_def(id_name)
                .check(v)
                .unwrap_or_else(|| v.trim().to_string())
        })
        .or_else(|| case.recorded.get(id_name).cloned())
        .or_else(|| field(id_name).map(str::to_string))?
        .to_uppercase();
    let name = records
        .account_name
        .iter()
        .filter_map(|n| field(n))
        .collect::<Vec<_>>()
        .join(" ");
    Some(crate::accounts::OeAccount {
        user_id,
        ods_code: case.org_ods_code.clone()?,
        name: if name.is_empty() { "(not given)".into() } else { name },
        email: records.account_email.as_deref().and_then(field).map(str::to_string),
        primary_user: records.account_primary_user,
        password_changed_on: Some(today),
        last_sign_in_on: None,
        status: crate::accounts::AccountStatus::Active,
    })
}

/// What a form sets on its case: its workflow, fields and findings, and the organisation it
/// names (the ODS code only when it is well formed).
pub fn form_columns(workflow: &WorkflowDef, fields: &BTreeMap<String, String>, findings: &[Finding]) -> FormColumns {
    FormColumns {
        workflow: workflow.name.clone(),
        fields: fields.clone(),
        findings: findings.to_vec(),
        org_ods_code: fields
            .get("org_ods_code")
            .and_then(|c| OdsCode::parse(c))
            .map(|o| o.as_str().to_string()),
        org_name: fields
            .get("org_name")
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty()),
    }
}

/// An empty change to `case`, planned against the version it has now.
pub fn changeset(case: &CaseRecord, now: i64) -> CaseChangeset {
    CaseChangeset {
        case_id: case.id,
        reference: case.reference.clone(),
        version: case.version,
        at: now,
        ..CaseChangeset::default()
    }
}

/// The case as it is once `change` is written (what the database now holds), without
/// reading it back.
pub fn after(case: &CaseRecord, change: &CaseChangeset) -> CaseRecord {
    let mut case = case.clone();
    let CaseColumns {
        state,
        recorded,
        form,
        form_attachment,
        assignee_id,
        duplicate_of,
        due_at,
        sla_paused_at,
    } = change.columns.clone();
    if !change.columns.any() {
        return case;
    }
    case.version += 1;
    case.updated_at = change.at;
    if let Some(state) = state {
        case.state = state;
    }
    if let Some(recorded) = recorded {
        case.recorded = recorded;
    }
    if let Some(form) = form {
        case.workflow = Some(form.workflow);
        case.fields = form.fields;
        case.findings = form.findings;
        case.org_ods_code = form.org_ods_code;
        case.org_name = form.org_name;
    }
    if let Some((attachment_id, _)) = form_attachment {
        case.form_attachment_id = Some(attachment_id);
    }
    if let Some(assignee_id) = assignee_id {
        case.assignee_id = assignee_id;
    }
    if duplicate_of.is_some() {
        case.duplicate_of = duplicate_of;
    }
    if let Some(due_at) = due_at {
        case.due_at = due_at;
    }
    if let Some(paused) = sla_paused_at {
        case.sla_paused_at = paused;
    }
    case
}

impl Engine {
    /// Plans keying fields by hand: each changed field logged with its old and new value, a
    /// change of workflow logged as the decision it is, and the rules run again over the result.
    pub fn plan_keying(
        &self,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        values: &BTreeMap<String, String>,
        actor: &Actor,
        known: &Known,
    ) -> CaseChangeset {
        let now = self.now_ms();
        let mut change = changeset(case, now);
        let by = |kind: EventKind| CaseEvent::by(&actor.name, actor.role.as_str(), kind, now);
        if case.workflow.as_deref() != Some(workflow.name.as_str()) {
            // Classifying (or re-classifying) a case changes which rules and roles apply to it:
            // a decision, so it is in the log like any other.
            change.events.push(CaseEvent {
                reason: Some(format!(
                    "put into workflow {} (was {})",
                    workflow.name,
                    case.workflow.as_deref().unwrap_or("none")
                )),
                data: Some(serde_json::json!({ "old": case.workflow, "new": workflow.name }).to_string()),
                ..by(EventKind::WorkflowChanged)
            });
        }
        if case.workflow.is_none() {
            // An unclassified case had no SLA: given its form type, its clock starts, counted
            // from when the email arrived, and the state it waits in arms its own timers.
            let when = self.when();
            sla::start_late(&mut change, when, workflow, case.created_at);
            change.arm_timers.extend(state_timers(when, workflow, &case.state));
        }
        let mut fields = case.fields.clone();
        for (field, new) in values {
            let old = fields.insert(field.clone(), new.clone());
            if old.as_deref() != Some(new.as_str()) {
                change.events.push(CaseEvent {
                    data: Some(serde_json::json!({ "field": field, "old": old, "new": new }).to_string()),
                    ..by(EventKind::FieldKeyed)
                });
            }
        }
        let facts = Facts {
            workflow,
            fields: &fields,
            sender: known.sender.as_deref(),
            sender_auth: &known.origin.sender_auth,
            today: self.today(),
        };
        // A case of a form workflow that came with no form (a request by email) is judged by
        // the workflow's email rules.
        let by_form = workflow.form_id().is_some()
            && (case.form_attachment_id.is_some() || workflow.email_recognition().is_none());
        let findings = if by_form {
            let mut findings = policy::check(&facts, &self.config.policy);
            policy::check_against_registry(workflow, &fields, &known.registry, self.today(), &mut findings);
            policy::check_against_register(workflow, &fields, &known.register, &mut findings);
            // The file's digital signature, as checked when it arrived, against what is typed now.
            let signatory = fields.get(&workflow.signatories.name_field).map(String::as_str);
            policy::check_digital_signatures(&known.signatures, signatory, &mut findings);
            findings
        } else {
            // A plain email: its class is what the caseworker left in the class field.
            let class = workflow.classify.as_ref().map(|c| {
                fields
                    .get(&c.field)
                    .map(String::as_str)
                    .filter(|name| c.class(name).is_some())
            });
            let mut findings = policy::check_plain_email(&facts, &self.config.policy, class);
            policy::check_plain_email_against_records(
                workflow,
                &fields,
                known.sender.as_deref(),
                &known.registry,
                &known.register,
                self.today(),
                &mut findings,
            );
            findings
        };
        let mut form = form_columns(workflow, &fields, &findings);
        // A keyed organisation name is kept as typed (an empty one clears it).
        form.org_name = fields.get("org_name").cloned();
        change.columns.form = Some(form);
        change
    }

    /// What the rules know of `case` besides the form, read in the change's transaction;
    /// `fields` are the fields they will check (the case's, or as keyed).
    pub(crate) async fn known(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        fields: &BTreeMap<String, String>,
    ) -> Result<Known, EngineError> {
        let message = storage::origin_of(&mut *conn, case.origin_message_id).await?;
        let (registry, register) = super::intake::records_for(conn, fields).await?;
        let signatures = storage::form_signatures(conn, case.id).await?;
        Ok(Known {
            origin: Origin::from_stored(&message),
            sender: message.from_address,
            registry,
            register,
            signatures,
        })
    }

    /// The case's rules run again on what is known now, when it still waits for review (one
    /// that has moved on keeps its decisions); otherwise an empty change.
    pub(crate) fn recheck_rules(&self, case: &CaseRecord, actor: &Actor, known: &Known) -> CaseChangeset {
        match case.workflow.as_deref().and_then(|w| self.workflows.get(w)) {
            Some(workflow) if wellknown::KEYABLE_STATES.contains(&case.state.as_str()) => {
                self.plan_keying(case, workflow, &BTreeMap::new(), actor, known)
            }
            _ => changeset(case, self.now_ms()),
        }
    }

    /// The planner's view of now.
    pub(crate) fn when(&self) -> When<'_> {
        When {
            now: self.clock.now(),
            calendar: &self.calendar,
        }
    }

    /// Writes a planned change (the version check is the write) and returns the case as it
    /// now stands.
    pub(crate) async fn apply(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        change: CaseChangeset,
    ) -> Result<CaseRecord, EngineError> {
        let change = self.closing_clears_due_time(change);
        let changed = after(case, &change);
        storage::apply_change(conn, change).await?;
        Ok(changed)
    }

    /// A case that closes is due no more: its due time is cleared, so that the open queue,
    /// which walks cases in due order, never steps over the closed ones (after years, nearly
    /// all of them). The SLA figures come from the event log, not from this column.
    pub(crate) fn closing_clears_due_time(&self, mut change: CaseChangeset) -> CaseChangeset {
        if let Some(state) = &change.columns.state
            && self.workflows.terminal_states().contains(state)
        {
            change.columns.due_at = Some(None);
        }
        change
    }

    /// Clears the due time of every closed case that still has one (cases closed before the
    /// rule in [`Engine::closing_clears_due_time`]); how many it cleared.
    pub async fn clear_due_times_of_closed_cases(&self) -> Result<u64, EngineError> {
        let terminal = self.workflows.terminal_states();
        let mut cleared = 0;
        loop {
            let mut tx = self.db.begin_write().await.context("starting a transaction")?;
            // In slices, so that mail keeps being taken in while a large database catches up.
            let done = storage::clear_due_times_in_states(&mut tx, terminal, 10_000).await?;
            tx.commit().await.context("committing cleared due times")?;
            cleared += done;
            if done == 0 {
                return Ok(cleared);
            }
        }
    }

    /// Moves a case as the system (checks, replies, timers), by the workflow's system
    /// transition from its state to `to`, inside the caller's transaction.
    pub(crate) async fn move_as_system(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        to: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<CaseRecord, EngineError> {
        let change = self.plan_system_move(case, workflow, to, reason, origin)?;
        self.apply(conn, case, change).await
    }

    /// Plans the system's own move of `case` to `to`.
    pub(crate) fn plan_system_move(
        &self,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        to: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<CaseChangeset, EngineError> {
        let request = TransitionRequest {
            to: to.into(),
            ..TransitionRequest::default()
        };
        let system = Actor::system();
        let plan = machine::plan_transition(workflow, &case.state, &request, &system, &CaseHistory::default())
            .map_err(|source| EngineError::Transition {
                reference: case.reference.clone(),
                source,
            })?;
        let step = Move {
            plan: &plan,
            actor: &system,
            reason: Some(reason),
            recorded: &[],
            duplicate_of: None,
            mail_text: None,
        };
        Ok(plan_move(
            self.when(),
            &self.mail_policy(),
            case,
            workflow,
            origin,
            &step,
        ))
    }

    /// Moves a case to `request.to` on behalf of `actor`, if the workflow allows it. The
    /// version the actor saw (`request.expected_version`) is checked inside the transaction
    /// that writes: of two people acting on one page, exactly one wins.
    #[instrument(skip_all, fields(case = %reference, to = %request.to, actor = %actor.name))]
    pub async fn transition(
        &self,
        reference: &str,
        request: &TransitionRequest,
        actor: &Actor,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = self
            .case_for_change(&mut tx, reference, request.expected_version)
            .await?;
        let change = self.plan_request(&mut tx, &case, request, actor).await?;
        let updated = self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing a transition")?;
        self.wakers.wake_all();
        Ok(updated)
    }

    /// Plans what `request` would do to `case` (as read on `conn`): the machine's verdict, the
    /// duplicate's original, the change and its mail. Applied by [`Engine::transition`]; shown
    /// by [`Engine::preview_transition`].
    async fn plan_request(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        request: &TransitionRequest,
        actor: &Actor,
    ) -> Result<CaseChangeset, EngineError> {
        let original = match &request.duplicate_of {
            Some(wanted) => {
                let wanted = wanted.trim().to_uppercase();
                if wanted == case.reference {
                    return Err(EngineError::DuplicateOfItself(wanted));
                }
                let original = storage::case_by_reference(&mut *conn, &wanted)
                    .await?
                    .ok_or(EngineError::NoSuchOriginal(wanted))?;
                Some(original)
            }
            None => None,
        };
        let reason = match &original {
            Some(original) => Some(
                format!(
                    "duplicate of {}. {}",
                    original.reference,
                    request.reason.as_deref().unwrap_or_default()
                )
                .trim()
                .to_string(),
            ),
            None => request.reason.clone(),
        };
        let duplicate_of = original.as_ref().map(|o| o.id);
        let now = self.now_ms();
        Ok(match case.workflow.as_deref() {
            None => plan_unclassified_exit(now, case, actor, &request.to, reason.as_deref(), duplicate_of)?,
            Some(name) => {
                let workflow = self.workflow_named(Some(name))?;
                let history = self.history(&mut *conn, case, workflow).await?;
                let request = TransitionRequest {
                    reason: reason.clone(),
                    ..request.clone()
                };
                let plan =
                    machine::plan_transition(workflow, &case.state, &request, actor, &history).map_err(|source| {
                        EngineError::Transition {
                            reference: case.reference.clone(),
                            source,
                        }
                    })?;
                if plan.transition.template_by_class && workflow.template_for(plan.transition, &case.fields).is_none() {
                    return Err(EngineError::NoReplyChosen {
                        reference: case.reference.clone(),
                    });
                }
                let origin = self.origin(&mut *conn, case).await?;
                let step = Move {
                    plan: &plan,
                    actor,
                    reason: reason.as_deref(),
                    recorded: &request.recorded,
                    duplicate_of,
                    mail_text: request.mail_text.as_deref(),
                };
                let mut change = plan_move(self.when(), &self.mail_policy(), case, workflow, &origin, &step);
                change
                    .add_signatories
                    .extend(primary_user_record(workflow, case, &request.to));
                change.add_accounts.extend(account_record(
                    workflow,
                    case,
                    &request.to,
                    &request.recorded,
                    self.today(),
                ));
                self.plan_credential(&mut *conn, workflow, case, &request, actor, &mut change)
                    .await?;
                change
            }
        })
    }

    /// The mail `request` would send, composed but not queued: what the case page previews
    /// before a caseworker sends it. Nothing is written.
    pub async fn preview_transition(
        &self,
        reference: &str,
        request: &TransitionRequest,
        actor: &Actor,
    ) -> Result<Vec<storage::NewMail>, EngineError> {
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        let case = self
            .case_for_change(&mut conn, reference, request.expected_version)
            .await?;
        Ok(self.plan_request(&mut conn, &case, request, actor).await?.mail)
    }

    /// Asks the sender of an email that came with no form for the form (see
    /// [`plan_form_request`]), with the page's version checked.
    pub async fn request_form(
        &self,
        reference: &str,
        actor: &Actor,
        expected_version: Option<i64>,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = self.case_for_change(&mut tx, reference, expected_version).await?;
        let origin = self.origin(&mut tx, &case).await?;
        let change = plan_form_request(self.now_ms(), &self.mail_policy(), &case, actor, &origin)?;
        let updated = self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing a request for the form")?;
        self.wakers.wake_all();
        Ok(updated)
    }

    /// Gives a case to a member of staff (`assignee`: their id and address), or to no one.
    pub async fn assign(
        &self,
        reference: &str,
        assignee: Option<(i64, &str)>,
        actor: &Actor,
        expected_version: Option<i64>,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = self.case_for_change(&mut tx, reference, expected_version).await?;
        let change = plan_assignment(self.now_ms(), &case, actor, assignee);
        let updated = self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing an assignment")?;
        Ok(updated)
    }

    /// Keys fields by hand (a printed or flattened form, or a correction), optionally putting
    /// an unclassified case into a workflow. Every changed field is logged with its old and new
    /// value, and the rules run again over the result.
    pub async fn key_fields(
        &self,
        reference: &str,
        workflow_name: Option<&str>,
        values: &BTreeMap<String, String>,
        actor: &Actor,
    ) -> Result<CaseRecord, EngineError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = self.case_for_change(&mut tx, reference, None).await?;
        if !wellknown::KEYABLE_STATES.contains(&case.state.as_str()) {
            return Err(EngineError::NotKeyable {
                reference: case.reference.clone(),
                state: case.state.clone(),
            });
        }
        let name = workflow_name
            .or(case.workflow.as_deref())
            .ok_or_else(|| EngineError::Unclassified {
                reference: case.reference.clone(),
                allowed: unclassified::exit_names(),
            })?;
        let workflow = self.workflow_named(Some(name))?;
        if let Some(field) = values.keys().find(|field| workflow.field(field).is_none()) {
            return Err(EngineError::UnknownField {
                workflow: workflow.name.clone(),
                field: field.clone(),
            });
        }
        let mut keyed = case.fields.clone();
        keyed.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        let known = self.known(&mut tx, &case, &keyed).await?;
        let change = self.plan_keying(&case, workflow, values, actor, &known);
        let updated = self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing keyed fields")?;
        Ok(updated)
    }

    /// A caseworker verified the signatory the case's form names (by phoning the organisation,
    /// say): the signatory joins the register for the organisation, with who verified them and
    /// how, the log records it, and the case's rules run again (so the finding goes). One
    /// change, one transaction.
    pub async fn verify_signatory(
        &self,
        reference: &str,
        how: &str,
        actor: &Actor,
        expected_version: Option<i64>,
    ) -> Result<CaseRecord, EngineError> {
        let how = crate::domain::storable_text(how.trim());
        if how.is_empty() {
            return Err(EngineError::VerificationUnexplained);
        }
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = self.case_for_change(&mut tx, reference, expected_version).await?;
        let workflow = self.workflow_named(case.workflow.as_deref())?;
        let signatories = &workflow.signatories;
        let field = |name: &str| {
            case.fields
                .get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let role = field(&signatories.role_field)
            .and_then(|typed| policy::match_signatory_role(workflow, &typed).map(str::to_string));
        let (Some(ods_code), Some(role), Some(name)) =
            (case.org_ods_code.clone(), role, field(&signatories.name_field))
        else {
            return Err(EngineError::NoSignatoryToVerify {
                reference: case.reference.clone(),
            });
        };
        let verified = storage::NewSignatory {
            signatory: crate::signatories::KnownSignatory {
                ods_code,
                role: role.clone(),
                name: name.clone(),
                email: field(&signatories.email_field),
                source: "verified".into(),
            },
            verified_by: Some(actor.name.clone()),
            note: Some(how.clone()),
            case_reference: Some(case.reference.clone()),
        };
        // The rules run again with the signatory as the register will hold them.
        let mut known = self.known(&mut tx, &case, &case.fields).await?;
        known.register.in_use = true;
        known.register.of_organisation.push(verified.signatory.clone());
        let mut change = self.recheck_rules(&case, actor, &known);
        change.events.insert(
            0,
            CaseEvent {
                reason: Some(how),
                data: Some(serde_json::json!({ "name": name, "role": role }).to_string()),
                ..CaseEvent::by(
                    &actor.name,
                    actor.role.as_str(),
                    EventKind::SignatoryVerified,
                    self.now_ms(),
                )
            },
        );
        change.add_signatories.push(verified);
        let updated = self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing a signatory's verification")?;
        Ok(updated)
    }

    /// The case a change is for, read inside its transaction; refused when the actor saw an
    /// older version than the one stored.
    pub(crate) async fn case_for_change(
        &self,
        tx: &mut AnyConnection,
        reference: &str,
        expected_version: Option<i64>,
    ) -> Result<CaseRecord, EngineError> {
        let case = storage::case_by_reference(tx, reference)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(reference.to_string()))?;
        if expected_version.is_some_and(|seen| seen != case.version) {
            return Err(EngineError::Stale {
                reference: case.reference.clone(),
                state: case.state.clone(),
            });
        }
        Ok(case)
    }

    /// The email that opened `case`, as the planner needs it.
    pub(crate) async fn origin(&self, conn: &mut AnyConnection, case: &CaseRecord) -> Result<Origin, EngineError> {
        Ok(Origin::from_stored(
            &storage::origin_of(conn, case.origin_message_id).await?,
        ))
    }

    /// Who took the decisions that four-eyes keeps apart from authorisation in this workflow.
    async fn history(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        workflow: &WorkflowDef,
    ) -> Result<CaseHistory, EngineError> {
        let events = storage::events_for_case(conn, case.id).await?;
        Ok(history_of(workflow, &events))
    }
}

/// What the rules know besides the form when a case's fields are checked again: the email
/// that opened the case, its sender's address, and our records on the organisation (the
/// registry's word on it, the signatory register's rows for it).
#[derive(Debug, Clone)]
pub struct Known {
    pub origin: Origin,
    pub sender: Option<String>,
    pub registry: crate::registry::RegistryLookup,
    pub register: crate::signatories::RegisterLookup,
    /// The case's form's digital signatures, as checked when it arrived.
    pub signatures: Vec<crate::pdf::SignatureInfo>,
}

impl Origin {
    /// From the stored message (an unreadable verdict counts as none).
    pub fn from_stored(message: &storage::OriginMessage) -> Origin {
        Origin {
            message_id: message.message_id.clone(),
            automatic: message.automatic.clone(),
            sender_auth: serde_json::from_str(&message.sender_auth_json).unwrap_or(SenderAuth::Missing {
                reason: "no verdict stored".into(),
            }),
        }
    }
}

use crate::storage::QueryContext;

/// A case to plan against, for the planners' unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn case() -> CaseRecord {
        CaseRecord {
            id: 7,
            reference: "CS-2026-000007".into(),
            workflow: Some("primary_user_gp".into()),
            state: "needs_review".into(),
            version: 3,
            fields: BTreeMap::new(),
            findings: vec![],
            org_ods_code: None,
            org_name: None,
            sender: Some("gp@nhs.net".into()),
            origin_message_id: 1,
            form_attachment_id: None,
            duplicate_of: None,
            related_case_id: None,
            assignee_id: None,
            recorded: BTreeMap::new(),
            created_at: 0,
            updated_at: 0,
            due_at: Some(0),
            sla_paused_at: None,
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::workflow::shipped as workflows;

    fn case(state: &str) -> CaseRecord {
        CaseRecord {
            state: state.into(),
            ..tests_support::case()
        }
    }

    fn origin() -> Origin {
        Origin {
            message_id: Some("m1@practice".into()),
            automatic: None,
            sender_auth: SenderAuth::Missing { reason: "test".into() },
        }
    }

    fn plan_for<'w>(workflow: &'w WorkflowDef, from: &str, to: &str, actor: &Actor) -> TransitionPlan<'w> {
        let request = TransitionRequest {
            to: to.into(),
            reason: Some("because".into()),
            ..TransitionRequest::default()
        };
        machine::plan_transition(workflow, from, &request, actor, &CaseHistory::default()).expect("allowed")
    }

    fn when(calendar: &WorkingCalendar) -> When<'_> {
        When {
            now: Local.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap(),
            calendar,
        }
    }

    fn caseworker() -> Actor {
        Actor {
            name: "cw@pcse".into(),
            role: ActorRole::Caseworker,
        }
    }

    /// A caseworker's move of a GP case from `from` to `to`, as planned.
    fn planned(before: &CaseRecord, to: &str, reason: &str, duplicate_of: Option<i64>) -> CaseChangeset {
        let set = workflows();
        let workflow = set.get("primary_user_gp").unwrap();
        let calendar = WorkingCalendar::default();
        let actor = caseworker();
        let plan = plan_for(workflow, &before.state, to, &actor);
        let step = Move {
            plan: &plan,
            actor: &actor,
            reason: Some(reason),
            recorded: &[],
            duplicate_of,
            mail_text: None,
        };
        let domains = crate::domain::NhsDomains::new(["nhs.net"]);
        let policy = notify::MailPolicy {
            our_addresses: &[],
            nhs_domains: &domains,
        };
        plan_move(when(&calendar), &policy, before, workflow, &origin(), &step)
    }

    #[test]
    fn a_move_is_planned_against_the_version_it_read_with_its_event_timers_and_mail() {
        let before = case("needs_review");
        let change = planned(&before, "awaiting_information", "because", None);
        assert_eq!(change.version, 3, "checked against the version read");
        assert_eq!(change.columns.state.as_deref(), Some("awaiting_information"));
        assert_eq!(change.events.len(), 1);
        assert_eq!(change.events[0].transition.as_deref(), Some("request_information"));
        assert_eq!(change.events[0].actor, "cw@pcse");
        let armed: Vec<&str> = change.arm_timers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(armed, vec!["remind_sender", "close_without_reply"]);
        // Awaiting the sender stops the SLA clock: its timers go with the old state's.
        assert!(change.columns.sla_paused_at.is_some_and(|p| p.is_some()));
        assert!(change.cancel_timers.of_state && change.cancel_timers.case_wide);
        assert_eq!(change.mail.len(), 1);
        assert_eq!(change.mail[0].template, "request_for_correction");
        assert_eq!(change.mail[0].in_reply_to.as_deref(), Some("m1@practice"));
        let later = after(&before, &change);
        assert_eq!(later.version, 4);
        assert_eq!(later.state, "awaiting_information");
    }

    #[test]
    fn a_move_to_a_final_state_cancels_the_case_wide_timers_too() {
        let change = planned(&case("needs_review"), "rejected", "wrong signatory", Some(3));
        assert_eq!(
            change.cancel_timers,
            CancelTimers {
                of_state: true,
                case_wide: true
            }
        );
        assert_eq!(change.columns.duplicate_of, Some(3));
        assert!(
            change.columns.sla_paused_at.is_none(),
            "a final state does not pause the SLA"
        );
    }

    #[test]
    fn an_unclassified_case_leaves_only_for_its_exits_with_a_reason_by_staff() {
        let mut unclassified_case = case("needs_review");
        unclassified_case.workflow = None;
        let caseworker = caseworker();
        let change = plan_unclassified_exit(1, &unclassified_case, &caseworker, "closed", Some("spam"), None).unwrap();
        assert_eq!(change.columns.state.as_deref(), Some("closed"));
        assert!(change.cancel_timers.case_wide);
        assert!(matches!(
            plan_unclassified_exit(1, &unclassified_case, &caseworker, "validated", Some("x"), None),
            Err(EngineError::Unclassified { .. })
        ));
        assert!(matches!(
            plan_unclassified_exit(1, &unclassified_case, &caseworker, "closed", Some("  "), None),
            Err(EngineError::Transition {
                source: TransitionError::ReasonRequired { .. },
                ..
            })
        ));
        assert!(matches!(
            plan_unclassified_exit(1, &unclassified_case, &Actor::system(), "closed", Some("x"), None),
            Err(EngineError::Transition {
                source: TransitionError::RoleNotAllowed { .. },
                ..
            })
        ));
        let admin = Actor {
            name: "admin@pcse".into(),
            role: ActorRole::Admin,
        };
        assert!(plan_unclassified_exit(1, &unclassified_case, &admin, "rejected", Some("x"), None).is_ok());
    }

    #[test]
    fn an_assignment_logs_a_claim_when_staff_take_the_case_themselves() {
        let caseworker = caseworker();
        let change = plan_assignment(5, &case("needs_review"), &caseworker, Some((9, "CW@pcse")));
        assert_eq!(change.columns.assignee_id, Some(Some(9)));
        assert_eq!(change.events[0].kind, EventKind::Claimed);
        let change = plan_assignment(5, &case("needs_review"), &caseworker, None);
        assert_eq!(change.columns.assignee_id, Some(None));
        assert_eq!(change.events[0].kind, EventKind::Assigned);
        assert_eq!(after(&case("x"), &change).version, 4);
    }
}
