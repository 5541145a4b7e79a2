-- The signatory register: who may sign for each organisation, by role. Imported from CSV
-- (the Caldicott Guardian register, say), added by admins, added by a caseworker who verified
-- a signatory (with how), and filled from our own records: each Primary User we provision.
CREATE TABLE signatories (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    ods_code       TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    email          TEXT,
    source         TEXT    NOT NULL,
    verified_by    TEXT,
    note           TEXT,
    case_reference TEXT,
    active         BIGINT  NOT NULL DEFAULT 1,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE INDEX signatories_organisation ON signatories (ods_code, active);
