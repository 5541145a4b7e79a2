-- Raw email and attachment bytes are compressed with lz4 rather than pglz where the server was
-- built with it: pglz cost PostgreSQL a large share of its ingest time (a 13 KB email with a
-- PDF compressed at a fraction of lz4's speed for a few percent more room). Rows already
-- stored keep their compression; a server without lz4 keeps pglz.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE raw_messages ALTER COLUMN raw SET COMPRESSION lz4;
        ALTER TABLE attachments ALTER COLUMN content SET COMPRESSION lz4;
    END IF;
END
$$;
