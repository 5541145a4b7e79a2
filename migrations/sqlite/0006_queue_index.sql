-- The queue reads open cases in SLA order, a page at a time from a (due_at, id) cursor.
CREATE INDEX cases_due_id ON cases (due_at, id);
