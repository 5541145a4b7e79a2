-- The open cases' reading (the dashboard, the reports' backlog, /metrics) takes every open
-- case's state, due time, workflow, age, assignee and pause: the (state, due_at) index now
-- carries them, so it is answered from the index alone. (SQLite has no INCLUDE; the columns
-- after due_at leave the index's order for (state, due_at) as it was.)
DROP INDEX cases_state_due;
CREATE INDEX cases_state_due ON cases (state, due_at, workflow, created_at, assignee_id, sla_paused_at);
