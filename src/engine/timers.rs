//! Firing a due timer. The claim, the timer's effect (mail queued, or a transition) and its
//! event commit in one transaction, through the change path: each timer fires exactly once,
//! even with several instances, and a crash mid-way leaves it pending.

use crate::domain::EventKind;
use tracing::info;

use super::change::{self, Origin};
use super::notify::{self, Notification};
use super::sla::{SLA_AT_RISK, SLA_BREACHED};
use super::{Engine, EngineError};
use crate::storage::{self, CaseChangeset, CaseEvent, CaseRecord, QueryContext};
use crate::workflow::{TimerAction, WorkflowDef};

/// What a fired timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredTimer {
    pub case_reference: String,
    pub timer: String,
    /// What it did: `mail:<template>`, `transition:<to>`, or `nothing (…)`.
    pub effect: String,
}

/// Where the team's and the managers' mail goes (settings).
#[derive(Debug, Clone, Default)]
pub struct TimerRecipients {
    pub team: Option<String>,
    pub managers: Option<String>,
}

/// A claimed timer's decision: the change to write (if any) and what it did.
struct Outcome {
    change: Option<CaseChangeset>,
    effect: String,
}

impl Outcome {
    fn nothing(why: impl std::fmt::Display) -> Outcome {
        Outcome {
            change: None,
            effect: format!("nothing ({why})"),
        }
    }
}

impl Engine {
    /// Claims the earliest timer due by the engine's clock, fires it and commits; `None` when
    /// none is due.
    pub async fn fire_next_due_timer(&self, recipients: &TimerRecipients) -> Result<Option<FiredTimer>, EngineError> {
        let now = self.now_ms();
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let Some(timer) = storage::claim_due_timer(&mut tx, now).await? else {
            return Ok(None);
        };
        let case = storage::case_by_id(&mut tx, timer.case_id).await?;
        let outcome = match &case {
            None => Outcome::nothing("no such case"),
            Some(case) => {
                let origin = self.origin(&mut tx, case).await?;
                self.plan_timer(case, &timer.name, &timer.state, recipients, &origin)?
            }
        };
        if let (Some(case), Some(change)) = (&case, outcome.change) {
            self.apply(&mut tx, case, change).await?;
        }
        tx.commit().await.context("committing a fired timer")?;
        let case_reference = case.map(|c| c.reference).unwrap_or_default();
        info!(case = %case_reference, timer = %timer.name, effect = %outcome.effect, "timer fired");
        Ok(Some(FiredTimer {
            case_reference,
            timer: timer.name,
            effect: outcome.effect,
        }))
    }

    /// When the next pending timer falls due, if any.
    pub async fn next_timer_due(&self) -> Result<Option<i64>, EngineError> {
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        Ok(storage::next_timer_due(&mut conn).await?)
    }

    /// What timer `name` (armed for `state`) does to `case` now.
    fn plan_timer(
        &self,
        case: &CaseRecord,
        name: &str,
        state: &str,
        recipients: &TimerRecipients,
        origin: &Origin,
    ) -> Result<Outcome, EngineError> {
        let Some(workflow) = case.workflow.as_deref().and_then(|w| self.workflows.get(w)) else {
            return Ok(Outcome::nothing("the case has no workflow"));
        };
        if workflow.state(&case.state).is_some_and(|s| s.terminal) {
            return Ok(Outcome::nothing(format!("the case is {}", case.state)));
        }
        let now = self.now_ms();
        // The SLA timers are the case's own, whatever its state.
        if name == SLA_AT_RISK || name == SLA_BREACHED {
            let Some(template) = workflow.sla.escalation_template.as_deref() else {
                return Ok(Outcome::nothing("no escalation template"));
            };
            let (kind, reason) = if name == SLA_AT_RISK {
                (EventKind::SlaAtRisk, "The case's SLA is at risk.")
            } else {
                (EventKind::SlaBreached, "The case has breached its SLA.")
            };
            let mail = Notification {
                template,
                recipient: recipients.managers.as_deref(),
                reason: Some(reason),
                automatic: true,
                in_reply_to: None,
                suppress_because: None,
            };
            return Ok(self.noted_with_mail(case, workflow, kind, reason, &mail, origin, now));
        }
        if case.state != state {
            // Cancelled in the transaction that moved the case; this guards a race with it.
            return Ok(Outcome::nothing(format!("the case has moved on to {}", case.state)));
        }
        let Some(timer) = workflow.timers.iter().find(|t| t.name == name) else {
            return Ok(Outcome::nothing(format!(
                "workflow {} has no timer {name}",
                workflow.name
            )));
        };
        let (recipient, kind, threaded) = match timer.action {
            TimerAction::RemindSender => (case.sender.as_deref(), EventKind::ReminderSent, true),
            TimerAction::NudgeTeam => (recipients.team.as_deref(), EventKind::TeamNudged, false),
            TimerAction::Escalate => (recipients.managers.as_deref(), EventKind::Escalated, false),
            TimerAction::Transition => {
                let Some(transition) = timer.transition.as_deref().and_then(|t| workflow.transition(t)) else {
                    return Ok(Outcome::nothing("no transition"));
                };
                let change = self.plan_system_move(
                    case,
                    workflow,
                    &transition.to,
                    &format!("no reply: timer {name}"),
                    origin,
                )?;
                return Ok(Outcome {
                    change: Some(change),
                    effect: format!("transition:{}", transition.to),
                });
            }
        };
        let mail = Notification {
            template: timer.template.as_deref().unwrap_or_default(),
            recipient,
            reason: None,
            automatic: true,
            in_reply_to: threaded.then_some(origin.message_id.as_deref()).flatten(),
            suppress_because: threaded.then_some(origin.automatic.as_deref()).flatten(),
        };
        Ok(self.noted_with_mail(case, workflow, kind, &format!("timer {name}"), &mail, origin, now))
    }

    /// A timer's event and its mail, as one change that leaves the case's own columns alone.
    #[allow(clippy::too_many_arguments)]
    fn noted_with_mail(
        &self,
        case: &CaseRecord,
        workflow: &WorkflowDef,
        kind: EventKind,
        reason: &str,
        mail: &Notification<'_>,
        origin: &Origin,
        now: i64,
    ) -> Outcome {
        let mut change = change::changeset(case, now);
        change.events.push(CaseEvent {
            reason: Some(reason.into()),
            ..CaseEvent::system(kind, now)
        });
        change.mail.push(notify::compose(
            &self.mail_policy(),
            case,
            Some(workflow),
            mail,
            &origin.sender_auth,
        ));
        Outcome {
            change: Some(change),
            effect: format!("mail:{}", mail.template),
        }
    }
}
