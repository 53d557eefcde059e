//! The metrics actor and the records the hot path sends it.
//!
//! Longer than most files: the records, the actor that folds them, and the public
//! snapshot types belong together; the Prometheus rendering is in `prometheus.rs`.
//!
//! Appends and reads only `try_send` a small [`Record`] into a bounded crossbeam
//! channel (counting what did not fit); the actor drains it on a timer and on every
//! snapshot request, so timing and counting never block or slow an operation. It
//! keeps the three levels of the original (method, SQL statement, component) as
//! latency histograms, plus counters, and renders Prometheus text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use hdrhistogram::Histogram;

mod consumers;
mod prometheus;
mod replicas;

pub use consumers::ConsumerMetrics;
pub(crate) use consumers::{ConsumerRegistry, ConsumerStats};
pub(crate) use replicas::ReplicaGauge;
pub use replicas::ReplicaMetrics;

/// The replicas by name, with the figures the router keeps for each.
pub(crate) type ReplicaList = Arc<[(String, Arc<dyn ReplicaGauge>)]>;

/// Upper bounds (seconds) of the latency histograms' buckets, as exported.
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the batch-size histograms' buckets (appends or events per batch).
pub(crate) const SIZE_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];

/// Operations callers invoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Method {
    Append,
    Read,
    Decide,
}

/// Statements the actors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Statement {
    Begin,
    Lock,
    Append,
    Commit,
    Notify,
    Listeners,
    Read,
    Prepare,
    /// After a batch, telling retries from duplicates among appends found stored.
    Stored,
}

/// Where an operation's time goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Component {
    QueryBuilding,
    SqlExecution,
    ResultProcessing,
}

/// One instrumentation record: small, `Copy`, cheap to send.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Record {
    Method {
        method: Method,
        elapsed: Duration,
        ok: bool,
    },
    Statement {
        statement: Statement,
        elapsed: Duration,
    },
    Component {
        method: Method,
        component: Component,
        elapsed: Duration,
    },
    Outcomes {
        events: u32,
        conditions_failed: u32,
    },

    Batch {
        appends: u32,
        events: u32,
        rounds: u32,
    },
    InvalidInput,
    DatabaseError {
        class: [u8; 2],
    },
    Timeout,
    StatementPrepared,
    /// A decision model built: leaves found in the cache or not, events folded.
    Decision {
        hits: u32,
        misses: u32,
        applied: u32,
    },
    /// `n` more of a subsystem's own counter.
    Count {
        counter: &'static Counter,
        n: u64,
    },
    /// One more of a subsystem's counter by reason, for `label`.
    CountLabelled {
        counter: &'static LabelledCounter,
        label: &'static str,
    },
    /// A read served: how fresh it asked to be and which server answered (`None`: the
    /// primary; for any consistency but `Strong`, because no replica could).
    Routed {
        consistency: Level,
        replica: Option<u16>,
    },
}

/// A read's [`Consistency`](crate::Consistency), without its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Strong,
    Eventual,
    AtLeast,
}

impl Level {
    pub(crate) fn of(consistency: crate::Consistency) -> Self {
        match consistency {
            crate::Consistency::Strong => Level::Strong,
            crate::Consistency::Eventual => Level::Eventual,
            crate::Consistency::AtLeast(_) => Level::AtLeast,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Strong => "strong",
            Level::Eventual => "eventual",
            Level::AtLeast => "at_least",
        }
    }
}

/// A count a subsystem keeps: which counter of [`MetricsSnapshot`] it adds to. Each
/// subsystem defines its own as `static`s beside the code that counts, so these
/// records carry no subsystem's vocabulary.
pub(crate) struct Counter(pub fn(&mut MetricsSnapshot) -> &mut u64);

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counter")
    }
}

impl std::fmt::Debug for LabelledCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelledCounter")
    }
}

/// A count by reason: which labelled counter of [`MetricsSnapshot`] it adds to.
pub(crate) struct LabelledCounter(pub fn(&mut MetricsSnapshot) -> &mut BTreeMap<String, u64>);

impl Record {
    /// One more of `counter`.
    pub(crate) fn one(counter: &'static Counter) -> Record {
        Record::Count { counter, n: 1 }
    }
}

/// The hot path's handle: cloneable, never blocks.
#[derive(Clone)]
pub(crate) struct MetricsSink {
    /// `None` when metrics are turned off (a benchmark baseline): records are dropped
    /// before they are built into a message.
    sender: Option<Sender<Record>>,
    dropped: Arc<AtomicU64>,
}

