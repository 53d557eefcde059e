//! Per-replica figures as the metrics report them: the router keeps each replica's
//! live figures (what they mean, and the rotation they decide, are the router's) and
//! shows them through [`ReplicaGauge`]; the metrics actor reads them at snapshot time.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A replica's figures, read when a snapshot is taken.
pub(crate) trait ReplicaGauge: Send + Sync {
    /// The figures now (`reads` left 0: the metrics actor counts those).
    fn read(&self) -> ReplicaMetrics;
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
    replicas: &[(String, Arc<dyn ReplicaGauge>)],
    served: &BTreeMap<u16, u64>,
) -> BTreeMap<String, ReplicaMetrics> {
    replicas
        .iter()
        .enumerate()
        .map(|(i, (name, gauge))| {
            let metrics = ReplicaMetrics {
                reads: served.get(&(i as u16)).copied().unwrap_or(0),
                ..gauge.read()
            };
            (name.clone(), metrics)
        })
        .collect()
}
