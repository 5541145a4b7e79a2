-- Free-text search of the queue (a name, part of an email address, an organisation) without
-- reading every case: an FTS5 trigram index over the same text the queue's substring search
-- reads, folded for case and diacritics ("akesson" finds "Åkesson"). Its rowid is the case id.
-- Triggers keep it in step with the cases table; the web layer's SEARCH_TEXT_SQL is the same
-- expression.
CREATE VIRTUAL TABLE case_search USING fts5 (terms, tokenize = 'trigram remove_diacritics 1');

INSERT INTO case_search (rowid, terms)
SELECT id, COALESCE(org_name, '') || ' ' || COALESCE(sender, '') || ' ' || reference || ' ' || fields FROM cases;

CREATE TRIGGER case_search_insert AFTER INSERT ON cases BEGIN
    INSERT INTO case_search (rowid, terms)
    VALUES (new.id, COALESCE(new.org_name, '') || ' ' || COALESCE(new.sender, '') || ' ' || new.reference || ' ' || new.fields);
END;

CREATE TRIGGER case_search_update AFTER UPDATE OF org_name, sender, reference, fields ON cases BEGIN
    DELETE FROM case_search WHERE rowid = old.id;
    INSERT INTO case_search (rowid, terms)
    VALUES (new.id, COALESCE(new.org_name, '') || ' ' || COALESCE(new.sender, '') || ' ' || new.reference || ' ' || new.fields);
END;

CREATE TRIGGER case_search_delete AFTER DELETE ON cases BEGIN
    DELETE FROM case_search WHERE rowid = old.id;
END;
