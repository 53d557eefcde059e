//! The shared tail: one follower task per store reads every new event once (one read
//! per wake-up, whatever the number of subscribers) into a bounded buffer of recent
//! events, from which live subscribers take what matches their query in memory.
//!
//! The buffer always holds *every* event in `(start, tail]`, so a subscriber whose
//! position is in that range can take from it without missing anything; one further
//! behind reads from the database instead. Positions become visible in order, so
//! reading `after tail` never skips an event.

use std::collections::VecDeque;
use std::sync::{RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::base::heads::Heads;
use crate::base::retry::Backoff;
use crate::metrics::Record;
use crate::model::{Query, ReadOptions, SequencedEvent};

/// Pauses before the follower reads again after a failed read: 100 ms more each time,
/// at most 2 s.
const READ_AGAIN: Backoff = Backoff::linear(Duration::from_millis(100), Duration::from_secs(2));

/// The recent events, shared by the follower task (the only writer) and subscribers.
pub(crate) struct Tail {
    ring: RwLock<Ring>,
    /// The buffer's `tail`, for subscribers to wait on.
    moved: watch::Sender<u64>,
}

struct Ring {
    /// False until the follower has read the head once.
    ready: bool,
    start: u64,
    tail: u64,
    events: VecDeque<SequencedEvent>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

/// What a subscriber at some position can take from the buffer.
pub(crate) enum Take {
    /// Every event matching the query in `(position, scanned_to]`: the buffer's tail,
    /// or the last event taken when `max` was reached.
    Events {
        events: Vec<SequencedEvent>,
        scanned_to: u64,
        caught_up: bool,
    },
    /// The position is before the buffer's start: read from the database.
    Behind,
    /// The position is beyond the buffer's tail (a read saw newer events): wait.
    Ahead,
}

impl Tail {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Self {
        Tail {
            ring: RwLock::new(Ring {
                ready: false,
                start: 0,
                tail: 0,
                events: VecDeque::new(),
                bytes: 0,
                max_events,
                max_bytes,
            }),
            moved: watch::channel(0).0,
        }
    }

    /// Wakes when the buffer's tail moves.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// The buffer's tail (0 before the first read).
    pub(crate) fn tail(&self) -> u64 {
        self.ring.read().map(|r| r.tail).unwrap_or(0)
    }

    /// At most `max` events matching `query` after `after`, taken from the buffer.
    pub(crate) fn take(&self, query: &Query, after: u64, max: usize) -> Take {
        let Ok(ring) = self.ring.read() else {
            return Take::Behind;
        };
        if !ring.ready || after < ring.start {
            return Take::Behind;
        }
        if after > ring.tail {
            return Take::Ahead;
        }
        let from = ring.events.partition_point(|e| e.position <= after);
        let mut events = Vec::new();
        let mut scanned_to = ring.tail;
        for event in ring.events.range(from..) {
            if query.matches(&event.event) {
                events.push(event.clone());
                if events.len() >= max {
                    scanned_to = event.position;
                    break;
                }
            }
        }
        Take::Events {
            events,
            caught_up: scanned_to == ring.tail,
            scanned_to,
        }
    }

    /// Adds a read's events, every event in `(tail, head]`, evicting the oldest
    /// beyond the bounds.
    fn extend(&self, events: Vec<SequencedEvent>, head: u64) {
        let Ok(mut ring) = self.ring.write() else {
            return;
        };
        if !ring.ready {
            ring.ready = true;
            ring.start = head;
            ring.tail = head;
        }
        let head = head.max(ring.tail);
        for event in events {
            if event.position > ring.tail {
                ring.bytes += event.event.size_bytes();
                ring.events.push_back(event);
            }
        }
        ring.tail = head;
        while ring.events.len() > ring.max_events || ring.bytes > ring.max_bytes {
            let Some(oldest) = ring.events.pop_front() else {
                break;
            };
            ring.bytes -= oldest.event.size_bytes();
            ring.start = oldest.position;
        }
        let tail = ring.tail;
        drop(ring);
        self.moved.send_replace(tail);
    }
}

/// The follower task: reads what is new after the buffer's tail whenever the head
/// moves (this process's writer, or a notification from another process), and at
/// least every `poll` interval. Ends when the store is dropped.
pub(crate) async fn follow(
    store: Weak<crate::engine::Engine>,
    tail: std::sync::Arc<Tail>,
    heads: Heads,
    poll: Duration,
    page: u64,
) {
    let mut woken = heads.watch();
    let mut failures = 0u32;
    let mut first = true;
    loop {
        let Some(store) = store.upgrade() else {
            return;
        };
        let after = tail.tail();
        let options = if first {
            // The head, to start the buffer at.
            ReadOptions::default().backwards().limit(1)
        } else {
            ReadOptions::default().after(after).limit(page)
        };
        store.record(Record::one(&super::counts::TAIL_READ));
        let read = store.read(&Query::all(), options).await;
        drop(store);
        match read {
            Ok(read) => {
                failures = 0;
                let full = !first && read.events.len() as u64 >= page;
                let head = read.head.unwrap_or(0);
                tail.extend(if first { Vec::new() } else { read.events }, head);
                first = false;
                if full {
                    continue;
                }
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(error = %crate::error::Chain(&error), "subscriptions: reading new events failed; retrying");
                tokio::time::sleep(READ_AGAIN.after(failures)).await;
                continue;
            }
        }
        let known = *woken.borrow_and_update();
        if known > tail.tail() {
            continue;
        }
        tokio::select! {
            changed = woken.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(poll) => {}
        }
    }
}
