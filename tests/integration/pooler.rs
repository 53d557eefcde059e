//! Behind a real PgBouncer (Debian's `pgbouncer`, started by the test on a free
//! loopback port in front of the test server). Session mode: everything works, and a
//! departed holder's lease is released by the pooler's `DISCARD ALL`, proven by a
//! takeover. Transaction mode with `pooler_mode = "transaction"`: the serial-order
//! checker and 32 deciders stay exact through a pool smaller than the store's
//! connections; what needs a session is refused with a typed error, or goes to
//! `direct_url`. Without the setting, the same pooler breaks the store (the
//! statements it would keep on a session are gone at the next transaction).
//!
//! Each test skips, saying so, when `pgbouncer` is not installed (`.ci/run` installs it).

use std::time::Duration;

use dcb_store::{
    Config, Error, EventBatch, EventStore, PoolerMode, Query, QueryItem, ReadOptions,
    SubscribeOptions, Subscription,
};
use dcb_store_testkit::{PgBouncer, PoolMode};

use crate::support;

/// PgBouncer in `mode` in front of the test server, with at most `pool_size` server
/// connections; `None` (the test skips) when it is not installed.
async fn bouncer(mode: PoolMode, pool_size: u32) -> Option<PgBouncer> {
    if PgBouncer::binary().is_none() {
        eprintln!("skipped: pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)");
        return None;
    }
    let (host, port) = support::server_address();
    let bouncer = tokio::task::spawn_blocking(move || {
        PgBouncer::start(&host, port, mode, pool_size, &["postgres", "root"])
    })
    .await
    .unwrap()
    .expect("start pgbouncer");
    Some(bouncer)
}

/// The test store's configuration on `schema`, through `bouncer`.
fn through(bouncer: &PgBouncer, schema: &str, mode: PoolerMode) -> Config {
    support::config(schema)
        .with_database_url(support::url_via(bouncer.port()))
        .with_pooler_mode(mode)
}

/// The next batch of `sub`, within 10 s; `what` is what its arrival proves.
async fn next_batch(sub: &mut Subscription, what: &str) -> EventBatch {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect(what)
        .expect("subscriptions do not end")
        .expect("a batch")
}

fn tagged(tag: &str) -> Query {
    Query::new([QueryItem::new().tags([tag])])
}

#[actix::test]
async fn in_session_mode_everything_works_and_a_departed_holders_lease_is_released() {
    let Some(bouncer) = bouncer(PoolMode::Session, 20).await else {
        return;
    };
    let schema = support::unique_schema("pool_session");
    // LISTEN must do the waking: the follower's poll is far slower than the wait below.
    let config = through(&bouncer, &schema, PoolerMode::Session)
        .with_subscription_poll_interval(Duration::from_secs(60));
    let holder = EventStore::connect(config.clone()).await.unwrap();
    let standby = EventStore::connect(config).await.unwrap();
    let direct = EventStore::connect(support::config(&schema)).await.unwrap();

    let appended = holder
        .append(vec![support::event("E", &["k:1"])], None)
        .await
        .unwrap();
    let read = holder
        .read(&tagged("k:1"), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    assert_eq!(read.events[0].position, appended.first_position);

    // A live subscription through the pooler is woken by another process's commit.
    let mut live = holder
        .subscribe(tagged("k:2"), SubscribeOptions::default())
        .await
        .unwrap();
    assert!(live.next().await.unwrap().unwrap().caught_up);
    direct
        .append(vec![support::event("E", &["k:2"])], None)
        .await
        .unwrap();
    let woken = next_batch(
        &mut live,
        "NOTIFY reached the LISTEN connection through the pooler",
    )
    .await;
    assert_eq!(woken.events.len(), 1);

    // A durable consumer: the holder's lease lives on a pooled session; when the
    // holder's process goes, PgBouncer's DISCARD ALL releases it and the standby
    // takes over from the checkpoint.
    let options = SubscribeOptions::default()
        .consumer("pooled-1")
        .standby_poll(Duration::from_millis(50));
    let mut first = holder
        .subscribe(tagged("k:1"), options.clone())
        .await
        .unwrap();
    let batch = first.next().await.unwrap().unwrap();
    assert_eq!(batch.events.len(), 1);
    first.ack(appended.first_position).await.unwrap();
    let mut second = standby.subscribe(tagged("k:1"), options).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), second.next())
            .await
            .is_err(),
        "the standby waits while the holder lives"
    );
    drop(first);
    drop(live);
    drop(holder);
    direct
        .append(vec![support::event("E", &["k:1"])], None)
        .await
        .unwrap();
    let taken = next_batch(
        &mut second,
        "the standby takes over once the pooler reset the holder's session",
    )
    .await;
    let positions: Vec<u64> = taken.events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        vec![3],
        "from the stored checkpoint, nothing twice"
    );
}

