-- Whether an event is the first of the append that stored it. Positions are dense and
-- consecutive within an append, so this marks append boundaries: a retry is
-- recognised only when its events are exactly one stored append. Events stored before
-- this column existed each count as an append of their own.
ALTER TABLE {schema}.events ADD COLUMN IF NOT EXISTS starts_append boolean NOT NULL DEFAULT true;
