//! Appends: positions, atomicity, conditions and their `after` edges, conflicts
//! inside one batch, duplicate ids, and the message-driven path.

use std::time::Duration;

use dcb_store::{AppendCondition, Error, Event, EventStore, Query, QueryItem, ReadOptions};
use futures_util::future::join_all;

use crate::support;

/// Holds the store's table lock from outside so that the writer's current batch
/// (a "Blocker" append sent by `start`) stalls and the appends sent meanwhile pile up
/// into the next batch; `release` lets both through.
pub struct Stall {
    client: tokio_postgres::Client,
    blocker: tokio::task::JoinHandle<dcb_store::Result<dcb_store::AppendResult>>,
}

/// Long enough for spawned appends to reach the writer's mailbox.
const SETTLE: Duration = Duration::from_millis(200);

impl Stall {
    pub async fn start(store: &EventStore) -> Stall {
        let client = support::lock_events(store.config().schema(), "EXCLUSIVE").await;
        let store = store.clone();
        let blocker = actix::spawn(async move {
            store
                .append(vec![support::event("Blocker", &[])], None)
                .await
        });
        tokio::time::sleep(SETTLE).await;
        Stall { client, blocker }
    }

    /// Lets the stalled batch commit; checks that it did.
    pub async fn release(self) {
        tokio::time::sleep(SETTLE).await;
        self.client.batch_execute("COMMIT").await.unwrap();
        self.blocker
            .await
            .unwrap()
            .expect("the stalled append commits");
    }
}

