-- Countersign core schema (PostgreSQL). Times are unix milliseconds (BIGINT) and JSON is TEXT,
-- so the same queries run on SQLite and PostgreSQL through sqlx's Any driver.

-- Every message exactly as received. `dedup_key` is the Message-ID (or `sha256:<hash>` when a
-- message has none): a second delivery of the same message hits the unique key and makes no
-- second case. `raw` is kept until the retention job clears it; the row itself stays.
CREATE TABLE raw_messages (
    id            BIGSERIAL PRIMARY KEY,
    dedup_key     TEXT    NOT NULL UNIQUE,
    message_id    TEXT,
    sha256        TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    received_at   BIGINT  NOT NULL,
    from_address  TEXT,
    subject       TEXT,
    sent_at       BIGINT,
    sender_auth   TEXT    NOT NULL,
    automatic     TEXT,
    size_bytes    BIGINT  NOT NULL,
    raw           BYTEA
);
CREATE INDEX raw_messages_sha256 ON raw_messages (sha256);

-- Every attachment, with the type detected from its bytes beside the type it claimed.
CREATE TABLE attachments (
    id             BIGSERIAL PRIMARY KEY,
    raw_message_id BIGINT  NOT NULL REFERENCES raw_messages (id),
    filename       TEXT,
    claimed_type   TEXT    NOT NULL,
    detected_type  TEXT,
    sha256         TEXT    NOT NULL,
    size_bytes     BIGINT  NOT NULL,
    forwarded      BIGINT  NOT NULL,
    content        BYTEA    NOT NULL
);
CREATE INDEX attachments_sha256 ON attachments (sha256);
CREATE INDEX attachments_message ON attachments (raw_message_id);

-- Organisations, keyed by ODS code (filled in from cases; edited by admins later).
CREATE TABLE organisations (
    id          BIGSERIAL PRIMARY KEY,
    ods_code    TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- Staff accounts (the web app's sign-in; password hashes are argon2id).
CREATE TABLE users (
    id             BIGSERIAL PRIMARY KEY,
    email          TEXT    NOT NULL UNIQUE,
    display_name   TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    password_hash  TEXT,
    disabled       BIGINT  NOT NULL DEFAULT 0,
    created_at     BIGINT  NOT NULL
);

-- The last case number handed out per year, for references like CS-2026-000123.
CREATE TABLE reference_counters (
    year         BIGINT PRIMARY KEY,
    last_number  BIGINT NOT NULL
);

-- One case per form (or per email without one). `workflow` is NULL until the case is
-- classified. `version` guards against lost updates: every change bumps it.
CREATE TABLE cases (
    id                  BIGSERIAL PRIMARY KEY,
    reference           TEXT    NOT NULL UNIQUE,
    workflow            TEXT,
    state               TEXT    NOT NULL,
    version             BIGINT  NOT NULL DEFAULT 1,
    fields              TEXT    NOT NULL,
    extraction          TEXT,
    findings            TEXT    NOT NULL,
    org_ods_code        TEXT,
    org_name            TEXT,
    organisation_id     BIGINT  REFERENCES organisations (id),
    sender              TEXT,
    origin_message_id   BIGINT  NOT NULL REFERENCES raw_messages (id),
    form_attachment_id  BIGINT  REFERENCES attachments (id),
    form_sha256         TEXT,
    duplicate_of        BIGINT  REFERENCES cases (id),
    assignee_id         BIGINT  REFERENCES users (id),
    recorded            TEXT    NOT NULL DEFAULT '{}',
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    due_at              BIGINT
);
CREATE INDEX cases_state_due ON cases (state, due_at);
CREATE INDEX cases_form_sha256 ON cases (form_sha256);
CREATE INDEX cases_ods ON cases (org_ods_code);

-- Which messages belong to which case: the one that opened it, duplicates, replies.
CREATE TABLE case_messages (
    case_id         BIGINT NOT NULL REFERENCES cases (id),
    raw_message_id  BIGINT NOT NULL REFERENCES raw_messages (id),
    relation        TEXT   NOT NULL,
    PRIMARY KEY (case_id, raw_message_id)
);

-- The append-only event log: every transition and every change, with actor, time and reason.
CREATE TABLE case_events (
    id          BIGSERIAL PRIMARY KEY,
    case_id     BIGINT  NOT NULL REFERENCES cases (id),
    at          BIGINT  NOT NULL,
    actor       TEXT    NOT NULL,
    actor_role  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    transition  TEXT,
    from_state  TEXT,
    to_state    TEXT,
    reason      TEXT,
    data        TEXT
);
CREATE INDEX case_events_case ON case_events (case_id, id);

-- Durable timers, armed and cancelled in the same transaction as the state change.
CREATE TABLE timers (
    id             BIGSERIAL PRIMARY KEY,
    case_id        BIGINT  NOT NULL REFERENCES cases (id),
    name           TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    due_at         BIGINT  NOT NULL,
    status         TEXT    NOT NULL,
    claimed_until  BIGINT,
    created_at     BIGINT  NOT NULL,
    finished_at    BIGINT
);
CREATE INDEX timers_pending ON timers (status, due_at);
CREATE INDEX timers_case ON timers (case_id);

-- The transactional outbox: mail written with the change that causes it, sent by a worker.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    case_id          BIGINT  REFERENCES cases (id),
    template         TEXT    NOT NULL,
    recipient        TEXT,
    context          TEXT    NOT NULL,
    message_id       TEXT    NOT NULL UNIQUE,
    in_reply_to      TEXT,
    status           TEXT    NOT NULL,
    suppressed_reason TEXT,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    claimed_until    BIGINT,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    sent_at          BIGINT
);
CREATE INDEX outbox_pending ON outbox (status, next_attempt_at);

-- Per-mailbox IMAP bookkeeping and the poller's lease.
CREATE TABLE mailbox_state (
    mailbox        TEXT   PRIMARY KEY,
    uidvalidity    BIGINT,
    last_uid       BIGINT,
    lease_holder   TEXT,
    lease_until    BIGINT
);

CREATE FUNCTION case_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'case_events is append-only';
END;
$$;
CREATE TRIGGER case_events_append_only BEFORE UPDATE OR DELETE ON case_events
    FOR EACH ROW EXECUTE FUNCTION case_events_append_only();
