//! Snapshots of projection states in the store's schema: loading one (trusting only a
//! snapshot of the same version and query whose state deserialises), saving one
//! (monotonic), and the background task that saves off the hot path.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::Type;

use super::cache::Key;
use super::projection::{AnyState, Leaf, Serializer};
use crate::connect::Connector;
use crate::error::{Error, Result};
use crate::metrics::{MetricsSink, Record, Rejection, SnapshotOutcome};
use crate::model::Query;
use crate::sql::SnapshotStatements;

/// Where snapshots are read and written.
#[derive(Clone)]
pub(crate) struct Snapshots {
    pub connector: Connector,
    pub sql: Arc<SnapshotStatements>,
    pub metrics: MetricsSink,
    pub timeout: Duration,
}

/// A state to save: copied by the model builder, serialised by the saver.
pub(crate) struct SaveJob {
    pub key: Key,
    pub position: u64,
    pub state: Arc<dyn Any + Send + Sync>,
    pub serializer: Serializer,
}

impl Snapshots {
    /// The usable snapshot of each leaf, if any, in one round trip. Snapshots of
    /// another version, of another query with the same fingerprint, or whose state
    /// does not deserialise into the leaf's state type are counted and ignored.
    pub(crate) async fn load(
        &self,
        leaves: &[(&dyn Leaf, &Key)],
    ) -> Result<Vec<Option<(u64, AnyState)>>> {
        let names: Vec<&str> = leaves.iter().map(|(_, key)| key.name).collect();
        let fingerprints: Vec<String> = leaves
            .iter()
            .map(|(_, key)| Query::fingerprint(&key.canonical))
            .collect();
        let rows = tokio::time::timeout(self.timeout, async {
            let client = self.connector.pooled().await?;
            client
                .query_typed(
                    &self.sql.load,
                    &[
                        (&names, Type::TEXT_ARRAY),
                        (&fingerprints, Type::TEXT_ARRAY),
                    ],
                )
                .await
                .map_err(Error::db)
        })
        .await
        .map_err(|_| Error::Timeout {
            after: self.timeout,
            may_have_been_written: false,
        })??;
        let mut found: Vec<Option<(u64, AnyState)>> = leaves.iter().map(|_| None).collect();
        for row in rows {
            let index: i64 = row.try_get(0).map_err(Error::db)?;
            let version: i32 = row.try_get(1).map_err(Error::db)?;
            let query: String = row.try_get(2).map_err(Error::db)?;
            let position: i64 = row.try_get(3).map_err(Error::db)?;
            let state: String = row.try_get(4).map_err(Error::db)?;
            let same_history: bool = row.try_get(5).map_err(Error::db)?;
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
                        self.outcome(SnapshotOutcome::Loaded);
                        None
                    }
                    None => Some(Rejection::State),
                }
            };
            if let Some(rejection) = rejection {
                self.outcome(SnapshotOutcome::Rejected(rejection));
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
        tokio::time::timeout(self.timeout, async {
            let client = self.connector.pooled().await?;
            if check_head {
                let head: i64 = client
                    .query_one(&self.sql.head, &[])
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
                .query_opt(
                    &self.sql.save,
                    &[
                        &key.name,
                        &version,
                        &fingerprint,
                        &canonical,
                        &position,
                        &state,
                    ],
                )
                .await
                .map_err(Error::db)?;
            Ok(stored.is_some())
        })
        .await
        .map_err(|_| Error::Timeout {
            after: self.timeout,
            may_have_been_written: true,
        })?
    }

    fn outcome(&self, outcome: SnapshotOutcome) {
        self.metrics.record(Record::Snapshot(outcome));
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
                self.outcome(SnapshotOutcome::Failed);
                continue;
            };
            match self.save(&job.key, job.position, json, false).await {
                Ok(true) => self.outcome(SnapshotOutcome::Saved),
                Ok(false) => self.outcome(SnapshotOutcome::NotNewer),
                Err(error) => {
                    tracing::warn!(projection = job.key.name, %error, "snapshot not saved");
                    self.outcome(SnapshotOutcome::Failed);
                }
            }
        }
    }
}
