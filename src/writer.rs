//! The writer actor: gathers appends into batches and commits each batch as one
//! transaction.
//!
//! While a batch is being written the actor does not read its mailbox (`ctx.wait`),
//! so appends that arrive meanwhile wait there, bounded by the mailbox capacity
//! (callers of `send` wait when it is full). When the write ends, the actor drains
//! the mailbox into `pending` and starts the next batch at once: no timer, so a lone
//! append is written immediately.
//!
//! A batch is one transaction: `BEGIN`, the schema's advisory lock (in its own
//! statement, so the check that follows sees every earlier commit), then the append
//! statement once per *round*, then `COMMIT`. Rounds exist for appends whose
//! condition could match events of an earlier append of the same batch: those go to
//! a later round, where the statement sees the earlier round's rows. One bad append
//! never fails the others: if the database refuses a batch, each append is retried
//! alone.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::oneshot;
use tokio_postgres::{Client, Statement};
use tracing::Instrument;
use uuid::Uuid;

use crate::connect::Connector;
use crate::error::{Error, Result};
use crate::metrics::{self, Component, MetricsSink, Record};
use crate::model::{AppendCondition, AppendResult, Event, Limits, Query};
use crate::sql::{self, AppendParams};

/// Appends `events` atomically, unless `condition` fails. Send it to
/// [`EventStore::appender`](crate::EventStore::appender) or use
/// [`EventStore::append`](crate::EventStore::append).
#[derive(Debug, Message)]
#[rtype(result = "Result<AppendResult>")]
pub struct Append {
    /// The events, stored at consecutive positions in this order.
    pub events: Vec<Event>,
    /// The condition that must hold for the append to happen.
    pub condition: Option<AppendCondition>,
}

/// Stops the writer after every append queued before it is written; appends sent
/// after it fail with [`Error::Closed`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// An append sent with `try_send`, which gives no reply channel: it carries its own.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct TryAppend {
    pub append: Append,
    pub reply: oneshot::Sender<Result<AppendResult>>,
}

/// An append waiting for its batch.
struct Pending {
    events: Vec<Event>,
    condition: Option<AppendCondition>,
    reply: oneshot::Sender<Result<AppendResult>>,
}

impl Pending {
    fn json_bytes(&self) -> usize {
        self.events.iter().map(Event::json_bytes).sum()
    }
}

/// Settings the writer needs, fixed at start.
pub(crate) struct WriterSettings {
    pub schema: String,
    pub limits: Limits,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    /// `false`: one append per transaction (a benchmark baseline).
    pub batching: bool,
    pub timeout: Duration,
}

pub(crate) struct Writer {
    connector: Connector,
    settings: std::rc::Rc<WriterSettings>,
    append_sql: std::rc::Rc<str>,
    lock_key: i64,
    connection: Option<WriterConnection>,
    pending: VecDeque<Pending>,
    flush_scheduled: bool,
    writing: bool,
    /// Set by `Shutdown`: no more appends are taken; waiters are told when the last
    /// pending append has been written.
    closing: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    metrics: MetricsSink,
}

/// A connection with the writer's statements prepared on it.
struct WriterConnection {
    client: Client,
    lock: Statement,
    append: Statement,
}

impl Writer {
    pub(crate) fn new(
        connector: Connector,
        settings: WriterSettings,
        metrics: MetricsSink,
    ) -> Self {
        Writer {
            connector,
            append_sql: sql::append_statement(&settings.schema).into(),
            lock_key: sql::write_lock_key(&settings.schema),
            settings: std::rc::Rc::new(settings),
            connection: None,
            pending: VecDeque::new(),
            flush_scheduled: false,
            writing: false,
            closing: false,
            shutdown_waiters: Vec::new(),
            metrics,
        }
    }

