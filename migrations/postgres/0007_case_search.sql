-- Free-text search of the queue (a name, part of an email address, an organisation) without
-- reading every case: a trigram (pg_trgm) index on the text the queue's substring search
-- reads, folded for case and diacritics ("akesson" finds "Åkesson"), so that the planner can
-- start from the few matching cases for a rare term and walk the queue in SLA order for a
-- common one. The expression is the web layer's search text for PostgreSQL, exactly, or the
-- index is not used. pg_trgm and unaccent are trusted extensions (PostgreSQL 13+): the
-- database owner may create them.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
CREATE EXTENSION IF NOT EXISTS unaccent WITH SCHEMA public;

-- unaccent() is only STABLE (its dictionary could change); an index needs IMMUTABLE, so the
-- dictionary is named and the schema fixed, as the unaccent documentation suggests.
CREATE FUNCTION countersign_search_fold(text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT lower(public.unaccent('public.unaccent'::regdictionary, $1)) $$;

CREATE INDEX cases_search_trgm ON cases USING gin (
    countersign_search_fold(COALESCE(org_name, '') || ' ' || COALESCE(sender, '') || ' ' || reference || ' ' || fields) gin_trgm_ops
);
