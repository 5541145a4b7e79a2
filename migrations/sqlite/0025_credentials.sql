-- Every credential Countersign has issued (a new user's first password). The ledger is the
-- fingerprint: HMAC-SHA-256 of the secret under a key held outside the database, unique, so
-- that no credential is ever issued twice and a copy of this table cannot test guesses. The
-- secret itself is kept only sealed (AES-256-GCM under that same outside key) until its owner
-- opens the one-time link; then the sealed copy is erased. The link's token is kept as its
-- SHA-256 hash, minted when the mail is sent, so no outbox row ever holds it.
CREATE TABLE credentials (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    case_id         BIGINT  NOT NULL REFERENCES cases (id),
    fingerprint     TEXT    NOT NULL UNIQUE,
    sealed          TEXT,
    sent_to         TEXT    NOT NULL,
    link_token_hash TEXT    UNIQUE,
    link_expires_at BIGINT,
    issued_at       BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    shown_at        BIGINT
);
CREATE INDEX credentials_case ON credentials (case_id);
