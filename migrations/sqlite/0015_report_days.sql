-- Each past day's report facts, worked out once from the event log and kept: a day that is
-- over never changes (events are only ever appended, at the time they happen), so a report
-- over any period adds up its days' facts instead of reading every case again. `facts` is
-- the JSON of `reports::DayFacts`; `day` is the local date, YYYY-MM-DD.
CREATE TABLE report_days (
    day          TEXT   PRIMARY KEY,
    facts        TEXT   NOT NULL,
    computed_at  BIGINT NOT NULL
);
