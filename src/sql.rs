//! The only place SQL text exists: the statements the actors prepare, the read
//! statement for each query shape, and the encoding of bind parameters.
//!
//! Statement text never contains a user value. The schema name is an identifier,
//! checked in `config` and quoted here once per store; everything else is a bind
//! parameter. A read's text depends only on its *shape* (which parts each query item
//! has), so one prepared statement serves every read of that shape; the append
//! statement's text does not depend on the batch at all (arrays through `unnest`).

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};
use uuid::Uuid;

use crate::model::{AppendCondition, Event, JsonText, Query, QueryItem, ReadOptions};

/// Takes the store's write lock until the transaction ends. Every writer, in every
/// process, takes it before it reads the head, so positions become visible in order.
pub(crate) const WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// The quoted schema name, checked by `config` before it gets here.
pub(crate) fn quote_schema(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// The advisory lock key of a schema: stable across processes and releases.
pub(crate) fn write_lock_key(schema: &str) -> i64 {
    // FNV-1a: a fixed, documented hash (std's hasher is randomly seeded per process).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"dcb-store:write:".iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// The append statement: checks every append's event ids and condition against the
/// state before this statement, inserts the events of the appends that pass at
/// consecutive positions after the head, and returns one row per append, decoded by
/// [`AppendRow::decode`]. A retry (every event stored unchanged, as exactly one
/// earlier append: same positions in order, `starts_append` on the first only, and
/// the next stored event starting another append) is recognised before the
/// condition, which its own events may now fail. Tags compare as sets.
///
/// Parameters are parallel arrays (see [`AppendParams`]); `$19` is the number of appends.
pub(crate) fn append_statement(schema: &str) -> String {
    let s = quote_schema(schema);
    let filters = "
              AND (ci.data_all IS NULL OR NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements(ci.data_all) p WHERE NOT e.data @> p.value))
              AND (ci.data_any IS NULL OR EXISTS (
                    SELECT 1 FROM jsonb_array_elements(ci.data_any) p WHERE e.data @> p.value))
              AND (ci.occurred_from IS NULL OR e.occurred_at >= ci.occurred_from)
              AND (ci.occurred_until IS NULL OR e.occurred_at < ci.occurred_until)";
    format!(
        "WITH
head AS (
    SELECT coalesce(max(position), 0) AS p FROM {s}.events
),
ev AS (
    -- k: the event's place in its append (an append's events are adjacent).
    SELECT u.*, u.n - min(u.n) OVER (PARTITION BY u.append_idx) AS k
    FROM unnest($1::int4[], $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::timestamptz[])
        WITH ORDINALITY AS u(append_idx, event_id, event_type, data, metadata, occurred_at, n)
),
ev_tags AS (
    SELECT * FROM unnest($7::int8[], $8::text[]) WITH ORDINALITY AS t(n, tag, ord)
),
ci AS (
    SELECT c.*, coalesce(ty.types, '{{}}') AS types, coalesce(tg.tags, '{{}}') AS tags
    FROM unnest($9::int4[], $10::int8[], $11::jsonb[], $12::jsonb[], $13::timestamptz[], $14::timestamptz[])
        WITH ORDINALITY AS c(append_idx, after_pos, data_all, data_any, occurred_from, occurred_until, item)
    LEFT JOIN (SELECT item, array_agg(type) AS types
               FROM unnest($15::int8[], $16::text[]) AS x(item, type) GROUP BY item) ty USING (item)
    LEFT JOIN (SELECT item, array_agg(tag) AS tags
               FROM unnest($17::int8[], $18::text[]) AS x(item, tag) GROUP BY item) tg USING (item)
),
failed AS (
    SELECT DISTINCT ci.append_idx FROM ci
    WHERE CASE
        WHEN cardinality(ci.tags) > 0 THEN EXISTS (
            SELECT 1 FROM {s}.event_tags t JOIN {s}.events e ON e.position = t.position
            WHERE t.tag = ci.tags[1] AND t.position > ci.after_pos
              AND e.tags @> ci.tags
              AND (cardinality(ci.types) = 0 OR e.event_type = ANY (ci.types)){filters})
        WHEN cardinality(ci.types) > 0 THEN EXISTS (
            SELECT 1 FROM {s}.events e
            WHERE e.event_type = ANY (ci.types) AND e.position > ci.after_pos{filters})
        ELSE EXISTS (
            SELECT 1 FROM {s}.events e
            WHERE e.position > ci.after_pos{filters})
    END
),
ev_tag_lists AS (
    SELECT n, array_agg(tag ORDER BY ord) AS tags FROM ev_tags GROUP BY n
),
stored AS (
    -- Events of the batch whose id is already stored, and whether the stored event is
    -- the same (type, tags, data, metadata). LATERAL ... LIMIT 1 keeps this a
    -- unique-index probe per event: as a join, the generic plan (which guesses 10 input
    -- rows) may hash it against a scan of the whole table.
    SELECT ev.append_idx, ev.event_id, s.position, s.position - ev.k AS start,
           (s.event_type = ev.event_type
            AND s.tags @> coalesce(tl.tags, '{{}}') AND s.tags <@ coalesce(tl.tags, '{{}}')
            AND s.data = ev.data AND s.metadata = ev.metadata
            AND s.starts_append = (ev.k = 0)) AS same
    FROM ev
    CROSS JOIN LATERAL (
        SELECT e.position, e.event_type, e.tags, e.data, e.metadata, e.starts_append
        FROM {s}.events e WHERE e.event_id = ev.event_id LIMIT 1) s
    LEFT JOIN ev_tag_lists tl ON tl.n = ev.n
),
replay_candidates AS (
    -- Every event stored unchanged, at consecutive positions in the append's order.
    SELECT st.append_idx, min(st.position) AS first_pos, max(st.position) AS last_pos
    FROM stored st
    GROUP BY st.append_idx
    HAVING bool_and(st.same) AND count(DISTINCT st.start) = 1
       AND count(*) = (SELECT count(*) FROM ev WHERE ev.append_idx = st.append_idx)
),
replayed AS (
    -- ... and exactly one stored append: the event after the last starts another.
    SELECT c.* FROM replay_candidates c
    WHERE NOT EXISTS (
        SELECT 1 FROM {s}.events e WHERE e.position = c.last_pos + 1 AND NOT e.starts_append)
),
dup AS (
    SELECT st.append_idx, min(st.event_id::text)::uuid AS event_id FROM stored st
    WHERE st.append_idx NOT IN (SELECT append_idx FROM replayed)
    GROUP BY st.append_idx
),
accepted AS (
    SELECT ev.*, row_number() OVER (ORDER BY ev.n) AS rn FROM ev
    WHERE ev.append_idx NOT IN (SELECT append_idx FROM failed)
      AND ev.append_idx NOT IN (SELECT append_idx FROM stored)
),
inserted AS (
    INSERT INTO {s}.events (position, event_id, event_type, tags, data, metadata, occurred_at, starts_append)
    SELECT head.p + a.rn, a.event_id, a.event_type, coalesce(tl.tags, '{{}}'), a.data, a.metadata, a.occurred_at, a.k = 0
    FROM accepted a CROSS JOIN head LEFT JOIN ev_tag_lists tl ON tl.n = a.n
    ORDER BY a.rn
),
inserted_tags AS (
    INSERT INTO {s}.event_tags (tag, position)
    SELECT t.tag, head.p + a.rn FROM accepted a CROSS JOIN head JOIN ev_tags t ON t.n = a.n
)
SELECT r.idx::int4,
       (CASE WHEN r.idx IN (SELECT append_idx FROM replayed) THEN 3
             WHEN r.idx IN (SELECT append_idx FROM dup) THEN 2
             WHEN r.idx IN (SELECT append_idx FROM failed) THEN 1
             ELSE 0 END)::int2,
       coalesce(rp.first_pos, head.p + s.first_rn)::int8,
       coalesce(rp.last_pos, head.p + s.last_rn)::int8,
       d.event_id
FROM generate_series(0, $19::int4 - 1) AS r(idx) CROSS JOIN head
LEFT JOIN (SELECT append_idx, min(rn) AS first_rn, max(rn) AS last_rn
           FROM accepted GROUP BY append_idx) s ON s.append_idx = r.idx
LEFT JOIN replayed rp ON rp.append_idx = r.idx
LEFT JOIN dup d ON d.append_idx = r.idx
ORDER BY r.idx"
    )
}

