//! Faults the store must survive: killed connections, ambiguous commits, a server
//! restart, a stuck database, overload and shutdown. Each load test prints the
//! acknowledged-vs-stored accounting; lost and duplicated must be 0.

use dcb_store_testkit::ServerControls;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use dcb_store::{AppendOptions, Error, Event, EventStore, Query, QueryItem, ReadOptions};
use futures_util::future::join_all;
use uuid::Uuid;

use crate::appends::Stall;
use crate::support;

/// What callers were told, per event id.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Uuid, u64>,
    failed_not_written: Vec<Uuid>,
    failed_maybe_written: Vec<Uuid>,
}

/// Runs `writers` callers appending one event each, `per_writer` times or until `stop`.
async fn load(
    store: &EventStore,
    writers: usize,
    per_writer: usize,
    ledger: Rc<RefCell<Ledger>>,
    stop: Rc<std::cell::Cell<bool>>,
) {
    let calls = (0..writers).map(|w| {
        let store = store.clone();
        let ledger = ledger.clone();
        let stop = stop.clone();
        async move {
            for i in 0..per_writer {
                if stop.get() {
                    break;
                }
                let id = Uuid::new_v4();
                let event = Event::new("Load", serde_json::json!({"writer": w, "i": i}))
                    .with_id(id)
                    .with_tags(["load"]);
                match store.append(vec![event], None).await {
                    Ok(r) => {
                        ledger.borrow_mut().acked.insert(id, r.first_position);
                    }
                    Err(e) if e.may_have_been_written() => {
                        ledger.borrow_mut().failed_maybe_written.push(id)
                    }
                    Err(Error::InvalidInput { reason }) => panic!("valid input refused: {reason}"),
                    Err(_) => ledger.borrow_mut().failed_not_written.push(id),
                }
            }
        }
    });
    join_all(calls).await;
}

/// After the load: checks that the store works again, then the ledger against the
/// table, and prints the accounting.
async fn account(what: &str, store: &EventStore, ledger: Rc<RefCell<Ledger>>) {
    store
        .append(vec![support::event("After", &["after"])], None)
        .await
        .expect("the store reconnects by itself");
    let ledger = &Rc::try_unwrap(ledger)
        .ok()
        .expect("load is done")
        .into_inner();
    let stored = store
        .read(
            &Query::new([QueryItem::new().tags(["load"])]),
            ReadOptions::default(),
        )
        .await
        .expect("read back");
    let mut count: HashMap<Uuid, Vec<u64>> = HashMap::new();
    for e in &stored.events {
        count.entry(e.event.id()).or_default().push(e.position);
    }
    let lost = ledger
        .acked
        .keys()
        .filter(|id| !count.contains_key(id))
        .count();
    let duplicated = count.values().filter(|p| p.len() > 1).count();
    let moved = ledger
        .acked
        .iter()
        .filter(|(id, pos)| count.get(id).is_some_and(|p| p[0] != **pos))
        .count();
    let written_though_refused = ledger
        .failed_not_written
        .iter()
        .filter(|id| count.contains_key(id))
        .count();
    println!(
        "{what}: acked {}, stored {}, lost {lost}, duplicated {duplicated}, failed (not written) {}, failed (may have been written) {}",
        ledger.acked.len(),
        stored.events.len(),
        ledger.failed_not_written.len(),
        ledger.failed_maybe_written.len()
    );
    assert_eq!(lost, 0, "{what}: acknowledged events lost");
    assert_eq!(duplicated, 0, "{what}: events stored twice");
    assert_eq!(
        moved, 0,
        "{what}: acknowledged positions differ from stored ones"
    );
    assert_eq!(
        written_though_refused, 0,
        "{what}: an append reported as not written was stored"
    );
}

#[actix::test]
async fn acknowledged_appends_survive_connections_killed_mid_write() {
    let schema = support::unique_schema("kill");
    let name = schema.clone();
    let url = support::url_with_application_name(support::database_url(), &name);
    let store = EventStore::connect(support::config(&schema).with_database_url(url))
        .await
        .unwrap();
    let admin = support::client().await;
    let ledger = Rc::new(RefCell::new(Ledger::default()));
    let killer = actix::spawn(async move {
        let mut killed = 0u64;
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let rows = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            killed += rows.len() as u64;
        }
        killed
    });
    load(&store, 16, 60, ledger.clone(), Rc::default()).await;
    let killed = killer.await.unwrap();
    assert!(killed > 0, "the test killed no backend");
    assert!(
        ledger.borrow().acked.len() > 16 * 60 / 2,
        "most appends succeed despite the kills"
    );
    account(
        &format!("kill ({killed} backends terminated)"),
        &store,
        ledger,
    )
    .await;
}

