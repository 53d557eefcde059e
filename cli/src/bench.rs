//! `dcb-store bench WORKLOAD`: closed-loop load against the real store, in several
//! modes in one run, with a table, `--json` lines and an optional SVG chart.
//!
//! Workloads: `append` (one ~200-byte event, 2 tags, no condition, per call),
//! `enrolment` (the course-subscription decision, `--decider plain,decide`, on an
//! empty store or one already holding `--prefill N` subscriptions spread over the
//! courses; invariants checked after each run), `cold-start` (the first decision on a boundary of 10,000 events,
//! with and without a snapshot, `cold.rs`),
//! `subscribe` (catch-up, live latency and fan-out of subscriptions, `follow.rs`),
//! `exactly-once` (tracked appends, read models, `effects.rs`),
//! `read` (reads of the `--queries` shapes, by default one tag, 100 events of one tag,
//! one type + tag, an
//! indexed data key alone and with a type, an `occurred_at` range of 100 events alone
//! and with a type, and a type + an undeclared data key, on a store pre-filled with
//! `--prefill N` events by binary COPY; with `--replicas 0,1,2` on a throwaway primary
//! with that many streaming replicas, reading with `Consistency::Eventual`; `append
//! --prefill N` appends into that store). Modes are the baselines the design is measured
//! against: `normal`, `no-batching` (one append per transaction), `no-cache`
//! (statements prepared per read), `no-metrics`, `no-notify` (no `NOTIFY` per batch),
//! `no-pipelining` (one batch in flight at a time).

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use dcb_store::{
    Config, Consistency, EmbeddedPostgres, Error, Event, EventStore, Query, QueryItem, ReadOptions,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;

use crate::enrolment::{Decider, Scenario};
use crate::prefill;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Append,
    Enrolment,
    Read,
    /// Subscriptions: catch-up, live latency, fan-out (`follow.rs`).
    Subscribe,
    /// The first decision on a large boundary, with and without a snapshot (`cold.rs`).
    ColdStart,
    /// Tracked against untracked appends; read models against ack-after subscriptions
    /// (`effects.rs`).
    ExactlyOnce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Normal,
    NoBatching,
    NoCache,
    NoMetrics,
    /// No `NOTIFY` per batch (`notify_commits = false`).
    NoNotify,
    /// One batch in flight at a time (`pipelining = false`).
    NoPipelining,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OccurredIndex {
    Btree,
    Brin,
    None,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    workload: Workload,
    /// Concurrent callers; one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub(crate) clients: Vec<usize>,
    /// Store modes to measure in this run.
    #[arg(long, value_delimiter = ',', default_value = "normal")]
    mode: Vec<Mode>,
    /// Measured seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Warm-up seconds before each measurement (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// For `read`: store sizes (events) to measure at (default 100000); for `append`:
    /// append into the store `read` fills with that many events (default: an empty
    /// store). For
    /// `enrolment`: subscriptions in the store before the run (default none). For
    /// `cold-start`: events in the boundary (default 10000).
    #[arg(long, value_delimiter = ',')]
    pub(crate) prefill: Vec<u64>,
    /// For `read`: measure with this many streaming replicas each (reads with
    /// `Consistency::Eventual`), on a throwaway primary and replicas this run starts
    /// (the prefilled store is copied to the replicas before they start).
    #[arg(long, value_delimiter = ',')]
    replicas: Vec<usize>,
    /// For `read`: the query shapes to measure (see `read_query`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tag,tag100,type+tag,key,type+key,range,type+range,undeclared"
    )]
    queries: Vec<String>,
    /// For `append` on a fresh store: declare this many indexed keys (of `order` and
    /// `customer`, which every appended event holds), one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    indexed_keys: Vec<usize>,
    /// For `append` on a fresh store: the index on `occurred_at` to measure with:
    /// `btree` (the store's), `brin` or `none` (the store's index replaced after
    /// connect), one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "btree")]
    occurred_index: Vec<OccurredIndex>,
    /// For `append` on a fresh store: also measure with the seed's GIN index
    /// (`jsonb_path_ops`) on data and no declared keys.
    #[arg(long)]
    data_gin: bool,
    /// For `enrolment`: how decisions are made, each measured in this run.
    #[arg(long, value_delimiter = ',', default_value = "plain,decide")]
    decider: Vec<Decider>,
    /// For `enrolment`: number of courses.
    #[arg(long, default_value_t = 5_000)]
    courses: usize,
    /// For `enrolment`: seats per course.
    #[arg(long, default_value_t = 10)]
    capacity: u64,
    /// For `enrolment`: number of students.
    #[arg(long, default_value_t = 25_000)]
    students: usize,
    /// For `enrolment`: most courses one student may take.
    #[arg(long, default_value_t = 5)]
    max_courses: u64,
    /// Repeat every measurement this many times (for medians and spread).
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: usize,
    /// Print one JSON object per measurement on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// After each measurement, print where the store's time went (statement and
    /// component latencies, p50) on stderr.
    #[arg(long)]
    statements: bool,
    /// Draw throughput and p99 against clients into this SVG file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub workload: String,
    pub mode: Mode,
    pub clients: usize,
    pub prefill: Option<u64>,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub events_per_s: f64,
    pub conflicts: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
    pub invariants: Option<bool>,
    /// Mean appends per writer batch over the whole run (0 with metrics off).
    pub batch_mean: f64,
    /// Operations that failed inside the window, and the time they took.
    pub errors: u64,
    pub time_lost_s: f64,
}

