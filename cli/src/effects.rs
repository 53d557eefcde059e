//! `dcb-store bench exactly-once`: what exactly once costs.
//!
//! - tracked appends against untracked ones: `--clients` closed-loop callers (each the
//!   process manager of a consumer of its own, tracking one more position per append),
//!   p50/p99 latency and appends/s, the two measured alternately in each `--repeat`;
//! - read model throughput: events applied per second into a table by
//!   `run_read_model` (the inserts and the checkpoint in one transaction) against a
//!   plain durable subscription that runs the same inserts outside a transaction (each
//!   its own commit) and then acks, at batch sizes 100 and 1,000, over `--prefill`
//!   events (default 20,000); the inserts one per event (what a read model usually
//!   does) or one multi-row insert per batch, every statement sent unnamed with its
//!   types (`execute_typed`: one round trip) on both sides.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dcb_store::tokio_postgres::Transaction;
use dcb_store::{
    AppendOptions, Config, DeliveryError, Error, Event, EventBatch, EventStore, Query, QueryItem,
    ReadModel, SubscribeOptions,
};
use hdrhistogram::Histogram;

use crate::bench::BenchArgs;
use crate::follow::{emit, Row};

pub async fn run(config: Config, args: &BenchArgs) -> Result<std::process::ExitCode, Error> {
    let schema = crate::bench::fresh_schema("exactly_once");
    let store = EventStore::connect(config.clone().with_schema(&schema)).await?;
    for round in 0..args.repeat.max(1) {
        for &clients in &args.clients {
            // Alternating which goes first, so drift favours neither.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for tracked in order {
                let (rate, p50, p99) = appends(&store, clients, tracked, args).await?;
                let setting = format!(
                    "K={clients} {} r{}",
                    if tracked { "tracked" } else { "untracked" },
                    round + 1
                );
                for (measure, value, unit) in [
                    ("append rate", rate, "appends/s"),
                    ("append p50", p50, "ms"),
                    ("append p99", p99, "ms"),
                ] {
                    emit(
                        args.json,
                        Row {
                            measure: measure.into(),
                            setting: setting.clone(),
                            value,
                            unit,
                            detail: String::new(),
                        },
                    );
                }
            }
        }
    }
    let events = args.prefill.first().copied().unwrap_or(20_000);
    let table = format!("\"{schema}\".applied");
    let head = prefill(&store, events, &table).await?;
    for round in 0..args.repeat.max(1) {
        for style in [Style::PerEvent, Style::MultiRow] {
            for batch in [100usize, 1000] {
                let order = if round % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for in_transaction in order {
                    let rate =
                        apply(&store, &table, batch, style, in_transaction, events, head).await?;
                    emit(
                        args.json,
                        Row {
                            measure: "read model rate".into(),
                            setting: format!(
                                "{style:?} batch={batch} {} r{}",
                                if in_transaction {
                                    "read-model"
                                } else {
                                    "ack-after"
                                },
                                round + 1
                            ),
                            value: rate,
                            unit: "events/s",
                            detail: format!("{events} events"),
                        },
                    );
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `clients` callers appending for the run's seconds (after its warm-up); appends/s
/// and the p50 and p99 latencies in milliseconds.
async fn appends(
    store: &EventStore,
    clients: usize,
    tracked: bool,
    args: &BenchArgs,
) -> Result<(f64, f64, f64), Error> {
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new(3).map_err(|e| Error::Config(e.to_string()))?,
    ));
    let started = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let end = warmup + Duration::from_secs_f64(args.seconds);
    let run = chrono::Utc::now().timestamp_micros();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (store, histogram) = (store.clone(), histogram.clone());
        let consumer = format!("pm-{run}-{client}");
        tasks.push(actix::spawn(async move {
            let mut position = 0u64;
            while started.elapsed() < end {
                position += 1;
                let event = Event::new("Reacted", serde_json::json!({ "to": position }))
                    .with_tags([format!("pm:{client}"), format!("to:{position}")]);
                let options = if tracked {
                    AppendOptions::default().tracking(&consumer, position)
                } else {
                    AppendOptions::default()
                };
                let sent = Instant::now();
                store.append_with(vec![event], None, options).await?;
                if started.elapsed() > warmup {
                    let micros = sent.elapsed().as_micros() as u64;
                    let _ = histogram.borrow_mut().record(micros.max(1));
                }
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|_| Error::Config("a bench task panicked".into()))??;
    }
    let histogram = histogram.borrow();
    let rate = histogram.len() as f64 / args.seconds;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok((rate, ms(0.5), ms(0.99)))
}

/// Appends `events` events of 100 courses, and creates the table both sides fill;
/// the position of the last.
async fn prefill(store: &EventStore, events: u64, table: &str) -> Result<u64, Error> {
    let (mut done, mut head) = (0, 0);
    while done < events {
        let chunk: Vec<Event> = (done..(done + 500).min(events))
            .map(|i| {
                Event::new(
                    "Applied",
                    serde_json::json!({ "course": format!("c{}", i % 100) }),
                )
            })
            .collect();
        done += chunk.len() as u64;
        head = store.append(chunk, None).await?.last_position;
    }
    let client = store.open_connection().await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (position bigint NOT NULL, course text NOT NULL)"
        ))
        .await
        .map_err(db)?;
    Ok(head)
}

fn db(e: dcb_store::tokio_postgres::Error) -> Error {
    Error::Config(format!("bench table: {e}"))
}

/// How the events of a batch are inserted.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// One `INSERT` per event.
    PerEvent,
    /// One `INSERT ... SELECT FROM unnest` per batch.
    MultiRow,
}

/// The inserts of `batch` in `style`, on `client` (a transaction or a plain client).
async fn insert<C: dcb_store::tokio_postgres::GenericClient>(
    client: &C,
    table: &str,
    style: Style,
    batch: &EventBatch,
) -> Result<(), dcb_store::tokio_postgres::Error> {
    use dcb_store::tokio_postgres::types::Type;
    let (positions, courses) = rows(batch);
    match style {
        Style::PerEvent => {
            let one = format!("INSERT INTO {table} (position, course) VALUES ($1, $2)");
            for (position, course) in positions.iter().zip(&courses) {
                client
                    .execute_typed(&one, &[(position, Type::INT8), (course, Type::TEXT)])
                    .await?;
            }
        }
        Style::MultiRow => {
            let all = format!(
                "INSERT INTO {table} (position, course)
                 SELECT * FROM unnest($1::int8[], $2::text[])"
            );
            client
                .execute_typed(
                    &all,
                    &[(&positions, Type::INT8_ARRAY), (&courses, Type::TEXT_ARRAY)],
                )
                .await?;
        }
    }
    Ok(())
}

fn rows(batch: &EventBatch) -> (Vec<i64>, Vec<String>) {
    batch
        .events
        .iter()
        .map(|e| {
            let course = e.event.data::<serde_json::Value>().ok();
            let course = course
                .as_ref()
                .and_then(|d| d["course"].as_str())
                .unwrap_or_default()
                .to_owned();
            (e.position as i64, course)
        })
        .unzip()
}

struct Applying {
    table: String,
    style: Style,
    /// Told when the batch with the last event (at `head`) has been applied.
    head: u64,
    done: Rc<tokio::sync::Notify>,
}

impl ReadModel for Applying {
    async fn apply(
        &mut self,
        batch: &EventBatch,
        tx: &Transaction<'_>,
    ) -> Result<(), DeliveryError> {
        insert(tx, &self.table, self.style, batch).await?;
        if batch.events.last().is_some_and(|e| e.position >= self.head) {
            self.done.notify_one();
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), DeliveryError> {
        let _ = tx;
        Ok(())
    }
}

/// Events per second until a fresh consumer of the `events` prefilled events (the
/// last at `head`) has applied them all: as a read model, or as a subscription that
/// inserts and then acks.
async fn apply(
    store: &EventStore,
    table: &str,
    batch: usize,
    style: Style,
    in_transaction: bool,
    events: u64,
    head: u64,
) -> Result<f64, Error> {
    let applied = Query::new([QueryItem::new().types(["Applied"])]);
    let client = store.open_connection().await?;
    client
        .batch_execute(&format!("TRUNCATE {table}"))
        .await
        .map_err(db)?;
    let name = format!(
        "apply-{}-{}",
        if in_transaction { "rm" } else { "ack" },
        chrono::Utc::now().timestamp_micros()
    );
    let options = SubscribeOptions::default()
        .consumer(&name)
        .batch_size(batch);
    let started = Instant::now();
    if in_transaction {
        let done = Rc::new(tokio::sync::Notify::new());
        let running = store
            .run_read_model(
                applied,
                options,
                Applying {
                    table: table.to_owned(),
                    style,
                    head,
                    done: done.clone(),
                },
            )
            .await?;
        // The last batch applied, then its commit: no polling while it runs.
        done.notified().await;
        store
            .wait_for_checkpoint(&name, head, Duration::from_secs(60))
            .await?;
        running.stop().await;
    } else {
        let mut sub = store.subscribe(applied, options).await?;
        while let Some(next) = sub.next().await {
            let next = next?;
            insert(&client, table, style, &next).await.map_err(db)?;
            sub.ack(next.scanned_to).await?;
            if next.scanned_to >= head {
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stored: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(db)?
        .get(0);
    if stored as u64 != events {
        return Err(Error::Config(format!(
            "{name}: {stored} rows applied, {events} expected"
        )));
    }
    Ok(events as f64 / elapsed)
}
