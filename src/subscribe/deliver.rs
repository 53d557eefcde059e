//! Delivery to an actix actor: each batch is sent with `send` and the next one only
//! after the reply (back-pressure). `Ok` acknowledges (the checkpoint moves); `Err`
//! is retried with a growing pause. Each delivery is counted in the consumer's row
//! *before* it is made, so a process that crashes while delivering counts too. After
//! `max_attempts`, a batch of several events is delivered again one event at a time;
//! a single event that fails `max_attempts` times is parked (stored with its error,
//! the checkpoint moving past it) or stops the consumer, as configured.
//!
//! The same runner serves every kind of durable handler (`Handler`): an actor here, a
//! read model's transaction (`read_model.rs`), a process manager's reactions.
//!
//! Longer than most files because the runner (attempts, isolation, parking, acks) and
//! the public types of delivery to an actor are written together.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{EventBatch, Lease, OnFailure, Subscription};
use crate::base::retry::Backoff;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{Query, ReadOptions};

/// A batch for an actor; the handler's `Ok` acknowledges it.
///
/// ```no_run
/// use actix::prelude::*;
/// use dcb_store::{Deliver, DeliveryError};
///
/// struct Invoices;
/// impl Actor for Invoices { type Context = Context<Self>; }
/// impl Handler<Deliver> for Invoices {
///     type Result = Result<(), DeliveryError>;
///     fn handle(&mut self, deliver: Deliver, _: &mut Context<Self>) -> Self::Result {
///         for e in &deliver.batch.events {
///             if e.event.data_json().is_empty() {
///                 return Err(DeliveryError::new(format!("event {} is empty", e.position)));
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
#[derive(Clone, Debug, Message)]
#[rtype(result = "std::result::Result<(), DeliveryError>")]
#[non_exhaustive]
pub struct Deliver {
    /// The events, and how far they cover.
    pub batch: EventBatch,
}

/// A handler's refusal of a batch: it will be delivered again, up to `max_attempts`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    message: String,
}

impl DeliveryError {
    /// An error saying `message`.
    pub fn new(message: impl std::fmt::Display) -> Self {
        DeliveryError {
            message: message.to_string(),
        }
    }

    /// What the handler said.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A store error inside a handler (an append, a decision) fails the batch, which is
/// delivered again: `?` works in handlers.
impl From<Error> for DeliveryError {
    fn from(error: Error) -> Self {
        DeliveryError::new(error.report())
    }
}

/// A read model's statement failing fails the batch (rolled back, delivered again).
impl From<tokio_postgres::Error> for DeliveryError {
    fn from(error: tokio_postgres::Error) -> Self {
        DeliveryError::new(crate::error::Chain(&error))
    }
}

/// What runs a durable consumer's batches: delivery to an actor, a read model's
/// transaction, a process manager's reactions. The runner around it is the same:
/// attempts counted before each call, retries with a growing pause, one event at a
/// time after `max_attempts`, then parking or stopping.
pub(crate) trait Handler {
    /// Handles `chunk` (a batch, or one event of it when isolating).
    async fn handle(&mut self, chunk: EventBatch, lease: &Lease) -> Handled;

    /// Whether whatever handles is gone for good (delivery then ends quietly).
    fn gone(&self) -> bool {
        false
    }

    /// Resolves when the handler has work to do between batches (a rebuild asked
    /// for); never, by default.
    async fn wanted(&mut self) {
        std::future::pending::<()>().await;
    }

    /// Does that work, between batches, while `lease` is held.
    async fn between_batches(&mut self, _lease: &Lease) {}
}

/// What a handler made of a chunk.
pub(crate) enum Handled {
    /// Handled; the checkpoint is still to be moved (an ack).
    NeedsAck,
    /// Handled, and the checkpoint moved with it (in the handler's own transaction)
    /// to this stored value.
    Committed(u64),
    /// The handler refused the chunk: retried, then isolated and parked.
    Refused(DeliveryError),
    /// The chunk could not be handled to the end (database, connection, lease, the
    /// recipient gone); delivered again unless the error ends delivery.
    Failed(Error),
}

/// Delivery to an actor: each chunk as a [`Deliver`] message.
pub(crate) struct ToActor(pub Recipient<Deliver>);

impl Handler for ToActor {
    async fn handle(&mut self, batch: EventBatch, _: &Lease) -> Handled {
        match self.0.send(Deliver { batch }).await {
            Ok(Ok(())) => Handled::NeedsAck,
            Ok(Err(error)) => Handled::Refused(error),
            Err(_mailbox) => Handled::Failed(Error::CLOSED),
        }
    }

    fn gone(&self) -> bool {
        !self.0.connected()
    }
}

/// A running delivery to an actor; see
/// [`EventStore::subscribe_recipient`](crate::EventStore::subscribe_recipient).
#[derive(Debug)]
#[must_use = "dropping the handle stops delivery: keep it, or wait() on it"]
pub struct SubscriptionHandle {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<()>>,
}

impl SubscriptionHandle {
    pub(crate) fn new(
        stop: oneshot::Sender<()>,
        done: tokio::task::JoinHandle<Result<()>>,
    ) -> Self {
        SubscriptionHandle {
            stop: Some(stop),
            done,
        }
    }

