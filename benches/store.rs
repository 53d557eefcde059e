//! Micro-benchmarks of the hot path's pieces, against the real server where SQL is
//! involved (`DATABASE_URL`, or an embedded throwaway server):
//! - encoding a round of 100 appends into bind parameters;
//! - planning a batch of 2,000 appends into rounds, typical and worst cases;
//! - computing a read's shape and looking it up in the statement cache;
//! - decoding 1,000 rows into events;
//! - a read through the actors next to the same prepared statement on raw tokio-postgres
//!   (the actor overhead);
//! - a shaped read statement next to the one for many items, for small queries;
//! - a hot read shape alone, and while a stream of one-off shapes goes through the same
//!   reader (statement cache churn).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dcb_store::internals::{self, ShapeCache};
use dcb_store::{
    AppendCondition, Config, EmbeddedPostgres, Event, EventStore, Query, QueryItem, ReadOptions,
};

fn event(i: usize) -> Event {
    Event::new(
        "BenchAppended",
        serde_json::json!({"stream": i, "payload": "x".repeat(150)}),
    )
    .with_tags([format!("stream:{i}"), format!("client:{}", i % 64)])
}

fn encode(c: &mut Criterion) {
    let appends: Vec<(Vec<Event>, Option<AppendCondition>)> = (0..100)
        .map(|i| {
            let condition = (i % 2 == 0).then(|| {
                AppendCondition::new(
                    Query::new([QueryItem::new()
                        .types(["BenchAppended"])
                        .tags([format!("stream:{i}")])]),
                    Some(i as u64),
                )
            });
            (vec![event(i)], condition)
        })
        .collect();
    c.bench_function("encode a round of 100 appends", |b| {
        b.iter(|| black_box(internals::encode_append_round(black_box(&appends))))
    });
}

/// 2,000 appends of one event each (all tagged `shared` too), every append
/// conditioned by `condition(i)`.
fn batch_of(condition: impl Fn(usize) -> QueryItem) -> Vec<(Vec<Event>, Option<AppendCondition>)> {
    (0..2_000)
        .map(|i| {
            let query = Query::new([condition(i)]);
            let event = event(i).with_tags(["shared"]);
            (vec![event], Some(AppendCondition::new(query, None)))
        })
        .collect()
}

fn plan_rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan 2000 appends into rounds");
    let cases = [
        // Deciders on their own streams: the common case.
        (
            "own stream tags",
            batch_of(|i| QueryItem::new().tags([format!("stream:{i}")])),
        ),
        // Worst cases: every earlier event is a candidate and none matches (payload
        // only), or all share one tag and none matches, or every one conflicts.
        (
            "payload only, no match",
            batch_of(|_| QueryItem::new().data_all([("payload", "none")])),
        ),
        (
            "one shared tag, no match",
            batch_of(|_| QueryItem::new().tags(["shared"]).types(["Other"])),
        ),
        ("match everything", batch_of(|_| QueryItem::new())),
    ];
    for (name, appends) in &cases {
        let (rounds, planned) = internals::plan_rounds(appends);
        println!("{name}: {planned} appends planned into {rounds} rounds");
        group.bench_function(*name, |b| {
            b.iter(|| black_box(internals::plan_rounds(black_box(appends))))
        });
    }
    group.finish();
}

fn shape_lookup(c: &mut Criterion) {
    let mut cache = ShapeCache::new(64);
    let query = Query::new([
        QueryItem::new()
            .types(["CourseDefined", "StudentSubscribed"])
            .tags(["course:c1"]),
        QueryItem::new()
            .types(["StudentSubscribed"])
            .tags(["student:s1"]),
    ]);
    let options = ReadOptions::default();
    cache.lookup(&query, &options);
    c.bench_function("query shape + statement cache lookup", |b| {
        b.iter(|| black_box(cache.lookup(black_box(&query), &options)))
    });
}

/// The server URL and, when embedded, the server (kept alive for the benchmarks).
fn server() -> (String, Option<EmbeddedPostgres>) {
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => (url, None),
        None => {
            let pg = EmbeddedPostgres::start().expect("embedded PostgreSQL");
            (pg.url(), Some(pg))
        }
    }
}

