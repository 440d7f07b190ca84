-- Outbox shards: rows of one topic and key always share a shard, and each shard is relayed
-- by one host at a time, so relaying spreads over hosts and per-key order holds.
-- Rows written before this migration are in shard 0.
ALTER TABLE outbox ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
-- Which relay sent the row (`host:pid`), for operators and tests.
ALTER TABLE outbox ADD COLUMN relayed_by TEXT;
CREATE INDEX outbox_unsent_by_shard ON outbox (shard, id) WHERE sent_at_ms IS NULL AND parked_at_ms IS NULL;
