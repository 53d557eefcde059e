//! One subscriber's state machine: from its position, take matching events from the
//! shared buffer when it covers the position, read from the database when it does
//! not, and wait for the tail to move when there is nothing new.
//!
//! The position (`scanned_to`) is the only state that matters for exactness: every
//! step delivers *all* matching events in `(scanned_to, x]` and then sets
//! `scanned_to = x`, whichever source it used, so nothing is skipped or repeated
//! across the switch from history to live.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::tail::{Tail, Take};
use super::{EventBatch, Shared};
use crate::engine::Engine;
use crate::error::Result;
use crate::metrics::Record;
use crate::model::{Query, ReadOptions, SequencedEvent};

pub(crate) struct Follower {
    store: Arc<Engine>,
    tail: Arc<Tail>,
    moved: watch::Receiver<u64>,
    query: Query,
    batch_size: usize,
    /// Where to start when no checkpoint says otherwise.
    start_after: Option<u64>,
    scanned_to: u64,
    /// Whether the last batch sent was at the head: a batch that reaches the head after
    /// one that was not is always sent.
    at_head_sent: bool,
    last_sent: u64,
    last_sent_at: Instant,
    heartbeat: Duration,
    poll: Duration,
    /// The last wait timed out: read from the database rather than wait again.
    read_database: bool,
}

impl Follower {
    pub(crate) fn new(
        store: Arc<Engine>,
        tail: Arc<Tail>,
        query: Query,
        batch_size: usize,
        start_after: Option<u64>,
        heartbeat: Duration,
        poll: Duration,
    ) -> Self {
        let moved = tail.watch();
        let start = start_after.unwrap_or(0);
        Follower {
            store,
            tail,
            moved,
            query,
            batch_size,
            start_after,
            scanned_to: start,
            at_head_sent: false,
            last_sent: start,
            last_sent_at: Instant::now(),
            heartbeat,
            poll,
            read_database: false,
        }
    }

    /// Starts again after `checkpoint` (a durable consumer taken over), or where the
    /// subscription was asked to start.
    fn restart(&mut self, checkpoint: Option<u64>) {
        let start = checkpoint.or(self.start_after).unwrap_or(0);
        self.scanned_to = start;
        self.last_sent = start;
        self.at_head_sent = false;
        self.last_sent_at = Instant::now();
    }

    /// The next batch worth sending: events, the first batch at the head, or progress
    /// after `heartbeat`.
    pub(crate) async fn next_batch(&mut self) -> Result<EventBatch> {
        loop {
            self.moved.borrow_and_update();
            let take = if self.read_database {
                Take::Behind
            } else {
                self.tail
                    .take(&self.query, self.scanned_to, self.batch_size)
            };
            match take {
                Take::Events {
                    events,
                    scanned_to,
                    caught_up,
                } => {
                    if let Some(batch) = self.batch(events, scanned_to, caught_up) {
                        return Ok(batch);
                    }
                    if caught_up {
                        self.wait(false).await;
                    }
                }
                // The database showed newer events than the buffer has: report
                // progress if due; if the follower task does not catch up within the
                // poll interval, read.
                Take::Ahead => {
                    let at = self.scanned_to;
                    // A read said this is its head: at the head as far as known.
                    if let Some(batch) = self.batch(Vec::new(), at, true) {
                        return Ok(batch);
                    }
                    self.wait(true).await;
                }
                Take::Behind => {
                    self.read_database = false;
                    let read = self.read().await?;
                    let full = read.events.len() >= self.batch_size;
                    let scanned_to = read.head.unwrap_or(0).max(self.scanned_to);
                    if let Some(batch) = self.batch(read.events, scanned_to, !full) {
                        return Ok(batch);
                    }
                    if !full {
                        self.wait(true).await;
                    }
                }
            }
        }
    }

    async fn read(&self) -> Result<crate::model::ReadResult> {
        self.store
            .record(Record::one(&super::counts::CATCH_UP_READ));
        let options = ReadOptions::default()
            .after(self.scanned_to)
            .limit(self.batch_size as u64);
        self.store.read(&self.query, options).await
    }

    /// Moves to `scanned_to`; the batch to send, if it is worth sending.
    fn batch(
        &mut self,
        events: Vec<SequencedEvent>,
        scanned_to: u64,
        caught_up: bool,
    ) -> Option<EventBatch> {
        self.scanned_to = scanned_to;
        let reached_head = caught_up && !self.at_head_sent;
        let progress_due =
            scanned_to > self.last_sent && self.last_sent_at.elapsed() >= self.heartbeat;
        if events.is_empty() && !reached_head && !progress_due {
            return None;
        }
        self.at_head_sent = caught_up;
        self.last_sent = scanned_to;
        self.last_sent_at = Instant::now();
        Some(EventBatch {
            events,
            scanned_to,
            caught_up,
        })
    }

    /// Until the buffer's tail moves, the heartbeat is due, or the poll interval
    /// passes (then, with `fallback`, the next step reads from the database; without,
    /// the follower task's own poll is trusted, so idle subscribers cost nothing).
    async fn wait(&mut self, fallback: bool) {
        let limit = if self.scanned_to > self.last_sent {
            self.heartbeat
                .saturating_sub(self.last_sent_at.elapsed())
                .min(self.poll)
        } else {
            self.poll
        };
        // A heartbeat due this very instant is sent by the next step: never spin.
        let limit = limit.max(Duration::from_millis(1));
        tokio::select! {
            changed = self.moved.changed() => {
                if changed.is_err() {
                    // The follower task is gone (the store is closing): poll instead.
                    tokio::time::sleep(self.poll).await;
                    self.read_database = true;
                }
            }
            () = tokio::time::sleep(limit) => {
                self.read_database = fallback && limit >= self.poll;
            }
        }
    }
}

/// One step of a subscription: for a durable consumer, first hold the lease (waiting
/// as a standby), then the next batch; a batch made while the lease was lost is
/// dropped and the new holder's checkpoint is where this one resumes.
pub(crate) async fn step(
    mut follower: Box<Follower>,
    shared: Arc<Shared>,
) -> (Box<Follower>, Result<EventBatch>) {
    loop {
        if let Some(lease) = &shared.lease {
            if !lease.held() {
                shared.set_holding(false);
                match lease.acquire(shared.standby_poll, shared.start_after).await {
                    Ok(resume) => {
                        follower.restart(resume.checkpoint);
                        shared.set_holding(true);
                        if let Some(stats) = &shared.stats {
                            stats
                                .checkpoint
                                .store(resume.checkpoint.unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                    Err(error) => {
                        tokio::time::sleep(shared.standby_poll).await;
                        return (follower, Err(error));
                    }
                }
            }
        }
        let result = match &shared.lease {
            // A holder that stops holding while it waits for events starts over.
            Some(lease) => tokio::select! {
                result = follower.next_batch() => result,
                () = lease.released() => continue,
            },
            None => follower.next_batch().await,
        };
        if let Ok(batch) = &result {
            if let Some(lease) = &shared.lease {
                if !lease.held() {
                    continue;
                }
            }
            if let Some(lease) = &shared.lease {
                lease.delivered.store(batch.scanned_to, Ordering::Release);
            }
            if let Some(stats) = &shared.stats {
                stats.sent(
                    batch.events.len(),
                    batch.events.last().map(|e| e.recorded_at),
                    batch.caught_up,
                );
            }
        }
        return (follower, result);
    }
}
