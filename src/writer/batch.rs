//! Writing one batch: one transaction in one round trip (a batch of one round is one
//! call of its append function, which is its own transaction; others are `BEGIN` ...
//! `COMMIT` pipelined), retried on a fresh connection when the connection fails, split
//! append by append when the server refuses it, and bounded as a whole by one
//! deadline.
//!
//! One file for one state machine (send, answer, retry, isolate, time out), since what
//! an error says about an append depends on all of its steps.
//!
//! What an error says about an append is decided here: an append may have been
//! written once its batch's `COMMIT` (or call) has been handed to the connection, because with
//! pipelining the server may run it before any answer comes back. A connection that
//! fails after that leaves the outcome unknown, and every later error of that append
//! says so (`Pending::answer`), until an attempt settles it (the statement's own
//! decision, which recognises an earlier commit as a retry).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};
use tracing::Instrument;
use uuid::Uuid;

use super::{Pending, WriterSettings};
use crate::base::connect::Connector;
use crate::base::failure::Failure;
use crate::base::retry::Backoff;
use crate::error::{Error, Result};
use crate::metrics::{self, Component, MetricsSink, Record};
use crate::model::AppendResult;
use crate::sql::{self, AppendParams, AppendShape, AppendStatus, StoredStatus};

/// Pauses before writing a batch again after its connection failed, all within the
/// batch's deadline.
const WRITE_AGAIN: Backoff = Backoff::linear(Duration::from_millis(100), Duration::from_secs(1));

/// A connection with the writer's statements prepared on it.
pub(super) struct WriterConnection {
    client: Client,
    lock: Statement,
    /// The append statement of each round shape met on this connection, prepared
    /// when first met.
    appends: RefCell<HashMap<AppendShape, Statement>>,
    /// Tells retries from duplicates among the appends a batch found stored.
    stored: Statement,
    /// The call of each round shape's append function (`sql::append_function`), made
    /// and prepared when first met; a batch of one round is that one call.
    calls: RefCell<HashMap<AppendShape, Statement>>,
    /// Whether this session may create its temporary append functions (without the
    /// `TEMPORARY` privilege on the database, every batch is an explicit transaction).
    functions: Cell<bool>,
    /// The `NOTIFY` sent before `COMMIT` (none with `notify_commits` off).
    notify: Option<NotifyStatements>,
}

impl WriterConnection {
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

struct NotifyStatements {
    send: Statement,
    listeners: Statement,
}

/// What one batch write needs, detached from the actor so it can run as a future.
pub(super) struct BatchJob {
    pub connector: Connector,
    pub listeners: std::rc::Rc<Listeners>,
    pub heads: crate::base::heads::Heads,
    pub settings: std::rc::Rc<WriterSettings>,
    pub lock_key: i64,
    pub metrics: MetricsSink,
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
    fn plan(&self, now: Instant) -> (bool, bool) {
        match self.checked.get() {
            Some((at, present)) if now.saturating_duration_since(at) < LISTENERS_CHECK => {
                (false, present)
            }
            _ => (true, true),
        }
    }