    /// Runs `flush` after the mailbox has been drained (items run after messages).
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.flush_scheduled || self.pending.is_empty() {
            return;
        }
        self.flush_scheduled = true;
        ctx.spawn(fut::ready(()).map(|_, act: &mut Self, ctx| {
            act.flush_scheduled = false;
            act.flush(ctx);
        }));
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let batch = self.take_batch();
        if batch.is_empty() {
            return;
        }
        self.writing = true;
        let job = BatchJob {
            connector: self.connector.clone(),
            settings: self.settings.clone(),
            append_sql: self.append_sql.clone(),
            lock_key: self.lock_key,
            metrics: self.metrics.clone(),
        };
        let connection = self.connection.take();
        ctx.wait(
            job.run(connection, batch)
                .into_actor(self)
                .map(|connection, act, ctx| {
                    act.connection = connection;
                    act.writing = false;
                    act.schedule_flush(ctx);
                    act.notify_if_drained();
                }),
        );
    }

    fn notify_if_drained(&mut self) {
        if self.closing && !self.writing && self.pending.is_empty() {
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
            let (e, b) = (next.events.len(), next.json_bytes());
            if !batch.is_empty()
                && (events + e > self.settings.max_batch_events
                    || bytes + b > self.settings.max_batch_bytes)
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
    if append.events.is_empty() {
        return Err(Error::invalid("an append needs at least one event"));
    }
    let now = Utc::now();
    let mut ids = std::collections::HashSet::with_capacity(append.events.len());
    for (i, event) in append.events.iter_mut().enumerate() {
        event.prepare_for_append(i, limits, now)?;
        if !ids.insert(event.id()) {
            return Err(Error::invalid(format!(
                "event {i}: id {} appears twice in this append",
                event.id()
            )));
        }
    }
    if let Some(condition) = &append.condition {
        condition
            .fail_if_events_match
            .validate("condition query", limits)?;
        if condition.after.is_some_and(|a| a > i64::MAX as u64) {
            return Err(Error::invalid(format!(
                "condition after is larger than {}",
                i64::MAX
            )));
        }
    }
    Ok(())
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for pending in self.pending.drain(..) {
            let _ = pending.reply.send(Err(Error::Closed));
        }
    }
}

impl Handler<Append> for Writer {
    type Result = ResponseFuture<Result<AppendResult>>;

    fn handle(&mut self, mut append: Append, ctx: &mut Self::Context) -> Self::Result {
        if self.closing {
            return Box::pin(async { Err(Error::Closed) });
        }
        if let Err(e) = validate_append(&mut append, &self.settings.limits) {
            self.metrics.record(Record::InvalidInput);
            return Box::pin(async move { Err(e) });
        }
        let (reply, result) = oneshot::channel();
        self.pending.push_back(Pending {
            events: append.events,
            condition: append.condition,
            reply,
        });
        self.schedule_flush(ctx);
        Box::pin(async move { result.await.unwrap_or(Err(Error::Closed)) })
    }
}

/// First pause before writing a batch again after its connection failed; later
/// pauses grow linearly, all within the operation timeout.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

impl Handler<TryAppend> for Writer {
    type Result = ();

    fn handle(&mut self, message: TryAppend, ctx: &mut Self::Context) {
        let answer = self.handle(message.append, ctx);
        actix::spawn(async move {
            let _ = message.reply.send(answer.await);
        });
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

/// What one batch write needs, detached from the actor so it can run as a future.
struct BatchJob {
    connector: Connector,
    settings: std::rc::Rc<WriterSettings>,
    append_sql: std::rc::Rc<str>,
    lock_key: i64,
    metrics: MetricsSink,
}

/// How a batch transaction failed.
enum BatchFailure {
    /// The server refused a statement; the transaction was rolled back, nothing written.
    Refused(tokio_postgres::Error),
    /// The connection failed; `commit_sent` says whether the outcome is unknown.
    Connection {
        error: tokio_postgres::Error,
        commit_sent: bool,
    },
}

impl BatchJob {
    /// Writes `batch`, answers every caller, and returns the connection if it is still good.
    async fn run(
        self,
        connection: Option<WriterConnection>,
        batch: Vec<Pending>,
    ) -> Option<WriterConnection> {
        let events: usize = batch.iter().map(|p| p.events.len()).sum();
        let span = tracing::debug_span!("batch", appends = batch.len(), events);
        let timeout = self.settings.timeout;
        async move {
            let deadline = Instant::now() + timeout;
            let mut connection = connection.filter(|c| !c.client.is_closed());
            // The error to report if every attempt fails; one whose COMMIT was in flight
            // wins, since it is the one that says the batch may have been written.
            let mut failure: Option<Error> = None;
            for attempt in 0u32.. {
                if attempt > 0 {
                    let backoff = RETRY_BACKOFF * attempt.min(10);
                    if Instant::now() + backoff >= deadline {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                }
                let mut current = match connection.take() {
                    Some(c) => c,
                    None => match self.connect().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "writer cannot connect");
                            if !failure.as_ref().is_some_and(Error::may_have_been_written) {
                                failure = Some(e);
                            }
                            continue;
                        }
                    },
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, self.write(&mut current, &batch)).await {
                    Ok(Ok(results)) => {
                        self.reply(batch, results);
                        return Some(current);
                    }
                    Ok(Err(BatchFailure::Refused(error))) => {
                        self.metrics.database_error(&error);
                        if batch.len() == 1 {
                            self.reply(batch, vec![Err(Error::db(error))]);
                            return Some(current);
                        }
                        tracing::warn!(%error, "batch refused; retrying its appends one by one");
                        return self.isolate(current, batch).await;
                    }
                    Ok(Err(BatchFailure::Connection { error, commit_sent })) => {
                        // Safe to write again: appends carry their event ids, and a batch
                        // that did commit comes back as already stored, with its positions.
                        self.metrics.database_error(&error);
                        tracing::warn!(%error, commit_sent, attempt, "writer connection failed; retrying the batch");
                        if !failure.as_ref().is_some_and(Error::may_have_been_written) {
                            failure = Some(Error::Database {
                                source: std::sync::Arc::new(error),
                                may_have_been_written: commit_sent,
                            });
                        }
                    }
                    Err(_elapsed) => {
                        self.metrics.record(Record::Timeout);
                        tracing::warn!(?timeout, "batch timed out; dropping the connection");
                        self.connector
                            .cancel_in_background(current.client.cancel_token());
                        let error = Error::Timeout {
                            after: timeout,
                            may_have_been_written: true,
                        };
                        fail_all(batch, &error);
                        return None;
                    }
                }
            }
            let error = failure.unwrap_or(Error::Timeout {
                after: timeout,
                may_have_been_written: false,
            });
            fail_all(batch, &error);
            None
        }
        .instrument(span)
        .await
    }

