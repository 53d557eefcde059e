//! Exactly once under SIGKILL: child processes (this test binary, running the ignored
//! `crash_child`) run a read model and a process manager as durable consumers while
//! this process appends; each of 20 rounds kills a child inside one window (the
//! handler running, its writes done before the commit, a reaction committed before
//! its ack, just after a commit, the new holder of a takeover), then checks that the
//! read model equals a fold of the events and that every reaction was appended once.
//!
//! How a kill is known to land in its window: the child prints a marker on entering
//! the window and then stays in it for `DWELL` (the handler sleeps there); this
//! process kills it at a random moment within the first half of the dwell after
//! reading the marker. Every round's marker and kill delay are printed.
//!
//! Longer than most files because the child and the parent are written together:
//! the markers are their contract.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_store::tokio_postgres::Transaction;
use dcb_store::{
    DeliveryError, Event, EventBatch, EventStore, ProcessManager, Query, QueryItem, Reaction,
    ReadModel, ReadOptions, SequencedEvent, SubscribeOptions,
};
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support;

/// How long a child stays in a window after printing its marker.
const DWELL: Duration = Duration::from_millis(400);
const COURSES: u64 = 5;

fn marker(text: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "MARK {text}");
    let _ = out.flush();
}

/// The child's read model: seats per course, and each applied position.
struct Seats {
    schema: String,
    window: String,
}

impl ReadModel for Seats {
    async fn apply(
        &mut self,
        batch: &EventBatch,
        tx: &Transaction<'_>,
    ) -> Result<(), DeliveryError> {
        let first = batch.events.first().map_or(0, |e| e.position);
        marker(format!("handler {first}"));
        if self.window == "handler" || self.window == "committed" {
            tokio::time::sleep(DWELL).await;
        }
        let s = &self.schema;
        for e in &batch.events {
            let course = e.event.data::<serde_json::Value>()?["course"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            tx.execute(
                &format!(
                    "INSERT INTO \"{s}\".seats (course, taken) VALUES ($1, 1)
                     ON CONFLICT (course) DO UPDATE SET taken = seats.taken + 1"
                ),
                &[&course],
            )
            .await?;
            tx.execute(
                &format!("INSERT INTO \"{s}\".applied (position) VALUES ($1)"),
                &[&(e.position as i64)],
            )
            .await?;
        }
        marker(format!("written {}", batch.scanned_to));
        if self.window == "written" {
            tokio::time::sleep(DWELL).await;
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), DeliveryError> {
        let s = &self.schema;
        tx.batch_execute(&format!(
            "DELETE FROM \"{s}\".seats; DELETE FROM \"{s}\".applied"
        ))
        .await?;
        Ok(())
    }
}

/// The child's process manager: one `WelcomeSent` per subscription.
struct Welcome {
    window: String,
}

impl ProcessManager for Welcome {
    async fn react(
        &mut self,
        event: &SequencedEvent,
        reaction: &Reaction<'_>,
    ) -> Result<(), DeliveryError> {
        let welcome = Event::new("WelcomeSent", serde_json::json!({}))
            .with_tags(event.event.tags().iter().cloned());
        if reaction.append(vec![welcome], None).await?.is_some() {
            marker(format!("reacted {}", event.position));
            if self.window == "reacted" {
                tokio::time::sleep(DWELL).await;
            }
        }
        Ok(())
    }
}

fn subscribed() -> Query {
    Query::new([QueryItem::new().types(["Subscribed"])])
}

fn consumer(name: &str) -> SubscribeOptions {
    SubscribeOptions::default()
        .consumer(name)
        .batch_size(20)
        .standby_poll(Duration::from_millis(50))
        .retry_backoff(Duration::from_millis(20))
}

/// A child process: runs the read model and the process manager until killed.
#[actix::test]
#[ignore = "a child process of crashes::kills_in_every_window_leave_effects_exactly_once"]
async fn crash_child() {
    let var = |name: &str| std::env::var(name).expect("run by the crash test");
    let (url, schema, window) = (
        var("DCB_CRASH_URL"),
        var("DCB_CRASH_SCHEMA"),
        var("DCB_CRASH_WINDOW"),
    );
    let store = EventStore::connect(
        dcb_store::Config::default()
            .with_database_url(url)
            .with_schema(&schema),
    )
    .await
    .expect("connect");
    let seats = Seats {
        schema: schema.clone(),
        window: window.clone(),
    };
    let _model = store
        .run_read_model(subscribed(), consumer("seats"), seats)
        .await
        .expect("read model");
    let _manager = store
        .run_process_manager(
            subscribed(),
            consumer("welcome"),
            Welcome {
                window: window.clone(),
            },
        )
        .await
        .expect("process manager");
    marker("started".into());
    let mut seen = store.checkpoint("seats").await.ok().flatten().unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Ok(Some(now)) = store.checkpoint("seats").await {
            if now > seen {
                seen = now;
                marker(format!("committed {now}"));
            }
        }
    }
}

struct Running {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    async fn start(schema: &str, window: &str) -> Running {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crashes::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("DCB_CRASH_URL", support::database_url())
            .env("DCB_CRASH_SCHEMA", schema)
            .env("DCB_CRASH_WINDOW", window)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, lines }
    }

