//! Durable consumers: the lease that makes one subscriber the holder across all
//! processes, the checkpoint it moves, and the attempt counts and parked events of
//! delivery to an actor.
//!
//! The lease is a session advisory lock held on a connection of the holder's own:
//! when the holder goes away (dropped, crashed, connection lost) the server releases
//! it, and a standby polling `pg_try_advisory_lock` takes over. On taking over, the
//! holder increments the consumer's `generation`; every write it makes is guarded by
//! that generation, so a holder that lost the lease without noticing changes nothing.
//!
//! Longer than most files because the lease is one state machine (take over, guarded
//! writes, keep-alive, release) whose every statement depends on the generation.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use crate::base::connect::Connector;
use crate::error::{Error, Result};
use crate::sql::{self, AttemptRow, ConsumerStatements, ParkedRow, TakenOver};

/// Where a new holder resumes.
pub(crate) struct Resume {
    pub checkpoint: Option<u64>,
}

/// How a delivery attempt is counted.
pub(crate) struct Attempt {
    /// Deliveries of the batch at this position so far, this one included.
    pub attempts: u32,
    /// The error of the previous failed attempt, if it failed (none after a crash).
    pub last_error: Option<String>,
}

pub(crate) struct Lease {
    pub name: String,
    key: i64,
    holder: String,
    connector: Connector,
    sql: Arc<ConsumerStatements>,
    /// Bounds every statement on the lease connection: a connection that stops
    /// answering (a partition) is dropped, and with it the lease.
    timeout: Duration,
    /// Never held across an `await`: a subscription's step may be abandoned at any
    /// await (a `select!`), and nothing else may wait for it.
    state: std::sync::Mutex<Held>,
    /// `scanned_to` of the last batch handed out under the current generation (reset
    /// to the checkpoint on taking over, under the lock): acks may not go beyond it.
    pub delivered: std::sync::atomic::AtomicU64,
    /// Told whenever this subscriber stops holding the consumer (lost, timed out, or
    /// given up for a rebuild), so a subscription waiting for events notices at once.
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct Held {
    connection: Option<Arc<LeaseConnection>>,
    /// The generation this subscriber holds the consumer under, if it does.
    generation: Option<i64>,
    /// Events up to here are delivered one at a time (their batch failed too often).
    isolate_until: Option<u64>,
}

struct LeaseConnection {
    client: Client,
    /// The statements of [`Guarded`], prepared once per connection, in `Guarded::ALL`'s
    /// order.
    guarded: Vec<Statement>,
}

use crate::sql::position_param as position;

impl Lease {
    pub(crate) fn new(
        name: String,
        key: i64,
        connector: Connector,
        sql: Arc<ConsumerStatements>,
        timeout: Duration,
    ) -> Self {
        let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4());
        Lease {
            name,
            key,
            holder,
            connector,
            sql,
            timeout,
            state: std::sync::Mutex::new(Held::default()),
            delivered: std::sync::atomic::AtomicU64::new(0),
            released: tokio::sync::Notify::new(),
        }
    }

    /// The generation this subscriber holds the consumer under, if it does.
    pub(crate) fn generation(&self) -> Option<i64> {
        let held = self.state();
        held.generation.filter(|_| {
            held.connection
                .as_ref()
                .is_some_and(|c| !c.client.is_closed())
        })
    }

    /// Stops holding under `generation` (a guarded write elsewhere matched no row, or
    /// the holder gave the generation up after a rebuild): the next step takes the
    /// consumer over again, or stands by, and resumes from the stored checkpoint.
    /// The session lock stays with the connection.
    pub(crate) fn release(&self, generation: i64) {
        let mut held = self.state();
        if held.generation == Some(generation) {
            held.generation = None;
        }
        drop(held);
        self.released.notify_waiters();
    }

