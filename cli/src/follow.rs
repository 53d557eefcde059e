//! `dcb-store bench subscribe`: what following the store costs.
//!
//! - catch-up: events/s a subscription delivers over a prefilled store (`--prefill`,
//!   every event), against `read_stream` of the same events, both in pages of 1,000;
//! - live latency: from the batch's transaction start (the events' `recorded_at`, so
//!   the commit itself is included) to delivery, at 1, 100 and 1,000 appends/s, with
//!   the writer in this process and in another (`dcb-store append` fed at that rate);
//! - fan-out: 1 and 100 live subscribers with different tag queries under the same
//!   appends: reads per committed batch and this process's CPU.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dcb_store::{
    Config, Error, Event, EventStore, Query, QueryItem, ReadOptions, SubscribeOptions,
};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::bench::BenchArgs;
use crate::prefill;

/// One figure of a bench that is not measured per mode (also `effects.rs`).
#[derive(Serialize)]
pub(crate) struct Row {
    pub measure: String,
    pub setting: String,
    pub value: f64,
    pub unit: &'static str,
    pub detail: String,
}

pub(crate) fn emit(json: bool, row: Row) {
    if json {
        println!("{}", serde_json::to_string(&row).unwrap_or_default());
    } else {
        println!(
            "{:<28} {:<26} {:>12.3} {:<10} {}",
            row.measure, row.setting, row.value, row.unit, row.detail
        );
    }
}

pub async fn run(config: Config, args: &BenchArgs) -> Result<std::process::ExitCode, Error> {
    let json = args.json;
    for &n in &args.prefill {
        catch_up(&config, n, json).await?;
    }
    for rate in [1u32, 100, 1000] {
        latency(&config, rate, false, args.seconds, json).await?;
        latency(&config, rate, true, args.seconds, json).await?;
    }
    for subscribers in [1usize, 100] {
        fan_out(&config, subscribers, args.seconds, json).await?;
    }
    slow_subscriber_memory(&config, json).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn catch_up(config: &Config, n: u64, json: bool) -> Result<(), Error> {
    prefill::ensure(config, n).await?;
    let store = EventStore::connect(config.clone().with_schema(prefill::schema_name(n))).await?;
    // Three rounds, the order alternating, so the cache favours neither.
    for round in 0..3 {
        let (stream, sub) = if round % 2 == 0 {
            let stream = stream_rate(&store).await?;
            (stream, subscription_rate(&store).await?)
        } else {
            let sub = subscription_rate(&store).await?;
            (stream_rate(&store).await?, sub)
        };
        let ((read, stream_rate), (delivered, sub_rate)) = (stream, sub);
        let setting = format!("{n} events, run {}", round + 1);
        emit(
            json,
            Row {
                measure: "catch-up read_stream".into(),
                setting: setting.clone(),
                value: stream_rate,
                unit: "events/s",
                detail: format!("{read} events"),
            },
        );
        emit(
            json,
            Row {
                measure: "catch-up subscription".into(),
                setting: setting.clone(),
                value: sub_rate,
                unit: "events/s",
                detail: format!("{delivered} events"),
            },
        );
        emit(
            json,
            Row {
                measure: "catch-up ratio".into(),
                setting,
                value: sub_rate / stream_rate,
                unit: "x",
                detail: "subscription / read_stream (target >= 0.9)".into(),
            },
        );
    }
    Ok(())
}

/// Events read through `read_stream` of every event, and their rate.
async fn stream_rate(store: &EventStore) -> Result<(u64, f64), Error> {
    let started = Instant::now();
    let mut events = store.read_stream(Query::all(), ReadOptions::default());
    let mut read = 0u64;
    while let Some(event) = events.next().await {
        event?;
        read += 1;
    }
    Ok((read, read as f64 / started.elapsed().as_secs_f64()))
}

/// Events a subscription to every event delivers until it reaches the head, and their
/// rate.
async fn subscription_rate(store: &EventStore) -> Result<(u64, f64), Error> {
    let started = Instant::now();
    let options = SubscribeOptions::default().batch_size(1000);
    let mut sub = store.subscribe(Query::all(), options).await?;
    let mut delivered = 0u64;
    while let Some(batch) = sub.next().await {
        let batch = batch?;
        delivered += batch.events.len() as u64;
        if batch.caught_up {
            break;
        }
    }
    Ok((
        delivered,
        delivered as f64 / started.elapsed().as_secs_f64(),
    ))
}

/// Peak memory while 100 subscribers do not poll and 200,000 events (about 300 bytes
/// each) are appended, then while they catch up: bounded by the shared buffer, not by
/// what they have not read.
async fn slow_subscriber_memory(config: &Config, json: bool) -> Result<(), Error> {
    let schema = schema("slow");
    let store = EventStore::connect(config.clone().with_schema(&schema)).await?;
    let mut subs = Vec::new();
    for i in 0..100 {
        let query = Query::new([QueryItem::new().tags([format!("k:{i}")])]);
        let mut sub = store.subscribe(query, SubscribeOptions::default()).await?;
        let _ = sub.next().await; // at the head
        subs.push(sub);
    }
    crate::bench::reset_peak_rss();
    let before = crate::bench::peak_rss_mib();
    let payload = "x".repeat(250);
    for chunk in 0..2_000u64 {
        let events = (0..100u64)
            .map(|i| {
                let tag = format!("k:{}", (chunk * 100 + i) % 100);
                Event::new("Bulk", serde_json::json!({"p": payload})).with_tags([tag])
            })
            .collect();
        store.append(events, None).await?;
    }
    let written = crate::bench::peak_rss_mib();
    let mut delivered = 0u64;
    for sub in &mut subs {
        sub_caught_up(sub, &mut delivered).await?;
    }
    let caught_up = crate::bench::peak_rss_mib();
    emit(
        json,
        Row {
            measure: "slow subscribers: peak RSS".into(),
            setting: "100 subscribers, 200,000 events unread".into(),
            value: written,
            unit: "MiB",
            detail: format!(
                "{before:.1} MiB before the appends; {caught_up:.1} MiB after all caught up ({delivered} events delivered)"
            ),
        },
    );
    Ok(())
}

/// Takes batches from `sub` until one reaches the head; counts their events.
async fn sub_caught_up(
    sub: &mut dcb_store::Subscription,
    delivered: &mut u64,
) -> Result<(), Error> {
    while let Some(batch) = sub.next().await {
        let batch = batch?;
        *delivered += batch.events.len() as u64;
        if batch.caught_up {
            break;
        }
    }
    Ok(())
}

fn schema(what: &str) -> String {
    format!(
        "bench_follow_{what}_{}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S_%6f")
    )
}

