//! The writer actor: gathers appends into batches and commits each batch as one
//! transaction.
//!
//! The actor keeps reading its mailbox while batches are written: appends that arrive
//! meanwhile are validated and queued in `pending`, and the next batch is sent at once,
//! pipelined behind the one in flight (at most two in flight). How many appends the
//! writer holds at once (queued or in flight) is bounded by its admission semaphore
//! (`writer_mailbox` permits): a caller takes a permit before its append is sent and
//! the permit is returned when the append is answered, so callers wait (or, with
//! `fail_when_busy`, fail with `Overloaded`) when the writer is full. No timer: a lone
//! append is written immediately.
//!
//! A batch is one transaction: the schema's advisory lock (in its own statement, so
//! the check that follows sees every earlier commit), then the append statement once
//! per *round*. A batch of one round (most) is one call of a session-local function
//! that does both, and commits as it answers; a batch of several rounds is `BEGIN`,
//! the lock, the rounds and `COMMIT`, pipelined. Rounds exist for appends whose
//! condition could match events of an earlier append of the same batch: those go to
//! a later round, where the statement sees the earlier round's rows. One bad append
//! never fails the others: if the database refuses a batch, each append is retried
//! alone.
//!
//! Files: this one holds the actor, its messages and scheduling; `batch` writes one
//! batch (retries, isolation, what an error says), with `transaction` (its statements
//! in one round trip), `connection` and `notify`; `pending` is an append waiting for
//! its answer; `rounds` plans rounds.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::base::connect::Connector;
use crate::error::{Error, Result};
use crate::metrics::{MetricsSink, Record};
use crate::model::{AppendResult, Limits};
use crate::sql::{self, DeclaredKeys, Identifier};

mod batch;
mod connection;
mod messages;
mod notify;
mod pending;
mod rounds;
mod transaction;

use batch::BatchJob;
use connection::WriterConnection;
pub use messages::Append;
pub(crate) use messages::{Ping, QueueAppend, Shutdown, Stop};
use pending::Pending;

/// Batches written at once: one, and the next pipelined behind it on its connection.
const MAX_IN_FLIGHT: usize = 2;
#[cfg(feature = "internals")]
pub(crate) use rounds::{plan as plan_rounds, PlannedAppend};

/// Settings the writer needs, fixed at start.
pub(crate) struct WriterSettings {
    pub schema: Identifier,
    /// Input limits, including the batch caps (`max_batch_events`, `max_batch_bytes`).
    pub limits: Limits,
    /// `false`: one append per transaction (a benchmark baseline).
    pub batching: bool,
    /// Up to [`MAX_IN_FLIGHT`] batches at once; one when off.
    pub pipelining: bool,
    pub timeout: Duration,
    /// The `NOTIFY` each batch sends for other processes' subscribers, if any.
    pub notify: Option<NotifySettings>,
    /// Declared keys: a condition's predicate on one is probed in `event_keys`.
    pub keys: DeclaredKeys,
}

/// The statement and channel of commit notifications.
pub(crate) struct NotifySettings {
    pub sql: String,
    pub channel: String,
    /// The shared lock listeners hold (`sql::LISTENERS` looks for it).
    pub listener_key: i64,
}

pub(crate) struct Writer {
    connector: Connector,
    heads: crate::base::heads::Heads,
    listeners: std::rc::Rc<notify::Listeners>,
    settings: std::rc::Rc<WriterSettings>,
    lock_key: i64,
    /// The connection batches are written on; shared by the (at most two) batches in
    /// flight, the second pipelined behind the first.
    connection: Option<Rc<WriterConnection>>,
    pending: VecDeque<Pending>,
    flush_scheduled: bool,
    /// Batches sent and not yet answered (at most [`MAX_IN_FLIGHT`]).
    in_flight: usize,
    /// Appends in the batch sent last.
    in_flight_batch: usize,
    /// Set by `Shutdown`: no more appends are taken; waiters are told when the last
    /// pending append has been written.
    closing: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    metrics: MetricsSink,
    /// Bounds the appends the writer holds (shared with the store's handle).
    admission: Arc<Semaphore>,
}