    /// Returns once this subscriber no longer holds the consumer.
    pub(crate) async fn released(&self) {
        loop {
            // Registered before the check, so a release in between is not missed.
            let notified = self.released.notified();
            if !self.held() {
                return;
            }
            // A connection that closes tells no one: look again now and then.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this subscriber holds the consumer (as far as it can tell: its lock's
    /// connection is alive).
    pub(crate) fn held(&self) -> bool {
        self.generation().is_some()
    }

    /// `work` on the lease connection within the lease's time limit; a connection that
    /// does not answer in time is dropped (its session, and lock, end with it).
    async fn bounded<T>(
        &self,
        connection: &Arc<LeaseConnection>,
        work: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(Error::db),
            Err(_) => {
                let mut held = self.state();
                if held
                    .connection
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, connection))
                {
                    held.connection = None;
                    held.generation = None;
                }
                drop(held);
                self.released.notify_waiters();
                Err(self.timed_out())
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            after: self.timeout,
            may_have_been_written: false,
        }
    }

    async fn connection(&self) -> Result<Arc<LeaseConnection>> {
        let current = self
            .state()
            .connection
            .clone()
            .filter(|c| !c.client.is_closed());
        if let Some(connection) = current {
            return Ok(connection);
        }
        let connect = async {
            let client = self.connector.dedicated().await?;
            client
                .batch_execute(crate::sql::session::LEASE_SESSION)
                .await
                .map_err(Error::db)?;
            let mut guarded = Vec::with_capacity(Guarded::ALL.len());
            for which in Guarded::ALL {
                let text = which.sql(&self.sql);
                guarded.push(client.prepare(text).await.map_err(Error::db)?);
            }
            Ok::<_, Error>(LeaseConnection { client, guarded })
        };
        let connection = match tokio::time::timeout(self.timeout, connect).await {
            Ok(connection) => Arc::new(connection?),
            Err(_) => return Err(self.timed_out()),
        };
        let mut held = self.state();
        held.connection = Some(connection.clone());
        held.generation = None;
        Ok(connection)
    }

    /// Waits until this subscriber holds the consumer, trying every `poll`; returns
    /// where to resume (`start` when there is no checkpoint). A connection error is
    /// returned (the caller retries).
    pub(crate) async fn acquire(&self, poll: Duration, start: Option<u64>) -> Result<Resume> {
        self.state().generation = None;
        loop {
            let connection = self.connection().await?;
            let client = &connection.client;
            let locked = sql::decode_locked(
                &self
                    .bounded(
                        &connection,
                        client.query_one(self.sql.try_lock, &[&self.key]),
                    )
                    .await?,
            )?;
            if locked {
                self.bounded(&connection, client.execute(&self.sql.ensure, &[&self.name]))
                    .await?;
                let row = self
                    .bounded(
                        &connection,
                        client.query_one(&self.sql.take_over, &[&self.name, &self.holder]),
                    )
                    .await?;
                let taken = TakenOver::decode(&row)?;
                let (generation, checkpoint) = (taken.generation, taken.checkpoint);
                let mut held = self.state();
                if !held
                    .connection
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, &connection))
                {
                    continue; // the connection was dropped meanwhile: try again
                }
                held.isolate_until = taken.isolate_until;
                held.generation = Some(generation);
                self.delivered.store(
                    checkpoint.or(start).unwrap_or(0),
                    std::sync::atomic::Ordering::Release,
                );
                drop(held);
                tracing::info!(consumer = %self.name, generation, ?checkpoint, "took over the consumer");
                return Ok(Resume { checkpoint });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Runs `which` with the consumer's name and generation as `$1` and `$2`, then
    /// `rest`; its rows, or [`Error::LeaseLost`] when this subscriber does not hold
    /// the consumer (the statement matched no row: another generation holds it).
    async fn guarded(
        &self,
        which: Guarded,
        rest: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let lost = || Error::LeaseLost {
            consumer: self.name.clone(),
        };
        let (connection, generation) = {
            let mut held = self.state();
            let Some(generation) = held.generation else {
                return Err(lost());
            };
            let Some(connection) = held.connection.clone().filter(|c| !c.client.is_closed()) else {
                held.generation = None;
                return Err(lost());
            };
            if let Guarded::Ack(to) = which {
                // Checked under the lock, so an ack cannot race a takeover's reset.
                let delivered = self.delivered.load(std::sync::atomic::Ordering::Acquire);
                if to > delivered {
                    return Err(Error::invalid(format!(
                        "ack of position {to} beyond what was delivered ({delivered})"
                    )));
                }
            }
            (connection, generation)
        };
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&self.name, &generation];
        params.extend_from_slice(rest);
        let statement = &connection.guarded[which.slot()];
        let rows = self
            .bounded(&connection, connection.client.query(statement, &params))
            .await?;
        if rows.is_empty() {
            self.release(generation);
            return Err(lost());
        }
        Ok(rows)
    }

