//! Every DCB matching rule, checked by comparing what the database returns (reads and
//! append conditions) with the in-memory meaning of the query, over a grid of queries.

use chrono::{Duration, TimeZone, Utc};
use dcb_store::{
    AppendCondition, Error, Event, EventStore, Query, QueryItem, ReadOptions, SequencedEvent,
};
use serde_json::json;

use crate::support;

const TYPES: [&str; 3] = ["A", "B", "C"];
const TAG_SETS: [&[&str]; 6] = [&[], &["x"], &["y"], &["x", "y"], &["x", "y", "z"], &["z"]];

async fn fill(store: &EventStore) {
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut n = 0;
    for t in TYPES {
        for tags in TAG_SETS {
            let data = match n % 4 {
                0 => json!({"k": "v1", "m": "w"}),
                1 => json!({"k": "v2"}),
                2 => json!({"k": ["v1"], "n": 1}),
                _ => json!({"k": 1, "m": "w"}),
            };
            let e = Event::new(t, data)
                .with_tags(tags.iter().copied())
                .with_occurred_at(base + Duration::hours(n));
            store.append(vec![e], None).await.unwrap();
            n += 1;
        }
    }
    // Data that is not an object at all.
    let odd = Event::from_json("A", "[1, \"k\"]")
        .with_tags(["x"])
        .with_occurred_at(base);
    store.append(vec![odd], None).await.unwrap();
}

fn item_grid() -> Vec<QueryItem> {
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut items = Vec::new();
    for types in [&[][..], &["A"], &["A", "B"], &["nope"]] {
        for tags in [&[][..], &["x"], &["x", "y"], &["y", "x", "z"], &["q"]] {
            items.push(
                QueryItem::new()
                    .types(types.iter().copied())
                    .tags(tags.iter().copied()),
            );
        }
    }
    items.push(QueryItem::new().data_all([("k", "v1")]));
    items.push(QueryItem::new().data_all([("k", "v1"), ("m", "w")]));
    items.push(QueryItem::new().data_all([("k", "v1"), ("k", "v2")]));
    items.push(QueryItem::new().data_any([("k", "v1"), ("k", "v2")]));
    items.push(
        QueryItem::new()
            .types(["A"])
            .tags(["x"])
            .data_any([("m", "w"), ("k", "v2")]),
    );
    items.push(QueryItem::new().data_any([("k", "1")]));
    items.push(QueryItem::new().occurred_from(base + Duration::hours(5)));
    items.push(QueryItem::new().occurred_until(base + Duration::hours(5)));
    items.push(
        QueryItem::new()
            .tags(["x"])
            .occurred_from(base + Duration::hours(3))
            .occurred_until(base + Duration::hours(10)),
    );
    items
}

fn queries() -> Vec<Query> {
    let items = item_grid();
    let mut queries: Vec<Query> = items.iter().cloned().map(|i| Query::new([i])).collect();
    for (i, a) in items.iter().enumerate().step_by(3) {
        let b = &items[(i * 7 + 5) % items.len()];
        queries.push(Query::new([a.clone(), b.clone()]));
    }
    queries.push(Query::new(items.iter().take(4).cloned()));
    queries.push(Query::all());
    queries
}

