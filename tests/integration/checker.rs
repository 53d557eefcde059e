//! The serial-order checker: several stores on one schema (as several processes)
//! make random conditional and unconditional appends with every query shape and the
//! edge inputs of `generate`, forced into shared, multi-round batches (a table lock
//! held from outside makes appends queue behind an in-flight batch). Afterwards the
//! DCB promise is checked for every append against the store's own reads.
//!
//! `cargo test` runs a short version. A long one:
//! `DCB_CHECKER_ROUNDS=200 cargo test --release --test integration checker -- --nocapture`
//! (`DCB_SEED=<n>` repeats a run).

use std::time::Duration;

use dcb_store::{AppendCondition, AppendResult, Error, Event, EventStore, Query, ReadOptions};
use futures_util::future::join_all;
use rand::Rng;

use crate::exactness::assert_promise;
use crate::generate::Gen;
use crate::support;

/// One append as made, with what the store answered.
struct Made {
    events: Vec<Event>,
    condition: Option<AppendCondition>,
    result: dcb_store::Result<AppendResult>,
    /// The store's head right after the answer (bounds what a refusal can have seen).
    head_then: Option<u64>,
}

async fn head(store: &EventStore) -> Option<u64> {
    store
        .read(&Query::all(), ReadOptions::default().backwards().limit(1))
        .await
        .unwrap()
        .head
}

#[actix::test]
async fn every_decision_of_several_processes_holds_in_the_serial_order() {
    let rounds: usize = std::env::var("DCB_CHECKER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let schema = support::unique_schema("checker");
    serial_order(&schema, vec![support::config(&schema); 3], rounds).await;
}

/// Runs the checker on stores made from `configs` (all on `schema`, which the checker
/// locks from outside through the test server's own URL).
pub async fn serial_order(schema: &str, configs: Vec<dcb_store::Config>, rounds: usize) {
    let mut stores = Vec::new();
    for config in configs {
        stores.push(EventStore::connect(config).await.unwrap());
    }
    let mut gen = Gen::new();
    let seed = gen.seed();
    let mut made: Vec<Made> = Vec::new();
    for _ in 0..rounds {
        // Decisions are based on reads made before the batch, as real deciders' are.
        let mut planned = Vec::new();
        for i in 0..48 {
            let store = stores[i % stores.len()].clone();
            let events: Vec<Event> = (0..gen.rng().gen_range(1..=3))
                .map(|_| gen.event())
                .collect();
            let condition = if gen.rng().gen_bool(0.75) {
                let query = gen.query();
                let seen = store.read(&query, ReadOptions::default()).await.unwrap();
                let after = match (seen.head, gen.rng().gen_range(0..4)) {
                    (Some(head), 0) => Some(gen.rng().gen_range(0..=head)),
                    (head, _) => head,
                };
                Some(AppendCondition::new(query, after))
            } else {
                None
            };
            planned.push((store, events, condition));
        }
        let blocker = support::lock_events(schema, "EXCLUSIVE").await;
        let calls = planned.into_iter().map(|(store, events, condition)| {
            actix::spawn(async move {
                let result = store.append(events.clone(), condition.clone()).await;
                let head_then = head(&store).await;
                Made {
                    events,
                    condition,
                    result,
                    head_then,
                }
            })
        });
        let calls = actix::spawn(join_all(calls));
        tokio::time::sleep(Duration::from_millis(150)).await;
        blocker.batch_execute("COMMIT").await.unwrap();
        for call in calls.await.unwrap() {
            made.push(call.unwrap());
        }
    }

    let all = stores[0]
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap()
        .events;
    let (mut conditional, mut refused) = (0, 0);
    for m in &made {
        match (&m.result, &m.condition) {
            (Ok(r), _) => {
                // Stored exactly where the store said, in order.
                let at: Vec<_> = all
                    .iter()
                    .filter(|e| (r.first_position..=r.last_position).contains(&e.position))
                    .map(|e| e.event.id())
                    .collect();
                let ids: Vec<_> = m.events.iter().map(Event::id).collect();
                assert_eq!(at, ids, "seed {seed}: events not stored where acknowledged");
            }
            (Err(Error::ConditionFailed { .. }), Some(_)) => refused += 1,
            (Err(e), _) => panic!("seed {seed}: unexpected error {e}"),
        }
        if let Some(condition) = &m.condition {
            conditional += 1;
            assert_promise(&stores[0], condition, &m.result, m.head_then).await;
        }
    }
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    let dense: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        positions, dense,
        "seed {seed}: positions are dense and unique"
    );
    let (mut batches, mut deferred, mut largest) = (0, 0, 0);
    for store in &stores {
        let m = store.metrics().await.unwrap();
        batches += m.batches;
        deferred += m.deferred_rounds;
        largest = largest.max(m.batch_appends.max);
    }
    println!(
        "checker (seed {seed}): {} appends ({conditional} conditional, {refused} refused), \
         {} events, {batches} batches (largest {largest} appends), {deferred} extra rounds",
        made.len(),
        all.len()
    );
    assert!(deferred > 0, "the run exercised multi-round batches");
}
