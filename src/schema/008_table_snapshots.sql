-- Snapshots of projection states: `state` folds every event matching the projection's
-- query up to `position` (how far it scanned, not its last matching event). Keyed by
-- the projection's name, version and query fingerprint; `query` is the canonical query
-- text the fingerprint hashes, compared again on load. Saves only move `position` up.
CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    name        text        NOT NULL,
    version     integer     NOT NULL,
    fingerprint text        NOT NULL,
    query       text        NOT NULL,
    position    bigint      NOT NULL,
    state       jsonb       NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, fingerprint, version)
);
