//! The only place SQL text exists: the statements the actors prepare, the read
//! statement for each query shape, and the encoding of bind parameters.
//!
//! Statement text never contains a user value. The schema name is an identifier,
//! checked in `config` and quoted here once per store; everything else is a bind
//! parameter. A read's text depends only on its *shape* (which parts each query item
//! has), so one prepared statement serves every read of that shape; the append
//! statement's text does not depend on the batch at all (arrays through `unnest`), nor
//! does the read statement of queries with many items.
//!
//! `append` owns the append statement and the rows it returns; `read` the read
//! statements and theirs; this file what they share: the lock, the schema quoting,
//! query items as parallel arrays, and `jsonb` as text on the wire.
//!
//! Longer than most files because the encodings every statement family shares (query
//! items as parallel arrays, `jsonb` as text) are here with their tests.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::Row;

use crate::model::{DataFilter, JsonText, QueryItem};
pub(crate) use probe::{Access, ItemParts, Probes};

mod append;
mod consumers;
mod keys;
pub(crate) mod probe;
mod read;
pub(crate) mod schema;
pub(crate) mod session;
mod snapshots;
mod statement;

pub(crate) use append::{
    append_call, append_call_types, append_function, append_statement, append_types,
    stored_statement, AppendParams, AppendRow, AppendShape, AppendStatus, StoredRow, StoredStatus,
    EVENT_TYPES,
};
pub(crate) use consumers::{
    checkpoint_statement, consumer_lock_key, decode_checkpoint, decode_locked, decode_position,
    position_param, AttemptRow, ConsumerStatements, ParkedRow, TakenOver, LEASE_LOST_STATE,
};
pub(crate) use keys::{
    DeclaredKeys, KeyRow, KeyStatements, DATA, MAX_INDEXED_KEYS, MAX_INDEXED_KEY_BYTES, METADATA,
};
pub(crate) use read::{decode_read, read_statement, ReadParams, ReadShape};
pub(crate) use snapshots::{decode_present, SnapshotRow, SnapshotStatements};
pub(crate) use statement::Prepared;

/// Takes the store's write lock until the transaction ends. Every writer, in every
/// process, takes it before it reads the head, so positions become visible in order.
pub(crate) const WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// The parameter types of statements that take one lock key (`$1 bigint`).
pub(crate) const KEY_TYPES: [Type; 1] = [Type::INT8];

/// A plain SQL identifier (ASCII letters, digits and `_`, not starting with a digit, at
/// most 63 bytes): the only identifiers that reach statement text (schema and role
/// names). Only [`Identifier::parse`] builds one, so quoting never receives an
/// unchecked string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identifier(String);

impl Identifier {
    /// Checks `name`; `what` names it in the error (`schema`, `role`).
    pub(crate) fn parse(name: &str, what: &str) -> crate::error::Result<Self> {
        let mut chars = name.chars();
        let valid_start = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid_start || name.len() > 63 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(crate::error::Error::Config(format!(
                "{what} {name:?} is not a plain identifier (letters, digits, _; at most 63 bytes)"
            )));
        }
        Ok(Identifier(name.to_owned()))
    }

    /// The name as given.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for statement text.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// The store's head: the newest position (0 when empty). On a replica, every position
/// up to it is there too.
pub(crate) fn head_statement(schema: &Identifier) -> String {
    head_of(&schema.quoted())
}

/// The one boolean a question's first row holds (`None`: no row, or not a boolean).
pub(crate) fn decode_flag(rows: &[Row]) -> Option<bool> {
    rows.first().and_then(|row| row.try_get(0).ok())
}

/// The head a [`head_statement`] row holds.
pub(crate) fn decode_head(row: &Row) -> crate::error::Result<u64> {
    let head: i64 = row.try_get(0).map_err(crate::error::Error::db)?;
    Ok(head.max(0) as u64)
}

/// [`head_statement`] of the quoted schema `s`: the one text of the head query, which
/// reads, appends, notifications and key declarations embed.
fn head_of(s: &str) -> String {
    format!("SELECT coalesce(max(position), 0) FROM {s}.events")
}

