//! The SLA clock, as plans: the case-wide timers that tell managers a case is at risk, then
//! breached; paused while the sender has the ball, resumed with the working days that were
//! left. Pure: the changes go through [`super::change`].

use chrono::Local;

use super::change::When;
use crate::storage::{ANY_STATE, CaseChangeset, CaseRecord, NewTimer};
use crate::workflow::WorkflowDef;

/// The case-wide timers that tell managers a case's SLA is at risk, then breached.
pub const SLA_AT_RISK: &str = "sla_at_risk";
pub const SLA_BREACHED: &str = "sla_breached";

/// The SLA timers for a case with `remaining_days` working days left: at risk, then breached.
/// None when the workflow escalates nothing.
pub fn timers(when: When<'_>, workflow: &WorkflowDef, remaining_days: u32) -> Vec<NewTimer> {
    if workflow.sla.escalation_template.is_none() {
        return Vec::new();
    }
    let at_risk = remaining_days.saturating_sub(workflow.sla.at_risk_working_days);
    [(SLA_AT_RISK, at_risk), (SLA_BREACHED, remaining_days)]
        .into_iter()
        .map(|(name, days)| NewTimer {
            name: name.into(),
            state: ANY_STATE.into(),
            due_at: when.working_days_later(days),
        })
        .collect()
}

/// Stops the SLA clock: the sender has the ball.
pub fn pause(change: &mut CaseChangeset, now: i64) {
    change.cancel_timers.case_wide = true;
    change.columns.sla_paused_at = Some(Some(now));
}

/// Restarts the SLA clock with the working days that were left when it stopped; returns the
/// new due time.
pub fn resume(change: &mut CaseChangeset, when: When<'_>, case: &CaseRecord, workflow: &WorkflowDef) -> Option<i64> {
    let date = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&Local).date_naive());
    let (Some(paused_on), Some(due_on)) = (case.sla_paused_at.and_then(date), case.due_at.and_then(date)) else {
        return case.due_at;
    };
    let remaining = when.calendar.working_days_between(paused_on, due_on).max(0) as u32;
    let due_at = when.working_days_later(remaining);
    change.columns.due_at = Some(Some(due_at));
    change.columns.sla_paused_at = Some(None);
    change.arm_timers.extend(timers(when, workflow, remaining));
    Some(due_at)
}

/// Starts the SLA clock of a case that joins a workflow late (a caseworker chose its form
/// type, or its form came in a reply): due when the SLA counted from the email's arrival
/// ends, with the timers that tell managers it is at risk and then breached.
pub fn start_late(change: &mut CaseChangeset, when: When<'_>, workflow: &WorkflowDef, created_at: i64) {
    let remaining = remaining_since_created(when, workflow, created_at);
    change.columns.due_at = Some(Some(when.working_days_later(remaining)));
    change.arm_timers.extend(timers(when, workflow, remaining));
}

/// The working days left of the SLA for a case that joins a workflow late (its form came in
/// a reply): the SLA counts from when the email first arrived.
pub fn remaining_since_created(when: When<'_>, workflow: &WorkflowDef, created_at: i64) -> u32 {
    let today = when.now.date_naive();
    let created = chrono::DateTime::from_timestamp_millis(created_at)
        .map(|t| t.with_timezone(&Local).date_naive())
        .unwrap_or(today);
    let elapsed = when.calendar.working_days_between(created, today).max(0) as u32;
    workflow.sla.target_working_days.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::calendar::WorkingCalendar;

    fn workflow() -> WorkflowDef {
        crate::workflow::shipped().get("primary_user_gp").unwrap().clone()
    }

    #[test]
    fn a_paused_clock_resumes_with_the_working_days_that_were_left() {
        let calendar = WorkingCalendar::default();
        let ms = |d: u32| {
            Local
                .with_ymd_and_hms(2026, 11, d, 10, 0, 0)
                .unwrap()
                .timestamp_millis()
        };
        // Paused on Monday 16th with the case due Thursday 19th: three working days left.
        let mut case = crate::storage::CaseRecord {
            sla_paused_at: Some(ms(16)),
            due_at: Some(ms(19)),
            ..super::super::change::tests_support::case()
        };
        case.state = "awaiting_information".into();
        let when = When {
            now: Local.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap(),
            calendar: &calendar,
        };
        let mut change = CaseChangeset::default();
        let due = resume(&mut change, when, &case, &workflow());
        // Resumed on Friday 27th: three working days later is Wednesday 2 December.
        let expected = Local
            .with_ymd_and_hms(2026, 12, 2, 10, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(due, Some(expected));
        assert_eq!(change.columns.sla_paused_at, Some(None));
        let names: Vec<&str> = change.arm_timers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec![SLA_AT_RISK, SLA_BREACHED]);
        let mut paused = CaseChangeset::default();
        pause(&mut paused, 42);
        assert!(paused.cancel_timers.case_wide && !paused.cancel_timers.of_state);
        assert_eq!(paused.columns.sla_paused_at, Some(Some(42)));
    }
}
