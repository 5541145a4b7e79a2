-- Search finds every case, closed ones too, and by what was recorded on it (the Open Exeter
-- user ID given at provisioning): the recorded values join the indexed text. The expression
-- is the storage layer's search text for PostgreSQL, exactly, or the index is not used.
DROP INDEX cases_search_trgm;
CREATE INDEX cases_search_trgm ON cases USING gin (
    countersign_search_fold(COALESCE(org_name, '') || ' ' || COALESCE(sender, '') || ' ' || reference || ' ' || fields || ' ' || recorded) gin_trgm_ops
);

-- Closed cases are listed newest first.
CREATE INDEX cases_state_id ON cases (state, id);
