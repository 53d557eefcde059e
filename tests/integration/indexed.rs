//! Indexed data keys: entries written with the events, the backfill of a key declared
//! on a store in service (reads and conditions exact while it runs), dropping a key,
//! values longer than an entry keeps, and that reads really use the entries.

use std::time::Duration;

use dcb_store::{
    AppendCondition, Config, Decided, Error, Event, EventStore, Projection, Query, QueryItem,
    ReadOptions, SequencedEvent,
};
use serde_json::json;

use crate::support;

fn keyed(schema: &str, keys: &[&str]) -> Config {
    support::config(schema).with_indexed_keys(keys.iter().copied())
}

/// Events whose `k` is a string (short, and long ones sharing a 250-character
/// prefix), a number, an array, a nested object, missing; some with `m` too.
fn edge_events(round: usize) -> Vec<Event> {
    let long = "é".repeat(250);
    let data = [
        json!({"k": "a", "m": "b"}),
        json!({"k": "b"}),
        json!({"k": format!("{long}1")}),
        json!({"k": format!("{long}2"), "m": "b"}),
        json!({"k": long.clone()}),
        json!({"k": 1}),
        json!({"k": ["a"]}),
        json!({"k": {"k": "a"}}),
        json!({"m": "a"}),
        json!(["k", "a"]),
    ];
    // Half of them carry a correlation id in their metadata (one per round).
    data.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let event =
                Event::new(if i % 2 == 0 { "A" } else { "B" }, d).with_tags([format!("r{round}")]);
            if i % 2 == 0 {
                event.with_metadata(json!({"correlation_id": format!("c{round}"), "k": "a"}))
            } else {
                event.with_metadata(json!({"correlation_id": round}))
            }
        })
        .collect()
}

fn queries() -> Vec<Query> {
    let long = "é".repeat(250);
    let one = |item: QueryItem| Query::new([item]);
    vec![
        one(QueryItem::new().data_all([("k", "a")])),
        one(QueryItem::new().data_all([("k", format!("{long}1"))])),
        one(QueryItem::new().data_all([("k", long.clone())])),
        one(QueryItem::new().data_any([("k", format!("{long}2"))])),
        one(QueryItem::new().types(["A"]).data_all([("k", "a")])),
        one(QueryItem::new().data_all([
            ("m".to_owned(), "b".to_owned()),
            ("k".to_owned(), format!("{long}2")),
        ])),
        one(QueryItem::new().data_all([("k", "1")])),
        one(QueryItem::new().data_any([("k", "a"), ("k", "b")])),
        one(QueryItem::new().tags(["r1"]).data_all([("k", "b")])),
        Query::new([
            QueryItem::new().data_all([("k", "b")]),
            QueryItem::new().types(["A"]).data_all([("m", "a")]),
        ]),
        one(QueryItem::new().metadata_all([("correlation_id", "c1")])),
        one(QueryItem::new().metadata_all([("correlation_id", "1")])),
        one(QueryItem::new().metadata_any([("correlation_id", "c0"), ("correlation_id", "c2")])),
        one(QueryItem::new().metadata_all([("k", "a")])),
        one(QueryItem::new()
            .data_all([("k", "a")])
            .metadata_all([("correlation_id", "c0")])),
        one(QueryItem::new()
            .types(["A"])
            .metadata_all([("correlation_id", "c2")])),
    ]
}

/// Every query of `queries()`, read forwards, backwards and in pages, and used as a
/// condition, agrees with `Query::matches` over the whole store.
async fn assert_exact(store: &EventStore, context: &str) {
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap()
        .events;
    let head = all.last().map_or(0, |e| e.position);
    for query in queries() {
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| query.matches(&e.event))
            .map(|e| e.position)
            .collect();
        let read = |options: ReadOptions| {
            let (store, query) = (store.clone(), query.clone());
            async move {
                store
                    .read(&query, options)
                    .await
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.position)
                    .collect::<Vec<u64>>()
            }
        };
        assert_eq!(
            read(ReadOptions::default()).await,
            expected,
            "{context}: {query:?}"
        );
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(
            read(ReadOptions::default().backwards()).await,
            reversed,
            "{context}: {query:?}"
        );
        if let Some(&first) = expected.first() {
            let page = read(ReadOptions::default().after(first).limit(2)).await;
            let want: Vec<u64> = expected.iter().copied().skip(1).take(2).collect();
            assert_eq!(page, want, "{context}: page of {query:?}");
        }
        for after in [0, head / 2, head] {
            let violated = expected.iter().any(|p| *p > after);
            let probe = Event::new("Probe", json!({}));
            let outcome = store
                .append(
                    vec![probe],
                    Some(AppendCondition::new(query.clone(), Some(after))),
                )
                .await;
            match outcome {
                Err(Error::ConditionFailed { .. }) => {
                    assert!(violated, "{context}: {query:?} after {after}")
                }
                Ok(_) => assert!(!violated, "{context}: {query:?} after {after} passed"),
                Err(e) => panic!("{context}: {e}"),
            }
        }
    }
}

async fn entries(client: &tokio_postgres::Client, schema: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM \"{schema}\".event_keys");
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

