//! Read replicas and failover against real servers this test starts: a primary and
//! streaming replicas (`pg_basebackup -R`) from the machine's PostgreSQL binaries.
//! Eventual reads are served by a replica (its own statistics show them), a read at
//! least at a position returns that position's events even while the replica's replay
//! is paused, a replica going down and coming back costs no read, a decision on a
//! stale replica is never wrong, and after the primary is killed and its synchronous
//! standby promoted every acknowledged append is there exactly once.

use dcb_store_testkit::ServerControls;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_store::{
    Config, Consistency, Decided, EmbeddedPostgres, Error, Event, EventStore, MetricsSnapshot,
    Projection, Query, QueryItem, ReadOptions, SequencedEvent,
};
use serde_json::json;

use crate::support;

/// A primary and `replicas` streaming replicas of it; `None` (the test is skipped,
/// saying why) only when the machine has no PostgreSQL server binaries.
async fn cluster(replicas: usize) -> Option<(Arc<EmbeddedPostgres>, Vec<Arc<EmbeddedPostgres>>)> {
    let started = tokio::task::spawn_blocking(move || {
        let primary = EmbeddedPostgres::start()?;
        let replicas = (0..replicas)
            .map(|_| primary.replica().map(Arc::new))
            .collect::<dcb_store::Result<Vec<_>>>()?;
        Ok::<_, Error>((Arc::new(primary), replicas))
    })
    .await
    .expect("start task");
    match started {
        Ok(cluster) => Some(cluster),
        Err(Error::Embedded(why)) if why.contains("no PostgreSQL server binaries") => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("cannot start a primary and its replicas: {e}"),
    }
}

fn config(primary: &EmbeddedPostgres, replicas: &[Arc<EmbeddedPostgres>]) -> Config {
    Config::default()
        .with_database_url(primary.url())
        .with_replica_urls(replicas.iter().map(|r| r.url()))
        .with_replica_poll_interval(Duration::from_millis(20))
        .with_schema("replicated")
}

fn name(server: &EmbeddedPostgres) -> String {
    format!("127.0.0.1:{}", server.port())
}

fn routed(metrics: &MetricsSnapshot, consistency: &str, target: &str) -> u64 {
    let key = (consistency.to_owned(), target.to_owned());
    metrics.reads_routed.get(&key).copied().unwrap_or(0)
}

/// Waits (up to 30 s, looking every 20 ms) until `check` holds; fails saying `what`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the store's metrics satisfy `ready`.
async fn until(store: &EventStore, what: &str, ready: impl Fn(&MetricsSnapshot) -> bool) {
    let ready = &ready;
    eventually(
        what,
        || async move { ready(&store.metrics().await.unwrap()) },
    )
    .await;
}

/// Runs one of `server`'s blocking controls (stop, start again, kill, promote).
async fn control(
    server: &Arc<EmbeddedPostgres>,
    action: fn(&EmbeddedPostgres) -> dcb_store::Result<()>,
) {
    let server = server.clone();
    tokio::task::spawn_blocking(move || action(&server))
        .await
        .unwrap()
        .unwrap();
}

async fn in_rotation(store: &EventStore, replica: &EmbeddedPostgres, head: u64) {
    let name = name(replica);
    until(store, "in rotation", |m| {
        m.replicas
            .get(&name)
            .is_some_and(|r| r.in_rotation && r.head >= head)
    })
    .await;
}

async fn sql(server: &EmbeddedPostgres, statement: &str) {
    support::client_for(&server.url())
        .await
        .batch_execute(statement)
        .await
        .unwrap();
}

/// Waits until `server` holds the store's events up to `position`.
async fn holds(server: &EmbeddedPostgres, position: u64) {
    let client = &support::client_for(&server.url()).await;
    let head = "SELECT coalesce(max(position), 0) FROM replicated.events";
    eventually(
        &format!("{} holding {position}", server.port()),
        || async move {
            client
                .query_one(head, &[])
                .await
                .map_or(0, |row| row.get::<_, i64>(0))
                >= position as i64
        },
    )
    .await;
}

