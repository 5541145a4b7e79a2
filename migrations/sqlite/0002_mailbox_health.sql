-- What the mail poller last did, for the health page and metrics, and the messages that
-- could not be ingested (kept visible with their reason until retried).
ALTER TABLE mailbox_state ADD COLUMN last_poll_at BIGINT;
ALTER TABLE mailbox_state ADD COLUMN last_success_at BIGINT;
ALTER TABLE mailbox_state ADD COLUMN backlog BIGINT;
ALTER TABLE mailbox_state ADD COLUMN last_error TEXT;

CREATE TABLE ingest_errors (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Where the message is: `imap:user@host/INBOX;UIDVALIDITY=…;UID=…` or `drop:/path`.
    source         TEXT    NOT NULL UNIQUE,
    mailbox        TEXT,
    reason         TEXT    NOT NULL,
    attempts       BIGINT  NOT NULL,
    quarantined    BIGINT  NOT NULL DEFAULT 0,
    first_seen_at  BIGINT  NOT NULL,
    last_seen_at   BIGINT  NOT NULL,
    resolved_at    BIGINT
);
