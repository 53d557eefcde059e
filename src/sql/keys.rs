//! Indexed keys: which predicate of an item is probed in `event_keys`, the SQL that
//! derives an event's entries (one rule for the append statement and the backfill),
//! and the statements that declare, backfill and drop keys.

use std::sync::Arc;

use super::Identifier;
use crate::model::{DataFilter, QueryItem};

/// Declared keys per store (data and metadata together), at most.
pub(crate) const MAX_INDEXED_KEYS: usize = 32;

/// Bytes of a declared key, at most: with the value's prefix (at most 800 bytes) an
/// entry stays far below a B-tree page's limit.
pub(crate) const MAX_INDEXED_KEY_BYTES: usize = 256;

/// Characters of a value kept in an entry (see `event_keys` in the migrations).
const VALUE_PREFIX_CHARS: usize = 200;

/// Where a declared key is looked up: the `source` column of `indexed_keys` and
/// `event_keys`, bound as text.
pub(crate) const DATA: &str = "d";
pub(crate) const METADATA: &str = "m";

/// The keys this process's configuration declares as indexed.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeclaredKeys {
    data: Arc<[String]>,
    metadata: Arc<[String]>,
}

/// A predicate to probe in `event_keys`: `(source, key, value)`.
pub(crate) type Probe<'a> = (&'static str, &'a str, &'a str);

impl DeclaredKeys {
    pub(crate) fn new(data: &[String], metadata: &[String]) -> Self {
        DeclaredKeys {
            data: data.into(),
            metadata: metadata.into(),
        }
    }

    /// Every declared key with its source.
    pub(crate) fn all(&self) -> Vec<(&'static str, &str)> {
        let data = self.data.iter().map(|k| (DATA, k.as_str()));
        data.chain(self.metadata.iter().map(|k| (METADATA, k.as_str())))
            .collect()
    }

    /// The predicate of `item` to probe in `event_keys`: none for an item with tags
    /// (its first tag is probed, the predicate filters); else the first on a declared
    /// data key, else on a declared metadata key, of a filter whose every match must
    /// hold it (it requires all its pairs, or has just one). The probe runs only once
    /// the key is ready; the row is then checked against the whole item.
    pub(crate) fn probe<'a>(&self, item: &'a QueryItem) -> Option<Probe<'a>> {
        if (self.data.is_empty() && self.metadata.is_empty()) || !item.tag_names().is_empty() {
            return None;
        }
        fn first<'a>(
            filter: Option<&'a DataFilter>,
            declared: &[String],
        ) -> Option<(&'a str, &'a str)> {
            let filter = filter?;
            if !filter.requires_all() && filter.pairs().len() != 1 {
                return None;
            }
            filter
                .pairs()
                .iter()
                .find(|(key, _)| declared.contains(key))
                .map(|(key, value)| (key.as_str(), value.as_str()))
        }
        first(item.data_filter(), &self.data)
            .map(|(key, value)| (DATA, key, value))
            .or_else(|| {
                first(item.metadata_filter(), &self.metadata)
                    .map(|(key, value)| (METADATA, key, value))
            })
    }
}

/// Whether the declared key `(source, key)` (SQL expressions, text) is ready: its
/// backfill done.
pub(super) fn key_ready(s: &str, source: &str, key: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM {s}.indexed_keys ik
                 WHERE ik.source = ({source})::\"char\" AND ik.key = {key}
                   AND ik.backfilled >= ik.backfill_to)"
    )
}

/// The entry value of the probed predicate's value `value` (an SQL expression).
fn probe_value(value: &str) -> String {
    format!("left({value}, {VALUE_PREFIX_CHARS})")
}

/// The events `e` whose entry `x` of `(source, key, value)` (SQL expressions, text)
/// lies in positions `(after, before)`: `FROM ... WHERE ...`, in `x.position` order
/// when so ordered.
pub(super) fn probe(s: &str, [source, key, value]: [&str; 3], after: &str, before: &str) -> String {
    let value = probe_value(value);
    format!(
        "{s}.event_keys x JOIN {s}.events e ON e.position = x.position
             WHERE x.source = ({source})::\"char\" AND x.key = {key} AND x.value = {value}
               AND x.position > {after} AND x.position < {before}"
    )
}

