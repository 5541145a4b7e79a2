-- Bearer tokens for service accounts (other systems that read and drive cases through the
-- JSON API). Only the SHA-256 of each token is kept: the token itself is shown once, when it
-- is made. A token has a role like a member of staff, may expire, may be revoked, and records
-- when it was last used (to the minute, so that reading does not write on every call).
CREATE TABLE api_tokens (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT   NOT NULL UNIQUE,
    role          TEXT   NOT NULL,
    token_sha256  TEXT   NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
