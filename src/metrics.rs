//! The metrics actor and the records the hot path sends it.
//!
//! Longer than most: the actor, the records and the Prometheus rendering still share
//! this file; the rendering moves out when the exposition is reworked (issue 8, item 4).
//!
//! Appends and reads only `try_send` a small [`Record`] into a bounded crossbeam
//! channel (counting what did not fit); the actor drains it on a timer and on every
//! snapshot request, so timing and counting never block or slow an operation. It
//! keeps the three levels of the original (method, SQL statement, component) as
//! latency histograms, plus counters, and renders Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use hdrhistogram::Histogram;

/// Operations callers invoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Method {
    Append,
    Read,
}

/// Statements the actors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Statement {
    Begin,
    Lock,
    Append,
    Commit,
    Read,
    Prepare,
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
}

/// A point-in-time copy of everything the metrics actor knows.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
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
}

/// Asks the metrics actor for a snapshot (after draining its channel).
#[derive(Message)]
#[rtype(result = "MetricsSnapshot")]
pub(crate) struct GetSnapshot;

/// The actor that owns the histograms and counters.
pub(crate) struct MetricsActor {
    receiver: Receiver<Record>,
    dropped: Arc<AtomicU64>,
    methods: BTreeMap<Method, Histogram<u64>>,
    statements: BTreeMap<Statement, Histogram<u64>>,
    components: BTreeMap<(Method, Component), Histogram<u64>>,
    batch_appends: Histogram<u64>,
    batch_events: Histogram<u64>,
    counters: Counters,
    database_errors: BTreeMap<[u8; 2], u64>,
}

#[derive(Default)]
struct Counters {
    appends: u64,
    appends_failed: u64,
    events_appended: u64,
    reads: u64,
    reads_failed: u64,
    conditions_failed: u64,
    invalid_inputs: u64,
    batches: u64,
    deferred_rounds: u64,
    timeouts: u64,
    statements_prepared: u64,
}

/// How often the actor drains the channel when nobody asks for a snapshot.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

impl MetricsActor {
    /// The actor and the sink the hot path records into.
    pub(crate) fn new(capacity: usize, enabled: bool) -> (Self, MetricsSink) {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let actor = MetricsActor {
            receiver,
            dropped: dropped.clone(),
            methods: BTreeMap::new(),
            statements: BTreeMap::new(),
            components: BTreeMap::new(),
            batch_appends: new_histogram(),
            batch_events: new_histogram(),
            counters: Counters::default(),
            database_errors: BTreeMap::new(),
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
        let c = &mut self.counters;
        match record {
            Record::Method {
                method,
                elapsed,
                ok,
            } => {
                observe(
                    self.methods.entry(method).or_insert_with(new_histogram),
                    elapsed,
                );
                match (method, ok) {
                    (Method::Append, true) => c.appends += 1,
                    (Method::Append, false) => c.appends_failed += 1,
                    (Method::Read, true) => c.reads += 1,
                    (Method::Read, false) => c.reads_failed += 1,
                }
            }
            Record::Statement { statement, elapsed } => observe(
                self.statements
                    .entry(statement)
                    .or_insert_with(new_histogram),
                elapsed,
            ),
            Record::Component {
                method,
                component,
                elapsed,
            } => observe(
                self.components
                    .entry((method, component))
                    .or_insert_with(new_histogram),
                elapsed,
            ),
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
                let _ = self.batch_appends.record(u64::from(appends.max(1)));
                let _ = self.batch_events.record(u64::from(events.max(1)));
            }
            Record::InvalidInput => c.invalid_inputs += 1,
            Record::DatabaseError { class } => *self.database_errors.entry(class).or_default() += 1,
            Record::Timeout => c.timeouts += 1,
            Record::StatementPrepared => c.statements_prepared += 1,
        }
    }

    fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.counters;
        MetricsSnapshot {
            methods: self
                .methods
                .iter()
                .map(|(m, h)| (method_name(*m).to_owned(), summarize(h)))
                .collect(),
            statements: self
                .statements
                .iter()
                .map(|(s, h)| (statement_name(*s).to_owned(), summarize(h)))
                .collect(),
            components: self
                .components
                .iter()
                .map(|((m, c), h)| {
                    (
                        format!("{}.{}", method_name(*m), component_name(*c)),
                        summarize(h),
                    )
                })
                .collect(),
            appends: c.appends,
            appends_failed: c.appends_failed,
            events_appended: c.events_appended,
            reads: c.reads,
            reads_failed: c.reads_failed,
            conditions_failed: c.conditions_failed,
            invalid_inputs: c.invalid_inputs,
            batches: c.batches,
            batch_appends: size_summary(&self.batch_appends),
            batch_events: size_summary(&self.batch_events),
            deferred_rounds: c.deferred_rounds,
            database_errors: self
                .database_errors
                .iter()
                .map(|(class, n)| (String::from_utf8_lossy(class).into_owned(), *n))
                .collect(),
            timeouts: c.timeouts,
            statements_prepared: c.statements_prepared,
            dropped_records: self.dropped.load(Ordering::Relaxed),
        }
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

fn new_histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 1 hour, 3 significant digits; `record` saturates above.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn observe(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(elapsed.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
}

fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

fn size_summary(h: &Histogram<u64>) -> SizeSummary {
    SizeSummary {
        count: h.len(),
        mean: if h.is_empty() { 0.0 } else { h.mean() },
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Append => "append",
        Method::Read => "read",
    }
}

fn statement_name(s: Statement) -> &'static str {
    match s {
        Statement::Begin => "begin",
        Statement::Lock => "lock",
        Statement::Append => "append",
        Statement::Commit => "commit",
        Statement::Read => "read",
        Statement::Prepare => "prepare",
    }
}

fn component_name(c: Component) -> &'static str {
    match c {
        Component::QueryBuilding => "query_building",
        Component::SqlExecution => "sql_execution",
        Component::ResultProcessing => "result_processing",
    }
}

impl MetricsSnapshot {
    /// The snapshot in Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, u64); 13] = [
            ("dcb_appends_total", "Appends that succeeded.", self.appends),
            (
                "dcb_appends_failed_total",
                "Appends that failed.",
                self.appends_failed,
            ),
            (
                "dcb_events_appended_total",
                "Events written.",
                self.events_appended,
            ),
            ("dcb_reads_total", "Reads that succeeded.", self.reads),
            (
                "dcb_reads_failed_total",
                "Reads that failed.",
                self.reads_failed,
            ),
            (
                "dcb_conditions_failed_total",
                "Appends refused by their condition.",
                self.conditions_failed,
            ),
            (
                "dcb_invalid_inputs_total",
                "Operations refused as invalid input.",
                self.invalid_inputs,
            ),
            (
                "dcb_batches_total",
                "Writer batches (transactions).",
                self.batches,
            ),
            (
                "dcb_deferred_rounds_total",
                "Extra statement rounds for intra-batch conflicts.",
                self.deferred_rounds,
            ),
            (
                "dcb_timeouts_total",
                "Operations that timed out.",
                self.timeouts,
            ),
            (
                "dcb_statements_prepared_total",
                "Read statements prepared (cache misses).",
                self.statements_prepared,
            ),
            (
                "dcb_metrics_dropped_records_total",
                "Instrumentation records dropped.",
                self.dropped_records,
            ),
            (
                "dcb_batch_appends_count",
                "Batches measured for size.",
                self.batch_appends.count,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dcb_database_errors_total Database errors by SQLSTATE class.\n# TYPE dcb_database_errors_total counter"
        );
        for (class, n) in &self.database_errors {
            let _ = writeln!(out, "dcb_database_errors_total{{class=\"{class}\"}} {n}");
        }
        let groups = [
            ("dcb_method_latency_ms", "method", &self.methods),
            ("dcb_statement_latency_ms", "statement", &self.statements),
            ("dcb_component_latency_ms", "component", &self.components),
        ];
        for (name, label, map) in groups {
            let _ = writeln!(
                out,
                "# HELP {name} Latency in milliseconds.\n# TYPE {name} summary"
            );
            for (key, s) in map {
                for (q, v) in [("0.5", s.p50_ms), ("0.9", s.p90_ms), ("0.99", s.p99_ms)] {
                    let _ = writeln!(out, "{name}{{{label}=\"{key}\",quantile=\"{q}\"}} {v}");
                }
                let _ = writeln!(
                    out,
                    "{name}_sum{{{label}=\"{key}\"}} {}",
                    s.mean_ms * s.count as f64
                );
                let _ = writeln!(out, "{name}_count{{{label}=\"{key}\"}} {}", s.count);
            }
        }
        out
    }
}
