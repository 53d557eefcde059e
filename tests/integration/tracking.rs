//! Tracked appends (`AppendOptions::tracking`): the append and the consumer's
//! checkpoint move together or not at all; refused at and below the checkpoint;
//! composed with conditions, retries by id, batches and a consumer's own acks.
//!
//! Longer than most files because each way a tracked append composes with the rest of
//! an append (conditions, ids, batches, acks, races, lost answers) is a test of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_store::{
    AppendCondition, AppendOptions, Error, Event, EventStore, Query, QueryItem, ReadOptions,
    SubscribeOptions,
};

use crate::appends::Stall;
use crate::support;

fn tracked(consumer: &str, position: u64) -> AppendOptions {
    AppendOptions::default().tracking(consumer, position)
}

async fn count(store: &EventStore, tag: &str) -> usize {
    store
        .read(
            &Query::new([QueryItem::new().tags([tag])]),
            ReadOptions::default(),
        )
        .await
        .unwrap()
        .events
        .len()
}

#[actix::test]
async fn a_tracked_append_is_refused_at_and_below_the_checkpoint_and_accepted_above() {
    let store = support::store("tracked").await;
    assert_eq!(store.checkpoint("c").await.unwrap(), None);
    let first = store
        .append_with(vec![support::event("R", &["r"])], None, tracked("c", 5))
        .await
        .unwrap();
    assert_eq!((first.first_position, first.last_position), (1, 1));
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(5));
    for position in [1, 4, 5] {
        let refused = store
            .append_with(
                vec![support::event("R", &["r"])],
                None,
                tracked("c", position),
            )
            .await
            .unwrap_err();
        match refused {
            Error::AlreadyTracked {
                consumer,
                checkpoint,
            } => assert_eq!((consumer.as_str(), checkpoint), ("c", 5)),
            other => panic!("expected AlreadyTracked, got {other:?}"),
        }
        assert_eq!(refused_kind(position, &store).await, "already_tracked");
    }
    assert_eq!(count(&store, "r").await, 1, "refused appends wrote nothing");
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(5));
    store
        .append_with(vec![support::event("R", &["r"])], None, tracked("c", 6))
        .await
        .unwrap();
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(6));
    assert_eq!(count(&store, "r").await, 2);
    // Another consumer's checkpoint is its own.
    store
        .append_with(vec![support::event("R", &["r"])], None, tracked("d", 1))
        .await
        .unwrap();
    assert_eq!(store.checkpoint("d").await.unwrap(), Some(1));
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(6));
}

async fn refused_kind(position: u64, store: &EventStore) -> &'static str {
    store
        .append_with(
            vec![support::event("R", &["r"])],
            None,
            tracked("c", position),
        )
        .await
        .unwrap_err()
        .kind()
}

#[actix::test]
async fn a_tracking_only_append_moves_the_checkpoint_and_nothing_else() {
    let store = support::store("tracked_empty").await;
    store
        .append(
            vec![support::event("E", &[]), support::event("E", &[])],
            None,
        )
        .await
        .unwrap();
    let moved = store
        .append_with(Vec::new(), None, tracked("c", 2))
        .await
        .unwrap();
    assert_eq!(
        (moved.first_position, moved.last_position),
        (3, 2),
        "the empty range after the head"
    );
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(2));
    let again = store
        .append_with(Vec::new(), None, tracked("c", 2))
        .await
        .unwrap_err();
    assert!(matches!(again, Error::AlreadyTracked { checkpoint: 2, .. }));
    let head = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(head.events.len(), 2);
    // Without tracking, an empty append is still refused.
    let empty = store.append(Vec::new(), None).await.unwrap_err();
    assert!(matches!(empty, Error::InvalidInput { .. }));
    // Position 0 and names a consumer may not have are refused before any batch.
    for bad in [tracked("c", 0), tracked("", 1), tracked("c", u64::MAX)] {
        let error = store.append_with(Vec::new(), None, bad).await.unwrap_err();
        assert!(matches!(error, Error::InvalidInput { .. }), "{error:?}");
    }
}

