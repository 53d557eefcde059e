//! Subscriptions and durable consumers against the real server: no gaps, no
//! duplicates, in order (history to live, many writers in two stores, generated
//! queries against `read`), wake-ups in and across processes, bounded memory with a
//! slow subscriber, shared tail reads, leases, checkpoints, standbys, poison events, a
//! database error in the middle of a delivery and an ack that fails after the handler's
//! `Ok` (delivered again, nothing skipped).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dcb_store::{
    Config, Deliver, DeliveryError, Error, Event, EventBatch, EventStore, OnFailure, Query,
    QueryItem, ReadOptions, SequencedEvent, SubscribeOptions, Subscription,
};
use futures_util::future::join_all;
use futures_util::StreamExt;
use rand::Rng;

use crate::generate::{Gen, KEYS};
use crate::support;

/// Batches from `sub` until `want` events arrived (panics after `limit`).
async fn collect(sub: &mut Subscription, want: usize, limit: Duration) -> Vec<SequencedEvent> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_scanned = 0;
    while events.len() < want {
        let batch = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} events arrived", events.len()))
            .expect("subscriptions do not end")
            .expect("batch");
        assert!(batch.scanned_to >= last_scanned, "scanned_to went back");
        if let Some(last) = batch.events.last() {
            assert!(last.position <= batch.scanned_to);
        }
        last_scanned = batch.scanned_to;
        events.extend(batch.events);
    }
    events
}

fn positions(events: &[SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// No batch arrives within `wait`.
async fn quiet(sub: &mut Subscription, wait: Duration) -> bool {
    match tokio::time::timeout(wait, sub.next()).await {
        Err(_) => true,
        Ok(Some(Ok(batch))) => batch.events.is_empty(),
        Ok(other) => panic!("unexpected {other:?}"),
    }
}

async fn all_matching(store: &EventStore, query: &Query) -> Vec<u64> {
    positions(
        &store
            .read(query, ReadOptions::default())
            .await
            .unwrap()
            .events,
    )
}

#[actix::test]
async fn history_then_live_from_writers_in_another_store_without_gaps_or_duplicates() {
    let schema = support::unique_schema("sub_live");
    let subscriber =
        EventStore::connect(support::config(&schema).with_subscription_buffer(64, 1 << 20))
            .await
            .unwrap();
    let writers = EventStore::connect(support::config(&schema)).await.unwrap();
    let query = Query::new([
        QueryItem::new().types(["Wanted"]),
        QueryItem::new().tags(["vip"]),
    ]);
    for i in 0..120 {
        let tags: &[&str] = if i % 7 == 0 { &["vip"] } else { &["other"] };
        let ty = if i % 3 == 0 { "Wanted" } else { "Other" };
        writers
            .append(vec![support::event(ty, tags)], None)
            .await
            .unwrap();
    }
    let mut sub = subscriber
        .subscribe(query.clone(), SubscribeOptions::default().batch_size(7))
        .await
        .unwrap();
    // Eight writers at once, in the other store, while the subscriber catches up.
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let writers = writers.clone();
            actix::spawn(async move {
                for i in 0..60 {
                    let ty = if (i + w) % 2 == 0 { "Wanted" } else { "Other" };
                    let tags: &[&str] = if i % 5 == 0 { &["vip"] } else { &["x"] };
                    let events = vec![support::event(ty, tags), support::event("Other", &["x"])];
                    writers.append(events, None).await.unwrap();
                }
            })
        })
        .collect();
    support::results(tasks).await;
    let expected = all_matching(&writers, &query).await;
    let got = collect(&mut sub, expected.len(), Duration::from_secs(30)).await;
    assert_eq!(
        positions(&got),
        expected,
        "every matching event, once, in order"
    );
    for e in &got {
        assert!(query.matches(&e.event));
    }
    assert!(
        quiet(&mut sub, Duration::from_millis(300)).await,
        "nothing more"
    );
}

#[actix::test]
async fn generated_queries_see_exactly_what_read_returns() {
    generated_subscriptions(support::config(&support::unique_schema("sub_gen"))).await;
}

#[actix::test]
async fn generated_queries_on_indexed_keys_see_exactly_what_read_returns() {
    let schema = support::unique_schema("sub_gen_keys");
    let config = support::config(&schema)
        .with_indexed_keys(KEYS.iter().copied())
        .with_indexed_metadata_keys(KEYS.iter().copied());
    generated_subscriptions(config).await;
}

