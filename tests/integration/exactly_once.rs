//! Exactly once: read models whose tables move with their checkpoint in one
//! transaction (handler errors, poison events, a stale holder, a rebuild under live
//! traffic, a commit whose answer is lost), process managers whose reactions are
//! appended once however often an event comes, and waiting for a checkpoint.
//!
//! Longer than most files because the read model every test here uses, and the proxy
//! that cuts a commit's answer, are written beside the tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcb_store::tokio_postgres::Transaction;
use dcb_store::{
    DeliveryError, Error, Event, EventBatch, EventStore, OnFailure, ProcessManager, Projection,
    Query, QueryItem, Reaction, ReadModel, ReadOptions, SequencedEvent, SubscribeOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::support;

/// A read model that records each event it applies in `<schema>.applied` (no
/// uniqueness, so an event applied twice shows as two rows).
pub(crate) struct Applied {
    pub table: String,
    /// Positions that always fail.
    pub poison: HashSet<u64>,
    /// Positions that fail once (after their row was written: it must roll back).
    pub fail_once: Arc<Mutex<HashSet<u64>>>,
    /// When set, each batch waits for a permit after its writes, before the commit.
    pub gate: Option<Arc<Semaphore>>,
    /// Told when a batch has written and waits at the gate.
    pub written: Option<Arc<tokio::sync::Notify>>,
    /// Resets committed or not.
    pub resets: Arc<std::sync::atomic::AtomicUsize>,
}

impl Applied {
    pub(crate) fn new(table: String) -> Self {
        Applied {
            table,
            poison: HashSet::new(),
            fail_once: Arc::new(Mutex::new(HashSet::new())),
            gate: None,
            written: None,
            resets: Arc::default(),
        }
    }
}

impl ReadModel for Applied {
    async fn apply(
        &mut self,
        batch: &EventBatch,
        tx: &Transaction<'_>,
    ) -> Result<(), DeliveryError> {
        let insert = format!("INSERT INTO {} (position) VALUES ($1)", self.table);
        for e in &batch.events {
            if self.poison.contains(&e.position) {
                return Err(DeliveryError::new(format!("poison at {}", e.position)));
            }
            tx.execute(&insert, &[&(e.position as i64)]).await?;
            if self.fail_once.lock().unwrap().remove(&e.position) {
                return Err(DeliveryError::new(format!("once at {}", e.position)));
            }
        }
        if let Some(written) = &self.written {
            written.notify_one();
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), DeliveryError> {
        tx.execute(&format!("DELETE FROM {}", self.table), &[])
            .await?;
        self.resets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Creates `<schema>.applied` and returns its qualified name.
pub(crate) async fn applied_table(store: &EventStore) -> String {
    let table = format!("\"{}\".applied", store.config().schema());
    support::client()
        .await
        .batch_execute(&format!("CREATE TABLE {table} (position bigint NOT NULL)"))
        .await
        .unwrap();
    table
}

/// Position → how many times it was applied.
pub(crate) async fn applied(table: &str) -> BTreeMap<u64, i64> {
    support::client()
        .await
        .query(
            &format!("SELECT position, count(*) FROM {table} GROUP BY position"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1)))
        .collect()
}

async fn append_n(store: &EventStore, n: usize) -> u64 {
    let mut last = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let events = chunk
            .iter()
            .map(|i| Event::new("E", serde_json::json!({ "i": i })))
            .collect();
        last = store.append(events, None).await.unwrap().last_position;
    }
    last
}

fn options(name: &str) -> SubscribeOptions {
    SubscribeOptions::default()
        .consumer(name)
        .batch_size(100)
        .retry_backoff(Duration::from_millis(10))
}

fn once_each(head: u64) -> BTreeMap<u64, i64> {
    (1..=head).map(|p| (p, 1)).collect()
}

#[actix::test]
async fn a_read_model_applies_each_event_once_with_its_checkpoint() {
    let store = support::store("rm_apply").await;
    let table = applied_table(&store).await;
    let head = append_n(&store, 250).await;
    let running = store
        .run_read_model(Query::all(), options("rm"), Applied::new(table.clone()))
        .await
        .unwrap();
    let reached = store
        .wait_for_checkpoint("rm", head, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(reached >= head);
    assert_eq!(applied(&table).await, once_each(head));
    let head = append_n(&store, 30).await;
    store
        .wait_for_checkpoint("rm", head, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(applied(&table).await, once_each(head));
    // A checkpoint that does not get there in time.
    let error = store
        .wait_for_checkpoint("rm", head + 1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    running.stop().await;
    assert_eq!(store.checkpoint("rm").await.unwrap(), Some(head));
}

#[actix::test]
async fn a_handler_error_rolls_its_writes_back_and_a_poison_event_is_parked() {
    let store = support::store("rm_errors").await;
    let table = applied_table(&store).await;
    let head = append_n(&store, 20).await;
    let mut model = Applied::new(table.clone());
    model.poison.insert(7);
    model.fail_once.lock().unwrap().extend([3, 15]);
    let running = store
        .run_read_model(
            Query::all(),
            options("rm").max_attempts(2).on_failure(OnFailure::Park),
            model,
        )
        .await
        .unwrap();
    store
        .wait_for_checkpoint("rm", head, Duration::from_secs(30))
        .await
        .unwrap();
    let mut expected = once_each(head);
    expected.remove(&7);
    assert_eq!(
        applied(&table).await,
        expected,
        "each once, the poison never"
    );
    let parked: Vec<u64> = store
        .parked("rm")
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    assert_eq!(parked, vec![7]);
    running.stop().await;
}

#[actix::test]
async fn a_stale_holder_commits_nothing() {
    let store = support::store("rm_stale").await;
    let schema = store.config().schema().to_owned();
    let table = applied_table(&store).await;
    let head = append_n(&store, 10).await;
    let gate = Arc::new(Semaphore::new(0));
    let written = Arc::new(tokio::sync::Notify::new());
    let mut model = Applied::new(table.clone());
    model.gate = Some(gate.clone());
    model.written = Some(written.clone());
    let running = store
        .run_read_model(Query::all(), options("rm"), model)
        .await
        .unwrap();
    // The holder has written its batch and waits before the commit; meanwhile
    // another holder takes over (the generation moves, as a takeover moves it).
    written.notified().await;
    support::client()
        .await
        .batch_execute(&format!(
            "UPDATE \"{schema}\".consumers SET generation = generation + 1 WHERE name = 'rm'"
        ))
        .await
        .unwrap();
    gate.add_permits(1);
    // The stale transaction rolled back: nothing of it is visible, and the checkpoint
    // did not move.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_stale = applied(&table).await;
    assert!(
        after_stale.is_empty(),
        "the stale holder committed {after_stale:?}"
    );
    assert_eq!(store.checkpoint("rm").await.unwrap(), None);
    // This process takes the consumer over again and applies everything once.
    gate.add_permits(1_000);
    store
        .wait_for_checkpoint("rm", head, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(applied(&table).await, once_each(head));
    running.stop().await;
}

#[actix::test]
async fn a_read_model_rebuilds_from_the_start_while_appends_go_on() {
    let store = support::store("rm_rebuild").await;
    let table = applied_table(&store).await;
    append_n(&store, 200).await;
    let model = Applied::new(table.clone());
    let resets = model.resets.clone();
    let running = store
        .run_read_model(Query::all(), options("rm"), model)
        .await
        .unwrap();
    store
        .wait_for_checkpoint("rm", 200, Duration::from_secs(20))
        .await
        .unwrap();
    let writer = {
        let store = store.clone();
        actix::spawn(async move {
            for _ in 0..30 {
                append_n(&store, 10).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    running.rebuild().await.unwrap();
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
    writer.await.unwrap();
    let head = store
        .read(&Query::all(), ReadOptions::default().backwards().limit(1))
        .await
        .unwrap()
        .events[0]
        .position;
    assert_eq!(head, 500);
    store
        .wait_for_checkpoint("rm", head, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(applied(&table).await, once_each(head));
    running.stop().await;
}

/// Reacts to `Subscribed` with one `WelcomeSent` (even positions by a plain append,
/// odd ones by a decision), and fails the first delivery of every event after its
/// reaction was appended, as a crash before the ack would.
struct Welcomer {
    failed_once: HashSet<u64>,
}

struct Welcomed(String);

impl Projection for Welcomed {
    type State = bool;
    fn name(&self) -> &'static str {
        "welcomed"
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types(["WelcomeSent"])
            .tags([self.0.as_str()])])
    }
    fn initial(&self) -> bool {
        false
    }
    fn apply(&self, _: &mut bool, _: &SequencedEvent) {}
}

impl ProcessManager for Welcomer {
    async fn react(
        &mut self,
        event: &SequencedEvent,
        reaction: &Reaction<'_>,
    ) -> Result<(), DeliveryError> {
        let tag = event.event.tags()[0].clone();
        let welcome = Event::new("WelcomeSent", serde_json::json!({})).with_tags([tag.clone()]);
        if event.position.is_multiple_of(2) {
            reaction.append(vec![welcome], None).await?;
        } else {
            reaction
                .decide(&Welcomed(tag), |_| Ok::<_, String>(vec![welcome.clone()]))
                .await?;
        }
        if self.failed_once.insert(event.position) {
            return Err(DeliveryError::new("crashed before the ack"));
        }
        Ok(())
    }
}

#[actix::test]
async fn a_process_manager_appends_each_reaction_once_though_events_come_again() {
    let store = support::store("pm_once").await;
    for i in 0..40 {
        store
            .append(
                vec![Event::new("Subscribed", serde_json::json!({})).with_tags([format!("s:{i}")])],
                None,
            )
            .await
            .unwrap();
    }
    let query = Query::new([QueryItem::new().types(["Subscribed"])]);
    let running = store
        .run_process_manager(
            query,
            options("welcome").batch_size(7).max_attempts(10),
            Welcomer {
                failed_once: HashSet::new(),
            },
        )
        .await
        .unwrap();
    store
        .wait_for_checkpoint("welcome", 40, Duration::from_secs(30))
        .await
        .unwrap();
    running.stop().await;
    let per_subscription = welcomes_per_tag(&store).await;
    assert_eq!(per_subscription.len(), 40);
    assert!(
        per_subscription.values().all(|&n| n == 1),
        "{per_subscription:?}"
    );
}

/// How many `WelcomeSent` events each first tag has.
pub(crate) async fn welcomes_per_tag(store: &EventStore) -> BTreeMap<String, usize> {
    let welcomes = store
        .read(
            &Query::new([QueryItem::new().types(["WelcomeSent"])]),
            ReadOptions::default(),
        )
        .await
        .unwrap()
        .events;
    let mut per_tag: BTreeMap<String, usize> = BTreeMap::new();
    for w in &welcomes {
        *per_tag.entry(w.event.tags()[0].clone()).or_default() += 1;
    }
    per_tag
}

/// A proxy to the test server that, while `cuts` is above zero, lets through the next
/// simple-query `COMMIT` it sees (a read model's: the writer commits through its append
/// function, the lease through plain statements), gives the server time to run it, and
/// then hangs up on that connection without passing the answer back. Other
/// connections, and later ones, pass untouched.
async fn commit_cutting_proxy(cuts: Arc<AtomicU32>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = support::server_address();
    actix::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let cut = Arc::new(tokio::sync::Notify::new());
            let holding = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (cut_back, hold) = (cut.clone(), holding.clone());
            actix::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    tokio::select! {
                        () = cut_back.notified() => return,
                        read = server_read.read(&mut buffer) => match read {
                            Ok(0) | Err(_) => return,
                            // Lost on the way back once the COMMIT went through.
                            Ok(_) if hold.load(Ordering::SeqCst) => {}
                            Ok(n) => {
                                if client_write.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        },
                    }
                }
            });
            let cuts = cuts.clone();
            actix::spawn(async move {
                if !support::pass_startup(&mut client_read, &mut server_write).await {
                    return;
                }
                loop {
                    let mut header = [0u8; 5];
                    if client_read.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    let mut body = vec![0u8; (len as usize).saturating_sub(4)];
                    if client_read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let commit = header[0] == b'Q' && body.starts_with(b"COMMIT");
                    let armed = commit
                        && cuts
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                    // The answers of what was sent before the COMMIT (the checkpoint's
                    // statement, pipelined with it) are lost too.
                    holding.store(armed, Ordering::SeqCst);
                    if server_write.write_all(&header).await.is_err()
                        || server_write.write_all(&body).await.is_err()
                    {
                        return;
                    }
                    if armed {
                        // The server commits; its answer never comes back.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        cut.notify_one();
                        return;
                    }
                }
            });
        }
    });
    port
}

#[actix::test]
async fn a_read_model_commit_whose_answer_is_lost_is_not_applied_twice() {
    let schema = support::unique_schema("rm_cut");
    let direct = EventStore::connect(support::config(&schema)).await.unwrap();
    let table = applied_table(&direct).await;
    let head = append_n(&direct, 60).await;
    let cuts = Arc::new(AtomicU32::new(0));
    let port = commit_cutting_proxy(cuts.clone()).await;
    let proxied = EventStore::connect(
        support::config(&schema)
            .with_database_url(support::url_via(port))
            .with_operation_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let gate = Arc::new(Semaphore::new(1));
    let mut model = Applied::new(table.clone());
    model.gate = Some(gate.clone());
    let running = proxied
        .run_read_model(Query::all(), options("rm").batch_size(10), model)
        .await
        .unwrap();
    // The first batch commits normally; the second's COMMIT answer is lost.
    direct
        .wait_for_checkpoint("rm", 10, Duration::from_secs(10))
        .await
        .unwrap();
    cuts.store(1, Ordering::SeqCst);
    gate.add_permits(1_000);
    direct
        .wait_for_checkpoint("rm", head, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(cuts.load(Ordering::SeqCst), 0, "a commit's answer was cut");
    assert_eq!(
        applied(&table).await,
        once_each(head),
        "the batch whose commit landed unanswered was not applied again"
    );
    running.stop().await;
}
