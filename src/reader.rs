//! The reader actors: serve `Read` on a connection whose statements are prepared
//! once per query shape and kept in a bounded LRU cache.
//!
//! A reader pipelines its reads: up to `max_in_flight` run at once on its one
//! connection (tokio-postgres sends each request without waiting for the previous
//! answer), which keeps the server busy without more connections. When that many are
//! in flight, the reader stops reading its mailbox (`ctx.wait`) until one finishes,
//! so callers wait in the bounded mailbox. After warm-up a read builds no SQL text:
//! its shape finds the prepared statement, its values go as bind parameters.
//! Evicting a statement closes it on the server. With the cache turned off
//! (`statement_cache_size = 0`, a benchmark baseline) every read prepares anew.
//!
//! A read that runs out of time is abandoned, not cancelled: PostgreSQL's cancel
//! hits whatever statement the connection runs at that moment, which with
//! pipelining may be another caller's read. The abandoned statement finishes on the
//! server (its answer is dropped), bounded by the connection's `statement_timeout`,
//! which is `operation_timeout`.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use lru::LruCache;
use tokio::sync::{Mutex, Notify};
use tokio_postgres::{Client, Row, Statement};

use crate::connect::Connector;
use crate::error::{Error, Result};
use crate::metrics::{self, Component, MetricsSink, Record};
use crate::model::{Event, JsonText, Limits, Query, ReadOptions, ReadResult, SequencedEvent};
use crate::sql::{self, read_columns as col, ReadParams, ReadShape};

/// Reads the events matching `query`. Send it to
/// [`EventStore::reader`](crate::EventStore::reader) or use
/// [`EventStore::read`](crate::EventStore::read).
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<ReadResult>")]
pub struct Read {
    /// What to read.
    pub query: Query,
    /// Bounds, limit and direction.
    pub options: ReadOptions,
}

pub(crate) struct ReaderSettings {
    pub schema: String,
    pub limits: Limits,
    /// `None`: prepare every read anew (no cache).
    pub cache_size: Option<NonZeroUsize>,
    pub max_in_flight: usize,
    pub timeout: Duration,
}

pub(crate) struct Reader {
    shared: Rc<Shared>,
}

/// What the reader's concurrent reads share; single-threaded (the reader's arbiter).
struct Shared {
    connector: Connector,
    settings: ReaderSettings,
    metrics: MetricsSink,
    /// The current connection; replaced (with an empty cache) when it breaks.
    connection: Mutex<Option<Rc<ReaderConnection>>>,
    in_flight: Cell<usize>,
    finished: Notify,
}

struct ReaderConnection {
    client: Client,
    /// Held across a prepare, so concurrent reads of a new shape prepare it once.
    statements: Mutex<Option<LruCache<ReadShape, Statement>>>,
}

impl Reader {
    pub(crate) fn new(
        connector: Connector,
        settings: ReaderSettings,
        metrics: MetricsSink,
    ) -> Self {
        Reader {
            shared: Rc::new(Shared {
                connector,
                settings,
                metrics,
                connection: Mutex::new(None),
                in_flight: Cell::new(0),
                finished: Notify::new(),
            }),
        }
    }
}

impl Actor for Reader {
    type Context = Context<Self>;
}

/// A read with its caller's deadline, sent by [`EventStore`](crate::EventStore), so
/// the reader stops working for a caller who has stopped waiting.
#[derive(Debug, Message)]
#[rtype(result = "Result<ReadResult>")]
pub(crate) struct ReadBy {
    pub read: Read,
    pub deadline: Instant,
}

impl Handler<Read> for Reader {
    type Result = ResponseFuture<Result<ReadResult>>;

    fn handle(&mut self, read: Read, ctx: &mut Self::Context) -> Self::Result {
        let deadline = Instant::now() + self.shared.settings.timeout;
        self.handle(ReadBy { read, deadline }, ctx)
    }
}

impl Handler<ReadBy> for Reader {
    type Result = ResponseFuture<Result<ReadResult>>;

    fn handle(
        &mut self,
        ReadBy { read, deadline }: ReadBy,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let shared = self.shared.clone();
        let validated = read
            .query
            .validate("query", &shared.settings.limits)
            .and_then(|()| read.options.validate());
        if let Err(e) = validated {
            shared.metrics.record(Record::InvalidInput);
            return Box::pin(async move { Err(e) });
        }
        shared.in_flight.set(shared.in_flight.get() + 1);
        if shared.in_flight.get() >= shared.settings.max_in_flight {
            // Stop taking messages until a read finishes: callers wait in the mailbox.
            let waiting = shared.clone();
            ctx.wait(
                async move {
                    while waiting.in_flight.get() >= waiting.settings.max_in_flight {
                        waiting.finished.notified().await;
                    }
                }
                .into_actor(self),
            );
        }
        Box::pin(async move {
            let result = shared.run(read, deadline).await;
            shared.in_flight.set(shared.in_flight.get() - 1);
            shared.finished.notify_one();
            result
        })
    }
}

