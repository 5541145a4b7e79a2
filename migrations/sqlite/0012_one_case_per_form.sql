-- The case page reads a case's notes; without this, each read scanned every note.
CREATE INDEX case_notes_case ON case_notes (case_id, id);

-- One case per form, as a constraint rather than a check before the insert: two writers on
-- PostgreSQL could each find no case for a PDF and each make one. Cases that such a race
-- already made keep their form and their link to it (form_attachment_id); only the earliest
-- keeps the hash that new copies of the form are matched by.
UPDATE cases SET form_sha256 = NULL
 WHERE form_sha256 IS NOT NULL
   AND id > (SELECT MIN(first.id) FROM cases first WHERE first.form_sha256 = cases.form_sha256);
DROP INDEX cases_form_sha256;
CREATE UNIQUE INDEX cases_one_per_form ON cases (form_sha256) WHERE form_sha256 IS NOT NULL;
