//! Read models: a durable consumer whose handler writes its own tables in a
//! transaction on the store's database, in which the store then moves the
//! checkpoint, under the lease's generation, before committing. The tables and the
//! checkpoint therefore move together or not at all, and a holder that lost the lease
//! commits nothing.
//!
//! Retries, isolation and parking are the delivery runner's (`deliver.rs`); this file
//! is the transaction around the handler, and the rebuild.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement, Transaction};

use super::deliver::{Handled, Handler};
use super::{DeliveryError, EventBatch, Lease};
use crate::base::connect::Connector;
use crate::error::{Error, Result};
use crate::sql::{self, ConsumerStatements};

/// A projection of events into tables of your own, applied exactly once per event:
/// see [`EventStore::run_read_model`](crate::EventStore::run_read_model).
///
/// Each batch is applied in a transaction the store opens on its database; the store
/// moves the consumer's checkpoint in the same transaction and commits. An error
/// rolls the batch back; it is applied again (up to `max_attempts`), then one event
/// at a time, and a failing event is parked or stops the read model, exactly as
/// [`EventStore::subscribe_recipient`](crate::EventStore::subscribe_recipient)
/// delivers. `?` works on store and `tokio_postgres` errors.
///
/// ```no_run
/// use dcb_store::{tokio_postgres::Transaction, DeliveryError, EventBatch, ReadModel};
///
/// struct Seats;
///
/// impl ReadModel for Seats {
///     async fn apply(&mut self, batch: &EventBatch, tx: &Transaction<'_>) -> Result<(), DeliveryError> {
///         for e in &batch.events {
///             let course: String = e.event.data::<serde_json::Value>()?["course"]
///                 .as_str().unwrap_or_default().to_owned();
///             tx.execute(
///                 "INSERT INTO course_seats (course, taken) VALUES ($1, 1)
///                  ON CONFLICT (course) DO UPDATE SET taken = course_seats.taken + 1",
///                 &[&course],
///             ).await?;
///         }
///         Ok(())
///     }
///
///     async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), DeliveryError> {
///         tx.execute("DELETE FROM course_seats", &[]).await?;
///         Ok(())
///     }
/// }
/// ```
// The futures need not be `Send`: a read model runs on the arbiter that started it.
#[allow(async_fn_in_trait)]
pub trait ReadModel: 'static {
    /// Applies `batch` (events in position order, each after the last one applied)
    /// in `tx`. Do not commit or roll back: the store does, after moving the
    /// checkpoint to `batch.scanned_to` in the same transaction.
    async fn apply(
        &mut self,
        batch: &EventBatch,
        tx: &Transaction<'_>,
    ) -> std::result::Result<(), DeliveryError>;

    /// Empties what [`apply`](Self::apply) built, for a rebuild
    /// ([`ReadModelHandle::rebuild`]): run in the transaction that also moves the
    /// checkpoint back to the start, so readers see the old tables or the emptied
    /// ones, never a mixture.
    async fn reset(&mut self, tx: &Transaction<'_>) -> std::result::Result<(), DeliveryError>;
}

/// A running read model; see
/// [`EventStore::run_read_model`](crate::EventStore::run_read_model).
#[derive(Debug)]
#[must_use = "dropping the handle stops the read model: keep it, or wait() on it"]
pub struct ReadModelHandle {
    delivery: super::SubscriptionHandle,
    rebuilds: mpsc::Sender<oneshot::Sender<Result<()>>>,
}

impl ReadModelHandle {
    pub(crate) fn new(
        delivery: super::SubscriptionHandle,
        rebuilds: mpsc::Sender<oneshot::Sender<Result<()>>>,
    ) -> Self {
        ReadModelHandle { delivery, rebuilds }
    }