impl Shared {
    /// Connects if needed, prepares if needed, and reads, all by `deadline`.
    async fn run(&self, read: Read, deadline: Instant) -> Result<ReadResult> {
        let work = async {
            let connection = self.connection().await?;
            self.read(&connection, &read).await
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => {
                // Abandoned, not cancelled: a cancel could hit another caller's read.
                self.metrics.record(Record::Timeout);
                Err(Error::Timeout {
                    after: self.settings.timeout,
                    may_have_been_written: false,
                })
            }
        }
    }

    /// The live connection, connecting (once, for all waiting reads) when needed.
    async fn connection(&self) -> Result<Rc<ReaderConnection>> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(connection.clone());
        }
        let client = self.connector.dedicated().await?;
        // The server's bound on a statement nobody waits for any more.
        let statement_timeout = format!("{}ms", self.settings.timeout.as_millis());
        client
            .execute(
                "SELECT set_config('statement_timeout', $1, false)",
                &[&statement_timeout],
            )
            .await
            .map_err(|e| self.db_error(e))?;
        let connection = Rc::new(ReaderConnection {
            client,
            statements: Mutex::new(self.settings.cache_size.map(LruCache::new)),
        });
        *current = Some(connection.clone());
        Ok(connection)
    }

    async fn read(&self, connection: &ReaderConnection, read: &Read) -> Result<ReadResult> {
        let building = Instant::now();
        let shape = ReadShape::of(&read.query, &read.options);
        let mut statements = connection.statements.lock().await;
        let statement = match statements.as_mut().and_then(|cache| cache.get(&shape)) {
            Some(statement) => statement.clone(),
            None => {
                let text = sql::read_statement(&self.settings.schema, &shape);
                let started = Instant::now();
                let statement = connection
                    .client
                    .prepare(&text)
                    .await
                    .map_err(|e| self.db_error(e))?;
                self.statement(metrics::Statement::Prepare, started);
                self.metrics.record(Record::StatementPrepared);
                if let Some(cache) = statements.as_mut() {
                    cache.put(shape, statement.clone());
                }
                statement
            }
        };
        drop(statements);
        let params = ReadParams::new(&read.query, &read.options);
        self.component(Component::QueryBuilding, building.elapsed());

        let started = Instant::now();
        let rows = connection
            .client
            .query(&statement, &params.as_params())
            .await
            .map_err(|e| self.db_error(e))?;
        self.statement(metrics::Statement::Read, started);
        self.component(Component::SqlExecution, started.elapsed());

        let processing = Instant::now();
        let result = decode(&rows, &read.options);
        self.component(Component::ResultProcessing, processing.elapsed());
        result
    }

    fn db_error(&self, error: tokio_postgres::Error) -> Error {
        self.metrics.database_error(&error);
        Error::db(error)
    }

    fn statement(&self, statement: metrics::Statement, started: Instant) {
        self.metrics.record(Record::Statement {
            statement,
            elapsed: started.elapsed(),
        });
    }

    fn component(&self, component: Component, elapsed: Duration) {
        self.metrics.record(Record::Component {
            method: metrics::Method::Read,
            component,
            elapsed,
        });
    }
}

/// Turns the rows of a read statement into events and the read's head.
pub(crate) fn decode(rows: &[Row], options: &ReadOptions) -> Result<ReadResult> {
    let store_head = rows.first().map_or(0, |r| r.get::<_, i64>(col::HEAD)) as u64;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(position) = row.get::<_, Option<i64>>(col::POSITION) else {
            continue; // nothing matched: the row only carries the head
        };
        let event = Event::from_stored(
            row.try_get(col::EVENT_ID).map_err(Error::db)?,
            row.try_get(col::EVENT_TYPE).map_err(Error::db)?,
            row.try_get(col::TAGS).map_err(Error::db)?,
            row.try_get::<_, JsonText>(col::DATA).map_err(Error::db)?,
            row.try_get::<_, JsonText>(col::METADATA)
                .map_err(Error::db)?,
            row.try_get(col::OCCURRED_AT).map_err(Error::db)?,
        );
        events.push(SequencedEvent {
            position: position as u64,
            event,
            recorded_at: row.try_get(col::RECORDED_AT).map_err(Error::db)?,
        });
    }
    let mut head = store_head;
    if let Some(before) = options.before {
        head = head.min(before.saturating_sub(1));
    }
    let stopped_at_limit = options.limit.is_some_and(|l| events.len() as u64 >= l);
    if stopped_at_limit && !options.backwards {
        // Matching events after the last one returned were not seen; nor anything
        // beyond the store's head (an `after` past it saw nothing up to `after`).
        head = events
            .last()
            .map_or(options.after.unwrap_or(0), |e| e.position)
            .min(store_head);
    }
    Ok(ReadResult {
        events,
        head: (head > 0).then_some(head),
    })
}
