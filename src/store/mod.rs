//! The public handle, [`EventStore`]: every public method of the store, each a thin
//! call into the engine or a service (the decision methods are in `decide.rs` and the
//! subscription methods in `subscribe.rs`, beside these, to keep files small).
//!
//! Longer than most files because it is the public API: most of its lines are the doc
//! comments and examples of the entry points.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::Stream;

use crate::config::Config;
use crate::decide::Decisions;
use crate::engine::{self, Engine};
use crate::error::Result;
use crate::indexing::IndexedKey;
use crate::metrics::MetricsSnapshot;
use crate::model::{
    AppendCondition, AppendOptions, AppendResult, Event, MigrateOptions, Query, ReadOptions,
    ReadResult, SequencedEvent,
};
use crate::reader::Read;
use crate::subscribe::Subscriptions;
use crate::writer::Append;

mod decide;
mod effects;
mod subscribe;

pub use effects::{ProcessManager, Reaction};

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
    inner: Arc<Parts>,
}

/// What a store is made of: the engine and the services over it.
struct Parts {
    engine: Arc<Engine>,
    decisions: Decisions,
    subscriptions: Subscriptions,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("schema", &self.config().schema())
            .field("readers", &self.config().readers())
            .finish_non_exhaustive()
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
    /// [`Error::Config`](crate::Error::Config) at once, starting nothing, when no database URL is configured
    /// (unless a throwaway server was asked for with `Config::with_throwaway_server`,
    /// feature `embedded`) or a setting is invalid; [`Error::Connect`](crate::Error::Connect) when the
    /// server cannot be reached; [`Error::Database`](crate::Error::Database) when the schema cannot be created.
    pub async fn connect(config: Config) -> Result<Self> {
        let engine = Arc::new(Engine::start(config).await?);
        let decisions = Decisions::start(&engine);
        let subscriptions = Subscriptions::new(&engine);
        Ok(EventStore {
            inner: Arc::new(Parts {
                engine,
                decisions,
                subscriptions,
            }),
        })
    }

    /// Appends `events` atomically at consecutive positions, unless `condition` fails.
    /// Waits for room when the writer is busy; bounded by `operation_timeout`. See
    /// [`EventStore::append_with`] for per-call options.
    ///
    /// # Errors
    /// [`Error::ConditionFailed`](crate::Error::ConditionFailed) when an event matching the condition's query exists
    /// after its `after`; [`Error::InvalidInput`](crate::Error::InvalidInput) (saying what and where) for input
    /// that can never be stored, before it reaches a batch;
    /// [`Error::DuplicateEventId`](crate::Error::DuplicateEventId) for an id stored with other content;
    /// [`Error::Timeout`](crate::Error::Timeout), [`Error::Database`](crate::Error::Database) or [`Error::Closed`](crate::Error::Closed) otherwise, each
    /// saying whether the append [may have been written](crate::Error::may_have_been_written)
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
    // The hot paths hand back the engine's future itself: a wrapping `async fn` adds a
    // state machine per call (measured at 64 clients: ~0.3 µs of CPU per append and
    // ~3 % of appends/s, BENCHMARKS.md, "The reshape").
    pub fn append(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> impl Future<Output = Result<AppendResult>> + '_ {
        self.engine()
            .append_with(events, condition, AppendOptions::default())
    }

    /// [`EventStore::append`] with per-call options: a time limit of its own, or
    /// failing at once with [`Error::Overloaded`](crate::Error::Overloaded) instead of waiting when the writer's
    /// mailbox is full.
    ///
    /// # Errors
    /// As [`EventStore::append`], and [`Error::Overloaded`](crate::Error::Overloaded) with
    /// [`AppendOptions::fail_when_busy`](crate::AppendOptions::fail_when_busy).
    pub fn append_with(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        options: AppendOptions,
    ) -> impl Future<Output = Result<AppendResult>> + '_ {
        self.engine().append_with(events, condition, options)
    }

    /// Checks that the store can write and read: a round trip on the writer's
    /// connection (between batches) and a read through a reader, each within
    /// `operation_timeout`. For health checks.
    ///
    /// # Errors
    /// What the writer or the reader met: [`Error::Connect`](crate::Error::Connect), [`Error::Database`](crate::Error::Database),
    /// [`Error::Timeout`](crate::Error::Timeout) or [`Error::Closed`](crate::Error::Closed).
    pub async fn ping(&self) -> Result<()> {
        self.engine().ping().await
    }

    /// Stops taking appends, writes every append already queued, and answers each
    /// caller; appends sent afterwards fail with [`Error::Closed`](crate::Error::Closed). Reads keep working
    /// until the last handle is dropped.
    pub async fn shutdown(&self) {
        self.engine().shutdown().await
    }

    /// Reads the events matching `query`, with `head` for an append condition.
    /// Bounded by `options`' timeout, by default `operation_timeout`; a read whose
    /// connection fails is read again on a fresh one within that time.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a query beyond the limits or with invalid parts;
    /// [`Error::Timeout`](crate::Error::Timeout) when the time runs out; [`Error::Database`](crate::Error::Database) when the server
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
    pub fn read<'a>(
        &'a self,
        query: &'a Query,
        options: ReadOptions,
    ) -> impl Future<Output = Result<ReadResult>> + 'a {
        self.engine().read(query, options)
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
        self.engine().read_stream(query, options)
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
    /// As [`EventStore::connect`]; [`Error::Config`](crate::Error::Config) for a role name that is not a
    /// plain identifier.
    pub async fn migrate_with(config: &Config, options: MigrateOptions) -> Result<Vec<i32>> {
        engine::migrate(config, options).await
    }

    /// The store's declared indexed keys (see [`Config::with_indexed_keys`](crate::Config::with_indexed_keys)) and how
    /// far each one's backfill has come; reads and conditions probe a key's entries
    /// once it [is ready](IndexedKey::is_ready).
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect) when the table cannot be read.
    pub async fn indexed_keys(&self) -> Result<Vec<IndexedKey>> {
        self.engine().indexed_keys().await
    }

    /// A snapshot of the metrics (latency histograms per method, statement and
    /// component; counters).
    pub async fn metrics(&self) -> Result<MetricsSnapshot> {
        self.engine().metrics().await
    }

    /// The writer's address, for message-driven callers.
    pub fn appender(&self) -> Recipient<Append> {
        self.engine().appender()
    }

    /// A reader's address, for message-driven callers (each call picks the next
    /// reader in turn).
    pub fn reader(&self) -> Recipient<Read> {
        self.engine().reader()
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &Config {
        self.engine().config()
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }
}
