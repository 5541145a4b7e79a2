//! The managers' SLA reports, computed from the event log: each case's life is rebuilt from
//! its `created` and `transition` events, and every figure (throughput, time in each state,
//! SLA met, breaches, rounds) is counted on the working-day calendar with the SLA clock
//! stopped in the states a workflow marks `sla_running = false`. Pure: storage reads the
//! rows ([`crate::storage::report_lifecycles`]) for [`load`], this module turns them into
//! figures, and the web pages and the digest show them.

pub mod lifecycle;
mod load;

pub use load::{
    Dashboard, dashboard, days_of, keep_all_past_days, keep_past_days, open_now, report_and_previous, report_for,
    report_with_open,
};

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Duration, Local, NaiveDate, TimeZone};
use serde::{Deserialize, Serialize};

use crate::calendar::WorkingCalendar;
use crate::workflow::{WorkflowSet, wellknown};

/// One lifecycle event of a case, as storage reads it: its creation, or a state move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub case_id: i64,
    pub at: i64,
    /// The state it entered.
    pub to_state: String,
    /// Who moved it (`system` for the engine).
    pub actor: String,
    pub actor_role: String,
}

/// What a report knows of one case besides its events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaseFacts {
    pub workflow: Option<String>,
    pub organisation: Option<String>,
    /// Its findings' codes, as now recorded.
    pub findings: Vec<String>,
}

/// An open case, for the backlog and the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCase {
    pub workflow: Option<String>,
    pub state: String,
    pub created_at: i64,
    pub assignee: Option<String>,
    pub due_at: Option<i64>,
    pub sla_paused: bool,
}

/// The dates a report covers: `from` to `to`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Period {
    /// The `weeks` whole weeks (Monday to Sunday) up to and including the week of `today`.
    pub fn last_weeks(today: NaiveDate, weeks: u32) -> Period {
        let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
        Period {
            from: monday - Duration::weeks(i64::from(weeks.max(1)) - 1),
            to: monday + Duration::days(6),
        }
    }

    /// The period of the same length just before this one: what a report compares with.
    pub fn previous(&self) -> Period {
        let days = (self.to - self.from).num_days() + 1;
        Period {
            from: self.from - Duration::days(days),
            to: self.from - Duration::days(1),
        }
    }

    /// Its bounds in unix milliseconds: the start of `from`, and the start of the day after `to`.
    pub fn bounds_ms(&self) -> (i64, i64) {
        let start = |d: NaiveDate| {
            Local
                .from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
                .earliest()
                .map(|t| t.timestamp_millis())
                .unwrap_or(0)
        };
        (start(self.from), start(self.to + Duration::days(1)))
    }
}

/// A median and a 90th percentile, in working days.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub count: usize,
    pub median: f64,
    pub p90: f64,
}

/// One week's throughput for one workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeekRow {
    pub week: NaiveDate,
    pub workflow: String,
    pub received: usize,
    pub completed: usize,
    /// Of those completed (with an SLA), how many inside it.
    pub within_sla: usize,
    pub with_sla: usize,
}

/// A workflow's SLA record over the period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaRow {
    pub workflow: String,
    pub target_working_days: u32,
    pub completed: usize,
    pub within: usize,
    pub percent_within: Option<f64>,
    /// Received to provisioned, in working days (SLA pauses included: the practice waits).
    pub to_provisioned: Option<Spread>,
    /// Working days the SLA clock ran, received to completion.
    pub sla_days: Option<Spread>,
}

/// Working days spent in one state, over the visits that ended in the period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateTime {
    pub state: String,
    pub spread: Spread,
}

/// A count under a label: breaches by organisation, findings that send forms back...
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub label: String,
    pub count: usize,
}

/// Open cases by age since they were received, in working days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgeBucket {
    pub label: &'static str,
    pub count: usize,
}

/// One caseworker's share of the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caseworker {
    pub name: String,
    /// State moves they made in the period.
    pub moves: usize,
    /// Cases they moved to a final state in the period.
    pub completed: usize,
    /// Open cases assigned to them now.
    pub open: usize,
}