/// The entries of the events `events` (an SQL relation with columns `position`,
/// `data` and `metadata`) for the keys in `keys` (a relation with columns `source`
/// and `key`): one `(source, key, value, position)` row per event and key whose data
/// (or metadata) holds a JSON string at that top-level key. The only place this rule
/// is written.
pub(super) fn entries(events: &str, keys: &str) -> String {
    let value = probe_value("d.doc ->> k.key");
    format!(
        "SELECT k.source, k.key, {value}, ev.position FROM {events} ev CROSS JOIN {keys} k
         CROSS JOIN LATERAL (
             SELECT CASE WHEN k.source = '{DATA}' THEN ev.data ELSE ev.metadata END AS doc) d
         WHERE jsonb_typeof(d.doc -> k.key) = 'string'"
    )
}

/// The statements that manage a store's declared keys.
pub(crate) struct KeyStatements {
    /// `(source, key, backfill_to, backfilled)` of every declared key.
    pub list: String,
    /// Declares `($1, $2)` (when it is not declared), recording the head as
    /// `backfill_to`; run under the write lock, at READ COMMITTED (a snapshot taken
    /// after the lock), so no batch misses the key.
    pub declare: String,
    /// Forgets the declared key `($1, $2)`; run under the write lock.
    pub undeclare: String,
    /// Deletes the entries of key `($1, $2)`.
    pub drop_entries: String,
    /// Adds key `($1, $2)`'s entries for positions in `($3, $4]` (ignoring those
    /// present).
    pub backfill: String,
    /// Records that key `($1, $2)` has its entries up to `$4`, when it had them up to
    /// `$3`, locking its row; run before the chunk's entries, in their transaction.
    pub advance: String,
}

impl KeyStatements {
    pub(crate) fn new(schema: &Identifier) -> Self {
        let s = schema.quoted();
        let head = super::head_of(&s);
        let key = "source = $1::text::\"char\" AND key = $2::text";
        let entries = entries(
            &format!(
                "(SELECT position, data, metadata FROM {s}.events
                  WHERE position > $3 AND position <= $4)"
            ),
            "(SELECT $1::text::\"char\" AS source, $2::text AS key)",
        );
        KeyStatements {
            list: format!(
                "SELECT source::text, key, backfill_to, backfilled FROM {s}.indexed_keys
                 ORDER BY source, key"
            ),
            declare: format!(
                "INSERT INTO {s}.indexed_keys (source, key, backfill_to)
                 SELECT $1::text::\"char\", $2::text, ({head})
                 ON CONFLICT (source, key) DO NOTHING"
            ),
            undeclare: format!("DELETE FROM {s}.indexed_keys WHERE {key}"),
            drop_entries: format!("DELETE FROM {s}.event_keys WHERE {key}"),
            backfill: format!(
                "INSERT INTO {s}.event_keys (source, key, value, position) {entries}
                 ON CONFLICT DO NOTHING"
            ),
            advance: format!(
                "UPDATE {s}.indexed_keys SET backfilled = greatest(backfilled, $4)
                 WHERE {key} AND backfilled >= $3"
            ),
        }
    }
}

/// A row of [`KeyStatements::list`]: source (`DATA` or `METADATA`), key, and the
/// backfill's goal and progress.
pub(crate) struct KeyRow {
    pub source: String,
    pub key: String,
    pub backfill_to: u64,
    pub backfilled: u64,
}

impl KeyRow {
    pub(crate) fn decode(row: &tokio_postgres::Row) -> crate::error::Result<Self> {
        let db = crate::error::Error::db;
        Ok(KeyRow {
            source: row.try_get(0).map_err(db)?,
            key: row.try_get(1).map_err(db)?,
            backfill_to: row.try_get::<_, i64>(2).map_err(db)?.max(0) as u64,
            backfilled: row.try_get::<_, i64>(3).map_err(db)?.max(0) as u64,
        })
    }
}
