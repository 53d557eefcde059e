//! Each replica's health, kept in atomics by the router's polls and by the routing of
//! reads (never on the append path): `in_rotation` decides where eventual reads go.
//! The metrics read the same figures through [`ReplicaGauge`].
//!
//! Whether a replica is reachable and in rotation lives in one word with a count of its
//! failures: a poll that started before a read marked the replica failed finds the
//! count moved and cannot put the replica back (only a poll started after the failure
//! can).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::{ReplicaGauge, ReplicaMetrics};

/// One replica's health, as the router last saw it.
#[derive(Default)]
pub(crate) struct ReplicaStats {
    /// Its head: the newest position it holds (every position up to it, too).
    head: AtomicU64,
    /// `failures << 2 | reachable << 1 | in_rotation`: whether it answered the router's
    /// last poll and has failed no read since; whether eventual reads may go to it
    /// (reachable and within the maximum lag); how many times it failed.
    health: AtomicU64,
    /// The primary's head minus its head, at the last poll.
    lag_events: AtomicU64,
    /// How long ago the primary had the oldest event it still lacks, in milliseconds.
    lag_ms: AtomicU64,
}

const REACHABLE: u64 = 0b10;
const IN_ROTATION: u64 = 0b01;
const FAILURE: u64 = 0b100;

/// What a poll of a replica captured when it started: the replica's failure count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PollTicket(u64);

impl ReplicaStats {
    /// Called as a poll starts; its answer is taken with [`ReplicaStats::polled`].
    pub(crate) fn poll_started(&self) -> PollTicket {
        PollTicket(self.health.load(Ordering::Acquire) / FAILURE)
    }

    /// Records the answer of the poll that got `ticket`. The figures are kept either
    /// way; the replica becomes reachable (and in rotation when `in_rotation`) only if
    /// it has not failed since the poll started.
    pub(crate) fn polled(
        &self,
        ticket: PollTicket,
        head: u64,
        lag_events: u64,
        lag: Duration,
        in_rotation: bool,
    ) {
        self.head.store(head, Ordering::Relaxed);
        self.lag_events.store(lag_events, Ordering::Relaxed);
        self.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
        let flags = REACHABLE | if in_rotation { IN_ROTATION } else { 0 };
        let _ = self
            .health
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |health| {
                (health / FAILURE == ticket.0).then_some((ticket.0 * FAILURE) | flags)
            });
    }

    /// Records a head the replica was seen with (heads only grow).
    pub(crate) fn saw_head(&self, head: u64) {
        self.head.fetch_max(head, Ordering::Relaxed);
    }

    /// Takes the replica out of rotation until a poll started after this sees it
    /// healthy again.
    pub(crate) fn failed(&self) {
        let _ = self
            .health
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |health| {
                Some((health / FAILURE + 1) * FAILURE)
            });
    }

    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    pub(crate) fn reachable(&self) -> bool {
        self.health.load(Ordering::Acquire) & REACHABLE != 0
    }

    pub(crate) fn in_rotation(&self) -> bool {
        self.health.load(Ordering::Acquire) & IN_ROTATION != 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_started_before_a_failure_cannot_put_the_replica_back() {
        let stats = ReplicaStats::default();
        let healthy = |s: &ReplicaStats| (s.reachable(), s.in_rotation());
        let ticket = stats.poll_started();
        stats.polled(ticket, 5, 0, Duration::ZERO, true);
        assert_eq!(healthy(&stats), (true, true));

        let stale = stats.poll_started();
        stats.failed(); // a read failed on it meanwhile
        stats.polled(stale, 6, 0, Duration::ZERO, true);
        assert_eq!(
            healthy(&stats),
            (false, false),
            "the stale answer is not trusted"
        );
        assert_eq!(stats.head(), 6, "its figures are kept");

        let fresh = stats.poll_started();
        stats.polled(fresh, 7, 0, Duration::ZERO, false);
        assert_eq!(healthy(&stats), (true, false), "reachable, but lagging");
        stats.polled(stats.poll_started(), 8, 0, Duration::ZERO, true);
        assert_eq!(healthy(&stats), (true, true));
    }
}