    /// Rebuilds the read model from the start: once this process holds the consumer,
    /// one transaction calls [`ReadModel::reset`], moves the checkpoint back to where
    /// the read model starts (`SubscribeOptions::after`, else 0) and forgets its
    /// parked events; then every event is applied again while appends go on. Returns
    /// when that transaction has committed (the replay then runs in the background:
    /// [`EventStore::wait_for_checkpoint`](crate::EventStore::wait_for_checkpoint)
    /// tells when it has caught up).
    ///
    /// # Errors
    /// The reset's error (nothing changed then), [`Error::LeaseLost`] when another
    /// process took the consumer over meanwhile, [`Error::Closed`] when the read model
    /// has stopped.
    pub async fn rebuild(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.rebuilds.send(reply).await.map_err(|_| Error::CLOSED)?;
        done.await.unwrap_or(Err(Error::CLOSED))
    }

    /// Stops after the batch in flight (if any) and gives the consumer up.
    pub async fn stop(self) {
        self.delivery.stop().await;
    }

    /// Waits until the read model ends (see [`SubscriptionHandle::wait`](super::SubscriptionHandle::wait)).
    pub async fn wait(self) -> Result<()> {
        self.delivery.wait().await
    }

    /// Whether the read model has ended.
    pub fn is_finished(&self) -> bool {
        self.delivery.is_finished()
    }
}

/// Runs a [`ReadModel`] as a delivery [`Handler`]: each chunk in a transaction of its
/// own on a connection of the runner's own.
pub(crate) struct InTransaction<M> {
    pub model: M,
    pub name: String,
    pub connector: Connector,
    pub sql: Arc<ConsumerStatements>,
    /// Where a rebuild starts again.
    pub start: u64,
    /// Told after each commit, for `wait_for_checkpoint` in this process.
    pub moved: Arc<Notify>,
    pub rebuilds: mpsc::Receiver<oneshot::Sender<Result<()>>>,
    pub rebuild: Option<oneshot::Sender<Result<()>>>,
    pub connection: Option<Connection>,
    /// The last commit failed without an answer: the next transaction first asks how
    /// far the checkpoint is.
    pub unsure: bool,
}

/// The runner's connection, with the checkpoint's statement prepared on it.
pub(crate) struct Connection {
    client: Client,
    ack: Statement,
}

/// The runner's connection, made again when it is gone.
async fn client<'c>(
    connection: &'c mut Option<Connection>,
    connector: &Connector,
    sql: &ConsumerStatements,
) -> Result<&'c mut Connection> {
    if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
        let client = connector.dedicated().await?;
        let ack = client
            .prepare(&sql.commit_checkpoint)
            .await
            .map_err(Error::db)?;
        *connection = Some(Connection { client, ack });
    }
    connection.as_mut().ok_or(Error::CLOSED)
}

impl<M: ReadModel> InTransaction<M> {
    /// `chunk` applied in one transaction with the checkpoint; the stored checkpoint.
    async fn apply(
        &mut self,
        mut chunk: EventBatch,
        generation: i64,
    ) -> std::result::Result<u64, Failure> {
        let name = self.name.clone();
        let sql = self.sql.clone();
        let to = sql::position_param(chunk.scanned_to);
        let unsure = std::mem::take(&mut self.unsure);
        let Connection { client, ack } =
            client(&mut self.connection, &self.connector, &sql).await?;
        let tx = client.transaction().await.map_err(Error::db)?;
        if unsure {
            // The last commit's answer was lost: it may have applied some of these
            // (the subscription gives nothing at or below the stored checkpoint
            // otherwise, so only then is it asked).
            let Some(row) = tx
                .query_typed_opt(
                    &sql.held_checkpoint,
                    &[(&name, Type::TEXT), (&generation, Type::INT8)],
                )
                .await
                .map_err(Error::db)?
            else {
                return Err(Failure::Lost);
            };
            let applied = sql::decode_position(&row, 0)?.unwrap_or(0);
            chunk.events.retain(|e| e.position > applied);
        }
        if !chunk.events.is_empty() {
            self.model
                .apply(&chunk, &tx)
                .await
                .map_err(Failure::Refused)?;
        }
        // The checkpoint and COMMIT in one round trip: COMMIT is sent behind the
        // checkpoint's statement, which fails (aborting the transaction, so COMMIT
        // rolls back) when this generation no longer holds the consumer.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&name, &generation, &to];
        let moved = tx.query_one(&*ack, &params);
        let commit = tx.batch_execute(sql::session::COMMIT);
        let (moved, committed) = futures_util::future::join(moved, commit).await;
        // Committed (or rolled back) by hand: dropping it would send a ROLLBACK
        // outside any transaction (a warning in the server's log).
        std::mem::forget(tx);
        let checkpoint = match moved {
            Ok(row) => sql::decode_position(&row, 0)?.unwrap_or(0),
            Err(error) if error.code() == Some(&sql::LEASE_LOST_STATE) => {
                return Err(Failure::Lost)
            }
            Err(error) => {
                // A server error rolled everything back; a lost connection may have
                // committed it all (COMMIT was sent).
                self.unsure = error.as_db_error().is_none();
                return Err(Failure::Failed(Error::db(error)));
            }
        };
        if let Err(error) = committed {
            self.unsure = true;
            return Err(Failure::Failed(Error::db(error)));
        }
        self.moved.notify_waiters();
        Ok(checkpoint)
    }

