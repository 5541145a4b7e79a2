-- A message whose sender could not be checked for now (a DKIM key's DNS lookup failed) is
-- checked again at this time; NULL for every other message.
ALTER TABLE raw_messages ADD COLUMN sender_recheck_at BIGINT;
CREATE INDEX raw_messages_sender_recheck ON raw_messages (sender_recheck_at) WHERE sender_recheck_at IS NOT NULL;
