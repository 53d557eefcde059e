//! A server restart is a pause, not an error: reads and appends ride through it, and
//! readers do not hammer a server that is down.

use dcb_store_testkit::ServerControls;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_store::{Error, EventStore, Query, QueryItem, ReadOptions};
use tokio::net::{TcpListener, TcpStream};

use crate::support;

#[actix::test]
async fn reads_and_appends_ride_through_a_server_restart() {
    let server = support::throwaway_server().await;
    let store = EventStore::connect(
        dcb_store::Config::default()
            .with_database_url(server.url())
            .with_schema("restart_reads")
            .with_operation_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    store
        .append(vec![support::event("E", &["r"])], None)
        .await
        .unwrap();
    let query = Query::new([QueryItem::new().tags(["r"])]);
    let stop = Rc::new(Cell::new(false));
    let (reads, appends) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    let errors = Rc::new(RefCell::new(Vec::<Error>::new()));
    let callers: Vec<_> = (0..6)
        .map(|i| {
            let (store, query, stop) = (store.clone(), query.clone(), stop.clone());
            let (reads, appends, errors) = (reads.clone(), appends.clone(), errors.clone());
            actix::spawn(async move {
                while !stop.get() {
                    if i % 3 == 0 {
                        match store.append(vec![support::event("E", &["r"])], None).await {
                            Ok(_) => appends.set(appends.get() + 1),
                            Err(e) => errors.borrow_mut().push(e),
                        }
                    } else {
                        match store
                            .read(&query, ReadOptions::default().backwards().limit(5))
                            .await
                        {
                            Ok(_) => reads.set(reads.get() + 1),
                            Err(e) => errors.borrow_mut().push(e),
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (reads_before, appends_before) = (reads.get(), appends.get());
    assert!(
        reads_before > 0 && appends_before > 0,
        "load runs before the restart"
    );
    let restart_started = Instant::now();
    let restarter = server.clone();
    tokio::task::spawn_blocking(move || restarter.restart())
        .await
        .unwrap()
        .unwrap();
    let server_back = restart_started.elapsed();
    // The first read and append that start once the server is back.
    let read_back = {
        store.read(&query, ReadOptions::default()).await.unwrap();
        restart_started.elapsed()
    };
    let append_back = {
        store
            .append(vec![support::event("E", &["r"])], None)
            .await
            .unwrap();
        restart_started.elapsed()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.set(true);
    support::results(callers).await;
    println!(
        "restart: server down and up in {server_back:?}; first read after {read_back:?}, first append after {append_back:?}; {} reads and {} appends in all",
        reads.get(),
        appends.get()
    );
    let errors = errors.borrow();
    assert!(errors.is_empty(), "callers saw errors: {:?}", &errors[..]);
    assert!(
        reads.get() > reads_before && appends.get() > appends_before,
        "the load went on after the restart"
    );
}

/// A proxy to the test server that can be switched off: then it closes every
/// connection it carries and hangs up on new ones, counting their attempts.
async fn switchable_proxy(up: Arc<AtomicBool>, attempts: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (host, target_port) = support::server_address();
    actix::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            attempts.fetch_add(1, Ordering::SeqCst);
            if !up.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(mut server) = TcpStream::connect((host.as_str(), target_port)).await else {
                continue;
            };
            let up = up.clone();
            actix::spawn(async move {
                let down = async {
                    while up.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = down => {}
                }
            });
        }
    });
    port
}

#[actix::test]
async fn readers_back_off_while_the_server_is_down_and_come_back_with_it() {
    let (up, attempts) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
    let port = switchable_proxy(up.clone(), attempts.clone()).await;
    let schema = support::unique_schema("down");
    EventStore::connect(support::config(&schema))
        .await
        .unwrap()
        .append(vec![support::event("E", &["d"])], None)
        .await
        .unwrap();
    let store =
        EventStore::connect(support::config(&schema).with_database_url(support::url_via(port)))
            .await
            .unwrap();
    let query = Query::new([QueryItem::new().tags(["d"])]);
    for _ in 0..4 {
        store.read(&query, ReadOptions::default()).await.unwrap();
    }
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = attempts.load(Ordering::SeqCst);
    let down_for = Duration::from_secs(2);
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let (store, query) = (store.clone(), query.clone());
            actix::spawn(async move {
                store
                    .read(&query, ReadOptions::default().timeout(down_for))
                    .await
            })
        })
        .collect();
    for result in support::results(reads).await {
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    }
    let tried = attempts.load(Ordering::SeqCst) - before;
    println!("16 reads over 2 s with the server down: {tried} connection attempts");
    assert!(
        (1..=40).contains(&tried),
        "{tried} connection attempts: readers must back off, not spin"
    );
    up.store(true, Ordering::SeqCst);
    let back = Instant::now();
    let read = store.read(&query, ReadOptions::default()).await.unwrap();
    assert_eq!(read.events.len(), 1);
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
}
