-- Outbox rows the broker can never take (too large, topic gone) are parked with the
-- reason instead of blocking every later row; operators see and requeue them.
ALTER TABLE outbox ADD COLUMN parked_at_ms INTEGER;
ALTER TABLE outbox ADD COLUMN park_reason TEXT;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at_ms IS NULL AND parked_at_ms IS NULL;
-- Retention: sent rows and inbox claims older than the dedup window are pruned.
CREATE INDEX outbox_sent_at ON outbox (sent_at_ms) WHERE sent_at_ms IS NOT NULL;
CREATE INDEX inbox_handled_at ON inbox (handled_at_ms);

-- The key that signs the host's Kafka headers, shared by every host of this database.
CREATE TABLE host_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BLOB NOT NULL
);
