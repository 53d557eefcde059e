//! Following the store: subscriptions (history, then live), durable consumers with a
//! stored checkpoint and one holder across processes, and delivery to an actor.
//!
//! Wake-ups: the writer moves this process's known head ([`Heads`](crate::base::heads::Heads)) after each commit;
//! a `LISTEN` connection (`listener.rs`) moves it for other processes' commits (each
//! batch sends one `NOTIFY` in its transaction); a slow poll covers lost
//! notifications. One follower task per store (`tail.rs`) then reads what is new once
//! into a bounded buffer that all live subscribers take from in memory; a subscriber
//! further behind reads from the database (`follow.rs`). Positions become visible in
//! order, so reading after the last position seen never skips an event.
//!
//! Files: this one holds the public types; `follow.rs` one subscriber's state machine;
//! `tail.rs` the shared buffer and its follower task; `listener.rs` the notifications;
//! `consumer.rs` leases, checkpoints, attempts and parking; `deliver.rs` delivery to
//! an actor.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;

use crate::error::{Error, Result};
use crate::metrics::ConsumerStats;
use crate::model::SequencedEvent;

mod api;
mod consumer;
mod deliver;
mod follow;
mod listener;
mod read_model;
mod tail;

pub(crate) use api::Subscriptions;
pub use consumer::ParkedEvent;
pub(crate) use consumer::{Consumers, Lease};
pub(crate) use deliver::{replay_parked, run_delivery};
pub use deliver::{Deliver, DeliveryError, ReplayOutcome, SubscriptionHandle};
pub(crate) use deliver::{Handled, Handler};
pub(crate) use follow::Follower;
pub(crate) use listener::listen;
pub use read_model::{ReadModel, ReadModelHandle};
pub(crate) use tail::{follow as follow_tail, Tail};

/// What subscriptions count, in the metrics' snapshot.
pub(crate) mod counts {
    use crate::metrics::Counter;

    /// A read of new events into the live subscribers' shared buffer.
    pub(crate) static TAIL_READ: Counter = Counter(|m| &mut m.subscription_tail_reads);
    /// A read by a subscriber behind the shared buffer (catching up).
    pub(crate) static CATCH_UP_READ: Counter = Counter(|m| &mut m.subscription_catch_up_reads);
}

/// What a durable consumer does with an event its handler failed `max_attempts` times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Store it with its error ([`EventStore::parked`](crate::EventStore::parked)) and
    /// go on with the next event.
    #[default]
    Park,
    /// Stop the consumer; [`SubscriptionHandle::wait`] returns the error. The event is
    /// delivered again when the consumer is started again.
    Stop,
}

/// How to subscribe: where to start, batch size, and for a durable consumer its name
/// and failure handling.
///
/// ```
/// use dcb_store::SubscribeOptions;
/// let from_17 = SubscribeOptions::default().after(17).batch_size(500);
/// let durable = SubscribeOptions::default().consumer("invoices-v1").max_attempts(5);
/// # let _ = (from_17, durable);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SubscribeOptions {
    pub(crate) after: Option<u64>,
    pub(crate) batch_size: usize,
    pub(crate) consumer: Option<String>,
    pub(crate) max_attempts: u32,
    pub(crate) on_failure: OnFailure,
    pub(crate) heartbeat: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) standby_poll: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            after: None,
            batch_size: 500,
            consumer: None,
            max_attempts: 5,
            on_failure: OnFailure::Park,
            heartbeat: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(100),
            standby_poll: Duration::from_millis(250),
        }
    }
}

impl SubscribeOptions {
    /// Start after `position` (default: from the first event). A durable consumer
    /// with a stored checkpoint resumes after its checkpoint instead.
    #[must_use]
    pub fn after(mut self, position: u64) -> Self {
        self.after = Some(position);
        self
    }

    /// At most `events` events per batch (default 500).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events;
        self
    }

    /// A durable consumer named `name`: resumes after its stored checkpoint, and only
    /// one subscriber with this name (across all processes) receives events at a time;
    /// the others wait as hot standbys.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Deliveries of a batch to an actor before its failing event is parked or the
    /// consumer stops (default 5).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// What to do with an event that failed `max_attempts` times (default: park it).
    #[must_use]
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// How often, at most, an empty batch reports progress (`scanned_to`) when no
    /// event matches (default 1 s). A batch that reaches the head after one that did
    /// not is always sent at once, empty or not.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The first pause before a failed delivery is retried; it doubles each attempt,
    /// up to 5 s (default 100 ms).
    #[must_use]
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// How often a standby tries to take a durable consumer over (default 250 ms).
    #[must_use]
    pub fn standby_poll(mut self, interval: Duration) -> Self {
        self.standby_poll = interval;
        self
    }
}

