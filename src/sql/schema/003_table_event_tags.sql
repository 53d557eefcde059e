-- One row per (tag, event). A B-tree on (tag, position) answers "events with tag T
-- after position P" as an ordered range probe whose cost does not grow with the
-- table, unlike a GIN index on the tags array (no position order, pending-list scans).
CREATE TABLE IF NOT EXISTS {schema}.event_tags (
    tag       text   NOT NULL,
    position  bigint NOT NULL,
    CONSTRAINT event_tags_pkey PRIMARY KEY (tag, position)
);
