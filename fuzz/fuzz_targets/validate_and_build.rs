//! Fuzzes validation and statement building with arbitrary types, tags, data-filter
//! keys and values and JSON text. Properties: nothing panics; invalid input is refused
//! with `InvalidInput`; valid input encodes into bind parameters; and no statement text
//! ever contains a user value: the read statement for a query equals the one for the
//! same shape with placeholder values.
#![no_main]

use arbitrary::Arbitrary;
use dcb_store::internals;
use dcb_store::{AppendCondition, Error, Event, Query, QueryItem, ReadOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    event_type: String,
    tags: Vec<String>,
    data_json: String,
    metadata_json: String,
    query_types: Vec<String>,
    query_tags: Vec<String>,
    data_pairs: Vec<(String, String)>,
    all: bool,
    after: Option<u64>,
    limit: Option<u64>,
    backwards: bool,
}

fuzz_target!(|input: Input| {
    let event = Event::from_json(input.event_type.clone(), input.data_json.clone())
        .with_tags(input.tags.iter().cloned())
        .with_metadata_json(input.metadata_json.clone());
    let mut item = QueryItem::new()
        .types(input.query_types.iter().cloned())
        .tags(input.query_tags.iter().cloned());
    item = if input.all {
        item.data_all(input.data_pairs.iter().cloned())
    } else {
        item.data_any(input.data_pairs.iter().cloned())
    };
    let query = Query::new([item]);
    let condition = AppendCondition::new(query.clone(), input.after);

    match internals::validate_append(vec![event.clone()], Some(condition.clone())) {
        Ok(()) => {
            let params = internals::encode_append_round(&[(vec![event], Some(condition))]);
            assert_eq!(params, 19);
        }
        Err(Error::InvalidInput { reason }) => assert!(!reason.is_empty()),
        Err(other) => panic!("validation returned {other:?}"),
    }

    let mut options = ReadOptions::default();
    if let Some(after) = input.after {
        options = options.after(after);
    }
    if let Some(limit) = input.limit {
        options = options.limit(limit);
    }
    if input.backwards {
        options = options.backwards();
    }
    if internals::validate_read(&query, &options).is_ok() {
        // The text depends on the query's shape only: the same shape with placeholder
        // values gives the very same statement, so no user value is in it.
        let sql = internals::read_statement("fuzz", &query, &options);
        let placeholder = |present: bool, v: &str| if present { vec![v.to_owned()] } else { vec![] };
        let mut shadow = QueryItem::new()
            .types(placeholder(!input.query_types.is_empty(), "T"))
            .tags(placeholder(!input.query_tags.is_empty(), "t"));
        let pairs = if input.data_pairs.is_empty() { vec![] } else { vec![("k", "v")] };
        shadow = if input.all { shadow.data_all(pairs) } else { shadow.data_any(pairs) };
        let shadow_sql = internals::read_statement("fuzz", &Query::new([shadow]), &options);
        assert_eq!(sql, shadow_sql, "statement text depends on values");
    }
});