async fn generated_subscriptions(config: Config) {
    // A small buffer: some subscribers are served from it, others fall back to reads.
    let store = EventStore::connect(config.with_subscription_buffer(40, 1 << 20))
        .await
        .unwrap();
    let mut gen = Gen::new();
    let seed = gen.seed();
    for _ in 0..5 {
        let events: Vec<Event> = (0..20).map(|_| gen.event()).collect();
        store.append(events, None).await.unwrap();
    }
    let queries: Vec<Query> = (0..12).map(|_| gen.query()).collect();
    let mut subs = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let options = SubscribeOptions::default().batch_size(1 + i * 3);
        subs.push(store.subscribe(q.clone(), options).await.unwrap());
    }
    for round in 0..20 {
        let n = gen.rng().gen_range(1..15);
        let events: Vec<Event> = (0..n).map(|_| gen.event()).collect();
        store.append(events, None).await.unwrap();
        if round % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (q, sub) in queries.iter().zip(subs.iter_mut()) {
        let expected = all_matching(&store, q).await;
        let got = collect(sub, expected.len(), Duration::from_secs(30)).await;
        assert_eq!(positions(&got), expected, "seed {seed}: {q:?}");
        assert!(
            quiet(sub, Duration::from_millis(100)).await,
            "seed {seed}: more than read returned for {q:?}"
        );
    }
}

#[actix::test]
async fn sparse_queries_report_progress_and_reaching_the_head() {
    let store = support::store("sub_sparse").await;
    for _ in 0..30 {
        store
            .append(vec![support::event("Noise", &["n"])], None)
            .await
            .unwrap();
    }
    let query = Query::new([QueryItem::new().types(["Rare"])]);
    let options = SubscribeOptions::default().heartbeat(Duration::from_millis(50));
    let mut sub = store.subscribe(query, options).await.unwrap();
    let first = sub.next().await.unwrap().unwrap();
    assert!(first.events.is_empty() && first.caught_up);
    assert_eq!(
        first.scanned_to, 30,
        "the empty batch says how far it scanned"
    );
    for _ in 0..10 {
        store
            .append(vec![support::event("Noise", &["n"])], None)
            .await
            .unwrap();
    }
    let progress = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(progress.events.is_empty() && progress.scanned_to > 30);
}

