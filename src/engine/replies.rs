//! Mail that names a case and may change it (see [`crate::replies::may_change`]): noted on
//! the case, and its forms replacing the case's form or classifying a case that had none.
//! Every write goes through the change path.

use crate::domain::EventKind;
use sqlx::AnyConnection;

use super::change::{self, Origin};
use super::classify::{FormAnalysis, checks_summary};
use super::intake::CaseOutcome;
use super::{Engine, EngineError, sla};
use crate::mail::ParsedEmail;
use crate::replies;
use crate::storage::{self, CaseEvent, CaseRecord};
use crate::workflow::wellknown;
use crate::workflow::{ActorRole, FourEyesPart, WorkflowDef};

/// The role events from a case's sender carry.
const SENDER: &str = "sender";

impl Engine {
    /// Records a trusted reply on its case (see [`replies::may_change`]). An automatic reply
    /// is only noted. A form of the case's workflow replaces the case's form while the workflow
    /// allows it; a form arriving for a case that had none classifies it. Every other form is
    /// returned, with the reason it may not land here (if any), to open a case of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attach_reply(
        &self,
        conn: &mut AnyConnection,
        mut case: CaseRecord,
        parsed: &ParsedEmail,
        raw_message_id: i64,
        analyses: Vec<FormAnalysis>,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<(CaseOutcome, Vec<(FormAnalysis, Option<String>)>), EngineError> {
        let automatic = parsed.automatic.is_some();
        let mut noted = change::changeset(&case, now);
        noted
            .link_messages
            .push((raw_message_id, if automatic { "auto_reply" } else { "reply" }));
        noted.events.push(CaseEvent {
            reason: parsed.automatic.clone().or_else(|| parsed.subject.clone()),
            data: Some(serde_json::json!({ "raw_message_id": raw_message_id }).to_string()),
            ..CaseEvent::by(
                parsed.from_address.as_deref().unwrap_or("unknown sender"),
                SENDER,
                if automatic {
                    EventKind::AutoReplyReceived
                } else {
                    EventKind::ReplyReceived
                },
                now,
            )
        });
        case = self.apply(conn, &case, noted).await?;
        if automatic {
            return Ok((self.outcome(&case, None), vec![]));
        }
        let mut leftovers = Vec::new();
        let mut taken = false;
        for form in analyses.into_iter().filter(|a| a.workflow.is_some()) {
            // A PDF that already has a case (this one's own form sent again, or another's) is
            // a copy of that case's form, never a replacement: one case per form.
            let sha256 = &parsed.attachments[form.attachment_index].sha256;
            storage::lock_form(conn, sha256).await?;
            if storage::case_by_form_sha256(conn, sha256).await?.is_some() {
                leftovers.push((form, None));
                continue;
            }
            let form_workflow = form.workflow.clone().unwrap_or_default();
            let replaceable_in = case
                .workflow
                .as_deref()
                .and_then(|w| self.workflows.get(w))
                .map(|w| w.replies.replace_form_in.as_slice())
                .unwrap_or(&[]);
            let target = replies::ReplyTarget {
                workflow: case.workflow.as_deref(),
                state: &case.state,
                replaceable_in,
            };
            match replies::form_fate(target, &form_workflow, taken) {
                replies::FormFate::Replace => {
                    case = self.replace_form(conn, case, form, parsed, attachment_ids, now).await?;
                    taken = true;
                }
                replies::FormFate::Classify => {
                    case = self.classify(conn, case, form, parsed, attachment_ids, now).await?;
                    taken = true;
                }
                replies::FormFate::Separate => leftovers.push((form, None)),
                replies::FormFate::Refused { why } => leftovers.push((form, Some(why))),
            }
        }
        let workflow = case.workflow.as_deref().and_then(|w| self.workflows.get(w));
        if let Some(workflow) = workflow
            && !taken
            && case.state == wellknown::AWAITING_INFORMATION
        {
            let origin = self.reply_origin(conn, &case, parsed).await?;
            case = self
                .move_as_system(
                    conn,
                    &case,
                    workflow,
                    wellknown::NEEDS_REVIEW,
                    "the sender replied",
                    &origin,
                )
                .await?;
        }
        Ok((self.outcome(&case, None), leftovers))
    }

    /// The origin the system's moves on a reply thread their mail to: the reply itself, with
    /// the verdict on the email that opened the case.
    async fn reply_origin(
        &self,
        conn: &mut AnyConnection,
        case: &CaseRecord,
        parsed: &ParsedEmail,
    ) -> Result<Origin, EngineError> {
        Ok(Origin {
            message_id: parsed.message_id.clone(),
            automatic: None,
            ..self.origin(conn, case).await?
        })
    }

