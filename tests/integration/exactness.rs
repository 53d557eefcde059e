//! The store's promise, input by input: the in-memory matcher (which plans a batch's
//! rounds) and the SQL (which decides conditions and reads) agree on every event the
//! store accepts; inputs PostgreSQL would refuse are refused up front, alone; heads
//! never pass the store's head; retries are recognised exactly.

use std::time::Duration;

use chrono::{DateTime, TimeDelta};
use rand::Rng;

use dcb_store::{
    AppendCondition, AppendResult, Config, Error, Event, EventStore, Query, QueryItem, ReadOptions,
    SequencedEvent,
};
use futures_util::future::join_all;

use crate::appends::Stall;
use crate::generate::{Gen, KEYS};
use crate::support;

/// Checks the DCB promise for one conditional append against the store's own reads:
/// success means no event the store returns for the query lies between `after` and
/// the append; `ConditionFailed` means one does (after `after`, up to `head_then`).
pub async fn assert_promise(
    store: &EventStore,
    condition: &AppendCondition,
    result: &dcb_store::Result<AppendResult>,
    head_then: Option<u64>,
) {
    let query = &condition.fail_if_events_match;
    let mut options = ReadOptions::default();
    if let Some(after) = condition.after {
        options = options.after(after);
    }
    match result {
        Ok(r) => {
            let seen = store
                .read(query, options.before(r.first_position))
                .await
                .unwrap();
            let positions: Vec<u64> = seen.events.iter().map(|e| e.position).collect();
            assert!(
                positions.is_empty(),
                "append at {r:?} succeeded although {positions:?} match {query:?} after {:?}",
                condition.after
            );
        }
        Err(Error::ConditionFailed { .. }) => {
            let mut options = options.limit(1);
            if let Some(head) = head_then {
                options = options.before(head + 1);
            }
            let seen = store.read(query, options).await.unwrap();
            assert!(
                !seen.events.is_empty(),
                "refused although nothing matches {query:?} after {:?} up to {head_then:?}",
                condition.after
            );
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn positions(events: &[&SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

#[actix::test]
async fn the_matcher_and_the_database_agree_on_generated_edge_events_and_queries() {
    differential(support::store("differential").await).await;
}

/// The same with the generator's data and metadata keys declared as indexed: reads and
/// conditions probe their entries (written by the same batches as the events).
#[actix::test]
async fn the_matcher_and_the_database_agree_with_indexed_keys() {
    let config = support::config(&support::unique_schema("differential_keys"))
        .with_indexed_keys(KEYS.iter().copied())
        .with_indexed_metadata_keys(KEYS.iter().copied());
    let store = EventStore::connect(config).await.unwrap();
    let keys = store.indexed_keys().await.unwrap();
    assert!(keys.len() == 2 * KEYS.len() && keys.iter().all(|k| k.is_ready()));
    differential(store).await;
}

/// Reads of generated queries, with generated bounds, limits and direction, and
/// conditions of generated queries, against `Query::matches` on what was submitted.
async fn differential(store: EventStore) {
    let mut gen = Gen::new();
    let seed = gen.seed();
    // The events as submitted (what the writer plans with) next to what was stored.
    let mut submitted: Vec<(u64, Event)> = Vec::new();
    for _ in 0..40 {
        let events: Vec<Event> = (0..gen.rng().gen_range(1..=8))
            .map(|_| gen.event())
            .collect();
        let at = store.append(events.clone(), None).await.unwrap();
        for (i, event) in events.into_iter().enumerate() {
            submitted.push((at.first_position + i as u64, event));
        }
    }
    let stored = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap()
        .events;
    assert_eq!(stored.len(), submitted.len());
    for (s, (position, event)) in stored.iter().zip(submitted.iter_mut()) {
        assert_eq!(s.position, *position);
        match event.occurred_at() {
            Some(at) => {
                assert_eq!(
                    s.event.occurred_at(),
                    Some(at),
                    "seed {seed}: stored time differs"
                )
            }
            // The writer's copy got the append's time; the planner saw that copy.
            None => {
                *event = event
                    .clone()
                    .with_occurred_at(s.event.occurred_at().unwrap())
            }
        }
    }
    let (mut reads, mut matched) = (0, 0);
    for _ in 0..1_500 {
        let query = gen.query();
        let expected: Vec<u64> = submitted
            .iter()
            .zip(&stored)
            .filter(|((_, event), s)| {
                let in_memory = query.matches(event);
                assert_eq!(
                    in_memory,
                    query.matches(&s.event),
                    "seed {seed}: submitted and stored event match differently: {query:?} {event:?}"
                );
                in_memory
            })
            .map(|((p, _), _)| *p)
            .collect();
        let head = submitted.last().map_or(0, |(p, _)| *p);
        let mut options = ReadOptions::default();
        let mut expected = expected;
        if gen.rng().gen_bool(0.3) {
            let after = gen.rng().gen_range(0..=head);
            options = options.after(after);
            expected.retain(|p| *p > after);
        }
        if gen.rng().gen_bool(0.2) {
            let before = gen.rng().gen_range(1..=head + 1);
            options = options.before(before);
            expected.retain(|p| *p < before);
        }
        if gen.rng().gen_bool(0.3) {
            options = options.backwards();
            expected.reverse();
        }
        if gen.rng().gen_bool(0.3) {
            let limit = gen.rng().gen_range(1..5);
            options = options.limit(limit);
            expected.truncate(limit as usize);
        }
        let got = store.read(&query, options).await.unwrap();
        let got = positions(&got.events.iter().collect::<Vec<_>>());
        assert_eq!(got, expected, "seed {seed}: query {query:?} {options:?}");
        reads += 1;
        matched += got.len();
    }
    // Conditions: the append statement's check against the same rule, four at a time
    // so that conditions of different shapes share a batch (and its statement) when
    // none of them can match another's event.
    let mut head = submitted.last().map_or(0, |(p, _)| *p);
    let (mut refused, mut batched) = (0, 0);
    for _ in 0..75 {
        let group: Vec<(Query, u64, Event)> = (0..4)
            .map(|_| {
                let query = gen.query();
                let after = gen.rng().gen_range(0..=head);
                let probe = Event::new("P", serde_json::json!({})).with_occurred_at(gen.time());
                (query, after, probe)
            })
            .collect();
        let together = group
            .iter()
            .all(|(query, _, _)| group.iter().all(|(_, _, probe)| !query.matches(probe)));
        let refusal = |submitted: &[(u64, Event)], query: &Query, after: u64| {
            submitted
                .iter()
                .any(|(p, e)| *p > after && query.matches(e))
        };
        let mut outcomes = Vec::new();
        if together {
            batched += 1;
            let expected: Vec<bool> = group
                .iter()
                .map(|(query, after, _)| refusal(&submitted, query, *after))
                .collect();
            let appends = group.iter().map(|(query, after, probe)| {
                let store = store.clone();
                let condition = AppendCondition::new(query.clone(), Some(*after));
                let probe = probe.clone();
                async move { store.append(vec![probe], Some(condition)).await }
            });
            let results = join_all(appends).await;
            outcomes.extend(group.iter().zip(expected).zip(results));
        } else {
            for entry in &group {
                let (query, after, probe) = entry;
                let expected = refusal(&submitted, query, *after);
                let condition = AppendCondition::new(query.clone(), Some(*after));
                let result = store.append(vec![probe.clone()], Some(condition)).await;
                if let Ok(r) = &result {
                    submitted.push((r.first_position, probe.clone()));
                }
                outcomes.push(((entry, expected), result));
            }
        }
        for (((query, after, probe), expected_refusal), result) in outcomes {
            match result {
                Ok(r) => {
                    assert!(
                        !expected_refusal,
                        "seed {seed}: condition {query:?} after {after} passed"
                    );
                    head = head.max(r.first_position);
                    if together {
                        submitted.push((r.first_position, probe.clone()));
                    }
                }
                Err(Error::ConditionFailed { .. }) => {
                    assert!(
                        expected_refusal,
                        "seed {seed}: condition {query:?} after {after} failed"
                    );
                    refused += 1;
                }
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        submitted.sort_by_key(|(p, _)| *p);
    }
    println!(
        "differential (seed {seed}): {} events, {reads} reads returning {matched} events, 300 conditions ({refused} refused, {batched} groups of 4 sent at once)",
        stored.len()
    );
}

/// Appends `first` and then `second` so that both travel in one batch.
async fn in_one_batch(
    store: &EventStore,
    first: Vec<Event>,
    second: (Vec<Event>, AppendCondition),
) -> (AppendResult, dcb_store::Result<AppendResult>) {
    let stall = Stall::start(store).await;
    let (a, b) = (store.clone(), store.clone());
    let first = actix::spawn(async move { a.append(first, None).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = actix::spawn(async move { b.append(second.0, Some(second.1)).await });
    stall.release().await;
    (first.await.unwrap().unwrap(), second.await.unwrap())
}

#[actix::test]
async fn appends_of_one_batch_see_each_other_whatever_the_json_or_timestamps() {
    let store = support::store("batch_edges").await;
    let at = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456789Z")
        .unwrap()
        .to_utc();
    let deep = format!(r#"{{"k":"v","d":{}1{}}}"#, "[".repeat(126), "]".repeat(126));
    // (what, the first append's event, the second's condition, whether it must fail)
    let cases: Vec<(&str, Event, QueryItem, bool)> = vec![
        (
            "numbers at f64's ends",
            Event::from_json("E", r#"{"k":"v","n":1e308,"m":-1e308,"t":1e-400}"#),
            QueryItem::new().data_all([("k", "v")]),
            true,
        ),
        (
            "nesting as deep as serde_json reads (127)",
            Event::from_json("E", deep),
            QueryItem::new().data_any([("k", "v"), ("k", "w")]),
            true,
        ),
        (
            "a duplicate key",
            Event::from_json("E", r#"{"k":"w","k":"v"}"#),
            QueryItem::new().data_all([("k", "v")]),
            true,
        ),
        (
            // Nanoseconds above the event's: PostgreSQL alone would drop them and match.
            "a sub-microsecond lower bound",
            Event::new("T", serde_json::json!({})).with_occurred_at(at),
            QueryItem::new()
                .types(["T"])
                .occurred_from(at + TimeDelta::nanoseconds(111)),
            false,
        ),
        (
            "a sub-microsecond upper bound",
            Event::new("T", serde_json::json!({})).with_occurred_at(at),
            QueryItem::new().occurred_until(at + TimeDelta::nanoseconds(1)),
            true,
        ),
    ];
    for (what, event, item, conflict) in cases {
        let head = store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .head;
        let condition = AppendCondition::new(Query::new([item]), head);
        let second = vec![support::event("Decision", &[])];
        let (_, result) = in_one_batch(&store, vec![event], (second, condition.clone())).await;
        if conflict {
            assert!(
                matches!(result, Err(Error::ConditionFailed { .. })),
                "{what}: the second append must see the first, got {result:?}"
            );
        }
        assert_promise(&store, &condition, &result, None).await;
    }
}

#[actix::test]
async fn input_postgresql_would_refuse_is_refused_alone_and_up_front() {
    let store = support::store("refusals").await;
    let ancient = chrono::NaiveDate::from_ymd_opt(-5000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let item = |i: QueryItem| Some(AppendCondition::new(Query::new([i]), None));
    let bad: Vec<(&str, Vec<Event>, Option<AppendCondition>)> = vec![
        (
            "number beyond numeric",
            vec![Event::from_json("E", r#"{"n":1e131072}"#)],
            None,
        ),
        (
            "tiny number beyond numeric",
            vec![Event::from_json("E", r#"[1e-16384]"#)],
            None,
        ),
        (
            "number in metadata",
            vec![support::event("E", &[]).with_metadata_json(r#"{"n":-1e200000}"#)],
            None,
        ),
        (
            "occurred_at before 4714 BC",
            vec![support::event("E", &[]).with_occurred_at(ancient)],
            None,
        ),
        (
            "condition bound before 4714 BC",
            vec![support::event("E", &[])],
            item(QueryItem::new().occurred_from(ancient)),
        ),
        (
            "a 2049-byte tag",
            vec![support::event("E", &[&"t".repeat(2_049)])],
            None,
        ),
    ];
    let stall = Stall::start(&store).await;
    let calls = bad
        .into_iter()
        .enumerate()
        .map(|(i, (what, events, condition))| {
            let store = store.clone();
            let good = store.clone();
            async move {
                let good = actix::spawn(async move {
                    good.append(vec![support::event("Good", &[&format!("g{i}")])], None)
                        .await
                });
                let bad = store.append(events, condition).await;
                (what, bad, good.await.unwrap())
            }
        });
    let calls = actix::spawn(join_all(calls));
    stall.release().await;
    for (what, bad, good) in calls.await.unwrap() {
        assert!(
            matches!(bad, Err(Error::InvalidInput { .. })),
            "{what}: {bad:?}"
        );
        good.unwrap_or_else(|e| panic!("{what}: the good append failed: {e}"));
    }
    let read = store
        .read(
            &Query::new([QueryItem::new().occurred_until(ancient)]),
            ReadOptions::default(),
        )
        .await;
    assert!(matches!(read, Err(Error::InvalidInput { .. })), "{read:?}");
    let metrics = store.metrics().await.unwrap();
    assert!(
        metrics.database_errors.is_empty(),
        "no batch was refused by the server: {:?}",
        metrics.database_errors
    );
}

/// A name of `len` bytes that compression cannot shrink.
fn incompressible(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
        .collect()
}

#[actix::test]
async fn names_up_to_the_largest_allowed_length_fit_the_indexes() {
    let too_long = support::config(&support::unique_schema("names")).with_max_name_bytes(4_096);
    assert!(matches!(
        EventStore::connect(too_long).await,
        Err(Error::Config(_))
    ));
    let config = support::config(&support::unique_schema("names"))
        .with_max_name_bytes(dcb_store::MAX_NAME_BYTES);
    let store = EventStore::connect(config).await.unwrap();
    let (name, tag) = (
        incompressible(dcb_store::MAX_NAME_BYTES),
        incompressible(dcb_store::MAX_NAME_BYTES),
    );
    let event = Event::new(name.clone(), serde_json::json!({})).with_tags([tag.clone()]);
    store.append(vec![event], None).await.unwrap();
    let read = store
        .read(
            &Query::new([QueryItem::new().types([name]).tags([tag])]),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
}

#[actix::test]
async fn the_head_of_a_read_never_passes_the_store_head() {
    let store = support::store("head_clamp").await;
    for _ in 0..3 {
        store
            .append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    let read = store
        .read(&Query::all(), ReadOptions::default().after(10).limit(0))
        .await
        .unwrap();
    assert_eq!(read.head, Some(3));
    // A decision built on that head still sees an event appended at 4.
    store
        .append(vec![support::event("E", &["late"])], None)
        .await
        .unwrap();
    let condition = AppendCondition::new(Query::new([QueryItem::new().tags(["late"])]), read.head);
    let result = store
        .append(vec![support::event("D", &[])], Some(condition))
        .await;
    assert!(
        matches!(result, Err(Error::ConditionFailed { .. })),
        "{result:?}"
    );
}

#[actix::test]
async fn a_retry_is_recognised_with_its_tags_in_any_order_and_only_as_one_whole_append() {
    let store = support::store("replay").await;
    let event = support::event("E", &["a", "b", "c"]);
    let first = store.append(vec![event.clone()], None).await.unwrap();
    let reordered = Event::from_json("E", event.data_json())
        .with_id(event.id())
        .with_tags(["c", "a", "b"]);
    assert_eq!(store.append(vec![reordered], None).await.unwrap(), first);

    // Two events stored by two appends, next to each other, are not one append.
    let (x, y) = (support::event("E", &[]), support::event("E", &[]));
    store.append(vec![x.clone()], None).await.unwrap();
    store.append(vec![y.clone()], None).await.unwrap();
    let joined = store.append(vec![x.clone(), y.clone()], None).await;
    assert!(
        matches!(joined, Err(Error::DuplicateEventId { .. })),
        "{joined:?}"
    );
    // Nor is the front part of a stored append.
    let (p, q) = (support::event("E", &[]), support::event("E", &[]));
    let pair = store
        .append(vec![p.clone(), q.clone()], None)
        .await
        .unwrap();
    let front = store.append(vec![p.clone()], None).await;
    assert!(
        matches!(front, Err(Error::DuplicateEventId { .. })),
        "{front:?}"
    );
    let back = store.append(vec![q.clone()], None).await;
    assert!(
        matches!(back, Err(Error::DuplicateEventId { .. })),
        "{back:?}"
    );
    assert_eq!(store.append(vec![p, q], None).await.unwrap(), pair);
}

#[actix::test]
async fn two_processes_decide_exactly_whatever_the_servers_default_isolation() {
    for level in ["serializable", "repeatable read"] {
        let schema = support::unique_schema("isolation");
        let url = support::url_with_setting(
            support::database_url(),
            &format!("default_transaction_isolation={level}"),
        );
        let shown: String = support::client_for(&url)
            .await
            .query_one("SHOW default_transaction_isolation", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(shown, level, "the setting reaches the server");
        let config: Config = support::config(&schema).with_database_url(url);
        let a = EventStore::connect(config.clone()).await.unwrap();
        let b = EventStore::connect(config).await.unwrap();
        let guard = Query::new([QueryItem::new().tags(["seat"])]);
        let calls: Vec<_> = (0..24)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let guard = guard.clone();
                async move {
                    let seen = store.read(&guard, ReadOptions::default()).await?;
                    if seen.events.len() >= 3 {
                        return Ok(false);
                    }
                    let condition = AppendCondition::new(guard, seen.head);
                    match store
                        .append(vec![support::event("Taken", &["seat"])], Some(condition))
                        .await
                    {
                        Ok(_) => Ok(true),
                        Err(Error::ConditionFailed { .. }) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .collect();
        // Both writers queue behind a table lock held from outside, so the second
        // one's transaction starts while the first one's is still open.
        let blocker = support::lock_events(&schema, "EXCLUSIVE").await;
        let calls = actix::spawn(join_all(calls));
        tokio::time::sleep(Duration::from_millis(300)).await;
        blocker.batch_execute("COMMIT").await.unwrap();
        let outcomes: Vec<dcb_store::Result<bool>> = calls.await.unwrap();
        for outcome in &outcomes {
            assert!(outcome.is_ok(), "{level}: {outcome:?}");
        }
        let taken = a
            .read(&guard, ReadOptions::default())
            .await
            .unwrap()
            .events
            .len();
        let accepted = outcomes.iter().filter(|o| matches!(o, Ok(true))).count();
        assert!(
            taken <= 3 && taken == accepted,
            "{level}: {taken} taken, {accepted} accepted"
        );
    }
}
