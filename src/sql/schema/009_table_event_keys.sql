-- Declared keys (`indexed_keys` and `indexed_metadata_keys` in the configuration):
-- `source` is 'd' for a top-level key of the data, 'm' of the metadata. Every event
-- holding a JSON string at a declared key gets an entry in event_keys, written by the
-- append statement in the same transaction as the event. A key declared on a store
-- that already holds events is backfilled: writers add entries for every event after
-- `backfill_to` (the head when it was declared, under the write lock), and the
-- backfill adds them for positions up to it, moving `backfilled` up as it goes. Reads
-- and conditions probe a key's entries only once `backfilled >= backfill_to`; until
-- then they filter rows as for an undeclared key, so they are exact throughout.
CREATE TABLE IF NOT EXISTS {schema}.indexed_keys (
    source       "char"      NOT NULL,
    key          text        COLLATE "C" NOT NULL,
    backfill_to  bigint      NOT NULL,
    backfilled   bigint      NOT NULL DEFAULT 0,
    declared_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT indexed_keys_pkey PRIMARY KEY (source, key),
    CONSTRAINT indexed_keys_source CHECK (source IN ('d', 'm'))
);
-- One row per (declared key, event holding a string there): a B-tree on
-- (source, key, value, position) answers "events whose data (or metadata) has
-- key = value after position P" as an ordered range probe, exactly like a tag.
-- `value` holds the first 200 characters of the string (at most 800 bytes, so every
-- entry fits a B-tree page); a probe compares prefixes and the row is checked against
-- the whole predicate, so a longer value only adds candidates, never changes a result.
CREATE TABLE IF NOT EXISTS {schema}.event_keys (
    source    "char" NOT NULL,
    key       text   COLLATE "C" NOT NULL,
    value     text   COLLATE "C" NOT NULL,
    position  bigint NOT NULL,
    CONSTRAINT event_keys_pkey PRIMARY KEY (source, key, value, position)
);