    /// The rebuild's one transaction: the model's reset, the checkpoint back to the
    /// start, the parked events forgotten.
    async fn reset(&mut self, generation: i64) -> std::result::Result<(), Failure> {
        let name = self.name.clone();
        let sql = self.sql.clone();
        let start = sql::position_param(self.start);
        let Connection { client, .. } = client(&mut self.connection, &self.connector, &sql).await?;
        let tx = client.transaction().await.map_err(Error::db)?;
        let reset = tx
            .query_opt(&sql.rebuild, &[&name, &generation, &start])
            .await
            .map_err(Error::db)?;
        if reset.is_none() {
            return Err(Failure::Lost);
        }
        tx.execute(&sql.unpark_all, &[&name])
            .await
            .map_err(Error::db)?;
        self.model.reset(&tx).await.map_err(Failure::Refused)?;
        tx.commit().await.map_err(Error::db)?;
        self.moved.notify_waiters();
        Ok(())
    }
}

/// Why a transaction did not commit.
enum Failure {
    /// The generation no longer holds the consumer: nothing was committed.
    Lost,
    Refused(DeliveryError),
    Failed(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Failed(error)
    }
}

impl<M: ReadModel> Handler for InTransaction<M> {
    async fn handle(&mut self, chunk: EventBatch, lease: &Lease) -> Handled {
        let lost = || Error::LeaseLost {
            consumer: lease.name.clone(),
        };
        let Some(generation) = lease.generation() else {
            return Handled::Failed(lost());
        };
        match self.apply(chunk, generation).await {
            Ok(checkpoint) => Handled::Committed(checkpoint),
            Err(Failure::Lost) => {
                lease.release(generation);
                Handled::Failed(lost())
            }
            Err(Failure::Refused(error)) => Handled::Refused(error),
            Err(Failure::Failed(error)) => {
                // The transaction's connection may be the broken part.
                self.connection = None;
                Handled::Failed(error)
            }
        }
    }

    async fn wanted(&mut self) {
        if self.rebuild.is_some() {
            return;
        }
        match self.rebuilds.recv().await {
            Some(reply) => self.rebuild = Some(reply),
            // The handle is gone: the delivery's stop ends the runner.
            None => std::future::pending::<()>().await,
        }
    }

    async fn between_batches(&mut self, lease: &Lease) {
        let Some(reply) = self.rebuild.take() else {
            return;
        };
        let Some(generation) = lease.generation() else {
            self.rebuild = Some(reply);
            return;
        };
        let outcome = match self.reset(generation).await {
            Ok(()) => {
                tracing::info!(consumer = %self.name, "read model reset: rebuilding from the start");
                // Taken over again from the stored checkpoint: the start.
                lease.release(generation);
                Ok(())
            }
            Err(Failure::Lost) => {
                lease.release(generation);
                Err(Error::LeaseLost {
                    consumer: self.name.clone(),
                })
            }
            Err(Failure::Refused(error)) => Err(Error::DeliveryFailed {
                consumer: self.name.clone(),
                position: self.start,
                attempts: 1,
                error: format!("reset failed: {}", error.message()),
            }),
            Err(Failure::Failed(error)) => {
                self.connection = None;
                Err(error)
            }
        };
        let _ = reply.send(outcome);
    }
}
