-- The Open Exeter account register: every account at each organisation, who of them is a
-- Primary User, when each last changed their password and signed in (dates, YYYY-MM-DD).
-- Imported from Open Exeter's CSV again and again (an upsert by user ID), and filled by our
-- own provisioned cases. Scheduled outreach reads it.
CREATE TABLE oe_accounts (
    user_id             TEXT    PRIMARY KEY,
    ods_code            TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    email               TEXT,
    primary_user        BIGINT  NOT NULL DEFAULT 0,
    password_changed_on TEXT,
    last_sign_in_on     TEXT,
    status              TEXT    NOT NULL,
    source              TEXT    NOT NULL,
    updated_at          BIGINT  NOT NULL
);
CREATE INDEX oe_accounts_organisation ON oe_accounts (ods_code);
