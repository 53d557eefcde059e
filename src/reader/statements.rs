//! A reader's connections and which statement a read runs.
//!
//! Shapes seen often run as statements prepared once on the main connection and kept
//! in its LRU cache. A shape is admitted to the cache at its second sighting (a
//! small "seen once" list remembers first sightings): a stream of one-off shapes then
//! never evicts the hot ones. A shape's first read goes to a second connection as an
//! unnamed statement (`query_typed`: one round trip, nothing left on the server), so
//! parsing and planning it never delays the reads pipelined on the main connection.
//! With the cache turned off (a benchmark baseline) every read prepares anew on the
//! main connection. Behind a transaction-mode pooler every read is unnamed, on the
//! main connection, and the session is left as the pooler gives it. A connection that breaks is replaced on the next read; connecting
//! after a failure waits a growing pause shared by all of the reader's reads.

use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

use super::ReaderSettings;
use crate::base::connect::Connector;
use crate::base::retry::Backoff as RetryBackoff;
use crate::error::{Error, Result};
use crate::metrics::{self, MetricsSink, Record};
use crate::sql::{self, Identifier, ReadShape};

/// First sightings remembered per cached statement.
const SEEN_ONCE_PER_CACHED: usize = 4;

/// What a read runs: a prepared statement, or a shape's text sent unprepared.
pub(super) enum Runnable {
    Prepared(Rc<Client>, Statement),
    OneOff(Rc<Client>, String),
}

pub(super) struct Connections {
    connector: Connector,
    schema: Identifier,
    statement_timeout: String,
    cache_size: Option<NonZeroUsize>,
    metrics: MetricsSink,
    /// The main connection and its statements; replaced (with an empty cache) when
    /// it breaks.
    main: Mutex<Option<Rc<MainConnection>>>,
    /// The connection for shapes' first reads, connected when first needed.
    one_off: Mutex<Option<Rc<Client>>>,
    seen_once: RefCell<LruCache<ReadShape, ()>>,
    /// After a failed connect, no new attempt before this instant (a growing pause,
    /// shared by every read of this reader, so a server that is down sees a few
    /// attempts a second, not one per read).
    reconnect: Cell<Backoff>,
}

#[derive(Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

/// The pauses after failed connects in a row: 50 ms, doubling, at most 1 s.
const RECONNECT: RetryBackoff =
    RetryBackoff::doubling(Duration::from_millis(50), Duration::from_secs(1));

struct MainConnection {
    client: Rc<Client>,
    /// Held across a prepare, so concurrent reads of a new shape prepare it once.
    statements: Mutex<Option<LruCache<ReadShape, Statement>>>,
}

impl Connections {
    pub(super) fn new(
        connector: Connector,
        settings: &ReaderSettings,
        metrics: MetricsSink,
    ) -> Self {
        let seen = settings
            .cache_size
            .map_or(1, |n| n.get().saturating_mul(SEEN_ONCE_PER_CACHED));
        Connections {
            connector,
            schema: settings.schema.clone(),
            statement_timeout: format!("{}ms", settings.timeout.as_millis()),
            cache_size: settings.cache_size,
            metrics,
            main: Mutex::new(None),
            one_off: Mutex::new(None),
            seen_once: RefCell::new(LruCache::new(
                NonZeroUsize::new(seen).unwrap_or(NonZeroUsize::MIN),
            )),
            reconnect: Cell::new(Backoff::default()),
        }
    }

    /// Where and how to run a read of `shape`.
    pub(super) async fn runnable(&self, shape: ReadShape) -> Result<Runnable> {
        let main = self.main().await?;
        if !self.connector.keeps_sessions() {
            let text = sql::read_statement(&self.schema, &shape);
            return Ok(Runnable::OneOff(main.client.clone(), text));
        }
        let mut statements = main.statements.lock().await;
        let Some(cache) = statements.as_mut() else {
            let statement = self.prepare(&main.client, &shape).await?;
            return Ok(Runnable::Prepared(main.client.clone(), statement));
        };
        if let Some(statement) = cache.get(&shape) {
            return Ok(Runnable::Prepared(main.client.clone(), statement.clone()));
        }
        let seen_before = self.seen_once.borrow_mut().pop(&shape).is_some();
        if !seen_before {
            drop(statements);
            let text = sql::read_statement(&self.schema, &shape);
            self.seen_once.borrow_mut().put(shape, ());
            return Ok(Runnable::OneOff(self.one_off().await?, text));
        }
        let statement = self.prepare(&main.client, &shape).await?;
        cache.put(shape, statement.clone());
        Ok(Runnable::Prepared(main.client.clone(), statement))
    }

    async fn prepare(&self, client: &Client, shape: &ReadShape) -> Result<Statement> {
        let text = sql::read_statement(&self.schema, shape);
        let started = Instant::now();
        let statement = client.prepare(&text).await.map_err(|e| self.db_error(e))?;
        self.metrics.record(Record::Statement {
            statement: metrics::Statement::Prepare,
            elapsed: started.elapsed(),
        });
        self.metrics.record(Record::StatementPrepared);
        Ok(statement)
    }

    /// The live main connection, connecting (once, for all waiting reads) when needed.
    async fn main(&self) -> Result<Rc<MainConnection>> {
        let mut current = self.main.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = Rc::new(MainConnection {
            client: self.connect().await?,
            statements: Mutex::new(self.cache_size.map(LruCache::new)),
        });
        *current = Some(connection.clone());
        Ok(connection)
    }

    async fn one_off(&self) -> Result<Rc<Client>> {
        let mut current = self.one_off.lock().await;
        if let Some(client) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = self.connect().await?;
        *current = Some(client.clone());
        Ok(client)
    }

    /// A new configured connection, after the pause that earlier failures call for.
    async fn connect(&self) -> Result<Rc<Client>> {
        if let Some(not_before) = self.reconnect.get().not_before {
            tokio::time::sleep_until(not_before.into()).await;
        }
        match self.connect_now().await {
            Ok(client) => {
                self.reconnect.set(Backoff::default());
                Ok(client)
            }
            Err(error) => {
                let failures = self.reconnect.get().failures + 1;
                self.reconnect.set(Backoff {
                    failures,
                    not_before: Some(Instant::now() + RECONNECT.after(failures)),
                });
                Err(error)
            }
        }
    }

    async fn connect_now(&self) -> Result<Rc<Client>> {
        let client = self.connector.dedicated().await?;
        if self.connector.keeps_sessions() {
            // The statement timeout and generic plans (see the statement's comment).
            client
                .execute_typed(
                    sql::session::SESSION_SETTINGS,
                    &[(&self.statement_timeout, sql::session::SESSION_SETTINGS_TYPE)],
                )
                .await
                .map_err(|e| self.db_error(e))?;
        }
        Ok(Rc::new(client))
    }

    fn db_error(&self, error: tokio_postgres::Error) -> Error {
        self.metrics.database_error(&error);
        Error::db(error)
    }
}
