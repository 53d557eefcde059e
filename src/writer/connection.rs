//! The writer's connection: connecting with the writer's session, a ping, and the
//! statements prepared on the connection (the lock, the stored statement, and each
//! round shape's append statement and append function, made when first met). Behind
//! a transaction-mode pooler nothing is kept on the session: statements travel
//! unnamed, no session settings, and no append functions (every batch is an explicit
//! transaction).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use tokio_postgres::{Client, Statement};

use super::batch::{BatchFailure, BatchJob};
use super::notify::NotifyStatements;
use crate::error::{Error, Result};
use crate::sql::{self, AppendShape, Prepared};

/// A connection with the writer's statements prepared on it.
pub(super) struct WriterConnection {
    pub(super) client: Client,
    pub(super) lock: Prepared,
    /// The append statement of each round shape met on this connection, prepared
    /// when first met.
    pub(super) appends: RefCell<HashMap<AppendShape, Prepared>>,
    /// Tells retries from duplicates among the appends a batch found stored.
    pub(super) stored: Prepared,
    /// Whether statements are prepared and kept on the session (see
    /// [`Connector::keeps_sessions`](crate::base::connect::Connector::keeps_sessions)).
    named: bool,
    /// The call of each round shape's append function (`sql::append_function`), made
    /// and prepared when first met; a batch of one round is that one call.
    pub(super) calls: RefCell<HashMap<AppendShape, Statement>>,
    /// Whether this session may create its temporary append functions (without the
    /// `TEMPORARY` privilege on the database, every batch is an explicit transaction).
    pub(super) functions: Cell<bool>,
    /// The `NOTIFY` sent before `COMMIT` (none with `notify_commits` off).
    pub(super) notify: Option<NotifyStatements>,
    /// Batches being written on this connection (at most two with pipelining): what a
    /// cancel request, which cancels whatever the server runs for this connection,
    /// could hit.
    in_flight: Cell<usize>,
}

impl WriterConnection {
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Counts a batch as being written here until the guard drops.
    pub(super) fn enter(&self) -> InFlight<'_> {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(&self.in_flight)
    }

    /// Whether any batch is being written here.
    pub(super) fn busy(&self) -> bool {
        self.in_flight.get() > 0
    }
}

/// A batch being written on a connection; see [`WriterConnection::enter`].
pub(super) struct InFlight<'a>(&'a Cell<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl BatchJob {
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
    pub(super) async fn connect_by(&self, deadline: Instant) -> Option<Result<WriterConnection>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, self.connect()).await.ok()
    }

    pub(super) async fn connect(&self) -> Result<WriterConnection> {
        let client = self.connector.dedicated().await?;
        let named = self.connector.keeps_sessions();
        if named {
            // READ COMMITTED and generic plans (see the statements' comments); behind a
            // transaction-mode pooler `BEGIN` pins the isolation of every batch.
            client
                .batch_execute(sql::session::WRITER_ISOLATION)
                .await
                .map_err(Error::db)?;
            // The server's own bound on each statement, for when no cancel request is
            // sent (`BatchJob::timed_out`): half the operation timeout beyond it, so the
            // caller's deadline always passes first and its answer is `Timeout`.
            let timeout = format!("{}ms", self.settings.timeout.as_millis() * 3 / 2);
            client
                .execute_typed(
                    sql::session::SESSION_SETTINGS,
                    &[(&timeout, sql::session::SESSION_SETTINGS_TYPE)],
                )
                .await
                .map_err(Error::db)?;
        }
        let lock = Prepared::new(&client, sql::WRITE_LOCK, &sql::KEY_TYPES, named)
            .await
            .map_err(Error::db)?;
        let stored = sql::stored_statement(&self.settings.schema);
        let stored = Prepared::new(&client, &stored, &sql::EVENT_TYPES, named)
            .await
            .map_err(Error::db)?;
        let notify = match &self.settings.notify {
            Some(notify) => Some(NotifyStatements {
                send: Prepared::new(&client, &notify.sql, &sql::NOTIFY_TYPES, named)
                    .await
                    .map_err(Error::db)?,
                listeners: Prepared::new(&client, sql::LISTENERS, &sql::KEY_TYPES, named)
                    .await
                    .map_err(Error::db)?,
            }),
            None => None,
        };
        Ok(WriterConnection {
            client,
            lock,
            stored,
            appends: RefCell::default(),
            named,
            calls: RefCell::default(),
            functions: Cell::new(named),
            notify,
            in_flight: Cell::new(0),
        })
    }

    /// The prepared call of `shape`'s append function on `connection`, the function
    /// created on first use (before the batch is sent); `None` when this session may
    /// not create temporary functions (then it never asks again).
    pub(super) async fn append_call(
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
                    error = %crate::error::Chain(&error),
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
    pub(super) async fn append_statement(
        &self,
        connection: &WriterConnection,
        shape: AppendShape,
    ) -> std::result::Result<Prepared, BatchFailure> {
        if let Some(statement) = connection.appends.borrow().get(&shape) {
            return Ok(statement.clone());
        }
        let text = sql::append_statement(&self.settings.schema, shape);
        let client = &connection.client;
        let statement = Prepared::new(client, &text, &sql::append_types(), connection.named)
            .await
            .map_err(|error| BatchFailure::of(error, client, false))?;
        connection
            .appends
            .borrow_mut()
            .insert(shape, statement.clone());
        Ok(statement)
    }
}
