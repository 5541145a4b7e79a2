-- The events not yet sealed into their case's chain (written before the chain existed).
-- Every start looks for them; without this index that read every event ever stored (1 to 2 s
-- on PostgreSQL at a million cases, on each instance's start). It is normally empty.
CREATE INDEX case_events_unsealed ON case_events (case_id) WHERE hash IS NULL;
