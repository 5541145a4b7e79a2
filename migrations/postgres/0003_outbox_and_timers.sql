-- Outbound mail: whether a message is automatic (RFC 3834 Auto-Submitted, loop safety and the
-- per-recipient rate limit apply), who claimed it, and its subject once rendered.
ALTER TABLE outbox ADD COLUMN automatic BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN subject TEXT;
CREATE INDEX outbox_recipient_sent ON outbox (recipient, sent_at);

-- Each occurrence of a cron job runs once across instances: the first to insert its row runs it.
CREATE TABLE cron_runs (
    job            TEXT   NOT NULL,
    scheduled_for  BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    finished_at    BIGINT,
    outcome        TEXT,
    PRIMARY KEY (job, scheduled_for)
);