async fn wait_ready(store: &EventStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !store
        .indexed_keys()
        .await
        .unwrap()
        .iter()
        .all(|k| k.is_ready())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "backfill did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix::test]
async fn entries_written_with_the_events_answer_exactly() {
    let schema = support::unique_schema("keys_edges");
    let store = EventStore::connect(keyed(&schema, &["k", "m"]))
        .await
        .unwrap();
    for round in 0..3 {
        store.append(edge_events(round), None).await.unwrap();
    }
    assert_exact(&store, "declared from the start").await;
    // Per round: 5 string values at k, 3 at m.
    assert_eq!(entries(&support::client().await, &schema).await, 3 * 8);
}

/// All events of one correlation id: a metadata key declared next to data keys, with
/// the same name as one of them (`k`), each its own index.
#[actix::test]
async fn metadata_keys_find_all_events_of_one_correlation_id() {
    let schema = support::unique_schema("keys_metadata");
    let config = keyed(&schema, &["k"]).with_indexed_metadata_keys(["correlation_id", "k"]);
    let store = EventStore::connect(config).await.unwrap();
    for round in 0..3 {
        store.append(edge_events(round), None).await.unwrap();
    }
    let correlated = Query::new([QueryItem::new().metadata_all([("correlation_id", "c1")])]);
    let found = store
        .read(&correlated, ReadOptions::default())
        .await
        .unwrap()
        .events;
    assert_eq!(found.len(), 5);
    assert!(found.iter().all(|e| correlated.matches(&e.event)));
    assert_exact(&store, "data and metadata keys").await;
    // Per round: 5 data strings at k; 5 metadata strings at correlation_id and 5 at k.
    assert_eq!(entries(&support::client().await, &schema).await, 3 * 15);
}

#[actix::test]
async fn a_key_declared_on_a_store_in_service_is_backfilled_and_reads_stay_exact_meanwhile() {
    let schema = support::unique_schema("keys_backfill");
    let plain = EventStore::connect(support::config(&schema)).await.unwrap();
    for round in 0..4 {
        plain.append(edge_events(round), None).await.unwrap();
    }
    // Declared as a connecting store would, then its backfill held at its first
    // progress update by a lock on the key's row.
    let client = support::client().await;
    client
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".indexed_keys (source, key, backfill_to)
                 SELECT 'd', 'k', max(position) FROM \"{schema}\".events"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut holder = support::client().await;
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        &format!("SELECT 1 FROM \"{schema}\".indexed_keys WHERE key = 'k' FOR UPDATE"),
        &[],
    )
    .await
    .unwrap();
    let store = EventStore::connect(keyed(&schema, &["k"])).await.unwrap();
    // Appends go on (with entries), and every read and condition is exact.
    store.append(edge_events(4), None).await.unwrap();
    let status = store.indexed_keys().await.unwrap();
    assert!(!status[0].is_ready(), "{status:?}");
    assert_eq!(status[0].backfilled, 0);
    assert_exact(&store, "while the backfill runs").await;
    hold.commit().await.unwrap();
    wait_ready(&store).await;
    store.append(edge_events(5), None).await.unwrap();
    assert_exact(&store, "after the backfill").await;
}

#[actix::test]
async fn reads_use_the_entries_once_the_key_is_ready() {
    let schema = support::unique_schema("keys_used");
    let store = EventStore::connect(keyed(&schema, &["k"])).await.unwrap();
    store.append(edge_events(0), None).await.unwrap();
    let query = Query::new([QueryItem::new().data_all([("k", "a")])]);
    let found = store
        .read(&query, ReadOptions::default())
        .await
        .unwrap()
        .events;
    assert_eq!(found.len(), 1);
    // An entry removed behind the store's back: a read through the index misses the
    // event, which a read filtering rows would still find.
    let client = support::client().await;
    client
        .execute(
            &format!("DELETE FROM \"{schema}\".event_keys WHERE source = 'd' AND key = 'k' AND value = 'a'"),
            &[],
        )
        .await
        .unwrap();
    assert!(store
        .read(&query, ReadOptions::default())
        .await
        .unwrap()
        .events
        .is_empty());
    // The same store without the key declared filters rows: the event is found again.
    let unkeyed = EventStore::connect(support::config(&schema)).await.unwrap();
    assert_eq!(
        unkeyed
            .read(&query, ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
    assert_eq!(
        unkeyed.indexed_keys().await.unwrap().len(),
        1,
        "connecting without the key keeps it"
    );
}

#[actix::test]
async fn dropping_and_declaring_keys_again_keeps_everything_exact() {
    let schema = support::unique_schema("keys_change");
    let client = support::client().await;
    let both = EventStore::connect(keyed(&schema, &["k", "m"]))
        .await
        .unwrap();
    both.append(edge_events(0), None).await.unwrap();
    assert_eq!(entries(&client, &schema).await, 8);
    drop(both);
    // Connecting without k keeps it (and still writes its entries); migrate drops it.
    let only_m = EventStore::connect(keyed(&schema, &["m"])).await.unwrap();
    only_m.append(edge_events(1), None).await.unwrap();
    assert_eq!(entries(&client, &schema).await, 16);
    EventStore::migrate(&keyed(&schema, &["m"])).await.unwrap();
    assert_eq!(
        entries(&client, &schema).await,
        6,
        "k's entries dropped with it"
    );
    only_m.append(edge_events(2), None).await.unwrap();
    assert_exact(&only_m, "k dropped").await;
    drop(only_m);
    let again = EventStore::connect(keyed(&schema, &["k", "m"]))
        .await
        .unwrap();
    wait_ready(&again).await;
    assert_eq!(entries(&client, &schema).await, 24, "k backfilled, m kept");
    assert_exact(&again, "k declared again").await;
}

#[actix::test]
async fn migrate_backfills_before_it_returns() {
    let schema = support::unique_schema("keys_migrate");
    let plain = EventStore::connect(support::config(&schema)).await.unwrap();
    plain.append(edge_events(0), None).await.unwrap();
    EventStore::migrate(&keyed(&schema, &["k"])).await.unwrap();
    let keys = plain.indexed_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].is_ready() && keys[0].backfill_to == 10, "{keys:?}");
}