/// Appends one event per `1/rate` s for `seconds`, through `store` (so its writer wakes
/// its subscribers in memory) or from a child `dcb-store append` on `schema`; returns
/// when each append was acknowledged, by position (Unix microseconds).
async fn write_at(
    config: &Config,
    store: &EventStore,
    schema: &str,
    rate: u32,
    seconds: f64,
    other_process: bool,
    tags: impl Fn(u64) -> Vec<String>,
) -> Result<HashMap<u64, i64>, Error> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (f64::from(rate) * seconds).ceil() as u64;
    let started = tokio::time::Instant::now();
    let mut acknowledged = HashMap::new();
    if other_process {
        let exe = std::env::current_exe().map_err(|e| Error::Config(e.to_string()))?;
        let url = config.database_url().unwrap_or_default().to_owned();
        let mut child = Command::new(exe)
            .args([
                "append",
                "--timestamps",
                "--concurrency",
                "16",
                "--schema",
                schema,
            ])
            .env("DATABASE_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Config(format!("start the writer process: {e}")))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Config("stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Config("stdout".into()))?;
        // Read while writing: a full pipe would stop the child, and then this loop.
        let results = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut acknowledged = HashMap::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let (Some(p), Some(at)) = (
                    v["first_position"].as_u64(),
                    v["acknowledged_at_us"].as_i64(),
                ) {
                    acknowledged.insert(p, at);
                }
            }
            acknowledged
        });
        for i in 0..total {
            tokio::time::sleep_until(started + interval * i as u32).await;
            let line = serde_json::json!({"type": "Tick", "tags": tags(i), "data": {"i": i}});
            writeln!(stdin, "{line}").map_err(|e| Error::Config(e.to_string()))?;
            stdin.flush().map_err(|e| Error::Config(e.to_string()))?;
        }
        drop(stdin);
        acknowledged = tokio::task::spawn_blocking(move || {
            let _ = child.wait();
            results.join().unwrap_or_default()
        })
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    } else {
        let mut tasks = Vec::new();
        for i in 0..total {
            tokio::time::sleep_until(started + interval * i as u32).await;
            let store = store.clone();
            let event = Event::new("Tick", serde_json::json!({"i": i})).with_tags(tags(i));
            tasks.push(actix::spawn(async move {
                let r = store.append(vec![event], None).await;
                r.map(|r| (r.first_position, chrono::Utc::now().timestamp_micros()))
            }));
        }
        for task in tasks {
            if let Ok(Ok((p, at))) = task.await {
                acknowledged.insert(p, at);
            }
        }
    }
    Ok(acknowledged)
}

