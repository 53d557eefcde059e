-- Type-only query items: an ordered range probe per type, "events of type T after P".
CREATE INDEX IF NOT EXISTS events_type_position ON {schema}.events (event_type, position);
