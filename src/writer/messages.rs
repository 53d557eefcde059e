//! The writer's messages: what its callers send it.

use actix::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::error::Result;
use crate::model::{AppendCondition, AppendResult, Event, Tracking};

/// Appends `events` atomically, unless `condition` fails. Send it to
/// [`EventStore::appender`](crate::EventStore::appender) or use
/// [`EventStore::append`](crate::EventStore::append).
///
/// A message-driven caller hears [`Error::Closed`](crate::Error::Closed) only as a mailbox error if the
/// store stops mid-batch; the handle's methods say whether such an append may have
/// been written.
#[derive(Debug, Message)]
#[rtype(result = "Result<AppendResult>")]
#[non_exhaustive]
pub struct Append {
    /// The events, stored at consecutive positions in this order.
    pub events: Vec<Event>,
    /// The condition that must hold for the append to happen.
    pub condition: Option<AppendCondition>,
    /// The consumer checkpoint the append moves, if it is tracked (see
    /// [`AppendOptions::tracking`](crate::AppendOptions::tracking)).
    pub tracking: Option<Tracking>,
}

impl Append {
    /// An append of `events` under `condition`.
    pub fn new(events: Vec<Event>, condition: Option<AppendCondition>) -> Self {
        Append {
            events,
            condition,
            tracking: None,
        }
    }

    /// An append of `events` under `condition`, tracked when `tracking` says so.
    pub(crate) fn with_tracking(
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        tracking: Option<Tracking>,
    ) -> Self {
        Append {
            events,
            condition,
            tracking,
        }
    }

    /// This append, tracked: see [`AppendOptions::tracking`](crate::AppendOptions::tracking).
    #[must_use]
    pub fn tracking(mut self, consumer: impl Into<String>, position: u64) -> Self {
        self.tracking = Some(Tracking::new(consumer, position));
        self
    }
}

/// Checks the writer's connection with a round trip, between batches.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub(crate) struct Ping;

/// Stops the writer after every append queued before it is written; appends sent
/// after it fail with [`Error::Closed`](crate::Error::Closed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// Stops the writer at once, as its store is dropped: appends queued or in flight
/// answer [`Error::Closed`](crate::Error::Closed) (saying whether they may have been written).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;

/// An append that carries its own reply channel, so the caller hears the outcome
/// straight from the queued append, also if the writer stops mid-batch (`Closed`
/// saying whether it may have been written), and so `try_send` can be used.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct QueueAppend {
    pub append: Append,
    pub reply: oneshot::Sender<Result<AppendResult>>,
    /// The caller's span, which the batch's span follows from.
    pub caller: tracing::Span,
    /// The append's place in the writer, given back when it is answered.
    pub admission: OwnedSemaphorePermit,
}