#[actix::test]
async fn a_slow_subscriber_falls_back_to_the_database_and_misses_nothing() {
    let schema = support::unique_schema("sub_slow");
    let store = EventStore::connect(support::config(&schema).with_subscription_buffer(50, 1 << 20))
        .await
        .unwrap();
    let query = Query::new([QueryItem::new().types(["E"])]);
    let mut sub = store
        .subscribe(query.clone(), SubscribeOptions::default())
        .await
        .unwrap();
    assert!(sub.next().await.unwrap().unwrap().caught_up);
    // The subscriber does not poll while 40 batches (far more than the buffer) land.
    for _ in 0..40 {
        let events = (0..25).map(|_| support::event("E", &["t"])).collect();
        store.append(events, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = store.metrics().await.unwrap().subscription_catch_up_reads;
    let got = collect(&mut sub, 1000, Duration::from_secs(30)).await;
    assert_eq!(positions(&got), all_matching(&store, &query).await);
    let after = store.metrics().await.unwrap().subscription_catch_up_reads;
    assert!(
        after > before,
        "it read from the database ({before} -> {after})"
    );
}

#[actix::test]
async fn many_subscribers_share_one_tail_read_per_batch() {
    let store = support::store("sub_fanout").await;
    let mut subs = Vec::new();
    for i in 0..30 {
        let query = Query::new([QueryItem::new().tags([format!("k:{i}")])]);
        let mut sub = store
            .subscribe(query, SubscribeOptions::default())
            .await
            .unwrap();
        assert!(sub.next().await.unwrap().unwrap().caught_up);
        subs.push(sub);
    }
    let before = store.metrics().await.unwrap();
    let started = std::time::Instant::now();
    let appends = 20;
    for round in 0..appends {
        let events = (0..30)
            .map(|i| support::event("E", &[&format!("k:{i}"), &format!("r:{round}")]))
            .collect();
        store.append(events, None).await.unwrap();
        // Every subscriber sees the batch before the next one is written.
        for sub in subs.iter_mut() {
            collect(sub, 1, Duration::from_secs(10)).await;
        }
    }
    let after = store.metrics().await.unwrap();
    let tail_reads = after.subscription_tail_reads - before.subscription_tail_reads;
    let catch_up = after.subscription_catch_up_reads - before.subscription_catch_up_reads;
    assert_eq!(catch_up, 0, "live subscribers never read on their own");
    // One per batch, plus at most one poll per second without a wake-up.
    let polls = started.elapsed().as_secs() + 2;
    assert!(
        tail_reads <= appends + polls,
        "{tail_reads} tail reads for {appends} batches and 30 subscribers"
    );
}

/// The first event delivered within `limit` after an append, for wake-up tests.
async fn delivered_within(store: &EventStore, sub: &mut Subscription, limit: Duration) -> bool {
    store
        .append(vec![support::event("Wake", &["w"])], None)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(limit, sub.next()).await {
            Err(_) => return false,
            Ok(Some(Ok(batch))) if !batch.events.is_empty() => return true,
            Ok(_) => {}
        }
    }
}

#[actix::test]
async fn wake_ups_come_from_the_writer_in_process_and_from_notify_across_processes() {
    let schema = support::unique_schema("sub_wake");
    // Polling so slow that only a wake-up can deliver within the test's limit.
    let slow_poll = |c: Config| c.with_subscription_poll_interval(Duration::from_secs(120));
    let quiet_store =
        EventStore::connect(slow_poll(support::config(&schema)).with_notify_commits(false))
            .await
            .unwrap();
    let query = Query::new([QueryItem::new().types(["Wake"])]);
    let mut sub = quiet_store
        .subscribe(query.clone(), SubscribeOptions::default())
        .await
        .unwrap();
    assert!(sub.next().await.unwrap().unwrap().caught_up);
    assert!(
        delivered_within(&quiet_store, &mut sub, Duration::from_secs(3)).await,
        "the writer of the same store wakes its subscribers (no NOTIFY sent)"
    );
    let other = EventStore::connect(slow_poll(support::config(&schema)))
        .await
        .unwrap();
    assert!(
        delivered_within(&other, &mut sub, Duration::from_secs(3)).await,
        "another store's NOTIFY wakes them"
    );
    let silent =
        EventStore::connect(slow_poll(support::config(&schema)).with_notify_commits(false))
            .await
            .unwrap();
    assert!(
        !delivered_within(&silent, &mut sub, Duration::from_secs(1)).await,
        "without NOTIFY another process's commit waits for the poll"
    );
}

#[actix::test]
async fn a_durable_consumer_resumes_after_its_checkpoint() {
    let schema = support::unique_schema("sub_resume");
    let store = EventStore::connect(support::config(&schema)).await.unwrap();
    for _ in 0..50 {
        store
            .append(vec![support::event("E", &["t"])], None)
            .await
            .unwrap();
    }
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .consumer("resume-1")
        .batch_size(10);
    assert_eq!(store.checkpoint("resume-1").await.unwrap(), None);
    let mut first = store
        .subscribe(query.clone(), options.clone())
        .await
        .unwrap();
    let batch = first.next().await.unwrap().unwrap();
    assert_eq!(positions(&batch.events), (1..=10).collect::<Vec<_>>());
    first.ack(batch.scanned_to).await.unwrap();
    assert_eq!(store.checkpoint("resume-1").await.unwrap(), Some(10));
    let unacked = first.next().await.unwrap().unwrap();
    assert_eq!(unacked.events[0].position, 11);
    // Acks never go back, nor beyond what was delivered.
    first.ack(5).await.unwrap();
    assert_eq!(store.checkpoint("resume-1").await.unwrap(), Some(10));
    assert!(matches!(
        first.ack(21).await,
        Err(Error::InvalidInput { .. })
    ));
    drop(first); // killed with a batch delivered but not acknowledged

    // A fresh subscriber (another store, as another process would be).
    let other = EventStore::connect(support::config(&schema)).await.unwrap();
    let mut second = other.subscribe(query.clone(), options).await.unwrap();
    let got = collect(&mut second, 40, Duration::from_secs(10)).await;
    assert_eq!(
        positions(&got),
        (11..=50).collect::<Vec<_>>(),
        "nothing acked again, nothing skipped"
    );
}

#[actix::test]
async fn a_standby_takes_over_when_the_holder_goes_away() {
    let schema = support::unique_schema("sub_standby");
    let a = EventStore::connect(support::config(&schema)).await.unwrap();
    let b = EventStore::connect(support::config(&schema)).await.unwrap();
    for _ in 0..5 {
        a.append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .consumer("standby-1")
        .standby_poll(Duration::from_millis(50));
    let mut holder = a.subscribe(query.clone(), options.clone()).await.unwrap();
    let batch = holder.next().await.unwrap().unwrap();
    assert_eq!(batch.events.len(), 5);
    holder.ack(3).await.unwrap();

    let mut standby = b.subscribe(query.clone(), options.clone()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), standby.next())
            .await
            .is_err(),
        "a standby receives nothing while the holder lives"
    );
    let metrics = b.metrics().await.unwrap();
    assert!(!metrics.consumers["standby-1"].holder);
    drop(holder);
    let got = collect(&mut standby, 2, Duration::from_secs(5)).await;
    assert_eq!(positions(&got), vec![4, 5], "from the stored checkpoint");
    assert!(b.metrics().await.unwrap().consumers["standby-1"].holder);
}

