//! Snapshots of projection states in the store's schema: loading one (trusting only a
//! snapshot of the same version and query whose state deserialises), saving one
//! (monotonic), and the background task that saves off the hot path.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::types::Type;

use super::cache::Key;
use super::counts;
use super::projection::{AnyState, Leaf, Serializer};
use crate::base::connect::Connector;
use crate::error::{Error, Result};
use crate::metrics::{Counter, MetricsSink, Record};
use crate::model::Query;
use crate::sql::{self, SnapshotRow, SnapshotStatements};

/// Where snapshots are read and written.
#[derive(Clone)]
pub(crate) struct Snapshots {
    pub connector: Connector,
    pub sql: Arc<SnapshotStatements>,
    pub metrics: MetricsSink,
    pub timeout: Duration,
    pub presence: Arc<Presence>,
}

/// Why a stored snapshot was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Saved by another version of the projection.
    Version,
    /// Saved for another query with the same fingerprint.
    Query,
    /// Its state does not deserialise into the projection's state type.
    State,
    /// Its position is not in this store's history: beyond the head, or the event
    /// there is not the one it was saved after (a database restored to another point).
    Position,
}

impl Rejection {
    /// The record counting it (`dcb_snapshots_rejected_total{reason}`).
    pub(crate) fn record(self) -> Record {
        let label = match self {
            Rejection::Version => "version",
            Rejection::Query => "query",
            Rejection::State => "state",
            Rejection::Position => "position",
        };
        Record::CountLabelled {
            counter: &counts::SNAPSHOT_REJECTED,
            label,
        }
    }
}

/// How long an answer to "does this projection have any snapshot?" holds.
const PRESENCE_FRESH: Duration = Duration::from_secs(5);

/// Which projections (by name) have any snapshot, as last checked. A projection with
/// none (small boundaries never reach `snapshot_after_events`) skips the snapshot lookup
/// on a cache miss: a round trip saved on the first decision of every new boundary.
/// Skipping a snapshot is always exact (the state is built from the events); an answer
/// holds for [`PRESENCE_FRESH`], and this process's own saves count at once.
#[derive(Default)]
pub(crate) struct Presence {
    known: Mutex<HashMap<&'static str, (Instant, bool)>>,
}

impl Presence {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, (Instant, bool)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Of `names`, those without a fresh answer.
    fn stale(&self, names: &[&'static str], now: Instant) -> Vec<&'static str> {
        let known = self.known();
        let mut stale: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|name| {
                known
                    .get(name)
                    .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= PRESENCE_FRESH)
            })
            .collect();
        stale.sort_unstable();
        stale.dedup();
        stale
    }

    fn record(&self, checked: &[&'static str], present: &HashSet<String>, at: Instant) {
        let mut known = self.known();
        for name in checked {
            known.insert(name, (at, present.contains(*name)));
        }
    }

    pub(crate) fn saved(&self, name: &'static str) {
        self.known().insert(name, (Instant::now(), true));
    }

    /// Whether `name` may have snapshots (unknown counts as yes).
    fn may_have(&self, name: &str) -> bool {
        self.known().get(name).is_none_or(|(_, present)| *present)
    }
}

/// The `(names, fingerprints)` parallel arrays that identify `keys`' snapshot rows.
fn key_arrays<'a>(keys: impl IntoIterator<Item = &'a Key>) -> (Vec<&'static str>, Vec<String>) {
    keys.into_iter()
        .map(|key| (key.name, Query::fingerprint(&key.canonical)))
        .unzip()
}

/// A state to save: copied by the model builder, serialised by the saver.
pub(crate) struct SaveJob {
    pub key: Key,
    pub position: u64,
    pub state: Arc<dyn Any + Send + Sync>,
    pub serializer: Serializer,
}

impl Snapshots {
    /// The usable snapshots of the `leaves` (cache misses), skipping projections known to
    /// have none; `None` for those.
    pub(crate) async fn load_for_misses(
        &self,
        leaves: &[(&dyn Leaf, &Key)],
    ) -> Result<Vec<Option<(u64, AnyState)>>> {
        let names: Vec<&'static str> = leaves.iter().map(|(_, key)| key.name).collect();
        let stale = self.presence.stale(&names, Instant::now());
        if !stale.is_empty() {
            let checked_at = Instant::now();
            let rows = self
                .query_typed(&self.sql.present, &[(&stale, Type::TEXT_ARRAY)])
                .await?;
            let present: HashSet<String> = sql::decode_present(&rows);
            self.presence.record(&stale, &present, checked_at);
        }
        // Decided once: a save meanwhile (the saver runs concurrently) must not shift
        // which answer belongs to which leaf.
        let wanted: Vec<bool> = leaves
            .iter()
            .map(|(_, key)| self.presence.may_have(key.name))
            .collect();
        let to_load: Vec<(&dyn Leaf, &Key)> = leaves
            .iter()
            .zip(&wanted)
            .filter(|(_, wanted)| **wanted)
            .map(|(leaf, _)| *leaf)
            .collect();
        let mut found = if to_load.is_empty() {
            Vec::new()
        } else {
            self.load(&to_load).await?
        }
        .into_iter();
        Ok(wanted
            .into_iter()
            .map(|wanted| if wanted { found.next().flatten() } else { None })
            .collect())
    }