/// What one operation did.
#[derive(Clone, Copy, Default)]
struct OpOutcome {
    events: u64,
    conflicts: u64,
}

pub async fn run(config: Config, args: BenchArgs) -> Result<std::process::ExitCode, Error> {
    match args.workload {
        Workload::Subscribe => return crate::follow::run(config, &args).await,
        Workload::ColdStart => return crate::cold::run(config, &args).await,
        Workload::ExactlyOnce => return crate::effects::run(config, &args).await,
        _ => {}
    }
    let mut results = Vec::new();
    let sizes: Vec<Option<u64>> = match args.workload {
        Workload::Read if args.prefill.is_empty() => vec![Some(100_000)],
        Workload::Read | Workload::Enrolment | Workload::Append => {
            args.prefill.iter().copied().map(Some).collect()
        }
        _ => Vec::new(),
    };
    let sizes = if sizes.is_empty() { vec![None] } else { sizes };
    let deciders: Vec<&str> = args
        .decider
        .iter()
        .map(|d| match d {
            Decider::Plain => "plain",
            Decider::Decide => "decide",
        })
        .collect();
    let read_queries: Vec<&str> = args.queries.iter().map(String::as_str).collect();
    for query in &read_queries {
        if read_query(query, 1, 1).is_none() {
            return Err(Error::Config(format!("unknown read query {query:?}")));
        }
    }
    // Append variants: declared keys x occurred_at index, named as in their labels.
    let variants: Vec<String> = args
        .indexed_keys
        .iter()
        .flat_map(|k| {
            args.occurred_index.iter().map(move |index| match index {
                OccurredIndex::Btree => format!("keys={k}"),
                other => format!("keys={k}:occurred={}", format!("{other:?}").to_lowercase()),
            })
        })
        .chain(args.data_gin.then(|| "keys=0:gin".to_owned()))
        .collect();
    let variants: Vec<&str> = variants.iter().map(String::as_str).collect();
    let queries: &[&str] = match args.workload {
        Workload::Read => &read_queries,
        Workload::Enrolment => &deciders,
        Workload::Append => &variants,
        _ => &[""],
    };
    let mut invariants_ok = true;
    // With --replicas: a throwaway primary, filled, then copied to the replicas.
    let mut cluster: Option<(EmbeddedPostgres, Vec<EmbeddedPostgres>)> = None;
    let mut config = config;
    if args.workload == Workload::Read && !args.replicas.is_empty() {
        let primary = tokio::task::spawn_blocking(EmbeddedPostgres::start)
            .await
            .map_err(|e| Error::Embedded(e.to_string()))??;
        config = config.with_database_url(primary.url());
        cluster = Some((primary, Vec::new()));
    }
    let replica_counts = if args.replicas.is_empty() {
        vec![None]
    } else {
        args.replicas.iter().copied().map(Some).collect()
    };
    for size in sizes {
        if let (Some(n), Workload::Read | Workload::Append) = (size, args.workload) {
            prefill::ensure(&config, n).await?;
        }
        let urls = match &mut cluster {
            Some((primary, replicas)) => {
                let wanted = args.replicas.iter().copied().max().unwrap_or(0);
                while replicas.len() < wanted {
                    eprintln!(
                        "starting replica {} (a copy of the primary)",
                        replicas.len() + 1
                    );
                    replicas.push(primary.replica()?);
                }
                replicas.iter().map(EmbeddedPostgres::url).collect()
            }
            None => Vec::new(),
        };
        // Queries, replica counts and modes interleaved within each repeat, so that
        // drift of the machine (checkpoints, autovacuum) does not favour one of them.
        for _ in 0..args.repeat {
            for &query in queries {
                for &replicas in &replica_counts {
                    let config = match replicas {
                        Some(k) => config.clone().with_replica_urls(urls[..k].to_vec()),
                        None => config.clone(),
                    };
                    for &clients in &args.clients {
                        for &mode in &args.mode {
                            let m = measure(&config, &args, mode, clients, size, query).await?;
                            invariants_ok &= m.invariants != Some(false);
                            if args.json {
                                println!("{}", serde_json::to_string(&m).unwrap_or_default());
                            }
                            results.push(m);
                        }
                    }
                }
            }
        }
    }
    drop(cluster);
    if !args.json {
        print_table(&results);
        if args.repeat > 1 {
            print_medians(&results);
        }
    }
    if let Some(path) = &args.chart {
        crate::chart::draw(path, &results).map_err(Error::Config)?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(if invariants_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn mode_config(config: &Config, mode: Mode) -> Config {
    config
        .clone()
        .with_batching(mode != Mode::NoBatching)
        .with_metrics(mode != Mode::NoMetrics)
        .with_statement_cache_size(if mode == Mode::NoCache { 0 } else { 64 })
        .with_notify_commits(mode != Mode::NoNotify)
        .with_pipelining(mode != Mode::NoPipelining)
}

pub(crate) fn fresh_schema(workload: &str) -> String {
    format!(
        "bench_{}_{}",
        workload.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        chrono::Utc::now().format("%Y%m%d_%H%M%S_%6f")
    )
}

async fn measure(
    config: &Config,
    args: &BenchArgs,
    mode: Mode,
    clients: usize,
    prefill: Option<u64>,
    query: &str,
) -> Result<Measurement, Error> {
    let label = match args.workload {
        Workload::Append if query == "keys=0" => "append".to_owned(),
        Workload::Append => format!("append:{query}"),
        Workload::Enrolment => format!("enrolment:{query}"),
        Workload::Read if !args.replicas.is_empty() => {
            format!("read:{query}+{}replicas", config.replica_urls().len())
        }
        Workload::Read => format!("read:{query}"),
        Workload::Subscribe | Workload::ColdStart | Workload::ExactlyOnce => {
            return Err(Error::Config(format!(
                "{:?} is not measured per mode",
                args.workload
            )))
        }
    };
    let config = match (prefill, args.workload) {
        (Some(n), Workload::Read | Workload::Append) => prefill::store_config(config, n),
        (_, Workload::Append) => {
            let keys: usize = query
                .trim_start_matches("keys=")
                .split(':')
                .next()
                .and_then(|k| k.parse().ok())
                .unwrap_or(0);
            config
                .clone()
                .with_schema(fresh_schema(&label))
                .with_indexed_keys(prefill::INDEXED_KEYS.iter().take(keys).copied())
        }
        _ => config.clone().with_schema(fresh_schema(&label)),
    };
    let store = EventStore::connect(mode_config(&config, mode)).await?;
    if args.workload == Workload::Append && query.contains(':') {
        alter_indexes(&config, query).await?;
    }
    let store_metrics = store.clone();
    let progress = ProgressBar::new(((args.warmup + args.seconds) * 10.0) as u64);
    progress.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {elapsed:>4}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(format!("{label} {mode:?} x{clients}"));
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup),
        measured: Duration::from_secs_f64(args.seconds),
    };
    let ticker = {
        let progress = progress.clone();
        actix::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                progress.inc(1);
            }
        })
    };
    let (window, invariants) = match args.workload {
        Workload::Append => {
            let payload = "x".repeat(150);
            let window = drive(clients, timing, move |client| {
                let store = store.clone();
                let payload = payload.clone();
                async move {
                    let stream = rand::thread_rng().gen_range(0..100_000u32);
                    let event = Event::new(
                        "BenchAppended",
                        serde_json::json!({
                            "order": format!("o{stream}"), "customer": format!("c{client}"),
                            "payload": payload
                        }),
                    )
                    .with_tags([format!("stream:{stream}"), format!("client:{client}")]);
                    store.append(vec![event], None).await?;
                    Ok(OpOutcome {
                        events: 1,
                        conflicts: 0,
                    })
                }
            })
            .await?;
            (window, None)
        }
        Workload::Enrolment => {
            let scenario = Scenario {
                courses: args.courses,
                capacity: args.capacity,
                students: args.students,
                max_courses_per_student: args.max_courses,
            };
            let decider = if query == "decide" {
                Decider::Decide
            } else {
                Decider::Plain
            };
            scenario.define_courses(&store).await?;
            if let Some(n) = prefill {
                scenario.prefill(&store, n).await?;
            }
            let accepted = Rc::new(RefCell::new(std::collections::HashSet::new()));
            let counted = accepted.clone();
            let decider_store = store.clone();
            let window = drive(clients, timing, move |_| {
                let store = decider_store.clone();
                let accepted = counted.clone();
                async move {
                    let (course, student) = {
                        let mut rng = rand::thread_rng();
                        (
                            rng.gen_range(0..scenario.courses),
                            rng.gen_range(0..scenario.students),
                        )
                    };
                    let outcome = scenario.decide(decider, &store, course, student).await?;
                    if let Some(id) = outcome.accepted {
                        accepted.borrow_mut().insert(id);
                    }
                    Ok(OpOutcome {
                        events: u64::from(outcome.accepted.is_some()),
                        conflicts: outcome.conflicts,
                    })
                }
            })
            .await?;
            let accepted = accepted.borrow().clone();
            let (violations, _) = scenario.violations(&store, &accepted).await?;
            for v in &violations {
                eprintln!("invariant violated: {v}");
            }
            (window, Some(violations.is_empty()))
        }
        Workload::Subscribe | Workload::ColdStart | Workload::ExactlyOnce => {
            return Err(Error::Config("measured by its own module".into()))
        }
        Workload::Read => {
            let n = prefill.unwrap_or(1);
            let query = query.to_owned();
            // Without replicas, eventual reads go to the primary.
            let consistency = Consistency::Eventual;
            let window = drive(clients, timing, move |_| {
                let store = store.clone();
                let query = query.clone();
                async move {
                    let i = rand::thread_rng().gen_range(1..=n);
                    let query = read_query(&query, i, n)
                        .ok_or_else(|| Error::Config("unknown read query".into()))?;
                    let (query, options) = query;
                    let r = store.read(&query, options.consistency(consistency)).await?;
                    Ok(OpOutcome {
                        events: r.events.len() as u64,
                        conflicts: 0,
                    })
                }
            })
            .await?;
            (window, None)
        }
    };
    ticker.abort();
    progress.finish_and_clear();
    let store_snapshot = store_metrics.metrics().await.ok();
    let batch_mean = store_snapshot
        .as_ref()
        .map_or(0.0, |m| m.batch_appends.mean);
    if let (true, Some(m)) = (args.statements, &store_snapshot) {
        let p50s = |map: &std::collections::BTreeMap<String, dcb_store::LatencySummary>| {
            map.iter()
                .map(|(k, v)| format!("{k} {:.3}", v.p50_ms))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "{label} x{clients}: p50 ms: methods: {}; statements: {}; components: {}",
            p50s(&m.methods),
            p50s(&m.statements),
            p50s(&m.components)
        );
    }
    let ms = |q: f64| window.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let secs = window.elapsed.as_secs_f64();
    Ok(Measurement {
        workload: label,
        mode,
        clients,
        prefill,
        seconds: secs,
        ops: window.ops,
        ops_per_s: window.ops as f64 / secs,
        events_per_s: window.events as f64 / secs,
        conflicts: window.conflicts,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        cpu_s: window.cpu_s,
        peak_rss_mib: window.peak_rss_mib,
        invariants,
        batch_mean,
        errors: window.errors,
        time_lost_s: window.time_lost.as_secs_f64(),
    })
}