/// What the append statement decided for one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendStatus {
    /// Written now at `first..=last`.
    Written { first: u64, last: u64 },
    /// The condition matched; nothing written.
    ConditionFailed,
    /// An event id is stored with other content, or not as this one append; the id
    /// when the statement names one.
    DuplicateId(Option<Uuid>),
    /// Stored before, unchanged, as this very append (a retry): its positions.
    Replayed { first: u64, last: u64 },
}

/// One row of the append statement.
pub(crate) struct AppendRow {
    /// The append's index within its round.
    pub index: usize,
    pub status: AppendStatus,
}

impl AppendRow {
    /// Decodes `(append index, status code, first, last, duplicate id)`; the codes
    /// are the statement's: 0 written, 1 condition failed, 2 duplicate id, 3 replayed.
    pub(crate) fn decode(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let index: i32 = row.try_get(0)?;
        let code: i16 = row.try_get(1)?;
        let span = || -> Result<(u64, u64), tokio_postgres::Error> {
            Ok((
                row.try_get::<_, i64>(2)? as u64,
                row.try_get::<_, i64>(3)? as u64,
            ))
        };
        let status = match code {
            0 => {
                let (first, last) = span()?;
                AppendStatus::Written { first, last }
            }
            1 => AppendStatus::ConditionFailed,
            3 => {
                let (first, last) = span()?;
                AppendStatus::Replayed { first, last }
            }
            _ => AppendStatus::DuplicateId(row.try_get(4)?),
        };
        Ok(AppendRow {
            index: index as usize,
            status,
        })
    }
}

