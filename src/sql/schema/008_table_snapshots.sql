-- Snapshots of projection states: `state` (JSON text, kept exactly as serialised) folds
-- every event matching the projection's query up to `position` (how far it scanned, not
-- its last matching event). Keyed by the projection's name, version and query
-- fingerprint; `query` is the canonical query text the fingerprint hashes, compared again
-- on load. `event_id` is the id of the event at `position` when the snapshot was saved:
-- a snapshot is used only while the store holds that same event there (not after the
-- database was restored to another point). Saves only move `position` up.
CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    name        text        NOT NULL,
    version     integer     NOT NULL,
    fingerprint text        NOT NULL,
    query       text        NOT NULL,
    position    bigint      NOT NULL,
    event_id    uuid,
    state       text        NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, fingerprint, version)
);
