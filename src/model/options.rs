//! Per-call options: how to read (bounds, limit, direction, time limit) and how to
//! append (time limit, what to do when the writer is busy).

use std::time::Duration;

/// How to read: bounds, a limit and a direction. All optional.
///
/// ```
/// use dcb_store::ReadOptions;
/// let page = ReadOptions::default().after(17).limit(100);
/// let newest_first = ReadOptions::default().backwards().limit(1);
/// # let _ = (page, newest_first);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    pub(crate) after: Option<u64>,
    pub(crate) before: Option<u64>,
    pub(crate) limit: Option<u64>,
    pub(crate) backwards: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) consistency: Consistency,
}

/// Which server may answer a read: how fresh it must be.
///
/// Positions become visible in order on a replica as on the primary (the writer commits
/// them in order and replicas replay commits in that order), so a replica whose head is
/// at least `p` holds every event up to `p`.
///
/// ```
/// use dcb_store::{Consistency, ReadOptions};
/// let anywhere = ReadOptions::default().consistency(Consistency::Eventual);
/// let after_my_append = ReadOptions::default().consistency(Consistency::AtLeast(42));
/// # let _ = (anywhere, after_my_append);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Consistency {
    /// The primary: everything committed before the read started (the default).
    #[default]
    Strong,
    /// Any replica in rotation (within the store's `replica_max_lag`), else the primary.
    /// Reading again may see an older head than the last read did.
    Eventual,
    /// A replica that has every event up to this position (read your own writes: pass
    /// an append's `last_position`); when none has it, waits up to `replica_wait` for
    /// one to catch up, then reads from the primary. Either way the server's head at the
    /// read's snapshot is at least this position (or the primary's head, if that is
    /// lower), so the read sees every event up to it.
    AtLeast(u64),
}

impl Consistency {
    /// This consistency, raised so that the answer has at least `position`; a strong
    /// read already has it.
    pub(crate) fn at_least(self, position: Option<u64>) -> Self {
        match (self, position) {
            (Consistency::Strong, _) | (_, None) => self,
            (Consistency::AtLeast(p), Some(q)) => Consistency::AtLeast(p.max(q)),
            (_, Some(q)) => Consistency::AtLeast(q),
        }
    }
}

impl ReadOptions {
    /// Only events at positions greater than `position`.
    #[must_use]
    pub fn after(mut self, position: u64) -> Self {
        self.after = Some(position);
        self
    }

    /// Only events at positions lower than `position` (for paging backwards).
    #[must_use]
    pub fn before(mut self, position: u64) -> Self {
        self.before = Some(position);
        self
    }

    /// At most `limit` events.
    #[must_use]
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Newest first.
    #[must_use]
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// The time this read may take, connecting and retries included (a
    /// [`read_stream`](crate::EventStore::read_stream): each page). Defaults to the
    /// store's `operation_timeout`. The server ends any single read statement at
    /// `operation_timeout` in any case.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Which server may answer: [`Consistency::Strong`] (the primary, the default),
    /// [`Consistency::Eventual`] or [`Consistency::AtLeast`]. Without replicas
    /// configured, every read goes to the primary.
    #[must_use]
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }
}

/// How to append. All optional.
///
/// ```
/// use std::time::Duration;
/// use dcb_store::AppendOptions;
/// let quick = AppendOptions::default().timeout(Duration::from_millis(200)).fail_when_busy();
/// # let _ = quick;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) fail_when_busy: bool,
    pub(crate) tracking: Option<Tracking>,
}

/// A tracked append's consumer and the position it handled: see
/// [`AppendOptions::tracking`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Tracking {
    /// The durable consumer whose checkpoint the append moves.
    pub consumer: String,
    /// The position handled: the checkpoint moves here.
    pub position: u64,
}

impl Tracking {
    /// Consumer `consumer` handled `position`.
    pub fn new(consumer: impl Into<String>, position: u64) -> Self {
        Tracking {
            consumer: consumer.into(),
            position,
        }
    }
}

impl AppendOptions {
    /// The time the caller waits for the outcome. When it runs out the caller gets
    /// [`Error::Timeout`](crate::Error::Timeout) with `may_have_been_written: true`
    /// (the append may still be queued or in a batch): retrying with the same event
    /// ids is safe. Defaults to the store's `operation_timeout`.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Fail at once with [`Error::Overloaded`](crate::Error::Overloaded), queueing
    /// nothing, when the writer's mailbox is full, instead of waiting for room.
    #[must_use]
    pub fn fail_when_busy(mut self) -> Self {
        self.fail_when_busy = true;
        self
    }

