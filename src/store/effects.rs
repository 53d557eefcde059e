//! The store's exactly-once methods: read models (tables and checkpoint in one
//! transaction), process managers (reactions appended with tracking), and waiting for
//! a consumer's checkpoint (read your writes through a read model).

use std::time::Duration;

use super::EventStore;
use crate::decide::{Decided, Projection};
use crate::error::{Error, Result};
use crate::model::{
    AppendCondition, AppendOptions, AppendResult, DecideOptions, Event, Query, SequencedEvent,
};
use crate::subscribe::{
    DeliveryError, EventBatch, Handled, Handler, Lease, ReadModel, ReadModelHandle,
    SubscribeOptions, SubscriptionHandle,
};

impl EventStore {
    /// Runs `model` as durable consumer `options.consumer` (required) over the events
    /// matching `query`: each batch is applied by [`ReadModel::apply`] in a
    /// transaction on the store's database, in which the store moves the consumer's
    /// checkpoint to the batch's `scanned_to` before committing, guarded by the
    /// lease's generation. So the read model's tables hold exactly the events up to
    /// the checkpoint, each applied once, across crashes and takeovers: a holder that
    /// lost the lease commits nothing, and after a commit whose answer was lost the
    /// events already applied are not given to the handler again.
    ///
    /// As with [`EventStore::subscribe_recipient`], one process at a time holds the
    /// consumer (others stand by); a handler error rolls the batch back and retries it
    /// (`max_attempts`, `retry_backoff`), then one event at a time; a failing event is
    /// parked or stops the read model (`on_failure`). The transaction runs on a
    /// connection of the read model's own (with a session: `direct_url` behind a
    /// transaction-mode pooler), so `apply` may use any `tokio_postgres` statement.
    /// Runs on the calling thread's arbiter until the handle is stopped or dropped.
    ///
    /// # Errors
    /// As [`EventStore::subscribe_recipient`].
    ///
    /// # Example
    /// ```no_run
    /// # use dcb_store::*;
    /// # async fn run(store: &EventStore, seats: impl ReadModel) -> Result<()> {
    /// let query = Query::new([QueryItem::new().types(["StudentSubscribed"])]);
    /// let running = store
    ///     .run_read_model(query, SubscribeOptions::default().consumer("course-seats"), seats)
    ///     .await?;
    /// # running.stop().await; Ok(()) }
    /// ```
    pub async fn run_read_model<M: ReadModel>(
        &self,
        query: Query,
        options: SubscribeOptions,
        model: M,
    ) -> Result<ReadModelHandle> {
        self.inner
            .subscriptions
            .run_read_model(self.engine(), query, options, model)
            .await
    }

    /// Runs `manager` as durable consumer `options.consumer` (required) over the
    /// events matching `query`: [`ProcessManager::react`] is called for each event in
    /// position order, and reacts through its [`Reaction`], whose appends and
    /// decisions are tracked with the consumer and the event's position
    /// ([`AppendOptions::tracking`]): each reaction is appended once, however often the
    /// event is delivered (crashes, takeovers, retries). After a batch the checkpoint
    /// is acknowledged as for any consumer. Failures are retried, isolated and parked
    /// as [`EventStore::subscribe_recipient`] does. The manager holds a handle of the
    /// store until it is stopped.
    ///
    /// # Errors
    /// As [`EventStore::subscribe_recipient`].
    pub async fn run_process_manager<M: ProcessManager>(
        &self,
        query: Query,
        options: SubscribeOptions,
        manager: M,
    ) -> Result<SubscriptionHandle> {
        let handler = Reacting {
            manager,
            store: self.clone(),
            consumer: options.consumer.clone().unwrap_or_default(),
        };
        self.inner
            .subscriptions
            .run(
                self.engine(),
                query,
                options,
                "run_process_manager",
                handler,
            )
            .await
    }

    /// A new connection to the store's primary database, made with the store's
    /// settings (TLS, keepalives, the pool's connect retries): for an application's
    /// own tables, such as a read model's, read beside the store. It is yours: outside
    /// the store's pool, closed when dropped.
    ///
    /// # Errors
    /// [`Error::Connect`] when the server cannot be reached.
    pub async fn open_connection(&self) -> Result<tokio_postgres::Client> {
        self.engine().connector().dedicated().await
    }