/// Sent by each batch before its `COMMIT` (so delivered only if it commits): `$1` the
/// channel; the payload is the head after the batch.
pub(crate) fn notify_statement(schema: &Identifier) -> String {
    format!("SELECT pg_notify($1, ({})::text)", head_statement(schema))
}

/// The parameter types of [`notify_statement`].
pub(crate) const NOTIFY_TYPES: [Type; 1] = [Type::TEXT];

/// Whether any session holds the listeners' shared lock of key `$1` (in this
/// database): then some process listens for the schema's commits.
pub(crate) const LISTENERS: &str = "SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint = ($1::bigint >> 32) & 4294967295
      AND objid::bigint = $1::bigint & 4294967295)";

/// Held (shared, for the session) by every connection listening for a schema's commits.
pub(crate) const HOLD_LISTENER_LOCK: &str = "SELECT pg_advisory_lock_shared($1)";

/// The key of the shared lock listeners of `schema` hold.
pub(crate) fn listener_lock_key(schema: &Identifier) -> i64 {
    fnv(&[b"dcb-store:listeners:", schema.as_str().as_bytes()])
}

/// FNV-1a over `parts`: a fixed, documented hash (std's hasher is randomly seeded per
/// process), for lock keys that every process must compute alike.
pub(crate) fn fnv(parts: &[&[u8]]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// The `NOTIFY` channel of a schema's commits: derived from the write lock key, so it
/// is a short plain identifier whatever the schema's name.
pub(crate) fn notify_channel(schema: &Identifier) -> String {
    format!("dcb_{:016x}", write_lock_key(schema) as u64)
}

/// The advisory lock key of a schema: stable across processes and releases.
pub(crate) fn write_lock_key(schema: &Identifier) -> i64 {
    fnv(&[b"dcb-store:write:", schema.as_str().as_bytes()])
}

/// The rows of a list of query items given as [`ItemArrays`] from parameter `$p` on:
/// `(item, data_all, data_any, metadata_all, metadata_any, occurred_from,
/// occurred_until, probe_source, probe_key, probe_value, keyed, types, tags)`, `item`
/// counting from 1, `tags` in the order given (the first is the one probed), `keyed`
/// true when the item's probe is on a ready key.
fn item_rows(s: &str, p: usize) -> String {
    let ready = keys::key_ready(s, "c.probe_source", "c.probe_key");
    let n = |i: usize| p + i;
    format!(
        "SELECT c.item, c.data_all, c.data_any, c.metadata_all, c.metadata_any,
               c.occurred_from, c.occurred_until, c.probe_source, c.probe_key, c.probe_value,
               (c.probe_key IS NOT NULL AND {ready}) AS keyed,
               coalesce(ty.types, '{{}}') AS types, coalesce(tg.tags, '{{}}') AS tags
        FROM unnest(${p}::jsonb[], ${}::jsonb[], ${}::jsonb[], ${}::jsonb[],
                    ${}::timestamptz[], ${}::timestamptz[], ${}::text[], ${}::text[], ${}::text[])
            WITH ORDINALITY AS c(data_all, data_any, metadata_all, metadata_any, occurred_from,
                                 occurred_until, probe_source, probe_key, probe_value, item)
        LEFT JOIN (SELECT item, array_agg(type) AS types
                   FROM unnest(${}::int8[], ${}::text[]) AS x(item, type) GROUP BY item) ty USING (item)
        LEFT JOIN (SELECT item, array_agg(tag ORDER BY ord) AS tags
                   FROM unnest(${}::int8[], ${}::text[]) WITH ORDINALITY AS x(item, tag, ord)
                   GROUP BY item) tg USING (item)",
        n(1),
        n(2),
        n(3),
        n(4),
        n(5),
        n(6),
        n(7),
        n(8),
        n(9),
        n(10),
        n(11),
        n(12)
    )
}

/// The probes of an item row `ci` (from [`item_rows`]) on events after `$after`
/// (exclusive) and before `$before` (exclusive), one per [`Access`] in
/// [`Access::ALL`]'s order, each guarded by [`probe::guard`] so that exactly the one
/// the probe plan chooses runs per row. Each is a `FROM ... WHERE ...` to be completed
/// with [`ITEM_FILTERS`] (and an order). Types and the data and time filters are
/// checked on every row found.
fn item_probes(s: &str, after: &str, before: &str) -> [(String, &'static str); 5] {
    let types = "(cardinality(ci.types) = 0 OR e.event_type = ANY (ci.types))";
    let [tagged, keyed_guard, ranged, typed, everything] = Access::ALL.map(probe::guard);
    let keyed = keys::probe(
        s,
        ["ci.probe_source", "ci.probe_key", "ci.probe_value"],
        after,
        before,
    );
    [
        (
            format!(
                "{s}.event_tags t JOIN {s}.events e ON e.position = t.position
             WHERE {tagged}
               AND t.tag = ci.tags[1] AND t.position > {after} AND t.position < {before}
               AND e.tags @> ci.tags AND {types}"
            ),
            "t.position",
        ),
        (
            format!("{keyed} AND {keyed_guard} AND {types}"),
            "x.position",
        ),
        (
            format!(
                "{s}.events e
             WHERE {ranged}
               AND e.occurred_at >= coalesce(ci.occurred_from, '-infinity')
               AND e.occurred_at < coalesce(ci.occurred_until, 'infinity')
               AND e.position > {after} AND e.position < {before} AND {types}"
            ),
            read::RANGE_ORDER,
        ),
        (
            format!(
                "{s}.events e
             WHERE {typed}
               AND e.event_type = ANY (ci.types) AND e.position > {after} AND e.position < {before}"
            ),
            "e.position",
        ),
        (
            format!(
                "{s}.events e
             WHERE {everything}
               AND e.position > {after} AND e.position < {before}"
            ),
            "e.position",
        ),
    ]
}

/// An item row `ci`'s data, metadata and time filters on event `e` (types and tags
/// are probed by the caller, which knows the index to use).
const ITEM_FILTERS: &str = "
              AND (ci.data_all IS NULL OR NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements(ci.data_all) p WHERE NOT e.data @> p.value))
              AND (ci.data_any IS NULL OR EXISTS (
                    SELECT 1 FROM jsonb_array_elements(ci.data_any) p WHERE e.data @> p.value))
              AND (ci.metadata_all IS NULL OR NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements(ci.metadata_all) p
                    WHERE NOT e.metadata @> p.value))
              AND (ci.metadata_any IS NULL OR EXISTS (
                    SELECT 1 FROM jsonb_array_elements(ci.metadata_any) p
                    WHERE e.metadata @> p.value))
              AND (ci.occurred_from IS NULL OR e.occurred_at >= ci.occurred_from)
              AND (ci.occurred_until IS NULL OR e.occurred_at < ci.occurred_until)";