/// The headline figures, also worked out for the previous period to compare.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Headline {
    pub received: usize,
    pub completed: usize,
    pub percent_within_sla: Option<f64>,
    pub median_days_to_provisioned: Option<f64>,
    pub breached: usize,
}

/// Every figure of the managers' report for one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub period: Period,
    pub headline: Headline,
    pub weeks: Vec<WeekRow>,
    pub sla: Vec<SlaRow>,
    pub state_times: Vec<StateTime>,
    pub breaches_by_workflow: Vec<Tally>,
    pub breaches_by_organisation: Vec<Tally>,
    pub breaches_by_finding: Vec<Tally>,
    pub sent_back_for: Vec<Tally>,
    pub second_rounds_by_organisation: Vec<Tally>,
    pub backlog: Vec<AgeBucket>,
    pub caseworkers: Vec<Caseworker>,
}

/// The report's inputs: every lifecycle event of the cases that had one in the period (in
/// order per case), those cases' facts, and the cases open now.
pub struct Inputs<'a> {
    pub events: &'a [LifecycleEvent],
    pub facts: &'a HashMap<i64, CaseFacts>,
    pub open: &'a [OpenCase],
    pub now: DateTime<Local>,
}

const MINUTES_PER_DAY: f64 = 24.0 * 60.0;
/// Durations are counted in half-hours of working time: fine enough for figures shown to a
/// tenth of a day, and coarse enough that a day's durations are a short list of counts.
const MINUTES_PER_BUCKET: i64 = 30;

/// How many durations fell in each half-hour of working time: the form a duration takes in a
/// day's facts, so that days merge into any period and its percentiles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram(BTreeMap<u32, u32>);

impl Histogram {
    fn add(&mut self, minutes: i64) {
        let bucket = u32::try_from(minutes.max(0) / MINUTES_PER_BUCKET).unwrap_or(u32::MAX);
        *self.0.entry(bucket).or_insert(0) += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (bucket, count) in &other.0 {
            *self.0.entry(*bucket).or_insert(0) += count;
        }
    }

    /// The nearest-rank median and 90th percentile, in working days (each duration taken at
    /// the start of its half-hour).
    pub fn spread(&self) -> Option<Spread> {
        let count: u64 = self.0.values().map(|c| u64::from(*c)).sum();
        if count == 0 {
            return None;
        }
        let rank = |p: f64| {
            let wanted = ((p * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (bucket, n) in &self.0 {
                seen += u64::from(*n);
                if seen >= wanted {
                    return f64::from(*bucket) * MINUTES_PER_BUCKET as f64 / MINUTES_PER_DAY;
                }
            }
            0.0
        };
        Some(Spread {
            count: count as usize,
            median: rank(0.5),
            p90: rank(0.9),
        })
    }
}

/// What happened on one day, in a form that adds up: a period's report is the sum of its
/// days. Past days never change (the event log is append-only, and each figure belongs to the
/// day of the event that decides it), so they are worked out once and kept
/// ([`crate::storage::cached_report_days`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFacts {
    /// By workflow (or `unclassified`).
    pub received: BTreeMap<String, u32>,
    pub completed: BTreeMap<String, u32>,
    /// Completed with an SLA, and of those, within it.
    pub with_sla: BTreeMap<String, u32>,
    pub within_sla: BTreeMap<String, u32>,
    pub to_provisioned: BTreeMap<String, Histogram>,
    pub sla_time: BTreeMap<String, Histogram>,
    /// Visits that ended that day, by state.
    pub state_time: BTreeMap<String, Histogram>,
    pub breaches_by_workflow: BTreeMap<String, u32>,
    pub breaches_by_organisation: BTreeMap<String, u32>,
    pub breaches_by_finding: BTreeMap<String, u32>,
    pub sent_back_for: BTreeMap<String, u32>,
    pub second_rounds: BTreeMap<String, u32>,
    /// By caseworker.
    pub moves: BTreeMap<String, u32>,
    pub completions: BTreeMap<String, u32>,
}

fn bump(map: &mut BTreeMap<String, u32>, key: &str) {
    *map.entry(key.to_string()).or_insert(0) += 1;
}

fn merge_counts(into: &mut BTreeMap<String, u32>, from: &BTreeMap<String, u32>) {
    for (key, count) in from {
        *into.entry(key.clone()).or_insert(0) += count;
    }
}

fn merge_histograms(into: &mut BTreeMap<String, Histogram>, from: &BTreeMap<String, Histogram>) {
    for (key, histogram) in from {
        into.entry(key.clone()).or_default().merge(histogram);
    }
}

impl DayFacts {
    /// Adds another day's (or period's) facts to these.
    pub fn merge(&mut self, other: &DayFacts) {
        merge_counts(&mut self.received, &other.received);
        merge_counts(&mut self.completed, &other.completed);
        merge_counts(&mut self.with_sla, &other.with_sla);
        merge_counts(&mut self.within_sla, &other.within_sla);
        merge_histograms(&mut self.to_provisioned, &other.to_provisioned);
        merge_histograms(&mut self.sla_time, &other.sla_time);
        merge_histograms(&mut self.state_time, &other.state_time);
        merge_counts(&mut self.breaches_by_workflow, &other.breaches_by_workflow);
        merge_counts(&mut self.breaches_by_organisation, &other.breaches_by_organisation);
        merge_counts(&mut self.breaches_by_finding, &other.breaches_by_finding);
        merge_counts(&mut self.sent_back_for, &other.sent_back_for);
        merge_counts(&mut self.second_rounds, &other.second_rounds);
        merge_counts(&mut self.moves, &other.moves);
        merge_counts(&mut self.completions, &other.completions);
    }
}

/// The state a case sits in between two events, and for how long.
struct Visit<'a> {
    state: &'a str,
    entered: i64,
    left: Option<i64>,
}

