//! The public handle: starts the actors, routes calls to them, and stops them.
//!
//! Longer than most files because it is the public API: most of its lines are the
//! doc comments and examples of the entry points.

use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{FutureExt, Stream};
use tracing::Instrument;

use crate::base::connect::Connector;
use crate::base::heads::Heads;
use crate::config::Config;
use crate::decide::{Decisions, Snapshots};
#[cfg(feature = "embedded")]
use crate::embedded::EmbeddedPostgres;
use crate::error::{Error, Result};
use crate::indexing::{self, IndexedKey};
use crate::metrics::ConsumerRegistry;
use crate::metrics::{self, GetSnapshot, MetricsActor, MetricsSink, MetricsSnapshot, Record};
use crate::model::{
    AppendCondition, AppendOptions, AppendResult, Event, MigrateOptions, Query, ReadOptions,
    ReadResult, SequencedEvent,
};
use crate::reader::{Read, Reader, ReaderSettings};
use crate::router::{self, Replica, Replicas, Router, RouterSettings, Server};
use crate::sql::{self, schema, ConsumerStatements, DeclaredKeys, Identifier, KeyStatements};
use crate::subscribe::Tail;
use crate::writer::{
    Append, NotifySettings, Ping, QueueAppend, Shutdown, Stop, Writer, WriterSettings,
};

/// Records an operation's outcome on its span, as OpenTelemetry reads it: status
/// `ERROR` and the error's kind.
fn traced<T>(span: &tracing::Span, result: Result<T>) -> Result<T> {
    if let Err(error) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", error.kind());
    }
    result
}

/// What keeps a throwaway server alive as long as the store that started it.
#[cfg(feature = "embedded")]
type Throwaway = Option<EmbeddedPostgres>;
#[cfg(not(feature = "embedded"))]
type Throwaway = ();

const NO_DATABASE_URL: &str = "no database URL: set DATABASE_URL, or database_url in the \
     configuration file (Config::with_database_url)";

/// The database to connect to: the configured URL, or a throwaway server when one was
/// asked for; never a silent fallback.
async fn database(config: &Config) -> Result<(String, Throwaway)> {
    if let Some(url) = config.database_url() {
        return Ok((url.to_owned(), Throwaway::default()));
    }
    #[cfg(feature = "embedded")]
    if config.throwaway_server() {
        let server = tokio::task::spawn_blocking(EmbeddedPostgres::start)
            .await
            .map_err(|e| Error::Embedded(e.to_string()))??;
        return Ok((server.url(), Some(server)));
    }
    Err(Error::Config(NO_DATABASE_URL.into()))
}

/// A DCB event store on PostgreSQL. Cheap to clone; all clones share the actors,
/// which stop when the last clone is dropped.
///
/// ```no_run
/// # use dcb_store::*;
/// # actix::System::new().block_on(async {
/// let store = EventStore::connect(Config::default().with_database_url("postgres://postgres@127.0.0.1/test")).await?;
/// let q = Query::new([QueryItem::new().tags(["course:c1"])]);
/// let read = store.read(&q, ReadOptions::default()).await?;
/// let event = Event::new("CourseDefined", serde_json::json!({"capacity": 2})).with_tags(["course:c1"]);
/// store.append(vec![event], Some(AppendCondition::new(q, read.head))).await?;
/// # Ok::<(), Error>(()) });
/// ```
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    schema: Identifier,
    connector: Connector,
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
    /// The live subscribers' shared buffer, started with the first subscription.
    tail: OnceLock<Arc<Tail>>,
    consumer_stats: Arc<ConsumerRegistry>,
    consumer_sql: Arc<ConsumerStatements>,
    /// Cached projection states, snapshots and their settings.
    decisions: Decisions,
    /// A throwaway server started for this store, stopped with it.
    _throwaway: Throwaway,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("schema", &self.inner.config.schema())
            .field("readers", &self.inner.readers.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer runs on the connecting thread's arbiter, which outlives the store.
        self.writer.do_send(Stop);
        self.arbiter.stop();
    }
}

