-- Crash-loop protection. Before a message is prepared (parsed, its PDFs read) its attempt is
-- counted here, in a commit of its own; the transaction that records the message deletes the
-- row. A row that is still here at the next try means the last try never finished: the
-- service died or hung on it. After a few such tries the message is set aside (quarantined
-- with that reason) instead of being tried again, so the service never restarts into the
-- same crash. Keyed by the SHA-256 of the raw message, so the drop folder and IMAP agree.
CREATE TABLE prepare_attempts (
    sha256      TEXT   PRIMARY KEY,
    attempts    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