fn positions(events: &[SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

#[actix::test]
async fn reads_return_exactly_the_events_the_query_matches_in_memory() {
    let store = support::store("match_read").await;
    fill(&store).await;
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap()
        .events;
    assert_eq!(all.len(), 19);
    for query in queries() {
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| query.matches(&e.event))
            .map(|e| e.position)
            .collect();
        let got = store.read(&query, ReadOptions::default()).await.unwrap();
        assert_eq!(positions(&got.events), expected, "query {query:?}");
        let backwards = store
            .read(&query, ReadOptions::default().backwards())
            .await
            .unwrap();
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(
            positions(&backwards.events),
            reversed,
            "backwards {query:?}"
        );
    }
}

#[actix::test]
async fn append_conditions_fail_exactly_when_the_query_matches_after_the_position() {
    let store = support::store("match_cond").await;
    fill(&store).await;
    for (i, query) in queries().into_iter().enumerate() {
        let all = store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events;
        let head = all.last().map(|e| e.position).unwrap();
        for after in [None, Some(0), Some(7), Some(head - 1), Some(head)] {
            let violated = all.iter().any(|e| {
                AppendCondition::new(query.clone(), after).is_violated_by(&e.event, e.position)
            });
            // A probe that no query of the grid can match by tag or type only.
            let probe = Event::new("Probe", json!({})).with_tags([format!("probe:{i}")]);
            let result = store
                .append(
                    vec![probe],
                    Some(AppendCondition::new(query.clone(), after)),
                )
                .await;
            match result {
                Err(Error::ConditionFailed { .. }) => {
                    assert!(
                        violated,
                        "condition failed but nothing matches: {query:?} after {after:?}"
                    )
                }
                Ok(_) => assert!(
                    !violated,
                    "condition passed but an event matches: {query:?} after {after:?}"
                ),
                Err(e) => panic!("unexpected error {e}"),
            }
            if !violated {
                // The probe itself is now stored; later rounds see it in `all`.
                break;
            }
        }
    }
}

#[actix::test]
async fn an_item_with_tags_needs_all_of_them_and_items_are_ored() {
    let store = support::store("match_rules").await;
    let p1 = store
        .append(vec![support::event("T", &["a", "b"])], None)
        .await
        .unwrap();
    let p2 = store
        .append(vec![support::event("T", &["a"])], None)
        .await
        .unwrap();
    let p3 = store
        .append(vec![support::event("U", &["b"])], None)
        .await
        .unwrap();
    let read = |q: Query| {
        let store = store.clone();
        async move { positions(&store.read(&q, ReadOptions::default()).await.unwrap().events) }
    };
    assert_eq!(
        read(Query::new([QueryItem::new().tags(["a", "b"])])).await,
        [p1.first_position]
    );
    assert_eq!(
        read(Query::new([QueryItem::new().tags(["a"])])).await,
        [p1.first_position, p2.first_position]
    );
    assert_eq!(
        read(Query::new([
            QueryItem::new().types(["U"]),
            QueryItem::new().tags(["a", "b"])
        ]))
        .await,
        [p1.first_position, p3.first_position]
    );
    assert_eq!(
        read(Query::new([QueryItem::new().types(["T", "U"]).tags(["b"])])).await,
        [p1.first_position, p3.first_position]
    );
    assert!(read(Query::new([QueryItem::new().types(["V"])]))
        .await
        .is_empty());
    assert_eq!(read(Query::all()).await.len(), 3);
}

/// The probe plan is one rule in Rust (`ItemParts::access`) and its rendering as SQL
/// guards on an item row (conditions and many-item reads): for every combination of
/// an item's parts, exactly one guard holds on the server, and it is the rule's choice.
#[actix::test]
async fn the_probe_guards_on_the_server_choose_what_the_probe_rule_chooses() {
    use dcb_store::internals::{probe_access, probe_guards};
    let client = support::client().await;
    let guards = probe_guards();
    let columns: Vec<String> = guards.iter().map(|g| format!("({g})")).collect();
    let statement = format!(
        "SELECT {} FROM (SELECT $1::text[] AS tags, $2::bool AS keyed,
                  $3::timestamptz AS occurred_from, $4::timestamptz AS occurred_until,
                  $5::text[] AS types) ci",
        columns.join(", ")
    );
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut checked = 0;
    for bits in 0u32..64 {
        let bit = |i: u32| bits & (1 << i) != 0;
        let (tags, key_pair, key_ready, from, until, types) =
            (bit(0), bit(1), bit(2), bit(3), bit(4), bit(5));
        let tag_list: Vec<&str> = if tags { vec!["t"] } else { vec![] };
        let type_list: Vec<&str> = if types { vec!["T"] } else { vec![] };
        let keyed = key_pair && key_ready;
        let row = client
            .query_one(
                &statement,
                &[
                    &tag_list,
                    &keyed,
                    &from.then_some(at),
                    &until.then_some(at),
                    &type_list,
                ],
            )
            .await
            .unwrap();
        let held: Vec<usize> = (0..guards.len())
            .filter(|&i| row.get::<_, bool>(i))
            .collect();
        let chosen = probe_access(tags, key_pair, key_ready, from && until, types);
        assert_eq!(held, vec![chosen], "parts {bits:06b}");
        checked += 1;
    }
    assert_eq!(checked, 64);
}
