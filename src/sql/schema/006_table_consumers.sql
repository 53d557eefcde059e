-- Durable consumers: one row per consumer name. `generation` is the fencing token of
-- the current holder (incremented by each holder that takes the consumer over); a
-- checkpoint moves only under the generation that wrote it, and never backwards.
-- `attempt_position`/`attempts` count deliveries of the batch starting at that
-- position before they are made (so a crash counts); `isolate_until` marks events
-- delivered one at a time after their batch failed too often.
CREATE TABLE IF NOT EXISTS {schema}.consumers (
    name             text        PRIMARY KEY,
    checkpoint       bigint,
    generation       bigint      NOT NULL DEFAULT 0,
    holder           text,
    acquired_at      timestamptz,
    acked_at         timestamptz,
    attempt_position bigint,
    attempts         integer     NOT NULL DEFAULT 0,
    isolate_until    bigint,
    last_error       text
);