impl MetricsSink {
    pub(crate) fn record(&self, record: Record) {
        let Some(sender) = &self.sender else { return };
        if let Err(TrySendError::Full(_)) = sender.try_send(record) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn database_error(&self, error: &tokio_postgres::Error) {
        if self.sender.is_none() {
            return;
        }
        let class = error
            .code()
            .and_then(|c| c.code().as_bytes().get(..2).map(|b| [b[0], b[1]]))
            .unwrap_or(*b"??");
        self.record(Record::DatabaseError { class });
    }
}

/// Latency of one thing, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
    /// Cumulative counts: samples at or below each upper bound (seconds), one per
    /// exported bucket (`+Inf` is `count`).
    pub buckets: Vec<(f64, u64)>,
}

/// A point-in-time copy of everything the metrics actor knows.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// The store's schema: the `schema` label of every exported metric, so that two
    /// stores in one process (or many processes) do not collide.
    pub schema: String,
    /// Per public method (`append`, `read`), as the caller saw it.
    pub methods: BTreeMap<String, LatencySummary>,
    /// Per SQL statement (`begin`, `lock`, `append`, `commit`, `read`, `prepare`).
    pub statements: BTreeMap<String, LatencySummary>,
    /// Per method and component (`read.query_building`, `append.sql_execution`, ...).
    pub components: BTreeMap<String, LatencySummary>,
    /// Appends that succeeded.
    pub appends: u64,
    /// Appends that failed (any error, including failed conditions).
    pub appends_failed: u64,
    /// Events written.
    pub events_appended: u64,
    /// Reads that succeeded.
    pub reads: u64,
    /// Reads that failed.
    pub reads_failed: u64,
    /// Appends refused because their condition matched.
    pub conditions_failed: u64,
    /// Operations refused as invalid input.
    pub invalid_inputs: u64,
    /// Writer batches (transactions).
    pub batches: u64,
    /// Appends per batch: distribution.
    pub batch_appends: SizeSummary,
    /// Events per batch: distribution.
    pub batch_events: SizeSummary,
    /// Statement rounds per batch beyond the first (appends deferred within a batch).
    pub deferred_rounds: u64,
    /// Database errors by SQLSTATE class (`23`, `40`, `08`, ...; `??` without one).
    pub database_errors: BTreeMap<String, u64>,
    /// Operations that timed out.
    pub timeouts: u64,
    /// Statements prepared by readers (cache misses).
    pub statements_prepared: u64,
    /// Records the hot path dropped because the metrics channel was full.
    pub dropped_records: u64,
    /// Reads of new events into the live subscribers' shared buffer.
    pub subscription_tail_reads: u64,
    /// Reads by subscribers behind the shared buffer.
    pub subscription_catch_up_reads: u64,
    /// Durable consumers of this process, by name.
    pub consumers: BTreeMap<String, ConsumerMetrics>,
    /// Projection states found in the in-memory cache when building decision models.
    pub decision_cache_hits: u64,
    /// Projection states not in the cache (then loaded from a snapshot or rebuilt).
    pub decision_cache_misses: u64,
    /// Events folded per decision model built: distribution.
    pub decision_events_applied: SizeSummary,
    /// Snapshots loaded and used.
    pub snapshots_loaded: u64,
    /// Snapshots saved.
    pub snapshots_saved: u64,
    /// Snapshot saves that found one at the same or a later position (nothing written).
    pub snapshots_not_newer: u64,
    /// Snapshot saves that failed (serialising or writing), or were dropped because the
    /// saver was busy.
    pub snapshot_save_failures: u64,
    /// Stored snapshots ignored, by reason (`version`, `query`, `state`, `position`).
    pub snapshots_rejected: BTreeMap<String, u64>,
    /// Conflicts after which `decide` read again and decided again.
    pub decide_retries: u64,
    /// Read replicas, by name (`host:port`).
    pub replicas: BTreeMap<String, ReplicaMetrics>,
    /// Reads by consistency (`strong`, `eventual`, `at_least`) and the server that
    /// served them (`primary` or a replica's name).
    pub reads_routed: BTreeMap<(String, String), u64>,
    /// Reads that could go to a replica but were served by the primary (none in
    /// rotation, none had the position in time, or the replica failed), by consistency.
    pub replica_fallbacks: BTreeMap<String, u64>,
}

