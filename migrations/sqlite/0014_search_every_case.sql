-- Search finds every case, closed ones too, and by what was recorded on it (the Open Exeter
-- user ID given at provisioning): the recorded values join the indexed text.
DROP TRIGGER case_search_insert;
DROP TRIGGER case_search_update;
DELETE FROM case_search;

INSERT INTO case_search (rowid, terms)
SELECT id, COALESCE(org_name, '') || ' ' || COALESCE(sender, '') || ' ' || reference || ' ' ||
       (SELECT COALESCE(group_concat(value, ' '), '')
        FROM json_each(CASE WHEN json_valid(fields) THEN fields ELSE json_array(fields) END)) || ' ' ||
       (SELECT COALESCE(group_concat(value, ' '), '')
        FROM json_each(CASE WHEN json_valid(recorded) THEN recorded ELSE json_array(recorded) END))
FROM cases;

CREATE TRIGGER case_search_insert AFTER INSERT ON cases BEGIN
    INSERT INTO case_search (rowid, terms)
    VALUES (new.id, COALESCE(new.org_name, '') || ' ' || COALESCE(new.sender, '') || ' ' || new.reference || ' ' ||
            (SELECT COALESCE(group_concat(value, ' '), '')
             FROM json_each(CASE WHEN json_valid(new.fields) THEN new.fields ELSE json_array(new.fields) END)) || ' ' ||
            (SELECT COALESCE(group_concat(value, ' '), '')
             FROM json_each(CASE WHEN json_valid(new.recorded) THEN new.recorded ELSE json_array(new.recorded) END)));
END;

CREATE TRIGGER case_search_update AFTER UPDATE OF org_name, sender, reference, fields, recorded ON cases BEGIN
    DELETE FROM case_search WHERE rowid = old.id;
    INSERT INTO case_search (rowid, terms)
    VALUES (new.id, COALESCE(new.org_name, '') || ' ' || COALESCE(new.sender, '') || ' ' || new.reference || ' ' ||
            (SELECT COALESCE(group_concat(value, ' '), '')
             FROM json_each(CASE WHEN json_valid(new.fields) THEN new.fields ELSE json_array(new.fields) END)) || ' ' ||
            (SELECT COALESCE(group_concat(value, ' '), '')
             FROM json_each(CASE WHEN json_valid(new.recorded) THEN new.recorded ELSE json_array(new.recorded) END)));
END;

-- Closed cases are listed newest first.
CREATE INDEX cases_state_id ON cases (state, id);