    /// Waits for a marker starting with `prefix` (and, for `committed`, beyond `after`).
    async fn until(&mut self, prefix: &str, after: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {prefix:?} marker in time"))
                .expect("read the child's output")
                .unwrap_or_else(|| panic!("the child ended before {prefix:?}"));
            // libtest may have begun the line ("test crashes::crash_child ... ").
            let Some(mark) = line.find("MARK ").map(|at| &line[at + 5..]) else {
                continue;
            };
            if let Some(rest) = mark.strip_prefix(prefix) {
                let at: u64 = rest.trim().parse().unwrap_or(0);
                if prefix != "committed" || at > after {
                    return mark.to_owned();
                }
            }
        }
    }

    /// SIGKILL at a random moment within the first half of the window's dwell.
    async fn kill_in_window(&mut self) -> Duration {
        let delay =
            Duration::from_millis(rand::thread_rng().gen_range(0..DWELL.as_millis() as u64 / 2));
        tokio::time::sleep(delay).await;
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
        delay
    }
}

/// Appends `Subscribed` events until `stop`, each with its own tag and a course.
fn load(store: EventStore, stop: Arc<AtomicBool>, from: u64) -> tokio::task::JoinHandle<u64> {
    actix::spawn(async move {
        let mut n = from;
        while !stop.load(Ordering::SeqCst) {
            let events = (0..3)
                .map(|k| {
                    let i = n + k;
                    Event::new(
                        "Subscribed",
                        serde_json::json!({ "course": format!("c{}", i % COURSES) }),
                    )
                    .with_tags([format!("s:{i}")])
                })
                .collect();
            store.append(events, None).await.expect("load append");
            n += 3;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        n
    })
}

/// The read model equals a fold of the events, and each subscription has exactly one
/// welcome.
async fn check(store: &EventStore, schema: &str, round: usize) {
    let events = store
        .read(&subscribed(), ReadOptions::default())
        .await
        .unwrap()
        .events;
    let mut seats: BTreeMap<String, i64> = BTreeMap::new();
    for e in &events {
        let data: serde_json::Value = e.event.data().unwrap();
        *seats
            .entry(data["course"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let client = support::client().await;
    let table: BTreeMap<String, i64> = client
        .query(
            &format!("SELECT course, taken::int8 FROM \"{schema}\".seats"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(table, seats, "round {round}: the read model is the fold");
    let twice: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT position FROM \"{schema}\".applied
                 GROUP BY position HAVING count(*) > 1) d"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "round {round}: an event applied twice");
    let per = crate::exactly_once::welcomes_per_tag(store).await;
    assert_eq!(
        per.len(),
        events.len(),
        "round {round}: a subscription without its welcome"
    );
    assert!(
        per.values().all(|&n| n == 1),
        "round {round}: a welcome appended twice"
    );
}

#[actix::test]
async fn kills_in_every_window_leave_effects_exactly_once() {
    let store = support::store("crashes").await;
    let schema = store.config().schema().to_owned();
    support::client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".seats (course text PRIMARY KEY, taken int NOT NULL);
             CREATE TABLE \"{schema}\".applied (position bigint NOT NULL)"
        ))
        .await
        .unwrap();
    let windows = ["handler", "written", "reacted", "committed", "takeover"];
    let mut next = 0;
    let mut hits: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..20 {
        let window = windows[round % windows.len()];
        let stop = Arc::new(AtomicBool::new(false));
        let loader = load(store.clone(), stop.clone(), next);
        let checkpoint = store.checkpoint("seats").await.unwrap().unwrap_or(0);
        let (mark, delay) = if window == "takeover" {
            // The holder dies mid-batch; the standby takes over and dies in its
            // first batch.
            let mut holder = Running::start(&schema, "handler").await;
            holder.until("started", 0).await;
            let mut standby = Running::start(&schema, "handler").await;
            standby.until("started", 0).await;
            holder.until("handler", 0).await;
            holder.kill_in_window().await;
            let mark = standby.until("handler", 0).await;
            (mark, standby.kill_in_window().await)
        } else {
            let mut child = Running::start(&schema, window).await;
            let prefix = if window == "committed" {
                "committed"
            } else {
                window
            };
            let mark = child.until(prefix, checkpoint).await;
            (mark, child.kill_in_window().await)
        };
        println!("round {round}: window {window}: killed {delay:?} after marker {mark:?}");
        *hits.entry(window).or_default() += 1;
        stop.store(true, Ordering::SeqCst);
        next = loader.await.unwrap();
        // A fresh process finishes the work; then everything is checked.
        let mut survivor = Running::start(&schema, "none").await;
        let head = store
            .read(&Query::all(), ReadOptions::default().backwards().limit(1))
            .await
            .unwrap()
            .events[0]
            .position;
        for name in ["seats", "welcome"] {
            store
                .wait_for_checkpoint(name, head, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {name} did not catch up: {e}"));
        }
        check(&store, &schema, round).await;
        survivor.child.start_kill().unwrap();
        let _ = survivor.child.wait().await;
    }
    println!("kills per window: {hits:?}");
    assert!(windows.iter().all(|w| hits.get(w) == Some(&4)));
}
