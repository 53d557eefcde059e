//! Per-replica figures: kept in atomics by the router's polls and the routing of reads
//! (never on the append path), read by the routing and by the metrics actor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One replica's health, as the router last saw it.
#[derive(Default)]
pub(crate) struct ReplicaStats {
    /// Its head: the newest position it holds (every position up to it, too).
    head: AtomicU64,
    /// Whether it answered the router's last poll and has failed no read since.
    reachable: AtomicBool,
    /// Whether eventual reads may go to it: reachable and within the maximum lag.
    in_rotation: AtomicBool,
    /// The primary's head minus its head, at the last poll.
    lag_events: AtomicU64,
    /// How long ago the primary had the oldest event it still lacks, in milliseconds.
    lag_ms: AtomicU64,
}

impl ReplicaStats {
    /// Records a poll the replica answered.
    pub(crate) fn polled(&self, head: u64, lag_events: u64, lag: Duration, in_rotation: bool) {
        self.head.store(head, Ordering::Relaxed);
        self.lag_events.store(lag_events, Ordering::Relaxed);
        self.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
        self.reachable.store(true, Ordering::Relaxed);
        self.in_rotation.store(in_rotation, Ordering::Relaxed);
    }

    /// Records a head the replica was seen with (heads only grow).
    pub(crate) fn saw_head(&self, head: u64) {
        self.head.fetch_max(head, Ordering::Relaxed);
    }

    /// Takes the replica out of rotation until the router sees it healthy again.
    pub(crate) fn failed(&self) {
        self.reachable.store(false, Ordering::Relaxed);
        self.in_rotation.store(false, Ordering::Relaxed);
    }

    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    pub(crate) fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Relaxed)
    }
}

/// One read replica as this process sees it.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplicaMetrics {
    /// The newest position the replica holds.
    pub head: u64,
    /// The primary's head minus the replica's.
    pub lag_events: u64,
    /// How long ago the primary had the oldest event the replica still lacks (0 when
    /// it has everything).
    pub lag_seconds: f64,
    /// Whether it answered the last poll and its last read.
    pub reachable: bool,
    /// Whether eventual reads go to it.
    pub in_rotation: bool,
    /// Reads it served.
    pub reads: u64,
}

/// The replicas' figures by name, with the reads each served (`served`, by index).
pub(crate) fn snapshot(
    replicas: &[(String, std::sync::Arc<ReplicaStats>)],
    served: &BTreeMap<u16, u64>,
) -> BTreeMap<String, ReplicaMetrics> {
    replicas
        .iter()
        .enumerate()
        .map(|(i, (name, s))| {
            let metrics = ReplicaMetrics {
                head: s.head(),
                lag_events: s.lag_events.load(Ordering::Relaxed),
                lag_seconds: s.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                reachable: s.reachable(),
                in_rotation: s.in_rotation(),
                reads: served.get(&(i as u16)).copied().unwrap_or(0),
            };
            (name.clone(), metrics)
        })
        .collect()
}