    /// Waits until durable consumer `consumer`'s checkpoint is at least `position`
    /// (for a read model: it has applied every event up to `position`), for at most
    /// `limit`; returns the checkpoint then. Pass an append's `last_position` to read
    /// your own writes from a read model. Wakes at once for read models of this
    /// process, and looks at the stored checkpoint every few milliseconds (at most
    /// every 50 ms) for other processes'.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the checkpoint did not get there in time; database and
    /// connection errors.
    pub async fn wait_for_checkpoint(
        &self,
        consumer: &str,
        position: u64,
        limit: Duration,
    ) -> Result<u64> {
        self.inner
            .subscriptions
            .consumers
            .wait_for(consumer, position, limit)
            .await
    }
}

/// Reactions to events that must each happen once: a process manager (or policy,
/// automation) appends follow-up events; see
/// [`EventStore::run_process_manager`].
///
/// ```no_run
/// use dcb_store::{DeliveryError, Event, ProcessManager, Reaction, SequencedEvent};
///
/// struct Welcome;
///
/// impl ProcessManager for Welcome {
///     async fn react(&mut self, event: &SequencedEvent, reaction: &Reaction<'_>) -> Result<(), DeliveryError> {
///         let welcome = Event::new("WelcomeSent", serde_json::json!({}))
///             .with_tags(event.event.tags().iter().cloned());
///         // None: this event's reaction was appended before (a redelivery).
///         let _ = reaction.append(vec![welcome], None).await?;
///         Ok(())
///     }
/// }
/// ```
// The futures need not be `Send`: a process manager runs on the arbiter that started it.
#[allow(async_fn_in_trait)]
pub trait ProcessManager: 'static {
    /// Reacts to `event`: appends or decides through `reaction` (tracked), or does
    /// nothing. An error is retried (the event is delivered again); a reaction already
    /// appended is not appended again.
    async fn react(
        &mut self,
        event: &SequencedEvent,
        reaction: &Reaction<'_>,
    ) -> std::result::Result<(), DeliveryError>;
}

/// What a [`ProcessManager`] reacts with: the store, with every append and decision
/// tracked with the manager's consumer and the event's position.
#[derive(Debug)]
pub struct Reaction<'a> {
    store: &'a EventStore,
    consumer: &'a str,
    position: u64,
}

impl Reaction<'_> {
    /// The store (for reads; append through [`Reaction::append`] or
    /// [`Reaction::decide`] so that the reaction is tracked).
    pub fn store(&self) -> &EventStore {
        self.store
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        self.consumer
    }

    /// The position of the event reacted to: what the reaction tracks.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Appends `events` under `condition`, tracked: `Ok(None)` when this event's
    /// reaction was appended before (the consumer's checkpoint is at or past it).
    /// With no events, only moves the checkpoint.
    ///
    /// # Errors
    /// As [`EventStore::append_with`] (`ConditionFailed` when the condition fails).
    pub async fn append(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<Option<AppendResult>> {
        let options = AppendOptions::default().tracking(self.consumer, self.position);
        done_before(self.store.append_with(events, condition, options).await)
    }

    /// Decides on `projection` as [`EventStore::decide`], appending tracked:
    /// `Ok(None)` when this event's reaction was appended before.
    ///
    /// # Errors
    /// As [`EventStore::decide`].
    pub async fn decide<P, R, F>(&self, projection: &P, decide: F) -> Result<Option<Decided<R>>>
    where
        P: Projection,
        F: FnMut(&P::State) -> std::result::Result<Vec<Event>, R>,
    {
        let options = DecideOptions::default().tracking(self.consumer, self.position);
        done_before(self.store.decide_with(projection, options, decide).await)
    }
}

/// A tracked outcome, `None` when the reaction was appended before.
fn done_before<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::AlreadyTracked { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A process manager as a delivery handler: each event of a chunk in order, then the
/// runner's ack.
struct Reacting<M> {
    manager: M,
    store: EventStore,
    consumer: String,
}

impl<M: ProcessManager> Handler for Reacting<M> {
    async fn handle(&mut self, chunk: EventBatch, _: &Lease) -> Handled {
        for event in &chunk.events {
            let reaction = Reaction {
                store: &self.store,
                consumer: &self.consumer,
                position: event.position,
            };
            if let Err(error) = self.manager.react(event, &reaction).await {
                return Handled::Refused(error);
            }
        }
        Handled::NeedsAck
    }
}