    fn checked(&self, at: Instant, present: bool) {
        self.checked.set(Some((at, present)));
    }
}

/// How a batch transaction failed.
enum BatchFailure {
    /// The server refused a statement; the transaction was rolled back, nothing written.
    Refused(tokio_postgres::Error),
    /// The connection failed; `sent` says whether the batch had been handed to it
    /// (then its `COMMIT` may have run: the outcome is unknown).
    Connection {
        error: tokio_postgres::Error,
        sent: bool,
    },
}

impl BatchFailure {
    /// What `error` on `client` means for a batch that had (`sent`) or had not been
    /// handed to the connection.
    fn of(error: tokio_postgres::Error, client: &Client, sent: bool) -> Self {
        if is_refusal(&error, client) {
            BatchFailure::Refused(error)
        } else {
            BatchFailure::Connection { error, sent }
        }
    }
}

impl BatchJob {
    /// Writes `batch` in `rounds`, answers every caller, and returns the connection if
    /// it is still good. Everything, connecting and retries included, ends by one
    /// deadline (`operation_timeout` from now).
    pub(super) async fn run(
        self,
        connection: Option<Rc<WriterConnection>>,
        mut batch: Vec<Pending>,
        rounds: Vec<Vec<usize>>,
    ) -> Option<Rc<WriterConnection>> {
        let events: usize = batch.iter().map(|p| p.events.len()).sum();
        let span = tracing::info_span!(
            "dcb.batch",
            db.system = "postgresql",
            db.namespace = self.settings.schema.as_str(),
            db.operation.name = "batch",
            appends = batch.len(),
            events,
            otel.status_code = tracing::field::Empty,
        );
        // One request can be traced into the batch that wrote it.
        for pending in &batch {
            span.follows_from(pending.caller.id());
        }
        let timeout = self.settings.timeout;
        async move {
            let deadline = Instant::now() + timeout;
            let mut connection = connection.filter(|c| !c.is_closed());
            // The error to report if every attempt fails.
            let mut failure: Option<Error> = None;
            for attempt in 0u32.. {
                if attempt > 0 {
                    let backoff = WRITE_AGAIN.after(attempt);
                    if Instant::now() + backoff >= deadline {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                }
                let current = match connection.take() {
                    Some(c) => c,
                    None => match self.connect_by(deadline).await {
                        Some(Ok(c)) => Rc::new(c),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, attempt, "writer cannot connect");
                            failure = Some(e);
                            continue;
                        }
                        None => break,
                    },
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let written =
                    tokio::time::timeout(remaining, self.write(&current, &batch, &rounds));
                match written.await {
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
                        return self.isolate(current, batch, deadline).await;
                    }
                    Ok(Err(BatchFailure::Connection { error, sent })) => {
                        // Safe to write again: appends carry their event ids, and a batch
                        // that did commit comes back as already stored, with its positions.
                        self.metrics.database_error(&error);
                        tracing::warn!(%error, sent, attempt, "writer connection failed; retrying the batch");
                        failure = Some(connection_failed(error, sent, &mut batch));
                    }
                    Err(_elapsed) => {
                        self.timed_out(&current);
                        fail_all(batch, &self.timeout_error());
                        return None;
                    }
                }
            }
            fail_all(batch, &failure.unwrap_or_else(|| self.timeout_error()));
            None
        }
        .instrument(span)
        .await
    }

    /// Writes each append of a refused batch in its own transaction, so only the one
    /// the server refuses fails; all of them within the batch's `deadline`. A
    /// connection that breaks meanwhile is replaced.
    async fn isolate(
        &self,
        connection: Rc<WriterConnection>,
        batch: Vec<Pending>,
        deadline: Instant,
    ) -> Option<Rc<WriterConnection>> {
        let mut connection = Some(connection);
        for pending in batch {
            let mut one = vec![pending];
            let result = match self.write_alone(&mut connection, &mut one, deadline).await {
                Ok(mut results) => results.pop().unwrap_or(Err(Error::CLOSED)),
                Err(error) => Err(error),
            };
            self.reply(one, vec![result]);
        }
        connection
    }

    /// One append in its own transaction, by `deadline`; `connection` is left `None`
    /// when it broke.
    async fn write_alone(
        &self,
        connection: &mut Option<Rc<WriterConnection>>,
        one: &mut [Pending],
        deadline: Instant,
    ) -> Result<Vec<Result<AppendResult>>> {
        let current = match connection.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match self.connect_by(deadline).await {
                Some(connected) => Rc::new(connected?),
                None => return Err(self.timeout_error()),
            },
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let one_round = [vec![0]];
        match tokio::time::timeout(remaining, self.write(&current, one, &one_round)).await {
            Ok(Ok(results)) => {
                *connection = Some(current);
                Ok(results)
            }
            Ok(Err(BatchFailure::Refused(error))) => {
                self.metrics.database_error(&error);
                *connection = Some(current);
                Err(Error::db(error))
            }
            Ok(Err(BatchFailure::Connection { error, sent })) => {
                self.metrics.database_error(&error);
                Err(connection_failed(error, sent, one))
            }
            Err(_elapsed) => {
                self.timed_out(&current);
                Err(self.timeout_error())
            }
        }
    }

