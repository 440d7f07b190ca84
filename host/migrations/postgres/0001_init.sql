-- Component key-value storage: one namespace per component. "C" collation keeps
-- prefix listing in byte order.
CREATE TABLE kv (
    component TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (component, key)
);

-- Inbox: (component, event id) pairs already handled; a redelivered event is skipped.
CREATE TABLE inbox (
    component TEXT NOT NULL,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    handled_at_ms BIGINT NOT NULL,
    PRIMARY KEY (component, event_id)
);

-- Transactional outbox: messages committed with their invocation, relayed to Kafka in id order.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    component TEXT NOT NULL,
    topic TEXT NOT NULL,
    msg_key BYTEA,
    payload BYTEA NOT NULL,
    headers TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    sent_at_ms BIGINT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at_ms IS NULL;

-- Timers: messages to move into the outbox once fire_at_ms has passed.
CREATE TABLE timers (
    id TEXT PRIMARY KEY,
    component TEXT NOT NULL,
    topic TEXT NOT NULL,
    msg_key BYTEA,
    payload BYTEA NOT NULL,
    headers TEXT NOT NULL,
    fire_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX timers_due ON timers (fire_at_ms);
