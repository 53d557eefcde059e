//! Property tests against the real server: arbitrary input is either refused with
//! `InvalidInput` or stored and read back exactly, and for random events and queries
//! the database returns exactly what `Query::matches` says.

use dcb_store::{Error, Event, EventStore, Query, QueryItem, ReadOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;

use crate::support;

/// Strings with the characters that break naive SQL or JSON handling.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,6}",
        "[\\PC]{0,8}",
        Just("'); DROP TABLE events; --".to_owned()),
        Just("\\\"%_$1".to_owned()),
        Just("a\u{0}b".to_owned()),
        Just(String::new()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn arbitrary_events_are_refused_clearly_or_stored_exactly() {
    let system = actix::System::new();
    let store = system
        .block_on(EventStore::connect(support::config(
            &support::unique_schema("prop_in"),
        )))
        .unwrap();
    let strategy = (
        nasty_string(),
        prop::collection::vec(nasty_string(), 0..4),
        json_value(),
    );
    runner(96)
        .run(&strategy, |(event_type, tags, data)| {
            system.block_on(async {
                let event = Event::new(event_type.clone(), data.clone()).with_tags(tags.clone());
                let id = event.id();
                let invalid = event_type.is_empty()
                    || event_type.contains('\0')
                    || tags.iter().any(|t| t.is_empty() || t.contains('\0'))
                    || has_nul(&data);
                match store.append(vec![event.clone()], None).await {
                    Err(Error::InvalidInput { reason }) => {
                        prop_assert!(invalid, "refused valid input: {reason}");
                        prop_assert!(!reason.is_empty());
                    }
                    Ok(r) => {
                        prop_assert!(!invalid, "stored invalid input");
                        let back = store
                            .read(
                                &Query::all(),
                                ReadOptions::default().after(r.first_position - 1).limit(1),
                            )
                            .await
                            .unwrap();
                        let got = &back.events[0].event;
                        prop_assert_eq!(got.id(), id);
                        prop_assert_eq!(got.event_type(), event_type.as_str());
                        prop_assert_eq!(got.tags(), event.tags());
                        prop_assert_eq!(got.data::<Value>().unwrap(), data);
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
                Ok(())
            })
        })
        .unwrap();
}

#[derive(Clone, Debug)]
struct ItemSpec {
    types: Vec<&'static str>,
    tags: Vec<&'static str>,
    data: Option<(bool, Vec<(&'static str, &'static str)>)>,
}

fn item_spec() -> impl Strategy<Value = ItemSpec> {
    let names = prop::sample::subsequence(vec!["A", "B", "C"], 0..=2);
    let tags = prop::sample::subsequence(vec!["x", "y", "z", "w"], 0..=2);
    let pairs = prop::collection::vec(
        (
            prop::sample::select(vec!["k", "m"]),
            prop::sample::select(vec!["1", "2"]),
        ),
        1..3,
    );
    let data = prop::option::of((any::<bool>(), pairs));
    (names, tags, data).prop_map(|(types, tags, data)| ItemSpec { types, tags, data })
}

fn to_item(spec: &ItemSpec) -> QueryItem {
    let mut item = QueryItem::new()
        .types(spec.types.iter().copied())
        .tags(spec.tags.iter().copied());
    if let Some((all, pairs)) = &spec.data {
        item = if *all {
            item.data_all(pairs.iter().copied())
        } else {
            item.data_any(pairs.iter().copied())
        };
    }
    item
}

#[test]
fn random_queries_return_what_matches_says() {
    let system = actix::System::new();
    let strategy = (
        prop::collection::vec(
            (
                prop::sample::select(vec!["A", "B", "C"]),
                prop::sample::subsequence(vec!["x", "y", "z", "w"], 0..=3),
                prop::sample::select(vec!["1", "2", "3"]),
            ),
            1..25,
        ),
        prop::collection::vec(prop::collection::vec(item_spec(), 1..4), 1..6),
    );
    runner(24)
        .run(&strategy, |(events, queries)| {
            system.block_on(async {
                let store = EventStore::connect(support::config(&support::unique_schema("prop_q")))
                    .await
                    .unwrap();
                let batch: Vec<Event> = events
                    .iter()
                    .map(|(t, tags, k)| {
                        Event::new(*t, serde_json::json!({"k": k, "m": "1"}))
                            .with_tags(tags.iter().copied())
                    })
                    .collect();
                store.append(batch, None).await.unwrap();
                let all = store
                    .read(&Query::all(), ReadOptions::default())
                    .await
                    .unwrap()
                    .events;
                for specs in &queries {
                    let query = Query::new(specs.iter().map(to_item));
                    let expected: Vec<u64> = all
                        .iter()
                        .filter(|e| query.matches(&e.event))
                        .map(|e| e.position)
                        .collect();
                    let got: Vec<u64> = store
                        .read(&query, ReadOptions::default())
                        .await
                        .unwrap()
                        .events
                        .iter()
                        .map(|e| e.position)
                        .collect();
                    prop_assert_eq!(got, expected, "query {:?}", specs);
                }
                Ok(())
            })
        })
        .unwrap();
}
