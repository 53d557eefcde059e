//! Hostile sizes: every extreme query or append is answered or refused with
//! `InvalidInput`, and the store goes on serving; one-off query shapes do not evict
//! the hot ones.

use dcb_store::{AppendCondition, Error, Event, EventStore, Query, QueryItem, ReadOptions};

use crate::support;

async fn still_serves(store: &EventStore) {
    store
        .append(vec![support::event("Alive", &["alive"])], None)
        .await
        .expect("the store still appends");
    store
        .read(&Query::all(), ReadOptions::default().backwards().limit(1))
        .await
        .expect("the store still reads");
}

fn refused<T: std::fmt::Debug>(what: &str, result: dcb_store::Result<T>) {
    match result {
        Err(Error::InvalidInput { reason }) => assert!(!reason.is_empty(), "{what}"),
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

#[actix::test]
async fn queries_of_any_size_within_the_limits_are_answered_and_larger_ones_refused() {
    let store = support::store("big_queries").await;
    let events: Vec<Event> = (0..40)
        .map(|i| support::event(["A", "B"][i % 2], &[&format!("n:{i}")]))
        .collect();
    store.append(events, None).await.unwrap();
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap()
        .events;
    for n in [1, 8, 9, 50, 1_000] {
        let query = Query::new((0..n).map(|i| {
            let item = QueryItem::new().tags([format!("n:{}", (i * 7) % 60)]);
            if i % 3 == 0 {
                item.types(["A"])
            } else {
                item
            }
        }));
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| query.matches(&e.event))
            .map(|e| e.position)
            .collect();
        for options in [
            ReadOptions::default(),
            ReadOptions::default().backwards().limit(3),
        ] {
            let got: Vec<u64> = store
                .read(&query, options)
                .await
                .unwrap_or_else(|e| panic!("{n} items: {e}"))
                .events
                .iter()
                .map(|e| e.position)
                .collect();
            let want: Vec<u64> = if options == ReadOptions::default() {
                expected.clone()
            } else {
                expected.iter().rev().take(3).copied().collect()
            };
            assert_eq!(got, want, "{n} items");
        }
        // The same query as a condition.
        let condition = AppendCondition::new(query.clone(), Some(0));
        let result = store
            .append(vec![support::event("Probe", &[])], Some(condition))
            .await;
        assert_eq!(
            matches!(result, Err(Error::ConditionFailed { .. })),
            !expected.is_empty(),
            "{n} items as a condition: {result:?}"
        );
    }
    let huge = Query::new((0..20_000).map(|i| QueryItem::new().tags([format!("n:{i}")])));
    refused(
        "20,000 items",
        store.read(&huge, ReadOptions::default()).await,
    );
    refused(
        "20,000 items in a condition",
        store
            .append(
                vec![support::event("E", &[])],
                Some(AppendCondition::new(huge, None)),
            )
            .await,
    );
    let wide = Query::new([QueryItem::new().types((0..101).map(|i| format!("T{i}")))]);
    refused(
        "101 types in an item",
        store.read(&wide, ReadOptions::default()).await,
    );
    let pairs = Query::new([QueryItem::new().data_any((0..101).map(|i| ("k", i.to_string())))]);
    refused(
        "101 data predicates",
        store.read(&pairs, ReadOptions::default()).await,
    );
    still_serves(&store).await;
}

#[actix::test]
async fn extreme_positions_and_limits_are_answered() {
    let store = support::store("extremes").await;
    for _ in 0..3 {
        store
            .append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    let cases = [
        ("after u64::MAX", ReadOptions::default().after(u64::MAX), 0),
        (
            "after i64::MAX",
            ReadOptions::default().after(i64::MAX as u64),
            0,
        ),
        ("before 0", ReadOptions::default().before(0), 0),
        (
            "after == before",
            ReadOptions::default().after(2).before(2),
            0,
        ),
        ("limit u64::MAX", ReadOptions::default().limit(u64::MAX), 3),
        (
            "before u64::MAX",
            ReadOptions::default().before(u64::MAX),
            3,
        ),
        (
            "backwards from u64::MAX",
            ReadOptions::default()
                .before(u64::MAX)
                .backwards()
                .limit(u64::MAX),
            3,
        ),
    ];
    for (what, options, count) in cases {
        let read = store
            .read(&Query::all(), options)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(read.events.len(), count, "{what}");
        assert!(
            read.head.is_none_or(|h| h <= 3),
            "{what}: head {:?}",
            read.head
        );
    }
    // Nothing can be stored after u64::MAX: such a condition never fails.
    let never = AppendCondition::new(Query::all(), Some(u64::MAX));
    store
        .append(vec![support::event("E", &[])], Some(never))
        .await
        .unwrap();
    still_serves(&store).await;
}

#[actix::test]
async fn extreme_appends_are_stored_exactly_or_refused() {
    let store = support::store("big_appends").await;
    let many: Vec<Event> = (0..30_000).map(|_| support::event("E", &[])).collect();
    refused(
        "30,000 events in one append",
        store.append(many, None).await,
    );

    let tag = |i: usize| format!("{i:03}{}", "t".repeat(897));
    let too_many_tags = Event::new("E", serde_json::json!({})).with_tags((0..300).map(tag));
    refused("300 tags", store.append(vec![too_many_tags], None).await);
    let long_name = "n".repeat(10_000);
    refused(
        "a 10 kB type",
        store
            .append(
                vec![Event::new(long_name.clone(), serde_json::json!({}))],
                None,
            )
            .await,
    );
    refused(
        "a 10 kB tag",
        store
            .append(vec![support::event("E", &[&long_name])], None)
            .await,
    );
    refused(
        "a 10 kB tag in a query",
        store
            .read(
                &Query::new([QueryItem::new().tags([long_name])]),
                ReadOptions::default(),
            )
            .await,
    );

    // Within the limits, big and unicode-heavy events come back exactly.
    let wide = Event::new("Wide", serde_json::json!({})).with_tags((0..256).map(tag));
    let payload = "é😀".repeat(900_000 / 6);
    let heavy = Event::new(
        "Ünïcødé 🚀 型",
        serde_json::json!({"ключ": payload, "emoji 😀": ["ß", "\u{10FFFF}"]}),
    )
    .with_tags(["タグ", "🏷️"])
    .with_metadata(serde_json::json!({"correlationId": "αβγ"}));
    for event in [wide, heavy] {
        let at = store.append(vec![event.clone()], None).await.unwrap();
        let item = QueryItem::new()
            .types([event.event_type()])
            .tags(event.tags().iter().take(2).cloned());
        let back = store
            .read(&Query::new([item]), ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(back.events.len(), 1);
        let got = &back.events[0];
        assert_eq!(got.position, at.first_position);
        assert_eq!(got.event.event_type(), event.event_type());
        assert_eq!(got.event.tags(), event.tags());
        assert_eq!(
            got.event.data::<serde_json::Value>().unwrap(),
            event.data::<serde_json::Value>().unwrap()
        );
        assert_eq!(
            got.event.metadata::<serde_json::Value>().unwrap(),
            event.metadata::<serde_json::Value>().unwrap()
        );
    }
    still_serves(&store).await;
}

#[actix::test]
async fn one_off_query_shapes_never_evict_or_prepare_over_the_hot_ones() {
    let schema = support::unique_schema("churn");
    let store = EventStore::connect(
        support::config(&schema)
            .with_readers(1)
            .with_statement_cache_size(2),
    )
    .await
    .unwrap();
    store
        .append(vec![support::event("E", &["hot"])], None)
        .await
        .unwrap();
    let hot = Query::new([QueryItem::new().types(["E"]).tags(["hot"])]);
    for _ in 0..3 {
        store.read(&hot, ReadOptions::default()).await.unwrap();
    }
    let prepared = store.metrics().await.unwrap().statements_prepared;
    assert_eq!(
        prepared, 1,
        "the hot shape is prepared once, at its second read"
    );
    // Fifty shapes, each read once: first reads run unprepared on the side.
    for n in 1..=50usize {
        let items = (0..n.min(8)).map(|i| {
            let item = QueryItem::new().tags([format!("t{i}")]);
            if (n >> i) & 1 == 1 {
                item.types(["E"])
            } else {
                item
            }
        });
        let read = store
            .read(&Query::new(items), ReadOptions::default())
            .await
            .unwrap();
        assert!(read.events.is_empty());
    }
    store.read(&hot, ReadOptions::default()).await.unwrap();
    let m = store.metrics().await.unwrap();
    assert_eq!(
        m.statements_prepared, 1,
        "no one-off shape was prepared, and the hot one is still cached"
    );
}
