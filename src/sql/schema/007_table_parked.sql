-- Events a durable consumer gave up on after its handler failed them `max_attempts`
-- times, with the last error; replayed or discarded on request.
CREATE TABLE IF NOT EXISTS {schema}.parked (
    consumer  text        NOT NULL,
    position  bigint      NOT NULL,
    attempts  integer     NOT NULL,
    error     text        NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, position)
);
