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
pub struct ReadOptions {
    pub(crate) after: Option<u64>,
    pub(crate) before: Option<u64>,
    pub(crate) limit: Option<u64>,
    pub(crate) backwards: bool,
    pub(crate) timeout: Option<Duration>,
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
}

/// How to append. All optional.
///
/// ```
/// use std::time::Duration;
/// use dcb_store::AppendOptions;
/// let quick = AppendOptions::default().timeout(Duration::from_millis(200)).fail_when_busy();
/// # let _ = quick;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) fail_when_busy: bool,
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
}