    /// A round trip on the writer's connection (connecting if needed), by the
    /// operation timeout; gives the connection back if it is still good.
    pub(super) async fn ping(
        self,
        connection: Option<Rc<WriterConnection>>,
    ) -> (Option<Rc<WriterConnection>>, Result<()>) {
        let deadline = Instant::now() + self.settings.timeout;
        let connection = match connection.filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match self.connect_by(deadline).await {
                Some(Ok(c)) => Rc::new(c),
                Some(Err(e)) => return (None, Err(e)),
                None => return (None, Err(self.timeout_error())),
            },
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(
            remaining,
            connection.client.simple_query(sql::session::PING),
        )
        .await
        {
            Ok(Ok(_)) => (Some(connection), Ok(())),
            Ok(Err(e)) => (None, Err(Error::db(e))),
            Err(_) => (None, Err(self.timeout_error())),
        }
    }

    /// Connects and prepares, by `deadline`; `None` when the deadline passed first.
    async fn connect_by(&self, deadline: Instant) -> Option<Result<WriterConnection>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, self.connect()).await.ok()
    }

    async fn connect(&self) -> Result<WriterConnection> {
        let client = self.connector.dedicated().await?;
        // Generic plans, READ COMMITTED (see the statement's comment).
        client
            .batch_execute(sql::session::WRITER_SESSION)
            .await
            .map_err(Error::db)?;
        let lock = client.prepare(sql::WRITE_LOCK).await.map_err(Error::db)?;
        let stored = client
            .prepare_typed(
                &sql::stored_statement(&self.settings.schema),
                &sql::EVENT_TYPES,
            )
            .await
            .map_err(Error::db)?;
        let notify = match &self.settings.notify {
            Some(notify) => Some(NotifyStatements {
                send: client.prepare(&notify.sql).await.map_err(Error::db)?,
                listeners: client.prepare(sql::LISTENERS).await.map_err(Error::db)?,
            }),
            None => None,
        };
        Ok(WriterConnection {
            client,
            lock,
            appends: RefCell::default(),
            stored,
            calls: RefCell::default(),
            functions: Cell::new(true),
            notify,
        })
    }

    /// A statement of this connection ran past the deadline: cancel it (so it does not
    /// keep the write lock) and let the connection go.
    fn timed_out(&self, connection: &WriterConnection) {
        self.metrics.record(Record::Timeout);
        tracing::warn!(timeout = ?self.settings.timeout, "batch timed out; dropping the connection");
        self.connector
            .cancel_in_background(connection.client.cancel_token());
    }

    /// The deadline passed; `Pending::answer` adds whether the append may have been
    /// written (its batch was sent).
    fn timeout_error(&self) -> Error {
        Error::Timeout {
            after: self.settings.timeout,
            may_have_been_written: false,
        }
    }

    /// Answers each caller; counts outcomes into one record per batch, not per append;
    /// wakes this process's subscribers with the new head.
    fn reply(&self, batch: Vec<Pending>, results: Vec<Result<AppendResult>>) {
        let (mut events, mut conditions_failed, mut head) = (0u32, 0u32, 0u64);
        for (pending, result) in batch.into_iter().zip(results) {
            match &result {
                Ok(r) => {
                    events += (r.last_position - r.first_position + 1) as u32;
                    head = head.max(r.last_position);
                }
                Err(Error::ConditionFailed { .. }) => conditions_failed += 1,
                Err(_) => {}
            }
            pending.answer(result);
        }
        self.heads.advance(head);
        if events > 0 || conditions_failed > 0 {
            self.metrics.record(Record::Outcomes {
                events,
                conditions_failed,
            });
        }
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
        connection: &WriterConnection,
        batch: &[Pending],
        rounds: &[Vec<usize>],
    ) -> std::result::Result<Vec<Result<AppendResult>>, BatchFailure> {
        let built = Instant::now();
        let params: Vec<AppendParams> = rounds
            .iter()
            .map(|round| {
                let mut params = AppendParams::default();
                for &i in round {
                    params.push(
                        &batch[i].events,
                        batch[i].condition.as_ref(),
                        &self.settings.keys,
                    );
                }
                params
            })
            .collect();
        let param_arrays: Vec<_> = params.iter().map(AppendParams::as_params).collect();
        // One round: one call of its append function, which is the whole transaction.
        let call = match params.as_slice() {
            [round] => self.append_call(connection, round.shape()).await?,
            _ => None,
        };
        let mut statements = Vec::with_capacity(params.len());
        if call.is_none() {
            for round in &params {
                statements.push(self.append_statement(connection, round.shape()).await?);
            }
        }
        let (check, send) = match &self.settings.notify {
            Some(_) => self.listeners.plan(Instant::now()),
            None => (false, false),
        };
        let channel = self
            .settings
            .notify
            .as_ref()
            .filter(|_| send)
            .map(|n| n.channel.as_str());
        let call_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &call {
            Some(_) => param_arrays[0]
                .iter()
                .copied()
                .chain(std::iter::once(&channel as _))
                .collect(),
            None => Vec::new(),
        };
        self.component(Component::QueryBuilding, built.elapsed());

        let started = Instant::now();
        let client = &connection.client;
        // What each step is, for its answer and its metric.
        let mut kinds: Vec<metrics::Statement> = Vec::with_capacity(rounds.len() + 4);
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(rounds.len() + 4);
        // Whether anyone listens is only information: asked on its own, before the
        // batch, so that a failure here never touches the batch.
        if let (true, Some(notify), Some(settings)) =
            (check, &connection.notify, &self.settings.notify)
        {
            let listeners = &notify.listeners;
            let key = &settings.listener_key;
            kinds.push(metrics::Statement::Listeners);
            steps.push(Box::pin(async move {
                client.query(listeners, &[key]).await.map(Some)
            }));
        }
        if let Some(call) = &call {
            // The last step, in place of COMMIT: its answer is the commit's.
            let call_params = &call_params;
            steps.push(Box::pin(async move {
                client.query(call, call_params).await.map(Some)
            }));
        } else {
            // Pinned to READ COMMITTED (see the statement's comment).
            kinds.push(metrics::Statement::Begin);
            steps.push(Box::pin(async move {
                client
                    .batch_execute(sql::session::BEGIN)
                    .await
                    .map(|()| None)
            }));
            let lock = &connection.lock;
            let key = &self.lock_key;
            kinds.push(metrics::Statement::Lock);
            steps.push(Box::pin(async move {
                client.execute(lock, &[key]).await.map(|_| None)
            }));
            for (array, append) in param_arrays.iter().zip(&statements) {
                kinds.push(metrics::Statement::Append);
                steps.push(Box::pin(async move {
                    client.query(append, array).await.map(Some)
                }));
            }
            if let (true, Some(notify), Some(settings)) =
                (send, &connection.notify, &self.settings.notify)
            {
                let channel = &settings.channel;
                let send = &notify.send;
                kinds.push(metrics::Statement::Notify);
                steps.push(Box::pin(async move {
                    client.execute(send, &[channel]).await.map(|_| None)
                }));
            }
            steps.push(Box::pin(async move {
                client
                    .batch_execute(sql::session::COMMIT)
                    .await
                    .map(|()| None)
            }));
        }
        // From the first poll on, requests are on their way and COMMIT may run before
        // any answer is read. A client already closed sends nothing.
        let sent = !client.is_closed();
        for &i in rounds.iter().flatten() {
            batch[i].in_flight.set(sent);
        }
        let mut answers = join_in_order(steps).await;

        let settled = |batch: &[Pending]| batch.iter().for_each(|p| p.in_flight.set(false));
        // A refusal rolled the transaction back: nothing of the batch was written.
        let failed = |error| {
            let failure = BatchFailure::of(error, client, sent);
            if let BatchFailure::Refused(_) = failure {
                settled(batch);
            }
            failure
        };
        let Some((commit, commit_done)) = answers.pop() else {
            unreachable!("the commit (or the call) is always the last step");
        };
        let mut previous = started;
        let mut round_rows = Vec::with_capacity(rounds.len());
        for ((answer, done), statement) in answers.into_iter().zip(kinds) {
            self.metrics.record(Record::Statement {
                statement,
                elapsed: done.saturating_duration_since(previous),
            });
            previous = done;
            if statement == metrics::Statement::Listeners {
                match answer {
                    Ok(rows) => {
                        let present = rows
                            .and_then(|rows| rows.first().map(|r| r.get::<_, bool>(0)))
                            .unwrap_or(true);
                        self.listeners.checked(done, present);
                    }
                    Err(error) => tracing::warn!(%error, "could not ask whether anyone listens"),
                }
                continue;
            }
            match answer {
                Ok(Some(rows)) => round_rows.push(rows),
                Ok(None) => {}
                // The first failure is the cause; later ones only say "aborted".
                Err(error) => return Err(failed(error)),
            }
        }
        match commit {
            Ok(rows) => {
                // The call's rows: its one round's.
                round_rows.extend(rows);
            }
            Err(error) => return Err(failed(error)),
        }
        self.metrics.record(Record::Statement {
            statement: match call {
                Some(_) => metrics::Statement::Append,
                None => metrics::Statement::Commit,
            },
            elapsed: commit_done.saturating_duration_since(previous),
        });
        if call.is_some() && channel.is_some() {
            // Sent inside the call, whose time it shares: counted, with none of its own.
            self.metrics.record(Record::Statement {
                statement: metrics::Statement::Notify,
                elapsed: Duration::ZERO,
            });
        }
        self.component(Component::SqlExecution, started.elapsed());

        let processing = Instant::now();
        // Committed: an append without a row (which the statement never does) was
        // written or not, nobody can say.
        let mut results: Vec<Result<AppendResult>> = (0..batch.len())
            .map(|_| {
                Err(Error::Closed {
                    may_have_been_written: true,
                })
            })
            .collect();
        // Appends with an event id already stored, asked about after the commit.
        let mut stored = Vec::new();
        for (round, rows) in rounds.iter().zip(round_rows) {
            for row in rows {
                let row = sql::AppendRow::decode(&row)
                    .map_err(|error| BatchFailure::Connection { error, sent })?;
                let Some(&append) = round.get(row.index) else {
                    continue;
                };
                let pending = &batch[append];
                results[append] = match row.status {
                    AppendStatus::Written { first } => Ok(AppendResult {
                        first_position: first,
                        last_position: first + pending.events.len() as u64 - 1,
                    }),
                    AppendStatus::ConditionFailed => Err(Error::ConditionFailed {
                        after: pending.condition.as_ref().and_then(|c| c.after),
                    }),
                    AppendStatus::Stored => {
                        if !stored.contains(&append) {
                            stored.push(append);
                        }
                        continue;
                    }
                };
            }
        }
        if !stored.is_empty() {
            // A failure here leaves the batch to be written again, which its own
            // appends answer as retries with their positions.
            let found = self
                .stored(connection, batch, &stored)
                .await
                .map_err(|error| BatchFailure::of(error, client, sent))?;
            for (append, status) in found {
                let pending = &batch[append];
                results[append] = match status {
                    StoredStatus::Replayed { first, last } => Ok(AppendResult {
                        first_position: first,
                        last_position: last,
                    }),
                    StoredStatus::DuplicateId(id) => Err(Error::DuplicateEventId {
                        id: id.unwrap_or_else(|| {
                            pending.events.first().map_or(Uuid::nil(), |e| e.id())
                        }),
                    }),
                };
            }
        }
        settled(batch);
        let events = batch.iter().map(|p| p.events.len()).sum::<usize>() as u32;
        self.metrics.record(Record::Batch {
            appends: batch.len() as u32,
            events,
            rounds: rounds.len() as u32,
        });
        self.component(Component::ResultProcessing, processing.elapsed());
        Ok(results)
    }

    /// What the appends `stored` (indexes into `batch`) found stored are: retries,
    /// with their positions, or duplicates.
    async fn stored(
        &self,
        connection: &WriterConnection,
        batch: &[Pending],
        stored: &[usize],
    ) -> std::result::Result<Vec<(usize, StoredStatus)>, tokio_postgres::Error> {
        let started = Instant::now();
        let mut params = AppendParams::default();
        for &i in stored {
            params.push(&batch[i].events, None, &self.settings.keys);
        }
        let rows = connection
            .client
            .query(&connection.stored, &params.event_params())
            .await?;
        self.metrics.record(Record::Statement {
            statement: metrics::Statement::Stored,
            elapsed: started.elapsed(),
        });
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let row = sql::StoredRow::decode(row)?;
            if let Some(&append) = stored.get(row.index) {
                found.push((append, row.status));
            }
        }
        Ok(found)
    }

    /// The prepared call of `shape`'s append function on `connection`, the function
    /// created on first use (before the batch is sent); `None` when this session may
    /// not create temporary functions (then it never asks again).
    async fn append_call(
        &self,
        connection: &WriterConnection,
        shape: AppendShape,
    ) -> std::result::Result<Option<Statement>, BatchFailure> {
        if !connection.functions.get() {
            return Ok(None);
        }
        if let Some(call) = connection.calls.borrow().get(&shape) {
            return Ok(Some(call.clone()));
        }
        let client = &connection.client;
        let failure = |error| BatchFailure::of(error, client, false);
        let function = sql::append_function(&self.settings.schema, shape);
        if let Err(error) = client.batch_execute(&function).await {
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                tracing::info!(
                    %error,
                    "no temporary functions in this database: each batch is an explicit transaction"
                );
                connection.functions.set(false);
                return Ok(None);
            }
            return Err(failure(error));
        }
        let call = client
            .prepare_typed(&sql::append_call(shape), &sql::append_call_types())
            .await
            .map_err(failure)?;
        connection.calls.borrow_mut().insert(shape, call.clone());
        Ok(Some(call))
    }

    /// The append statement of `shape` on `connection`, prepared on first use (before
    /// the batch's transaction begins, so nothing is in flight yet if it fails).
    async fn append_statement(
        &self,
        connection: &WriterConnection,
        shape: AppendShape,
    ) -> std::result::Result<Statement, BatchFailure> {
        if let Some(statement) = connection.appends.borrow().get(&shape) {
            return Ok(statement.clone());
        }
        let text = sql::append_statement(&self.settings.schema, shape);
        let client = &connection.client;
        let statement = client
            .prepare_typed(&text, &sql::append_types())
            .await
            .map_err(|error| BatchFailure::of(error, client, false))?;
        connection
            .appends
            .borrow_mut()
            .insert(shape, statement.clone());
        Ok(statement)
    }

    fn component(&self, component: Component, elapsed: Duration) {
        self.metrics.record(Record::Component {
            method: metrics::Method::Append,
            component,
            elapsed,
        });
    }
}

