//! Batching and statement reuse, checked from outside the store: the server's own
//! commit counter, and a wire-protocol proxy that counts `Parse` messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_store::{EventStore, Query, QueryItem, ReadOptions};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support;

async fn commits(admin: &tokio_postgres::Client, db: &str) -> i64 {
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    admin
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

#[actix::test]
async fn five_hundred_concurrent_appends_cost_far_fewer_commits() {
    let admin = support::client().await;
    let db = support::unique_schema("commits");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = support::url_with_database(support::database_url(), &db);
    let store = EventStore::connect(support::config("dcb").with_database_url(url))
        .await
        .unwrap();
    let calls: Vec<_> = (0..500)
        .map(|i| {
            let store = store.clone();
            actix::spawn(async move {
                let tag = format!("n:{i}");
                store.append(vec![support::event("E", &[&tag])], None).await
            })
        })
        .collect();
    for r in join_all(calls).await {
        r.unwrap().unwrap();
    }
    let m = store.metrics().await.unwrap();
    assert_eq!(m.appends, 500);
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        500
    );
    drop(store); // backends exit and flush their statistics
    let mut last = -1;
    let mut stable = 0;
    for _ in 0..100 {
        let now = commits(&admin, &db).await;
        if now == last && now > 0 {
            stable += 1;
            if stable >= 5 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything this database committed: the migration, the read above, the batches.
    assert!(
        last > 0 && last < 100,
        "{last} commits for 500 appends in {} batches",
        m.batches
    );
    assert!(m.batches < 100, "{} batches", m.batches);
}

/// Forwards connections to the real server and counts the `Parse` messages clients send.
async fn parse_counting_proxy(target: (String, u16)) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let parses = Arc::new(AtomicU64::new(0));
    let counter = parses.clone();
    actix::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect((target.0.as_str(), target.1))
                .await
                .unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            actix::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let counter = counter.clone();
            actix::spawn(async move {
                // Startup message: length-prefixed, no type byte.
                let mut len = [0u8; 4];
                if client_read.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                client_read.read_exact(&mut body).await.unwrap();
                server_write.write_all(&len).await.unwrap();
                server_write.write_all(&body).await.unwrap();
                loop {
                    let mut header = [0u8; 5];
                    if client_read.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    if header[0] == b'P' {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let len =
                        u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                    let mut body = vec![0u8; len - 4];
                    if client_read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if server_write.write_all(&header).await.is_err()
                        || server_write.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, parses)
}

#[actix::test]
async fn repeated_reads_and_appends_are_not_parsed_again_by_the_server() {
    let (proxy_port, parses) = parse_counting_proxy(support::server_address()).await;
    let schema = support::unique_schema("parse");
    let store = EventStore::connect(
        support::config(&schema).with_database_url(support::url_via(proxy_port)),
    )
    .await
    .unwrap();
    let query = |i: usize| Query::new([QueryItem::new().types(["E"]).tags([format!("k:{i}")])]);
    // Warm up: the writer prepares at its first batch, each reader at its first read.
    store
        .append(vec![support::event("E", &["k:0"])], None)
        .await
        .unwrap();
    for i in 0..4 {
        store.read(&query(i), ReadOptions::default()).await.unwrap();
    }
    let warm = parses.load(Ordering::SeqCst);
    assert!(warm > 0, "the proxy sees the store's traffic");
    for i in 0..100 {
        store
            .append(vec![support::event("E", &[&format!("k:{i}")])], None)
            .await
            .unwrap();
        let r = store
            .read(&query(i), ReadOptions::default().after(i as u64))
            .await
            .unwrap();
        assert!(!r.events.is_empty());
    }
    assert_eq!(
        parses.load(Ordering::SeqCst),
        warm,
        "no statement was parsed again"
    );
    let m = store.metrics().await.unwrap();
    assert_eq!(
        m.statements_prepared, 2,
        "one read shape, prepared once on each of 2 readers"
    );
}
