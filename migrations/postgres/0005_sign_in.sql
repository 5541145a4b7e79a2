-- Sign-in: failed-attempt counting and lockout, sessions kept in the database (they survive a
-- restart), one-time set-password links, and secrets shared by every instance.
ALTER TABLE users ADD COLUMN failed_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;

-- Only a hash of each session token is stored, so a copy of the database signs nobody in.
CREATE TABLE sessions (
    token_hash   TEXT    PRIMARY KEY,
    user_id      BIGINT  NOT NULL REFERENCES users (id),
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- One-time set-password links: unique, random, hashed, single use, and they expire.
CREATE TABLE password_tokens (
    token_hash   TEXT    PRIMARY KEY,
    user_id      BIGINT  NOT NULL REFERENCES users (id),
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    used_at      BIGINT
);

CREATE TABLE secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- Caseworkers' notes on a case.
CREATE TABLE case_notes (
    id          BIGSERIAL PRIMARY KEY,
    case_id     BIGINT  NOT NULL REFERENCES cases (id),
    author      TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
