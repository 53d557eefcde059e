//! Read options (after, before, limit, backwards), the head, streaming, and that
//! events come back exactly as they were appended.

use dcb_store::{Config, Event, EventStore, Query, QueryItem, ReadOptions};
use futures_util::StreamExt;
use serde_json::json;

use crate::support;

fn positions(r: &dcb_store::ReadResult) -> Vec<u64> {
    r.events.iter().map(|e| e.position).collect()
}

async fn store_with(n: usize) -> EventStore {
    let store = support::store("reads").await;
    for i in 0..n {
        let tags = if i % 2 == 0 {
            vec!["even"]
        } else {
            vec!["odd"]
        };
        store
            .append(vec![support::event("E", &tags)], None)
            .await
            .unwrap();
    }
    store
}

#[actix::test]
async fn the_head_of_an_empty_store_is_none_and_conditions_built_from_it_are_exact() {
    let store = support::store("reads_empty").await;
    let q = Query::new([QueryItem::new().tags(["t"])]);
    let r = store.read(&q, ReadOptions::default()).await.unwrap();
    assert!(r.events.is_empty());
    assert_eq!(r.head, None);
    let cond = dcb_store::AppendCondition::new(q.clone(), r.head);
    store
        .append(vec![support::event("E", &["t"])], Some(cond.clone()))
        .await
        .unwrap();
    // The same decision again must now fail: the event it did not see exists.
    assert!(matches!(
        store
            .append(vec![support::event("E", &["t"])], Some(cond))
            .await,
        Err(dcb_store::Error::ConditionFailed { .. })
    ));
}

#[actix::test]
async fn the_head_is_the_store_head_also_when_nothing_matched() {
    let store = store_with(5).await;
    let none = Query::new([QueryItem::new().tags(["absent"])]);
    let r = store.read(&none, ReadOptions::default()).await.unwrap();
    assert!(r.events.is_empty());
    assert_eq!(r.head, Some(5));
    let odd = Query::new([QueryItem::new().tags(["odd"])]);
    let r = store.read(&odd, ReadOptions::default()).await.unwrap();
    assert_eq!(positions(&r), [2, 4]);
    assert_eq!(r.head, Some(5));
}

#[actix::test]
async fn after_and_before_are_exclusive() {
    let store = store_with(6).await;
    let all = Query::all();
    let r = store
        .read(&all, ReadOptions::default().after(2))
        .await
        .unwrap();
    assert_eq!(positions(&r), [3, 4, 5, 6]);
    let r = store
        .read(&all, ReadOptions::default().after(6))
        .await
        .unwrap();
    assert!(r.events.is_empty());
    assert_eq!(r.head, Some(6));
    let r = store
        .read(&all, ReadOptions::default().after(0))
        .await
        .unwrap();
    assert_eq!(positions(&r).len(), 6);
    let r = store
        .read(&all, ReadOptions::default().after(1).before(4))
        .await
        .unwrap();
    assert_eq!(positions(&r), [2, 3]);
    assert_eq!(r.head, Some(3), "the head is capped below `before`");
    let even = Query::new([QueryItem::new().tags(["even"])]);
    let r = store
        .read(&even, ReadOptions::default().after(1))
        .await
        .unwrap();
    assert_eq!(positions(&r), [3, 5]);
}

#[actix::test]
async fn limits_cut_forward_and_backward_reads_and_move_the_head() {
    let store = store_with(6).await;
    let all = Query::all();
    let r = store
        .read(&all, ReadOptions::default().limit(2))
        .await
        .unwrap();
    assert_eq!(positions(&r), [1, 2]);
    assert_eq!(r.head, Some(2), "events after the limit were not seen");
    let r = store
        .read(&all, ReadOptions::default().limit(2).backwards())
        .await
        .unwrap();
    assert_eq!(positions(&r), [6, 5]);
    assert_eq!(r.head, Some(6));
    let r = store
        .read(&all, ReadOptions::default().backwards().before(5).limit(10))
        .await
        .unwrap();
    assert_eq!(positions(&r), [4, 3, 2, 1]);
    let r = store
        .read(&all, ReadOptions::default().limit(0))
        .await
        .unwrap();
    assert!(r.events.is_empty());
    let two_items = Query::new([
        QueryItem::new().tags(["even"]),
        QueryItem::new().tags(["odd"]),
    ]);
    let r = store
        .read(&two_items, ReadOptions::default().after(1).limit(3))
        .await
        .unwrap();
    assert_eq!(positions(&r), [2, 3, 4]);
    let r = store
        .read(&two_items, ReadOptions::default().backwards().limit(3))
        .await
        .unwrap();
    assert_eq!(positions(&r), [6, 5, 4]);
}