#[actix::test]
async fn a_holder_that_lost_its_lease_cannot_move_the_checkpoint() {
    let schema = support::unique_schema("sub_fence");
    let app = schema.clone();
    let a = EventStore::connect(config_named(&schema, &app))
        .await
        .unwrap();
    for _ in 0..10 {
        a.append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .consumer("fence-1")
        .batch_size(4)
        .standby_poll(Duration::from_millis(50));
    let mut stale = a.subscribe(query.clone(), options.clone()).await.unwrap();
    let batch = stale.next().await.unwrap().unwrap();
    stale.ack(2).await.unwrap();

    // Another holder took over without this one noticing (as a pooler that breaks
    // session locks would allow): its generation fences this one off.
    let admin = support::client().await;
    admin
        .execute(
            &format!(
                "UPDATE \"{schema}\".consumers
                 SET generation = generation + 1, holder = 'elsewhere', checkpoint = 3
                 WHERE name = 'fence-1'"
            ),
            &[],
        )
        .await
        .unwrap();
    let stale_ack = stale.ack(batch.scanned_to).await;
    assert!(
        matches!(stale_ack, Err(Error::LeaseLost { .. })),
        "{stale_ack:?}"
    );
    assert_eq!(a.checkpoint("fence-1").await.unwrap(), Some(3));
    // It takes the consumer back and resumes from the stored checkpoint.
    let resumed = stale.next().await.unwrap().unwrap();
    assert_eq!(resumed.events[0].position, 4);

    // Its lock connection dies without it noticing (a network partition): another
    // store takes over, and the old holder's ack changes nothing.
    terminate_lock_holders(&app).await;
    let b = EventStore::connect(support::config(&schema)).await.unwrap();
    let mut new_holder = b.subscribe(query.clone(), options).await.unwrap();
    let taken = collect(&mut new_holder, 7, Duration::from_secs(5)).await;
    assert_eq!(taken[0].position, 4);
    new_holder.ack(5).await.unwrap();
    let stale_ack = stale.ack(resumed.scanned_to).await;
    assert!(
        matches!(stale_ack, Err(Error::LeaseLost { .. })),
        "{stale_ack:?}"
    );
    assert_eq!(b.checkpoint("fence-1").await.unwrap(), Some(5));
}

/// A store configuration whose connections carry `application_name`, so the test can
/// find them.
fn config_named(schema: &str, application_name: &str) -> Config {
    let url = support::url_with_application_name(support::database_url(), application_name);
    Config::default().with_database_url(url).with_schema(schema)
}

/// Terminates the backends named `application_name` that hold an advisory lock (a
/// consumer's lease).
async fn terminate_lock_holders(application_name: &str) {
    let admin = support::client().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
             JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
             WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty(), "no lease to end");
}

/// Records what it is given; fails every delivery containing a poison event.
struct Handler {
    seen: Arc<Mutex<Vec<u64>>>,
    poison: Arc<Mutex<BTreeSet<u64>>>,
}

impl Actor for Handler {
    type Context = Context<Self>;
}

impl actix::Handler<Deliver> for Handler {
    type Result = Result<(), DeliveryError>;

    fn handle(&mut self, deliver: Deliver, _: &mut Context<Self>) -> Self::Result {
        let poison = self.poison.lock().unwrap();
        if let Some(bad) = deliver
            .batch
            .events
            .iter()
            .find(|e| poison.contains(&e.position))
        {
            return Err(DeliveryError::new(format!(
                "cannot handle {}",
                bad.position
            )));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.extend(deliver.batch.events.iter().map(|e| e.position));
        Ok(())
    }
}

/// A handler's address, what it accepted, and the positions it refuses.
type Probe = (
    Addr<Handler>,
    Arc<Mutex<Vec<u64>>>,
    Arc<Mutex<BTreeSet<u64>>>,
);

fn handler(poison: &[u64]) -> Probe {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let poison = Arc::new(Mutex::new(poison.iter().copied().collect()));
    let addr = Handler {
        seen: seen.clone(),
        poison: poison.clone(),
    }
    .start();
    (addr, seen, poison)
}

async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix::test]
async fn a_handler_failing_one_event_parks_it_and_delivery_goes_on() {
    let store = support::store("sub_poison").await;
    let events: Vec<Event> = (0..20).map(|_| support::event("E", &[])).collect();
    store.append(events, None).await.unwrap();
    let (addr, seen, poison) = handler(&[7]);
    let options = SubscribeOptions::default()
        .consumer("poison-1")
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(5));
    let query = Query::new([QueryItem::new().types(["E"])]);
    let handle = store
        .subscribe_recipient(query, options, addr.clone().recipient())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || seen.lock().unwrap().len() >= 19).await;
    let mut delivered = seen.lock().unwrap().clone();
    delivered.sort_unstable();
    delivered.dedup();
    let expected: Vec<u64> = (1..=20).filter(|p| *p != 7).collect();
    assert_eq!(delivered, expected, "every event but the poison one");
    let parked = store.parked("poison-1").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].position, parked[0].attempts), (7, 3));
    assert_eq!(parked[0].error, "cannot handle 7");
    eventually(Duration::from_secs(5), || true).await;
    let metrics = store.metrics().await.unwrap();
    assert_eq!(metrics.consumers["poison-1"].parked, 1);
    handle.stop().await;
    assert_eq!(store.checkpoint("poison-1").await.unwrap(), Some(20));

    // Fixed: the parked event is replayed and no longer parked.
    poison.lock().unwrap().clear();
    let outcome = store
        .replay_parked("poison-1", addr.recipient())
        .await
        .unwrap();
    assert_eq!(outcome.replayed, vec![7]);
    assert!(store.parked("poison-1").await.unwrap().is_empty());
    assert!(seen.lock().unwrap().contains(&7));
}