    /// Moves the checkpoint to `to` (never backwards); the stored checkpoint.
    pub(crate) async fn ack(&self, to: u64) -> Result<Option<u64>> {
        let rows = self.guarded(Guarded::Ack(to), &[&position(to)]).await?;
        match rows.first() {
            Some(row) => sql::decode_position(row, 0),
            None => Ok(None),
        }
    }

    /// Counts a delivery of the batch starting at `first`, before it is made.
    pub(crate) async fn attempt(&self, first: u64) -> Result<Attempt> {
        let rows = self.guarded(Guarded::Attempt, &[&position(first)]).await?;
        let row = rows.first().ok_or_else(|| Error::LeaseLost {
            consumer: self.name.clone(),
        })?;
        let AttemptRow {
            attempts,
            last_error,
        } = AttemptRow::decode(row)?;
        Ok(Attempt {
            attempts,
            last_error,
        })
    }

    /// Whether the event at `position` is to be delivered alone.
    pub(crate) fn isolated(&self, position: u64) -> bool {
        self.state()
            .isolate_until
            .is_some_and(|until| position <= until)
    }

    /// Records why the last delivery failed.
    pub(crate) async fn failed(&self, error: &str) -> Result<()> {
        self.guarded(Guarded::Failed, &[&error]).await.map(|_| ())
    }

    /// Delivers events up to `until` one at a time from now on (counts start again).
    pub(crate) async fn isolate(&self, until: u64) -> Result<()> {
        self.guarded(Guarded::Isolate, &[&position(until)]).await?;
        self.state().isolate_until = Some(until);
        Ok(())
    }

    /// Forgets the attempt count (a consumer that stops on a failing event tries it
    /// afresh when started again).
    pub(crate) async fn reset_attempts(&self) -> Result<()> {
        self.guarded(Guarded::Reset, &[]).await.map(|_| ())
    }

    /// Parks the event at `at` with its error and moves the checkpoint past it; the
    /// stored checkpoint.
    pub(crate) async fn park(&self, at: u64, attempts: u32, error: &str) -> Result<()> {
        let attempts = attempts.min(i32::MAX as u32) as i32;
        self.guarded(Guarded::Park, &[&position(at), &attempts, &error])
            .await
            .map(|_| ())
    }
}

/// The statements a holder runs under its generation.
#[derive(Clone, Copy)]
enum Guarded {
    /// Moving the checkpoint to this position.
    Ack(u64),
    Attempt,
    Failed,
    Isolate,
    Park,
    Reset,
}

impl Guarded {
    /// Each statement once, in the order `LeaseConnection::guarded` holds them.
    const ALL: [Guarded; 6] = [
        Guarded::Ack(0),
        Guarded::Attempt,
        Guarded::Failed,
        Guarded::Isolate,
        Guarded::Park,
        Guarded::Reset,
    ];

    fn slot(self) -> usize {
        match self {
            Guarded::Ack(_) => 0,
            Guarded::Attempt => 1,
            Guarded::Failed => 2,
            Guarded::Isolate => 3,
            Guarded::Park => 4,
            Guarded::Reset => 5,
        }
    }