/// Microseconds to milliseconds, for the quantiles of `h`.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn latency(
    config: &Config,
    rate: u32,
    other_process: bool,
    seconds: f64,
    json: bool,
) -> Result<(), Error> {
    let schema = schema("latency");
    let store = EventStore::connect(config.clone().with_schema(&schema)).await?;
    let total = (f64::from(rate) * seconds).ceil() as u64;
    let query = Query::new([QueryItem::new().types(["Tick"])]);
    let mut sub = store.subscribe(query, SubscribeOptions::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds + 30.0);
    // (position, delivered, recorded_at), Unix microseconds.
    let collector = actix::spawn(async move {
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            let Ok(Some(Ok(batch))) = tokio::time::timeout_at(deadline, sub.next()).await else {
                break;
            };
            let now = chrono::Utc::now().timestamp_micros();
            for e in &batch.events {
                seen.push((e.position, now, e.recorded_at.timestamp_micros()));
            }
        }
        seen
    });
    let acknowledged = write_at(
        config,
        &store,
        &schema,
        rate,
        seconds,
        other_process,
        |_| vec![],
    )
    .await?;
    let seen = collector.await.map_err(|e| Error::Config(e.to_string()))?;
    // 1 µs to 10 min; `saturating_record` clamps to these bounds.
    let histogram = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let (mut after_ack, mut after_start) = (histogram(), histogram());
    let mut before_ack = 0;
    for (position, delivered, recorded) in &seen {
        after_start.saturating_record((delivered - recorded).max(1) as u64);
        if let Some(acked) = acknowledged.get(position) {
            // Subscribers of the writer's own store are woken before its callers are
            // answered, so delivery may come first: counted as 0.
            before_ack += u64::from(delivered < acked);
            after_ack.saturating_record((delivered - acked).max(1) as u64);
        }
    }
    let setting = format!(
        "{rate}/s, {}",
        if other_process {
            "other process"
        } else {
            "same process"
        }
    );
    let detail = |h: &Histogram<u64>, extra: String| {
        format!(
            "{} of {total} delivered, p99 {:.3} ms, max {:.3} ms{extra}",
            h.len(),
            quantile_ms(h, 0.99),
            quantile_ms(h, 1.0)
        )
    };
    emit(
        json,
        Row {
            measure: "live: ack to delivery p50".into(),
            setting: setting.clone(),
            value: quantile_ms(&after_ack, 0.5),
            unit: "ms",
            detail: detail(
                &after_ack,
                format!(", {before_ack} delivered before the ack"),
            ),
        },
    );
    emit(
        json,
        Row {
            measure: "live: tx start to delivery p50".into(),
            setting,
            value: quantile_ms(&after_start, 0.5),
            unit: "ms",
            detail: detail(&after_start, " (includes the commit)".into()),
        },
    );
    Ok(())
}

async fn fan_out(
    config: &Config,
    subscribers: usize,
    seconds: f64,
    json: bool,
) -> Result<(), Error> {
    const RATE: u32 = 200;
    const TAGS: u64 = 100;
    let schema = schema("fanout");
    let store = EventStore::connect(config.clone().with_schema(&schema)).await?;
    let total = (f64::from(RATE) * seconds).ceil() as u64;
    let mut consumers = Vec::new();
    let mut expected = 0;
    for i in 0..subscribers {
        let tag = format!("k:{}", i as u64 % TAGS);
        // Events are tagged k:0..k:99 in turn: how many this subscriber will see.
        let want = (0..total).filter(|n| n % TAGS == i as u64 % TAGS).count() as u64;
        expected += want;
        let query = Query::new([QueryItem::new().tags([tag])]);
        let mut sub = store.subscribe(query, SubscribeOptions::default()).await?;
        // At the head before the measurement starts: what follows is steady state.
        let _ = sub.next().await;
        consumers.push(actix::spawn(async move {
            let mut got = 0u64;
            while got < want {
                match tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
                    Ok(Some(Ok(batch))) => got += batch.events.len() as u64,
                    _ => break,
                }
            }
            got
        }));
    }
    let before = store.metrics().await?;
    let cpu_before = crate::bench::cpu_seconds();
    write_at(config, &store, &schema, RATE, seconds, false, |i| {
        vec![format!("k:{}", i % TAGS)]
    })
    .await?;
    let mut delivered = 0;
    for consumer in consumers {
        delivered += consumer.await.unwrap_or(0);
    }
    let cpu = crate::bench::cpu_seconds() - cpu_before;
    let after = store.metrics().await?;
    let batches = (after.batches - before.batches).max(1) as f64;
    let reads = (after.reads - before.reads) as f64;
    let setting = format!("{subscribers} subscribers, {RATE} appends/s");
    let detail = format!(
        "{delivered} of {expected} delivered; tail reads {}, catch-up reads {}, batches {}",
        after.subscription_tail_reads - before.subscription_tail_reads,
        after.subscription_catch_up_reads - before.subscription_catch_up_reads,
        batches
    );
    emit(
        json,
        Row {
            measure: "fan-out reads per batch".into(),
            setting: setting.clone(),
            value: reads / batches,
            unit: "reads",
            detail,
        },
    );
    emit(
        json,
        Row {
            measure: "fan-out process CPU".into(),
            setting,
            value: cpu / seconds,
            unit: "cores",
            detail: format!("{cpu:.2} s CPU in {seconds} s (writer included)"),
        },
    );
    Ok(())
}