    /// A replacement form from the case's own sender or signatory: the fields and findings are
    /// replaced, earlier accept and authorise decisions on the old form are void (and logged as
    /// such), and the checks decide the state again: findings send the case to needs review
    /// (also from validated), a clean form in needs review is validated, and a case awaiting
    /// information goes back to the caseworker who asked.
    async fn replace_form(
        &self,
        conn: &mut AnyConnection,
        case: CaseRecord,
        form: FormAnalysis,
        parsed: &ParsedEmail,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let workflow = self.workflow_named(case.workflow.as_deref())?;
        let voided = decisions_since_last_form(workflow, &storage::events_for_case(conn, case.id).await?);
        let mut change = Self::plan_form(&case, workflow, &form, parsed, attachment_ids, now);
        change.events.push(CaseEvent {
            reason: Some(checks_summary(&form.findings)),
            data: Some(serde_json::json!({ "from": parsed.from_address }).to_string()),
            ..CaseEvent::system(EventKind::FormResubmitted, now)
        });
        if !voided.is_empty() {
            change.events.push(CaseEvent {
                reason: Some(format!(
                    "a replacement form arrived, so these decisions on the old form no longer stand: {}",
                    voided.join("; ")
                )),
                ..CaseEvent::system(EventKind::DecisionsVoided, now)
            });
        }
        let mut case = self.apply(conn, &case, change).await?;
        let to = match case.state.as_str() {
            wellknown::AWAITING_INFORMATION => Some(wellknown::NEEDS_REVIEW),
            state => Some(wellknown::state_after_checks(!form.findings.is_empty())).filter(|to| *to != state),
        };
        if let Some(to) = to {
            let origin = self.reply_origin(conn, &case, parsed).await?;
            case = self
                .move_as_system(conn, &case, workflow, to, "a replacement form was checked", &origin)
                .await?;
        }
        Ok(case)
    }

    /// A form arriving for a case that had none ("sorry, now attached"): the case joins the
    /// form's workflow and is checked as if the form had come first.
    async fn classify(
        &self,
        conn: &mut AnyConnection,
        case: CaseRecord,
        form: FormAnalysis,
        parsed: &ParsedEmail,
        attachment_ids: &[i64],
        now: i64,
    ) -> Result<CaseRecord, EngineError> {
        let workflow = self.workflow_named(form.workflow.as_deref())?;
        let mut change = Self::plan_form(&case, workflow, &form, parsed, attachment_ids, now);
        change.events.push(CaseEvent {
            reason: Some(format!(
                "form {} arrived in reply; {}",
                workflow.form_id().unwrap_or_default(),
                checks_summary(&form.findings)
            )),
            ..CaseEvent::system(EventKind::Classified, now)
        });
        let when = self.when();
        // The SLA counts from when the email first arrived, as if the form had come with it.
        sla::start_late(&mut change, when, workflow, case.created_at);
        let validated = wellknown::state_after_checks(false);
        let moves_on = form.findings.is_empty() && case.state != validated;
        if !moves_on {
            // It stays where it is: that state's timers start now.
            change
                .arm_timers
                .extend(change::state_timers(when, workflow, &case.state));
        }
        let mut case = self.apply(conn, &case, change).await?;
        if moves_on {
            let origin = self.reply_origin(conn, &case, parsed).await?;
            case = self
                .move_as_system(conn, &case, workflow, validated, "all checks passed", &origin)
                .await?;
        }
        Ok(case)
    }

    /// Plans writing a form's fields, findings and attachment onto `case`.
    fn plan_form(
        case: &CaseRecord,
        workflow: &WorkflowDef,
        form: &FormAnalysis,
        parsed: &ParsedEmail,
        attachment_ids: &[i64],
        now: i64,
    ) -> storage::CaseChangeset {
        let mut change = change::changeset(case, now);
        change.columns.form = Some(change::form_columns(workflow, &form.fields, &form.findings));
        let attachment = &parsed.attachments[form.attachment_index];
        change.columns.form_attachment = Some((attachment_ids[form.attachment_index], attachment.sha256.clone()));
        change
    }
}

/// The four-eyes decisions (accepting, authorising) people took since the case's current form
/// arrived: a replacement form makes them void.
fn decisions_since_last_form(workflow: &WorkflowDef, events: &[CaseEvent]) -> Vec<String> {
    let since = events
        .iter()
        .rposition(|e| {
            matches!(
                e.kind,
                EventKind::Created | EventKind::FormResubmitted | EventKind::Classified
            )
        })
        .map(|i| i + 1)
        .unwrap_or(0);
    let decides = |name: Option<&str>| {
        name.and_then(|n| workflow.transition(n))
            .is_some_and(|t| matches!(t.four_eyes, Some(FourEyesPart::Accepts | FourEyesPart::Authorises)))
    };
    events[since..]
        .iter()
        .filter(|e| e.actor_role != ActorRole::System.as_str() && decides(e.transition.as_deref()))
        .map(|e| {
            format!(
                "{} by {} ({})",
                e.transition.as_deref().unwrap_or_default(),
                e.actor,
                e.reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect()
}