impl EventStore {
    /// Connects, creates or migrates the schema, and starts the actors. Must be
    /// called inside a running actix `System`. The writer actor runs on the arbiter of
    /// the calling thread (so that callers on it reach the writer without a thread
    /// hop), which must run as long as the store is used; the readers get a thread of
    /// their own.
    ///
    /// # Errors
    /// [`Error::Config`] at once, starting nothing, when no database URL is configured
    /// (unless a throwaway server was asked for with `Config::with_throwaway_server`,
    /// feature `embedded`) or a setting is invalid; [`Error::Connect`] when the
    /// server cannot be reached; [`Error::Database`] when the schema cannot be created.
    pub async fn connect(config: Config) -> Result<Self> {
        config.validate()?;
        let (url, throwaway) = database(&config).await?;
        let schema = config.schema_identifier()?;
        let connector = Connector::new(&config, &url, config.pool_size()).await?;
        let mut client = connector.dedicated().await?;
        schema::migrate(&mut client, &schema).await?;
        let key_sql = KeyStatements::new(&schema);
        let keys = DeclaredKeys::new(config.indexed_keys(), config.indexed_metadata_keys());
        let backfill = indexing::sync(
            &mut client,
            &key_sql,
            sql::write_lock_key(&schema),
            &keys,
            false,
        )
        .await?;
        drop(client);

        let heads = Heads::new();
        let consumer_stats = Arc::new(ConsumerRegistry::default());
        let replica_list = router::replica_list(config.replica_urls());
        let (metrics_actor, metrics) = MetricsActor::new(
            config.schema(),
            config.metrics_channel_capacity(),
            config.metrics_enabled(),
            consumer_stats.clone(),
            heads.clone(),
            replica_list.clone(),
        );
        // Appends the writer holds at once, queued or in flight.
        let admission = Arc::new(tokio::sync::Semaphore::new(config.writer_mailbox()));
        let reader_arbiter = Arbiter::new();
        let metrics_actor =
            MetricsActor::start_in_arbiter(&reader_arbiter.handle(), |_| metrics_actor);

        let writer = {
            let connector = connector.clone();
            let metrics = metrics.clone();
            let settings = WriterSettings {
                schema: schema.clone(),
                limits: config.limits(),
                batching: config.batching(),
                pipelining: config.pipelining(),
                timeout: config.operation_timeout(),
                notify: config.notify_commits().then(|| NotifySettings {
                    sql: sql::notify_statement(&schema),
                    channel: sql::notify_channel(&schema),
                    listener_key: sql::listener_lock_key(&schema),
                }),
                keys: keys.clone(),
            };
            let mailbox = config.writer_mailbox();
            let heads = heads.clone();
            let admission = admission.clone();
            Writer::start_in_arbiter(&Arbiter::current(), move |ctx| {
                ctx.set_mailbox_capacity(mailbox);
                Writer::new(connector, settings, heads, metrics, admission)
            })
        };
        let start_readers = |connector: &Connector, for_replica: bool| -> Vec<Addr<Reader>> {
            (0..config.readers())
                .map(|_| {
                    let connector = connector.clone();
                    let metrics = metrics.clone();
                    let settings = ReaderSettings {
                        schema: schema.clone(),
                        limits: config.limits(),
                        cache_size: NonZeroUsize::new(config.statement_cache_size()),
                        max_in_flight: config.reader_max_in_flight(),
                        timeout: config.operation_timeout(),
                        for_replica,
                        keys: keys.clone(),
                    };
                    let mailbox = config.reader_mailbox();
                    Reader::start_in_arbiter(&reader_arbiter.handle(), move |ctx| {
                        ctx.set_mailbox_capacity(mailbox);
                        Reader::new(connector, settings, metrics)
                    })
                })
                .collect()
        };
        let readers = start_readers(&connector, false);
        let (replicas, router) = if replica_list.is_empty() {
            (None, None)
        } else {
            let mut probes = Vec::new();
            let mut replicas = Vec::new();
            for (url, (_, stats)) in config.replica_urls().iter().zip(replica_list.iter()) {
                // No connection is made here: a replica that is down at start is only
                // out of rotation.
                let replica = Connector::new(&config, url, 1).await?;
                replicas.push(Replica::new(start_readers(&replica, true), stats.clone()));
                probes.push((replica, stats.clone()));
            }
            let settings = RouterSettings {
                head_sql: sql::head_statement(&schema),
                interval: config.replica_poll_interval(),
                max_lag: config.replica_max_lag(),
            };
            let primary = connector.clone();
            let heads = heads.clone();
            let router = Router::start_in_arbiter(&reader_arbiter.handle(), move |_| {
                Router::new(primary, probes, heads, settings)
            });
            let replicas = Replicas::new(replicas, config.replica_wait(), metrics.clone());
            (Some(Arc::new(replicas)), Some(router))
        };
        let (decisions, saver) = Decisions::new(
            Snapshots {
                connector: connector.clone(),
                sql: Arc::new(sql::SnapshotStatements::new(&schema)),
                metrics: metrics.clone(),
                timeout: config.operation_timeout(),
                presence: Arc::default(),
            },
            config.decision_cache_entries(),
            config.snapshot_after_events(),
            config.decide_retries(),
        );
        reader_arbiter.spawn(saver);
        if backfill {
            reader_arbiter.spawn(indexing::backfill_in_background(connector.clone(), key_sql));
        }
        tracing::info!(
            schema = config.schema(),
            readers = config.readers(),
            "event store started"
        );
        Ok(EventStore {
            inner: Arc::new(Inner {
                config,
                consumer_sql: Arc::new(ConsumerStatements::new(&schema)),
                schema,
                connector,
                writer,
                admission,
                readers,
                next_reader: AtomicUsize::new(0),
                replicas,
                _router: router,
                metrics_actor,
                metrics,
                arbiter: reader_arbiter,
                heads,
                tail: OnceLock::new(),
                consumer_stats,
                decisions,
                _throwaway: throwaway,
            }),
        })
    }

