-- When the SLA clock stopped (the case entered a state where the sender has the ball), so the
-- time spent there can be added back to the due time when it resumes.
ALTER TABLE cases ADD COLUMN sla_paused_at BIGINT;
