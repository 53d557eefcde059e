-- The events. Positions are assigned by the writer under the schema's advisory lock
-- (head + ordinal), so they are unique, consecutive per append and visible in order.
CREATE TABLE IF NOT EXISTS {schema}.events (
    position     bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    tags         text[]      NOT NULL,
    data         jsonb       NOT NULL,
    metadata     jsonb       NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_position_positive CHECK (position > 0),
    CONSTRAINT events_type_not_empty CHECK (event_type <> '')
);