#[actix::test]
async fn appends_get_consecutive_positions_in_event_order() {
    let store = support::store("positions").await;
    let a = store
        .append(
            vec![
                support::event("E", &[]),
                support::event("E", &[]),
                support::event("E", &[]),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!((a.first_position, a.last_position), (1, 3));
    let b = store
        .append(vec![support::event("E", &[])], None)
        .await
        .unwrap();
    assert_eq!((b.first_position, b.last_position), (4, 4));
    let read = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    assert!(read.events.iter().all(|e| e.event.occurred_at().is_some()));
}

#[actix::test]
async fn a_multi_event_append_is_all_or_nothing() {
    let store = support::store("atomic").await;
    store
        .append(vec![support::event("Guard", &["g"])], None)
        .await
        .unwrap();
    let guard = Query::new([QueryItem::new().types(["Guard"])]);
    let three = vec![
        support::event("E", &["m"]),
        support::event("E", &["m"]),
        support::event("E", &["m"]),
    ];
    let refused = store
        .append(
            three.clone(),
            Some(AppendCondition::new(guard.clone(), None)),
        )
        .await;
    assert!(matches!(
        refused,
        Err(Error::ConditionFailed { after: None })
    ));
    let m = Query::new([QueryItem::new().tags(["m"])]);
    assert!(store
        .read(&m, ReadOptions::default())
        .await
        .unwrap()
        .events
        .is_empty());
    let ok = store
        .append(three, Some(AppendCondition::new(guard, Some(1))))
        .await
        .unwrap();
    assert_eq!((ok.first_position, ok.last_position), (2, 4));
    assert_eq!(
        store
            .read(&m, ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        3
    );
}

#[actix::test]
async fn a_condition_fails_only_for_matches_strictly_after_its_position() {
    let store = support::store("after").await;
    let q = Query::new([QueryItem::new().types(["E"]).tags(["k"])]);
    store
        .append(vec![support::event("E", &["k"])], None)
        .await
        .unwrap(); // 1
    store
        .append(vec![support::event("F", &["k"])], None)
        .await
        .unwrap(); // 2
    let cond = |after| Some(AppendCondition::new(q.clone(), after));
    assert!(matches!(
        store
            .append(vec![support::event("X", &[])], cond(None))
            .await,
        Err(Error::ConditionFailed { .. })
    ));
    assert!(matches!(
        store
            .append(vec![support::event("X", &[])], cond(Some(0)))
            .await,
        Err(Error::ConditionFailed { .. })
    ));
    store
        .append(vec![support::event("X", &[])], cond(Some(1)))
        .await
        .unwrap(); // 3
    store
        .append(vec![support::event("X", &[])], cond(Some(2)))
        .await
        .unwrap(); // 4
    store
        .append(vec![support::event("X", &[])], cond(Some(1_000)))
        .await
        .unwrap();
}

#[actix::test]
async fn only_one_of_many_conflicting_appends_in_one_batch_succeeds() {
    let store = support::store("intra").await;
    let stall = Stall::start(&store).await;
    let seat = Query::new([QueryItem::new().types(["Seat"]).tags(["seat:1"])]);
    let conditional = (0..10).map(|_| {
        let store = store.clone();
        let seat = seat.clone();
        actix::spawn(async move {
            store
                .append(
                    vec![support::event("Seat", &["seat:1"])],
                    Some(AppendCondition::new(seat, None)),
                )
                .await
        })
    });
    let conditional: Vec<_> = conditional.collect();
    let free: Vec<_> = (0..5)
        .map(|_| {
            let store = store.clone();
            actix::spawn(async move {
                store
                    .append(vec![support::event("Free", &["free"])], None)
                    .await
            })
        })
        .collect();
    stall.release().await;

    let results: Vec<_> = support::results(conditional).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Err(Error::ConditionFailed { .. })))
        .count();
    assert_eq!((won, lost), (1, 9), "{results:?}");
    for r in join_all(free).await {
        r.unwrap().unwrap();
    }
    let stored = store.read(&seat, ReadOptions::default()).await.unwrap();
    assert_eq!(stored.events.len(), 1);
    let m = store.metrics().await.unwrap();
    assert_eq!(m.batches, 2, "the conflicting appends shared one batch");
    assert!(
        m.deferred_rounds >= 1,
        "the batch needed a second round: {m:?}"
    );
}

#[actix::test]
async fn an_append_conditioned_on_an_earlier_failed_append_of_its_batch_still_succeeds() {
    let store = support::store("intra_fail").await;
    store
        .append(vec![support::event("Taken", &["t"])], None)
        .await
        .unwrap();
    let stall = Stall::start(&store).await;
    // First: fails (Taken exists). Second: conditioned on events like the first's.
    let first = actix::spawn({
        let store = store.clone();
        async move {
            let taken = Query::new([QueryItem::new().types(["Taken"])]);
            store
                .append(
                    vec![support::event("Claim", &["c"])],
                    Some(AppendCondition::new(taken, None)),
                )
                .await
        }
    });
    let second = actix::spawn({
        let store = store.clone();
        async move {
            let claims = Query::new([QueryItem::new().types(["Claim"]).tags(["c"])]);
            store
                .append(
                    vec![support::event("Claim", &["c"])],
                    Some(AppendCondition::new(claims, None)),
                )
                .await
        }
    });
    stall.release().await;
    assert!(matches!(
        first.await.unwrap(),
        Err(Error::ConditionFailed { .. })
    ));
    second
        .await
        .unwrap()
        .expect("the earlier claim was not written, so this one passes");
}

#[actix::test]
async fn a_stored_event_id_cannot_be_appended_again() {
    let store = support::store("dup_id").await;
    let id = uuid::Uuid::new_v4();
    store
        .append(vec![support::event("E", &[]).with_id(id)], None)
        .await
        .unwrap();
    let again = store
        .append(
            vec![
                support::event("E", &[]),
                support::event("E", &[]).with_id(id),
            ],
            None,
        )
        .await;
    assert!(
        matches!(again, Err(Error::DuplicateEventId { .. })),
        "{again:?}"
    );
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

#[actix::test]
async fn appends_through_the_actix_recipient_behave_like_the_handle() {
    let store = support::store("recipient").await;
    let appender = store.appender();
    let r = appender
        .send(dcb_store::Append::new(
            vec![Event::new("E", serde_json::json!({"n": 1})).with_tags(["r"])],
            None,
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.first_position, 1);
    let refused = appender
        .send(dcb_store::Append::new(vec![], None))
        .await
        .unwrap();
    assert!(matches!(refused, Err(Error::InvalidInput { .. })));
}

#[actix::test]
async fn retries_duplicates_and_new_appends_of_one_batch_each_get_their_own_answer() {
    let store = support::store("stored_mix").await;
    let first = vec![
        support::event("E", &["a"]),
        support::event("E", &["a", "b"]),
    ];
    let second = vec![support::event("E", &[])];
    let at_first = store.append(first.clone(), None).await.unwrap();
    let at_second = store.append(second.clone(), None).await.unwrap();
    let stall = Stall::start(&store).await;
    let spawn = |events: Vec<Event>, condition: Option<AppendCondition>| {
        let store = store.clone();
        actix::spawn(async move { store.append(events, condition).await })
    };
    // A retry whose condition its own events now fail: recognised first.
    let retried = spawn(
        first.clone(),
        Some(AppendCondition::new(
            Query::new([QueryItem::new().tags(["a"])]),
            None,
        )),
    );
    let fresh = spawn(vec![support::event("E", &["c"])], None);
    // The stored event again, beside a new one: a duplicate, nothing written.
    let duplicate_id = first[1].id();
    let duplicate = spawn(vec![support::event("E", &[]), first[1].clone()], None);
    let retried_too = spawn(second.clone(), None);
    let fresh_too = spawn(vec![support::event("E", &["d"])], None);
    stall.release().await;

    let retried = retried.await.unwrap().unwrap();
    assert_eq!(
        (retried.first_position, retried.last_position),
        (at_first.first_position, at_first.last_position)
    );
    let retried_too = retried_too.await.unwrap().unwrap();
    assert_eq!(retried_too.first_position, at_second.first_position);
    match duplicate.await.unwrap() {
        Err(Error::DuplicateEventId { id }) => assert_eq!(id, duplicate_id),
        other => panic!("expected a duplicate id, got {other:?}"),
    }
    let fresh = fresh.await.unwrap().unwrap();
    let fresh_too = fresh_too.await.unwrap().unwrap();
    assert_eq!(fresh_too.first_position, fresh.first_position + 1);
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    // first (2), second, the blocker and the two fresh ones: nothing else.
    assert_eq!(all.events.len(), 6, "{:?}", all.events);
    let m = store.metrics().await.unwrap();
    assert_eq!(m.batches, 4, "the five appends shared one batch: {m:?}");
}