#[actix::test]
async fn a_consumer_configured_to_stop_stops_before_the_failing_event() {
    let store = support::store("sub_stop").await;
    let events: Vec<Event> = (0..10).map(|_| support::event("E", &[])).collect();
    store.append(events, None).await.unwrap();
    let (addr, seen, _) = handler(&[4]);
    let options = SubscribeOptions::default()
        .consumer("stop-1")
        .max_attempts(2)
        .on_failure(OnFailure::Stop)
        .retry_backoff(Duration::from_millis(5));
    let query = Query::new([QueryItem::new().types(["E"])]);
    let handle = store
        .subscribe_recipient(query, options, addr.recipient())
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("the consumer stops");
    match ended {
        Err(Error::DeliveryFailed {
            position, attempts, ..
        }) => assert_eq!((position, attempts), (4, 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.checkpoint("stop-1").await.unwrap(), Some(3));
    assert_eq!(seen.lock().unwrap().iter().max(), Some(&3));
    assert!(store.parked("stop-1").await.unwrap().is_empty());

    // Fixed and started again: the event that stopped it is tried afresh.
    let (fixed, seen_again, _) = handler(&[]);
    let options = SubscribeOptions::default()
        .consumer("stop-1")
        .max_attempts(2)
        .on_failure(OnFailure::Stop);
    let query = Query::new([QueryItem::new().types(["E"])]);
    let handle = store
        .subscribe_recipient(query, options, fixed.recipient())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || {
        seen_again.lock().unwrap().len() >= 7
    })
    .await;
    let mut again = seen_again.lock().unwrap().clone();
    again.dedup();
    assert_eq!(again, (4..=10).collect::<Vec<_>>());
    handle.stop().await;
}

#[actix::test]
async fn a_standby_stops_at_once_and_answers_acks() {
    let schema = support::unique_schema("sub_standby_stop");
    let a = EventStore::connect(support::config(&schema)).await.unwrap();
    let b = EventStore::connect(support::config(&schema)).await.unwrap();
    a.append(vec![support::event("E", &[])], None)
        .await
        .unwrap();
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .consumer("standby-stop")
        .standby_poll(Duration::from_millis(50));
    let mut holder = a.subscribe(query.clone(), options.clone()).await.unwrap();
    holder.next().await.unwrap().unwrap();

    // A standby abandoned mid-wait (a timed-out `next`) still answers an ack at once.
    let mut standby = b.subscribe(query.clone(), options.clone()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), standby.next())
            .await
            .is_err()
    );
    let ack = tokio::time::timeout(Duration::from_secs(2), standby.ack(0)).await;
    assert!(matches!(ack, Ok(Err(Error::LeaseLost { .. }))), "{ack:?}");

    // A delivery that stands by stops at once, and gives nothing up it did not hold.
    let (addr, seen, _) = handler(&[]);
    let handle = b
        .subscribe_recipient(query, options, addr.recipient())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(2), handle.stop())
        .await
        .expect("stop returns while standing by");
    assert!(seen.lock().unwrap().is_empty());
    holder.ack(1).await.unwrap();
}

/// Never answers: the delivery hangs like a process that died mid-batch.
struct Hang;
impl Actor for Hang {
    type Context = Context<Self>;
}
impl actix::Handler<Deliver> for Hang {
    type Result = ResponseFuture<Result<(), DeliveryError>>;
    fn handle(&mut self, _: Deliver, _: &mut Context<Self>) -> Self::Result {
        Box::pin(futures_util::future::pending())
    }
}