#[derive(Clone, Copy)]
struct Timing {
    warmup: Duration,
    measured: Duration,
}

/// What happened inside the measurement window.
struct Window {
    ops: u64,
    events: u64,
    conflicts: u64,
    errors: u64,
    time_lost: Duration,
    latency_us: Histogram<u64>,
    elapsed: Duration,
    cpu_s: f64,
    peak_rss_mib: f64,
}

/// Changes the indexes of a fresh bench schema as `variant` says: `:occurred=brin` or
/// `:occurred=none` replace the store's `occurred_at` B-tree, `:gin` adds the seed's GIN
/// index on data, to measure what each costs appends.
async fn alter_indexes(config: &Config, variant: &str) -> Result<(), Error> {
    let url = config
        .database_url()
        .ok_or_else(|| Error::Config("the index variants need DATABASE_URL".into()))?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    actix::spawn(async move {
        let _ = connection.await;
    });
    let schema = config.schema();
    let mut sql = String::new();
    if let Some(index) = variant.split(":occurred=").nth(1) {
        sql.push_str(&format!("DROP INDEX \"{schema}\".events_occurred_at;"));
        if index.starts_with("brin") {
            sql.push_str(&format!(
                "CREATE INDEX events_occurred_at_brin ON \"{schema}\".events USING brin (occurred_at);"
            ));
        }
    }
    if variant.ends_with(":gin") {
        sql.push_str(&format!(
            "CREATE INDEX events_data_gin ON \"{schema}\".events USING gin (data jsonb_path_ops);"
        ));
    }
    client.batch_execute(&sql).await?;
    Ok(())
}

