-- Sign-in through an OpenID Connect provider (NHS CIS2, or any other). Each sign-in that has
-- left for the provider is remembered by its `state` until it comes back, with the nonce the
-- ID token must carry and the PKCE verifier the code exchange must present; it is taken (and
-- deleted) when it comes back, so a replayed `state` finds nothing. `next` is where to go on.
CREATE TABLE oidc_logins (
    state        TEXT   PRIMARY KEY,
    nonce        TEXT   NOT NULL,
    pkce_verifier TEXT  NOT NULL,
    next         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL
);

-- The provider's subject (`sub`) a staff account is matched by, when accounts are matched by
-- subject rather than by email address.
ALTER TABLE users ADD COLUMN oidc_subject TEXT;
CREATE UNIQUE INDEX users_oidc_subject ON users (oidc_subject);
