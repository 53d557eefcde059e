//! Each replica's health, kept in atomics by the router's polls and by the routing of
//! reads (never on the append path): `in_rotation` decides where eventual reads go.
//! The metrics read the same figures through [`ReplicaGauge`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::{ReplicaGauge, ReplicaMetrics};

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

impl ReplicaGauge for ReplicaStats {
    fn read(&self) -> ReplicaMetrics {
        ReplicaMetrics {
            head: self.head(),
            lag_events: self.lag_events.load(Ordering::Relaxed),
            lag_seconds: self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            reachable: self.reachable(),
            in_rotation: self.in_rotation(),
            ..ReplicaMetrics::default()
        }
    }
}
