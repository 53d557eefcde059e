//! What an error promises, and how long an operation may take: a batch whose answers
//! are lost says "may have been written" (and was); a timed-out read harms no other
//! read; one deadline bounds a batch, its retries and its one-by-one isolation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_store::{AppendOptions, Error, EventStore, Query, QueryItem, ReadOptions};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::appends::Stall;
use crate::support;

/// A proxy that loses the answers of a transaction, as a server that crashes right
/// after a commit: while `armed`, once a client sends `BEGIN` it gets no more
/// answers; its messages up to and including `COMMIT` still reach the server, which
/// runs them; then the connection is closed, and so is every later one.
async fn answer_losing_proxy(armed: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = support::server_address();
    let gone = Arc::new(AtomicBool::new(false));
    actix::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if gone.load(Ordering::SeqCst) {
                continue; // hangs up
            }
            let gone = gone.clone();
            let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let holding = Arc::new(AtomicBool::new(false));
            let hold = holding.clone();
            actix::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if !hold.load(Ordering::SeqCst) => {
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {} // lost on the way back
                    }
                }
            });
            let armed = armed.clone();
            actix::spawn(async move {
                if !support::pass_startup(&mut client_read, &mut server_write).await {
                    return;
                }
                // Once armed, the next batch's messages (a pipelined transaction, or one
                // call that is its own transaction) are forwarded and their answers lost;
                // then, once the server had time to commit, both sides are hung up on.
                let mut hang_up_at: Option<tokio::time::Instant> = None;
                loop {
                    let mut header = [0u8; 5];
                    let read = client_read.read_exact(&mut header);
                    let read = match hang_up_at {
                        Some(at) => match tokio::time::timeout_at(at, read).await {
                            Ok(read) => read,
                            Err(_) => {
                                gone.store(true, Ordering::SeqCst);
                                return;
                            }
                        },
                        None => read.await,
                    };
                    if read.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    let mut body = vec![0u8; (len as usize).saturating_sub(4)];
                    if client_read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    // A batch starts with its first Bind (a call, or the listeners'
                    // question before it) or with BEGIN; connecting and preparing
                    // (startup, simple queries, Parse) pass.
                    let starts_batch =
                        header[0] == b'B' || (header[0] == b'Q' && body.starts_with(b"BEGIN"));
                    if armed.load(Ordering::SeqCst) && starts_batch && hang_up_at.is_none() {
                        holding.store(true, Ordering::SeqCst);
                        hang_up_at = Some(tokio::time::Instant::now() + Duration::from_millis(300));
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
    port
}

/// A store on `schema` behind an [`answer_losing_proxy`] that `armed` arms, connected
/// and warmed first (connecting sends Binds of its own: the session's settings), so
/// that the armed proxy catches a batch.
pub(crate) async fn warm_store_behind(schema: &str, armed: Arc<AtomicBool>) -> EventStore {
    let port = answer_losing_proxy(armed).await;
    let proxied = EventStore::connect(
        support::config(schema)
            .with_database_url(support::url_via(port))
            .with_operation_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    proxied
        .append(vec![support::event("Warm", &["warm"])], None)
        .await
        .unwrap();
    proxied
}

#[actix::test]
async fn an_append_whose_answers_are_lost_may_have_been_written_and_a_retry_finds_it() {
    let schema = support::unique_schema("lost_answers");
    let direct = EventStore::connect(support::config(&schema)).await.unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let proxied = warm_store_behind(&schema, armed.clone()).await;
    armed.store(true, Ordering::SeqCst);
    let events = vec![
        support::event("E", &["lost"]),
        support::event("E", &["lost"]),
    ];
    let error = proxied.append(events.clone(), None).await.unwrap_err();
    println!("lost answers: {error}");
    assert!(
        error.may_have_been_written(),
        "the batch reached COMMIT, so the error must say it may have been written: {error:?}"
    );
    let stored = direct
        .read(
            &Query::new([QueryItem::new().tags(["lost"])]),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(stored.events.len(), 2, "written once, whatever the retries");
    let again = direct.append(events, None).await.unwrap();
    assert_eq!(
        (again.first_position, again.last_position),
        (stored.events[0].position, stored.events[1].position)
    );
}

#[actix::test]
async fn a_read_that_times_out_does_not_cancel_another_callers_read() {
    let schema = support::unique_schema("read_cancel");
    let store = EventStore::connect(support::config(&schema).with_readers(1))
        .await
        .unwrap();
    store
        .append(vec![support::event("E", &[])], None)
        .await
        .unwrap();
    // Warm the reader's connection and statement.
    store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    let admin = support::lock_events(&schema, "ACCESS EXCLUSIVE").await;
    let slow_store = store.clone();
    let slow =
        actix::spawn(async move { slow_store.read(&Query::all(), ReadOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quick = store
        .read(
            &Query::all(),
            ReadOptions::default().timeout(Duration::from_millis(300)),
        )
        .await;
    assert!(matches!(quick, Err(Error::Timeout { .. })), "{quick:?}");
    // Time enough for a cancel to land on whatever the connection runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    admin.batch_execute("COMMIT").await.unwrap();
    let slow = slow
        .await
        .unwrap()
        .expect("the slow read is not cancelled by the quick one");
    assert_eq!(slow.events.len(), 1);
}

#[actix::test]
async fn one_deadline_bounds_a_refused_batch_and_its_one_by_one_retry() {
    let schema = support::unique_schema("isolate_deadline");
    let timeout = Duration::from_secs(1);
    let store = EventStore::connect(support::config(&schema).with_operation_timeout(timeout))
        .await
        .unwrap();
    // A server that refuses `Poison` events and takes 2 s over each `Sleepy` one.
    support::client()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION \"{schema}\".slow_or_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.event_type = 'Poison' THEN RAISE EXCEPTION 'poison'; END IF;
                 IF NEW.event_type = 'Sleepy' THEN PERFORM pg_sleep(2); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER slow_or_refuse BEFORE INSERT ON \"{schema}\".events
                 FOR EACH ROW EXECUTE FUNCTION \"{schema}\".slow_or_refuse();"
        ))
        .await
        .unwrap();
    let stall = Stall::start(&store).await;
    let poisoned = store.clone();
    let poison = actix::spawn(async move {
        poisoned
            .append(vec![support::event("Poison", &[])], None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sleepers: Vec<_> = (0..5)
        .map(|_| {
            let store = store.clone();
            actix::spawn(async move {
                let started = Instant::now();
                let result = store
                    .append_with(
                        vec![support::event("Sleepy", &[])],
                        None,
                        AppendOptions::default().timeout(Duration::from_secs(30)),
                    )
                    .await;
                (result, started.elapsed())
            })
        })
        .collect();
    stall.release().await;
    assert!(matches!(poison.await.unwrap(), Err(Error::Database { .. })));
    for (result, took) in support::results(sleepers).await {
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
        // The batch started after the stall's ~0.4 s; one deadline of 1 s covers it all.
        assert!(
            took < Duration::from_millis(2_900),
            "answered after {took:?}: the deadline did not bound the isolation"
        );
    }
    // The writer is free again at once.
    let started = Instant::now();
    store
        .append(vec![support::event("After", &[])], None)
        .await
        .unwrap();
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    let _ = join_all(Vec::<tokio::task::JoinHandle<()>>::new()).await;
}
