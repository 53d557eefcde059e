//! Per-consumer figures: kept in atomics by each durable consumer's own loop (never
//! on the append or read path) and read by the metrics actor for a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One durable consumer's counters, as this process sees it.
#[derive(Default)]
pub(crate) struct ConsumerStats {
    pub delivered: AtomicU64,
    pub batches: AtomicU64,
    pub attempts: AtomicU64,
    pub parked: AtomicU64,
    /// Subscribers of this process holding the consumer (0 or 1, unless a lease was
    /// lost unnoticed).
    pub holders: AtomicU64,
    pub caught_up: AtomicBool,
    /// The stored checkpoint (0: none).
    pub checkpoint: AtomicU64,
    /// Unix time of the last batch, in milliseconds.
    pub last_progress_ms: AtomicU64,
    /// Age of the newest event of the last batch when it was sent (0 once caught up),
    /// in milliseconds.
    pub lag_ms: AtomicU64,
}

impl ConsumerStats {
    /// Counts a batch of `events` handed to the consumer, whose newest event was
    /// recorded at `newest` (`None`: an empty batch), and which `caught_up` or not.
    pub(crate) fn sent(
        &self,
        events: usize,
        newest: Option<chrono::DateTime<chrono::Utc>>,
        caught_up: bool,
    ) {
        let now = chrono::Utc::now();
        self.delivered.fetch_add(events as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.caught_up.store(caught_up, Ordering::Relaxed);
        self.last_progress_ms
            .store(now.timestamp_millis().max(0) as u64, Ordering::Relaxed);
        let lag = match (caught_up, newest) {
            (false, Some(newest)) => (now - newest).num_milliseconds().max(0) as u64,
            _ => 0,
        };
        self.lag_ms.store(lag, Ordering::Relaxed);
    }
}

/// The consumers of one store, by name.
#[derive(Default)]
pub(crate) struct ConsumerRegistry {
    consumers: Mutex<BTreeMap<String, Arc<ConsumerStats>>>,
}

impl ConsumerRegistry {
    /// The stats of `name` (shared by the subscribers of that name in this process).
    pub(crate) fn stats(&self, name: &str) -> Arc<ConsumerStats> {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        consumers.entry(name.to_owned()).or_default().clone()
    }

    /// A snapshot of every consumer; lag in events against `head`.
    pub(crate) fn snapshot(&self, head: u64) -> BTreeMap<String, ConsumerMetrics> {
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        consumers
            .iter()
            .map(|(name, s)| {
                let checkpoint = s.checkpoint.load(Ordering::Relaxed);
                let metrics = ConsumerMetrics {
                    holder: s.holders.load(Ordering::Relaxed) > 0,
                    delivered: s.delivered.load(Ordering::Relaxed),
                    batches: s.batches.load(Ordering::Relaxed),
                    attempts: s.attempts.load(Ordering::Relaxed),
                    parked: s.parked.load(Ordering::Relaxed),
                    caught_up: s.caught_up.load(Ordering::Relaxed),
                    checkpoint,
                    lag_events: head.saturating_sub(checkpoint),
                    lag_seconds: s.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                    last_progress_seconds: s.last_progress_ms.load(Ordering::Relaxed) as f64
                        / 1000.0,
                };
                (name.clone(), metrics)
            })
            .collect()
    }
}

/// One durable consumer as this process sees it.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ConsumerMetrics {
    /// Whether a subscriber of this process holds the consumer.
    pub holder: bool,
    /// Events handed to the consumer.
    pub delivered: u64,
    /// Batches handed to the consumer (empty progress batches included).
    pub batches: u64,
    /// Deliveries to an actor, retries included.
    pub attempts: u64,
    /// Events parked.
    pub parked: u64,
    /// Whether the last batch reached the head.
    pub caught_up: bool,
    /// The stored checkpoint, as last written or read by this process (0: none).
    pub checkpoint: u64,
    /// The newest position this process knows, minus the checkpoint.
    pub lag_events: u64,
    /// Age of the newest event of the last batch when it was handed over (by its
    /// commit time), 0 once caught up.
    pub lag_seconds: f64,
    /// Unix time of the last batch handed over; a stalled consumer's stops moving.
    pub last_progress_seconds: f64,
}