/// The append statement's bind parameters for one round of a batch, as parallel
/// arrays borrowed from the appends.
#[derive(Default)]
pub(crate) struct AppendParams<'a> {
    ev_append: Vec<i32>,
    ev_id: Vec<Uuid>,
    ev_type: Vec<&'a str>,
    ev_data: Vec<&'a JsonText>,
    ev_metadata: Vec<&'a JsonText>,
    ev_occurred: Vec<DateTime<Utc>>,
    tag_event: Vec<i64>,
    tag_value: Vec<&'a str>,
    ci_append: Vec<i32>,
    ci_after: Vec<i64>,
    ci_data_all: Vec<Option<JsonText>>,
    ci_data_any: Vec<Option<JsonText>>,
    ci_occurred_from: Vec<Option<DateTime<Utc>>>,
    ci_occurred_until: Vec<Option<DateTime<Utc>>>,
    cit_item: Vec<i64>,
    cit_type: Vec<&'a str>,
    cig_item: Vec<i64>,
    cig_tag: Vec<&'a str>,
    appends: i32,
}

impl<'a> AppendParams<'a> {
    /// Adds one append; appends are numbered in the order they are pushed.
    pub(crate) fn push(&mut self, events: &'a [Event], condition: Option<&'a AppendCondition>) {
        let idx = self.appends;
        self.appends += 1;
        for event in events {
            self.ev_append.push(idx);
            self.ev_id.push(event.id());
            self.ev_type.push(event.event_type());
            self.ev_data.push(event.data_text());
            self.ev_metadata.push(event.metadata_text());
            // Set by validation before an event reaches a batch.
            self.ev_occurred
                .push(event.occurred_at().unwrap_or_else(Utc::now));
            let n = self.ev_id.len() as i64; // WITH ORDINALITY counts from 1
            for tag in event.tags() {
                self.tag_event.push(n);
                self.tag_value.push(tag);
            }
        }
        let Some(condition) = condition else { return };
        // `after` was checked to fit in i64; no position is below 1, so 0 means "any".
        let after = condition.after.map_or(0, |a| a as i64);
        for item in condition.fail_if_events_match.items() {
            self.ci_append.push(idx);
            self.ci_after.push(after);
            let (all, any) = match item.data_filter() {
                Some(f) if f.requires_all() => (Some(pairs_as_json_array(f.pairs())), None),
                Some(f) => (None, Some(pairs_as_json_array(f.pairs()))),
                None => (None, None),
            };
            self.ci_data_all.push(all);
            self.ci_data_any.push(any);
            let (from, until) = item.occurred_range();
            self.ci_occurred_from.push(from);
            self.ci_occurred_until.push(until);
            let n = self.ci_append.len() as i64;
            for t in item.type_names() {
                self.cit_item.push(n);
                self.cit_type.push(t);
            }
            for t in item.tag_names() {
                self.cig_item.push(n);
                self.cig_tag.push(t);
            }
        }
    }

