//! The read statements: one per query shape for queries of few items, one for all
//! larger queries; their bind parameters and the row layout they return.
//!
//! Longer than most files because both read statements are written here whole, with
//! the shapes that choose between them and the row layout they share.

use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::model::{Event, SequencedEvent};
use chrono::{DateTime, Utc};
use postgres_types::{ToSql, Type};

use super::keys::{self, DeclaredKeys, Probe};
use super::{
    item_probes, item_rows, pairs_as_json_objects, Access, Identifier, ItemArrays, ItemParts,
    ITEM_FILTERS,
};
use crate::model::{DataFilter, JsonText, Query, QueryItem, ReadOptions};

/// Queries of at most this many items get a statement of their own shape (one
/// `UNION ALL` arm per item, the fastest for small queries); larger ones share one
/// statement whose text does not depend on the items (arrays through `unnest`), so
/// neither the statement text nor the number of prepared statements grows with the
/// item count. `benches/store.rs` measures both kinds.
pub(crate) const MAX_SHAPED_ITEMS: usize = 8;

/// What a read statement's text depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ReadShape {
    /// `None`: the statement for queries of many items.
    items: Option<Vec<ItemShape>>,
    backwards: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ItemShape {
    types: bool,
    tags: bool,
    /// A predicate on a declared key to probe (see [`DeclaredKeys::probe`]).
    keyed: bool,
    data: DataShape,
    metadata: DataShape,
    occurred: RangeShape,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RangeShape {
    None,
    /// One end only: a filter.
    Open,
    /// Both ends: probed in the `occurred_at` index.
    Bounded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DataShape {
    None,
    All,
    Any,
}

impl ReadShape {
    pub(crate) fn of(query: &Query, options: &ReadOptions, keys: &DeclaredKeys) -> Self {
        if query.items().len() > MAX_SHAPED_ITEMS {
            return Self::many_items(options);
        }
        ReadShape {
            items: Some(
                query
                    .items()
                    .iter()
                    .map(|item| ItemShape::of(item, keys))
                    .collect(),
            ),
            backwards: options.backwards,
        }
    }

    /// The shape of the statement that serves any number of items.
    pub(crate) fn many_items(options: &ReadOptions) -> Self {
        ReadShape {
            items: None,
            backwards: options.backwards,
        }
    }
}

impl DataShape {
    fn of(filter: Option<&DataFilter>) -> Self {
        match filter {
            None => DataShape::None,
            Some(f) if f.requires_all() => DataShape::All,
            Some(_) => DataShape::Any,
        }
    }

    /// The filter of this shape on the JSON column `column`, with parameter `p`.
    fn filter(self, column: &str, p: &mut dyn FnMut() -> usize) -> String {
        match self {
            DataShape::None => String::new(),
            DataShape::All => format!(" AND e.{column} @> ALL (${}::jsonb[])", p()),
            DataShape::Any => format!(" AND e.{column} @> ANY (${}::jsonb[])", p()),
        }
    }
}

impl ItemShape {
    fn of(item: &QueryItem, keys: &DeclaredKeys) -> Self {
        ItemShape {
            types: !item.type_names().is_empty(),
            tags: !item.tag_names().is_empty(),
            keyed: keys.probe(item).is_some(),
            data: DataShape::of(item.data_filter()),
            metadata: DataShape::of(item.metadata_filter()),
            occurred: match item.occurred_range() {
                (None, None) => RangeShape::None,
                (Some(_), Some(_)) => RangeShape::Bounded,
                _ => RangeShape::Open,
            },
        }
    }
}

/// Columns of a read row: the store head at the statement's snapshot, then the event
/// (all NULL when nothing matched, so that the head still comes back).
mod read_columns {
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

/// The order of an item probing its `occurred_at` range (see `item_arm`).
pub(super) const RANGE_ORDER: &str = "e.position + 0";

const EVENT_COLUMNS: &str =
    "e.position, e.event_id, e.event_type, e.tags, e.data, e.metadata, e.occurred_at, e.recorded_at";

/// The read statement of a shape. `$1` = after (exclusive), `$2` = before (exclusive),
/// `$3` = limit (NULL: none), then each item's parameters in order, or for many items
/// the item arrays.
pub(crate) fn read_statement(schema: &Identifier, shape: &ReadShape) -> String {
    let s = schema.quoted();
    let dir = if shape.backwards { "DESC" } else { "ASC" };
    let Some(items) = &shape.items else {
        return many_items_statement(&s, dir);
    };
    let mut next_param = 4;
    let body = if let [item] = items.as_slice() {
        item_arm(&s, item, EVENT_COLUMNS, dir, &mut next_param)
    } else {
        // Each arm returns whole rows, so an event is fetched once; an event that
        // several items match is kept once.
        let arms: Vec<String> = items
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
    let head = super::head_of(&s);
    format!(
        "SELECT h.head, r.* FROM ({head}) h(head)
         LEFT JOIN LATERAL ({body}) r ON true
         ORDER BY r.position {dir}"
    )
}

/// The statement for any number of items: each item row of `ci` runs the one probe
/// its parts select (see `item_probes`), ordered and limited like an arm of a shaped
/// statement; the guards on `ci`'s columns are one-time filters.
fn many_items_statement(s: &str, dir: &str) -> String {
    let items = item_rows(s, 4);
    let filters = ITEM_FILTERS;
    let columns = EVENT_COLUMNS;
    let arms = item_probes(s, "$1", "$2")
        .map(|(probe, order)| {
            format!("(SELECT {columns} FROM {probe}{filters}\n             ORDER BY {order} {dir} LIMIT $3)")
        })
        .join("\n            UNION ALL\n            ");
    let head = super::head_of(s);
    format!(
        "WITH ci AS ({items})
SELECT h.head, r.* FROM ({head}) h(head)
LEFT JOIN LATERAL (
    SELECT DISTINCT ON (u.position) u.* FROM (
        SELECT m.* FROM ci CROSS JOIN LATERAL (
            {arms}
        ) m
    ) u ORDER BY u.position {dir} LIMIT $3
) r ON true
ORDER BY r.position {dir}"
    )
}

/// One item's selection, ordered by position and limited, so that an index serves it
/// as a range scan, as the probe plan ([`ItemParts::access`]) chooses: the tag arm
/// for a tagged item; else, for a key pair, the key arm guarded by the key being
/// ready beside the arm of the plan's next choice guarded by its not being ready.
fn item_arm(s: &str, item: &ItemShape, select: &str, dir: &str, next: &mut usize) -> String {
    let mut param = || {
        let p = *next;
        *next += 1;
        p
    };
    let tags = item.tags.then(&mut param);
    let key = item.keyed.then(|| (param(), param(), param()));
    let mut filters = String::new();
    if item.types {
        filters.push_str(&format!(" AND e.event_type = ANY (${}::text[])", param()));
    }
    filters.push_str(&item.data.filter("data", &mut param));
    filters.push_str(&item.metadata.filter("metadata", &mut param));
    if item.occurred != RangeShape::None {
        let (from, until) = (param(), param());
        filters.push_str(&format!(
            " AND e.occurred_at >= coalesce(${from}::timestamptz, '-infinity')
              AND e.occurred_at < coalesce(${until}::timestamptz, 'infinity')"
        ));
    }
    let arm = |source: String, guard: &str, order: &str| {
        format!("SELECT {select} FROM {source}{guard}{filters} ORDER BY {order} {dir} LIMIT $3")
    };
    if let Some(p) = tags {
        let source = format!(
            "{s}.event_tags t JOIN {s}.events e ON e.position = t.position
             WHERE t.tag = (${p}::text[])[1] AND t.position > $1 AND t.position < $2
               AND e.tags @> ${p}::text[]"
        );
        return arm(source, "", "t.position");
    }
    // Without a tag: (occurred_at, position) for a range with both ends, else
    // (event_type, position) for types (both conditions are in `filters`). The generic
    // plan cannot tell a narrow range from `after`/`before` bounds that select
    // everything, and would walk the primary key in order, filtering by time; ordering
    // by an expression makes the order no index gives, so the range index wins (its
    // position bounds stay index conditions) and its rows are sorted. A range open at
    // one end (`occurred_from` alone, as a follower might use) keeps walking positions
    // from `after`: read whole, it could be most of the store.
    let parts = ItemParts {
        tags: item.tags,
        key_pair: item.keyed,
        bounded_range: item.occurred == RangeShape::Bounded,
        types: item.types,
    };
    let order = match parts.access(false) {
        Access::Range => RANGE_ORDER,
        Access::Tag | Access::Key | Access::Types | Access::Scan => "e.position",
    };
    let unkeyed = format!("{s}.events e WHERE e.position > $1 AND e.position < $2");
    let Some((source, k, v)) = key else {
        return arm(unkeyed, "", order);
    };
    let [source, k, v] = [source, k, v].map(|p| format!("${p}::text"));
    let keyed = keys::probe(s, [&source, &k, &v], "$1", "$2");
    let ready = keys::key_ready(s, &source, &k);
    format!(
        "({}) UNION ALL ({})",
        arm(keyed, &format!(" AND {ready}"), "x.position"),
        arm(unkeyed, &format!(" AND NOT {ready}"), order)
    )
}

/// A read's bind parameters, in the order `read_statement` numbers them.
pub(crate) struct ReadParams<'a> {
    after: i64,
    before: i64,
    limit: Option<i64>,
    items: ItemsParams<'a>,
}

enum ItemsParams<'a> {
    /// Each item's own parameters (a shaped statement).
    Each(Vec<ItemParams<'a>>),
    /// All items as arrays (the statement for many items).
    Arrays(Box<ItemArrays<'a>>),
}

struct ItemParams<'a> {
    tags: Option<Vec<&'a str>>,
    probe: Option<Probe<'a>>,
    types: Option<Vec<&'a str>>,
    data: Option<Vec<JsonText>>,
    metadata: Option<Vec<JsonText>>,
    occurred: Option<[Option<DateTime<Utc>>; 2]>,
}

impl<'a> ReadParams<'a> {
    /// The parameters of `query` for the statement of `shape` (from `ReadShape::of`
    /// or `ReadShape::many_items`). Positions and the limit beyond `i64` mean no
    /// bound: no position exceeds it.
    pub(crate) fn new(
        query: &'a Query,
        options: &ReadOptions,
        shape: &ReadShape,
        keys: &DeclaredKeys,
    ) -> Self {
        let items = match shape.items {
            Some(_) => ItemsParams::Each(
                query
                    .items()
                    .iter()
                    .map(|item| ItemParams::of(item, keys))
                    .collect(),
            ),
            None => {
                let mut arrays = ItemArrays::default();
                query
                    .items()
                    .iter()
                    .for_each(|item| arrays.push(item, keys));
                ItemsParams::Arrays(Box::new(arrays))
            }
        };
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        ReadParams {
            after: options.after.map_or(0, clamp),
            before: options.before.map_or(i64::MAX, clamp),
            limit: options.limit.map(clamp),
            items,
        }
    }

    pub(crate) fn as_params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.as_typed_params().into_iter().map(|(p, _)| p).collect()
    }

    /// The parameters with their types, for a statement sent without a prepare.
    pub(crate) fn as_typed_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&self.after, Type::INT8),
            (&self.before, Type::INT8),
            (&self.limit, Type::INT8),
        ];
        match &self.items {
            ItemsParams::Arrays(arrays) => {
                params.extend(arrays.params().into_iter().zip(ItemArrays::TYPES))
            }
            ItemsParams::Each(items) => {
                for item in items {
                    if let Some(tags) = &item.tags {
                        params.push((tags, Type::TEXT_ARRAY));
                    }
                    if let Some((source, key, value)) = &item.probe {
                        params.push((source, Type::TEXT));
                        params.push((key, Type::TEXT));
                        params.push((value, Type::TEXT));
                    }
                    if let Some(types) = &item.types {
                        params.push((types, Type::TEXT_ARRAY));
                    }
                    if let Some(data) = &item.data {
                        params.push((data, Type::JSONB_ARRAY));
                    }
                    if let Some(metadata) = &item.metadata {
                        params.push((metadata, Type::JSONB_ARRAY));
                    }
                    if let Some([from, until]) = &item.occurred {
                        params.push((from, Type::TIMESTAMPTZ));
                        params.push((until, Type::TIMESTAMPTZ));
                    }
                }
            }
        }
        params
    }
}

