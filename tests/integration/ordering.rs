//! While many writers (in two stores) append, a follower reading `after` its last
//! position never sees a position below one it saw, and misses nothing.

use std::time::Duration;

use dcb_store::{EventStore, Query, ReadOptions};
use futures_util::future::join_all;

use crate::support;

#[actix::test]
async fn a_follower_never_sees_positions_out_of_order_and_misses_nothing() {
    let schema = support::unique_schema("follow");
    let a = EventStore::connect(support::config(&schema)).await.unwrap();
    let b = EventStore::connect(support::config(&schema)).await.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            actix::spawn(async move {
                for i in 0..40 {
                    let n = 1 + (i % 3);
                    let events = (0..n).map(|_| support::event("W", &["w"])).collect();
                    store.append(events, None).await.unwrap();
                }
            })
        })
        .collect();
    let writing = actix::spawn(async move { join_all(writers).await });

    let mut seen = Vec::new();
    let mut last = 0u64;
    let mut idle_rounds = 0;
    loop {
        let page = b
            .read(&Query::all(), ReadOptions::default().after(last).limit(37))
            .await
            .unwrap();
        for e in &page.events {
            assert!(e.position > last, "saw {} after {last}", e.position);
            last = e.position;
            seen.push(e.position);
        }
        if page.events.is_empty() {
            if writing.is_finished() {
                idle_rounds += 1;
                if idle_rounds > 1 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    writing.await.unwrap();
    let total = (0..40).map(|i| 1 + (i % 3)).sum::<u64>() * 16;
    assert_eq!(seen.len() as u64, total);
    // Positions are dense (a batch's positions follow the head), so any skip shows.
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}