#[actix::test]
async fn an_attempt_is_counted_before_delivery_so_a_crash_counts() {
    let schema = support::unique_schema("sub_crash");
    let a = EventStore::connect(config_named(&schema, &schema))
        .await
        .unwrap();
    a.append(vec![support::event("E", &[])], None)
        .await
        .unwrap();
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .consumer("crash-1")
        .max_attempts(1)
        .standby_poll(Duration::from_millis(50));
    let _hanging = a
        .subscribe_recipient(query.clone(), options.clone(), Hang.start().recipient())
        .await
        .unwrap();
    let admin = support::client().await;
    let attempts = || async {
        let sql = format!("SELECT attempts FROM \"{schema}\".consumers WHERE name = 'crash-1'");
        admin
            .query_opt(&sql, &[])
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while attempts().await != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the attempt was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The process "dies": its connections go, so does the lock.
    terminate_lock_holders(&schema).await;
    let b = EventStore::connect(support::config(&schema)).await.unwrap();
    let (addr, seen, _) = handler(&[]);
    let handle = b
        .subscribe_recipient(query, options, addr.recipient())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.parked("crash-1").await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the crashed delivery was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let parked = b.parked("crash-1").await.unwrap();
    assert_eq!(parked[0].position, 1);
    assert!(
        parked[0].error.contains("did not finish"),
        "{}",
        parked[0].error
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "not delivered a second time"
    );
    handle.stop().await;
}

#[actix::test]
async fn consumer_metrics_show_lag_progress_and_holder() {
    let store = support::store("sub_metrics").await;
    for _ in 0..10 {
        store
            .append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    let query = Query::new([QueryItem::new().types(["E"])]);
    let mut sub = store
        .subscribe(
            query,
            SubscribeOptions::default()
                .consumer("metrics-1")
                .batch_size(4),
        )
        .await
        .unwrap();
    let batch = sub.next().await.unwrap().unwrap();
    sub.ack(batch.scanned_to).await.unwrap();
    let metrics = store.metrics().await.unwrap();
    let c = &metrics.consumers["metrics-1"];
    assert!(c.holder && !c.caught_up);
    assert_eq!((c.delivered, c.checkpoint), (4, 4));
    assert_eq!(c.lag_events, 6);
    assert!(c.last_progress_seconds > 1.7e9);
    let text = metrics.to_prometheus();
    assert!(text.contains("dcb_consumer_lag_events{schema="));
    assert!(text.contains("consumer=\"metrics-1\"} 6"));
    collect(&mut sub, 6, Duration::from_secs(5)).await;
    let c = store.metrics().await.unwrap().consumers["metrics-1"].clone();
    assert!(c.caught_up);
}

#[actix::test]
async fn subscribe_refuses_bad_input_with_typed_errors() {
    let store = support::store("sub_invalid").await;
    let q = Query::new([QueryItem::new().types(["E"])]);
    let bad = [
        store
            .subscribe(Query::new([]), SubscribeOptions::default())
            .await
            .err(),
        store
            .subscribe(q.clone(), SubscribeOptions::default().batch_size(0))
            .await
            .err(),
        store
            .subscribe(q.clone(), SubscribeOptions::default().consumer(""))
            .await
            .err(),
        store
            .subscribe(q.clone(), SubscribeOptions::default().consumer("a\0b"))
            .await
            .err(),
        store
            .subscribe(
                q.clone(),
                SubscribeOptions::default().consumer("x".repeat(201)),
            )
            .await
            .err(),
    ];
    for error in bad {
        assert!(
            matches!(error, Some(Error::InvalidInput { .. })),
            "{error:?}"
        );
    }
    let plain = store
        .subscribe(q.clone(), SubscribeOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        plain.ack(0).await,
        Err(Error::InvalidInput { .. })
    ));
    let (addr, _, _) = handler(&[]);
    let no_name = store
        .subscribe_recipient(q, SubscribeOptions::default(), addr.recipient())
        .await;
    assert!(matches!(no_name, Err(Error::InvalidInput { .. })));
}

#[actix::test]
async fn a_subscription_is_a_stream() {
    let store = support::store("sub_stream").await;
    store
        .append(vec![support::event("E", &[])], None)
        .await
        .unwrap();
    let sub = store
        .subscribe(Query::all(), SubscribeOptions::default())
        .await
        .unwrap();
    let batches: Vec<dcb_store::Result<EventBatch>> = sub.take(1).collect().await;
    assert_eq!(batches[0].as_ref().unwrap().events.len(), 1);
    // Many subscribers at once on one store.
    let subs =
        join_all((0..5).map(|_| store.subscribe(Query::all(), SubscribeOptions::default()))).await;
    assert!(subs.into_iter().all(|s| s.is_ok()));
}

#[actix::test]
async fn batches_notify_only_while_some_process_listens() {
    let schema = support::unique_schema("sub_listeners");
    let writer = EventStore::connect(support::config(&schema)).await.unwrap();
    let notifies =
        |m: &dcb_store::MetricsSnapshot| m.statements.get("notify").map_or(0, |s| s.count);
    // Nobody listens: only a batch that checks for listeners (at most one per 500 ms)
    // sends a NOTIFY.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        writer
            .append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..5 {
        writer
            .append(vec![support::event("E", &[])], None)
            .await
            .unwrap();
    }
    let quiet = notifies(&writer.metrics().await.unwrap());
    let checks = started.elapsed().as_millis() as u64 / 500 + 1;
    assert!(
        quiet <= checks,
        "{quiet} NOTIFYs with nobody listening, {checks} checks"
    );
    assert!(quiet < 10, "not one per batch");

    // Another process subscribes (and so listens): within the check interval, the
    // writer notifies it, and its subscriber wakes without polling.
    let slow_poll = Duration::from_secs(120);
    let listener =
        EventStore::connect(support::config(&schema).with_subscription_poll_interval(slow_poll))
            .await
            .unwrap();
    let query = Query::new([QueryItem::new().types(["Wake"])]);
    let mut sub = listener
        .subscribe(query, SubscribeOptions::default())
        .await
        .unwrap();
    assert!(sub.next().await.unwrap().unwrap().caught_up);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(delivered_within(&writer, &mut sub, Duration::from_secs(3)).await);
    let now = notifies(&writer.metrics().await.unwrap());
    assert!(now > quiet, "the writer notifies once someone listens");
}

#[actix::test]
async fn a_standby_in_the_same_process_does_not_hide_the_holder_in_metrics() {
    let store = support::store("sub_holders").await;
    store
        .append(vec![support::event("E", &[])], None)
        .await
        .unwrap();
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .consumer("holders-1")
        .standby_poll(Duration::from_millis(50));
    let holding = |store: EventStore| async move {
        store.metrics().await.unwrap().consumers["holders-1"].holder
    };
    let mut holder = store
        .subscribe(query.clone(), options.clone())
        .await
        .unwrap();
    holder.next().await.unwrap().unwrap();
    let mut standby = store.subscribe(query, options).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), standby.next())
            .await
            .is_err()
    );
    assert!(
        holding(store.clone()).await,
        "the standby waiting does not unset it"
    );
    drop(holder);
    standby.next().await.unwrap().unwrap();
    assert!(holding(store.clone()).await);
    drop(standby);
    assert!(!holding(store.clone()).await);
}