    /// Writes each append of a refused batch in its own transaction, so only the one
    /// the server refuses fails. A connection that breaks meanwhile is replaced.
    async fn isolate(
        &self,
        connection: WriterConnection,
        batch: Vec<Pending>,
    ) -> Option<WriterConnection> {
        let mut connection = Some(connection);
        for pending in batch {
            let one = std::slice::from_ref(&pending);
            let mut current = match connection.take() {
                Some(c) if !c.client.is_closed() => c,
                _ => match self.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.reply(vec![pending], vec![Err(e)]);
                        continue;
                    }
                },
            };
            let result =
                match tokio::time::timeout(self.settings.timeout, self.write(&mut current, one))
                    .await
                {
                    Ok(Ok(mut results)) => {
                        connection = Some(current);
                        results.pop().unwrap_or(Err(Error::Closed))
                    }
                    Ok(Err(BatchFailure::Refused(e))) => {
                        self.metrics.database_error(&e);
                        connection = Some(current);
                        Err(Error::db(e))
                    }
                    Ok(Err(BatchFailure::Connection { error, commit_sent })) => {
                        self.metrics.database_error(&error);
                        Err(Error::Database {
                            source: std::sync::Arc::new(error),
                            may_have_been_written: commit_sent,
                        })
                    }
                    Err(_) => {
                        self.metrics.record(Record::Timeout);
                        Err(Error::Timeout {
                            after: self.settings.timeout,
                            may_have_been_written: true,
                        })
                    }
                };
            self.reply(vec![pending], vec![result]);
        }
        connection
    }

    /// Answers each caller; counts outcomes into one record per batch, not per append.
    fn reply(&self, batch: Vec<Pending>, results: Vec<Result<AppendResult>>) {
        let (mut events, mut conditions_failed) = (0u32, 0u32);
        for (pending, result) in batch.into_iter().zip(results) {
            match &result {
                Ok(r) => events += (r.last_position - r.first_position + 1) as u32,
                Err(Error::ConditionFailed { .. }) => conditions_failed += 1,
                Err(_) => {}
            }
            let _ = pending.reply.send(result);
        }
        if events > 0 || conditions_failed > 0 {
            self.metrics.record(Record::Outcomes {
                events,
                conditions_failed,
            });
        }
    }

    async fn connect(&self) -> Result<WriterConnection> {
        let client = self.connector.dedicated().await?;
        let lock = client.prepare(sql::WRITE_LOCK).await.map_err(Error::db)?;
        let append = client.prepare(&self.append_sql).await.map_err(Error::db)?;
        Ok(WriterConnection {
            client,
            lock,
            append,
        })
    }

    /// One transaction for `batch`; per-append results in batch order.
    ///
    /// `BEGIN`, the lock, every round and `COMMIT` are pipelined: all are sent before
    /// the first answer is read, so a batch costs one round trip. Rounds are planned in
    /// memory beforehand and do not depend on each other's answers. If any statement
    /// fails, the server aborts the transaction, the statements after it fail, and
    /// `COMMIT` answers `ROLLBACK`: nothing of the batch is written.
    async fn write(
        &self,
        connection: &mut WriterConnection,
        batch: &[Pending],
    ) -> std::result::Result<Vec<Result<AppendResult>>, BatchFailure> {
        let built = Instant::now();
        let rounds = plan_rounds(batch);
        let params: Vec<AppendParams> = rounds
            .iter()
            .map(|round| {
                let mut params = AppendParams::default();
                for &i in round {
                    params.push(&batch[i].events, batch[i].condition.as_ref());
                }
                params
            })
            .collect();
        let param_arrays: Vec<_> = params.iter().map(AppendParams::as_params).collect();
        self.component(Component::QueryBuilding, built.elapsed());

        let started = Instant::now();
        let client = &connection.client;
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(rounds.len() + 3);
        steps.push(Box::pin(async move {
            client.batch_execute("BEGIN").await.map(|()| None)
        }));
        let lock = &connection.lock;
        let key = &self.lock_key;
        steps.push(Box::pin(async move {
            client.execute(lock, &[key]).await.map(|_| None)
        }));
        for array in &param_arrays {
            let append = &connection.append;
            steps.push(Box::pin(async move {
                client.query(append, array).await.map(Some)
            }));
        }
        steps.push(Box::pin(async move {
            client.batch_execute("COMMIT").await.map(|()| None)
        }));
        let mut answers = join_in_order(steps).await;

        let (commit, commit_done) = answers.pop().expect("COMMIT is the last step");
        let mut previous = started;
        let mut round_rows = Vec::with_capacity(rounds.len());
        for (i, (answer, done)) in answers.into_iter().enumerate() {
            let statement = match i {
                0 => metrics::Statement::Begin,
                1 => metrics::Statement::Lock,
                _ => metrics::Statement::Append,
            };
            self.metrics.record(Record::Statement {
                statement,
                elapsed: done.saturating_duration_since(previous),
            });
            previous = done;
            match answer {
                Ok(Some(rows)) => round_rows.push(rows),
                Ok(None) => {}
                // The first failure is the cause; later ones only say "aborted".
                Err(error) if is_refusal(&error, client) => {
                    return Err(BatchFailure::Refused(error))
                }
                Err(error) => {
                    return Err(BatchFailure::Connection {
                        error,
                        commit_sent: false,
                    })
                }
            }
        }
        if let Err(error) = commit {
            return Err(if is_refusal(&error, client) {
                BatchFailure::Refused(error)
            } else {
                BatchFailure::Connection {
                    error,
                    commit_sent: true,
                }
            });
        }
        self.metrics.record(Record::Statement {
            statement: metrics::Statement::Commit,
            elapsed: commit_done.saturating_duration_since(previous),
        });
        self.component(Component::SqlExecution, started.elapsed());

        let processing = Instant::now();
        let mut results: Vec<Option<Result<AppendResult>>> =
            (0..batch.len()).map(|_| None).collect();
        for (round, rows) in rounds.iter().zip(round_rows) {
            for row in rows {
                let index: i32 = row.get(0);
                let status: i16 = row.get(1);
                let Some(&append) = round.get(index as usize) else {
                    continue;
                };
                let pending = &batch[append];
                results[append] = Some(match status {
                    // 0: written now; 3: written before (a retry), same positions.
                    0 | 3 => Ok(AppendResult {
                        first_position: row.get::<_, i64>(2) as u64,
                        last_position: row.get::<_, i64>(3) as u64,
                    }),
                    1 => Err(Error::ConditionFailed {
                        after: pending.condition.as_ref().and_then(|c| c.after),
                    }),
                    _ => Err(Error::DuplicateEventId {
                        id: row.get::<_, Option<Uuid>>(4).unwrap_or_else(|| {
                            pending.events.first().map_or(Uuid::nil(), Event::id)
                        }),
                    }),
                });
            }
        }
        let events = batch.iter().map(|p| p.events.len()).sum::<usize>() as u32;
        self.metrics.record(Record::Batch {
            appends: batch.len() as u32,
            events,
            rounds: rounds.len() as u32,
        });
        self.component(Component::ResultProcessing, processing.elapsed());
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect())
    }

    fn component(&self, component: Component, elapsed: Duration) {
        self.metrics.record(Record::Component {
            method: metrics::Method::Append,
            component,
            elapsed,
        });
    }
}