/// Query items as the thirteen parallel arrays [`item_rows`] reads.
#[derive(Default)]
pub(crate) struct ItemArrays<'a> {
    data_all: Vec<Option<JsonText>>,
    data_any: Vec<Option<JsonText>>,
    metadata_all: Vec<Option<JsonText>>,
    metadata_any: Vec<Option<JsonText>>,
    occurred_from: Vec<Option<DateTime<Utc>>>,
    occurred_until: Vec<Option<DateTime<Utc>>>,
    probe_source: Vec<Option<&'static str>>,
    probe_key: Vec<Option<&'a str>>,
    probe_value: Vec<Option<&'a str>>,
    type_item: Vec<i64>,
    type_value: Vec<&'a str>,
    tag_item: Vec<i64>,
    tag_value: Vec<&'a str>,
    /// The probes any item may run.
    probes: Probes,
    /// Some item has a data, metadata or time filter.
    filtered: bool,
}

impl<'a> ItemArrays<'a> {
    /// Adds an item; items are numbered from 1 in the order they are pushed.
    pub(crate) fn push(&mut self, item: &'a QueryItem, keys: &DeclaredKeys) {
        let split = |filter: Option<&DataFilter>| match filter {
            Some(f) if f.requires_all() => (Some(pairs_as_json_array(f.pairs())), None),
            Some(f) => (None, Some(pairs_as_json_array(f.pairs()))),
            None => (None, None),
        };
        let (all, any) = split(item.data_filter());
        self.data_all.push(all);
        self.data_any.push(any);
        let (all, any) = split(item.metadata_filter());
        self.metadata_all.push(all);
        self.metadata_any.push(any);
        let (from, until) = item.occurred_range();
        self.filtered |= item.data_filter().is_some()
            || item.metadata_filter().is_some()
            || from.is_some()
            || until.is_some();
        self.occurred_from.push(from);
        self.occurred_until.push(until);
        let probe = keys.probe(item);
        self.probes = self.probes.union(Probes::of(item, probe.is_some()));
        self.probe_source.push(probe.map(|(source, _, _)| source));
        self.probe_key.push(probe.map(|(_, key, _)| key));
        self.probe_value.push(probe.map(|(_, _, value)| value));
        let n = self.data_all.len() as i64;
        for t in item.type_names() {
            self.type_item.push(n);
            self.type_value.push(t);
        }
        for t in item.tag_names() {
            self.tag_item.push(n);
            self.tag_value.push(t);
        }
    }

