-- Outbound effects (wit `outbound`): HTTP requests and e-mails committed with their
-- invocation and carried out afterwards by the delivery worker, at least once, with the
-- row id as idempotency key. A worker claims a due row by moving due_at_ms past a lease,
-- so hosts sharing the database never work on one row at once; a worker that dies lets
-- its lease run out and another takes the row over.
CREATE TABLE effects (
    id TEXT PRIMARY KEY,
    component TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    -- The outcome event: its topic, id and host headers, fixed at the call.
    result_topic TEXT NOT NULL,
    result_event_id TEXT NOT NULL,
    result_headers TEXT NOT NULL,
    context TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    initial_backoff_ms BIGINT NOT NULL,
    max_backoff_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at_ms BIGINT NOT NULL,
    last_error TEXT,
    -- Set once, with the outcome event written to the outbox in the same transaction.
    done_at_ms BIGINT,
    outcome TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX effects_due ON effects (due_at_ms) WHERE done_at_ms IS NULL;
CREATE INDEX effects_done ON effects (done_at_ms) WHERE done_at_ms IS NOT NULL;
