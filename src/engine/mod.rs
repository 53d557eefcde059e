//! The engine: the running store's actors and the two operations everything is built
//! on, appending through the writer and reading through the readers (or replicas).
//! [`EventStore`](crate::EventStore) is a public, cheap-to-clone wrapper over it, and
//! the services (decisions, subscriptions) take it as their handle to the store.
//!
//! - `start`: connecting, migrating and starting the actors.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{FutureExt, Stream};
use tracing::Instrument;

use crate::base::connect::Connector;
use crate::base::heads::Heads;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::indexing::{self, IndexedKey};
use crate::metrics::{
    self, ConsumerRegistry, GetSnapshot, MetricsActor, MetricsSink, MetricsSnapshot, Record,
};
use crate::model::{
    AppendCondition, AppendOptions, AppendResult, Event, Query, ReadOptions, ReadResult,
    SequencedEvent,
};
use crate::reader::{Read, Reader};
use crate::router::{self, Replicas, Router, Server};
use crate::sql::{Identifier, KeyStatements};
use crate::writer::{Append, Ping, QueueAppend, Shutdown, Stop, Writer};

mod start;

pub(crate) use start::{migrate, Throwaway};

/// Records an operation's outcome on its span, as OpenTelemetry reads it: status
/// `ERROR` and the error's kind.
fn traced<T>(span: &tracing::Span, result: Result<T>) -> Result<T> {
    if let Err(error) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", error.kind());
    }
    result
}

/// The running store: its actors, the connections they share, and what appends and
/// reads need. Dropped with the last handle (the public ones and the subscriptions'),
/// which stops the writer and the readers' arbiter.
pub(crate) struct Engine {
    config: Config,
    schema: Identifier,
    connector: Connector,
    /// For connections that need a server session of their own (`LISTEN`, leases):
    /// the connector itself, or `direct_url`'s behind a transaction-mode pooler;
    /// `None` there without `direct_url`.
    session: Option<Connector>,
    writer: Addr<Writer>,
    /// Permits for appends the writer holds (`writer_mailbox`), taken before sending.
    admission: Arc<tokio::sync::Semaphore>,
    readers: Vec<Addr<Reader>>,
    next_reader: AtomicUsize,
    /// Read replicas, when configured; the router keeps their figures current.
    replicas: Option<Arc<Replicas>>,
    _router: Option<Addr<Router>>,
    metrics_actor: Addr<MetricsActor>,
    metrics: MetricsSink,
    /// The thread of the readers, the router, the metrics actor and the subscription
    /// tasks. The writer runs on the connecting thread's arbiter instead, beside its
    /// callers: no thread hop between an append and its batch (BENCHMARKS.md).
    arbiter: Arbiter,
    /// The newest committed position this process knows (subscriptions wait on it).
    heads: Heads,
    /// Durable consumers' figures, shared with the metrics actor.
    consumer_stats: Arc<ConsumerRegistry>,
    /// A throwaway server started for this store, stopped with it.
    _throwaway: Throwaway,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The writer runs on the connecting thread's arbiter, which outlives the store.
        self.writer.do_send(Stop);
        self.arbiter.stop();
    }
}

