//! The Prometheus text exposition (format 0.0.4) of a [`MetricsSnapshot`]: counters
//! named `_total`, latencies as histograms in seconds with fixed buckets (they add up
//! across processes, unlike quantiles), batch sizes as histograms, and a `schema`
//! label on every series so that several stores, in one process or many, never
//! collide. `dashboards/dcb-store.json` queries these names.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{LatencySummary, MetricsSnapshot, SizeSummary};

/// A plain counter: its Prometheus name, its help, and the snapshot field holding it.
type Counter = (&'static str, &'static str, fn(&MetricsSnapshot) -> u64);

/// The plain counters: Prometheus name, help, and the snapshot field that holds the
/// count. Together with the public fields of [`MetricsSnapshot`], the one list of them.
const COUNTERS: [Counter; 15] = [
    ("dcb_appends_total", "Appends that succeeded.", |m| {
        m.appends
    }),
    (
        "dcb_appends_failed_total",
        "Appends that failed, failed conditions included.",
        |m| m.appends_failed,
    ),
    ("dcb_events_appended_total", "Events written.", |m| {
        m.events_appended
    }),
    ("dcb_reads_total", "Reads that succeeded.", |m| m.reads),
    ("dcb_reads_failed_total", "Reads that failed.", |m| {
        m.reads_failed
    }),
    (
        "dcb_conditions_failed_total",
        "Appends refused by their condition.",
        |m| m.conditions_failed,
    ),
    (
        "dcb_invalid_inputs_total",
        "Operations refused as invalid input.",
        |m| m.invalid_inputs,
    ),
    ("dcb_batches_total", "Writer batches (transactions).", |m| {
        m.batches
    }),
    (
        "dcb_deferred_rounds_total",
        "Extra statement rounds for conflicts within a batch.",
        |m| m.deferred_rounds,
    ),
    ("dcb_timeouts_total", "Operations that timed out.", |m| {
        m.timeouts
    }),
    (
        "dcb_statements_prepared_total",
        "Read statements prepared (cache admissions).",
        |m| m.statements_prepared,
    ),
    (
        "dcb_metrics_dropped_records_total",
        "Instrumentation records dropped because the metrics channel was full.",
        |m| m.dropped_records,
    ),
    (
        "dcb_subscription_tail_reads_total",
        "Reads of new events into the live subscribers' shared buffer.",
        |m| m.subscription_tail_reads,
    ),
    (
        "dcb_subscription_catch_up_reads_total",
        "Reads by subscribers behind the shared buffer.",
        |m| m.subscription_catch_up_reads,
    ),
    (
        "dcb_decide_retries_total",
        "Conflicts after which decide read again and decided again.",
        |m| m.decide_retries,
    ),
];

impl MetricsSnapshot {
    /// The snapshot in Prometheus text exposition format (version 0.0.4); serve it as
    /// `text/plain; version=0.0.4`.
    ///
    /// ```
    /// let text = dcb_store::MetricsSnapshot::default().to_prometheus();
    /// assert!(text.contains("# TYPE dcb_appends_total counter"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = Exposition {
            out: String::new(),
            schema: escape(&self.schema),
        };
        for (name, help, value) in COUNTERS {
            out.family(name, help, "counter");
            out.sample(name, &[], value(self));
        }
        out.family(
            "dcb_database_errors_total",
            "Database errors by SQLSTATE class.",
            "counter",
        );
        for (class, n) in &self.database_errors {
            out.sample("dcb_database_errors_total", &[("class", class)], *n);
        }
        out.latencies(
            "dcb_method_duration_seconds",
            "Time callers waited for an operation, by method.",
            labelled(&self.methods, "method"),
        );
        out.latencies(
            "dcb_statement_duration_seconds",
            "SQL statement time, by statement.",
            labelled(&self.statements, "statement"),
        );
        let components = self.components.iter().map(|(key, summary)| {
            let (method, component) = key.split_once('.').unwrap_or((key, ""));
            (vec![("method", method), ("component", component)], summary)
        });
        out.latencies(
            "dcb_component_duration_seconds",
            "Time inside an operation, by method and component (query building, SQL execution, result processing).",
            components.collect(),
        );
        out.sizes(
            "dcb_batch_appends",
            "Appends per writer batch.",
            &self.batch_appends,
        );
        out.sizes(
            "dcb_batch_events",
            "Events per writer batch.",
            &self.batch_events,
        );
        out.family(
            "dcb_decision_cache_total",
            "Projection states looked up in the decision cache, by result.",
            "counter",
        );
        out.sample(
            "dcb_decision_cache_total",
            &[("result", "hit")],
            self.decision_cache_hits,
        );
        out.sample(
            "dcb_decision_cache_total",
            &[("result", "miss")],
            self.decision_cache_misses,
        );
        out.sizes(
            "dcb_decision_events_applied",
            "Events folded per decision model built.",
            &self.decision_events_applied,
        );
        out.family(
            "dcb_snapshots_total",
            "Snapshots loaded, saved, not newer than the stored one, or failed to save.",
            "counter",
        );
        for (outcome, n) in [
            ("loaded", self.snapshots_loaded),
            ("saved", self.snapshots_saved),
            ("not_newer", self.snapshots_not_newer),
            ("failed", self.snapshot_save_failures),
        ] {
            out.sample("dcb_snapshots_total", &[("outcome", outcome)], n);
        }
        out.family(
            "dcb_snapshots_rejected_total",
            "Stored snapshots ignored, by reason (version, query, state, position).",
            "counter",
        );
        for (reason, n) in &self.snapshots_rejected {
            out.sample("dcb_snapshots_rejected_total", &[("reason", reason)], *n);
        }
        out.consumers(&self.consumers);
        out.family(
            "dcb_reads_routed_total",
            "Reads by consistency (strong, eventual, at_least) and the server that served them (primary or a replica).",
            "counter",
        );
        for ((consistency, target), n) in &self.reads_routed {
            out.sample(
                "dcb_reads_routed_total",
                &[("consistency", consistency), ("target", target)],
                *n,
            );
        }
        out.family(
            "dcb_replica_fallbacks_total",
            "Reads a replica could have served that the primary served, by consistency.",
            "counter",
        );
        for (consistency, n) in &self.replica_fallbacks {
            out.sample(
                "dcb_replica_fallbacks_total",
                &[("consistency", consistency)],
                *n,
            );
        }
        out.replicas(&self.replicas);
        out.out
    }
}