    /// Appends `events` atomically at consecutive positions, unless `condition` fails.
    /// Waits for room when the writer is busy; bounded by `operation_timeout`. See
    /// [`EventStore::append_with`] for per-call options.
    ///
    /// # Errors
    /// [`Error::ConditionFailed`] when an event matching the condition's query exists
    /// after its `after`; [`Error::InvalidInput`] (saying what and where) for input
    /// that can never be stored, before it reaches a batch;
    /// [`Error::DuplicateEventId`] for an id stored with other content;
    /// [`Error::Timeout`], [`Error::Database`] or [`Error::Closed`] otherwise, each
    /// saying whether the append [may have been written](Error::may_have_been_written)
    /// (then appending the same events again, same ids, is safe).
    ///
    /// # Example
    /// ```no_run
    /// # use dcb_store::*;
    /// # async fn decide(store: &EventStore) -> Result<()> {
    /// let course = Query::new([QueryItem::new().tags(["course:c1"])]);
    /// let seen = store.read(&course, ReadOptions::default()).await?;
    /// let event = Event::new("CourseDefined", serde_json::json!({"capacity": 30}))
    ///     .with_tags(["course:c1"]);
    /// match store.append(vec![event], Some(AppendCondition::new(course, seen.head))).await {
    ///     Ok(at) => println!("stored at {}", at.first_position),
    ///     Err(Error::ConditionFailed { .. }) => println!("decided elsewhere first"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult> {
        self.append_with(events, condition, AppendOptions::default())
            .await
    }

    /// [`EventStore::append`] with per-call options: a time limit of its own, or
    /// failing at once with [`Error::Overloaded`] instead of waiting when the writer's
    /// mailbox is full.
    ///
    /// # Errors
    /// As [`EventStore::append`], and [`Error::Overloaded`] with
    /// [`AppendOptions::fail_when_busy`].
    pub async fn append_with(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        options: AppendOptions,
    ) -> Result<AppendResult> {
        let started = Instant::now();
        let limit = options
            .timeout
            .unwrap_or_else(|| self.inner.config.operation_timeout());
        let span = tracing::info_span!(
            "dcb.append",
            db.system = "postgresql",
            db.namespace = self.inner.config.schema(),
            db.operation.name = "append",
            events = events.len(),
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let admission = if options.fail_when_busy {
            match self.inner.admission.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    self.record(metrics::Method::Append, started, false);
                    return Err(Error::Overloaded);
                }
                Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::CLOSED),
            }
        } else {
            // Waits for room in the writer; nothing was sent if the time runs out here.
            let admission = self.inner.admission.clone().acquire_owned();
            let admitted = admission.map(|permit| Ok::<_, ()>(permit.map_err(|_| Error::CLOSED)));
            match self.bounded(admitted, limit, false).await {
                Ok(permit) => permit,
                Err(error) => {
                    self.record(metrics::Method::Append, started, false);
                    return traced(&span, Err(error));
                }
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let append = QueueAppend {
            append: Append::new(events, condition),
            reply,
            // The batch that writes this append links back to this span.
            caller: span.clone(),
            admission,
        };
        let remaining = limit.saturating_sub(started.elapsed());
        let writer = self.inner.writer.clone();
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
        self.record(metrics::Method::Append, started, result.is_ok());
        traced(&span, result)
    }

    /// Checks that the store can write and read: a round trip on the writer's
    /// connection (between batches) and a read through a reader, each within
    /// `operation_timeout`. For health checks.
    ///
    /// # Errors
    /// What the writer or the reader met: [`Error::Connect`], [`Error::Database`],
    /// [`Error::Timeout`] or [`Error::Closed`].
    pub async fn ping(&self) -> Result<()> {
        let limit = self.inner.config.operation_timeout();
        self.bounded(self.inner.writer.send(Ping), limit, false)
            .await?;
        self.read(
            &Query::all(),
            ReadOptions::default().limit(0).timeout(limit),
        )
        .await?;
        Ok(())
    }

    /// Stops taking appends, writes every append already queued, and answers each
    /// caller; appends sent afterwards fail with [`Error::Closed`]. Reads keep working
    /// until the last handle is dropped.
    pub async fn shutdown(&self) {
        let _ = self.inner.writer.send(Shutdown).await;
    }

    /// Reads the events matching `query`, with `head` for an append condition.
    /// Bounded by `options`' timeout, by default `operation_timeout`; a read whose
    /// connection fails is read again on a fresh one within that time.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a query beyond the limits or with invalid parts;
    /// [`Error::Timeout`] when the time runs out; [`Error::Database`] when the server
    /// refuses the read for a reason retrying cannot fix.
    ///
    /// # Example
    /// ```no_run
    /// # use dcb_store::*;
    /// # async fn latest(store: &EventStore) -> Result<()> {
    /// let query = Query::new([QueryItem::new().types(["CourseDefined"])]);
    /// let newest = store.read(&query, ReadOptions::default().backwards().limit(10)).await?;
    /// for e in &newest.events {
    ///     println!("{} {}", e.position, e.event.event_type());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult> {
        self.read_served(query, options)
            .await
            .map(|(result, _)| result)
    }

    /// [`EventStore::read`], saying which kind of server answered: a reader of pages
    /// that the primary had to serve stays on it (a replica lagged), instead of waiting
    /// for a replica again on every page.
    pub(crate) async fn read_served(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> Result<(ReadResult, Server)> {
        let started = Instant::now();
        let limit = options
            .timeout
            .unwrap_or_else(|| self.inner.config.operation_timeout());
        let span = tracing::info_span!(
            "dcb.read",
            db.system = "postgresql",
            db.namespace = self.inner.config.schema(),
            db.operation.name = "read",
            items = query.items().len(),
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let read = Read::new(query.clone(), options);
        let deadline = started + limit;
        let primary = self.next_reader();
        let served = async {
            match &self.inner.replicas {
                None => router::ask(primary, read, deadline)
                    .await
                    .map(|answer| (answer.result, Server::Primary)),
                Some(replicas) => replicas.read(read, deadline, primary).await,
            }
        };
        let answered = served.map(Ok::<_, ()>).instrument(span.clone());
        let result = self.bounded(answered, limit, false).await;
        self.record(metrics::Method::Read, started, result.is_ok());
        traced(&span, result)
    }

    /// Awaits an actor's answer for at most `limit`; a lost answer means the actor
    /// stopped.
    async fn bounded<T, E>(
        &self,
        answer: impl std::future::Future<Output = std::result::Result<Result<T>, E>>,
        limit: Duration,
        may_have_been_written: bool,
    ) -> Result<T> {
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_lost)) => Err(Error::CLOSED),
            Err(_) => {
                self.inner.metrics.record(Record::Timeout);
                Err(Error::Timeout {
                    after: limit,
                    may_have_been_written,
                })
            }
        }
    }

    /// All events matching `query`, page by page (pages of `read_page_size`), so
    /// memory stays bounded however many events match. Forwards, the stream ends at
    /// the first page that comes back short, i.e. once it has caught up with writers.
    /// With a replica's [`Consistency`](crate::Consistency), each page comes from a
    /// server that has every event the pages before it saw.
    pub fn read_stream(
        &self,
        query: Query,
        options: ReadOptions,
    ) -> Pin<Box<dyn Stream<Item = Result<SequencedEvent>> + Send>> {
        let page_size = self.inner.config.read_page_size() as u64;
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

    /// Creates or migrates the schema of `config` without starting a store, and makes
    /// its indexed keys match `config`'s: declares and backfills new ones before it
    /// returns, and drops the keys `config` does not list with their entries (appends
    /// wait while a dropped key's entries are deleted). Returns the versions applied
    /// (empty when it was up to date).
    pub async fn migrate(config: &Config) -> Result<Vec<i32>> {
        Self::migrate_with(config, MigrateOptions::default()).await
    }

    /// Like [`EventStore::migrate`], run as the schema's owner, then grants
    /// `application_role` what the store needs and nothing more: the use of the schema
    /// and [`APPLICATION_GRANTS`](crate::APPLICATION_GRANTS) (no `UPDATE` or `DELETE`
    /// of events, no DDL).
    pub async fn migrate_with_role(
        config: &Config,
        application_role: Option<&str>,
    ) -> Result<Vec<i32>> {
        let options = MigrateOptions {
            application_role: application_role.map(str::to_owned),
        };
        Self::migrate_with(config, options).await
    }

    /// [`EventStore::migrate`] with `options`: run as the schema's owner, it then
    /// grants the [application role](MigrateOptions::application_role) what the
    /// store needs and nothing more.
    ///
    /// # Errors
    /// As [`EventStore::connect`]; [`Error::Config`] for a role name that is not a
    /// plain identifier.
    pub async fn migrate_with(config: &Config, options: MigrateOptions) -> Result<Vec<i32>> {
        let application_role = options.application_role.as_deref();
        config.validate()?;
        let url = config
            .database_url()
            .ok_or_else(|| Error::Config(NO_DATABASE_URL.into()))?;
        let connector = Connector::new(config, url, 1).await?;
        let mut client = connector.dedicated().await?;
        let schema = config.schema_identifier()?;
        let role = application_role
            .map(|role| Identifier::parse(role, "role"))
            .transpose()?;
        let applied = schema::migrate(&mut client, &schema).await?;
        let key_sql = KeyStatements::new(&schema);
        let write_lock = sql::write_lock_key(&schema);
        let keys = DeclaredKeys::new(config.indexed_keys(), config.indexed_metadata_keys());
        if indexing::sync(&mut client, &key_sql, write_lock, &keys, true).await? {
            indexing::backfill(&mut client, &key_sql).await?;
        }
        if let Some(role) = &role {
            schema::grant_application_role(&client, &schema, role).await?;
        }
        Ok(applied)
    }

    /// The store's declared indexed keys (see [`Config::with_indexed_keys`]) and how
    /// far each one's backfill has come; reads and conditions probe a key's entries
    /// once it [is ready](IndexedKey::is_ready).
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`] when the table cannot be read.
    pub async fn indexed_keys(&self) -> Result<Vec<IndexedKey>> {
        let client = self.inner.connector.pooled().await?;
        indexing::list(&client, &KeyStatements::new(&self.inner.schema)).await
    }

    /// A snapshot of the metrics (latency histograms per method, statement and
    /// component; counters).
    pub async fn metrics(&self) -> Result<MetricsSnapshot> {
        self.inner
            .metrics_actor
            .send(GetSnapshot)
            .await
            .map_err(|_| Error::CLOSED)
    }

    /// The writer's address, for message-driven callers.
    pub fn appender(&self) -> Recipient<Append> {
        self.inner.writer.clone().recipient()
    }

    /// A reader's address, for message-driven callers (each call picks the next
    /// reader in turn).
    pub fn reader(&self) -> Recipient<Read> {
        self.next_reader().clone().recipient()
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn upgrade(inner: &Weak<Inner>) -> Option<EventStore> {
        inner.upgrade().map(|inner| EventStore { inner })
    }

    /// Sends an instrumentation record (for the parts of the store outside this file).
    pub(crate) fn record_internal(&self, record: Record) {
        self.inner.metrics.record(record);
    }

    pub(crate) fn consumers(&self) -> crate::subscribe::Consumers {
        crate::subscribe::Consumers {
            connector: self.inner.connector.clone(),
            sql: self.inner.consumer_sql.clone(),
        }
    }

    pub(crate) fn consumer_stats(&self) -> &ConsumerRegistry {
        &self.inner.consumer_stats
    }

    pub(crate) fn schema_identifier(&self) -> &Identifier {
        &self.inner.schema
    }

    pub(crate) fn decisions(&self) -> &Decisions {
        &self.inner.decisions
    }

    pub(crate) fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// The live subscribers' shared buffer; the first call starts its follower task
    /// and the `LISTEN` connection on the readers' arbiter.
    pub(crate) fn tail(&self) -> Arc<Tail> {
        self.inner
            .tail
            .get_or_init(|| {
                let config = &self.inner.config;
                let (events, bytes) = config.subscription_buffer();
                let tail = Arc::new(Tail::new(events, bytes));
                let arbiter = &self.inner.arbiter;
                arbiter.spawn(crate::subscribe::follow_tail(
                    Arc::downgrade(&self.inner),
                    tail.clone(),
                    self.inner.heads.clone(),
                    config.subscription_poll_interval(),
                    config.read_page_size() as u64,
                ));
                arbiter.spawn(crate::subscribe::listen(
                    self.inner.connector.clone(),
                    sql::notify_channel(&self.inner.schema),
                    sql::listener_lock_key(&self.inner.schema),
                    self.inner.heads.clone(),
                ));
                tail
            })
            .clone()
    }

    fn next_reader(&self) -> &Addr<Reader> {
        let i = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        &self.inner.readers[i % self.inner.readers.len()]
    }

    fn record(&self, method: metrics::Method, started: Instant, ok: bool) {
        self.inner.metrics.record(Record::Method {
            method,
            elapsed: started.elapsed(),
            ok,
        });
    }
}

struct StreamState {
    store: EventStore,
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