impl Writer {
    pub(crate) fn new(
        connector: Connector,
        settings: WriterSettings,
        heads: crate::base::heads::Heads,
        metrics: MetricsSink,
        admission: Arc<Semaphore>,
    ) -> Self {
        Writer {
            admission,
            connector,
            heads,
            listeners: std::rc::Rc::default(),
            lock_key: sql::write_lock_key(&settings.schema),
            settings: std::rc::Rc::new(settings),
            connection: None,
            pending: VecDeque::new(),
            flush_scheduled: false,
            in_flight: 0,
            in_flight_batch: 0,
            closing: false,
            shutdown_waiters: Vec::new(),
            metrics,
        }
    }

    /// Runs `flush` after the mailbox has been drained (items run after messages).
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled || self.pending.is_empty() || !self.may_send_batch() {
            return;
        }
        self.flush_scheduled = true;
        ctx.spawn(fut::ready(()).map(|_, act: &mut Self, ctx| {
            act.flush_scheduled = false;
            act.flush(ctx);
        }));
    }

    /// A batch goes out when none is in flight, or pipelined behind the one in flight
    /// when that one has a working connection to share: the server then starts on it
    /// the moment the first commits, instead of waiting for a round trip and for the
    /// writer to form it. (Without a connection the first batch connects; a second
    /// would open a connection of its own.) Pipelined only once at least half as many
    /// appends wait as the batch in flight holds: a small batch behind a large one
    /// would pay a whole transaction (lock, commit, WAL flush) for a few events, where
    /// waiting a moment makes it larger (measured: +35 % at K=64 over pipelining at
    /// once, BENCHMARKS.md).
    fn may_send_batch(&self) -> bool {
        match self.in_flight {
            0 => true,
            n if n < MAX_IN_FLIGHT && self.settings.pipelining => {
                self.connection.as_ref().is_some_and(|c| !c.is_closed())
                    && self.pending.len() * 2 >= self.in_flight_batch.max(2)
            }
            _ => false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !self.may_send_batch() {
            return;
        }
        let mut batch = self.take_batch();
        if batch.is_empty() {
            return;
        }
        let appends: Vec<_> = batch
            .iter()
            .map(|p| rounds::PlannedAppend {
                tracking: p.tracking.as_ref().map(|t| t.consumer.as_str()),
                ..rounds::PlannedAppend::new(&p.events, p.condition.as_ref())
            })
            .collect();
        let plan = rounds::plan(&appends);
        // Appends the planner could not place cheaply lead the next batch.
        for rest in batch.drain(plan.planned..).rev() {
            self.pending.push_front(rest);
        }
        self.in_flight += 1;
        self.in_flight_batch = batch.len();
        let job = self.job();
        let connection = self.connection.clone();
        ctx.spawn(
            job.run(connection.clone(), batch, plan.rounds)
                .into_actor(self)
                .map(move |returned, act, ctx| {
                    act.in_flight -= 1;
                    act.keep_connection(connection, returned);
                    act.schedule_flush(ctx);
                    act.notify_if_drained();
                }),
        );
        // The next batch may go out behind this one.
        self.schedule_flush(ctx);
    }

    /// After a batch written on `used` gave back `returned`: keep the connection it
    /// gave back, or forget `used` if the batch let it go (broken or timed out), unless
    /// another batch has already replaced it.
    fn keep_connection(
        &mut self,
        used: Option<Rc<WriterConnection>>,
        returned: Option<Rc<WriterConnection>>,
    ) {
        match returned {
            Some(connection) => self.connection = Some(connection),
            None => {
                if let (Some(current), Some(used)) = (&self.connection, &used) {
                    if Rc::ptr_eq(current, used) {
                        self.connection = None;
                    }
                }
            }
        }
    }

    fn job(&self) -> BatchJob {
        BatchJob {
            connector: self.connector.clone(),
            heads: self.heads.clone(),
            listeners: self.listeners.clone(),
            settings: self.settings.clone(),
            lock_key: self.lock_key,
            metrics: self.metrics.clone(),
        }
    }

    fn notify_if_drained(&mut self) {
        if self.closing && self.in_flight == 0 && self.pending.is_empty() {
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Takes appends in arrival order up to the batch caps (always at least one).
    fn take_batch(&mut self) -> Vec<Pending> {
        let (mut events, mut bytes) = (0, 0);
        let mut batch = Vec::new();
        while let Some(next) = self.pending.front() {
            let (e, b) = (next.events.len(), next.size_bytes());
            if !batch.is_empty()
                && (events + e > self.settings.limits.max_batch_events
                    || bytes + b > self.settings.limits.max_batch_bytes)
            {
                break;
            }
            events += e;
            bytes += b;
            batch.extend(self.pending.pop_front());
            if !self.settings.batching {
                break;
            }
        }
        batch
    }
}

/// Refuses what cannot be stored, before it reaches a batch; fixes `occurred_at`.
pub(crate) fn validate_append(append: &mut Append, limits: &Limits) -> Result<()> {
    crate::model::prepare_append(
        &mut append.events,
        append.condition.as_ref(),
        append.tracking.as_ref(),
        limits,
    )
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        // Each answers `Closed` as it is dropped; none of them was sent.
        self.pending.clear();
    }
}

impl Writer {
    /// Validates `append` and queues it; `reply` gets its one answer.
    fn queue(
        &mut self,
        mut append: Append,
        reply: oneshot::Sender<Result<AppendResult>>,
        caller: tracing::Span,
        admission: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) {
        if self.closing {
            let _ = reply.send(Err(Error::CLOSED));
            return;
        }
        if let Err(e) = validate_append(&mut append, &self.settings.limits) {
            self.metrics.record(Record::InvalidInput);
            let _ = reply.send(Err(e));
            return;
        }
        self.pending
            .push_back(Pending::new(append, reply, caller, admission));
        self.schedule_flush(ctx);
    }
}

impl Handler<Append> for Writer {
    type Result = ResponseFuture<Result<AppendResult>>;

    /// A message-driven caller waits for room like the handle's callers: the append
    /// takes a permit, then queues itself.
    fn handle(&mut self, append: Append, ctx: &mut Self::Context) -> Self::Result {
        let (reply, result) = oneshot::channel();
        let admission = self.admission.clone();
        let writer = ctx.address();
        Box::pin(async move {
            let admission = admission.acquire_owned().await.map_err(|_| Error::CLOSED)?;
            writer
                .send(QueueAppend {
                    append,
                    reply,
                    // A message-driven caller hands no span over.
                    caller: tracing::Span::none(),
                    admission,
                })
                .await
                .map_err(|_| Error::CLOSED)?;
            result.await.unwrap_or(Err(Error::CLOSED))
        })
    }
}

impl Handler<QueueAppend> for Writer {
    type Result = ();

    fn handle(&mut self, message: QueueAppend, ctx: &mut Self::Context) {
        self.queue(
            message.append,
            message.reply,
            message.caller,
            message.admission,
            ctx,
        );
    }
}

impl Handler<Ping> for Writer {
    type Result = ResponseFuture<Result<()>>;

    /// A round trip on the batches' connection (behind any batch in flight).
    fn handle(&mut self, _: Ping, ctx: &mut Self::Context) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        let connection = self.connection.clone();
        ctx.spawn(self.job().ping(connection.clone()).into_actor(self).map(
            move |(returned, result), act, _| {
                act.keep_connection(connection, returned);
                let _ = reply.send(result);
            },
        ));
        Box::pin(async move { answer.await.unwrap_or(Err(Error::CLOSED)) })
    }
}

impl Handler<Stop> for Writer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Shutdown> for Writer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.closing = true;
        let (done, drained) = oneshot::channel();
        self.shutdown_waiters.push(done);
        self.notify_if_drained();
        Box::pin(async move {
            let _ = drained.await;
        })
    }
}