    /// Stops delivering after the batch in flight (if any) is answered and
    /// acknowledged, and gives the consumer up (a standby takes over).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.done).await;
    }

    /// Waits until delivery ends: `Ok` after [`stop`](Self::stop) or when the
    /// recipient is gone, the error that stopped it otherwise
    /// ([`Error::DeliveryFailed`] with [`OnFailure::Stop`]).
    pub async fn wait(mut self) -> Result<()> {
        (&mut self.done).await.unwrap_or(Err(Error::CLOSED))
    }

    /// Whether delivery has ended.
    pub fn is_finished(&self) -> bool {
        self.done.is_finished()
    }
}

/// Delivery settings taken from the options.
pub(crate) struct DeliverySettings {
    pub max_attempts: u32,
    pub on_failure: OnFailure,
    pub retry_backoff: Duration,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What delivery records when no handler error is known (the process stopped while
/// the batch was being delivered).
const UNFINISHED: &str = "delivery did not finish (the process stopped while delivering)";

/// Runs until `stop` fires, the handler goes away, or a failure stops the consumer.
pub(crate) async fn run_delivery<H: Handler>(
    mut subscription: Subscription,
    mut handler: H,
    settings: DeliverySettings,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    let mut failures = 0u32;
    let mut wanted = false;
    let outcome = loop {
        if wanted {
            if let Some(lease) = subscription.shared().lease.as_ref().filter(|l| l.held()) {
                handler.between_batches(lease).await;
                wanted = false;
            }
        }
        let next = tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            () = handler.wanted(), if !wanted => {
                wanted = true;
                continue;
            }
            next = subscription.next() => next,
        };
        match next {
            Some(Ok(batch)) => {
                failures = 0;
                let delivered =
                    deliver_until_done(&subscription, &mut handler, &settings, &batch, &mut stop);
                if let Some(outcome) = delivered.await {
                    break outcome;
                }
            }
            Some(Err(error)) => {
                failures += 1;
                tracing::warn!(error = %crate::error::Chain(&error), "consumer: cannot get the next batch; retrying");
                let pause = growing_pause(settings.retry_backoff, failures);
                if !sleep_unless_stopped(pause, &mut stop).await {
                    break Ok(());
                }
            }
            None => break Ok(()),
        }
    };
    // Dropping the subscription (and a step it may have left mid-way) closes the lease
    // connection: the server releases the lock and a standby takes over.
    drop(subscription);
    outcome
}

/// Delivers `batch`, again after a transient failure (the subscription has moved past
/// it, so dropping it would skip its events); `Some` when delivery is over.
async fn deliver_until_done<H: Handler>(
    subscription: &Subscription,
    handler: &mut H,
    settings: &DeliverySettings,
    batch: &EventBatch,
    stop: &mut oneshot::Receiver<()>,
) -> Option<Result<()>> {
    let mut failures = 0u32;
    loop {
        match deliver(subscription, handler, settings, batch, stop).await {
            Ok(Delivered::All) => return None,
            Ok(Delivered::Stopped) => return Some(Ok(())),
            // Another subscriber took over: this one stands by again, and resumes from
            // the stored checkpoint (the batch comes again if it must).
            Err(Error::LeaseLost { .. }) => return None,
            Err(error @ Error::DeliveryFailed { .. }) => return Some(Err(error)),
            Err(Error::Closed { .. }) if handler.gone() => return Some(Ok(())),
            Err(error) => {
                failures += 1;
                tracing::warn!(error = %crate::error::Chain(&error), "consumer: delivery failed; delivering the batch again");
                let pause = growing_pause(settings.retry_backoff, failures);
                if !sleep_unless_stopped(pause, stop).await {
                    return Some(Ok(()));
                }
            }
        }
    }
}

/// The pause before the `failures`-th retry of a transient failure: the consumer's
/// `retry_backoff`, growing linearly, at most 50 of them and at most [`MAX_BACKOFF`].
fn growing_pause(base: Duration, failures: u32) -> Duration {
    Backoff::linear(base, base.saturating_mul(50).min(MAX_BACKOFF)).after(failures)
}

/// Sleeps `pause`; false when `stop` fired first.
async fn sleep_unless_stopped(pause: Duration, stop: &mut oneshot::Receiver<()>) -> bool {
    tokio::select! {
        _ = stop => false,
        () = tokio::time::sleep(pause) => true,
    }
}

enum Delivered {
    All,
    Stopped,
}

/// Delivers one batch from the subscription, with retries, isolation and parking.
async fn deliver<H: Handler>(
    subscription: &Subscription,
    handler: &mut H,
    settings: &DeliverySettings,
    batch: &EventBatch,
    stop: &mut oneshot::Receiver<()>,
) -> Result<Delivered> {
    let shared = subscription.shared();
    let Some(lease) = &shared.lease else {
        return Err(Error::invalid("delivery needs a durable consumer"));
    };
    if batch.events.is_empty() {
        subscription.ack(batch.scanned_to).await?;
        return Ok(Delivered::All);
    }
    let events = &batch.events;
    let mut next = 0;
    while next < events.len() {
        let first = events[next].position;
        let end = if lease.isolated(first) {
            next + 1
        } else {
            events.len()
        };
        let scanned_to = if end == events.len() {
            batch.scanned_to
        } else {
            events[end - 1].position
        };
        let attempt = lease.attempt(first).await?;
        if let Some(stats) = &shared.stats {
            stats.attempts.fetch_add(1, Ordering::Relaxed);
        }
        if attempt.attempts > settings.max_attempts {
            if end - next > 1 {
                // Find the failing event: one at a time up to the batch's end.
                lease.isolate(events[end - 1].position).await?;
                continue;
            }
            let error = attempt.last_error.unwrap_or_else(|| UNFINISHED.to_owned());
            let tried = attempt.attempts - 1;
            match settings.on_failure {
                OnFailure::Park => {
                    tracing::warn!(consumer = %lease.name, position = first, attempts = tried, %error, "consumer: parking an event");
                    lease.park(first, tried, &error).await?;
                    if let Some(stats) = &shared.stats {
                        stats.parked.fetch_add(1, Ordering::Relaxed);
                        stats.checkpoint.fetch_max(first, Ordering::Relaxed);
                    }
                    next = end;
                    continue;
                }
                OnFailure::Stop => {
                    // Started again, the consumer tries the event afresh.
                    lease.reset_attempts().await?;
                    return Err(Error::DeliveryFailed {
                        consumer: lease.name.clone(),
                        position: first,
                        attempts: tried,
                        error,
                    });
                }
            }
        }
        let chunk = EventBatch {
            events: events[next..end].to_vec(),
            scanned_to,
            caught_up: batch.caught_up && end == events.len(),
        };
        match handler.handle(chunk, lease).await {
            Handled::NeedsAck => {
                // Handled: only the ack is retried now, never the delivery (which would
                // count as another attempt).
                if let Some(stopped) =
                    ack_until_done(subscription, settings, scanned_to, stop).await?
                {
                    return Ok(stopped);
                }
                next = end;
            }
            Handled::Committed(checkpoint) => {
                if let Some(stats) = &shared.stats {
                    stats.checkpoint.store(checkpoint, Ordering::Relaxed);
                }
                next = end;
            }
            Handled::Refused(error) => {
                lease.failed(error.message()).await?;
                // A handler that failed is given twice the time at each attempt.
                let pause = Backoff::doubling(settings.retry_backoff, MAX_BACKOFF)
                    .after(attempt.attempts.min(16));
                if !sleep_unless_stopped(pause, stop).await {
                    return Ok(Delivered::Stopped);
                }
            }
            Handled::Failed(error) => return Err(error),
        }
    }
    Ok(Delivered::All)
}

/// Acks `to`, retrying transient failures with a growing pause; `Some` when stopped
/// meanwhile. `LeaseLost` and invalid acks are returned.
async fn ack_until_done(
    subscription: &Subscription,
    settings: &DeliverySettings,
    to: u64,
    stop: &mut oneshot::Receiver<()>,
) -> Result<Option<Delivered>> {
    let mut failures = 0u32;
    loop {
        match subscription.ack(to).await {
            Ok(()) => return Ok(None),
            Err(error @ (Error::LeaseLost { .. } | Error::InvalidInput { .. })) => {
                return Err(error)
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(error = %crate::error::Chain(&error), "consumer: ack failed; retrying the ack");
                let pause = growing_pause(settings.retry_backoff, failures);
                if !sleep_unless_stopped(pause, stop).await {
                    return Ok(Some(Delivered::Stopped));
                }
            }
        }
    }
}

/// What replaying parked events did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayOutcome {
    /// Positions delivered successfully (no longer parked).
    pub replayed: Vec<u64>,
    /// Positions whose delivery failed again (still parked, attempts counted).
    pub failed: Vec<u64>,
}

/// Delivers each parked event of `consumer` to `recipient` once, alone; unparks those
/// it accepts.
pub(crate) async fn replay_parked(
    store: &Engine,
    consumers: &super::Consumers,
    consumer: &str,
    recipient: &Recipient<Deliver>,
) -> Result<ReplayOutcome> {
    let mut outcome = ReplayOutcome::default();
    for parked in consumers.parked(consumer).await? {
        let at = parked.position;
        let read = store
            .read(
                &Query::all(),
                ReadOptions::default().after(at.saturating_sub(1)).limit(1),
            )
            .await?;
        let Some(event) = read.events.into_iter().find(|e| e.position == at) else {
            continue;
        };
        let batch = EventBatch {
            events: vec![event],
            scanned_to: at,
            caught_up: false,
        };
        match recipient.send(Deliver { batch }).await {
            Ok(Ok(())) => {
                consumers.unpark(consumer, at).await?;
                outcome.replayed.push(at);
            }
            Ok(Err(error)) => {
                consumers
                    .replay_failed(consumer, at, error.message())
                    .await?;
                outcome.failed.push(at);
            }
            Err(_mailbox) => return Err(Error::CLOSED),
        }
    }
    Ok(outcome)
}
