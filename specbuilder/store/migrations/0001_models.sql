-- Version 1 of the PostgreSQL index: the directory store's models table (same columns, same
-- meaning), with 64-bit integers, ids compared bytewise (as SQLite does), and what a store
-- on many hosts needs: the weights object's key, and the lease of a running run (renewed_us by
-- the database's clock, lease_us of the replica that runs it).
CREATE TABLE models (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    num_params BIGINT NOT NULL,
    created_us BIGINT NOT NULL,
    updated_us BIGINT NOT NULL,
    dataset TEXT NOT NULL,
    reason TEXT,
    has_weights INTEGER NOT NULL,
    weights_bytes BIGINT NOT NULL DEFAULT 0,
    owner_pid INTEGER NOT NULL,
    owner_token TEXT NOT NULL,
    spec TEXT NOT NULL,
    config TEXT NOT NULL,
    history TEXT NOT NULL,
    stats TEXT NOT NULL,
    weights_key TEXT,
    lease_us BIGINT NOT NULL,
    renewed_us BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
);
CREATE INDEX models_by_created ON models (created_us, id);
CREATE INDEX models_by_status ON models (status, created_us, id);
CREATE INDEX models_by_size ON models (weights_bytes);
CREATE INDEX models_by_key ON models (weights_key) WHERE weights_key IS NOT NULL;