fn local(ms: i64) -> DateTime<Local> {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&Local)
}

/// The facts of the day of `ms`, when that day is between `first` and `last`.
fn day_entry(
    days: &mut BTreeMap<NaiveDate, DayFacts>,
    first: NaiveDate,
    last: NaiveDate,
    ms: i64,
) -> Option<&mut DayFacts> {
    let day = day_of(ms);
    (first..=last).contains(&day).then(|| days.entry(day).or_default())
}

fn worker<'a>(caseworkers: &'a mut BTreeMap<String, Caseworker>, name: &str) -> &'a mut Caseworker {
    caseworkers.entry(name.to_string()).or_insert_with(|| Caseworker {
        name: name.to_string(),
        moves: 0,
        completed: 0,
        open: 0,
    })
}

fn day_of(ms: i64) -> NaiveDate {
    local(ms).date_naive()
}

fn monday_of(date: NaiveDate) -> NaiveDate {
    date - Duration::days(i64::from(date.weekday().num_days_from_monday()))
}

fn tallies(counts: &BTreeMap<String, u32>) -> Vec<Tally> {
    let mut rows: Vec<Tally> = counts
        .iter()
        .map(|(label, count)| Tally {
            label: label.clone(),
            count: *count as usize,
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
    rows
}

fn percent(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

fn total(map: &BTreeMap<String, u32>) -> usize {
    map.values().map(|c| *c as usize).sum()
}

/// Whether a state ends a case: final in its workflow, or one of the exits of a case no
/// workflow took.
fn is_final(workflows: &WorkflowSet, workflow: Option<&str>, state: &str) -> bool {
    match workflow.and_then(|w| workflows.get(w)) {
        Some(def) => def.state(state).is_some_and(|s| s.terminal),
        None => wellknown::unclassified::EXITS.iter().any(|(exit, _)| *exit == state),
    }
}

/// Each day's facts from `first` to `last` (both included), from the lifecycles of every case
/// that moved in those days. Each figure goes to the day of the event that decides it: a
/// receipt to the day it came, a completion (with its SLA and durations) to the day it ended,
/// a visit to a state to the day it was left, a move to the day it was made.
pub fn daily_facts(
    first: NaiveDate,
    last: NaiveDate,
    inputs: &Inputs<'_>,
    workflows: &WorkflowSet,
    calendar: &WorkingCalendar,
) -> BTreeMap<NaiveDate, DayFacts> {
    let minutes = |from: i64, to: i64| calendar.working_minutes_between(local(from), local(to));
    let mut days: BTreeMap<NaiveDate, DayFacts> = BTreeMap::new();
    let no_facts = CaseFacts::default();
    for case_events in inputs.events.chunk_by(|a, b| a.case_id == b.case_id) {
        let facts = inputs.facts.get(&case_events[0].case_id).unwrap_or(&no_facts);
        let workflow_name = facts.workflow.as_deref();
        let label = workflow_name.unwrap_or("unclassified");
        let workflow = workflow_name.and_then(|w| workflows.get(w));
        let organisation = facts.organisation.as_deref().unwrap_or("(not known)");
        let visits: Vec<Visit<'_>> = case_events
            .iter()
            .enumerate()
            .map(|(i, e)| Visit {
                state: &e.to_state,
                entered: e.at,
                left: case_events.get(i + 1).map(|next| next.at),
            })
            .collect();
        let received_at = case_events[0].at;
        if let Some(day) = day_entry(&mut days, first, last, received_at) {
            bump(&mut day.received, label);
        }
        for (i, visit) in visits.iter().enumerate() {
            let Some(left) = visit.left else { continue };
            let Some(day) = day_entry(&mut days, first, last, left) else {
                continue;
            };
            day.state_time
                .entry(visit.state.to_string())
                .or_default()
                .add(minutes(visit.entered, left));
            let mover = &case_events[i + 1];
            if mover.actor_role != "system" {
                bump(&mut day.moves, &mover.actor);
            }
            if mover.to_state == wellknown::AWAITING_INFORMATION {
                for finding in &facts.findings {
                    bump(&mut day.sent_back_for, finding);
                }
                if visits[..=i].iter().any(|v| v.state == wellknown::AWAITING_INFORMATION) {
                    bump(&mut day.second_rounds, organisation);
                }
            }
        }
        // Completed: the case entered a final state.
        let Some((end_index, end)) = visits
            .iter()
            .enumerate()
            .find(|(_, v)| is_final(workflows, workflow_name, v.state))
        else {
            continue;
        };
        let Some(day) = day_entry(&mut days, first, last, end.entered) else {
            continue;
        };
        bump(&mut day.completed, label);
        let closer = &case_events[end_index];
        if closer.actor_role != "system" {
            bump(&mut day.completions, &closer.actor);
        }
        if end.state == wellknown::PROVISIONED {
            day.to_provisioned
                .entry(label.to_string())
                .or_default()
                .add(minutes(received_at, end.entered));
        }
        let Some(workflow) = workflow else { continue };
        let running: i64 = visits[..end_index]
            .iter()
            .filter(|v| workflow.state(v.state).is_none_or(|s| s.sla_running))
            .map(|v| minutes(v.entered, v.left.unwrap_or(end.entered)))
            .sum();
        day.sla_time.entry(label.to_string()).or_default().add(running);
        bump(&mut day.with_sla, label);
        if running <= i64::from(workflow.sla.target_working_days) * MINUTES_PER_DAY as i64 {
            bump(&mut day.within_sla, label);
        } else {
            bump(&mut day.breaches_by_workflow, &workflow.title);
            bump(&mut day.breaches_by_organisation, organisation);
            for finding in &facts.findings {
                bump(&mut day.breaches_by_finding, finding);
            }
        }
    }
    days
}

/// The report for `period` from its days' facts (days missing had nothing happen), and the
/// cases open now.
pub fn assemble(
    period: Period,
    days: &BTreeMap<NaiveDate, DayFacts>,
    open: &[OpenCase],
    now: DateTime<Local>,
    workflows: &WorkflowSet,
    calendar: &WorkingCalendar,
) -> Report {
    let mut all = DayFacts::default();
    let mut weeks: BTreeMap<(NaiveDate, String), WeekRow> = BTreeMap::new();
    for (day, facts) in days.range(period.from..=period.to) {
        all.merge(facts);
        let week = monday_of(*day);
        let labels: std::collections::BTreeSet<&String> = facts.received.keys().chain(facts.completed.keys()).collect();
        for label in labels {
            let count = |map: &BTreeMap<String, u32>| map.get(label).copied().unwrap_or(0) as usize;
            let row = weeks.entry((week, label.clone())).or_insert_with(|| WeekRow {
                week,
                workflow: label.clone(),
                received: 0,
                completed: 0,
                within_sla: 0,
                with_sla: 0,
            });
            row.received += count(&facts.received);
            row.completed += count(&facts.completed);
            row.with_sla += count(&facts.with_sla);
            row.within_sla += count(&facts.within_sla);
        }
    }
    let mut sla: Vec<SlaRow> = workflows
        .iter()
        .map(|def| {
            let of = all.with_sla.get(&def.name).copied().unwrap_or(0) as usize;
            let met = all.within_sla.get(&def.name).copied().unwrap_or(0) as usize;
            SlaRow {
                workflow: def.name.clone(),
                target_working_days: def.sla.target_working_days,
                completed: of,
                within: met,
                percent_within: percent(met, of),
                to_provisioned: all.to_provisioned.get(&def.name).and_then(Histogram::spread),
                sla_days: all.sla_time.get(&def.name).and_then(Histogram::spread),
            }
        })
        .collect();
    sla.sort_by(|a, b| a.workflow.cmp(&b.workflow));
    let mut every_provisioning = Histogram::default();
    for histogram in all.to_provisioned.values() {
        every_provisioning.merge(histogram);
    }
    let (with_sla, within_sla) = (total(&all.with_sla), total(&all.within_sla));
    let headline = Headline {
        received: total(&all.received),
        completed: total(&all.completed),
        percent_within_sla: percent(within_sla, with_sla),
        median_days_to_provisioned: every_provisioning.spread().map(|s| s.median),
        breached: with_sla - within_sla,
    };
    let state_times: Vec<StateTime> = all
        .state_time
        .iter()
        .filter_map(|(state, h)| {
            h.spread().map(|spread| StateTime {
                state: state.clone(),
                spread,
            })
        })
        .collect();

    let mut caseworkers: BTreeMap<String, Caseworker> = BTreeMap::new();
    for (name, count) in &all.moves {
        worker(&mut caseworkers, name).moves += *count as usize;
    }
    for (name, count) in &all.completions {
        worker(&mut caseworkers, name).completed += *count as usize;
    }
    let today = now.date_naive();
    let mut backlog = vec![
        AgeBucket {
            label: "0–2 working days",
            count: 0,
        },
        AgeBucket {
            label: "3–5 working days",
            count: 0,
        },
        AgeBucket {
            label: "6–10 working days",
            count: 0,
        },
        AgeBucket {
            label: "over 10 working days",
            count: 0,
        },
    ];
    for case in open {
        let bucket = match calendar.working_days_between(day_of(case.created_at), today) {
            ..=2 => 0,
            3..=5 => 1,
            6..=10 => 2,
            _ => 3,
        };
        backlog[bucket].count += 1;
        if let Some(name) = &case.assignee {
            worker(&mut caseworkers, name).open += 1;
        }
    }
    Report {
        period,
        headline,
        weeks: weeks.into_values().collect(),
        sla,
        state_times,
        breaches_by_workflow: tallies(&all.breaches_by_workflow),
        breaches_by_organisation: tallies(&all.breaches_by_organisation),
        breaches_by_finding: tallies(&all.breaches_by_finding),
        sent_back_for: tallies(&all.sent_back_for),
        second_rounds_by_organisation: tallies(&all.second_rounds),
        backlog,
        caseworkers: caseworkers.into_values().collect(),
    }
}

/// Works out the report for `period` straight from its inputs (every case that moved in it):
/// the pure path the unit tests check; the service adds up kept days instead
/// ([`load::report_for`]).
#[cfg(test)]
pub fn compute(period: Period, inputs: &Inputs<'_>, workflows: &WorkflowSet, calendar: &WorkingCalendar) -> Report {
    let days = daily_facts(period.from, period.to, inputs, workflows, calendar);
    assemble(period, &days, inputs.open, inputs.now, workflows, calendar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(day: u32, hour: u32) -> i64 {
        Local
            .with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .unwrap()
            .timestamp_millis()
    }

    fn moved(case_id: i64, at: i64, to: &str, actor: &str) -> LifecycleEvent {
        LifecycleEvent {
            case_id,
            at,
            to_state: to.into(),
            actor: actor.into(),
            actor_role: if actor == "system" { "system" } else { "caseworker" }.into(),
        }
    }

    fn facts(workflow: Option<&str>, org: &str, findings: &[&str]) -> CaseFacts {
        CaseFacts {
            workflow: workflow.map(str::to_string),
            organisation: Some(org.into()),
            findings: findings.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn november() -> Period {
        Period {
            from: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
        }
    }

    /// The percentiles the reports show come from merged day histograms: nearest rank, each
    /// duration taken at the start of its half-hour.
    #[test]
    fn percentiles_are_nearest_rank() {
        let of = |days: &[f64]| {
            let mut histogram = Histogram::default();
            for d in days {
                histogram.add((d * MINUTES_PER_DAY) as i64);
            }
            histogram.spread()
        };
        let spread = of(&(1..=10).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((spread.count, spread.median, spread.p90), (10, 5.0, 9.0));
        assert_eq!(of(&[3.0]).map(|s| (s.median, s.p90)), Some((3.0, 3.0)));
        assert!(of(&[]).is_none());
        // Within a half-hour, a duration counts from its start: 1 h 20 min reads as 1 h.
        let short = of(&[80.0 / MINUTES_PER_DAY]).unwrap();
        assert_eq!(short.median, 60.0 / MINUTES_PER_DAY);
        // Days merge into one period's spread.
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.add(24 * 60);
        b.add(3 * 24 * 60);
        a.merge(&b);
        assert_eq!(a.spread().map(|s| (s.count, s.median)), Some((2, 1.0)));
    }

    #[test]
    fn the_last_weeks_end_on_the_sunday_of_this_week_and_compare_with_as_many_before() {
        let period = Period::last_weeks(NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(), 2);
        assert_eq!(period.from, NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        assert_eq!(period.to, NaiveDate::from_ymd_opt(2026, 12, 6).unwrap());
        let before = period.previous();
        assert_eq!(before.from, NaiveDate::from_ymd_opt(2026, 11, 9).unwrap());
        assert_eq!(before.to, NaiveDate::from_ymd_opt(2026, 11, 22).unwrap());
    }

    /// Two rounds of correction for one case, a late case with findings, and an unclassified
    /// case closed by a caseworker (no SLA of its own).
    #[test]
    fn send_backs_second_rounds_and_breaches_are_counted_by_finding_and_organisation() {
        let workflows = crate::workflow::shipped();
        let calendar = WorkingCalendar::default();
        let events = vec![
            // Case 1: sent back twice, each time for its two findings; provisioned in time
            // (the SLA clock stops while the practice has the form).
            moved(1, ms(2, 10), "received", "system"),
            moved(1, ms(2, 10), "needs_review", "system"),
            moved(1, ms(2, 12), "awaiting_information", "alice"),
            moved(1, ms(16, 10), "needs_review", "system"),
            moved(1, ms(16, 11), "awaiting_information", "alice"),
            moved(1, ms(23, 10), "needs_review", "system"),
            moved(1, ms(23, 11), "validated", "alice"),
            moved(1, ms(23, 12), "authorised", "bob"),
            moved(1, ms(23, 13), "provisioned", "bob"),
            // Case 2: received Monday 2nd, rejected Wednesday 11th: 7 working days, late.
            moved(2, ms(2, 9), "received", "system"),
            moved(2, ms(2, 9), "needs_review", "system"),
            moved(2, ms(11, 9), "rejected", "bob"),
            // Case 3: an email without a form, closed.
            moved(3, ms(3, 9), "needs_review", "system"),
            moved(3, ms(3, 10), "closed", "alice"),
        ];
        let facts: HashMap<i64, CaseFacts> = [
            (
                1,
                facts(
                    Some("primary_user_gp"),
                    "Riverside Surgery",
                    &["ods_code_malformed", "signatory_role_not_allowed"],
                ),
            ),
            (
                2,
                facts(
                    Some("primary_user_gp"),
                    "Hillside Practice",
                    &["signatory_role_not_allowed"],
                ),
            ),
            (3, facts(None, "(none)", &[])),
        ]
        .into();
        let inputs = Inputs {
            events: &events,
            facts: &facts,
            open: &[],
            now: Local.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap(),
        };
        let report = compute(november(), &inputs, &workflows, &calendar);
        assert_eq!((report.headline.received, report.headline.completed), (3, 3));
        assert_eq!(report.headline.breached, 1);
        let gp = report.sla.iter().find(|s| s.workflow == "primary_user_gp").unwrap();
        assert_eq!((gp.completed, gp.within), (2, 1), "the unclassified case has no SLA");
        let tally = |rows: &[Tally]| rows.iter().map(|t| (t.label.clone(), t.count)).collect::<Vec<_>>();
        assert_eq!(
            tally(&report.sent_back_for),
            vec![
                ("ods_code_malformed".to_string(), 2),
                ("signatory_role_not_allowed".to_string(), 2)
            ]
        );
        assert_eq!(
            tally(&report.second_rounds_by_organisation),
            vec![("Riverside Surgery".to_string(), 1)]
        );
        assert_eq!(
            tally(&report.breaches_by_organisation),
            vec![("Hillside Practice".to_string(), 1)]
        );
        assert_eq!(
            tally(&report.breaches_by_finding),
            vec![("signatory_role_not_allowed".to_string(), 1)]
        );
        let unclassified = report.weeks.iter().find(|w| w.workflow == "unclassified").unwrap();
        assert_eq!(
            (unclassified.received, unclassified.completed, unclassified.with_sla),
            (1, 1, 0)
        );
        let alice = report.caseworkers.iter().find(|c| c.name == "alice").unwrap();
        assert_eq!((alice.moves, alice.completed), (4, 1));
        // Case 1's SLA ran 2 h (review) + 1 h (review) + 1 h (review) + 1 h (validated) + 1 h
        // (authorised) = 6 h, the smaller of the two (case 2 ran 7 days); its total to provisioned counts the
        // weeks with the practice too: Mon 2nd 10:00 to Mon 23rd 13:00 = 15 working days + 3 h.
        let sla_days = gp.sla_days.unwrap();
        assert!((sla_days.median - 6.0 / 24.0).abs() < 1e-9, "{sla_days:?}");
        let to_provisioned = gp.to_provisioned.unwrap();
        assert!(
            (to_provisioned.median - (15.0 + 3.0 / 24.0)).abs() < 1e-9,
            "{to_provisioned:?}"
        );
    }

    #[test]
    fn open_cases_are_aged_in_working_days_and_counted_against_their_assignee() {
        let workflows = crate::workflow::shipped();
        let calendar = WorkingCalendar::default();
        let open = |day: u32, who: Option<&str>| OpenCase {
            workflow: Some("primary_user_gp".into()),
            state: "needs_review".into(),
            created_at: ms(day, 9),
            assignee: who.map(str::to_string),
            due_at: None,
            sla_paused: false,
        };
        // Now: Monday 30th. Received 30th (0), 25th (3), 19th (7), 2nd (20 working days).
        let cases = vec![
            open(30, Some("alice")),
            open(25, Some("alice")),
            open(19, None),
            open(2, Some("bob")),
        ];
        let inputs = Inputs {
            events: &[],
            facts: &HashMap::new(),
            open: &cases,
            now: Local.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap(),
        };
        let report = compute(november(), &inputs, &workflows, &calendar);
        let counts: Vec<usize> = report.backlog.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![1, 1, 1, 1]);
        let open_by: Vec<(String, usize)> = report.caseworkers.iter().map(|c| (c.name.clone(), c.open)).collect();
        assert_eq!(open_by, vec![("alice".to_string(), 2), ("bob".to_string(), 1)]);
    }
}