impl Engine {
    /// Appends through the writer: admission (or `Overloaded`), then the queued append
    /// answers on its own channel, all within the time limit.
    pub(crate) async fn append_with(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        options: AppendOptions,
    ) -> Result<AppendResult> {
        let started = Instant::now();
        let limit = options
            .timeout
            .unwrap_or_else(|| self.config.operation_timeout());
        let span = tracing::info_span!(
            "dcb.append",
            db.system = "postgresql",
            db.namespace = self.config.schema(),
            db.operation.name = "append",
            events = events.len(),
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let admission = if options.fail_when_busy {
            match self.admission.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    self.record_method(metrics::Method::Append, started, false);
                    return Err(Error::Overloaded);
                }
                Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::CLOSED),
            }
        } else {
            // Waits for room in the writer; nothing was sent if the time runs out here.
            let admission = self.admission.clone().acquire_owned();
            let admitted = admission.map(|permit| Ok::<_, ()>(permit.map_err(|_| Error::CLOSED)));
            match self.bounded(admitted, limit, false).await {
                Ok(permit) => permit,
                Err(error) => {
                    self.record_method(metrics::Method::Append, started, false);
                    return traced(&span, Err(error));
                }
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let append = QueueAppend {
            append: Append::with_tracking(events, condition, options.tracking),
            reply,
            // The batch that writes this append links back to this span.
            caller: span.clone(),
            admission,
        };
        let remaining = limit.saturating_sub(started.elapsed());
        let writer = self.writer.clone();
        let queued_and_answered = async move {
            // The mailbox has room for every permit; then the append answers on its
            // own channel.
            writer.send(append).await.map_err(|_| ())?;
            answer.await.map_err(|_| ())
        };
        let result = self
            .bounded(
                queued_and_answered.instrument(span.clone()),
                remaining,
                true,
            )
            .await;
        self.record_method(metrics::Method::Append, started, result.is_ok());
        traced(&span, result)
    }

    /// A round trip on the writer's connection and a read, each within
    /// `operation_timeout`.
    pub(crate) async fn ping(&self) -> Result<()> {
        let limit = self.config.operation_timeout();
        self.bounded(self.writer.send(Ping), limit, false).await?;
        self.read(
            &Query::all(),
            ReadOptions::default().limit(0).timeout(limit),
        )
        .await?;
        Ok(())
    }

    /// Lets the writer write what is queued, then stop taking appends.
    pub(crate) async fn shutdown(&self) {
        let _ = self.writer.send(Shutdown).await;
    }

    /// Reads through a reader (or a replica's).
    pub(crate) async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult> {
        self.read_served(query, options)
            .await
            .map(|(result, _)| result)
    }

    /// [`Engine::read`], saying which kind of server answered: a reader of pages that
    /// the primary had to serve stays on it (a replica lagged), instead of waiting for a
    /// replica again on every page.
    pub(crate) async fn read_served(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> Result<(ReadResult, Server)> {
        let started = Instant::now();
        let limit = options
            .timeout
            .unwrap_or_else(|| self.config.operation_timeout());
        let span = tracing::info_span!(
            "dcb.read",
            db.system = "postgresql",
            db.namespace = self.config.schema(),
            db.operation.name = "read",
            items = query.items().len(),
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let read = Read::new(query.clone(), options);
        let deadline = started + limit;
        let primary = self.next_reader();
        let served = async {
            match &self.replicas {
                None => router::ask(primary, read, deadline)
                    .await
                    .map(|answer| (answer.result, Server::Primary)),
                Some(replicas) => replicas.read(read, deadline, primary).await,
            }
        };
        let answered = served.map(Ok::<_, ()>).instrument(span.clone());
        let result = self.bounded(answered, limit, false).await;
        self.record_method(metrics::Method::Read, started, result.is_ok());
        traced(&span, result)
    }

    /// Awaits an actor's answer for at most `limit`; a lost answer means the actor
    /// stopped.
    pub(crate) async fn bounded<T, E>(
        &self,
        answer: impl std::future::Future<Output = std::result::Result<Result<T>, E>>,
        limit: Duration,
        may_have_been_written: bool,
    ) -> Result<T> {
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_lost)) => Err(Error::CLOSED),
            Err(_) => {
                self.metrics.record(Record::Timeout);
                Err(Error::Timeout {
                    after: limit,
                    may_have_been_written,
                })
            }
        }
    }

    /// All events matching `query`, page by page.
    pub(crate) fn read_stream(
        self: &Arc<Self>,
        query: Query,
        options: ReadOptions,
    ) -> Pin<Box<dyn Stream<Item = Result<SequencedEvent>> + Send>> {
        let page_size = self.config.read_page_size() as u64;
        let state = StreamState {
            store: self.clone(),
            query,
            options,
            remaining: options.limit,
            page: std::collections::VecDeque::new(),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            state,
            move |mut state| async move {
                loop {
                    if let Some(event) = state.page.pop_front() {
                        return Some((Ok(event), state));
                    }
                    if state.done {
                        return None;
                    }
                    let want = state.remaining.map_or(page_size, |r| r.min(page_size));
                    let page_options = ReadOptions {
                        limit: Some(want),
                        ..state.options
                    };
                    match state.store.read_served(&state.query, page_options).await {
                        Err(e) => {
                            state.done = true;
                            return Some((Err(e), state));
                        }
                        Ok((result, server)) => state.next_page(result, want, server),
                    }
                }
            },
        ))
    }

    /// The declared indexed keys and their backfill.
    pub(crate) async fn indexed_keys(&self) -> Result<Vec<IndexedKey>> {
        let client = self.connector.pooled().await?;
        indexing::list(&client, &KeyStatements::new(&self.schema)).await
    }

    /// A snapshot of the metrics.
    pub(crate) async fn metrics(&self) -> Result<MetricsSnapshot> {
        self.metrics_actor
            .send(GetSnapshot)
            .await
            .map_err(|_| Error::CLOSED)
    }

    /// The writer's address.
    pub(crate) fn appender(&self) -> Recipient<Append> {
        self.writer.clone().recipient()
    }

    /// The next reader's address, in turn.
    pub(crate) fn reader(&self) -> Recipient<Read> {
        self.next_reader().clone().recipient()
    }

    /// The configuration the store runs with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Sends an instrumentation record (never waits: a full channel drops it).
    pub(crate) fn record(&self, record: Record) {
        self.metrics.record(record);
    }

    /// The newest committed position this process knows.
    pub(crate) fn heads(&self) -> &Heads {
        &self.heads
    }

    /// The per-consumer figures the metrics actor reports.
    pub(crate) fn consumer_stats(&self) -> &Arc<ConsumerRegistry> {
        &self.consumer_stats
    }

    /// The schema, as statement text may hold it.
    pub(crate) fn schema_identifier(&self) -> &Identifier {
        &self.schema
    }

    /// The pool and dedicated connections.
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Connections with a session of their own, for `what`.
    ///
    /// # Errors
    /// [`Error::NeedsSession`] behind a transaction-mode pooler without `direct_url`.
    pub(crate) fn session_connector(&self, what: &'static str) -> Result<&Connector> {
        self.session.as_ref().ok_or(Error::NeedsSession { what })
    }

    /// Where the readers, the router, the metrics actor and the services' tasks run.
    pub(crate) fn arbiter(&self) -> &Arbiter {
        &self.arbiter
    }

    /// The metrics channel, for the services' own records.
    pub(crate) fn metrics_sink(&self) -> &MetricsSink {
        &self.metrics
    }

    fn next_reader(&self) -> &Addr<Reader> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed);
        &self.readers[i % self.readers.len()]
    }

    fn record_method(&self, method: metrics::Method, started: Instant, ok: bool) {
        self.metrics.record(Record::Method {
            method,
            elapsed: started.elapsed(),
            ok,
        });
    }
}

struct StreamState {
    store: Arc<Engine>,
    query: Query,
    options: ReadOptions,
    remaining: Option<u64>,
    page: std::collections::VecDeque<SequencedEvent>,
    done: bool,
}

impl StreamState {
    /// Moves the bounds past `result` so the next page continues where it ended.
    /// Positions become visible in order, so `after` the last one misses nothing.
    fn next_page(&mut self, result: ReadResult, asked: u64, server: Server) {
        let got = result.events.len() as u64;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= got.min(*remaining);
        }
        self.done = got < asked || self.remaining == Some(0);
        self.options.consistency = server.next_read(self.options.consistency, result.head);
        if let Some(last) = result.events.last() {
            if self.options.backwards {
                self.options.before = Some(last.position);
            } else {
                self.options.after = Some(last.position);
            }
        }
        self.page.extend(result.events);
    }
}