    /// The probes the items may run (none without items).
    pub(crate) fn probes(&self) -> Probes {
        self.probes
    }

    /// Whether some item has a data, metadata or time filter ([`ITEM_FILTERS`] is
    /// true for every row otherwise).
    pub(crate) fn filtered(&self) -> bool {
        self.filtered
    }

    /// The types of [`ItemArrays::params`], for statements sent without a prepare.
    pub(crate) const TYPES: [Type; 13] = [
        Type::JSONB_ARRAY,
        Type::JSONB_ARRAY,
        Type::JSONB_ARRAY,
        Type::JSONB_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
        Type::TEXT_ARRAY,
    ];

    /// The arrays in the order [`item_rows`] numbers them.
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        [
            &self.data_all,
            &self.data_any,
            &self.metadata_all,
            &self.metadata_any,
            &self.occurred_from,
            &self.occurred_until,
            &self.probe_source,
            &self.probe_key,
            &self.probe_value,
            &self.type_item,
            &self.type_value,
            &self.tag_item,
            &self.tag_value,
        ]
    }
}

/// `[{"k": "v"}, ...]`: one single-pair object per predicate, so the same key may
/// appear with several values (which a single object could not hold).
fn pairs_as_json_array(pairs: &[(String, String)]) -> JsonText {
    JsonText::from_value(&serde_json::Value::Array(pair_objects(pairs).collect()))
}

/// The same single-pair objects, each its own `jsonb` (for `@> ALL/ANY ($n::jsonb[])`).
fn pairs_as_json_objects(pairs: &[(String, String)]) -> Vec<JsonText> {
    pair_objects(pairs)
        .map(|o| JsonText::from_value(&o))
        .collect()
}

fn pair_objects(pairs: &[(String, String)]) -> impl Iterator<Item = serde_json::Value> + '_ {
    pairs.iter().map(|(k, v)| serde_json::json!({ k: v }))
}

// jsonb travels as text after a version byte; no parse on either side of the wire.
const JSONB_VERSION: u8 = 1;

impl ToSql for JsonText {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(JSONB_VERSION);
        out.put_slice(self.as_str().as_bytes());
        Ok(IsNull::No)
    }

    accepts!(JSONB);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        match raw.split_first() {
            Some((&JSONB_VERSION, text)) => {
                Ok(JsonText::from_text(std::str::from_utf8(text)?.to_owned()))
            }
            _ => Err("unsupported jsonb encoding version".into()),
        }
    }

    accepts!(JSONB);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_schema_and_are_stable() {
        let id = |name| Identifier::parse(name, "schema").unwrap();
        assert_ne!(write_lock_key(&id("a")), write_lock_key(&id("b")));
        assert_eq!(write_lock_key(&id("a")), write_lock_key(&id("a")));
    }

    #[test]
    fn only_plain_identifiers_are_accepted() {
        assert!(Identifier::parse("shop_1", "schema").is_ok());
        for bad in ["", "1a", "a-b", "a\"b", "a b", "é", &"a".repeat(64)] {
            assert!(Identifier::parse(bad, "schema").is_err(), "{bad}");
        }
    }
}