#[actix::test]
async fn concurrent_writers_slow_subscribers_and_small_buffers_never_skip_or_repeat() {
    let schema = support::unique_schema("sub_stress");
    let a = EventStore::connect(support::config(&schema)).await.unwrap();
    let b = EventStore::connect(support::config(&schema).with_subscription_buffer(30, 1 << 20))
        .await
        .unwrap();
    let mut gen = Gen::new();
    let seed = gen.seed();
    // Subscribers on both stores, random queries and batch sizes, half of them slow.
    let mut followers = Vec::new();
    for i in 0..8 {
        let query = gen.query();
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let batch_size = gen.rng().gen_range(1..40);
        let slow = i % 4 < 2;
        let mut sub = store
            .subscribe(
                query.clone(),
                SubscribeOptions::default().batch_size(batch_size),
            )
            .await
            .unwrap();
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(None::<usize>);
        let task = actix::spawn(async move {
            let mut got: Vec<u64> = Vec::new();
            loop {
                if let Some(want) = *done_rx.borrow_and_update() {
                    if got.len() >= want {
                        break;
                    }
                }
                let batch = tokio::select! {
                    next = sub.next() => next.unwrap().unwrap(),
                    _ = done_rx.changed() => continue,
                };
                assert!(batch.events.len() <= batch_size);
                got.extend(batch.events.iter().map(|e| e.position));
                if slow {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
            got
        });
        followers.push((query, done_tx, task));
    }
    // Writers in both stores, plain and conditional appends of 1 to 5 events.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            let mut gen = Gen::new();
            actix::spawn(async move {
                for _ in 0..40 {
                    let n = gen.rng().gen_range(1..=5);
                    let events: Vec<Event> = (0..n).map(|_| gen.event()).collect();
                    let condition = gen
                        .rng()
                        .gen_bool(0.3)
                        .then(|| dcb_store::AppendCondition::new(gen.query(), None));
                    let _ = store.append(events, condition).await;
                }
            })
        })
        .collect();
    support::results(writers).await;
    for (query, done, task) in followers {
        let expected = all_matching(&a, &query).await;
        done.send(Some(expected.len())).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the subscriber caught up")
            .unwrap();
        assert_eq!(got, expected, "seed {seed}: {query:?}");
    }
}

