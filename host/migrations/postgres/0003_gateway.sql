-- Gateway (mini_auth) users: argon2id password hashes, never the passwords.
CREATE TABLE gateway_users (
    username TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Idempotency-Key records: one per (user, key), claimed with the request's outbox row.
CREATE TABLE gateway_idempotency (
    username TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    request_id TEXT NOT NULL,
    locked_until_ms BIGINT,
    response_status INTEGER,
    response_body TEXT,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (username, idem_key)
);