/// The read of shape `name` around event `i` of the prefilled store of `n` events
/// (`None` for an unknown name), with its options. `tag100` reads 100 events of a tag
/// (one event in 7 has it) after event i: as many events as a range returns.
fn read_query(name: &str, i: u64, n: u64) -> Option<(Query, ReadOptions)> {
    let options = ReadOptions::default();
    if name == "tag100" {
        let item = QueryItem::new().tags([format!("kind:{}", i % 7)]);
        let after = i.min(n.saturating_sub(1_000));
        return Some((Query::new([item]), options.after(after).limit(100)));
    }
    let typed = QueryItem::new().types([prefill::event_type(i)]);
    // 100 consecutive events, 1 ms apart.
    let start = i.min(n.saturating_sub(100)).max(1);
    let range = |item: QueryItem| {
        item.occurred_from(prefill::occurred_at(start))
            .occurred_until(prefill::occurred_at(start + 100))
    };
    let item = match name {
        "tag" => QueryItem::new().tags([prefill::entity_tag(i)]),
        "type+tag" => typed.tags([prefill::entity_tag(i)]),
        "key" => QueryItem::new().data_all([("order", prefill::order(i))]),
        "type+key" => typed.data_all([("order", prefill::order(i))]),
        "range" => range(QueryItem::new()),
        "type+range" => range(typed),
        "undeclared" => typed.data_all([("region", prefill::region(i))]),
        _ => return None,
    };
    Some((Query::new([item]), options))
}

