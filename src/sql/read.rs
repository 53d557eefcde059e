//! The read statements: one per query shape for queries of few items, one for all
//! larger queries; their bind parameters and the row layout they return.

use chrono::{DateTime, Utc};
use postgres_types::{ToSql, Type};

use super::{item_rows, pairs_as_json_objects, Identifier, ItemArrays, ITEM_FILTERS};
use crate::model::{JsonText, Query, QueryItem, ReadOptions};

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
        if query.items().len() > MAX_SHAPED_ITEMS {
            return Self::many_items(options);
        }
        ReadShape {
            items: Some(query.items().iter().map(ItemShape::of).collect()),
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
    format!(
        "SELECT h.head, r.* FROM (SELECT coalesce(max(position), 0) AS head FROM {s}.events) h
         LEFT JOIN LATERAL ({body}) r ON true
         ORDER BY r.position {dir}"
    )
}

/// The statement for any number of items: each item row of `ci` probes the index its
/// parts allow (a tag, else its types, else positions), ordered and limited like an
/// arm of a shaped statement; the guards on `ci`'s columns are one-time filters, so
/// only the right probe runs per item.
fn many_items_statement(s: &str, dir: &str) -> String {
    let items = item_rows(4);
    let filters = ITEM_FILTERS;
    let columns = EVENT_COLUMNS;
    format!(
        "WITH ci AS ({items})
SELECT h.head, r.* FROM (SELECT coalesce(max(position), 0) AS head FROM {s}.events) h
LEFT JOIN LATERAL (
    SELECT DISTINCT ON (u.position) u.* FROM (
        SELECT m.* FROM ci CROSS JOIN LATERAL (
            (SELECT {columns} FROM {s}.event_tags t JOIN {s}.events e ON e.position = t.position
             WHERE cardinality(ci.tags) > 0
               AND t.tag = ci.tags[1] AND t.position > $1 AND t.position < $2
               AND e.tags @> ci.tags
               AND (cardinality(ci.types) = 0 OR e.event_type = ANY (ci.types)){filters}
             ORDER BY t.position {dir} LIMIT $3)
            UNION ALL
            (SELECT {columns} FROM {s}.events e
             WHERE cardinality(ci.tags) = 0 AND cardinality(ci.types) > 0
               AND e.event_type = ANY (ci.types) AND e.position > $1 AND e.position < $2{filters}
             ORDER BY e.position {dir} LIMIT $3)
            UNION ALL
            (SELECT {columns} FROM {s}.events e
             WHERE cardinality(ci.tags) = 0 AND cardinality(ci.types) = 0
               AND e.position > $1 AND e.position < $2{filters}
             ORDER BY e.position {dir} LIMIT $3)
        ) m
    ) u ORDER BY u.position {dir} LIMIT $3
) r ON true
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
    items: ItemsParams<'a>,
}

enum ItemsParams<'a> {
    /// Each item's own parameters (a shaped statement).
    Each(Vec<ItemParams<'a>>),
    /// All items as arrays (the statement for many items).
    Arrays(ItemArrays<'a>),
}

struct ItemParams<'a> {
    tags: Option<Vec<&'a str>>,
    types: Option<Vec<&'a str>>,
    data: Option<Vec<JsonText>>,
    occurred: Option<[Option<DateTime<Utc>>; 2]>,
}

impl<'a> ReadParams<'a> {
    /// The parameters of `query` for the statement of `shape` (from `ReadShape::of`
    /// or `ReadShape::many_items`). Positions and the limit beyond `i64` mean no
    /// bound: no position exceeds it.
    pub(crate) fn new(query: &'a Query, options: &ReadOptions, shape: &ReadShape) -> Self {
        let items = match shape.items {
            Some(_) => ItemsParams::Each(query.items().iter().map(ItemParams::of).collect()),
            None => {
                let mut arrays = ItemArrays::default();
                query.items().iter().for_each(|item| arrays.push(item));
                ItemsParams::Arrays(arrays)
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
                    if let Some(types) = &item.types {
                        params.push((types, Type::TEXT_ARRAY));
                    }
                    if let Some(data) = &item.data {
                        params.push((data, Type::JSONB_ARRAY));
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
    fn of(item: &'a QueryItem) -> Self {
        ItemParams {
            tags: (!item.tag_names().is_empty())
                .then(|| item.tag_names().iter().map(String::as_str).collect()),
            types: (!item.type_names().is_empty())
                .then(|| item.type_names().iter().map(String::as_str).collect()),
            data: item.data_filter().map(|f| pairs_as_json_objects(f.pairs())),
            occurred: item.has_occurred_range().then(|| {
                let (from, until) = item.occurred_range();
                [from, until]
            }),
        }
    }
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
        let text = read_statement(
            &Identifier::parse("s", "schema").unwrap(),
            &ReadShape::of(&a, &opts),
        );
        assert!(!text.contains("\"A\"") && !text.contains('x'.to_string().repeat(2).as_str()));
        let shape = ReadShape::of(&a, &opts);
        assert_eq!(ReadParams::new(&a, &opts, &shape).as_params().len(), 5);
        let many =
            Query::new((0..=MAX_SHAPED_ITEMS).map(|i| QueryItem::new().tags([i.to_string()])));
        let fewer = Query::new((0..MAX_SHAPED_ITEMS + 5).map(|_| QueryItem::new().types(["A"])));
        assert_eq!(ReadShape::of(&many, &opts), ReadShape::of(&fewer, &opts));
        assert_eq!(ReadShape::of(&many, &opts), ReadShape::many_items(&opts));
    }
}
