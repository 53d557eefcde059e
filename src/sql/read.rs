//! The read statements: one per query shape for queries of few items, one for all
//! larger queries; their bind parameters and the row layout they return.

use chrono::{DateTime, Utc};
use postgres_types::ToSql;

use super::{pairs_as_json_objects, quote_schema};
use crate::model::{JsonText, Query, QueryItem, ReadOptions};

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
}