#[actix::test]
async fn in_transaction_mode_appends_conditions_and_reads_hold_the_serial_order() {
    // Fewer server connections than the three stores' writers and readers: every
    // transaction may land on a session another connection used before.
    let Some(bouncer) = bouncer(PoolMode::Transaction, 3).await else {
        return;
    };
    let schema = support::unique_schema("pool_tx_checker");
    let config = through(&bouncer, &schema, PoolerMode::Transaction);
    crate::checker::serial_order(&schema, vec![config; 3], 4).await;
}

#[actix::test]
async fn in_transaction_mode_decisions_keep_every_invariant() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 3).await else {
        return;
    };
    let schema = support::unique_schema("pool_tx_decide");
    let config = through(&bouncer, &schema, PoolerMode::Transaction);
    crate::decisions::enrolment_invariants(config).await;
}

#[actix::test]
async fn in_transaction_mode_what_needs_a_session_is_refused_or_goes_to_the_direct_url() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 3).await else {
        return;
    };
    let schema = support::unique_schema("pool_tx_session");
    let pooled = EventStore::connect(through(&bouncer, &schema, PoolerMode::Transaction))
        .await
        .unwrap();
    for options in [
        SubscribeOptions::default(),
        SubscribeOptions::default().consumer("needs-lease"),
    ] {
        let refused = pooled.subscribe(tagged("k:1"), options).await.err();
        assert!(
            matches!(refused, Some(Error::NeedsSession { .. })),
            "{refused:?}"
        );
        let message = refused.unwrap().to_string();
        assert!(message.contains("direct_url"), "{message}");
    }
    // Nothing was harmed: appends and the consumer's administration still work.
    pooled
        .append(vec![support::event("E", &["k:1"])], None)
        .await
        .unwrap();
    assert_eq!(pooled.checkpoint("needs-lease").await.unwrap(), None);

    // With a direct URL, LISTEN and the lease use it; everything else the pooler.
    let config = through(&bouncer, &schema, PoolerMode::Transaction)
        .with_direct_url(support::database_url())
        .with_subscription_poll_interval(Duration::from_secs(60));
    let store = EventStore::connect(config).await.unwrap();
    let mut consumer = store
        .subscribe(
            tagged("k:1"),
            SubscribeOptions::default().consumer("direct-1"),
        )
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    assert_eq!(first.events.len(), 1);
    consumer.ack(first.events[0].position).await.unwrap();
    assert_eq!(store.checkpoint("direct-1").await.unwrap(), Some(1));
    // The pooled writer asks whether anyone listens at most every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    pooled
        .append(vec![support::event("E", &["k:1"])], None)
        .await
        .unwrap();
    let woken = next_batch(&mut consumer, "woken through the direct LISTEN connection").await;
    assert_eq!(woken.events[0].position, 2);
}

#[actix::test]
async fn without_the_setting_a_transaction_mode_pooler_breaks_the_store() {
    // The test that the tests above could fail: the same pooler, `pooler_mode` left
    // at `none`: a statement prepared in one transaction's session is run in another's.
    let Some(bouncer) = bouncer(PoolMode::Transaction, 4).await else {
        return;
    };
    let schema = support::unique_schema("pool_tx_none");
    let config = through(&bouncer, &schema, PoolerMode::None);
    let stores = [
        EventStore::connect(config.clone()).await.unwrap(),
        EventStore::connect(config).await.unwrap(),
    ];
    let tasks = (0..16).map(|t| {
        let store = stores[t % 2].clone();
        actix::spawn(async move {
            for i in 0..10 {
                let tag = format!("k:{t}:{i}");
                store
                    .append(vec![support::event("E", &[&tag])], None)
                    .await?;
                store.read(&tagged(&tag), ReadOptions::default()).await?;
            }
            Ok::<_, Error>(())
        })
    });
    let failures: Vec<Error> = support::results(tasks.collect())
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        failures
            .iter()
            .any(|e| e.report().contains("prepared statement")),
        "named statements do not survive a transaction-mode pooler: {:?}",
        failures.iter().map(Error::report).collect::<Vec<_>>()
    );
}