impl<'a> ItemParams<'a> {
    fn of(item: &'a QueryItem, keys: &DeclaredKeys) -> Self {
        ItemParams {
            tags: (!item.tag_names().is_empty())
                .then(|| item.tag_names().iter().map(String::as_str).collect()),
            probe: keys.probe(item),
            types: (!item.type_names().is_empty())
                .then(|| item.type_names().iter().map(String::as_str).collect()),
            data: item.data_filter().map(|f| pairs_as_json_objects(f.pairs())),
            metadata: item
                .metadata_filter()
                .map(|f| pairs_as_json_objects(f.pairs())),
            occurred: item.has_occurred_range().then(|| {
                let (from, until) = item.occurred_range();
                [from, until]
            }),
        }
    }
}

/// The rows of a read statement: the server's head at the statement's snapshot, and
/// the matching events in the statement's order (a row without a position only
/// carries the head: nothing matched).
pub(crate) fn decode_read(rows: &[Row]) -> Result<(u64, Vec<SequencedEvent>)> {
    use read_columns as col;
    let head = match rows.first() {
        Some(row) => row.try_get::<_, i64>(col::HEAD).map_err(Error::db)?,
        None => 0,
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(position) = row
            .try_get::<_, Option<i64>>(col::POSITION)
            .map_err(Error::db)?
        else {
            continue;
        };
        let event = Event::from_stored(
            row.try_get(col::EVENT_ID).map_err(Error::db)?,
            row.try_get(col::EVENT_TYPE).map_err(Error::db)?,
            row.try_get(col::TAGS).map_err(Error::db)?,
            row.try_get::<_, JsonText>(col::DATA).map_err(Error::db)?,
            row.try_get::<_, JsonText>(col::METADATA)
                .map_err(Error::db)?,
            row.try_get(col::OCCURRED_AT).map_err(Error::db)?,
        );
        events.push(SequencedEvent {
            position: position as u64,
            event,
            recorded_at: row.try_get(col::RECORDED_AT).map_err(Error::db)?,
        });
    }
    Ok((head as u64, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_statements_depend_on_shape_not_values() {
        let a = Query::new([QueryItem::new().types(["A"]).tags(["x", "y"])]);
        let b = Query::new([QueryItem::new().types(["B", "C"]).tags(["z"])]);
        let opts = ReadOptions::default();
        let keys = DeclaredKeys::default();
        assert_eq!(
            ReadShape::of(&a, &opts, &keys),
            ReadShape::of(&b, &opts, &keys)
        );
        let text = read_statement(
            &Identifier::parse("s", "schema").unwrap(),
            &ReadShape::of(&a, &opts, &keys),
        );
        assert!(!text.contains("\"A\"") && !text.contains('x'.to_string().repeat(2).as_str()));
        let shape = ReadShape::of(&a, &opts, &keys);
        assert_eq!(
            ReadParams::new(&a, &opts, &shape, &keys).as_params().len(),
            5
        );
        let many =
            Query::new((0..=MAX_SHAPED_ITEMS).map(|i| QueryItem::new().tags([i.to_string()])));
        let fewer = Query::new((0..MAX_SHAPED_ITEMS + 5).map(|_| QueryItem::new().types(["A"])));
        assert_eq!(
            ReadShape::of(&many, &opts, &keys),
            ReadShape::of(&fewer, &opts, &keys)
        );
        assert_eq!(
            ReadShape::of(&many, &opts, &keys),
            ReadShape::many_items(&opts)
        );
    }
}
