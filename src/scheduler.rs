//! Durable timers and scheduled jobs.
//!
//! Timers are rows with a due time, armed and cancelled in the same transaction as the state
//! change they belong to. The scheduler fires each due timer in its own transaction: the claim
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL), the timer's effect (mail queued, or a transition)
//! and its event commit together, so each timer fires exactly once, even with several
//! instances, and a crash mid-way leaves it pending. It sleeps until the next timer is due,
//! and is woken early when a transaction arms one.
//!
//! Scheduled jobs (cron expressions from settings): the managers' daily digest on working days,
//! and nightly housekeeping (raw message retention). Each occurrence runs once across
//! instances: the first to record it in `cron_runs` runs it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};
use sqlx::{AnyConnection, Row};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::MailerSettings;
use crate::engine::{Engine, EngineError, Notification, SLA_AT_RISK, SLA_BREACHED};
use crate::storage::{self, Backend, CaseEvent, QueryContext, StorageError};
use crate::workflow::{Actor, TimerAction, TransitionRequest};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("schedule `{job}` is not a cron expression: {message}")]
    Schedule { job: &'static str, message: String },
}

/// What a fired timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredTimer {
    pub case_reference: String,
    pub timer: String,
    /// What it did: `mail:<template>`, `transition:<to>`, or `nothing (…)`.
    pub effect: String,
}

pub struct Scheduler {
    engine: Engine,
    settings: MailerSettings,
    digest: cron::Schedule,
    housekeeping: cron::Schedule,
}

