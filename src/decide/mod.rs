//! Decisions: projections folded into the state one decision needs, built from an
//! in-memory cache and snapshots so that a decision costs only what changed since the
//! last one; the append condition derived from the model; and `decide`, which reads,
//! decides and appends, again on conflict.
//!
//! - `projection`: the [`Projection`] trait, tuples, and the type-erased leaves.
//! - `cache`: the bounded cache of leaf states.
//! - `snapshots`: loading and (monotonic) saving of snapshots, and the saver task.
//! - `build`: building a model: cache, snapshot, one incremental read.
//! - `api`: deciding, and saving and loading snapshots, for the store's entry points
//!   (`store/decide.rs`).

mod api;
mod build;
mod cache;
mod projection;
mod snapshots;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::sql::SnapshotStatements;

use crate::metrics::{Counter, LabelledCounter, Record};
use crate::model::{AppendCondition, AppendResult, Query};
pub use projection::{Members, Projection, States};
pub(crate) use snapshots::Snapshots;

use cache::StateCache;
use snapshots::SaveJob;

/// The state one decision needs, and what makes its append exact.
///
/// `state` folds every event matching the projection's query up to [`head`]: exactly
/// the state a fold of `read(query)` from the start would give at that position.
/// Append with [`DecisionModel::condition`] and the append fails if anything the
/// state would have to include was stored since.
///
/// [`head`]: DecisionModel::head
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DecisionModel<S> {
    /// The folded state.
    pub state: S,
    head: Option<u64>,
    query: Query,
    applied: u64,
}

impl<S> DecisionModel<S> {
    /// The position the state includes every matching event up to (`None`: the store
    /// was empty).
    pub fn head(&self) -> Option<u64> {
        self.head
    }

    /// The condition to append with: nothing matching the model's query after its head.
    pub fn condition(&self) -> AppendCondition {
        AppendCondition::new(self.query.clone(), self.head)
    }

    /// The model's query: the union of its projections' queries.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Events folded while building this model (those after the cached or snapshotted
    /// states it started from).
    pub fn events_applied(&self) -> u64 {
        self.applied
    }
}

/// What [`EventStore::decide`](crate::EventStore::decide) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decided<R> {
    /// The decision's events were appended there.
    Appended(AppendResult),
    /// The decision produced no events: nothing was appended.
    Unchanged,
    /// The decision refused, with its reason.
    Rejected(R),
}

/// What decisions count, in the metrics' snapshot: the names and their meaning are
/// this module's.
pub(crate) mod counts {
    use super::{Counter, LabelledCounter};

    /// A snapshot used to build a model.
    pub(crate) static SNAPSHOT_LOADED: Counter = Counter(|m| &mut m.snapshots_loaded);
    /// A snapshot stored.
    pub(crate) static SNAPSHOT_SAVED: Counter = Counter(|m| &mut m.snapshots_saved);
    /// Not stored: one at the same or a later position was.
    pub(crate) static SNAPSHOT_NOT_NEWER: Counter = Counter(|m| &mut m.snapshots_not_newer);
    /// Not stored: serialising or writing it failed, or the saver's queue was full.
    pub(crate) static SNAPSHOT_SAVE_FAILED: Counter = Counter(|m| &mut m.snapshot_save_failures);
    /// A stored snapshot not used, by [`Rejection`](super::snapshots::Rejection).
    pub(crate) static SNAPSHOT_REJECTED: LabelledCounter =
        LabelledCounter(|m| &mut m.snapshots_rejected);
    /// `decide` met a conflict and decides again.
    pub(crate) static DECIDE_RETRY: Counter = Counter(|m| &mut m.decide_retries);
}

/// Queue of snapshots waiting for the saver; a full queue drops the save (the next
/// decision that folds enough events asks again).
const SAVE_QUEUE: usize = 256;

/// The store's decision machinery: the cache, snapshots and settings.
pub(crate) struct Decisions {
    cache: StateCache,
    snapshots: Snapshots,
    saves: mpsc::Sender<SaveJob>,
    /// Fold this many events since the last snapshot and a new one is saved (0: never).
    snapshot_after: u64,
    /// Conflicts `decide` reads again after before it gives up.
    retries: u32,
}

impl Decisions {
    /// The machinery, and the saver to spawn (it ends when this is dropped).
    pub(crate) fn new(
        snapshots: Snapshots,
        cache_entries: usize,
        snapshot_after: u64,
        retries: u32,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (saves, jobs) = mpsc::channel(SAVE_QUEUE);
        let saver = snapshots.clone().run_saver(jobs);
        let decisions = Decisions {
            cache: StateCache::new(cache_entries),
            snapshots,
            saves,
            snapshot_after,
            retries,
        };
        (decisions, saver)
    }

    /// The machinery of `engine`'s store, its snapshot saver started on the engine's
    /// arbiter.
    pub(crate) fn start(engine: &Engine) -> Self {
        let config = engine.config();
        let (decisions, saver) = Decisions::new(
            Snapshots {
                connector: engine.connector().clone(),
                sql: Arc::new(SnapshotStatements::new(engine.schema_identifier())),
                metrics: engine.metrics_sink().clone(),
                timeout: config.operation_timeout(),
                presence: Arc::default(),
            },
            config.decision_cache_entries(),
            config.snapshot_after_events(),
            config.decide_retries(),
        );
        engine.arbiter().spawn(saver);
        decisions
    }

    fn save_later(&self, job: SaveJob) {
        if self.saves.try_send(job).is_err() {
            self.snapshots
                .metrics
                .record(Record::one(&counts::SNAPSHOT_SAVE_FAILED));
        }
    }
}
