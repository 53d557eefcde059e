//! The store's entry points for decisions and snapshots.

use std::time::{Duration, Instant};

use super::build::build;
use super::cache::Key;
use super::projection::{Members, States};
use super::{Decided, DecisionModel, Projection};
use crate::base::retry::Backoff;
use crate::error::{Error, Result};
use crate::metrics::{Method, Record};
use crate::model::{AppendCondition, AppendResult, Consistency, DecideOptions, Event};
use crate::store::EventStore;

/// Times an append whose outcome is unknown is sent again (same events, same ids: a
/// stored one answers with its positions) before `decide` gives up.
const UNKNOWN_OUTCOME_RETRIES: u32 = 3;
/// Pauses before asking again whether an append of unknown outcome was written.
const ASK_AGAIN: Backoff =
    Backoff::doubling(Duration::from_millis(100), Duration::from_millis(400));

impl EventStore {
    /// The state `projection` (one, or a tuple of up to three) folds from the events
    /// matching its query, with the head and the append condition that make a
    /// decision on it exact.
    ///
    /// Built from the store's cache of recent states, else from the latest snapshot,
    /// else from the start, then one read of only the events after them (for all
    /// members of a tuple at once). When building folded more than
    /// `snapshot_after_events` events, a snapshot is saved in the background.
    ///
    /// # Errors
    /// As [`EventStore::read`]. A snapshot that cannot be used (another version, a
    /// state that no longer deserialises) is never an error: it is ignored, counted in
    /// the metrics, and the state rebuilt.
    ///
    /// # Example
    /// ```no_run
    /// # use dcb_store::*;
    /// # struct SeatsTaken(String);
    /// # impl Projection for SeatsTaken {
    /// #     type State = u32;
    /// #     fn name(&self) -> &'static str { "seats-taken" }
    /// #     fn query(&self) -> Query { Query::new([QueryItem::new().tags([self.0.clone()])]) }
    /// #     fn initial(&self) -> u32 { 0 }
    /// #     fn apply(&self, seats: &mut u32, _: &SequencedEvent) { *seats += 1 }
    /// # }
    /// # async fn run(store: &EventStore) -> Result<()> {
    /// let model = store.decision_model(&SeatsTaken("course:c1".into())).await?;
    /// if model.state < 30 {
    ///     let event = Event::new("StudentSubscribed", serde_json::json!({})).with_tags(["course:c1"]);
    ///     store.append(vec![event], Some(model.condition())).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn decision_model<P: Projection>(
        &self,
        projection: &P,
    ) -> Result<DecisionModel<P::State>> {
        self.decision_model_with(projection, Consistency::Strong)
            .await
    }

    /// [`EventStore::decision_model`] read with `options` (a [`Consistency`] converts
    /// into them): with
    /// [`Consistency::Eventual`] a replica may serve it, so the model may miss the
    /// newest events. Its condition is still checked on the primary, so an append
    /// under it fails (never succeeds wrongly) when the model missed a matching event.
    /// The reads never go behind a state the store already holds in its cache.
    ///
    /// # Errors
    /// As [`EventStore::decision_model`].
    pub async fn decision_model_with<P: Projection>(
        &self,
        projection: &P,
        options: impl Into<DecideOptions>,
    ) -> Result<DecisionModel<P::State>> {
        let consistency = options.into().consistency;
        build(self, self.decisions(), projection, consistency).await
    }

    /// Reads the decision model of `projection`, calls `decide` with its state, and
    /// appends the events it returns under the model's condition. When another append
    /// got there first (the condition failed), reads again — only what is new — and
    /// decides again, up to `decide_retries` times.
    ///
    /// `decide` may be called more than once, so it should only compute. An append
    /// whose outcome is unknown (`may_have_been_written`) is sent again unchanged; a
    /// stored one answers with its positions, so nothing is appended twice.
    ///
    /// # Errors
    /// As [`EventStore::decision_model`] and [`EventStore::append`];
    /// [`Error::ConditionFailed`] when every retry met a conflict.
    ///
    /// # Example
    /// ```no_run
    /// # use dcb_store::*;
    /// # struct SeatsTaken(String);
    /// # impl Projection for SeatsTaken {
    /// #     type State = u32;
    /// #     fn name(&self) -> &'static str { "seats-taken" }
    /// #     fn query(&self) -> Query { Query::new([QueryItem::new().tags([self.0.clone()])]) }
    /// #     fn initial(&self) -> u32 { 0 }
    /// #     fn apply(&self, seats: &mut u32, _: &SequencedEvent) { *seats += 1 }
    /// # }
    /// # async fn run(store: &EventStore) -> Result<()> {
    /// let outcome = store
    ///     .decide(&SeatsTaken("course:c1".into()), |seats| {
    ///         if *seats >= 30 {
    ///             return Err("full");
    ///         }
    ///         Ok(vec![Event::new("StudentSubscribed", serde_json::json!({})).with_tags(["course:c1"])])
    ///     })
    ///     .await?;
    /// match outcome {
    ///     Decided::Appended(at) => println!("subscribed at {}", at.last_position),
    ///     Decided::Unchanged => {}
    ///     Decided::Rejected(why) => println!("refused: {why}"),
    ///     _ => {} // `Decided` may gain outcomes
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn decide<P, R, F>(&self, projection: &P, decide: F) -> Result<Decided<R>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        self.decide_with(projection, Consistency::Strong, decide)
            .await
    }

    /// [`EventStore::decide`] with `options` (a [`Consistency`] converts into them):
    /// the first decision model is read with their consistency (a replica may serve it, see [`EventStore::decision_model_with`]). A stale
    /// model never makes a wrong decision: events decided on it are appended under its
    /// condition, checked on the primary, and after a conflict the model is read again
    /// from the primary; a refusal or no change, which no append checks, is decided
    /// again on the primary's state (with the decision cache, reading only what is new)
    /// before it is returned.
    ///
    /// # Errors
    /// As [`EventStore::decide`].
    pub async fn decide_with<P, R, F>(
        &self,
        projection: &P,
        options: impl Into<DecideOptions>,
        mut decide: F,
    ) -> Result<Decided<R>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        let started = Instant::now();
        let result = self
            .decide_inner(projection, options.into().consistency, &mut decide)
            .await;
        self.record_internal(Record::Method {
            method: Method::Decide,
            elapsed: started.elapsed(),
            ok: result.is_ok(),
        });
        result
    }

    async fn decide_inner<P, R, F>(
        &self,
        projection: &P,
        mut consistency: Consistency,
        decide: &mut F,
    ) -> Result<Decided<R>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        let mut conflicts = 0;
        loop {
            let model = self.decision_model_with(projection, consistency).await?;
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
            match self.append_until_known(events, model.condition()).await {
                Ok(at) => return Ok(Decided::Appended(at)),
                Err(Error::ConditionFailed { .. }) if conflicts < self.decisions().retries => {
                    conflicts += 1;
                    // What the replica lacked is on the primary.
                    consistency = Consistency::Strong;
                    self.record_internal(Record::DecideRetry);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn append_until_known(
        &self,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> Result<AppendResult> {
        let mut attempt = 0;
        loop {
            match self.append(events.clone(), Some(condition.clone())).await {
                Err(e) if e.may_have_been_written() && attempt < UNKNOWN_OUTCOME_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(ASK_AGAIN.after(attempt)).await;
                }
                result => return result,
            }
        }
    }

    /// Saves `state` as the snapshot of `projection` at `position`: the state must
    /// fold every event matching the projection's query up to `position` (how far it
    /// scanned, as [`DecisionModel::head`] says, not its last matching event). A tuple
    /// saves each member's state. Returns whether it was stored: a snapshot is never
    /// replaced by one at the same or an earlier position (for a tuple: `true` when
    /// every member's was stored).
    ///
    /// The store also saves snapshots by itself (see `snapshot_after_events`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `position` is beyond the store's head or the state
    /// does not serialise to JSON; [`Error::Database`] or [`Error::Timeout`] when it
    /// cannot be written.
    pub async fn save_snapshot<P: Projection>(
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
            let stored = self
                .decisions()
                .snapshots
                .save(&key, position, json, true)
                .await?;
            if stored {
                self.decisions().snapshots.presence.saved(key.name);
            }
            all &= stored;
        }
        Ok(all)
    }

    /// The latest usable snapshot of `projection` and its position: one of this
    /// version and query whose state deserialises (others are ignored and counted).
    /// For a tuple, `Some` only when every member has one, all at the same position.
    ///
    /// # Errors
    /// [`Error::Database`], [`Error::Connect`] or [`Error::Timeout`] when snapshots
    /// cannot be read.
    pub async fn load_snapshot<P: Projection>(
        &self,
        projection: &P,
    ) -> Result<Option<(u64, P::State)>> {
        let leaves = Members::of(projection);
        let keys: Vec<Key> = leaves.iter().map(|leaf| Key::of(*leaf)).collect();
        let pairs: Vec<_> = leaves.iter().copied().zip(&keys).collect();
        let mut position = None;
        let mut states = Vec::new();
        for found in self.decisions().snapshots.load(&pairs).await? {
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