#[actix::test]
async fn tracking_and_a_condition_must_both_hold_and_a_double_failure_reports_the_condition() {
    let store = support::store("tracked_cond").await;
    let taken = Query::new([QueryItem::new().tags(["seat"])]);
    let cond = || Some(AppendCondition::new(taken.clone(), None));
    store
        .append_with(
            vec![support::event("S", &["seat"])],
            cond(),
            tracked("c", 3),
        )
        .await
        .unwrap();
    // Condition fails, tracking would pass: the condition, and the checkpoint stays.
    let error = store
        .append_with(
            vec![support::event("S", &["seat"])],
            cond(),
            tracked("c", 9),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ConditionFailed { .. }), "{error:?}");
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(3));
    // Both fail: the condition is reported.
    let error = store
        .append_with(
            vec![support::event("S", &["seat"])],
            cond(),
            tracked("c", 2),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ConditionFailed { .. }), "{error:?}");
    // The condition holds, tracking fails.
    let free = Some(AppendCondition::new(
        Query::new([QueryItem::new().tags(["other"])]),
        None,
    ));
    let error = store
        .append_with(
            vec![support::event("S", &["x"])],
            free.clone(),
            tracked("c", 3),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::AlreadyTracked { checkpoint: 3, .. }));
    store
        .append_with(vec![support::event("S", &["x"])], free, tracked("c", 4))
        .await
        .unwrap();
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(4));
    assert_eq!(count(&store, "x").await, 1);
}

#[actix::test]
async fn a_retried_tracked_append_returns_its_original_result() {
    let store = support::store("tracked_retry").await;
    let events = vec![support::event("R", &["r"]), support::event("R", &["r"])];
    let first = store
        .append_with(events.clone(), None, tracked("c", 10))
        .await
        .unwrap();
    let retry = store
        .append_with(events.clone(), None, tracked("c", 10))
        .await
        .unwrap();
    assert_eq!(retry, first);
    // A retry is recognised by its ids even with another tracking.
    let retry = store
        .append_with(events, None, tracked("c", 11))
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(10));
    assert_eq!(count(&store, "r").await, 2);
}

#[actix::test]
async fn tracked_appends_of_one_consumer_in_one_batch_are_decided_in_arrival_order() {
    let store = support::store("tracked_batch").await;
    let stall = Stall::start(&store).await;
    // Arrival order: 5 ok; 3 refused (5 is tracked); 7 ok; 7 refused (7 is); e
    // (untracked) ok; 8 for another consumer ok; 8 ok. A refusal reports the checkpoint
    // read once the batch committed: 8.
    let plan: Vec<(Option<(&str, u64)>, &str)> = vec![
        (Some(("c", 5)), "a"),
        (Some(("c", 3)), "b"),
        (Some(("c", 7)), "c"),
        (Some(("c", 7)), "d"),
        (None, "e"),
        (Some(("other", 8)), "f"),
        (Some(("c", 8)), "g"),
    ];
    let mut tasks = Vec::new();
    for (tracking, tag) in plan {
        let store = store.clone();
        let options = match tracking {
            Some((consumer, position)) => tracked(consumer, position),
            None => AppendOptions::default(),
        };
        tasks.push(actix::spawn(async move {
            store
                .append_with(vec![support::event("T", &[tag])], None, options)
                .await
        }));
        // In this order into the writer's mailbox.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stall.release().await;
    let results = support::results(tasks).await;
    let outcome: Vec<Option<u64>> = results
        .iter()
        .map(|r| match r {
            Ok(_) => None,
            Err(Error::AlreadyTracked { checkpoint, .. }) => Some(*checkpoint),
            Err(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        outcome,
        vec![None, Some(8), None, Some(8), None, None, None],
        "{results:?}"
    );
    let m = store.metrics().await.unwrap();
    assert_eq!(m.batches, 2, "the tracked appends shared one batch");
    assert!(m.deferred_rounds >= 3, "one round per tracked append of c");
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(8));
    assert_eq!(store.checkpoint("other").await.unwrap(), Some(8));
    for (tag, stored) in [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 1), ("g", 1)] {
        assert_eq!(count(&store, tag).await, stored, "tag {tag}");
    }
}

#[actix::test]
async fn a_consumer_that_tracks_then_acks_keeps_one_checkpoint_that_never_moves_back() {
    let store = support::store("tracked_ack").await;
    for i in 0..3 {
        store
            .append(vec![support::event("E", &[&format!("e{i}")])], None)
            .await
            .unwrap();
    }
    let mut sub = store
        .subscribe(
            Query::all(),
            SubscribeOptions::default().consumer("pm").batch_size(10),
        )
        .await
        .unwrap();
    let batch = sub.next().await.unwrap().unwrap();
    assert_eq!(batch.events.len(), 3);
    // Reacting to event 2 with tracking, then acking the batch.
    store
        .append_with(
            vec![support::event("Reaction", &["re"])],
            None,
            tracked("pm", 2),
        )
        .await
        .unwrap();
    assert_eq!(store.checkpoint("pm").await.unwrap(), Some(2));
    sub.ack(1).await.unwrap();
    assert_eq!(
        store.checkpoint("pm").await.unwrap(),
        Some(2),
        "an ack never moves the checkpoint back"
    );
    sub.ack(batch.scanned_to).await.unwrap();
    assert_eq!(store.checkpoint("pm").await.unwrap(), Some(3));
    let error = store
        .append_with(
            vec![support::event("Reaction", &["re"])],
            None,
            tracked("pm", 3),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::AlreadyTracked { checkpoint: 3, .. }));
}