#[actix::test]
async fn reaching_the_head_again_is_reported_at_once() {
    let schema = support::unique_schema("sub_rehead");
    let store = EventStore::connect(support::config(&schema).with_subscription_buffer(5, 1 << 20))
        .await
        .unwrap();
    let query = Query::new([QueryItem::new().types(["E"])]);
    let options = SubscribeOptions::default()
        .batch_size(10)
        .heartbeat(Duration::from_secs(30));
    let mut sub = store.subscribe(query, options).await.unwrap();
    assert!(sub.next().await.unwrap().unwrap().caught_up);
    // Fall behind by exactly four batches, past the buffer.
    for _ in 0..4 {
        let events = (0..10).map(|_| support::event("E", &[])).collect();
        store.append(events, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = 0;
    let started = std::time::Instant::now();
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("no heartbeat wait")
            .unwrap()
            .unwrap();
        got += batch.events.len();
        if batch.caught_up {
            break;
        }
    }
    assert_eq!(got, 40);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Records every batch it is given and answers `Ok`, but holds its first batch until
/// the test says go (so the test can break something while a delivery is in progress).
struct Gated {
    seen: Arc<Mutex<Vec<u64>>>,
    holding: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
    first: bool,
}

impl Actor for Gated {
    type Context = Context<Self>;
}

impl actix::Handler<Deliver> for Gated {
    type Result = ResponseFuture<Result<(), DeliveryError>>;

    fn handle(&mut self, deliver: Deliver, _: &mut Context<Self>) -> Self::Result {
        self.seen
            .lock()
            .unwrap()
            .extend(deliver.batch.events.iter().map(|e| e.position));
        let hold = std::mem::take(&mut self.first);
        let (holding, go) = (self.holding.clone(), self.go.clone());
        Box::pin(async move {
            if hold {
                holding.notify_one();
                go.notified().await;
            }
            Ok(())
        })
    }
}

/// A store on a fresh schema whose connections carry `application_name`, ten events,
/// and a gated consumer delivering them (batches of 4): the consumer's name, the
/// handler's record, and the gate.
async fn gated_delivery(
    prefix: &str,
    application_name: &str,
    timeout: Duration,
) -> (
    EventStore,
    dcb_store::SubscriptionHandle,
    Arc<Mutex<Vec<u64>>>,
    Arc<tokio::sync::Notify>,
    Arc<tokio::sync::Notify>,
) {
    let schema = support::unique_schema(prefix);
    let url = support::url_with_application_name(support::database_url(), application_name);
    let store = EventStore::connect(
        support::config(&schema)
            .with_database_url(url)
            .with_operation_timeout(timeout),
    )
    .await
    .unwrap();
    let events: Vec<Event> = (0..10).map(|_| support::event("E", &[])).collect();
    store.append(events, None).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (holding, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let gated = Gated {
        seen: seen.clone(),
        holding: holding.clone(),
        go: go.clone(),
        first: true,
    }
    .start();
    let options = SubscribeOptions::default()
        .consumer("gated")
        .batch_size(4)
        .standby_poll(Duration::from_millis(50))
        .retry_backoff(Duration::from_millis(20));
    let handle = store
        .subscribe_recipient(
            Query::new([QueryItem::new().types(["E"])]),
            options,
            gated.recipient(),
        )
        .await
        .unwrap();
    (store, handle, seen, holding, go)
}

/// Every position delivered, none skipped, the first batch (1..=4) delivered again
/// when `again`, and the checkpoint at the end.
async fn delivered_and_nothing_skipped(
    store: &EventStore,
    seen: &Arc<Mutex<Vec<u64>>>,
    again: bool,
) {
    let wanted = if again { 2 } else { 1 };
    eventually(Duration::from_secs(20), || {
        let seen = seen.lock().unwrap();
        (1..=10).all(|p| seen.contains(&p)) && seen.iter().filter(|p| **p == 1).count() >= wanted
    })
    .await;
    let mut checkpoint = None;
    for _ in 0..200 {
        checkpoint = store.checkpoint("gated").await.unwrap();
        if checkpoint == Some(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checkpoint, Some(10));
    let seen = seen.lock().unwrap().clone();
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=10).collect::<Vec<u64>>(),
        "nothing skipped: {seen:?}"
    );
    // At least once, and only what was not acknowledged comes again: 5..=10 once each.
    for p in 5..=10 {
        assert_eq!(seen.iter().filter(|s| **s == p).count(), 1, "{seen:?}");
    }
}

#[actix::test]
async fn a_database_error_during_a_delivery_delivers_the_same_batch_again() {
    let name = format!("dcb_deliver_err_{}", std::process::id());
    let (store, handle, seen, holding, go) =
        gated_delivery("sub_db_error", &name, Duration::from_secs(5)).await;
    holding.notified().await;
    // The lease's connection dies while the handler works on batch 1..=4: its ack
    // cannot be written, the lease is lost with the session.
    terminate_lock_holders(&name).await;
    go.notify_one();
    delivered_and_nothing_skipped(&store, &seen, true).await;
    handle.stop().await;
}

#[actix::test]
async fn an_ack_that_fails_after_the_handlers_ok_loses_and_skips_nothing() {
    let name = format!("dcb_ack_fails_{}", std::process::id());
    let (store, handle, seen, holding, go) =
        gated_delivery("sub_ack_fails", &name, Duration::from_millis(400)).await;
    holding.notified().await;
    // The consumer's row is locked from outside while the handler works: its `Ok`
    // comes, and the ack waits past the operation timeout and fails.
    let schema_of = |store: &EventStore| store.config().schema().to_owned();
    let blocker = support::client().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM \"{}\".consumers WHERE name = 'gated' FOR UPDATE",
            schema_of(&store)
        ))
        .await
        .unwrap();
    go.notify_one();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        store.checkpoint("gated").await.unwrap(),
        None,
        "the ack has not been written"
    );
    // The ack that timed out may still commit once the row is free (its statement was
    // sent): then 1..=4 are acknowledged and not delivered again; otherwise they are.
    blocker.batch_execute("COMMIT").await.unwrap();
    delivered_and_nothing_skipped(&store, &seen, false).await;
    handle.stop().await;
}