    /// The usable snapshot of each leaf, if any, in one round trip. Snapshots of
    /// another version, of another query with the same fingerprint, or whose state
    /// does not deserialise into the leaf's state type are counted and ignored.
    pub(crate) async fn load(
        &self,
        leaves: &[(&dyn Leaf, &Key)],
    ) -> Result<Vec<Option<(u64, AnyState)>>> {
        let (names, fingerprints) = key_arrays(leaves.iter().map(|(_, key)| *key));
        let rows = self
            .query_typed(
                &self.sql.load,
                &[
                    (&names, Type::TEXT_ARRAY),
                    (&fingerprints, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        let mut found: Vec<Option<(u64, AnyState)>> = leaves.iter().map(|_| None).collect();
        for row in rows {
            let SnapshotRow {
                index,
                version,
                query,
                position,
                state,
                same_history,
            } = SnapshotRow::decode(&row)?;
            let Some(((leaf, key), slot)) = usize::try_from(index - 1)
                .ok()
                .and_then(|i| Some((leaves.get(i)?, found.get_mut(i)?)))
            else {
                continue;
            };
            let rejection = if version as u32 != key.version {
                Some(Rejection::Version)
            } else if query != *key.canonical {
                Some(Rejection::Query)
            } else if position < 0 || !same_history {
                Some(Rejection::Position)
            } else {
                match leaf.deserialize(&state) {
                    Some(state) => {
                        *slot = Some((position as u64, state));
                        self.outcome(&counts::SNAPSHOT_LOADED);
                        None
                    }
                    None => Some(Rejection::State),
                }
            };
            if let Some(rejection) = rejection {
                self.metrics.record(rejection.record());
            }
        }
        Ok(found)
    }

    /// Stores `state_json` as the snapshot of `key` at `position` unless one at the same
    /// or a later position is stored; returns whether it stored it. With
    /// `check_head`, refuses a position beyond the store's head.
    pub(crate) async fn save(
        &self,
        key: &Key,
        position: u64,
        state_json: String,
        check_head: bool,
    ) -> Result<bool> {
        let position = i64::try_from(position)
            .map_err(|_| Error::invalid(format!("snapshot position {position} is out of range")))?;
        let version = key.version as i32;
        let fingerprint = Query::fingerprint(&key.canonical);
        let canonical: &str = &key.canonical;
        let state = state_json;
        // A timeout may leave the upsert committed.
        self.bounded(true, async {
            let client = self.connector.pooled().await?;
            if check_head {
                let head: i64 = client
                    .query_typed_one(&self.sql.head, &[])
                    .await
                    .map_err(Error::db)?
                    .get(0);
                if position > head {
                    return Err(Error::invalid(format!(
                        "snapshot position {position} is beyond the store's head {head}"
                    )));
                }
            }
            let stored = client
                .query_typed_opt(
                    &self.sql.save,
                    &[
                        (&key.name, Type::TEXT),
                        (&version, Type::INT4),
                        (&fingerprint, Type::TEXT),
                        (&canonical, Type::TEXT),
                        (&position, Type::INT8),
                        (&state, Type::TEXT),
                    ],
                )
                .await
                .map_err(Error::db)?;
            Ok(stored.is_some())
        })
        .await
    }

    /// Deletes every stored snapshot (all versions) of each key; how many.
    pub(crate) async fn delete(&self, keys: &[Key]) -> Result<u64> {
        let (names, fingerprints) = key_arrays(keys);
        let deleted = self
            .bounded(true, async {
                let client = self.connector.pooled().await?;
                client
                    .execute_typed(
                        &self.sql.delete,
                        &[
                            (&names, Type::TEXT_ARRAY),
                            (&fingerprints, Type::TEXT_ARRAY),
                        ],
                    )
                    .await
                    .map_err(Error::db)
            })
            .await?;
        Ok(deleted)
    }

    /// `work`, within the operation timeout.
    async fn bounded<T>(
        &self,
        may_have_been_written: bool,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                after: self.timeout,
                may_have_been_written,
            })?
    }

    /// A read-only statement sent unprepared on a pooled connection, within the
    /// operation timeout.
    async fn query_typed(
        &self,
        sql: &str,
        params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.bounded(false, async {
            let client = self.connector.pooled().await?;
            client.query_typed(sql, params).await.map_err(Error::db)
        })
        .await
    }

    fn outcome(&self, counter: &'static Counter) {
        self.metrics.record(Record::one(counter));
    }

    /// Saves the jobs one at a time until every sender is gone: the decisions that
    /// asked for them have long returned.
    pub(crate) async fn run_saver(self, mut jobs: mpsc::Receiver<SaveJob>) {
        while let Some(job) = jobs.recv().await {
            let Some(Ok(json)) = (job.serializer)(&*job.state) else {
                tracing::warn!(
                    projection = job.key.name,
                    "snapshot state does not serialise"
                );
                self.outcome(&counts::SNAPSHOT_SAVE_FAILED);
                continue;
            };
            match self.save(&job.key, job.position, json, false).await {
                Ok(true) => {
                    self.presence.saved(job.key.name);
                    self.outcome(&counts::SNAPSHOT_SAVED)
                }
                Ok(false) => self.outcome(&counts::SNAPSHOT_NOT_NEWER),
                Err(error) => {
                    tracing::warn!(projection = job.key.name, error = %crate::error::Chain(&error), "snapshot not saved");
                    self.outcome(&counts::SNAPSHOT_SAVE_FAILED);
                }
            }
        }
    }
}