#[actix::test]
async fn a_retried_append_returns_its_original_positions() {
    let store = support::store("retry").await;
    let events = vec![support::event("E", &["r"]), support::event("E", &["r"])];
    let first = store.append(events.clone(), None).await.unwrap();
    store
        .append(vec![support::event("Other", &[])], None)
        .await
        .unwrap();
    let guard = dcb_store::AppendCondition::new(Query::new([QueryItem::new().tags(["r"])]), None);
    // The same events again, even with a condition their own first write now fails.
    let again = store.append(events.clone(), Some(guard)).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        3
    );
    // The same id with other content is refused, naming the id.
    let changed = Event::new("E", serde_json::json!({"changed": true}))
        .with_id(events[0].id())
        .with_tags(["r"]);
    match store.append(vec![changed], None).await {
        Err(Error::DuplicateEventId { id }) => assert_eq!(id, events[0].id()),
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    // Only part of an append stored before: refused too, nothing written.
    let partial = vec![events[0].clone(), support::event("E", &["r"])];
    assert!(matches!(
        store.append(partial, None).await,
        Err(Error::DuplicateEventId { .. })
    ));
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        3
    );
}

#[actix::test]
async fn the_store_recovers_from_a_server_restart_under_load() {
    let server = support::throwaway_server().await;
    let store = EventStore::connect(
        dcb_store::Config::default()
            .with_database_url(server.url())
            .with_schema("restart")
            .with_operation_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let ledger = Rc::new(RefCell::new(Ledger::default()));
    let stop: Rc<std::cell::Cell<bool>> = Rc::default();
    let restarter = {
        let server = server.clone();
        let (stop, ledger) = (stop.clone(), ledger.clone());
        actix::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = ledger.borrow().acked.len();
            tokio::task::spawn_blocking(move || server.restart())
                .await
                .unwrap()
                .unwrap();
            // Keep the load going until appends succeed again after the restart.
            while ledger.borrow().acked.len() < before + 200 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.set(true);
            before
        })
    };
    load(&store, 8, 100_000, ledger.clone(), stop).await;
    let acked_before_restart = restarter.await.unwrap();
    assert!(acked_before_restart > 0, "the restart happened under load");
    account("restart", &store, ledger).await;
}

#[actix::test]
async fn a_stuck_statement_times_out_and_the_store_recovers() {
    let schema = support::unique_schema("stuck");
    let store = EventStore::connect(
        support::config(&schema).with_operation_timeout(Duration::from_millis(800)),
    )
    .await
    .unwrap();
    store
        .append(vec![support::event("E", &["t"])], None)
        .await
        .unwrap();
    let admin = support::lock_events(&schema, "ACCESS EXCLUSIVE").await;
    let append = store.append(vec![support::event("E", &["t"])], None).await;
    assert!(
        matches!(
            append,
            Err(Error::Timeout {
                may_have_been_written: true,
                ..
            })
        ),
        "{append:?}"
    );
    let read = store.read(&Query::all(), ReadOptions::default()).await;
    assert!(matches!(read, Err(Error::Timeout { .. })), "{read:?}");
    // A caller's own deadline, shorter than the store's.
    let started = std::time::Instant::now();
    let quick = store
        .read(
            &Query::all(),
            ReadOptions::default().timeout(Duration::from_millis(100)),
        )
        .await;
    assert!(matches!(quick, Err(Error::Timeout { .. })), "{quick:?}");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "the caller's deadline applies"
    );
    let quick = store
        .append_with(
            vec![support::event("E", &["t"])],
            None,
            AppendOptions::default().timeout(Duration::from_millis(100)),
        )
        .await;
    assert!(
        matches!(
            quick,
            Err(Error::Timeout {
                may_have_been_written: true,
                ..
            })
        ),
        "{quick:?}"
    );
    admin.batch_execute("ROLLBACK").await.unwrap();
    // Not wedged: the next operations succeed.
    store
        .append(vec![support::event("E", &["t"])], None)
        .await
        .unwrap();
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    assert!(all.events.len() >= 2);
    let m = store.metrics().await.unwrap();
    assert!(m.timeouts >= 2, "{m:?}");
}

