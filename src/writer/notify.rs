//! Whether to send `NOTIFY`: batches notify only while some process listens for
//! this schema's commits, which the writer checks now and then, inside a batch.

use std::time::{Duration, Instant};

use crate::sql::Prepared;

pub(super) struct NotifyStatements {
    pub(super) send: Prepared,
    pub(super) listeners: Prepared,
}

/// Whether any process listens for this schema's commits, as last checked: batches
/// send `NOTIFY` only then (a listener holds a shared session lock while it listens).
/// The answer is checked again, inside a batch, once it is older than
/// [`LISTENERS_CHECK`]; until a check says otherwise, batches notify.
#[derive(Default)]
pub(super) struct Listeners {
    /// When the last check answered, and what.
    checked: std::cell::Cell<Option<(Instant, bool)>>,
}

/// How long an answer about listeners holds. A listener that appears is notified
/// within this long; meanwhile its process's follower polls.
const LISTENERS_CHECK: Duration = Duration::from_millis(500);

impl Listeners {
    /// Whether this batch checks for listeners, and whether it notifies.
    pub(super) fn plan(&self, now: Instant) -> (bool, bool) {
        match self.checked.get() {
            Some((at, present)) if now.saturating_duration_since(at) < LISTENERS_CHECK => {
                (false, present)
            }
            _ => (true, true),
        }
    }

    pub(super) fn checked(&self, at: Instant, present: bool) {
        self.checked.set(Some((at, present)));
    }
}
