-- Mail that names a case but may not change it (not authenticated, or not from the case's
-- sender or signatory; a form past authorisation) opens a case of its own, linked here to the
-- case it named, for a caseworker to look at both.
ALTER TABLE cases ADD COLUMN related_case_id BIGINT REFERENCES cases (id);
CREATE INDEX cases_related ON cases (related_case_id);

-- Threading looks a reply's In-Reply-To and References up in our own mail and in the mail we
-- received; without these, each lookup read the whole table.
CREATE INDEX outbox_message_id ON outbox (message_id);
CREATE INDEX raw_messages_message_id ON raw_messages (message_id);
CREATE INDEX case_messages_message ON case_messages (raw_message_id);
-- The case page reads a case's outbound mail.
CREATE INDEX outbox_case ON outbox (case_id);
