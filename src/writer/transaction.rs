//! One batch's transaction in one round trip: the lock and the append statement of
//! each round (or the one call of the append function), `NOTIFY` when asked, and
//! `COMMIT`, all pipelined; then the question about appends found stored.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::batch::{BatchFailure, BatchJob};
use super::connection::WriterConnection;
use super::Pending;
use crate::error::{Error, Result};
use crate::metrics::{self, Component, Record};
use crate::model::AppendResult;
use crate::sql::{self, AppendParams, AppendStatus, StoredStatus};

impl BatchJob {
    /// One transaction for `batch`; per-append results in batch order.
    ///
    /// `BEGIN`, the lock, every round and `COMMIT` are pipelined: all are sent before
    /// the first answer is read, so a batch costs one round trip. Rounds are planned in
    /// memory beforehand and do not depend on each other's answers. If any statement
    /// fails, the server aborts the transaction, the statements after it fail, and
    /// `COMMIT` answers `ROLLBACK`: nothing of the batch is written.
    pub(super) async fn write(
        &self,
        connection: &WriterConnection,
        batch: &[Pending],
        rounds: &[Vec<usize>],
    ) -> std::result::Result<Vec<Result<AppendResult>>, BatchFailure> {
        // Counted until this future ends, answered or dropped by its deadline.
        let _flight = connection.enter();
        let built = Instant::now();
        let params: Vec<AppendParams> = rounds
            .iter()
            .map(|round| {
                let mut params = AppendParams::default();
                for &i in round {
                    params.push(
                        &batch[i].events,
                        batch[i].condition.as_ref(),
                        batch[i].tracking.as_ref(),
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
                listeners.query(client, &[key]).await.map(Some)
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
                lock.execute(client, &[key]).await.map(|_| None)
            }));
            for (array, append) in param_arrays.iter().zip(&statements) {
                kinds.push(metrics::Statement::Append);
                steps.push(Box::pin(async move {
                    append.query(client, array).await.map(Some)
                }));
            }
            if let (true, Some(notify), Some(settings)) =
                (send, &connection.notify, &self.settings.notify)
            {
                let channel = &settings.channel;
                let send = &notify.send;
                kinds.push(metrics::Statement::Notify);
                steps.push(Box::pin(async move {
                    send.execute(client, &[channel]).await.map(|_| None)
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
                        // No answer means "yes": notifying is the safe side.
                        let present = rows
                            .and_then(|rows| sql::decode_flag(&rows))
                            .unwrap_or(true);
                        self.listeners.checked(done, present);
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::error::Chain(&error), "could not ask whether anyone listens")
                    }
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
                    // An empty (tracking-only) append: the empty range after the head.
                    AppendStatus::Written { first } => Ok(AppendResult {
                        first_position: first,
                        last_position: (first + pending.events.len() as u64).saturating_sub(1),
                    }),
                    AppendStatus::ConditionFailed => Err(Error::ConditionFailed {
                        after: pending.condition.as_ref().and_then(|c| c.after),
                    }),
                    // Its checkpoint is read after the commit, below.
                    AppendStatus::AlreadyTracked => Err(Error::AlreadyTracked {
                        consumer: pending
                            .tracking
                            .as_ref()
                            .map(|t| t.consumer.clone())
                            .unwrap_or_default(),
                        checkpoint: 0,
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
        // A refusal's checkpoint, read after the commit: at least the tracked position
        // (it was, under the row's lock, and it moves only forward but for a read
        // model's rebuild).
        for (pending, result) in batch.iter().zip(results.iter_mut()) {
            let (Some(tracking), Err(Error::AlreadyTracked { checkpoint, .. })) =
                (&pending.tracking, &mut *result)
            else {
                continue;
            };
            let now = self
                .checkpoint(connection, &tracking.consumer)
                .await
                .map_err(|error| BatchFailure::of(error, client, sent))?;
            *checkpoint = now.max(tracking.position);
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

    /// Consumer `name`'s checkpoint (0 when it has none), read on the writer's
    /// connection after a refusal (the rare path).
    async fn checkpoint(
        &self,
        connection: &WriterConnection,
        name: &str,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let text = sql::checkpoint_statement(&self.settings.schema);
        let row = connection
            .client
            .query_typed_opt(&text, &[(&name, tokio_postgres::types::Type::TEXT)])
            .await?;
        Ok(match row {
            Some(row) => sql::decode_checkpoint(&row)?,
            None => 0,
        })
    }

    /// What the appends `stored` (indexes into `batch`) found stored are: retries,
    /// with their positions, or duplicates.
    pub(super) async fn stored(
        &self,
        connection: &WriterConnection,
        batch: &[Pending],
        stored: &[usize],
    ) -> std::result::Result<Vec<(usize, StoredStatus)>, tokio_postgres::Error> {
        let started = Instant::now();
        let mut params = AppendParams::default();
        for &i in stored {
            params.push(&batch[i].events, None, None, &self.settings.keys);
        }
        let rows = connection
            .stored
            .query(&connection.client, &params.event_params())
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
