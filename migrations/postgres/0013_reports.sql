-- The managers' reports rebuild each case's life from its state moves (the events with a
-- `to_state`). They find the cases that moved in a period by time, then read each one's moves
-- by the existing (case_id, id) index.
CREATE INDEX case_events_moves_at ON case_events (at, case_id) WHERE to_state IS NOT NULL;
-- The dashboard's intake today, and received counts, by time.
CREATE INDEX cases_created_at ON cases (created_at);