/// Index and sequential scans of the store's tables that `server` counted.
async fn scans(server: &EmbeddedPostgres) -> i64 {
    let client = support::client_for(&server.url()).await;
    client
        .query_one(
            "SELECT (coalesce(sum(idx_scan), 0) + coalesce(sum(seq_scan), 0))::bigint
             FROM pg_stat_user_tables WHERE schemaname = 'replicated'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn tagged(tag: &str) -> Query {
    Query::new([QueryItem::new().tags([tag])])
}

#[actix::test]
async fn eventual_reads_are_served_by_a_replica() {
    let Some((primary, replicas)) = cluster(1).await else {
        return;
    };
    let replica = &replicas[0];
    let store = EventStore::connect(config(&primary, &replicas))
        .await
        .unwrap();
    let events: Vec<Event> = (0..10).map(|_| support::event("E", &["r"])).collect();
    let at = store.append(events, None).await.unwrap();
    in_rotation(&store, replica, at.last_position).await;

    let strong = store
        .read(&tagged("r"), ReadOptions::default())
        .await
        .unwrap();
    let scans_before = scans(replica).await;
    let eventual = ReadOptions::default().consistency(Consistency::Eventual);
    for _ in 0..20 {
        let read = store.read(&tagged("r"), eventual).await.unwrap();
        assert_eq!(read, strong, "the replica has every event");
    }
    let metrics = store.metrics().await.unwrap();
    assert_eq!(routed(&metrics, "eventual", &name(replica)), 20);
    assert_eq!(routed(&metrics, "strong", "primary"), 1);
    assert_eq!(metrics.replica_fallbacks.get("eventual"), None);
    let figures = &metrics.replicas[&name(replica)];
    assert!(figures.reachable && figures.in_rotation && figures.lag_events == 0);
    assert_eq!(figures.reads, 20);
    let text = metrics.to_prometheus();
    for family in [
        "dcb_replica_in_rotation{schema=\"replicated\",replica=",
        "dcb_replica_lag_seconds{",
        "dcb_reads_routed_total{schema=\"replicated\",consistency=\"eventual\",target=",
    ] {
        assert!(text.contains(family), "{family} exported");
    }
    // The replica's own statistics count the reads (flushed within about a second).
    eventually("the replica counting the reads", || async {
        scans(replica).await >= scans_before + 20
    })
    .await;
}

#[actix::test]
async fn reading_at_least_a_position_sees_it_even_while_replay_is_paused() {
    let Some((primary, replicas)) = cluster(1).await else {
        return;
    };
    let replica = &replicas[0];
    let config = config(&primary, &replicas).with_replica_wait(Duration::from_secs(2));
    let store = EventStore::connect(config).await.unwrap();
    let first = store
        .append(vec![support::event("E", &["p"])], None)
        .await
        .unwrap();
    in_rotation(&store, replica, first.last_position).await;

    // Read-your-writes on a replica that replays: every append is seen at once.
    for i in 0..30 {
        let event = support::event("E", &["p", &format!("n:{i}")]);
        let id = event.id();
        let at = store.append(vec![event], None).await.unwrap();
        let options = ReadOptions::default().consistency(Consistency::AtLeast(at.last_position));
        let read = store
            .read(&tagged(&format!("n:{i}")), options)
            .await
            .unwrap();
        assert_eq!(read.events.len(), 1, "append {i} is visible");
        assert_eq!(read.events[0].event.id(), id);
    }

    sql(replica, "SELECT pg_wal_replay_pause()").await;
    let event = support::event("E", &["p", "while-paused"]);
    let id = event.id();
    let at = store.append(vec![event], None).await.unwrap();
    let before = store.metrics().await.unwrap();
    let options = ReadOptions::default().consistency(Consistency::AtLeast(at.last_position));
    let read = store.read(&tagged("while-paused"), options).await.unwrap();
    assert_eq!(
        read.events.len(),
        1,
        "the paused replica's answer was not taken"
    );
    assert_eq!(read.events[0].event.id(), id);
    let after = store.metrics().await.unwrap();
    assert_eq!(
        routed(&after, "at_least", "primary"),
        routed(&before, "at_least", "primary") + 1,
        "the primary served it"
    );
    let fallbacks = |m: &MetricsSnapshot| m.replica_fallbacks.get("at_least").copied();
    assert_eq!(fallbacks(&after), Some(fallbacks(&before).unwrap_or(0) + 1));

    // Resumed, the replica serves such reads again.
    sql(replica, "SELECT pg_wal_replay_resume()").await;
    let event = support::event("E", &["p", "resumed"]);
    let at = store.append(vec![event], None).await.unwrap();
    let options = ReadOptions::default().consistency(Consistency::AtLeast(at.last_position));
    let read = store.read(&tagged("resumed"), options).await.unwrap();
    assert_eq!(read.events.len(), 1);
    let resumed = store.metrics().await.unwrap();
    assert_eq!(
        routed(&resumed, "at_least", &name(replica)),
        routed(&after, "at_least", &name(replica)) + 1,
        "the replica served it"
    );
}

/// A TCP proxy on a loopback port, forwarding each new connection to the port `target`
/// holds at that moment.
async fn proxy(target: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = target.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[actix::test]
async fn a_replica_that_hangs_delays_no_other_replicas_figures() {
    let Some((primary, replicas)) = cluster(1).await else {
        return;
    };
    let replica = &replicas[0];
    // Accepts connections and never answers: a server that hangs.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres",
        hung.local_addr().unwrap().port()
    );
    // Polls every 400 ms; a poll waits for an answer up to 10 × that (4 s).
    let store = EventStore::connect(
        config(&primary, &replicas)
            .with_replica_urls([replica.url(), hung_url])
            .with_replica_poll_interval(Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let name = name(replica);
    for round in 0..3 {
        let at = store
            .append(vec![support::event("E", &["h"])], None)
            .await
            .unwrap();
        holds(replica, at.last_position).await;
        // The replica has it; its figures follow at its next poll, not after the hung
        // server's 4 s bound.
        let seen = Instant::now();
        loop {
            let metrics = store.metrics().await.unwrap();
            if metrics.replicas[&name].head >= at.last_position {
                break;
            }
            assert!(
                seen.elapsed() < Duration::from_millis(2_500),
                "round {round}: the replica's figures waited for the hung server"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let metrics = store.metrics().await.unwrap();
    assert!(metrics.replicas[&name].in_rotation);
    let hung_name = metrics
        .replicas
        .keys()
        .find(|k| **k != name)
        .cloned()
        .unwrap();
    assert!(!metrics.replicas[&hung_name].reachable);
    drop(hung);
}

#[actix::test]
async fn a_replica_behind_what_the_router_saw_is_never_trusted() {
    // Replica `behind` stops replaying before the events exist; replica `ahead` has them.
    // The store reaches its one replica through a proxy that the router sees pointing at
    // `ahead`; then the proxy points at `behind` (a replica replaced by an older copy)
    // before the readers connect, and the router does not poll again.
    let Some((primary, replicas)) = cluster(2).await else {
        return;
    };
    let (ahead, behind) = (&replicas[0], &replicas[1]);
    let writer =
        EventStore::connect(support::config("replicated").with_database_url(primary.url()))
            .await
            .unwrap();
    let first = writer
        .append(vec![support::event("E", &["a"])], None)
        .await
        .unwrap();
    // Both replicas have the schema and the first event; `behind` stops there.
    holds(ahead, first.last_position).await;
    holds(behind, first.last_position).await;
    sql(behind, "SELECT pg_wal_replay_pause()").await;
    let events: Vec<Event> = (0..5).map(|_| support::event("E", &["b"])).collect();
    let at = writer.append(events, None).await.unwrap();
    holds(ahead, at.last_position).await;

    let target = Arc::new(AtomicU16::new(ahead.port()));
    let port = proxy(target.clone()).await;
    let config = Config::default()
        .with_database_url(primary.url())
        .with_replica_urls([format!("postgresql://postgres@127.0.0.1:{port}/postgres")])
        .with_replica_poll_interval(Duration::from_secs(3600))
        .with_replica_wait(Duration::from_millis(200))
        .with_schema("replicated");
    let store = EventStore::connect(config).await.unwrap();
    let proxied = format!("127.0.0.1:{port}");
    until(&store, "polled", |m| {
        m.replicas
            .get(&proxied)
            .is_some_and(|r| r.head >= at.last_position)
    })
    .await;
    target.store(behind.port(), Ordering::SeqCst);

    let options = ReadOptions::default().consistency(Consistency::AtLeast(at.last_position));
    let read = store.read(&tagged("b"), options).await.unwrap();
    assert_eq!(
        read.events.len(),
        5,
        "the stale replica's answer was not taken"
    );
    let metrics = store.metrics().await.unwrap();
    assert_eq!(routed(&metrics, "at_least", "primary"), 1);
    assert_eq!(routed(&metrics, "at_least", &proxied), 0);
    // The stale replica did answer (a read statement besides the primary's): its answer
    // was refused for its head.
    assert!(
        metrics.statements["read"].count >= 2,
        "{:?}",
        metrics.statements
    );
    sql(behind, "SELECT pg_wal_replay_resume()").await;
}

#[actix::test]
async fn a_replica_going_down_and_coming_back_costs_no_read() {
    let Some((primary, replicas)) = cluster(1).await else {
        return;
    };
    let replica = replicas[0].clone();
    let store = EventStore::connect(config(&primary, &replicas))
        .await
        .unwrap();
    let at = store
        .append(vec![support::event("E", &["d"])], None)
        .await
        .unwrap();
    in_rotation(&store, &replica, at.last_position).await;
    let eventual = ReadOptions::default().consistency(Consistency::Eventual);
    store.read(&tagged("d"), eventual).await.unwrap();

    control(&replica, EmbeddedPostgres::stop).await;
    let name = name(&replica);
    for _ in 0..20 {
        let read = store.read(&tagged("d"), eventual).await.unwrap();
        assert_eq!(read.events.len(), 1, "read while the replica is down");
    }
    until(&store, "out of rotation", |m| {
        m.replicas
            .get(&name)
            .is_some_and(|r| !r.reachable && !r.in_rotation)
    })
    .await;
    let down = store.metrics().await.unwrap();
    assert!(down.replica_fallbacks.get("eventual").copied().unwrap_or(0) >= 19);
    assert_eq!(down.reads_failed, 0);

    control(&replica, EmbeddedPostgres::start_again).await;
    in_rotation(&store, &replica, at.last_position).await;
    let served = routed(&store.metrics().await.unwrap(), "eventual", &name);
    for _ in 0..5 {
        store.read(&tagged("d"), eventual).await.unwrap();
    }
    let back = store.metrics().await.unwrap();
    assert_eq!(
        routed(&back, "eventual", &name),
        served + 5,
        "back in rotation"
    );
    assert_eq!(back.reads_failed, 0);
}

/// A course's capacity and the seats taken.
struct Course;

impl Projection for Course {
    type State = (u64, u64);
    fn name(&self) -> &'static str {
        "course"
    }
    fn query(&self) -> Query {
        tagged("course")
    }
    fn initial(&self) -> (u64, u64) {
        (0, 0)
    }
    fn apply(&self, (capacity, taken): &mut (u64, u64), event: &SequencedEvent) {
        match event.event.event_type() {
            "Capacity" => *capacity = event.event.data::<u64>().unwrap_or(0),
            _ => *taken += 1,
        }
    }
}

fn take_seat((capacity, taken): &(u64, u64)) -> Result<Vec<Event>, &'static str> {
    if taken >= capacity {
        return Err("full");
    }
    Ok(vec![Event::new("Seat", json!({})).with_tags(["course"])])
}

#[actix::test]
async fn a_decision_on_a_stale_replica_is_never_wrong() {
    let Some((primary, replicas)) = cluster(1).await else {
        return;
    };
    let replica = &replicas[0];
    // No cache: every decision starts from the replica's state.
    let cfg = config(&primary, &replicas)
        .with_decision_cache(0)
        .with_snapshot_after(0)
        .with_replica_max_lag(Duration::from_secs(60))
        .with_replica_wait(Duration::from_millis(100));
    let store = EventStore::connect(cfg).await.unwrap();
    let other = EventStore::connect(support::config("replicated").with_database_url(primary.url()))
        .await
        .unwrap();
    let capacity = |n: u64| Event::new("Capacity", json!(n)).with_tags(["course"]);
    let seats = |n: usize| (0..n).map(|_| Event::new("Seat", json!({})).with_tags(["course"]));

    // The replica says "full"; the primary has room: the refusal is checked there.
    let at = other
        .append(std::iter::once(capacity(2)).chain(seats(2)).collect(), None)
        .await
        .unwrap();
    in_rotation(&store, replica, at.last_position).await;
    let cached = EventStore::connect(
        config(&primary, &replicas)
            .with_replica_max_lag(Duration::from_secs(60))
            .with_replica_wait(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    in_rotation(&cached, replica, at.last_position).await;
    sql(replica, "SELECT pg_wal_replay_pause()").await;
    other.append(vec![capacity(3)], None).await.unwrap();
    let decided = store
        .decide_with(&Course, Consistency::Eventual, take_seat)
        .await
        .unwrap();
    assert!(
        matches!(decided, Decided::Appended(_)),
        "a seat was free: {decided:?}"
    );

    // The replica says "room"; the primary is full: the condition fails there and the
    // decision is made again on the primary's state.
    sql(replica, "SELECT pg_wal_replay_resume()").await;
    let at = other.append(vec![capacity(10)], None).await.unwrap();
    in_rotation(&store, replica, at.last_position).await;
    sql(replica, "SELECT pg_wal_replay_pause()").await;
    other.append(seats(7).collect(), None).await.unwrap();
    let decided = store
        .decide_with(&Course, Consistency::Eventual, take_seat)
        .await
        .unwrap();
    assert!(matches!(decided, Decided::Rejected("full")), "{decided:?}");
    assert_eq!(
        store.metrics().await.unwrap().decide_retries,
        1,
        "one conflict"
    );
    let state = other.decision_model(&Course).await.unwrap().state;
    assert_eq!(state, (10, 10), "never more seats than capacity");

    // With the cache on, a model read from a replica never goes behind the cached state:
    // the cache holds the primary's model; the paused replica (in rotation: its lag is
    // within a minute) lacks its head.
    let strong = cached.decision_model(&Course).await.unwrap();
    let eventual = cached
        .decision_model_with(&Course, Consistency::Eventual)
        .await
        .unwrap();
    assert_eq!(
        eventual.head(),
        strong.head(),
        "not behind the cached model"
    );
    assert_eq!(eventual.state, strong.state);
    sql(replica, "SELECT pg_wal_replay_resume()").await;
}

/// What one appender saw: the ids of its acknowledged appends (and when), and of
/// those whose outcome it never learnt.
#[derive(Default)]
pub struct Ledger {
    pub acked: Vec<(uuid::Uuid, Instant)>,
    pub unknown: Vec<uuid::Uuid>,
    /// Appends sent more than once (their first attempt failed).
    pub retried: usize,
}

/// Four tasks appending two events at a time until `stop`, each sending an append again
/// (same ids) until its outcome is known (a minute at most); their ledgers.
pub fn appenders(
    store: &EventStore,
    stop: &Rc<std::cell::Cell<bool>>,
) -> Vec<tokio::task::JoinHandle<Ledger>> {
    (0..4)
        .map(|task| {
            let (store, stop) = (store.clone(), stop.clone());
            actix::spawn(async move {
                let mut ledger = Ledger::default();
                let mut n = 0u64;
                while !stop.get() {
                    n += 1;
                    let events: Vec<Event> = (0..2)
                        .map(|k| {
                            Event::new("Written", json!({ "task": task, "n": n, "k": k }))
                                .with_tags([format!("task:{task}")])
                        })
                        .collect();
                    let ids: Vec<_> = events.iter().map(Event::id).collect();
                    // The same events (same ids) again until the outcome is known.
                    let give_up = Instant::now() + Duration::from_secs(60);
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        if attempts == 2 {
                            ledger.retried += 1;
                        }
                        match store.append(events.clone(), None).await {
                            Ok(_) => {
                                let now = Instant::now();
                                ledger.acked.extend(ids.iter().map(|id| (*id, now)));
                                break;
                            }
                            Err(e) if Instant::now() < give_up => {
                                tracing::debug!(%e, "append failed; sending it again");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(_) => {
                                ledger.unknown.extend(&ids);
                                break;
                            }
                        }
                    }
                }
                ledger
            })
        })
        .collect()
}

#[actix::test]
async fn failover_to_a_synchronous_standby_loses_and_duplicates_nothing() {
    let Some((primary, replicas)) = cluster(1).await else {
        return;
    };
    let standby = replicas[0].clone();
    // Synchronous from now on (set after the copy, so the promoted standby does not
    // wait for a standby of its own).
    sql(&primary, "ALTER SYSTEM SET synchronous_standby_names = '*'").await;
    sql(&primary, "SELECT pg_reload_conf()").await;
    let watcher = &support::client_for(&primary.url()).await;
    eventually("a synchronous standby", || async move {
        let sync = "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'";
        watcher.query_one(sync, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;

    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let store = EventStore::connect(
        Config::default()
            .with_database_url(url)
            .with_schema("failover")
            .with_connect_timeout(Duration::from_secs(1))
            // Shorter than the outage: callers see appends of unknown outcome and send
            // them again, besides the batches the writer itself writes again.
            .with_operation_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();

    let stop = Rc::new(std::cell::Cell::new(false));
    let appenders = appenders(&store, &stop);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    control(&primary, EmbeddedPostgres::kill).await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    control(&standby, EmbeddedPostgres::promote).await;
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.set(true);
    let ledgers = support::results(appenders).await;

    let client = support::client_for(&standby.url()).await;
    let rows = client
        .query(
            "SELECT event_id, position FROM failover.events ORDER BY position",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(uuid::Uuid, u64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let accounting = Accounting::of(&ledgers, &stored);
    let after_promotion = ledgers
        .iter()
        .flat_map(|l| l.acked.iter())
        .filter(|(_, at)| *at > promoted)
        .count();
    let retried: usize = ledgers.iter().map(|l| l.retried).sum();
    println!(
        "failover accounting: {accounting}, {after_promotion} acked after the promotion; \
         appends sent again {retried}; promoted {:.2} s after the kill, first ack {:.2} s \
         after the promotion",
        (promoted - killed).as_secs_f64(),
        accounting.first_ack_after(promoted).unwrap_or(f64::NAN),
    );
    accounting.assert_exact();
    assert!(
        after_promotion > 0,
        "the store goes on writing after the failover"
    );
}

/// What a failover did to the appenders' events, from their ledgers and what is stored
/// (ids and positions, in position order).
pub struct Accounting {
    acked: Vec<(uuid::Uuid, Instant)>,
    stored: usize,
    lost: usize,
    duplicated: usize,
    unknown: usize,
    unknown_stored: usize,
    dense: bool,
}

impl Accounting {
    pub fn of(ledgers: &[Ledger], stored: &[(uuid::Uuid, u64)]) -> Self {
        let mut count: HashMap<uuid::Uuid, u32> = HashMap::new();
        for (id, _) in stored {
            *count.entry(*id).or_default() += 1;
        }
        let acked: Vec<(uuid::Uuid, Instant)> = ledgers
            .iter()
            .flat_map(|l| l.acked.iter().copied())
            .collect();
        let unknown: Vec<uuid::Uuid> = ledgers
            .iter()
            .flat_map(|l| l.unknown.iter().copied())
            .collect();
        Accounting {
            lost: acked
                .iter()
                .filter(|(id, _)| !count.contains_key(id))
                .count(),
            duplicated: count.values().filter(|n| **n > 1).count(),
            unknown_stored: unknown.iter().filter(|id| count.contains_key(id)).count(),
            unknown: unknown.len(),
            stored: stored.len(),
            dense: stored
                .iter()
                .zip(1..)
                .all(|((_, p), expected)| *p == expected),
            acked,
        }
    }

    /// Seconds from `since` to the first acknowledgement after it.
    pub fn first_ack_after(&self, since: Instant) -> Option<f64> {
        self.acked
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at > since)
            .min()
            .map(|at| (at - since).as_secs_f64())
    }

    /// Nothing acknowledged lost, nothing stored twice or unasked, positions dense.
    pub fn assert_exact(&self) {
        assert_eq!(
            self.lost, 0,
            "every acknowledged append survives the failover"
        );
        assert_eq!(self.duplicated, 0, "no event is stored twice");
        assert!(
            self.dense,
            "positions stay dense and in order across the failover"
        );
        assert_eq!(
            self.stored,
            self.acked.len() + self.unknown_stored,
            "nothing stored that nobody appended"
        );
    }
}

impl std::fmt::Display for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {} events, stored {}, lost {}, duplicated {}, outcome unknown {} (of which \
             stored {})",
            self.acked.len(),
            self.stored,
            self.lost,
            self.duplicated,
            self.unknown,
            self.unknown_stored
        )
    }
}