/// Records a connection failure on every append of `batch`: when the batch had been
/// sent, each may have been written, and every later error must say so. Returns the
/// error to report if no later attempt settles the outcome.
fn connection_failed(error: tokio_postgres::Error, sent: bool, batch: &mut [Pending]) -> Error {
    let error = Error::Database {
        source: std::sync::Arc::new(error),
        may_have_been_written: sent,
    };
    for pending in batch.iter_mut() {
        pending.in_flight.set(false);
        if sent && pending.unknown_outcome.is_none() {
            pending.unknown_outcome = Some(error.clone());
        }
    }
    error
}

/// Answers every append of `batch` with the same error (each adds whether it may
/// have been written).
fn fail_all(batch: Vec<Pending>, error: &Error) {
    tracing::Span::current().record("otel.status_code", "ERROR");
    for pending in batch {
        pending.answer(Err(error.clone()));
    }
}

/// Whether the server refused a statement on a connection that is still good (so the
/// transaction was rolled back and nothing was written), as opposed to the connection
/// failing. A terminated backend (class 57) or connection error (class 08) reports an
/// SQLSTATE too, but then the outcome of a COMMIT in flight is unknown.
fn is_refusal(error: &tokio_postgres::Error, client: &Client) -> bool {
    Failure::of(error, client.is_closed()).outcome_known()
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
