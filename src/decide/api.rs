//! Deciding, and saving and loading snapshots: what the store's decision methods
//! (`store/decide.rs`) run, over the engine.

use std::time::{Duration, Instant};

use super::build::build;
use super::cache::Key;
use super::projection::{Members, States};
use super::{Decided, DecisionModel, Decisions, Projection};
use crate::base::retry::Backoff;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics::{Method, Record};
use crate::model::{
    AppendCondition, AppendOptions, AppendResult, Consistency, DecideOptions, Event,
};

/// Times an append whose outcome is unknown is sent again (same events, same ids: a
/// stored one answers with its positions) before `decide` gives up.
const UNKNOWN_OUTCOME_RETRIES: u32 = 3;
/// Pauses before asking again whether an append of unknown outcome was written.
const ASK_AGAIN: Backoff =
    Backoff::doubling(Duration::from_millis(100), Duration::from_millis(400));

impl Decisions {
    /// The decision model of `projection`, read with `options`' consistency (see
    /// [`EventStore::decision_model_with`](crate::EventStore::decision_model_with)).
    pub(crate) async fn decision_model<P: Projection>(
        &self,
        engine: &Engine,
        projection: &P,
        options: DecideOptions,
    ) -> Result<DecisionModel<P::State>> {
        build(engine, self, projection, options.consistency).await
    }

    /// Reads, decides and appends, again on conflict (see
    /// [`EventStore::decide_with`](crate::EventStore::decide_with)).
    pub(crate) async fn decide<P, R, F>(
        &self,
        engine: &Engine,
        projection: &P,
        options: DecideOptions,
        mut decide: F,
    ) -> Result<Decided<R>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        let started = Instant::now();
        let result = self
            .decide_inner(engine, projection, options, &mut decide)
            .await;
        engine.record(Record::Method {
            method: Method::Decide,
            elapsed: started.elapsed(),
            ok: result.is_ok(),
        });
        result
    }

    async fn decide_inner<P, R, F>(
        &self,
        engine: &Engine,
        projection: &P,
        options: DecideOptions,
        decide: &mut F,
    ) -> Result<Decided<R>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        let mut consistency = options.consistency;
        let append_options = match options.tracking {
            Some(t) => AppendOptions::default().tracking(t.consumer, t.position),
            None => AppendOptions::default(),
        };
        let mut conflicts = 0;
        loop {
            let model = self
                .decision_model(engine, projection, consistency.into())
                .await?;
            let decided = decide(&model.state);
            if consistency != Consistency::Strong && !matches!(&decided, Ok(e) if !e.is_empty()) {
                // No append checks a refusal: it must come from the primary's state.
                // The cache holds this model, so only what is new is read.
                consistency = Consistency::Strong;
                continue;
            }
            let events = match decided {
                Err(reason) => return Ok(Decided::Rejected(reason)),
                Ok(events) if events.is_empty() => return Ok(Decided::Unchanged),
                Ok(events) => events,
            };
            match append_until_known(engine, events, model.condition(), &append_options).await {
                Ok(at) => return Ok(Decided::Appended(at)),
                Err(Error::ConditionFailed { .. }) if conflicts < self.retries => {
                    conflicts += 1;
                    // What the replica lacked is on the primary.
                    consistency = Consistency::Strong;
                    engine.record(Record::one(&super::counts::DECIDE_RETRY));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Saves a snapshot (see
    /// [`EventStore::save_snapshot`](crate::EventStore::save_snapshot)).
    pub(crate) async fn save_snapshot<P: Projection>(
        &self,
        projection: &P,
        state: &P::State,
        position: u64,
    ) -> Result<bool> {
        let mut json = Vec::new();
        projection.__serialize(state, &mut json);
        let mut all = true;
        for (leaf, json) in Members::of(projection).into_iter().zip(json) {
            let json = json.map_err(|e| {
                Error::invalid(format!(
                    "the state of projection {} does not serialise: {e}",
                    leaf.name()
                ))
            })?;
            let key = Key::of(leaf);
            let stored = self.snapshots.save(&key, position, json, true).await?;
            if stored {
                self.snapshots.presence.saved(key.name);
            }
            all &= stored;
        }
        Ok(all)
    }

    /// Deletes the stored snapshots (see
    /// [`EventStore::delete_snapshot`](crate::EventStore::delete_snapshot)).
    pub(crate) async fn delete_snapshot<P: Projection>(&self, projection: &P) -> Result<u64> {
        let keys: Vec<Key> = Members::of(projection).into_iter().map(Key::of).collect();
        self.snapshots.delete(&keys).await
    }

    /// The latest usable snapshot (see
    /// [`EventStore::load_snapshot`](crate::EventStore::load_snapshot)).
    pub(crate) async fn load_snapshot<P: Projection>(
        &self,
        projection: &P,
    ) -> Result<Option<(u64, P::State)>> {
        let leaves = Members::of(projection);
        let keys: Vec<Key> = leaves.iter().map(|leaf| Key::of(*leaf)).collect();
        let pairs: Vec<_> = leaves.iter().copied().zip(&keys).collect();
        let mut position = None;
        let mut states = Vec::new();
        for found in self.snapshots.load(&pairs).await? {
            let Some((at, state)) = found else {
                return Ok(None);
            };
            if position.is_some_and(|p| p != at) {
                return Ok(None);
            }
            position = Some(at);
            states.push(state);
        }
        let mut states = States {
            states: states.into_iter(),
        };
        Ok(position.map(|at| (at, projection.__assemble(&mut states))))
    }
}

/// Appends, sending the same events again while the outcome is unknown.
async fn append_until_known(
    engine: &Engine,
    events: Vec<Event>,
    condition: AppendCondition,
    options: &AppendOptions,
) -> Result<AppendResult> {
    let mut attempt = 0;
    loop {
        let sent = engine.append_with(events.clone(), Some(condition.clone()), options.clone());
        match sent.await {
            Err(e) if e.may_have_been_written() && attempt < UNKNOWN_OUTCOME_RETRIES => {
                attempt += 1;
                tokio::time::sleep(ASK_AGAIN.after(attempt)).await;
            }
            result => return result,
        }
    }
}