#[actix::test]
async fn invalid_key_lists_are_refused_at_connect() {
    let schema = support::unique_schema("keys_invalid");
    for keys in [
        vec!["k".to_owned(), "k".to_owned()],
        vec![String::new()],
        vec!["x".repeat(257)],
        (0..33).map(|i| format!("k{i}")).collect(),
    ] {
        let config = support::config(&schema).with_indexed_keys(keys.clone());
        match EventStore::connect(config).await {
            Err(Error::Config(message)) => assert!(message.contains("indexed key"), "{message}"),
            other => panic!("{keys:?}: {other:?}"),
        }
    }
}

/// Lines of one order, found by its declared data key (no tag).
struct OrderLines(String);

impl Projection for OrderLines {
    type State = u32;
    fn name(&self) -> &'static str {
        "order-lines"
    }
    fn version(&self) -> u32 {
        1
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types(["LineAdded"])
            .data_all([("order_id", self.0.as_str())])])
    }
    fn initial(&self) -> u32 {
        0
    }
    fn apply(&self, lines: &mut u32, _: &SequencedEvent) {
        *lines += 1
    }
}

/// Decisions whose boundary is a declared key: two stores (as two processes) adding
/// lines to the same orders at once never pass the limit of 3 lines per order, and
/// lines of other orders never conflict with them.
#[actix::test]
async fn decisions_on_a_declared_key_hold_under_concurrency() {
    let schema = support::unique_schema("keys_decide");
    let stores = [
        EventStore::connect(keyed(&schema, &["order_id"]))
            .await
            .unwrap(),
        EventStore::connect(keyed(&schema, &["order_id"]))
            .await
            .unwrap(),
    ];
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = stores[i % 2].clone();
            actix::spawn(async move {
                let order = format!("o{}", i % 4);
                let line = Event::new("LineAdded", json!({"order_id": order.clone(), "n": i}));
                store
                    .decide(&OrderLines(order), |lines| {
                        if *lines >= 3 {
                            Err("full")
                        } else {
                            Ok(vec![line.clone()])
                        }
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let outcomes = support::results(tasks).await;
    let appended = outcomes
        .iter()
        .filter(|o| matches!(o, Decided::Appended(_)))
        .count();
    assert_eq!(appended, 12, "3 lines for each of 4 orders");
    for order in 0..4 {
        let lines = OrderLines(format!("o{order}"));
        let stored = stores[0]
            .read(&lines.query(), ReadOptions::default())
            .await
            .unwrap()
            .events;
        assert_eq!(stored.len(), 3, "order o{order}");
        let model = stores[1].decision_model(&lines).await.unwrap();
        assert_eq!(model.state, 3);
    }
}

/// Declaring a key while a batch holds the write lock, on a server whose default
/// isolation is REPEATABLE READ: the head the declaration records must include that
/// batch (its events get no entries from the append, so the backfill must cover them).
#[actix::test]
async fn a_key_declared_while_a_batch_commits_covers_it_whatever_the_default_isolation() {
    let schema = support::unique_schema("keys_isolation");
    let writer = EventStore::connect(support::config(&schema)).await.unwrap();
    writer.append(edge_events(0), None).await.unwrap();
    // The next batch takes the write lock, then waits on this table lock.
    let blocker = support::lock_events(&schema, "EXCLUSIVE").await;
    let batch = {
        let writer = writer.clone();
        actix::spawn(async move { writer.append(edge_events(1), None).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = support::url_with_setting(
        support::database_url(),
        "default_transaction_isolation=repeatable read",
    );
    let declaring = actix::spawn(async move {
        EventStore::connect(keyed(&schema, &["k"]).with_database_url(url))
            .await
            .unwrap()
    });
    // The declaration now waits for the write lock; let the batch commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let at = batch.await.unwrap();
    let store = declaring.await.unwrap();
    wait_ready(&store).await;
    let keys = store.indexed_keys().await.unwrap();
    assert!(keys[0].backfill_to >= at.last_position, "{keys:?} {at:?}");
    assert_exact(&store, "declared under repeatable read").await;
}
