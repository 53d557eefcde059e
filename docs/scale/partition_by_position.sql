-- dcb-store: range-partition a schema's events and event_tags by position (a prototype).
--
-- Run once per schema, as the schema's owner (or a superuser), with `{schema}` replaced by
-- the quoted schema name exactly as src/schema/*.sql are (`"shop_1"`), e.g.
--     sed 's/{schema}/"shop_1"/g' docs/scale/partition_by_position.sql | psql -v ON_ERROR_STOP=1 "$DATABASE_URL"
-- It is one transaction (BEGIN ... COMMIT below): it either converts both tables, keeping
-- every row at its position, or changes nothing. Parameters: the line after
-- `-- Parameters (edit here)` (10,000,000 positions a partition, 2 partitions ahead).
--
-- Writers: the script takes the store's write lock first, the same transaction-scoped
-- advisory lock every writer takes before it reads the head (`pg_advisory_xact_lock(key)`,
-- key = FNV-1a-64 of 'dcb-store:write:' || schema name: `sql::write_lock_key` in
-- src/sql/mod.rs, taken by `sql::WRITE_LOCK` in each batch of src/writer/batch.rs). A batch
-- already holding it finishes first; every later batch waits until this commits and then
-- runs on the partitioned tables (its prepared statements are re-planned by the server).
-- Readers wait too, on the table locks. Stopping the store's processes is the simpler
-- choice for a large store: the copy below takes as long as rewriting both tables.
--
-- What changes and what the store sees (its SQL is unchanged):
--   * {schema}.events and {schema}.event_tags become PARTITION BY RANGE (position)
--     tables with the same columns, defaults, checks, immutability triggers and index
--     names (events_pkey, events_type_position, events_occurred_at, event_tags_pkey).
--     {schema}.event_keys (the entries of indexed data keys) stays one table: its rows
--     are few per event and its probes carry the key, not a position range to prune.
--     Each partition holds
--     `partition_size` positions: partition k holds k*size+1 .. (k+1)*size, named
--     events_p00000k / event_tags_p00000k, created for the existing range plus
--     `partitions_ahead` more.
--   * A partitioned table's unique constraint must contain the partition key, so
--     UNIQUE (event_id) cannot stay on events. Global uniqueness of ids moves to a
--     non-partitioned table {schema}.event_ids (event_id PRIMARY KEY, position), filled by
--     a statement-level AFTER INSERT trigger with a transition table on events (one
--     INSERT ... SELECT per append statement, not per row). Its primary key keeps the
--     old constraint's name, events_event_id_key, so a unique violation (SQLSTATE 23505)
--     names the same constraint as before.
--     The store does not depend on that violation: its append statement
--     (src/sql/append.rs, CTE `stored`) looks every id up with
--     `SELECT ... FROM events e WHERE e.event_id = $id LIMIT 1` and decides retry (same
--     content, same single append: the original positions) or DuplicateEventId itself;
--     no code matches a constraint name or SQLSTATE 23505. So events keeps a
--     (non-unique) partitioned index on event_id, events_event_id, for that lookup. The
--     lookup carries no position, so it probes that index in EVERY partition (one
--     descent each; ids are time-ordered UUIDv7, so a new id's descents end on each
--     index's rightmost, cached, page). event_ids is the backstop that keeps ids unique
--     for writers that do not look first.
--   * Nothing is recorded in schema_migrations: the store checks that its highest version
--     equals its SCHEMA_VERSION (10) and refuses a newer one, so the schema must keep
--     looking like version 10. The conversion is recorded in {schema}.event_partitioning.
--
-- Partitions ahead: there is deliberately no DEFAULT partition. A default partition
-- makes the partitions unordered for the planner (no ordered Append: max(position), which
-- every read and every batch computes, then probes every partition instead of stopping at
-- the newest non-empty one), must be scanned whenever a partition is added, and rows that
-- land in it must be moved out (delete + insert past the immutability triggers) before a
-- partition for their range can exist. Instead, {schema}.ensure_event_partitions()
-- creates partitions ahead of the head and must run periodically (pg_cron, a cron job, or
-- the application's own timer) often enough that the head never passes the last
-- partition: at 10,000,000 positions a partition and 2 ahead, a store appending 20,000
-- events/s has 1,000 s of margin after each run. An append beyond the last partition
-- fails (SQLSTATE 23514, "no partition of relation "events" found for row"): the batch
-- is refused and each of its appends fails with Error::Database; nothing is written.
-- Creating a partition takes no write lock and only SHARE UPDATE EXCLUSIVE on the
-- parent (CREATE TABLE + ATTACH PARTITION), so appends and reads go on meanwhile; the
-- cached plans of the store's prepared statements are re-planned once.
--
-- Partitions are never created for ranges below the head by ensure_event_partitions, so
-- old partitions can be archived: ALTER TABLE {schema}.events DETACH PARTITION
-- {schema}.events_p000000 (and the same for event_tags_p000000), then dump and drop
-- them. Their ids stay in event_ids (ids are never reused); reads and conditions no longer
-- see the detached events, so conditions without `after` (uniqueness guards) and
-- snapshots positioned in that range stop being exact: archive only ranges no decision
-- needs. A retry of an archived append is refused by events_event_id_key (23505, an
-- Error::Database), not recognised as a retry.
--
-- Costs, with the store's SQL unchanged (measured with psql on PostgreSQL 15, generic
-- plans as the store forces them; see SCALE.md):
--   * Reads and conditions with an `after` position prune to the partitions from `after`
--     on (at executor start for reads, per probe for the append statement's conditions);
--     without one they probe the (tag, position) or (event_type, position) index of every
--     partition. max(position), computed by every read and batch, stops at the newest
--     partition that holds rows (empty partitions ahead cost one probe each).
--   * The append statement's id lookup probes every partition's events_event_id index per
--     event: with 103 partitions a batch of 100 one-event appends took about 5x as long as
--     unpartitioned; the same statement looking ids up in event_ids instead
--     (`FROM event_ids i JOIN events e ON e.position = i.position WHERE i.event_id = ...`)
--     took about 1.4x. That is a change to src/sql/append.rs, not made here.
--   * A generic plan holds every partition: a cached single-item read plan grew from
--     about 0.06 MB (unpartitioned) to 2 MB at 103 partitions, per statement, per reader
--     connection (statement_cache_size of them each). Keep partitions few (tens): size
--     them so, and archive old ones.
--
-- Not done here: moving an existing store without a copy (ATTACH the old table as one
-- partition for [1, bound) instead: one validating scan, no rewrite, but then the old range
-- is one partition); copying grants of columns, comments, storage parameters and
-- statistics targets of the old tables (table grants and owner are copied); sub-partitioning.

BEGIN;

-- Refuse anything but an unpartitioned schema at the store's version 10.
DO $$
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = '{schema}.events'::regclass) = 'p' THEN
        RAISE EXCEPTION 'dcb-store: {schema}.events is already partitioned';
    END IF;
    IF (SELECT max(version) FROM {schema}.schema_migrations) IS DISTINCT FROM 10 THEN
        RAISE EXCEPTION 'dcb-store: {schema} is not at schema version 10; this script is written for 10';
    END IF;
END
$$;

-- Parameters (edit here): positions per partition, and how many empty partitions
-- ensure_event_partitions() keeps beyond the one holding the head. One row.
CREATE TABLE {schema}.event_partitioning (
    one              boolean     PRIMARY KEY DEFAULT true CHECK (one),
    partition_size   bigint      NOT NULL CHECK (partition_size > 0),
    partitions_ahead integer     NOT NULL CHECK (partitions_ahead >= 1),
    converted_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.event_partitioning (partition_size, partitions_ahead) VALUES (10000000, 2);

-- The store's write lock key for this schema: FNV-1a-64 of 'dcb-store:write:' || name, as
-- `sql::write_lock_key` computes it (arithmetic on numeric, as bigint would overflow).
CREATE FUNCTION {schema}.write_lock_key() RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bytes bytea := convert_to('dcb-store:write:'
        || (SELECT nspname FROM pg_namespace WHERE oid = '{schema}'::regnamespace), 'UTF8');
    h numeric := 14695981039346656037;   -- 0xcbf29ce484222325
    low integer;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        low := (h % 256)::integer;
        h := h - low + (low # get_byte(bytes, i));
        h := (h * 1099511628211) % 18446744073709551616;   -- * 0x100000001b3 mod 2^64
    END LOOP;
    IF h >= 9223372036854775808 THEN
        h := h - 18446744073709551616;   -- as i64, like `hash as i64`
    END IF;
    RETURN h::bigint;
END
$$;

-- Wait for the batch in flight, keep every later one out until COMMIT.
DO $$ BEGIN PERFORM pg_advisory_xact_lock({schema}.write_lock_key()); END $$;
LOCK TABLE {schema}.events, {schema}.event_tags IN ACCESS EXCLUSIVE MODE;

-- Move the old tables and their index names out of the way.
ALTER TABLE {schema}.events RENAME TO events_unpartitioned;
ALTER TABLE {schema}.events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER TABLE {schema}.events_unpartitioned RENAME CONSTRAINT events_event_id_key TO events_unpartitioned_event_id_key;
ALTER INDEX {schema}.events_type_position RENAME TO events_unpartitioned_type_position;
ALTER INDEX {schema}.events_occurred_at RENAME TO events_unpartitioned_occurred_at;
ALTER TABLE {schema}.event_tags RENAME TO event_tags_unpartitioned;
ALTER TABLE {schema}.event_tags_unpartitioned RENAME CONSTRAINT event_tags_pkey TO event_tags_unpartitioned_pkey;

-- The same tables, partitioned by position (columns in the same order: 001 + 005).
CREATE TABLE {schema}.events (
    position      bigint      NOT NULL,
    event_id      uuid        NOT NULL,
    event_type    text        NOT NULL,
    tags          text[]      NOT NULL,
    data          jsonb       NOT NULL,
    metadata      jsonb       NOT NULL,
    occurred_at   timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    starts_append boolean     NOT NULL DEFAULT true,
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_position_positive CHECK (position > 0),
    CONSTRAINT events_type_not_empty CHECK (event_type <> '')
) PARTITION BY RANGE (position);
-- Type-only items and type conditions: (event_type, position), per partition.
CREATE INDEX events_type_position ON {schema}.events (event_type, position);
-- occurred_at ranges: (occurred_at, position), per partition.
CREATE INDEX events_occurred_at ON {schema}.events (occurred_at, position);
-- The append statement's id lookup (not unique: event_ids keeps ids unique).
CREATE INDEX events_event_id ON {schema}.events (event_id);

CREATE TABLE {schema}.event_tags (
    tag      text   NOT NULL,
    position bigint NOT NULL,
    CONSTRAINT event_tags_pkey PRIMARY KEY (tag, position)
) PARTITION BY RANGE (position);

-- Row triggers on a partitioned table are cloned onto every partition; statement
-- (TRUNCATE) triggers are not, so create_event_partition adds those per partition.
CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON {schema}.events
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();
CREATE TRIGGER event_tags_immutable
    BEFORE UPDATE OR DELETE ON {schema}.event_tags
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
CREATE TRIGGER event_tags_no_truncate
    BEFORE TRUNCATE ON {schema}.event_tags
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();

-- Creates partition k of both tables (positions k*size+1 .. (k+1)*size) unless it exists;
-- true when it created it. As a plain table, then ATTACH: the parent is locked only in
-- SHARE UPDATE EXCLUSIVE mode, so appends and reads are not blocked; ATTACH adds the
-- partitioned indexes and row triggers, and checks the (empty) table against the range.
CREATE FUNCTION {schema}.create_event_partition(k bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    size   bigint := (SELECT partition_size FROM {schema}.event_partitioning);
    suffix text   := CASE WHEN k < 1000000 THEN lpad(k::text, 6, '0') ELSE k::text END;
    lo     numeric := k::numeric * size + 1;
    hi     text;
    owner  name   := (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                      WHERE c.oid = '{schema}.events'::regclass);
    t      text;
BEGIN
    IF k < 0 OR lo > 9223372036854775807 THEN
        RAISE EXCEPTION 'dcb-store: no partition % for positions of size %', k, size;
    END IF;
    IF to_regclass(format('{schema}.%I', 'events_p' || suffix)) IS NOT NULL THEN
        RETURN false;
    END IF;
    hi := CASE WHEN lo + size > 9223372036854775807 THEN 'MAXVALUE' ELSE (lo + size)::text END;
    FOREACH t IN ARRAY ARRAY['events', 'event_tags'] LOOP
        EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       t || '_p' || suffix, t);
        EXECUTE format('ALTER TABLE {schema}.%I OWNER TO %I', t || '_p' || suffix, owner);
        EXECUTE format('ALTER TABLE {schema}.%I ATTACH PARTITION {schema}.%I FOR VALUES FROM (%s) TO (%s)',
                       t, t || '_p' || suffix, lo, hi);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON {schema}.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change()',
                       t || '_no_truncate', t || '_p' || suffix);
    END LOOP;
    -- Rows inserted into the partition directly (not through events) record their ids
    -- too; an insert through events fires only the parent's statement trigger.
    EXECUTE format('CREATE TRIGGER events_record_ids AFTER INSERT ON {schema}.%I
                    REFERENCING NEW TABLE AS inserted
                    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.record_event_ids()',
                   'events_p' || suffix);
    EXECUTE format('COMMENT ON TABLE {schema}.%I IS %L', 'events_p' || suffix,
                   format('dcb-store events, positions %s to %s', lo, lo + size - 1));
    RETURN true;
END
$$;

-- Makes sure partitions exist for every position up to `upto` (default: the head plus
-- `partitions_ahead` partitions), starting at the partition of the next position to be
-- written (never below: archived partitions are not recreated). Returns how many it
-- created. Run it periodically, as the owner, e.g. every minute:
--     SELECT {schema}.ensure_event_partitions();
-- (Two runs at once: the second fails on CREATE TABLE and changes nothing.)
CREATE FUNCTION {schema}.ensure_event_partitions(upto bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    size    bigint  := (SELECT partition_size FROM {schema}.event_partitioning);
    ahead   integer := (SELECT partitions_ahead FROM {schema}.event_partitioning);
    head    bigint  := (SELECT coalesce(max(position), 0) FROM {schema}.events);
    k       bigint  := head / size;   -- the partition of position head + 1
    last_k  bigint;
    created integer := 0;
BEGIN
    last_k := CASE WHEN upto IS NULL THEN k + ahead ELSE (greatest(upto, 1) - 1) / size END;
    WHILE k <= last_k LOOP   -- (FOR would count in integer)
        IF {schema}.create_event_partition(k) THEN
            created := created + 1;
        END IF;
        k := k + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Every event id, kept unique across all partitions; `position` says where it is.
CREATE TABLE {schema}.event_ids (
    event_id uuid   NOT NULL,
    position bigint NOT NULL
);
-- Fills event_ids from an insert's transition table: one INSERT per statement. SECURITY
-- DEFINER, so an application role granted only SELECT, INSERT on events (migrate
-- --app-role) needs no grant on event_ids.
CREATE FUNCTION {schema}.record_event_ids() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {schema}.event_ids (event_id, position)
    SELECT i.event_id, i.position FROM inserted i;
    RETURN NULL;
END
$$;

-- Partitions for every existing position, plus `partitions_ahead` more.
DO $$
DECLARE
    size   bigint  := (SELECT partition_size FROM {schema}.event_partitioning);
    ahead  integer := (SELECT partitions_ahead FROM {schema}.event_partitioning);
    head   bigint  := (SELECT coalesce(max(position), 0) FROM {schema}.events_unpartitioned);
    k      bigint  := 0;
BEGIN
    WHILE k <= head / size + ahead LOOP
        PERFORM {schema}.create_event_partition(k);
        k := k + 1;
    END LOOP;
END
$$;

-- Every row, at its position (recorded_at and starts_append included).
INSERT INTO {schema}.events
    (position, event_id, event_type, tags, data, metadata, occurred_at, recorded_at, starts_append)
SELECT position, event_id, event_type, tags, data, metadata, occurred_at, recorded_at, starts_append
FROM {schema}.events_unpartitioned ORDER BY position;
INSERT INTO {schema}.event_tags (tag, position)
SELECT tag, position FROM {schema}.event_tags_unpartitioned ORDER BY position, tag;
INSERT INTO {schema}.event_ids (event_id, position)
SELECT event_id, position FROM {schema}.events_unpartitioned ORDER BY event_id;
-- Built after the copy (one sorted build); the name is the old unique constraint's.
ALTER TABLE {schema}.event_ids ADD CONSTRAINT events_event_id_key PRIMARY KEY (event_id);

-- From now on every insert into events records its ids (after the copy, which filled
-- event_ids itself).
CREATE TRIGGER events_record_ids
    AFTER INSERT ON {schema}.events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.record_event_ids();
-- Ids are facts too.
CREATE TRIGGER event_ids_immutable
    BEFORE UPDATE OR DELETE ON {schema}.event_ids
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
CREATE TRIGGER event_ids_no_truncate
    BEFORE TRUNCATE ON {schema}.event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();

-- The old tables' owner and table grants (migrate --app-role: SELECT, INSERT) carry over
-- to the new tables; the new objects belong to the same owner. Then the old tables go.
DO $$
DECLARE
    owner name;
    g record;
BEGIN
    SELECT r.rolname INTO owner FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
    WHERE c.oid = '{schema}.events_unpartitioned'::regclass;
    FOR g IN
        SELECT c.oid::regclass AS t FROM pg_class c
        WHERE c.oid IN ('{schema}.events'::regclass, '{schema}.event_tags'::regclass)
           OR c.oid IN (SELECT inhrelid FROM pg_inherits
                        WHERE inhparent IN ('{schema}.events'::regclass, '{schema}.event_tags'::regclass))
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', g.t, owner);
    END LOOP;
    EXECUTE format('ALTER TABLE {schema}.event_ids OWNER TO %I', owner);
    EXECUTE format('ALTER TABLE {schema}.event_partitioning OWNER TO %I', owner);
    EXECUTE format('ALTER FUNCTION {schema}.record_event_ids() OWNER TO %I', owner);
    EXECUTE format('ALTER FUNCTION {schema}.write_lock_key() OWNER TO %I', owner);
    EXECUTE format('ALTER FUNCTION {schema}.create_event_partition(bigint) OWNER TO %I', owner);
    EXECUTE format('ALTER FUNCTION {schema}.ensure_event_partitions(bigint) OWNER TO %I', owner);
    FOR g IN
        SELECT t.new_name, a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee,
               a.is_grantable
        FROM (VALUES ('events_unpartitioned', 'events'),
                     ('event_tags_unpartitioned', 'event_tags')) AS t(old_name, new_name)
        JOIN pg_class c ON c.oid = format('{schema}.%I', t.old_name)::regclass
        CROSS JOIN LATERAL aclexplode(c.relacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON {schema}.%I TO %s%s', g.privilege_type, g.new_name,
                       g.grantee, CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
DROP TABLE {schema}.events_unpartitioned, {schema}.event_tags_unpartitioned;

COMMENT ON TABLE {schema}.events IS
    'dcb-store events, partitioned by range (position): see {schema}.event_partitioning and {schema}.ensure_event_partitions()';
COMMENT ON TABLE {schema}.event_ids IS
    'dcb-store: every event id (unique across the partitions of events), kept by trigger events_record_ids';

-- Statistics for the partitions that hold rows, and for event_ids; NOT for the empty
-- partitions ahead. An analyzed empty table has reltuples = 0, and a generic plan made
-- from that (the store prepares its statements once per connection and forces generic
-- plans) scans it sequentially, e.g. once per row of the event_tags -> events join and
-- per id lookup; when the partition fills, those plans stay until autovacuum analyzes
-- it. A never-analyzed table is planned from its real size (at least 10 pages assumed),
-- which gives index probes. So never ANALYZE {schema}.events as a whole (that analyzes
-- every partition, the empty ones too), analyze partitions that hold rows by name.
-- (Autovacuum analyzes each partition as it fills, never the partitioned parents.)
DO $$
DECLARE
    p regclass;
    has_rows boolean;
BEGIN
    FOR p IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent IN ('{schema}.events'::regclass, '{schema}.event_tags'::regclass)
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', p) INTO has_rows;
        IF has_rows THEN
            EXECUTE format('ANALYZE %s', p);
        END IF;
    END LOOP;
END
$$;
ANALYZE {schema}.event_ids;

COMMIT;
