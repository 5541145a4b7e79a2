-- The event log becomes tamper-evident: each case's events form a hash chain (`seq` numbers
-- them 1, 2, … within the case; `hash` covers the event and the hash before it), and the
-- case row keeps how long its chain is, so that a missing tail shows. Events written before
-- this migration are numbered here and hashed by the service when it starts (SQL cannot
-- hash them the same way on both backends); until then their `hash` is NULL.
ALTER TABLE case_events ADD COLUMN seq BIGINT;
ALTER TABLE case_events ADD COLUMN hash TEXT;
ALTER TABLE cases ADD COLUMN chain_seq BIGINT NOT NULL DEFAULT 0;
-- When the case's chain last grew: the daily anchor lists the chains that grew since the last.
ALTER TABLE cases ADD COLUMN chain_at BIGINT;

DROP TRIGGER case_events_append_only_update;
UPDATE case_events SET seq = numbered.seq
  FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY case_id ORDER BY id) AS seq FROM case_events) AS numbered
 WHERE numbered.id = case_events.id;
UPDATE cases SET chain_seq = (SELECT COUNT(*) FROM case_events WHERE case_events.case_id = cases.id),
                 chain_at = updated_at;
CREATE UNIQUE INDEX case_events_chain ON case_events (case_id, seq);
-- Still append-only: the one update allowed is sealing an event written before the chain.
CREATE TRIGGER case_events_append_only_update BEFORE UPDATE ON case_events
WHEN OLD.hash IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'case_events is append-only'); END;

-- Daily anchors: the head of every chain that grew since the last anchor, themselves chained.
-- Deleting a case's whole chain (and its case row) leaves its head here, where `countersign
-- audit verify` looks for it.
CREATE TABLE audit_anchors (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT  NOT NULL,
    since       BIGINT  NOT NULL,
    heads       TEXT    NOT NULL,
    prev_hash   TEXT,
    hash        TEXT    NOT NULL
);
CREATE TRIGGER audit_anchors_append_only_update BEFORE UPDATE ON audit_anchors
BEGIN SELECT RAISE(ABORT, 'audit_anchors is append-only'); END;
CREATE TRIGGER audit_anchors_append_only_delete BEFORE DELETE ON audit_anchors
BEGIN SELECT RAISE(ABORT, 'audit_anchors is append-only'); END;
