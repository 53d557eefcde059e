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
//!
//! Files: this one holds the actor, its messages and back-pressure; `statements`
//! the connections and which statement a read runs (the cache and its admission);
//! `rows` decodes what a read returns.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::Notify;

use crate::base::connect::Connector;
use crate::base::failure::Failure;
use crate::base::retry::Backoff;
use crate::error::{Error, Result};
use crate::metrics::{self, Component, MetricsSink, Record};
use crate::model::{validate_query, Limits, Query, ReadOptions, ReadResult};
use crate::sql::{DeclaredKeys, Identifier, ReadParams, ReadShape};

mod rows;
mod statements;

pub(crate) use rows::decode;
use statements::{Connections, Runnable};

/// Reads the events matching `query`. Send it to
/// [`EventStore::reader`](crate::EventStore::reader) or use
/// [`EventStore::read`](crate::EventStore::read). A `Read` sent to a reader is served by
/// that reader's server (the primary's, for `EventStore::reader`), whatever its options'
/// [`Consistency`](crate::Consistency); routing to replicas is `EventStore::read`'s.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<ReadResult>")]
#[non_exhaustive]
pub struct Read {
    /// What to read.
    pub query: Query,
    /// Bounds, limit, direction and time limit.
    pub options: ReadOptions,
}

impl Read {
    /// A read of `query` with `options`.
    pub fn new(query: Query, options: ReadOptions) -> Self {
        Read { query, options }
    }
}

pub(crate) struct ReaderSettings {
    pub schema: Identifier,
    pub limits: Limits,
    /// `None`: prepare every read anew (no cache).
    pub cache_size: Option<NonZeroUsize>,
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// A replica's reader: a read whose connection failed fails at once instead of
    /// being read again until its deadline, and a read that runs out of time is not
    /// counted as a timeout (the routing sends both to the primary).
    pub for_replica: bool,
    /// Declared keys: a predicate on one is probed in `event_keys`.
    pub keys: DeclaredKeys,
}

pub(crate) struct Reader {
    shared: Rc<Shared>,
}

/// What the reader's concurrent reads share; single-threaded (the reader's arbiter).
struct Shared {
    settings: ReaderSettings,
    metrics: MetricsSink,
    connections: Connections,
    in_flight: Cell<usize>,
    finished: Notify,
}

impl Reader {
    pub(crate) fn new(
        connector: Connector,
        settings: ReaderSettings,
        metrics: MetricsSink,
    ) -> Self {
        let connections = Connections::new(connector, &settings, metrics.clone());
        Reader {
            shared: Rc::new(Shared {
                settings,
                metrics,
                connections,
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
#[rtype(result = "Result<Answer>")]
pub(crate) struct ReadBy {
    pub read: Read,
    pub deadline: Instant,
}

/// What a read found, and the head of the server that answered it (at the read's
/// snapshot, whatever the read's bounds and limit): the router checks it against a
/// read's [`Consistency::AtLeast`](crate::Consistency::AtLeast).
#[derive(Debug)]
pub(crate) struct Answer {
    pub result: ReadResult,
    pub server_head: u64,
}

impl Handler<Read> for Reader {
    type Result = ResponseFuture<Result<ReadResult>>;

    fn handle(&mut self, read: Read, ctx: &mut Self::Context) -> Self::Result {
        let limit = read.options.timeout.unwrap_or(self.shared.settings.timeout);
        let deadline = Instant::now() + limit;
        let answer = self.handle(ReadBy { read, deadline }, ctx);
        Box::pin(async move { answer.await.map(|a| a.result) })
    }
}

impl Handler<ReadBy> for Reader {
    type Result = ResponseFuture<Result<Answer>>;

    fn handle(
        &mut self,
        ReadBy { read, deadline }: ReadBy,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let shared = self.shared.clone();
        if let Err(e) = validate_query(&read.query, "query", &shared.settings.limits) {
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

/// Pauses before reading again after a connection failed: short, since a read is
/// cheap to repeat (connecting has its own backoff, shared by all of a reader's reads).
const READ_AGAIN: Backoff = Backoff::linear(Duration::from_millis(20), Duration::from_millis(200));

impl Shared {
    /// Connects if needed, prepares if needed, and reads, all by `deadline`; a read
    /// whose connection fails is read again on a fresh one (a read is always safe to
    /// repeat), with a growing pause, until it succeeds or the deadline passes.
    async fn run(&self, read: Read, deadline: Instant) -> Result<Answer> {
        let attempts = async {
            let mut attempt = 0u32;
            loop {
                match self.read(&read).await {
                    Err(error)
                        if Failure::of_error(&error).connection_failed()
                            && !self.settings.for_replica =>
                    {
                        tracing::debug!(error = %crate::error::Chain(&error), attempt, "read failed with its connection; reading again");
                    }
                    result => return result,
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(READ_AGAIN.after(attempt)).await;
            }
        };
        match tokio::time::timeout_at(deadline.into(), attempts).await {
            Ok(result) => result,
            Err(_) => {
                // Abandoned, not cancelled: a cancel could hit another caller's read.
                if !self.settings.for_replica {
                    self.metrics.record(Record::Timeout);
                }
                Err(Error::Timeout {
                    after: self.settings.timeout,
                    may_have_been_written: false,
                })
            }
        }
    }

    async fn read(&self, read: &Read) -> Result<Answer> {
        let building = Instant::now();
        let keys = &self.settings.keys;
        let shape = ReadShape::of(&read.query, &read.options, keys);
        let params = ReadParams::new(&read.query, &read.options, &shape, keys);
        let runnable = self.connections.runnable(shape).await?;
        self.component(Component::QueryBuilding, building.elapsed());

        let started = Instant::now();
        let rows = match &runnable {
            Runnable::Prepared(client, statement) => {
                client.query(statement, &params.as_params()).await
            }
            Runnable::OneOff(client, text) => {
                client.query_typed(text, &params.as_typed_params()).await
            }
        }
        .map_err(|e| self.db_error(e))?;
        self.statement(metrics::Statement::Read, started);
        self.component(Component::SqlExecution, started.elapsed());

        let processing = Instant::now();
        let answer = decode(&rows, &read.options);
        self.component(Component::ResultProcessing, processing.elapsed());
        answer
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
