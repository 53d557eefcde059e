//! Failover under a real HA manager: a `pg_auto_failover` formation (monitor, primary,
//! synchronous secondary, from Debian's packages, on loopback ports) whose primary is
//! killed while four appenders and a durable consumer run. The store uses the URL the
//! formation gives applications (every node, `target_session_attrs=read-write`).
//! Afterwards: no acknowledged append lost, none stored twice, positions dense, and the
//! consumer skipped no position and saw again only what it had not acknowledged.
//! Skips, saying so, when pg_auto_failover is not installed (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dcb_store::{Config, EventStore, Query, QueryItem, ReadOptions, SubscribeOptions};
use dcb_store_testkit::Formation;

use crate::replicas::{appenders, Accounting};
use crate::support;

#[actix::test]
async fn failover_under_pg_auto_failover_loses_duplicates_and_skips_nothing() {
    if Formation::binaries().is_none() {
        eprintln!(
            "skipped: pg_auto_failover is not installed (apt-get install pg-auto-failover-cli \
             postgresql-15-auto-failover; .ci/run does)"
        );
        return;
    }
    let mut formation = tokio::task::spawn_blocking(Formation::start)
        .await
        .unwrap()
        .expect("a pg_auto_failover formation");
    // The formation's URI names the nodes; the role is the test's.
    let url = formation.uri().expect("the formation's URI").replacen(
        "postgres://",
        "postgres://postgres@",
        1,
    );
    let config = Config::default()
        .with_database_url(url.clone())
        .with_schema("ha")
        .with_connect_timeout(Duration::from_secs(1))
        .with_operation_timeout(Duration::from_secs(2));
    let store = EventStore::connect(config.clone()).await.unwrap();
    let consumer_store = EventStore::connect(config).await.unwrap();

    let stop = Rc::new(std::cell::Cell::new(false));
    let appenders = appenders(&store, &stop);
    // The consumer acknowledges each batch after "handling" it (recording it).
    let consumer = {
        let stop = stop.clone();
        actix::spawn(async move {
            let mut sub = consumer_store
                .subscribe(
                    Query::new([QueryItem::new().types(["Written"])]),
                    SubscribeOptions::default()
                        .consumer("ha-1")
                        .standby_poll(Duration::from_millis(100)),
                )
                .await
                .unwrap();
            let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
            let mut acked_up_to = 0u64;
            let mut seen_again_acked = 0usize;
            let mut quiet_since: Option<Instant> = None;
            loop {
                match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
                    Ok(Some(Ok(batch))) => {
                        quiet_since = None;
                        for e in &batch.events {
                            if e.position <= acked_up_to {
                                seen_again_acked += 1;
                            }
                            *seen.entry(e.position).or_default() += 1;
                        }
                        if let Some(last) = batch.events.last() {
                            if sub.ack(last.position).await.is_ok() {
                                acked_up_to = acked_up_to.max(last.position);
                            }
                        }
                    }
                    Ok(Some(Err(_))) | Err(_) => {
                        // Errors while the lease is lost are retried by the subscription.
                        if stop.get() {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_secs(3) {
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                }
            }
            (seen, seen_again_acked)
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_node = tokio::task::spawn_blocking(move || {
        let killed = formation.kill_primary().map(|name| (name, Instant::now()));
        (formation, killed)
    });
    let (formation, killed) = killed_node.await.unwrap();
    let (killed_node, killed) = killed.expect("kill the primary");
    // The formation promotes the secondary on its own; wait until the monitor says so.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let states = formation.states().unwrap_or_default();
        let promoted = states.iter().any(|(node, state)| {
            *node != killed_node && (state == "primary" || state == "wait_primary")
        });
        if promoted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no promotion within 90 s: {states:?}\n{}",
            formation.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.set(true);
    let ledgers = support::results(appenders).await;
    let (seen, seen_again_acked) = consumer.await.unwrap();

    let all = store
        .read(
            &Query::new([QueryItem::new().types(["Written"])]),
            ReadOptions::default(),
        )
        .await
        .unwrap()
        .events;
    let stored: Vec<(uuid::Uuid, u64)> = all.iter().map(|e| (e.event.id(), e.position)).collect();
    let accounting = Accounting::of(&ledgers, &stored);
    let first_ack_after = accounting.first_ack_after(killed);
    let skipped = stored.iter().filter(|(_, p)| !seen.contains_key(p)).count();
    let seen_twice = seen.values().filter(|n| **n > 1).count();
    println!(
        "pg_auto_failover accounting: {accounting}; consumer saw {} positions, skipped \
         {skipped}, saw {seen_twice} twice ({seen_again_acked} of them already acknowledged); \
         first ack {:.2} s after the primary was killed",
        seen.len(),
        first_ack_after.unwrap_or(f64::NAN),
    );
    accounting.assert_exact();
    assert!(
        first_ack_after.is_some(),
        "the store goes on writing after the failover"
    );
    assert_eq!(skipped, 0, "the consumer skips no position");
    assert_eq!(
        seen_again_acked, 0,
        "nothing acknowledged is delivered again"
    );
    drop(formation);
}