#[actix::test]
async fn batches_that_time_out_pipelined_leave_no_statement_waiting_on_the_server() {
    let schema = support::unique_schema("stuck_pipelined");
    let name = format!("dcb_stuck_pipelined_{}", std::process::id());
    let timeout = Duration::from_millis(1_000);
    let store = EventStore::connect(
        support::config(&schema)
            .with_database_url(support::url_with_application_name(
                support::database_url(),
                &name,
            ))
            .with_operation_timeout(timeout),
    )
    .await
    .unwrap();
    store
        .append(vec![support::event("E", &["t"])], None)
        .await
        .unwrap();
    let admin = support::lock_events(&schema, "EXCLUSIVE").await;
    let started = std::time::Instant::now();
    // A, then B pipelined behind it on the writer's connection, both stuck on the lock.
    let (a, b) = (support::event("A", &[]), support::event("B", &[]));
    let first = actix::spawn({
        let (store, a) = (store.clone(), a.clone());
        async move { store.append(vec![a], None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = actix::spawn({
        let (store, b) = (store.clone(), b.clone());
        async move { store.append(vec![b], None).await }
    });
    for outcome in support::results(vec![first, second]).await {
        assert!(
            matches!(
                outcome,
                Err(Error::Timeout {
                    may_have_been_written: true,
                    ..
                })
            ),
            "{outcome:?}"
        );
    }
    // A cancel request hits whatever the connection runs; the one sent at A's deadline
    // could hit B, so none is. B's cancel at its deadline ends A's wait, and the
    // server's statement_timeout (1.5 × the timeout) ends B's, which began about then:
    // nothing of the store still waits.
    tokio::time::sleep((timeout * 7 / 2).saturating_sub(started.elapsed())).await;
    let waiting: i64 = support::client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        waiting, 0,
        "a timed-out statement still waits on the server"
    );
    admin.batch_execute("ROLLBACK").await.unwrap();
    // The outcomes were unknown; the same events again settle them, stored once.
    store.append(vec![a.clone()], None).await.unwrap();
    store.append(vec![b.clone()], None).await.unwrap();
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    for id in [a.id(), b.id()] {
        assert_eq!(all.events.iter().filter(|e| e.event.id() == id).count(), 1);
    }
}

#[actix::test]
async fn overload_pushes_back_and_throughput_recovers() {
    let schema = support::unique_schema("overload");
    let store = EventStore::connect(support::config(&schema).with_writer_mailbox(8))
        .await
        .unwrap();
    let stall = Stall::start(&store).await;
    let attempts: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            actix::spawn(async move {
                store
                    .append_with(
                        vec![support::event("E", &["o"])],
                        None,
                        AppendOptions::default().fail_when_busy(),
                    )
                    .await
            })
        })
        .collect();
    stall.release().await;
    let results: Vec<_> = support::results(attempts).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Overloaded)))
        .count();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(refused > 0, "a full mailbox pushes back");
    assert_eq!(refused + accepted, 200, "{results:?}");
    // Every attempt was made while the writer was stalled: it held at most
    // `writer_mailbox` appends (the stalled one included), whatever it had read.
    assert!(
        accepted < 8,
        "{accepted} accepted while the writer was stalled"
    );
    // Throughput recovers once the load drops.
    for _ in 0..20 {
        store
            .append_with(
                vec![support::event("E", &["o"])],
                None,
                AppendOptions::default().fail_when_busy(),
            )
            .await
            .unwrap();
    }
    let stored = store
        .read(
            &Query::new([QueryItem::new().tags(["o"])]),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(stored.events.len(), accepted + 20);
}

#[actix::test]
async fn shutdown_answers_every_pending_append() {
    let store = support::store("shutdown").await;
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            actix::spawn(async move {
                store
                    .append(vec![support::event("E", &[&format!("s:{i}")])], None)
                    .await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    store.shutdown().await;
    let late = store.append(vec![support::event("Late", &[])], None).await;
    assert!(matches!(late, Err(Error::Closed { .. })), "{late:?}");
    let results: Vec<_> = support::results(calls).await;
    let written = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(Error::Closed { .. }))),
        "{results:?}"
    );
    let stored = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        stored.events.len(),
        written,
        "exactly the acknowledged appends are stored"
    );
}