#[actix::test]
async fn concurrent_tracked_appends_of_one_position_from_several_stores_commit_once() {
    let schema = support::unique_schema("tracked_race");
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(EventStore::connect(support::config(&schema)).await.unwrap());
    }
    for position in 1..=30u64 {
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let store = store.clone();
                actix::spawn(async move {
                    let event = Event::new("Reacted", serde_json::json!({ "by": i }))
                        .with_tags([format!("p:{position}")]);
                    store
                        .append_with(vec![event], None, tracked("race", position))
                        .await
                })
            })
            .collect();
        let results = support::results(tasks).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "position {position}: {results:?}");
        assert!(results.iter().all(|r| r.is_ok()
            || matches!(r, Err(Error::AlreadyTracked { checkpoint, .. }) if *checkpoint == position)));
    }
    assert_eq!(stores[0].checkpoint("race").await.unwrap(), Some(30));
}

/// A proxy drops the connection after the batch's COMMIT was sent (its answers lost):
/// the writer's retry finds the events by id, so the append and the checkpoint
/// moved together, once.
#[actix::test]
async fn a_tracked_append_whose_commit_answer_is_lost_moved_the_checkpoint_exactly_once() {
    let schema = support::unique_schema("tracked_lost");
    let direct = EventStore::connect(support::config(&schema)).await.unwrap();
    for round in 0..3u64 {
        let armed = Arc::new(AtomicBool::new(false));
        let proxied = crate::outcomes::warm_store_behind(&schema, armed.clone()).await;
        armed.store(true, Ordering::SeqCst);
        let tag = format!("lost{round}");
        let events = vec![support::event("E", &[&tag])];
        let position = 100 + round;
        let error = proxied
            .append_with(events.clone(), None, tracked("lost", position))
            .await
            .unwrap_err();
        assert!(error.may_have_been_written(), "{error:?}");
        // Both moved, once: the event is there and the checkpoint with it.
        assert_eq!(count(&direct, &tag).await, 1);
        assert_eq!(direct.checkpoint("lost").await.unwrap(), Some(position));
        // The caller's retry (same ids) gets the original result, not AlreadyTracked.
        let retry = direct
            .append_with(events, None, tracked("lost", position))
            .await
            .unwrap();
        assert_eq!(retry.first_position, retry.last_position);
        assert_eq!(count(&direct, &tag).await, 1);
    }
}

/// An ack committed while a tracked append waits for the consumer's row (after its
/// statement's snapshot was taken): the append decides on the acked checkpoint, never
/// on the older one its snapshot holds (which would accept it and move the
/// checkpoint back).
#[actix::test]
async fn a_tracked_append_decides_on_the_checkpoint_an_ack_committed_while_it_waited() {
    let store = support::store("tracked_ack_race").await;
    let schema = store.config().schema().to_owned();
    store
        .append_with(Vec::new(), None, tracked("c", 5))
        .await
        .unwrap();
    let outside = support::client().await;
    outside
        .batch_execute(&format!(
            "BEGIN; UPDATE \"{schema}\".consumers SET checkpoint = 10 WHERE name = 'c'"
        ))
        .await
        .unwrap();
    let waiting = {
        let store = store.clone();
        actix::spawn(async move {
            store
                .append_with(vec![support::event("R", &["r"])], None, tracked("c", 8))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the append waits for the row");
    outside.batch_execute("COMMIT").await.unwrap();
    let error = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(error, Error::AlreadyTracked { checkpoint: 10, .. }),
        "{error:?}"
    );
    assert_eq!(store.checkpoint("c").await.unwrap(), Some(10));
    assert_eq!(count(&store, "r").await, 0);
}