fn with_store(c: &mut Criterion) {
    let (url, _embedded) = server();
    let system = actix::System::new();
    let schema = format!("bench_micro_{}", std::process::id());
    let query = Query::new([QueryItem::new().tags(["bulk"])]);
    let point = Query::new([QueryItem::new().types(["BenchAppended"]).tags(["stream:7"])]);
    let options = ReadOptions::default();
    let (store, client, bulk_statement, point_statement) = system.block_on(async {
        let store = EventStore::connect(
            Config::default()
                .with_database_url(&url)
                .with_schema(&schema),
        )
        .await
        .expect("connect");
        let events: Vec<Event> = (0..1_000).map(|i| event(i).with_tags(["bulk"])).collect();
        store.append(events, None).await.expect("fill");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("raw connect");
        actix::spawn(async move {
            let _ = connection.await;
        });
        // As the readers' connections are set up.
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await
            .expect("set");
        let bulk = client
            .prepare(&internals::read_statement(&schema, &query, &options))
            .await
            .expect("prepare");
        let point_statement = client
            .prepare(&internals::read_statement(&schema, &point, &options))
            .await
            .expect("prepare");
        (store, client, bulk, point_statement)
    });

    let rows = system
        .block_on(internals::raw_read(
            &client,
            &bulk_statement,
            &query,
            &options,
        ))
        .expect("rows");
    assert_eq!(rows.len(), 1_000);
    c.bench_function("decode 1000 rows into events", |b| {
        b.iter(|| black_box(internals::decode_rows(black_box(&rows), &options).expect("decode")))
    });

    let mut group = c.benchmark_group("point read round trip");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("raw tokio-postgres, same prepared statement", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(
                        internals::raw_read(&client, &point_statement, &point, &options)
                            .await
                            .expect("read"),
                    );
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("EventStore::read through the reader actor", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(store.read(&point, options).await.expect("read"));
                }
                started.elapsed()
            })
        })
    });
    group.finish();

    // Small queries: the statement of their own shape against the one for many items.
    let mut group = c.benchmark_group("shaped vs many-items statement");
    group.measurement_time(Duration::from_secs(5));
    let two = Query::new([
        QueryItem::new().types(["BenchAppended"]).tags(["stream:7"]),
        QueryItem::new().tags(["stream:8"]),
    ]);
    for (name, query) in [("1 item", &point), ("2 items", &two)] {
        let (shaped, many) = system.block_on(async {
            let shaped = client
                .prepare(&internals::read_statement(&schema, query, &options))
                .await
                .expect("prepare");
            let many = client
                .prepare(&internals::many_items_read_statement(&schema, &options))
                .await
                .expect("prepare");
            (shaped, many)
        });
        group.bench_function(format!("{name}, shaped"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(
                            internals::raw_read(&client, &shaped, query, &options)
                                .await
                                .expect("read"),
                        );
                    }
                    started.elapsed()
                })
            })
        });
        group.bench_function(format!("{name}, many-items"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(
                            internals::raw_read_many_items(&client, &many, query, &options)
                                .await
                                .expect("read"),
                        );
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();

    churn(c, &system, &url);
}

/// A query of 2 to 8 items whose shape is (almost surely) new: random parts per item,
/// each item probing a tag, so that every read is cheap and what differs is the shape.
fn one_off_query(seed: u64) -> Query {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let items = 2 + (next() % 7) as usize;
    Query::new((0..items).map(|_| {
        let bits = next();
        let mut item = QueryItem::new();
        if bits & 1 == 1 {
            item = item.types(["BenchAppended"]);
        }
        item = item.tags([format!("stream:{}", bits % 1000)]);
        if bits & 2 == 2 {
            item = item.data_all([("payload", "none")]);
        }
        if bits & 4 == 4 {
            item = item.data_any([("payload", "none")]);
        }
        if bits & 8 == 8 {
            item = item.occurred_from(chrono::DateTime::UNIX_EPOCH);
        }
        item
    }))
}

/// The hot shape's latency on a one-reader store, alone and while another caller
/// streams one-off shapes through the same reader.
fn churn(c: &mut Criterion, system: &actix::SystemRunner, url: &str) {
    let schema = format!("bench_churn_{}", std::process::id());
    let hot = Query::new([QueryItem::new().types(["BenchAppended"]).tags(["stream:7"])]);
    let options = ReadOptions::default();
    let store = system.block_on(async {
        let store = EventStore::connect(
            Config::default()
                .with_database_url(url)
                .with_schema(&schema)
                .with_readers(1),
        )
        .await
        .expect("connect");
        let events: Vec<Event> = (0..1_000).map(event).collect();
        store.append(events, None).await.expect("fill");
        store
    });
    let mut group = c.benchmark_group("hot shape under statement cache churn");
    group.measurement_time(Duration::from_secs(8));
    // Another caller reads all along: nothing, 16 shapes over and over (cached after
    // their first uses: the same load without churn), or a new shape every time.
    for (name, shapes) in [
        ("alone", None),
        ("with 16 recurring shapes", Some(16u64)),
        ("with one-off shapes", Some(u64::MAX)),
    ] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let others = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Some(shapes) = shapes {
            let (store, stop, others) = (store.clone(), stop.clone(), others.clone());
            system.block_on(async move {
                actix::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let _ = store.read(&one_off_query(n % shapes), options).await;
                        others.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            });
        }
        // Medians from per-read latencies (criterion's estimate is a mean).
        let mut latencies: Vec<Duration> = system.block_on(async {
            let mut latencies = Vec::with_capacity(4_000);
            for _ in 0..4_000 {
                let started = Instant::now();
                black_box(store.read(&hot, options).await.expect("read"));
                latencies.push(started.elapsed());
            }
            latencies
        });
        latencies.sort();
        println!(
            "churn, hot shape {name}: p50 {:?}, p90 {:?}, p99 {:?}",
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 9 / 10],
            latencies[latencies.len() * 99 / 100]
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(store.read(&hot, options).await.expect("read"));
                    }
                    started.elapsed()
                })
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!(
            "{name}: the other caller's reads meanwhile: {}",
            others.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    group.finish();
}

criterion_group!(benches, encode, plan_rounds, shape_lookup, with_store);
criterion_main!(benches);
