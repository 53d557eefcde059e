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
//!
//! Files: this one holds the attempts (retry on a fresh connection, isolation, the
//! deadline, answering); `transaction` the batch's statements in one round trip;
//! `connection` connecting and preparing; `notify` whether to notify.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::Instrument;

use super::connection::WriterConnection;
use super::notify::Listeners;
use super::{Pending, WriterSettings};
use crate::base::connect::Connector;
use crate::base::failure::Failure;
use crate::base::retry::Backoff;
use crate::error::{Error, Result};
use crate::metrics::{self, Component, MetricsSink, Record};
use crate::model::AppendResult;

/// Pauses before writing a batch again after its connection failed, all within the
/// batch's deadline.
const WRITE_AGAIN: Backoff = Backoff::linear(Duration::from_millis(100), Duration::from_secs(1));

/// What one batch write needs, detached from the actor so it can run as a future.
pub(super) struct BatchJob {
    pub connector: Connector,
    pub listeners: std::rc::Rc<Listeners>,
    pub heads: crate::base::heads::Heads,
    pub settings: std::rc::Rc<WriterSettings>,
    pub lock_key: i64,
    pub metrics: MetricsSink,
}

/// How a batch transaction failed.
pub(super) enum BatchFailure {
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
    pub(super) fn of(error: tokio_postgres::Error, client: &Client, sent: bool) -> Self {
        // Refused on a connection that still works: rolled back, nothing written.
        // Otherwise (class 08 or 57 too) a COMMIT in flight may have run.
        if Failure::of(&error, client.is_closed()).outcome_known() {
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
                            tracing::warn!(error = %crate::error::Chain(&e), attempt, "writer cannot connect");
                            failure = Some(e);
                            continue;
                        }
                        None => break,
                    },
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let written =
                    tokio::time::timeout(remaining, self.write(&current, &batch, &rounds));
                // Bound by `let`, so the write (and its count on the connection) is gone
                // before `timed_out` looks.
                let outcome = written.await;
                match outcome {
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
                        tracing::warn!(error = %crate::error::Chain(&error), "batch refused; retrying its appends one by one");
                        return self.isolate(current, batch, deadline).await;
                    }
                    Ok(Err(BatchFailure::Connection { error, sent })) => {
                        // Safe to write again: appends carry their event ids, and a batch
                        // that did commit comes back as already stored, with its positions.
                        self.metrics.database_error(&error);
                        tracing::warn!(error = %crate::error::Chain(&error), sent, attempt, "writer connection failed; retrying the batch");
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
    pub(super) async fn isolate(
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
    pub(super) async fn write_alone(
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
        let outcome = tokio::time::timeout(remaining, self.write(&current, one, &one_round)).await;
        match outcome {
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

    /// A batch on this connection ran past its deadline: cancel what the server runs
    /// for it (so it does not keep the write lock) and let the connection go. A cancel
    /// request cancels whatever statement the connection runs *then*: while another
    /// batch pipelined behind is still being written, that may be the other batch's,
    /// so none is sent; the server's `statement_timeout` (1.5 × the operation timeout,
    /// set at connect) bounds the timed-out batch's statements instead, and the last
    /// batch to time out on the connection sends the cancel.
    pub(super) fn timed_out(&self, connection: &WriterConnection) {
        self.metrics.record(Record::Timeout);
        if connection.busy() {
            tracing::warn!(timeout = ?self.settings.timeout, "batch timed out; another batch is in flight on its connection, so no cancel is sent");
            return;
        }
        tracing::warn!(timeout = ?self.settings.timeout, "batch timed out; dropping the connection");
        self.connector
            .cancel_in_background(connection.client.cancel_token());
    }

    /// The deadline passed; `Pending::answer` adds whether the append may have been
    /// written (its batch was sent).
    pub(super) fn timeout_error(&self) -> Error {
        Error::Timeout {
            after: self.settings.timeout,
            may_have_been_written: false,
        }
    }

    /// Answers each caller; counts outcomes into one record per batch, not per append;
    /// wakes this process's subscribers with the new head.
    pub(super) fn reply(&self, batch: Vec<Pending>, results: Vec<Result<AppendResult>>) {
        let (mut events, mut conditions_failed, mut head) = (0u32, 0u32, 0u64);
        for (pending, result) in batch.into_iter().zip(results) {
            match &result {
                Ok(r) => {
                    // A tracking-only append is the empty range `first = last + 1`.
                    events += (r.last_position + 1).saturating_sub(r.first_position) as u32;
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

    pub(super) fn component(&self, component: Component, elapsed: Duration) {
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
pub(super) fn connection_failed(
    error: tokio_postgres::Error,
    sent: bool,
    batch: &mut [Pending],
) -> Error {
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
pub(super) fn fail_all(batch: Vec<Pending>, error: &Error) {
    tracing::Span::current().record("otel.status_code", "ERROR");
    for pending in batch {
        pending.answer(Err(error.clone()));
    }
}
