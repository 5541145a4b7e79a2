//! Durable timers and scheduled jobs.
//!
//! Timers are rows with a due time, armed and cancelled in the same transaction as the state
//! change they belong to. The scheduler asks the engine to fire each due timer (see
//! [`crate::engine::timers`]: claim, effect and event in one transaction, exactly once across
//! instances). It sleeps until the next timer is due, and is woken early when a transaction
//! arms one.
//!
//! Scheduled jobs (cron expressions from settings): the managers' daily digest on working days,
//! and nightly housekeeping (raw message retention). Each occurrence runs once across
//! instances: the first to record it in `cron_runs` runs it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::SchedulerSettings;
use crate::engine::{Engine, EngineError, FiredTimer, TimerRecipients};
use crate::storage::{self, QueryContext, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("schedule `{job}` is not a cron expression: {message}")]
    Schedule { job: &'static str, message: String },
}

pub struct Scheduler {
    engine: Engine,
    settings: SchedulerSettings,
    digest: cron::Schedule,
    housekeeping: cron::Schedule,
    coverage_digest: cron::Schedule,
    outreach: cron::Schedule,
}

impl Scheduler {
    pub fn new(engine: Engine, settings: SchedulerSettings) -> Result<Self, SchedulerError> {
        let parse = |job: &'static str, expression: &str| {
            cron::Schedule::from_str(expression).map_err(|e| SchedulerError::Schedule {
                job,
                message: e.to_string(),
            })
        };
        Ok(Scheduler {
            digest: parse("digest_schedule", &settings.digest_schedule)?,
            housekeeping: parse("housekeeping_schedule", &settings.housekeeping_schedule)?,
            coverage_digest: parse("coverage_digest_schedule", &settings.coverage_digest_schedule)?,
            outreach: parse("outreach_schedule", &settings.outreach_schedule)?,
            engine,
            settings,
        })
    }

    /// Fires every timer due by the engine's clock; returns what each did.
    pub async fn fire_due_timers(&self) -> Result<Vec<FiredTimer>, SchedulerError> {
        let recipients = TimerRecipients {
            team: self.settings.team_address.clone(),
            managers: self.settings.managers_address.clone(),
        };
        let mut fired = Vec::new();
        while let Some(timer) = self.engine.fire_next_due_timer(&recipients).await? {
            fired.push(timer);
        }
        if !fired.is_empty() {
            self.engine.wakers().outbox.notify_one();
        }
        Ok(fired)
    }

    /// Runs each scheduled job whose latest occurrence (within the last day) has not run yet.
    /// Returns the jobs it ran.
    pub async fn run_due_jobs(&self) -> Result<Vec<String>, SchedulerError> {
        let now = self.engine.clock().now();
        let mut ran = Vec::new();
        for (job, schedule) in [
            ("daily_digest", &self.digest),
            ("housekeeping", &self.housekeeping),
            ("coverage_digest", &self.coverage_digest),
            ("account_outreach", &self.outreach),
        ] {
            let Some(occurrence) = schedule
                .after(&(now - chrono::Duration::days(1)))
                .take_while(|t| *t <= now)
                .last()
            else {
                continue;
            };
            let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
            let scheduled_for = occurrence.timestamp_millis();
            if !storage::claim_job_run(&mut conn, job, scheduled_for, now.timestamp_millis()).await? {
                continue;
            }
            drop(conn);
            let outcome = match job {
                "daily_digest" => self.daily_digest(occurrence).await?,
                "coverage_digest" => self.coverage_digest().await?,
                "account_outreach" => self.account_outreach(occurrence).await?,
                _ => self.housekeeping().await?,
            };
            let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
            storage::finish_job_run(&mut conn, job, scheduled_for, self.engine.now_ms(), &outcome).await?;
            info!(job, outcome = %outcome, "scheduled job ran");
            ran.push(format!("{job}: {outcome}"));
        }
        // The jobs read a great deal once a day (years of report days, every chain's head, the
        // account register): what they freed goes back to the system, not kept by an idle
        // service.
        if !ran.is_empty() {
            self.engine.db().shed_memory().await;
        }
        Ok(ran)
    }

    /// How far back the nightly housekeeping makes sure report days are kept: the year and a
    /// month a manager most often looks at, with its comparison period partly.
    const REPORT_DAYS_KEPT_AHEAD: i64 = 400;

    /// The managers' morning digest: a short summary of the dashboard (open, past the SLA, at
    /// risk, waiting on the sender) and of the last week's report, with a link to the reports
    /// for the rest. Skipped on bank holidays (the schedule already skips weekends).
    async fn daily_digest(&self, occurrence: DateTime<Local>) -> Result<String, SchedulerError> {
        if !self.engine.calendar().is_working_day(occurrence.date_naive()) {
            return Ok("skipped: not a working day".into());
        }
        let open = crate::reports::open_now(&self.engine).await?;
        let now = crate::reports::dashboard(&self.engine, &open).await?;
        let yesterday = occurrence.date_naive() - chrono::Duration::days(1);
        let week = crate::reports::Period {
            from: yesterday - chrono::Duration::days(6),
            to: yesterday,
        };
        // Only the week's own figures: the backlog is in the dashboard's part already.
        let report = crate::reports::report_with_open(&self.engine, week, &[]).await?;
        let context = serde_json::json!({
            "open_total": now.open,
            "breached": now.breached,
            "at_risk": now.at_risk,
            "paused": now.paused,
            "week_from": week.from.format("%-d %B").to_string(),
            "week_to": week.to.format("%-d %B").to_string(),
            "received": report.headline.received,
            "completed": report.headline.completed,
            "percent_within_sla": report.headline.percent_within_sla.map(|p| format!("{p:.0}%")),
            "reports_link": format!("{}/reports", self.settings.web_base_url.trim_end_matches('/')),
        });
        self.mail_managers("daily_digest", &context).await?;
        Ok(format!("{} open, {} past their SLA", now.open, now.breached))
    }

    /// Queues a message to the managers (held back, and recorded as such, when no
    /// `managers_address` is set).
    async fn mail_managers(&self, template: &str, context: &serde_json::Value) -> Result<(), SchedulerError> {
        let recipient = self.settings.managers_address.clone();
        let mail = storage::NewMail {
            template: template.into(),
            suppressed_reason: recipient.is_none().then(|| "no managers_address is set".into()),
            recipient,
            context_json: context.to_string(),
            message_id: format!("<{}@countersign>", uuid::Uuid::new_v4()),
            in_reply_to: None,
            automatic: true,
        };
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        storage::enqueue_mail(&mut conn, mail, self.engine.now_ms()).await?;
        self.engine.wakers().outbox.notify_one();
        Ok(())
    }

    /// The managers' weekly list of organisations short of Primary Users: none, one, and one
    /// being replaced (what `/reports/coverage` shows), with a link to it.
    async fn coverage_digest(&self) -> Result<String, SchedulerError> {
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let open = self.engine.workflows().open_states();
        let short = storage::primary_user_coverage(&mut conn, open).await?;
        drop(conn);
        // Checked codes and references only: an organisation's name was first typed on a
        // form, and mail quotes no one's text (the coverage page shows the names).
        let line = |c: &storage::Coverage| match &c.replacing {
            Some(reference) => format!("{} (being replaced: {reference})", c.ods_code),
            None => c.ods_code.clone(),
        };
        let none: Vec<String> = short.iter().filter(|c| c.primary_users == 0).map(line).collect();
        let one: Vec<String> = short.iter().filter(|c| c.primary_users == 1).map(line).collect();
        let replacing = short.iter().filter(|c| c.replacing.is_some()).count();
        let context = serde_json::json!({
            "none": none,
            "one": one,
            "replacing": replacing,
            "coverage_link": format!("{}/reports/coverage", self.settings.web_base_url.trim_end_matches('/')),
        });
        self.mail_managers("coverage_digest", &context).await?;
        Ok(format!(
            "{} organisation(s) with no Primary User, {} with one ({replacing} being replaced)",
            none.len(),
            one.len()
        ))
    }

    /// Account lifecycle notices from the Open Exeter account register: a Primary User whose
    /// password expires soon or has expired gets the guidance on resetting it; an account near
    /// the 90-day cut-off gets a warning. Each notice is sent once per occurrence (claimed in
    /// the same transaction as its mail, so two instances never both send it), at most
    /// `outreach_per_run` a run, through the outbox (whose per-recipient limit also holds).
    /// An organisation none of whose Primary Users can sign in gets a coverage case opened
    /// (see `engine::opened`). Skipped on bank holidays.
    async fn account_outreach(&self, occurrence: DateTime<Local>) -> Result<String, SchedulerError> {
        let today = occurrence.date_naive();
        if !self.engine.calendar().is_working_day(today) {
            return Ok("skipped: not a working day".into());
        }
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let accounts = storage::list_accounts(&mut conn, None).await?;
        drop(conn);
        let due = crate::accounts::notices_due(&accounts, today, self.settings.password_warning_days);
        let now = self.engine.now_ms();
        let (mut queued, mut sent_before) = (0_i64, 0);
        let mut tx = self.engine.db().begin_write().await.context("starting the notices")?;
        for notice in &due {
            if queued >= self.settings.outreach_per_run {
                break;
            }
            if !storage::claim_notice(&mut tx, &notice.key, &notice.user_id, now).await? {
                sent_before += 1;
                continue;
            }
            // Checked identifiers and numbers only: a name or address in the register came
            // from a file, and our mail quotes no one's text.
            let context = serde_json::json!({
                "user_id": notice.user_id,
                "ods_code": notice.ods_code,
                "days": notice.days.abs(),
                "days_ago": -notice.days,
            });
            let mail = storage::NewMail {
                template: notice.template.into(),
                recipient: Some(notice.recipient.clone()),
                suppressed_reason: None,
                context_json: context.to_string(),
                message_id: format!("<{}@countersign>", uuid::Uuid::new_v4()),
                in_reply_to: None,
                automatic: true,
            };
            storage::enqueue_mail(&mut tx, mail, now).await?;
            queued += 1;
        }
        tx.commit().await.context("committing the notices")?;
        if queued > 0 {
            self.engine.wakers().outbox.notify_one();
        }
        let waiting = due.len() as i64 - queued - sent_before;
        // Organisations none of whose Primary Users can sign in: a case each for PCSE, once
        // per occurrence (the same people lapsed the same way).
        let mut opened = Vec::new();
        for gap in crate::accounts::coverage_gaps(&accounts, today) {
            if let Some(case) = self.engine.open_coverage_case(&gap).await? {
                opened.push(case.reference);
            }
        }
        Ok(format!(
            "{queued} notice(s) queued, {sent_before} sent before, {waiting} waiting for the next run; {} coverage case(s) opened{}",
            opened.len(),
            if opened.is_empty() {
                String::new()
            } else {
                format!(" ({})", opened.join(", "))
            }
        ))
    }

    /// Clears the raw bytes of messages older than the retention period whose cases are all
    /// closed. The message row (hash, Message-ID, sender) and the case record stay.
    async fn housekeeping(&self) -> Result<String, SchedulerError> {
        let cutoff = self.engine.now_ms() - self.settings.raw_retention_days * 86_400_000;
        let terminal = self.engine.workflows().terminal_states();
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let mut open: BTreeMap<i64, bool> = BTreeMap::new();
        for (id, state) in storage::old_raw_messages(&mut conn, cutoff).await? {
            let still_open = state.is_some_and(|s| !terminal.contains(&s));
            *open.entry(id).or_default() |= still_open;
        }
        let mut cleared = 0;
        for (id, _) in open.into_iter().filter(|(_, still_open)| !still_open) {
            storage::clear_raw_message(&mut conn, id).await?;
            cleared += 1;
        }
        drop(conn);
        // The reports read each past day's kept facts: keep any day of the last 13 months not
        // kept yet (after the first night, that is yesterday).
        let kept = crate::reports::keep_past_days(&self.engine, Self::REPORT_DAYS_KEPT_AHEAD).await?;
        // The night's anchor of the event log's chains.
        let anchor = crate::audit::write_anchor(self.engine.db(), self.engine.now_ms()).await?;
        Ok(format!(
            "cleared {cleared} raw message(s) older than {} days; kept {kept} day(s) of report figures; audit anchor #{} {}",
            self.settings.raw_retention_days, anchor.id, anchor.hash
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
            if let Err(error) = self.engine.recheck_senders().await {
                warn!(error = %error, "checking senders again failed");
            }
            let now = self.engine.now_ms();
            let next = self
                .engine
                .next_timer_due()
                .await
                .ok()
                .flatten()
                .map(|due| (due - now).max(0) as u64);
            let wait = Duration::from_millis(next.unwrap_or(60_000).min(60_000));
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.engine.wakers().timers.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
