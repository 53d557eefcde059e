//! The reader actors: serve `Read` on a connection whose statements are prepared
//! once per query shape and kept in a bounded LRU cache.
//!
//! Each reader handles one read at a time (`AtomicResponse`), so its connection and
//! cache need no locking; the store spreads reads over the readers. After warm-up a
//! read builds no SQL text: its shape finds the prepared statement, its values go as
//! bind parameters. Evicting a statement closes it on the server.

use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use lru::LruCache;
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
    pub cache_size: NonZeroUsize,
    pub timeout: Duration,
}

pub(crate) struct Reader {
    connector: Connector,
    settings: Rc<ReaderSettings>,
    connection: Option<ReaderConnection>,
    metrics: MetricsSink,
}

struct ReaderConnection {
    client: Client,
    statements: LruCache<ReadShape, Statement>,
}

impl Reader {
    pub(crate) fn new(
        connector: Connector,
        settings: ReaderSettings,
        metrics: MetricsSink,
    ) -> Self {
        Reader {
            connector,
            settings: Rc::new(settings),
            connection: None,
            metrics,
        }
    }
}

impl Actor for Reader {
    type Context = Context<Self>;
}

impl Handler<Read> for Reader {
    type Result = AtomicResponse<Self, Result<ReadResult>>;

    fn handle(&mut self, read: Read, _: &mut Self::Context) -> Self::Result {
        let validated = read
            .query
            .validate("query", &self.settings.limits)
            .and_then(|()| read.options.validate());
        if let Err(e) = validated {
            self.metrics.record(Record::InvalidInput);
            return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
        }
        let connection = self.connection.take();
        let job = ReadJob {
            connector: self.connector.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
        };
        AtomicResponse::new(Box::pin(job.run(connection, read).into_actor(self).map(
            |(connection, result), act, _| {
                act.connection = connection;
                result
            },
        )))
    }
}

struct ReadJob {
    connector: Connector,
    settings: Rc<ReaderSettings>,
    metrics: MetricsSink,
}

impl ReadJob {
    async fn run(
        self,
        connection: Option<ReaderConnection>,
        read: Read,
    ) -> (Option<ReaderConnection>, Result<ReadResult>) {
        let mut connection = match connection {
            Some(c) if !c.client.is_closed() => c,
            _ => match self.connector.dedicated().await {
                Ok(client) => ReaderConnection {
                    client,
                    statements: LruCache::new(self.settings.cache_size),
                },
                Err(e) => return (None, Err(e)),
            },
        };
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.read(&mut connection, &read)).await {
            Ok(Ok(result)) => (Some(connection), Ok(result)),
            Ok(Err(e)) => {
                let keep = !connection.client.is_closed();
                (keep.then_some(connection), Err(e))
            }
            Err(_) => {
                self.metrics.record(Record::Timeout);
                let cancel = connection.client.cancel_token();
                tokio::spawn(async move {
                    let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
                });
                (
                    None,
                    Err(Error::Timeout {
                        after: timeout,
                        may_have_been_written: false,
                    }),
                )
            }
        }
    }

    async fn read(&self, connection: &mut ReaderConnection, read: &Read) -> Result<ReadResult> {
        let building = Instant::now();
        let shape = ReadShape::of(&read.query, &read.options);
        let statement = match connection.statements.get(&shape) {
            Some(statement) => statement.clone(),
            None => {
                let text = sql::read_statement(&self.settings.schema, &shape);
                let started = Instant::now();
                let statement = connection.client.prepare(&text).await.map_err(|e| {
                    self.metrics.database_error(&e);
                    Error::db(e)
                })?;
                self.statement(metrics::Statement::Prepare, started);
                self.metrics.record(Record::StatementPrepared);
                connection.statements.put(shape, statement.clone());
                statement
            }
        };
        let params = ReadParams::new(&read.query, &read.options);
        self.component(Component::QueryBuilding, building.elapsed());

        let started = Instant::now();
        let rows = connection
            .client
            .query(&statement, &params.as_params())
            .await
            .map_err(|e| {
                self.metrics.database_error(&e);
                Error::db(e)
            })?;
        self.statement(metrics::Statement::Read, started);
        self.component(Component::SqlExecution, started.elapsed());

        let processing = Instant::now();
        let result = decode(&rows, &read.options);
        self.component(Component::ResultProcessing, processing.elapsed());
        result
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
fn decode(rows: &[Row], options: &ReadOptions) -> Result<ReadResult> {
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
        // Matching events after the last one returned were not seen.
        head = events
            .last()
            .map_or(options.after.unwrap_or(0), |e| e.position);
    }
    Ok(ReadResult {
        events,
        head: (head > 0).then_some(head),
    })
}
