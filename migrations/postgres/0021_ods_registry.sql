-- The organisation registry, imported from the NHS ODS files (`countersign organisations
-- import`): whether a code exists, is open, and is a GP practice.
CREATE TABLE ods_registry (
    ods_code     TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    gp_practice  BIGINT  NOT NULL,
    roles        TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    closed_on    TEXT,
    source       TEXT    NOT NULL,
    imported_at  BIGINT  NOT NULL
);