    fn sql(self, sql: &ConsumerStatements) -> &str {
        match self {
            Guarded::Ack(_) => &sql.ack,
            Guarded::Attempt => &sql.attempt,
            Guarded::Failed => &sql.failed,
            Guarded::Isolate => &sql.isolate,
            Guarded::Park => &sql.park,
            Guarded::Reset => &sql.reset,
        }
    }
}

/// A parked event: one a consumer's handler failed `max_attempts` times.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParkedEvent {
    /// The event's position.
    pub position: u64,
    /// How many deliveries failed.
    pub attempts: u32,
    /// The handler's last error (or why delivery did not finish).
    pub error: String,
    /// When it was parked (or last replayed without success).
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

/// Administrative statements on consumers, on a pooled connection.
pub(crate) struct Consumers {
    pub connector: Connector,
    pub sql: Arc<ConsumerStatements>,
    /// Told when a read model of this process commits, so waiting for a checkpoint
    /// here does not wait for its next look.
    pub moved: Arc<tokio::sync::Notify>,
}

/// How often `wait_for_checkpoint` looks at most, and at least.
const CHECKPOINT_AGAIN: crate::base::retry::Backoff =
    crate::base::retry::Backoff::doubling(Duration::from_millis(2), Duration::from_millis(50));

impl Consumers {
    /// Waits until consumer `name`'s checkpoint is at least `position`, for at most
    /// `limit`; the checkpoint then.
    pub(crate) async fn wait_for(&self, name: &str, position: u64, limit: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut looks = 0;
        loop {
            let moved = self.moved.notified();
            let bounded = tokio::time::timeout_at(deadline, self.checkpoint(name));
            let Ok(checkpoint) = bounded.await else { break };
            let checkpoint = checkpoint?.unwrap_or(0);
            if checkpoint >= position {
                return Ok(checkpoint);
            }
            looks += 1;
            let pause = tokio::time::sleep(CHECKPOINT_AGAIN.after(looks));
            tokio::select! {
                () = moved => {}
                () = pause => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Err(Error::Timeout {
            after: limit,
            may_have_been_written: false,
        })
    }

    pub(crate) async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        let client = self.connector.pooled().await?;
        let row = client
            .query_typed_opt(&self.sql.checkpoint, &[(&name, Type::TEXT)])
            .await
            .map_err(Error::db)?;
        match row {
            Some(row) => sql::decode_position(&row, 0),
            None => Ok(None),
        }
    }

    pub(crate) async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        let client = self.connector.pooled().await?;
        let rows = client
            .query_typed(&self.sql.parked, &[(&name, Type::TEXT)])
            .await
            .map_err(Error::db)?;
        rows.iter()
            .map(|row| {
                let row = ParkedRow::decode(row)?;
                Ok(ParkedEvent {
                    position: row.position,
                    attempts: row.attempts,
                    error: row.error,
                    parked_at: row.parked_at,
                })
            })
            .collect()
    }

    /// Removes a parked event; whether there was one.
    pub(crate) async fn unpark(&self, name: &str, at: u64) -> Result<bool> {
        let client = self.connector.pooled().await?;
        let removed = client
            .execute_typed(
                &self.sql.unpark,
                &[(&name, Type::TEXT), (&position(at), Type::INT8)],
            )
            .await
            .map_err(Error::db)?;
        Ok(removed > 0)
    }

    pub(crate) async fn replay_failed(&self, name: &str, at: u64, error: &str) -> Result<()> {
        let client = self.connector.pooled().await?;
        client
            .execute_typed(
                &self.sql.replay_failed,
                &[
                    (&name, Type::TEXT),
                    (&position(at), Type::INT8),
                    (&error, Type::TEXT),
                ],
            )
            .await
            .map_err(Error::db)?;
        Ok(())
    }
}
