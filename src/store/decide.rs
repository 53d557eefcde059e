//! The store's decision methods: decision models, `decide`, snapshots.

use super::EventStore;
use crate::decide::{Decided, DecisionModel, Projection};
use crate::error::Result;
use crate::model::{DecideOptions, Event};

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
        self.inner
            .decisions
            .decision_model(self.engine(), projection, DecideOptions::default())
            .await
    }

    /// [`EventStore::decision_model`] read with `options` (a [`Consistency`](crate::Consistency) converts
    /// into them): with
    /// [`Consistency::Eventual`](crate::Consistency::Eventual) a replica may serve it, so the model may miss the
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
        self.inner
            .decisions
            .decision_model(self.engine(), projection, options.into())
            .await
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
    /// [`Error::ConditionFailed`](crate::Error::ConditionFailed) when every retry met a conflict.
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
        self.decide_with(projection, DecideOptions::default(), decide)
            .await
    }

    /// [`EventStore::decide`] with `options` (a [`Consistency`](crate::Consistency) converts into them):
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
        decide: F,
    ) -> Result<Decided<R>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        self.inner
            .decisions
            .decide(self.engine(), projection, options.into(), decide)
            .await
    }

    /// Saves `state` as the snapshot of `projection` at `position`: the state must
    /// fold every event matching the projection's query up to `position` (how far it
    /// scanned, as [`DecisionModel::head`](crate::DecisionModel::head) says, not its last matching event). A tuple
    /// saves each member's state. Returns whether it was stored: a snapshot is never
    /// replaced by one at the same or an earlier position (for a tuple: `true` when
    /// every member's was stored).
    ///
    /// The store also saves snapshots by itself (see `snapshot_after_events`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) when `position` is beyond the store's head or the state
    /// does not serialise to JSON; [`Error::Database`](crate::Error::Database) or [`Error::Timeout`](crate::Error::Timeout) when it
    /// cannot be written.
    pub async fn save_snapshot<P: Projection>(
        &self,
        projection: &P,
        state: &P::State,
        position: u64,
    ) -> Result<bool> {
        self.inner
            .decisions
            .save_snapshot(projection, state, position)
            .await
    }

    /// The latest usable snapshot of `projection` and its position: one of this
    /// version and query whose state deserialises (others are ignored and counted).
    /// For a tuple, `Some` only when every member has one, all at the same position.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database), [`Error::Connect`](crate::Error::Connect) or [`Error::Timeout`](crate::Error::Timeout) when snapshots
    /// cannot be read.
    pub async fn load_snapshot<P: Projection>(
        &self,
        projection: &P,
    ) -> Result<Option<(u64, P::State)>> {
        self.inner.decisions.load_snapshot(projection).await
    }

    /// Deletes every stored snapshot of `projection` (of every version, for its query;
    /// for a tuple, each member's) and returns how many there were. Decisions stay
    /// exact: the next one on a cold process folds from the start (or from a newer
    /// snapshot, once one is saved). States cached in this process are not snapshots
    /// and stay. Saving a new version of a projection deletes its older versions'
    /// snapshots by itself.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database), [`Error::Connect`](crate::Error::Connect)
    /// or [`Error::Timeout`](crate::Error::Timeout) when they cannot be deleted (the
    /// application role needs `DELETE` on `snapshots`, which `migrate --app-role` grants).
    pub async fn delete_snapshot<P: Projection>(&self, projection: &P) -> Result<u64> {
        self.inner.decisions.delete_snapshot(projection).await
    }
}
