//! Working days on England and Wales's calendar: weekends and bank holidays do not count.
//!
//! Bank holidays are read from a file in the format of the GOV.UK bank-holidays JSON, so the
//! file can be replaced each year without a release. The shipped copy is compiled in as the
//! fallback.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::Path;

use chrono::{DateTime, Datelike, Days, Local, NaiveDate, NaiveTime, Weekday};

pub const SHIPPED_BANK_HOLIDAYS: &str = include_str!("../workflows/bank-holidays.json");

#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("cannot read bank holidays file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("bank holidays file {path} is not in the GOV.UK format: {message}")]
    Format { path: String, message: String },
}

#[derive(Debug, serde::Deserialize)]
struct GovUkFile {
    #[serde(rename = "england-and-wales")]
    england_and_wales: GovUkDivision,
}

#[derive(Debug, serde::Deserialize)]
struct GovUkDivision {
    events: Vec<GovUkEvent>,
}

#[derive(Debug, serde::Deserialize)]
struct GovUkEvent {
    date: NaiveDate,
}

#[derive(Debug, Clone, Default)]
pub struct WorkingCalendar {
    holidays: BTreeSet<NaiveDate>,
}

impl WorkingCalendar {
    pub fn from_govuk_json(text: &str, path: &str) -> Result<Self, CalendarError> {
        let file: GovUkFile = serde_json::from_str(text).map_err(|e| CalendarError::Format {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Ok(WorkingCalendar {
            holidays: file.england_and_wales.events.into_iter().map(|e| e.date).collect(),
        })
    }

    pub fn shipped() -> Self {
        Self::from_govuk_json(SHIPPED_BANK_HOLIDAYS, "shipped bank-holidays.json").unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<Self, CalendarError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CalendarError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_govuk_json(&text, &shown)
    }

    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.holidays.contains(&date)
    }

    /// The date `days` working days after `start`. A start on a non-working day counts from
    /// the next working day, as a form received on Saturday is worked from Monday.
    pub fn add_working_days(&self, start: NaiveDate, days: u32) -> NaiveDate {
        let next_day = |d: NaiveDate| d.checked_add_days(Days::new(1));
        let mut date = start;
        while !self.is_working_day(date) {
            let Some(next) = next_day(date) else { return date };
            date = next;
        }
        let mut left = days;
        while left > 0 {
            let Some(next) = next_day(date) else { return date };
            date = next;
            if self.is_working_day(date) {
                left -= 1;
            }
        }
        date
    }

    /// Working days from `from` to `to` (0 when `to` is not after `from`).
    ///
    /// Counted, not walked: the queue asks it for every row it shows, and a case years old
    /// once cost a walk of a thousand days per row (a sixth of the queue page's time).
    pub fn working_days_between(&self, from: NaiveDate, to: NaiveDate) -> i64 {
        if to <= from {
            return 0;
        }
        let holidays = self
            .holidays
            .range((Bound::Excluded(from), Bound::Included(to)))
            .filter(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
            .count() as i64;
        weekdays_through(to) - weekdays_through(from) - holidays
    }

    /// The time from `from` to `to` that falls on working days, in minutes: how long a case
    /// spent somewhere, as its SLA counts (a weekend or a bank holiday counts nothing).
    pub fn working_minutes_between(&self, from: DateTime<Local>, to: DateTime<Local>) -> i64 {
        if to <= from {
            return 0;
        }
        let mut minutes = 0;
        let mut day = from.date_naive();
        let last = to.date_naive();
        while day <= last {
            if self.is_working_day(day) {
                let start = if day == from.date_naive() {
                    from.naive_local()
                } else {
                    day.and_time(NaiveTime::MIN)
                };
                let end = match day.succ_opt() {
                    Some(next) if day != last => next.and_time(NaiveTime::MIN),
                    _ => to.naive_local(),
                };
                minutes += (end - start).num_minutes().max(0);
            }
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
        minutes
    }
}

/// Monday to Friday days from 1 January of year 1 (a Monday, day 1 of
/// [`Datelike::num_days_from_ce`]) through `date`: five in each whole week, then the week's
/// start up to Friday.
fn weekdays_through(date: NaiveDate) -> i64 {
    let day = i64::from(date.num_days_from_ce());
    day.div_euclid(7) * 5 + day.rem_euclid(7).min(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn working_minutes_skip_weekends_and_count_part_days() {
        use chrono::TimeZone;
        let cal = WorkingCalendar::default();
        let at = |d: u32, h: u32| Local.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap();
        // Friday 20 November 10:00 to Monday 23rd 10:00: 14 hours of Friday, 10 of Monday.
        assert_eq!(cal.working_minutes_between(at(20, 10), at(23, 10)), 24 * 60);
        // Within one day.
        assert_eq!(cal.working_minutes_between(at(23, 9), at(23, 17)), 8 * 60);
        // Saturday to Sunday: nothing; backwards: nothing.
        assert_eq!(cal.working_minutes_between(at(21, 9), at(22, 17)), 0);
        assert_eq!(cal.working_minutes_between(at(23, 17), at(23, 9)), 0);
    }

    #[test]
    fn weekends_do_not_count() {
        let cal = WorkingCalendar::default();
        // Friday 20 Nov 2026 + 1 working day = Monday 23 Nov.
        assert_eq!(cal.add_working_days(day(2026, 11, 20), 1), day(2026, 11, 23));
        assert_eq!(cal.add_working_days(day(2026, 11, 16), 5), day(2026, 11, 23));
    }

    #[test]
    fn bank_holidays_do_not_count() {
        let cal = WorkingCalendar::shipped();
        assert!(!cal.is_working_day(day(2026, 12, 25)));
        assert!(!cal.is_working_day(day(2026, 12, 28)), "Boxing Day substitute");
        // Thu 24 Dec 2026 + 1 working day: skips Fri 25 (Christmas), the weekend and Mon 28.
        assert_eq!(cal.add_working_days(day(2026, 12, 24), 1), day(2026, 12, 29));
        assert_eq!(
            WorkingCalendar::default().add_working_days(day(2026, 12, 24), 1),
            day(2026, 12, 25)
        );
    }

    #[test]
    fn a_start_on_a_weekend_counts_from_monday() {
        let cal = WorkingCalendar::default();
        assert_eq!(cal.add_working_days(day(2026, 11, 21), 0), day(2026, 11, 23));
        assert_eq!(cal.add_working_days(day(2026, 11, 21), 1), day(2026, 11, 24));
    }

    #[test]
    fn working_days_between_counts_only_working_days() {
        let cal = WorkingCalendar::shipped();
        assert_eq!(cal.working_days_between(day(2026, 11, 20), day(2026, 11, 27)), 5);
        assert_eq!(cal.working_days_between(day(2026, 12, 24), day(2026, 12, 29)), 1);
        assert_eq!(cal.working_days_between(day(2026, 11, 27), day(2026, 11, 20)), 0);
    }

    #[test]
    fn working_days_between_counts_as_a_walk_day_by_day_would() {
        // The count (weeks and the bank holidays in range) against the definition: every day
        // after `from` up to `to` that is a working day. Starts on every weekday, spans from
        // none to over two years, across bank holidays on weekdays and a substitute day.
        let cal = WorkingCalendar::shipped();
        let walked = |from: NaiveDate, to: NaiveDate| {
            from.iter_days()
                .skip(1)
                .take_while(|d| *d <= to)
                .filter(|d| cal.is_working_day(*d))
                .count() as i64
        };
        let first = day(2025, 12, 20);
        for start in 0..14 {
            let from = first + Days::new(start);
            for span in (0..40).chain([100, 365, 366, 800]) {
                let to = from + Days::new(span);
                assert_eq!(cal.working_days_between(from, to), walked(from, to), "{from} to {to}");
            }
        }
        assert_eq!(weekdays_through(day(1, 1, 1)), 1, "day 1 is a Monday");
    }

    #[test]
    fn a_file_in_another_format_is_refused() {
        assert!(WorkingCalendar::from_govuk_json("{\"scotland\": {}}", "x.json").is_err());
    }
}
