//! An append waiting for its batch, and what is known of its outcome so far: the one
//! place that decides what an error tells the caller about whether the append may
//! have been written.

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::Append;
use crate::error::{Error, Result};
use crate::model::{AppendCondition, AppendResult, Event, Tracking};

/// An append waiting for its batch, and what is known of its outcome so far.
pub(super) struct Pending {
    pub(super) events: Vec<Event>,
    pub(super) condition: Option<AppendCondition>,
    pub(super) tracking: Option<Tracking>,
    /// Taken by the one answer; an append dropped unanswered (the actor stopped)
    /// answers [`Error::Closed`], saying whether it may have been written.
    pub(super) reply: Option<oneshot::Sender<Result<AppendResult>>>,
    /// A batch holding this append has been sent and has not answered yet.
    pub(super) in_flight: std::cell::Cell<bool>,
    /// The first failure after which this append may have been written (a
    /// connection lost after its batch was sent); later errors must say so too.
    pub(super) unknown_outcome: Option<Error>,
    /// The caller's span (none for message-driven callers).
    pub(super) caller: tracing::Span,
    /// Returned to the admission semaphore when this is dropped (answered or not).
    pub(super) _admission: OwnedSemaphorePermit,
}

impl Pending {
    pub(super) fn new(
        append: Append,
        reply: oneshot::Sender<Result<AppendResult>>,
        caller: tracing::Span,
        admission: OwnedSemaphorePermit,
    ) -> Self {
        Pending {
            events: append.events,
            condition: append.condition,
            tracking: append.tracking,
            reply: Some(reply),
            in_flight: std::cell::Cell::new(false),
            unknown_outcome: None,
            caller,
            _admission: admission,
        }
    }

    pub(super) fn size_bytes(&self) -> usize {
        self.events.iter().map(Event::size_bytes).sum()
    }

    pub(super) fn may_have_been_written(&self) -> bool {
        self.in_flight.get() || self.unknown_outcome.is_some()
    }

    /// Sends the caller its result. An error that does not settle the outcome (a
    /// database, connection or time failure, as opposed to the statement's own
    /// decision) says "may have been written" whenever an attempt may have committed.
    pub(super) fn answer(mut self, result: Result<AppendResult>) {
        let result = match result {
            Err(error) if self.may_have_been_written() && !error.may_have_been_written() => {
                Err(match error {
                    Error::ConditionFailed { .. }
                    | Error::AlreadyTracked { .. }
                    | Error::DuplicateEventId { .. }
                    | Error::InvalidInput { .. } => error,
                    other => other
                        .as_possibly_written()
                        .or_else(|| self.unknown_outcome.clone())
                        .unwrap_or(Error::Closed {
                            may_have_been_written: true,
                        }),
                })
            }
            other => other,
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(Error::Closed {
                may_have_been_written: self.may_have_been_written(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Append;
    use super::*;
    use crate::model::Event;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a fresh semaphore has a permit")
    }

    fn pending() -> (Pending, oneshot::Receiver<Result<AppendResult>>) {
        let (reply, answer) = oneshot::channel();
        let append = Append::new(vec![Event::new("E", serde_json::json!({}))], None);
        (
            Pending::new(append, reply, tracing::Span::none(), permit()),
            answer,
        )
    }

    #[test]
    fn an_append_dropped_in_flight_says_it_may_have_been_written() {
        let (queued, mut answer) = pending();
        drop(queued);
        let error = answer.try_recv().unwrap().unwrap_err();
        assert!(matches!(error, Error::Closed { .. }) && !error.may_have_been_written());

        let (sent, mut answer) = pending();
        sent.in_flight.set(true);
        drop(sent);
        let error = answer.try_recv().unwrap().unwrap_err();
        assert!(matches!(error, Error::Closed { .. }) && error.may_have_been_written());
    }

    #[test]
    fn after_an_unknown_outcome_only_the_statements_own_decision_is_final() {
        let unknown = Error::Timeout {
            after: Duration::from_secs(1),
            may_have_been_written: true,
        };
        let answer_after_unknown = |result: Result<AppendResult>| {
            let (mut p, mut answer) = pending();
            p.unknown_outcome = Some(unknown.clone());
            p.answer(result);
            answer.try_recv().unwrap()
        };
        let timeout = Error::Timeout {
            after: Duration::from_secs(1),
            may_have_been_written: false,
        };
        assert!(answer_after_unknown(Err(timeout))
            .unwrap_err()
            .may_have_been_written());
        let refused = answer_after_unknown(Err(Error::Connect("refused".into()))).unwrap_err();
        assert!(refused.may_have_been_written());
        let decided = answer_after_unknown(Err(Error::ConditionFailed { after: None }));
        assert!(matches!(decided, Err(Error::ConditionFailed { .. })));
        let written = AppendResult {
            first_position: 1,
            last_position: 1,
        };
        assert_eq!(answer_after_unknown(Ok(written)).unwrap(), written);
    }
}