#[actix::test]
async fn read_stream_pages_through_everything_in_order() {
    let schema = support::unique_schema("stream");
    let store = EventStore::connect(support::config(&schema).with_read_page_size(7))
        .await
        .unwrap();
    let events: Vec<Event> = (0..50).map(|_| support::event("E", &["s"])).collect();
    store.append(events, None).await.unwrap();
    let q = Query::new([QueryItem::new().tags(["s"])]);
    let all: Vec<u64> = store
        .read_stream(q.clone(), ReadOptions::default())
        .map(|e| e.unwrap().position)
        .collect()
        .await;
    assert_eq!(all, (1..=50).collect::<Vec<_>>());
    let back: Vec<u64> = store
        .read_stream(q.clone(), ReadOptions::default().backwards().limit(10))
        .map(|e| e.unwrap().position)
        .collect()
        .await;
    assert_eq!(back, (41..=50).rev().collect::<Vec<_>>());
    let tail: Vec<u64> = store
        .read_stream(q, ReadOptions::default().after(45))
        .map(|e| e.unwrap().position)
        .collect()
        .await;
    assert_eq!(tail, [46, 47, 48, 49, 50]);
}

#[actix::test]
async fn events_come_back_exactly_as_appended() {
    let store = support::store("roundtrip").await;
    let id = uuid::Uuid::new_v4();
    let at = chrono::DateTime::parse_from_rfc3339("2025-03-04T05:06:07.123456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let data = json!({"text": "quote ' \" back \\ percent % under _ dollar $1 '); DROP TABLE x; --", "emoji": "😀", "nested": {"a": [1, 2.5, null, true]}});
    let e = Event::new("Typed ' \"odd\"", data.clone())
        .with_tags(["tag ' x", "tag \\ y", "%_"])
        .with_metadata(json!({"correlationId": "c-1"}))
        .with_id(id)
        .with_occurred_at(at);
    let appended = store.append(vec![e], None).await.unwrap();
    let r = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    let back = &r.events[0];
    assert_eq!(back.position, appended.first_position);
    assert_eq!(back.event.id(), id);
    assert_eq!(back.event.event_type(), "Typed ' \"odd\"");
    assert_eq!(back.event.tags(), ["tag ' x", "tag \\ y", "%_"]);
    assert_eq!(back.event.data::<serde_json::Value>().unwrap(), data);
    assert_eq!(
        back.event.metadata::<serde_json::Value>().unwrap(),
        json!({"correlationId": "c-1"})
    );
    assert_eq!(back.event.occurred_at(), Some(at));
    // Nesting at the limit (serde_json's) is stored and read back exactly.
    let deep = format!("{}\"bottom\"{}", "[".repeat(127), "]".repeat(127));
    store
        .append(vec![Event::from_json("Deep", deep.clone())], None)
        .await
        .unwrap();
    let q = Query::new([QueryItem::new().types(["Deep"])]);
    let r = store.read(&q, ReadOptions::default()).await.unwrap();
    assert_eq!(r.events[0].event.data_json(), deep);
    // Tags with SQL metacharacters are matched literally.
    let q = Query::new([QueryItem::new().tags(["%_"])]);
    assert_eq!(
        store
            .read(&q, ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
    let q = Query::new([QueryItem::new().tags(["%"])]);
    assert!(store
        .read(&q, ReadOptions::default())
        .await
        .unwrap()
        .events
        .is_empty());
}

#[actix::test]
async fn reads_through_the_actix_recipient_match_the_handle() {
    let store = store_with(3).await;
    let r = store
        .reader()
        .send(dcb_store::Read::new(Query::all(), ReadOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(positions(&r), [1, 2, 3]);
    let _ = Config::default();
}
