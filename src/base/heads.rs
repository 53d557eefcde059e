//! The newest committed position this process knows: moved by the writer after each
//! commit and by notifications from other processes; subscriptions, the router and
//! the metrics read it.

use std::sync::Arc;

use tokio::sync::watch;

/// A shared, only-increasing position with waiters.
#[derive(Clone)]
pub(crate) struct Heads(Arc<watch::Sender<u64>>);

impl Heads {
    pub(crate) fn new() -> Self {
        Heads(Arc::new(watch::channel(0).0))
    }

    /// Moves the head forward to `head` (never back), waking waiters if it moved.
    pub(crate) fn advance(&self, head: u64) {
        self.0.send_if_modified(|known| {
            let moved = head > *known;
            if moved {
                *known = head;
            }
            moved
        });
    }

    /// Wakes waiters without a new head (something may have been missed).
    pub(crate) fn wake(&self) {
        self.0.send_modify(|_| {});
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    pub(crate) fn current(&self) -> u64 {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use crate::base::heads::Heads;

    #[test]
    fn the_head_never_moves_back() {
        let heads = Heads::new();
        heads.advance(7);
        heads.advance(3);
        assert_eq!(heads.current(), 7);
    }
}