impl Scheduler {
    pub fn new(engine: Engine, settings: MailerSettings) -> Result<Self, SchedulerError> {
        let parse = |job: &'static str, expression: &str| {
            cron::Schedule::from_str(expression).map_err(|e| SchedulerError::Schedule {
                job,
                message: e.to_string(),
            })
        };
        Ok(Scheduler {
            digest: parse("digest_schedule", &settings.digest_schedule)?,
            housekeeping: parse("housekeeping_schedule", &settings.housekeeping_schedule)?,
            engine,
            settings,
        })
    }

    /// Fires every timer due by the engine's clock; returns what each did.
    pub async fn fire_due_timers(&self) -> Result<Vec<FiredTimer>, SchedulerError> {
        let mut fired = Vec::new();
        while let Some(timer) = self.fire_one().await? {
            fired.push(timer);
        }
        if !fired.is_empty() {
            self.engine.wakers.outbox.notify_one();
        }
        Ok(fired)
    }

    async fn fire_one(&self) -> Result<Option<FiredTimer>, SchedulerError> {
        let now = self.engine.now_ms();
        let sql = match self.engine.db.backend {
            Backend::Postgres => {
                "UPDATE timers SET status = 'fired', finished_at = $1
                 WHERE id = (SELECT id FROM timers WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING case_id, name, state"
            }
            Backend::Sqlite => {
                "UPDATE timers SET status = 'fired', finished_at = $1
                 WHERE id = (SELECT id FROM timers WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT 1)
                 RETURNING case_id, name, state"
            }
        };
        let mut tx = self.engine.db.begin_write().await.context("starting a transaction")?;
        let Some(row) = sqlx::query(sql)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .context("claiming a due timer")?
        else {
            return Ok(None);
        };
        let (case_id, name, state): (i64, String, String) = (
            row.try_get(0).context("decoding a timer")?,
            row.try_get(1).context("decoding a timer")?,
            row.try_get(2).context("decoding a timer")?,
        );
        let effect = self.apply_timer(&mut tx, case_id, &name, &state, now).await?;
        let case_reference = storage::case_by_id(&mut tx, case_id)
            .await?
            .map(|c| c.reference)
            .unwrap_or_default();
        tx.commit().await.context("committing a fired timer")?;
        info!(case = %case_reference, timer = %name, effect = %effect, "timer fired");
        Ok(Some(FiredTimer {
            case_reference,
            timer: name,
            effect,
        }))
    }

    async fn apply_timer(
        &self,
        conn: &mut AnyConnection,
        case_id: i64,
        name: &str,
        state: &str,
        now: i64,
    ) -> Result<String, SchedulerError> {
        let Some(case) = storage::case_by_id(conn, case_id).await? else {
            return Ok("nothing (no such case)".into());
        };
        let Some(workflow) = case.workflow.as_deref().and_then(|w| self.engine.workflows.get(w)) else {
            return Ok("nothing (the case has no workflow)".into());
        };
        if workflow.state(&case.state).is_some_and(|s| s.terminal) {
            return Ok(format!("nothing (the case is {})", case.state));
        }
        // The SLA timers are the case's own, whatever its state.
        if name == SLA_AT_RISK || name == SLA_BREACHED {
            let Some(template) = workflow.sla.escalation_template.as_deref() else {
                return Ok("nothing (no escalation template)".into());
            };
            let reason = if name == SLA_AT_RISK {
                "The case's SLA is at risk."
            } else {
                "The case has breached its SLA."
            };
            self.record(conn, case.id, name, reason, now).await?;
            let mail = Notification {
                template,
                recipient: self.settings.managers_address.as_deref(),
                reason: Some(reason),
                automatic: true,
                in_reply_to: None,
                suppress_because: None,
            };
            self.engine.notify(conn, &case, workflow, &mail, now).await?;
            return Ok(format!("mail:{template}"));
        }
        if case.state != state {
            // Cancelled in the transaction that moved the case; this guards a race with it.
            return Ok(format!("nothing (the case has moved on to {})", case.state));
        }
        let Some(timer) = workflow.timers.iter().find(|t| t.name == name) else {
            return Ok(format!("nothing (workflow {} has no timer {name})", workflow.name));
        };
        let (recipient, kind) = match timer.action {
            TimerAction::RemindSender => (case.sender.clone(), "reminder_sent"),
            TimerAction::NudgeTeam => (self.settings.team_address.clone(), "team_nudged"),
            TimerAction::Escalate => (self.settings.managers_address.clone(), "escalated"),
            TimerAction::Transition => {
                let transition = timer.transition.as_deref().and_then(|t| workflow.transition(t));
                let Some(transition) = transition else {
                    return Ok("nothing (no transition)".into());
                };
                let request = TransitionRequest {
                    to: transition.to.clone(),
                    reason: Some(format!("timer {name}")),
                    ..TransitionRequest::default()
                };
                let plan = Engine::plan_as_system(workflow, &case.state, &request, &case.reference.clone())?;
                let (in_reply_to, automatic) = self.engine.origin_message(conn, case.origin_message_id).await?;
                self.engine
                    .apply_plan(
                        conn,
                        &case,
                        workflow,
                        &plan,
                        &Actor::system(),
                        Some(&format!("no reply: timer {name}")),
                        &[],
                        automatic.as_deref(),
                        in_reply_to.as_deref(),
                        now,
                    )
                    .await?;
                return Ok(format!("transition:{}", transition.to));
            }
        };
        let template = timer.template.as_deref().unwrap_or_default();
        self.record(conn, case.id, kind, &format!("timer {name}"), now).await?;
        let (in_reply_to, automatic) = if timer.action == TimerAction::RemindSender {
            self.engine.origin_message(conn, case.origin_message_id).await?
        } else {
            (None, None)
        };
        let mail = Notification {
            template,
            recipient: recipient.as_deref(),
            reason: None,
            automatic: true,
            in_reply_to: in_reply_to.as_deref(),
            suppress_because: automatic.as_deref(),
        };
        self.engine.notify(conn, &case, workflow, &mail, now).await?;
        Ok(format!("mail:{template}"))
    }

    async fn record(
        &self,
        conn: &mut AnyConnection,
        case_id: i64,
        kind: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), SchedulerError> {
        let event = CaseEvent {
            reason: Some(reason.into()),
            ..CaseEvent::system(kind, now)
        };
        storage::append_event(conn, case_id, &event).await?;
        Ok(())
    }

    /// When the next timer falls due, if any is pending.
    async fn next_timer_due(&self) -> Result<Option<i64>, SchedulerError> {
        Ok(
            sqlx::query_scalar("SELECT MIN(due_at) FROM timers WHERE status = 'pending'")
                .fetch_one(&self.engine.db.pool)
                .await
                .context("finding the next timer")?,
        )
    }

    /// Runs each scheduled job whose latest occurrence (within the last day) has not run yet.
    /// Returns the jobs it ran.
    pub async fn run_due_jobs(&self) -> Result<Vec<String>, SchedulerError> {
        let now = self.engine.clock.now();
        let mut ran = Vec::new();
        for (job, schedule) in [("daily_digest", &self.digest), ("housekeeping", &self.housekeeping)] {
            let Some(occurrence) = schedule
                .after(&(now - chrono::Duration::days(1)))
                .take_while(|t| *t <= now)
                .last()
            else {
                continue;
            };
            let claimed = sqlx::query(
                "INSERT INTO cron_runs (job, scheduled_for, started_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(job)
            .bind(occurrence.timestamp_millis())
            .bind(now.timestamp_millis())
            .execute(&self.engine.db.pool)
            .await
            .context("claiming a scheduled job")?;
            if claimed.rows_affected() != 1 {
                continue;
            }
            let outcome = match job {
                "daily_digest" => self.daily_digest(occurrence).await?,
                _ => self.housekeeping().await?,
            };
            sqlx::query("UPDATE cron_runs SET finished_at = $1, outcome = $2 WHERE job = $3 AND scheduled_for = $4")
                .bind(self.engine.now_ms())
                .bind(&outcome)
                .bind(job)
                .bind(occurrence.timestamp_millis())
                .execute(&self.engine.db.pool)
                .await
                .context("recording a scheduled job")?;
            info!(job, outcome = %outcome, "scheduled job ran");
            ran.push(format!("{job}: {outcome}"));
        }
        Ok(ran)
    }

    /// The managers' morning digest: the backlog by workflow and state, and what is due today
    /// or overdue. Skipped on bank holidays (the schedule already skips weekends).
    async fn daily_digest(&self, occurrence: DateTime<Local>) -> Result<String, SchedulerError> {
        if !self.engine.calendar.is_working_day(occurrence.date_naive()) {
            return Ok("skipped: not a working day".into());
        }
        let terminal = self.engine.workflows.terminal_states();
        let rows = sqlx::query(
            "SELECT workflow, state, COUNT(*) FROM cases GROUP BY workflow, state ORDER BY workflow, state",
        )
        .fetch_all(&self.engine.db.pool)
        .await
        .context("counting the backlog")?;
        let mut by_state = Vec::new();
        let mut open_total = 0i64;
        for row in rows {
            let state: String = row.try_get(1).context("counting the backlog")?;
            if terminal.contains(&state) {
                continue;
            }
            let count: i64 = row.try_get(2).context("counting the backlog")?;
            let workflow: Option<String> = row.try_get(0).context("counting the backlog")?;
            open_total += count;
            by_state.push(serde_json::json!({ "workflow": workflow.unwrap_or_else(|| "unclassified".into()), "state": state, "count": count }));
        }
        let end_of_day = occurrence
            .date_naive()
            .and_hms_opt(23, 59, 59)
            .and_then(|t| Local.from_local_datetime(&t).earliest())
            .unwrap_or(occurrence);
        let due = sqlx::query(
            "SELECT reference, org_ods_code, state, due_at FROM cases WHERE due_at <= $1 ORDER BY due_at LIMIT 2000",
        )
        .bind(end_of_day.timestamp_millis())
        .fetch_all(&self.engine.db.pool)
        .await
        .context("listing cases due")?;
        let mut breaching = Vec::new();
        for row in due {
            let state: String = row.try_get(2).context("listing cases due")?;
            if terminal.contains(&state) {
                continue;
            }
            let due_at: i64 = row.try_get(3).context("listing cases due")?;
            breaching.push(serde_json::json!({
                "reference": row.try_get::<String, _>(0).context("listing cases due")?,
                "org_ods_code": row.try_get::<Option<String>, _>(1).context("listing cases due")?,
                "state": state,
                "due_at": DateTime::from_timestamp_millis(due_at).map(|t| t.with_timezone(&Local).format("%d/%m/%Y").to_string()),
            }));
        }
        let context = serde_json::json!({ "open_total": open_total, "by_state": by_state, "breaching": breaching });
        let now = self.engine.now_ms();
        let message_id = format!("<{}@countersign>", uuid::Uuid::new_v4());
        let recipient = self.settings.managers_address.as_deref();
        let mut conn = self.engine.db.pool.acquire().await.context("connecting")?;
        storage::enqueue_mail(
            &mut conn,
            &storage::NewOutboxMessage {
                case_id: None,
                template: "daily_digest",
                recipient,
                context_json: &context.to_string(),
                message_id: &message_id,
                in_reply_to: None,
                suppressed_reason: recipient.is_none().then_some("no managers_address is set"),
                automatic: true,
                now,
            },
        )
        .await?;
        self.engine.wakers.outbox.notify_one();
        Ok(format!("{open_total} open, {} due today or overdue", breaching.len()))
    }

    /// Clears the raw bytes of messages older than the retention period whose cases are all
    /// closed. The message row (hash, Message-ID, sender) and the case record stay.
    async fn housekeeping(&self) -> Result<String, SchedulerError> {
        let cutoff = self.engine.now_ms() - self.settings.raw_retention_days * 86_400_000;
        let terminal = self.engine.workflows.terminal_states();
        let rows = sqlx::query(
            "SELECT r.id, c.state FROM raw_messages r LEFT JOIN case_messages cm ON cm.raw_message_id = r.id LEFT JOIN cases c ON c.id = cm.case_id
             WHERE r.received_at < $1 AND r.raw IS NOT NULL",
        )
        .bind(cutoff)
        .fetch_all(&self.engine.db.pool)
        .await
        .context("finding old raw messages")?;
        let mut open: BTreeMap<i64, bool> = BTreeMap::new();
        for row in rows {
            let id: i64 = row.try_get(0).context("finding old raw messages")?;
            let state: Option<String> = row.try_get(1).context("finding old raw messages")?;
            let still_open = state.is_some_and(|s| !terminal.contains(&s));
            *open.entry(id).or_default() |= still_open;
        }
        let mut cleared = 0;
        for (id, _) in open.into_iter().filter(|(_, still_open)| !still_open) {
            sqlx::query("UPDATE raw_messages SET raw = NULL WHERE id = $1")
                .bind(id)
                .execute(&self.engine.db.pool)
                .await
                .context("clearing a raw message")?;
            cleared += 1;
        }
        Ok(format!(
            "cleared {cleared} raw message(s) older than {} days",
            self.settings.raw_retention_days
        ))
    }

    /// Fires timers and runs jobs until `stop` is set. Sleeps until the next timer is due (at
    /// most a minute, so timers armed by other instances and the cron schedule are seen), and
    /// wakes early when this instance arms one.
    pub async fn run_until_stopped(&self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(error) = self.fire_due_timers().await {
                warn!(error = %error, "firing timers failed");
            }
            if let Err(error) = self.run_due_jobs().await {
                warn!(error = %error, "scheduled jobs failed");
            }
            let now = self.engine.now_ms();
            let next = self
                .next_timer_due()
                .await
                .ok()
                .flatten()
                .map(|due| (due - now).max(0) as u64);
            let wait = Duration::from_millis(next.unwrap_or(60_000).min(60_000));
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.engine.wakers.timers.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
