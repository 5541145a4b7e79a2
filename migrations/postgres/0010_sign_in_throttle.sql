-- Sign-in throttling, by key rather than on the users table, so that an address with no
-- account is throttled exactly like one with an account (the answer reveals nothing), and so
-- that attempts are counted per account *and* client address, and per client address: a
-- stranger failing on an admin's account locks out that stranger, not the admin.
-- Keys: `account:EMAIL|client:ADDR`, `client:ADDR`, `account:EMAIL`.
CREATE TABLE sign_in_throttle (
    key            TEXT   PRIMARY KEY,
    failed         BIGINT NOT NULL,
    blocked_until  BIGINT NOT NULL
);
