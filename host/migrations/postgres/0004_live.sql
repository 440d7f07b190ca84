-- Live operations: component versions, which one is active, and per-invocation records.

-- Every artifact a component ran or may run, keyed by its content hash. The bytes are kept
-- so that any host on this database can load a version deployed through another host.
CREATE TABLE component_versions (
    component TEXT NOT NULL,
    version TEXT NOT NULL,
    artifact BYTEA NOT NULL,
    source TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (component, version)
);

-- Activations in order: the newest row of a component is its active version. `seq` orders
-- swaps across hosts: a host only ever moves a component to a higher seq.
CREATE TABLE component_activations (
    seq BIGSERIAL PRIMARY KEY,
    component TEXT NOT NULL,
    version TEXT NOT NULL,
    reason TEXT NOT NULL,
    host TEXT NOT NULL,
    activated_at_ms BIGINT NOT NULL
);
CREATE INDEX component_activations_by_component ON component_activations (component, seq);

-- What ran each event: the version and activation, the request and the outcome.
ALTER TABLE inbox ADD COLUMN version TEXT;
ALTER TABLE inbox ADD COLUMN activation BIGINT;
ALTER TABLE inbox ADD COLUMN request_id TEXT;
ALTER TABLE inbox ADD COLUMN trace_id TEXT;
ALTER TABLE inbox ADD COLUMN outcome TEXT;
CREATE INDEX inbox_by_request ON inbox (request_id) WHERE request_id IS NOT NULL;