fn labelled<'a>(
    map: &'a BTreeMap<String, LatencySummary>,
    label: &'static str,
) -> Vec<(Vec<(&'static str, &'a str)>, &'a LatencySummary)> {
    map.iter()
        .map(|(key, summary)| (vec![(label, key.as_str())], summary))
        .collect()
}

struct Exposition {
    out: String,
    /// Escaped once.
    schema: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line: `name{schema="…",labels…} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{name}{{schema=\"{}\"", self.schema);
        for (key, value) in labels {
            let _ = write!(self.out, ",{key}=\"{}\"", escape(value));
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    /// Per durable consumer, labelled `consumer`.
    fn consumers(&mut self, consumers: &BTreeMap<String, super::ConsumerMetrics>) {
        type Value = fn(&super::ConsumerMetrics) -> f64;
        let families: [(&str, &str, &str, Value); 8] = [
            (
                "dcb_consumer_delivered_events_total",
                "Events handed to the consumer.",
                "counter",
                |c| c.delivered as f64,
            ),
            (
                "dcb_consumer_attempts_total",
                "Deliveries to the consumer's actor, retries included.",
                "counter",
                |c| c.attempts as f64,
            ),
            (
                "dcb_consumer_parked_total",
                "Events the consumer parked.",
                "counter",
                |c| c.parked as f64,
            ),
            (
                "dcb_consumer_lag_events",
                "Newest known position minus the consumer's checkpoint.",
                "gauge",
                |c| c.lag_events as f64,
            ),
            (
                "dcb_consumer_lag_seconds",
                "Age of the newest event of the last batch when handed over; 0 once caught up.",
                "gauge",
                |c| c.lag_seconds,
            ),
            (
                "dcb_consumer_caught_up",
                "1 when the consumer's last batch reached the head.",
                "gauge",
                |c| f64::from(u8::from(c.caught_up)),
            ),
            (
                "dcb_consumer_holder",
                "1 when a subscriber of this process holds the consumer.",
                "gauge",
                |c| f64::from(u8::from(c.holder)),
            ),
            (
                "dcb_consumer_last_progress_timestamp_seconds",
                "Unix time of the consumer's last batch; a stalled consumer's stops moving.",
                "gauge",
                |c| c.last_progress_seconds,
            ),
        ];
        for (name, help, kind, value) in families {
            self.family(name, help, kind);
            for (consumer, metrics) in consumers {
                self.sample(name, &[("consumer", consumer)], value(metrics));
            }
        }
    }

    /// Per read replica, labelled `replica`.
    fn replicas(&mut self, replicas: &BTreeMap<String, super::ReplicaMetrics>) {
        type Value = fn(&super::ReplicaMetrics) -> f64;
        let families: [(&str, &str, Value); 5] = [
            (
                "dcb_replica_head",
                "The newest position the replica holds.",
                |r| r.head as f64,
            ),
            (
                "dcb_replica_lag_events",
                "The primary's head minus the replica's.",
                |r| r.lag_events as f64,
            ),
            (
                "dcb_replica_lag_seconds",
                "How long ago the primary had the oldest event the replica lacks.",
                |r| r.lag_seconds,
            ),
            (
                "dcb_replica_reachable",
                "1 when the replica answered the router's last poll and has failed no read since.",
                |r| f64::from(u8::from(r.reachable)),
            ),
            (
                "dcb_replica_in_rotation",
                "1 when eventual reads go to the replica.",
                |r| f64::from(u8::from(r.in_rotation)),
            ),
        ];
        for (name, help, value) in families {
            self.family(name, help, "gauge");
            for (replica, metrics) in replicas {
                self.sample(name, &[("replica", replica)], value(metrics));
            }
        }
    }

    fn latencies(
        &mut self,
        name: &str,
        help: &str,
        series: Vec<(Vec<(&str, &str)>, &LatencySummary)>,
    ) {
        self.family(name, help, "histogram");
        for (labels, summary) in series {
            let buckets = summary.buckets.iter().map(|(le, n)| (format_le(*le), *n));
            self.histogram(name, &labels, buckets, summary.count, summary.sum_seconds);
        }
    }

    fn sizes(&mut self, name: &str, help: &str, sizes: &SizeSummary) {
        self.family(name, help, "histogram");
        let buckets = sizes.buckets.iter().map(|(le, n)| (le.to_string(), *n));
        self.histogram(name, &[], buckets, sizes.count, sizes.sum as f64);
    }

    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: impl Iterator<Item = (String, u64)>,
        count: u64,
        sum: f64,
    ) {
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets.chain(std::iter::once(("+Inf".to_owned(), count))) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// A bucket bound as Prometheus clients write it (`0.0001`, `1`, `2.5`).
fn format_le(le: f64) -> String {
    let text = format!("{le}");
    text.trim_end_matches(".0").to_owned()
}

/// A label value escaped as the exposition format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