/// Runs `clients` callers in a closed loop (each starts its next operation when the
/// last one ends) for warm-up plus the measured time; counts what completes inside
/// the window. A failed operation (the server restarting, say) is counted with the
/// time it took, followed by a short pause, and the caller goes on.
async fn drive<F, Fut>(clients: usize, timing: Timing, op: F) -> Result<Window, Error>
where
    F: Fn(usize) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<OpOutcome, Error>> + 'static,
{
    let start = Instant::now();
    let window_start = start + timing.warmup;
    let window_end = window_start + timing.measured;
    let stats = Rc::new(RefCell::new(Window {
        ops: 0,
        events: 0,
        conflicts: 0,
        errors: 0,
        time_lost: Duration::ZERO,
        latency_us: Histogram::new(3).map_err(|e| Error::Config(e.to_string()))?,
        elapsed: timing.measured,
        cpu_s: 0.0,
        peak_rss_mib: 0.0,
    }));
    let cpu_at_start = Rc::new(RefCell::new(None));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (op, stats, cpu_at_start) = (op.clone(), stats.clone(), cpu_at_start.clone());
            actix::spawn(async move {
                loop {
                    let began = Instant::now();
                    if began >= window_end {
                        return Ok::<(), Error>(());
                    }
                    if began >= window_start && cpu_at_start.borrow().is_none() {
                        reset_peak_rss();
                        *cpu_at_start.borrow_mut() = Some(cpu_seconds());
                    }
                    let outcome = match op(client).await {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            let done = Instant::now();
                            if done >= window_start && done < window_end {
                                let mut s = stats.borrow_mut();
                                s.errors += 1;
                                s.time_lost += done - began;
                            }
                            tracing::debug!(error = %e, "operation failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let done = Instant::now();
                    if done >= window_start && done < window_end {
                        let mut s = stats.borrow_mut();
                        s.ops += 1;
                        s.events += outcome.events;
                        s.conflicts += outcome.conflicts;
                        let _ = s.latency_us.record((done - began).as_micros() as u64);
                    }
                }
            })
        })
        .collect();
    // A failed caller ends the measurement: stop the others rather than leave them running.
    let mut failure = None;
    for task in tasks {
        if failure.is_some() {
            task.abort();
            continue;
        }
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => {
                failure = Some(Error::Closed {
                    may_have_been_written: false,
                })
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let cpu_start = cpu_at_start.borrow().unwrap_or_else(cpu_seconds);
    let mut window = Rc::try_unwrap(stats)
        .map_err(|_| Error::Closed {
            may_have_been_written: false,
        })?
        .into_inner();
    window.cpu_s = cpu_seconds() - cpu_start;
    window.peak_rss_mib = peak_rss_mib();
    Ok(window)
}

/// User plus system CPU time of this process (all threads), in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Resets the kernel's peak-RSS mark, so each measurement reports its own peak.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset (`VmHWM`), in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Per workload, mode, clients and size: the median over the repeats of ops/s (with
/// the range) and of p50.
fn print_medians(results: &[Measurement]) {
    let mut groups: Vec<(String, Vec<&Measurement>)> = Vec::new();
    for m in results {
        let key = format!(
            "{:<24} {:<11} {:>7} {:>9}",
            m.workload,
            format!("{:?}", m.mode).to_lowercase(),
            m.clients,
            m.prefill.map_or("-".to_owned(), |n| n.to_string())
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(m),
            None => groups.push((key, vec![m])),
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "\nmedians over repeats\n{:<24} {:<11} {:>7} {:>9} {:>24} {:>8}",
        "workload", "mode", "clients", "prefill", "ops/s (min..max)", "p50 ms"
    );
    for (key, group) in groups {
        let ops: Vec<f64> = group.iter().map(|m| m.ops_per_s).collect();
        let (low, high) = ops
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
        let range = format!("{:.0} ({low:.0}..{high:.0})", median(ops.clone()));
        let p50 = median(group.iter().map(|m| m.p50_ms).collect());
        println!("{key} {range:>24} {p50:>8.3}");
    }
}

fn print_table(results: &[Measurement]) {
    println!(
        "{:<24} {:<11} {:>7} {:>9} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>4} {:>7} {:>7}",
        "workload",
        "mode",
        "clients",
        "prefill",
        "ops/s",
        "events/s",
        "conflicts",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "cpu s",
        "rss MiB",
        "batch",
        "inv",
        "errors",
        "lost s"
    );
    for m in results {
        println!(
            "{:<24} {:<11} {:>7} {:>9} {:>10.0} {:>10.0} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.1} {:>6.1} {:>4} {:>7} {:>7.1}",
            m.workload,
            format!("{:?}", m.mode).to_lowercase(),
            m.clients,
            m.prefill.map_or("-".to_owned(), |n| n.to_string()),
            m.ops_per_s,
            m.events_per_s,
            m.conflicts,
            m.p50_ms,
            m.p90_ms,
            m.p99_ms,
            m.cpu_s,
            m.peak_rss_mib,
            m.batch_mean,
            match m.invariants {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "-",
            },
            m.errors,
            m.time_lost_s
        );
    }
}