/// Events delivered together, in position order.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct EventBatch {
    /// The events, each after the previous batch's `scanned_to`.
    pub events: Vec<SequencedEvent>,
    /// Every event matching the query up to this position has been delivered (in this
    /// batch or an earlier one): the position to checkpoint. Empty batches carry it
    /// too, so a consumer of rare events still moves forward.
    pub scanned_to: u64,
    /// Whether the subscription has reached the head: `scanned_to` is the newest
    /// position this process knew of when the batch was made (the shared buffer's
    /// tail, or the head a read saw). A batch that reaches it after one that did not
    /// is always sent, even when empty.
    pub caught_up: bool,
}

/// Shared by a subscription's stream and its `ack`.
pub(crate) struct Shared {
    pub lease: Option<Lease>,
    pub stats: Option<Arc<ConsumerStats>>,
    pub standby_poll: Duration,
    /// Where a durable consumer without a checkpoint starts.
    pub start_after: Option<u64>,
    /// Whether this subscriber counts itself among its consumer's holders (metrics).
    pub holding: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Counts this subscriber in or out of its consumer's holders.
    pub(crate) fn set_holding(&self, holding: bool) {
        let Some(stats) = &self.stats else { return };
        if self.holding.swap(holding, Ordering::AcqRel) != holding {
            if holding {
                stats.holders.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.holders.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.set_holding(false);
    }
}

type Step = Pin<Box<dyn std::future::Future<Output = (Box<Follower>, Result<EventBatch>)> + Send>>;

/// A subscription: every event matching its query after its start, in position order,
/// each once, first the history and then live. Also a [`futures_util::Stream`].
///
/// An error does not end it: polling again retries from the same position. It never
/// ends on its own; drop it to stop (a durable consumer's standby then takes over).
///
/// ```no_run
/// # use dcb_store::*;
/// # async fn follow(store: &EventStore) -> Result<()> {
/// let query = Query::new([QueryItem::new().types(["InvoiceIssued"])]);
/// let options = SubscribeOptions::default().consumer("invoices-v1");
/// let mut sub = store.subscribe(query, options).await?;
/// while let Some(batch) = sub.next().await {
///     let batch = batch?;
///     for e in &batch.events {
///         println!("{} {}", e.position, e.event.event_type());
///     }
///     sub.ack(batch.scanned_to).await?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "a subscription delivers only while it is polled, and dropping it stops it"]
pub struct Subscription {
    follower: Option<Box<Follower>>,
    step: Option<Step>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("consumer", &self.consumer())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(follower: Follower, shared: Shared) -> Self {
        Subscription {
            follower: Some(Box::new(follower)),
            step: None,
            shared: Arc::new(shared),
        }
    }

    /// The next batch: waits for new events (or, for a standby, to become the holder).
    /// Never `None`; the `Option` is the shape of a stream.
    pub async fn next(&mut self) -> Option<Result<EventBatch>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Stores `position` (a batch's `scanned_to`) as the durable consumer's
    /// checkpoint: a fresh subscriber resumes after it. Never moves the checkpoint
    /// back; written before this returns.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] without a consumer name, or beyond what was delivered;
    /// [`Error::LeaseLost`] when another subscriber has taken the consumer over (this
    /// one then resumes from the stored checkpoint as a standby); database errors.
    pub async fn ack(&self, position: u64) -> Result<()> {
        let Some(lease) = &self.shared.lease else {
            return Err(Error::invalid(
                "ack needs a durable consumer (SubscribeOptions::consumer)",
            ));
        };
        let stored = lease.ack(position).await?;
        if let (Some(stats), Some(stored)) = (&self.shared.stats, stored) {
            stats.checkpoint.store(stored, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The durable consumer's name, if this is one.
    pub fn consumer(&self) -> Option<&str> {
        self.shared.lease.as_ref().map(|l| l.name.as_str())
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Stream for Subscription {
    type Item = Result<EventBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.step.is_none() {
            let Some(follower) = self.follower.take() else {
                return Poll::Ready(None);
            };
            let shared = self.shared.clone();
            self.step = Some(Box::pin(follow::step(follower, shared)));
        }
        let Some(step) = self.step.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((follower, result)) => {
                self.step = None;
                self.follower = Some(follower);
                Poll::Ready(Some(result))
            }
        }
    }
}