/// Distribution of a count (batch sizes).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SizeSummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Sum of all samples.
    pub sum: u64,
    /// Cumulative counts: samples at or below each upper bound.
    pub buckets: Vec<(u64, u64)>,
}

/// Asks the metrics actor for a snapshot (after draining its channel).
#[derive(Message)]
#[rtype(result = "MetricsSnapshot")]
pub(crate) struct GetSnapshot;

/// The actor that owns the histograms and counters.
pub(crate) struct MetricsActor {
    schema: String,
    receiver: Receiver<Record>,
    dropped: Arc<AtomicU64>,
    methods: BTreeMap<Method, Series>,
    statements: BTreeMap<Statement, Series>,
    components: BTreeMap<(Method, Component), Series>,
    batch_appends: Series,
    batch_events: Series,
    /// The counters, kept in the snapshot's own fields (one list of them: the
    /// public type's), the rest of it filled when a snapshot is taken.
    totals: MetricsSnapshot,
    database_errors: BTreeMap<[u8; 2], u64>,
    consumers: Arc<ConsumerRegistry>,
    heads: crate::base::heads::Heads,
    decision_events_applied: Series,
    replicas: ReplicaList,
    routed: BTreeMap<(Level, Option<u16>), u64>,
}

/// How often the actor drains the channel when nobody asks for a snapshot.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

impl MetricsActor {
    /// The actor and the sink the hot path records into.
    pub(crate) fn new(
        schema: &str,
        capacity: usize,
        enabled: bool,
        consumers: Arc<ConsumerRegistry>,
        heads: crate::base::heads::Heads,
        replicas: ReplicaList,
    ) -> (Self, MetricsSink) {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let actor = MetricsActor {
            schema: schema.to_owned(),
            receiver,
            dropped: dropped.clone(),
            methods: BTreeMap::new(),
            statements: BTreeMap::new(),
            components: BTreeMap::new(),
            batch_appends: Series::default(),
            batch_events: Series::default(),
            totals: MetricsSnapshot::default(),
            database_errors: BTreeMap::new(),
            consumers,
            heads,
            decision_events_applied: Series::default(),
            replicas,
            routed: BTreeMap::new(),
        };
        let sender = enabled.then_some(sender);
        (actor, MetricsSink { sender, dropped })
    }

    fn drain(&mut self) {
        while let Ok(record) = self.receiver.try_recv() {
            self.apply(record);
        }
    }

    fn apply(&mut self, record: Record) {
        let c = &mut self.totals;
        match record {
            Record::Method {
                method,
                elapsed,
                ok,
            } => {
                self.methods.entry(method).or_default().observe(elapsed);
                match (method, ok) {
                    (Method::Append, true) => c.appends += 1,
                    (Method::Append, false) => c.appends_failed += 1,
                    (Method::Read, true) => c.reads += 1,
                    (Method::Read, false) => c.reads_failed += 1,
                    (Method::Decide, _) => {}
                }
            }
            Record::Statement { statement, elapsed } => self
                .statements
                .entry(statement)
                .or_default()
                .observe(elapsed),
            Record::Component {
                method,
                component,
                elapsed,
            } => self
                .components
                .entry((method, component))
                .or_default()
                .observe(elapsed),
            Record::Outcomes {
                events,
                conditions_failed,
            } => {
                c.events_appended += u64::from(events);
                c.conditions_failed += u64::from(conditions_failed);
            }
            Record::Batch {
                appends,
                events,
                rounds,
            } => {
                c.batches += 1;
                c.deferred_rounds += u64::from(rounds.saturating_sub(1));
                self.batch_appends.count(u64::from(appends.max(1)));
                self.batch_events.count(u64::from(events.max(1)));
            }
            Record::InvalidInput => c.invalid_inputs += 1,
            Record::DatabaseError { class } => *self.database_errors.entry(class).or_default() += 1,
            Record::Timeout => c.timeouts += 1,
            Record::StatementPrepared => c.statements_prepared += 1,
            Record::Decision {
                hits,
                misses,
                applied,
            } => {
                c.decision_cache_hits += u64::from(hits);
                c.decision_cache_misses += u64::from(misses);
                self.decision_events_applied.count(u64::from(applied));
            }
            Record::Count { counter, n } => *(counter.0)(c) += n,
            Record::CountLabelled { counter, label } => {
                *(counter.0)(c).entry(label.to_owned()).or_default() += 1
            }
            Record::Routed {
                consistency,
                replica,
            } => *self.routed.entry((consistency, replica)).or_default() += 1,
        }
    }

    fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            schema: self.schema.clone(),
            methods: self
                .methods
                .iter()
                .map(|(m, h)| (method_name(*m).to_owned(), h.latency()))
                .collect(),
            statements: self
                .statements
                .iter()
                .map(|(s, h)| (statement_name(*s).to_owned(), h.latency()))
                .collect(),
            components: self
                .components
                .iter()
                .map(|((m, c), h)| {
                    (
                        format!("{}.{}", method_name(*m), component_name(*c)),
                        h.latency(),
                    )
                })
                .collect(),
            batch_appends: self.batch_appends.sizes(),
            batch_events: self.batch_events.sizes(),
            database_errors: self
                .database_errors
                .iter()
                .map(|(class, n)| (String::from_utf8_lossy(class).into_owned(), *n))
                .collect(),
            dropped_records: self.dropped.load(Ordering::Relaxed),
            consumers: self.consumers.snapshot(self.heads.current()),
            decision_events_applied: self.decision_events_applied.sizes(),
            replicas: replicas::snapshot(&self.replicas, &self.served_by_replica()),
            reads_routed: self
                .routed
                .iter()
                .map(|((level, replica), n)| {
                    let target = match replica {
                        None => "primary".to_owned(),
                        Some(i) => self
                            .replicas
                            .get(usize::from(*i))
                            .map_or_else(|| format!("replica-{i}"), |(name, _)| name.clone()),
                    };
                    ((level.name().to_owned(), target), *n)
                })
                .collect(),
            replica_fallbacks: self
                .routed
                .iter()
                .filter(|((level, replica), _)| replica.is_none() && *level != Level::Strong)
                .map(|((level, _), n)| (level.name().to_owned(), *n))
                .collect(),
            ..self.totals.clone()
        }
    }

    fn served_by_replica(&self) -> BTreeMap<u16, u64> {
        let mut served = BTreeMap::new();
        for ((_, replica), n) in &self.routed {
            if let Some(i) = replica {
                *served.entry(*i).or_default() += n;
            }
        }
        served
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(DRAIN_INTERVAL, |act, _| act.drain());
    }
}

impl Handler<GetSnapshot> for MetricsActor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Self::Context) -> Self::Result {
        self.drain();
        MessageResult(self.snapshot())
    }
}

/// One distribution: an HDR histogram (quantiles for the snapshot), and the exact sum
/// for the exported histogram. Latencies are kept in microseconds.
struct Series {
    histogram: Histogram<u64>,
    sum: u128,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            // 1 to 3.6e9 (an hour in microseconds), 3 significant digits; saturates above.
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            sum: 0,
        }
    }
}

impl Series {
    fn observe(&mut self, elapsed: Duration) {
        self.count(elapsed.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
    }

    fn count(&mut self, value: u64) {
        self.histogram.saturating_record(value);
        self.sum += u128::from(value);
    }

    /// Samples at or below `upper` (the histogram's precision: 0.1 %).
    fn at_or_below(&self, upper: u64) -> u64 {
        if self.histogram.is_empty() || upper == 0 {
            return 0;
        }
        self.histogram.count_between(0, upper)
    }

    fn latency(&self) -> LatencySummary {
        let h = &self.histogram;
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            sum_seconds: self.sum as f64 / 1e6,
            buckets: LATENCY_BUCKETS
                .iter()
                .map(|&le| (le, self.at_or_below((le * 1e6).round() as u64)))
                .collect(),
        }
    }

    fn sizes(&self) -> SizeSummary {
        let h = &self.histogram;
        SizeSummary {
            count: h.len(),
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            sum: u64::try_from(self.sum).unwrap_or(u64::MAX),
            buckets: SIZE_BUCKETS
                .iter()
                .map(|&le| (le, self.at_or_below(le)))
                .collect(),
        }
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Append => "append",
        Method::Read => "read",
        Method::Decide => "decide",
    }
}

fn statement_name(s: Statement) -> &'static str {
    match s {
        Statement::Begin => "begin",
        Statement::Lock => "lock",
        Statement::Append => "append",
        Statement::Commit => "commit",
        Statement::Notify => "notify",
        Statement::Listeners => "listeners",
        Statement::Read => "read",
        Statement::Prepare => "prepare",
        Statement::Stored => "stored",
    }
}

fn component_name(c: Component) -> &'static str {
    match c {
        Component::QueryBuilding => "query_building",
        Component::SqlExecution => "sql_execution",
        Component::ResultProcessing => "result_processing",
    }
}