    /// Makes this a *tracked* append: it commits only if durable consumer
    /// `consumer`'s checkpoint is below `position` (no checkpoint counts as 0), and
    /// moves the checkpoint to `position` in the same transaction as its events.
    /// Otherwise nothing is written and the append fails with
    /// [`Error::AlreadyTracked`](crate::Error::AlreadyTracked), carrying the checkpoint
    /// (the one [`EventStore::checkpoint`](crate::EventStore::checkpoint) reads).
    ///
    /// This is how a reaction happens once: a handler reacting to the event at
    /// position `p` appends its events with `tracking(name, p)`; a second attempt
    /// (after a crash, a takeover, a redelivery) finds the checkpoint at `p` and is
    /// refused. It composes with the rest of an append:
    /// - with a condition, both must hold; when both fail the condition is reported;
    /// - a retry of the same event ids returns the original positions, not
    ///   `AlreadyTracked` (ids are checked first);
    /// - several tracked appends of one consumer in one batch are decided one after
    ///   the other, in arrival order;
    /// - with the consumer's own acks: one checkpoint per name, an ack never moves
    ///   it back;
    /// - the append may carry no events: it then only moves the checkpoint, and its
    ///   result is the empty range after the head (`first_position = last_position + 1`,
    ///   `last_position` the head). Such an append has no ids, so after a connection
    ///   loss its retry by the store answers `AlreadyTracked` if the first attempt
    ///   committed (the checkpoint is then where it was asked to be).
    ///
    /// ```
    /// use dcb_store::AppendOptions;
    /// let once = AppendOptions::default().tracking("welcome-mailer", 42);
    /// # let _ = once;
    /// ```
    #[must_use]
    pub fn tracking(mut self, consumer: impl Into<String>, position: u64) -> Self {
        self.tracking = Some(Tracking::new(consumer, position));
        self
    }

    /// The tracking this append carries, if any.
    pub fn tracked(&self) -> Option<&Tracking> {
        self.tracking.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::Consistency::{self, *};

    #[test]
    fn raising_a_consistency_never_lowers_it_and_leaves_strong_alone() {
        let all = [Strong, Eventual, AtLeast(0), AtLeast(5), AtLeast(u64::MAX)];
        for c in all {
            for position in [None, Some(0), Some(4), Some(5), Some(6), Some(u64::MAX)] {
                let raised: Consistency = c.at_least(position);
                match (c, position) {
                    (Strong, _) => assert_eq!(raised, Strong),
                    (_, None) => assert_eq!(raised, c),
                    (Eventual, Some(q)) => assert_eq!(raised, AtLeast(q)),
                    (AtLeast(p), Some(q)) => assert_eq!(raised, AtLeast(p.max(q))),
                }
            }
        }
    }
}

/// How to decide ([`EventStore::decide_with`](crate::EventStore::decide_with),
/// [`EventStore::decision_model_with`](crate::EventStore::decision_model_with)):
/// which server may serve the decision model's reads. A [`Consistency`] converts into
/// it, so `decide_with(&p, Consistency::Eventual, f)` reads as before.
///
/// ```
/// use dcb_store::{Consistency, DecideOptions};
/// let from_a_replica = DecideOptions::default().consistency(Consistency::Eventual);
/// assert_eq!(from_a_replica, DecideOptions::from(Consistency::Eventual));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecideOptions {
    pub(crate) consistency: Consistency,
    pub(crate) tracking: Option<Tracking>,
}

impl DecideOptions {
    /// Which server may serve the model's first read (default: the primary). The
    /// append's condition is checked on the primary whatever this says.
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// Appends the decided events as a tracked append (see
    /// [`AppendOptions::tracking`]): the decision happens once per `position` of
    /// consumer `consumer`. When the checkpoint is already there, `decide` returns
    /// [`Error::AlreadyTracked`](crate::Error::AlreadyTracked) and appends nothing;
    /// a decision that appends nothing (a refusal, no change) leaves the checkpoint
    /// alone.
    ///
    /// ```
    /// use dcb_store::DecideOptions;
    /// let once = DecideOptions::default().tracking("welcome-mailer", 42);
    /// # let _ = once;
    /// ```
    #[must_use]
    pub fn tracking(mut self, consumer: impl Into<String>, position: u64) -> Self {
        self.tracking = Some(Tracking::new(consumer, position));
        self
    }
}

impl From<Consistency> for DecideOptions {
    fn from(consistency: Consistency) -> Self {
        DecideOptions {
            consistency,
            tracking: None,
        }
    }
}

/// How to migrate ([`EventStore::migrate_with`](crate::EventStore::migrate_with)):
/// which application role, if any, to grant what the store needs.
///
/// ```
/// use dcb_store::MigrateOptions;
/// let for_the_app = MigrateOptions::default().application_role("shop_app");
/// # let _ = for_the_app;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateOptions {
    pub(crate) application_role: Option<String>,
}

impl MigrateOptions {
    /// Grant `role` the use of the schema and
    /// [`APPLICATION_GRANTS`](crate::APPLICATION_GRANTS), and nothing more.
    pub fn application_role(mut self, role: impl Into<String>) -> Self {
        self.application_role = Some(role.into());
        self
    }
}
