-- Free-text search of the queue (a name, part of an email address, an organisation) without
-- reading every case: an FTS5 trigram index, folded for case and diacritics ("akesson" finds
-- "Åkesson"), over a case's organisation, sender, reference and the values of its form fields
-- (not the field names: they are in every case and would only make the index bigger). Its
-- rowid is the case id. Triggers keep it in step with the cases table, in the same
-- transaction as the change.
CREATE VIRTUAL TABLE case_search USING fts5 (terms, tokenize = 'trigram remove_diacritics 1');

-- Fields are a JSON object of strings; anything else is indexed as it is.
INSERT INTO case_search (rowid, terms)
SELECT id, COALESCE(org_name, '') || ' ' || COALESCE(sender, '') || ' ' || reference || ' ' ||
       (SELECT COALESCE(group_concat(value, ' '), '')
        FROM json_each(CASE WHEN json_valid(fields) THEN fields ELSE json_array(fields) END))
FROM cases;

CREATE TRIGGER case_search_insert AFTER INSERT ON cases BEGIN
    INSERT INTO case_search (rowid, terms)
    VALUES (new.id, COALESCE(new.org_name, '') || ' ' || COALESCE(new.sender, '') || ' ' || new.reference || ' ' ||
            (SELECT COALESCE(group_concat(value, ' '), '')
             FROM json_each(CASE WHEN json_valid(new.fields) THEN new.fields ELSE json_array(new.fields) END)));
END;

CREATE TRIGGER case_search_update AFTER UPDATE OF org_name, sender, reference, fields ON cases BEGIN
    DELETE FROM case_search WHERE rowid = old.id;
    INSERT INTO case_search (rowid, terms)
    VALUES (new.id, COALESCE(new.org_name, '') || ' ' || COALESCE(new.sender, '') || ' ' || new.reference || ' ' ||
            (SELECT COALESCE(group_concat(value, ' '), '')
             FROM json_each(CASE WHEN json_valid(new.fields) THEN new.fields ELSE json_array(new.fields) END)));
END;

CREATE TRIGGER case_search_delete AFTER DELETE ON cases BEGIN
    DELETE FROM case_search WHERE rowid = old.id;
END;