    pub(crate) fn as_params(&self) -> [&(dyn ToSql + Sync); 19] {
        [
            &self.ev_append,
            &self.ev_id,
            &self.ev_type,
            &self.ev_data,
            &self.ev_metadata,
            &self.ev_occurred,
            &self.tag_event,
            &self.tag_value,
            &self.ci_append,
            &self.ci_after,
            &self.ci_data_all,
            &self.ci_data_any,
            &self.ci_occurred_from,
            &self.ci_occurred_until,
            &self.cit_item,
            &self.cit_type,
            &self.cig_item,
            &self.cig_tag,
            &self.appends,
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

/// What a read statement's text depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ReadShape {
    items: Vec<ItemShape>,
    backwards: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ItemShape {
    types: bool,
    tags: bool,
    data: DataShape,
    occurred: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DataShape {
    None,
    All,
    Any,
}

impl ReadShape {
    pub(crate) fn of(query: &Query, options: &ReadOptions) -> Self {
        ReadShape {
            items: query.items().iter().map(ItemShape::of).collect(),
            backwards: options.backwards,
        }
    }
}

impl ItemShape {
    fn of(item: &QueryItem) -> Self {
        ItemShape {
            types: !item.type_names().is_empty(),
            tags: !item.tag_names().is_empty(),
            data: match item.data_filter() {
                None => DataShape::None,
                Some(f) if f.requires_all() => DataShape::All,
                Some(_) => DataShape::Any,
            },
            occurred: item.has_occurred_range(),
        }
    }
}

/// Columns of a read row: the store head at the statement's snapshot, then the event
/// (all NULL when nothing matched, so that the head still comes back).
pub(crate) mod read_columns {
    pub const HEAD: usize = 0;
    pub const POSITION: usize = 1;
    pub const EVENT_ID: usize = 2;
    pub const EVENT_TYPE: usize = 3;
    pub const TAGS: usize = 4;
    pub const DATA: usize = 5;
    pub const METADATA: usize = 6;
    pub const OCCURRED_AT: usize = 7;
    pub const RECORDED_AT: usize = 8;
}

const EVENT_COLUMNS: &str =
    "e.position, e.event_id, e.event_type, e.tags, e.data, e.metadata, e.occurred_at, e.recorded_at";

/// The read statement of a shape. `$1` = after (exclusive), `$2` = before (exclusive),
/// `$3` = limit (NULL: none), then each item's parameters in order.
pub(crate) fn read_statement(schema: &str, shape: &ReadShape) -> String {
    let s = quote_schema(schema);
    let dir = if shape.backwards { "DESC" } else { "ASC" };
    let mut next_param = 4;
    let body = if let [item] = shape.items.as_slice() {
        item_arm(&s, item, EVENT_COLUMNS, dir, &mut next_param)
    } else {
        // Each arm returns whole rows, so an event is fetched once; an event that
        // several items match is kept once.
        let arms: Vec<String> = shape
            .items
            .iter()
            .map(|item| {
                format!(
                    "({})",
                    item_arm(&s, item, EVENT_COLUMNS, dir, &mut next_param)
                )
            })
            .collect();
        format!(
            "SELECT DISTINCT ON (u.position) u.* FROM ({}) u ORDER BY u.position {dir} LIMIT $3",
            arms.join(" UNION ALL ")
        )
    };
    format!(
        "SELECT h.head, r.* FROM (SELECT coalesce(max(position), 0) AS head FROM {s}.events) h
         LEFT JOIN LATERAL ({body}) r ON true
         ORDER BY r.position {dir}"
    )
}

/// One item's selection, ordered by position and limited, so that an index on
/// `(tag, position)` or `(event_type, position)` serves it as a range scan.
fn item_arm(s: &str, item: &ItemShape, select: &str, dir: &str, next: &mut usize) -> String {
    let mut param = || {
        let p = *next;
        *next += 1;
        p
    };
    let mut sql = if item.tags {
        let p = param();
        format!(
            "SELECT {select} FROM {s}.event_tags t JOIN {s}.events e ON e.position = t.position
             WHERE t.tag = (${p}::text[])[1] AND t.position > $1 AND t.position < $2
               AND e.tags @> ${p}::text[]"
        )
    } else {
        format!("SELECT {select} FROM {s}.events e WHERE e.position > $1 AND e.position < $2")
    };
    if item.types {
        sql.push_str(&format!(" AND e.event_type = ANY (${}::text[])", param()));
    }
    match item.data {
        DataShape::None => {}
        DataShape::All => sql.push_str(&format!(" AND e.data @> ALL (${}::jsonb[])", param())),
        DataShape::Any => sql.push_str(&format!(" AND e.data @> ANY (${}::jsonb[])", param())),
    }
    if item.occurred {
        let (from, until) = (param(), param());
        sql.push_str(&format!(
            " AND e.occurred_at >= coalesce(${from}::timestamptz, '-infinity')
              AND e.occurred_at < coalesce(${until}::timestamptz, 'infinity')"
        ));
    }
    let order_column = if item.tags {
        "t.position"
    } else {
        "e.position"
    };
    sql.push_str(&format!(" ORDER BY {order_column} {dir} LIMIT $3"));
    sql
}

/// A read's bind parameters, in the order `read_statement` numbers them.
pub(crate) struct ReadParams<'a> {
    after: i64,
    before: i64,
    limit: Option<i64>,
    items: Vec<ItemParams<'a>>,
}

struct ItemParams<'a> {
    tags: Option<Vec<&'a str>>,
    types: Option<Vec<&'a str>>,
    data: Option<Vec<JsonText>>,
    occurred: Option<[Option<DateTime<Utc>>; 2]>,
}

impl<'a> ReadParams<'a> {
    /// `options` must have been validated (values fit in i64).
    pub(crate) fn new(query: &'a Query, options: &ReadOptions) -> Self {
        let items = query
            .items()
            .iter()
            .map(|item| ItemParams {
                tags: (!item.tag_names().is_empty())
                    .then(|| item.tag_names().iter().map(String::as_str).collect()),
                types: (!item.type_names().is_empty())
                    .then(|| item.type_names().iter().map(String::as_str).collect()),
                data: item.data_filter().map(|f| pairs_as_json_objects(f.pairs())),
                occurred: item.has_occurred_range().then(|| {
                    let (from, until) = item.occurred_range();
                    [from, until]
                }),
            })
            .collect();
        ReadParams {
            after: options.after.map_or(0, |a| a as i64),
            before: options.before.map_or(i64::MAX, |b| b as i64),
            limit: options.limit.map(|l| l as i64),
            items,
        }
    }

    pub(crate) fn as_params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.after, &self.before, &self.limit];
        for item in &self.items {
            if let Some(tags) = &item.tags {
                params.push(tags);
            }
            if let Some(types) = &item.types {
                params.push(types);
            }
            if let Some(data) = &item.data {
                params.push(data);
            }
            if let Some([from, until]) = &item.occurred {
                params.push(from);
                params.push(until);
            }
        }
        params
    }
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
    fn read_statements_depend_on_shape_not_values() {
        let a = Query::new([QueryItem::new().types(["A"]).tags(["x", "y"])]);
        let b = Query::new([QueryItem::new().types(["B", "C"]).tags(["z"])]);
        let opts = ReadOptions::default();
        assert_eq!(ReadShape::of(&a, &opts), ReadShape::of(&b, &opts));
        let text = read_statement("s", &ReadShape::of(&a, &opts));
        assert!(!text.contains("\"A\"") && !text.contains('x'.to_string().repeat(2).as_str()));
        assert_eq!(ReadParams::new(&a, &opts).as_params().len(), 5);
    }

    #[test]
    fn lock_keys_differ_by_schema_and_are_stable() {
        assert_ne!(write_lock_key("a"), write_lock_key("b"));
        assert_eq!(write_lock_key("a"), write_lock_key("a"));
    }
}