/// Answers every append of `batch` with the same error.
fn fail_all(batch: Vec<Pending>, error: &Error) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}

/// Whether the server refused a statement on a connection that is still good (so the
/// transaction was rolled back and nothing was written), as opposed to the connection
/// failing. A terminated backend (class 57) or connection error (class 08) reports an
/// SQLSTATE too, but then the outcome of a COMMIT in flight is unknown.
fn is_refusal(error: &tokio_postgres::Error, client: &Client) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let class = &db.code().code()[..2];
    !client.is_closed() && class != "57" && class != "08"
}

/// One pipelined statement of a batch: its rows (for append rounds) or nothing.
type Step<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::result::Result<
                    Option<Vec<tokio_postgres::Row>>,
                    tokio_postgres::Error,
                >,
            > + 'a,
    >,
>;

/// Awaits all `steps`, polling them strictly in order so that their requests reach
/// the connection in order (tokio-postgres sends a request on its first poll), and
/// notes when each finished.
async fn join_in_order<T>(
    steps: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + '_>>>,
) -> Vec<(T, Instant)> {
    let mut steps: Vec<_> = steps.into_iter().map(|s| (s, None)).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (step, answer) in steps.iter_mut() {
            if answer.is_none() {
                match step.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *answer = Some((value, Instant::now())),
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    steps.into_iter().filter_map(|(_, answer)| answer).collect()
}

/// Splits a batch into rounds so that no append is decided in the same statement as
/// an earlier append whose events its condition could match (or that shares an event
/// id with it). Within a statement every condition sees only rows committed or
/// written by earlier rounds, so such an append waits for the next round, where it
/// sees them. Deferring is conservative: it ignores `after` and whether the earlier
/// append will pass, which costs at most a round trip, never correctness.
fn plan_rounds(batch: &[Pending]) -> Vec<Vec<usize>> {
    let mut index = EventIndex::default();
    let mut round_of = Vec::with_capacity(batch.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, pending) in batch.iter().enumerate() {
        let mut round = 0;
        if let Some(condition) = &pending.condition {
            round = index.round_after_conflicts(&condition.fail_if_events_match, &round_of);
        }
        for event in &pending.events {
            if let Some(&earlier) = index.ids.get(&event.id()) {
                round = round.max(round_of[earlier] + 1);
            }
        }
        round_of.push(round);
        index.add(i, &pending.events);
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(i);
    }
    rounds
}

/// The events of a batch's earlier appends, indexed by tag and type for conflict checks.
#[derive(Default)]
struct EventIndex<'a> {
    by_tag: HashMap<&'a str, Vec<(usize, &'a Event)>>,
    by_type: HashMap<&'a str, Vec<(usize, &'a Event)>>,
    all: Vec<(usize, &'a Event)>,
    ids: HashMap<Uuid, usize>,
}

impl<'a> EventIndex<'a> {
    fn add(&mut self, append: usize, events: &'a [Event]) {
        for event in events {
            for tag in event.tags() {
                self.by_tag.entry(tag).or_default().push((append, event));
            }
            self.by_type
                .entry(event.event_type())
                .or_default()
                .push((append, event));
            self.all.push((append, event));
            self.ids.insert(event.id(), append);
        }
    }

    /// The first round in which `query` sees every earlier event it matches.
    fn round_after_conflicts(&self, query: &Query, round_of: &[usize]) -> usize {
        let mut round = 0;
        for item in query.items() {
            let candidates: Box<dyn Iterator<Item = &(usize, &Event)>> =
                if let Some(tag) = item.tag_names().first() {
                    Box::new(self.by_tag.get(tag.as_str()).into_iter().flatten())
                } else if !item.type_names().is_empty() {
                    Box::new(
                        item.type_names()
                            .iter()
                            .filter_map(|t| self.by_type.get(t.as_str()))
                            .flatten(),
                    )
                } else {
                    Box::new(self.all.iter())
                };
            for (append, event) in candidates {
                if round_of[*append] >= round && item.matches(event) {
                    round = round_of[*append] + 1;
                }
            }
        }
        round
    }
}
