-- occurred_at ranges: a B-tree on (occurred_at, position) finds the events of a range
-- without reading the heap (position is in the entry), then only those rows are
-- fetched and ordered. BENCHMARKS.md compares it with BRIN, which costs appends less
-- but reads a whole block range per probe.
CREATE INDEX IF NOT EXISTS events_occurred_at ON {schema}.events (occurred_at, position);
