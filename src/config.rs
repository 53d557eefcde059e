//! Configuration: defaults, then `config.toml`, then environment variables, then setters.
//!
//! Longer than most files because every setting has a documented setter.
//!
//! Raw settings are parsed here and checked once in [`Config::validate`]; the rest of
//! the crate reads the checked values.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::base::tls::TlsMode;
use crate::error::{Error, Result};
use crate::model::{Limits, MAX_NAME_BYTES};
use crate::sql::{Identifier, MAX_INDEXED_KEYS, MAX_INDEXED_KEY_BYTES};

/// Settings of an [`EventStore`](crate::EventStore).
///
/// ```
/// use dcb_store::Config;
/// let config = Config::default()
///     .with_database_url("postgres://postgres@127.0.0.1/test")
///     .with_schema("shop_1");
/// assert_eq!(config.schema(), "shop_1");
/// ```
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    database_url: Option<String>,
    tls_mode: TlsMode,
    tls_root_cert: Option<String>,
    schema: String,
    readers: usize,
    pool_size: u32,
    max_batch_events: usize,
    max_batch_bytes: usize,
    batching: bool,
    pipelining: bool,
    writer_mailbox: usize,
    reader_mailbox: usize,
    reader_max_in_flight: usize,
    statement_cache_size: usize,
    operation_timeout_ms: u64,
    connect_timeout_ms: u64,
    max_event_bytes: usize,
    max_tags_per_event: usize,
    max_name_bytes: usize,
    max_query_items: usize,
    max_item_types: usize,
    max_item_tags: usize,
    max_item_data_pairs: usize,
    read_page_size: usize,
    metrics_channel_capacity: usize,
    metrics: bool,
    notify_commits: bool,
    subscription_buffer_events: usize,
    subscription_buffer_bytes: usize,
    subscription_poll_ms: u64,
    decision_cache_entries: usize,
    snapshot_after_events: u64,
    decide_retries: u32,
    replica_urls: Vec<String>,
    replica_max_lag_ms: u64,
    replica_wait_ms: u64,
    replica_poll_ms: u64,
    indexed_keys: Vec<String>,
    indexed_metadata_keys: Vec<String>,
    /// Start a throwaway server when no URL is configured (never from a file).
    #[serde(skip)]
    throwaway_server: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: None,
            tls_mode: TlsMode::Disable,
            tls_root_cert: None,
            schema: "dcb".to_owned(),
            readers: 2,
            pool_size: 4,
            max_batch_events: 2_000,
            max_batch_bytes: 8 << 20,
            batching: true,
            pipelining: true,
            writer_mailbox: 1_024,
            reader_mailbox: 256,
            reader_max_in_flight: 32,
            statement_cache_size: 64,
            operation_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_event_bytes: 1 << 20,
            max_tags_per_event: 256,
            max_name_bytes: 1_024,
            max_query_items: 1_000,
            max_item_types: 100,
            max_item_tags: 100,
            max_item_data_pairs: 100,
            read_page_size: 1_000,
            metrics_channel_capacity: 65_536,
            metrics: true,
            notify_commits: true,
            subscription_buffer_events: 10_000,
            subscription_buffer_bytes: 32 << 20,
            subscription_poll_ms: 1_000,
            decision_cache_entries: 10_000,
            snapshot_after_events: 1_000,
            decide_retries: 16,
            replica_urls: Vec::new(),
            replica_max_lag_ms: 5_000,
            replica_wait_ms: 1_000,
            replica_poll_ms: 100,
            indexed_keys: Vec::new(),
            indexed_metadata_keys: Vec::new(),
            throwaway_server: false,
        }
    }
}

impl Config {
    /// Defaults, overridden by the TOML file at `path` and then by the environment:
    /// `DATABASE_URL` and `DCB_STORE_SCHEMA`.
    ///
    /// # Errors
    /// [`Error::Config`] when the file does not exist, cannot be read or parsed, or
    /// holds an invalid setting.
    #[cfg(feature = "toml")]
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, path)
    }

    /// Like [`Config::load`], but a file that does not exist means the defaults (still
    /// overridden by the environment).
    ///
    /// # Errors
    /// [`Error::Config`] when the file exists but cannot be read or parsed, or holds
    /// an invalid setting.
    #[cfg(feature = "toml")]
    pub fn load_or_default(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut config = Config::default();
                config.apply_env();
                config.validate()?;
                Ok(config)
            }
            Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }

    #[cfg(feature = "toml")]
    fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.apply_env();
        config.validate()?;
        Ok(config)
    }

    /// When no database URL is configured, start a throwaway PostgreSQL (removed when
    /// the store is dropped) instead of failing. For demos and tests only: nothing
    /// written to it survives. Off by default.
    #[cfg(feature = "embedded")]
    #[must_use]
    pub fn with_throwaway_server(mut self) -> Self {
        self.throwaway_server = true;
        self
    }

    #[cfg(feature = "embedded")]
    pub(crate) fn throwaway_server(&self) -> bool {
        self.throwaway_server
    }

    /// Applies `DATABASE_URL` and `DCB_STORE_SCHEMA` when they are set and not empty.
    pub fn apply_env(&mut self) {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
            self.database_url = Some(url);
        }
        if let Some(schema) = std::env::var("DCB_STORE_SCHEMA")
            .ok()
            .filter(|v| !v.is_empty())
        {
            self.schema = schema;
        }
    }

    /// Checks every setting; [`EventStore::connect`](crate::EventStore::connect) calls it.
    pub fn validate(&self) -> Result<()> {
        self.schema_identifier()?;
        let positive = [
            ("readers", self.readers),
            ("pool_size", self.pool_size as usize),
            ("max_batch_events", self.max_batch_events),
            ("max_batch_bytes", self.max_batch_bytes),
            ("writer_mailbox", self.writer_mailbox),
            ("reader_mailbox", self.reader_mailbox),
            ("reader_max_in_flight", self.reader_max_in_flight),
            ("operation_timeout_ms", self.operation_timeout_ms as usize),
            ("connect_timeout_ms", self.connect_timeout_ms as usize),
            ("max_event_bytes", self.max_event_bytes),
            ("max_name_bytes", self.max_name_bytes),
            ("max_query_items", self.max_query_items),
            ("read_page_size", self.read_page_size),
            ("metrics_channel_capacity", self.metrics_channel_capacity),
            (
                "subscription_buffer_events",
                self.subscription_buffer_events,
            ),
            ("subscription_buffer_bytes", self.subscription_buffer_bytes),
            ("subscription_poll_ms", self.subscription_poll_ms as usize),
            ("replica_poll_ms", self.replica_poll_ms as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be greater than 0")));
            }
        }
        if self.max_name_bytes > MAX_NAME_BYTES {
            return Err(Error::Config(format!(
                "max_name_bytes is {}, more than {MAX_NAME_BYTES}: longer types and tags \
                 would not fit in the store's B-tree indexes",
                self.max_name_bytes
            )));
        }
        self.check_indexed_keys()?;
        for url in &self.replica_urls {
            url.parse::<tokio_postgres::Config>().map_err(|e| {
                Error::Config(format!(
                    "replica url {:?} is not valid: {e}",
                    redact_password(url)
                ))
            })?;
        }
        Ok(())
    }

    fn check_indexed_keys(&self) -> Result<()> {
        let count = self.indexed_keys.len() + self.indexed_metadata_keys.len();
        if count > MAX_INDEXED_KEYS {
            return Err(Error::Config(format!(
                "{count} indexed keys listed (data and metadata), more than {MAX_INDEXED_KEYS}"
            )));
        }
        for keys in [&self.indexed_keys, &self.indexed_metadata_keys] {
            for (i, key) in keys.iter().enumerate() {
                if key.is_empty() || key.len() > MAX_INDEXED_KEY_BYTES || key.contains('\0') {
                    return Err(Error::Config(format!(
                        "indexed key {key:?} must be 1 to {MAX_INDEXED_KEY_BYTES} bytes, without NUL"
                    )));
                }
                if keys[..i].contains(key) {
                    return Err(Error::Config(format!(
                        "indexed key {key:?} is listed twice"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Top-level data keys whose string values are indexed: a query item whose data
    /// filter needs `key = "value"` on one of them ([`QueryItem::data_all`], or
    /// [`QueryItem::data_any`] with one pair) is then answered by an ordered index
    /// probe, like a tag, instead of filtering the events its types or range select.
    /// At connect, a listed key the store lacks is declared and backfilled in the
    /// background (reads and conditions stay exact meanwhile; they use the key once
    /// [`EventStore::indexed_keys`](crate::EventStore::indexed_keys) says it is ready).
    /// Connecting never drops a key: a process that does not list one still writes its
    /// entries and only filters instead of probing. [`EventStore::migrate`](crate::EventStore::migrate)
    /// makes the store's keys match the list, dropping the others. Each key costs
    /// appends one index entry per event holding a string there. At most 32 keys of at
    /// most 256 bytes; none by default.
    ///
    /// [`QueryItem::data_all`]: crate::QueryItem::data_all
    /// [`QueryItem::data_any`]: crate::QueryItem::data_any
    ///
    /// ```
    /// use dcb_store::Config;
    /// let config = Config::default().with_indexed_keys(["order_id", "customer_id"]);
    /// assert_eq!(config.indexed_keys(), ["order_id", "customer_id"]);
    /// ```
    #[must_use]
    pub fn with_indexed_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.indexed_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// The declared indexed data keys (see [`Config::with_indexed_keys`]).
    pub fn indexed_keys(&self) -> &[String] {
        &self.indexed_keys
    }

    /// Top-level metadata keys whose string values are indexed, as
    /// [`with_indexed_keys`](Config::with_indexed_keys) does for data: a query item with
    /// [`QueryItem::metadata_all`](crate::QueryItem::metadata_all) on one of them (all
    /// events of one correlation id) is an ordered index probe. Counted with the data
    /// keys against the limit of 32; none by default.
    ///
    /// ```
    /// use dcb_store::Config;
    /// let config = Config::default().with_indexed_metadata_keys(["correlation_id"]);
    /// assert_eq!(config.indexed_metadata_keys(), ["correlation_id"]);
    /// ```
    #[must_use]
    pub fn with_indexed_metadata_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.indexed_metadata_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// The declared indexed metadata keys.
    pub fn indexed_metadata_keys(&self) -> &[String] {
        &self.indexed_metadata_keys
    }

    /// Read replicas (PostgreSQL streaming replicas of the database): reads asked for
    /// with [`Consistency::Eventual`](crate::Consistency::Eventual) or
    /// [`Consistency::AtLeast`](crate::Consistency::AtLeast) may be served by them;
    /// appends, conditions and strong reads always go to the primary. Each replica gets
    /// its own readers (as many as [`with_readers`](Config::with_readers)). Defaults to
    /// none.
    ///
    /// ```
    /// use dcb_store::Config;
    /// let config = Config::default()
    ///     .with_database_url("postgres://app@db1/shop")
    ///     .with_replica_urls(["postgres://app@db2/shop", "postgres://app@db3/shop"]);
    /// # let _ = config;
    /// ```
    #[must_use]
    pub fn with_replica_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replica_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// How far behind the primary a replica may be, in time, and still serve eventual
    /// reads: a replica missing an event the primary had longer ago than this is taken
    /// out of rotation until it catches up. Defaults to 5 s.
    #[must_use]
    pub fn with_replica_max_lag(mut self, lag: Duration) -> Self {
        self.replica_max_lag_ms = lag.as_millis() as u64;
        self
    }

    /// How long a read with [`Consistency::AtLeast`](crate::Consistency::AtLeast) waits
    /// for a replica to reach its position before the primary serves it. Defaults to
    /// 1 s; with 0, one read on the most advanced replica, then the primary.
    #[must_use]
    pub fn with_replica_wait(mut self, wait: Duration) -> Self {
        self.replica_wait_ms = wait.as_millis() as u64;
        self
    }

    /// How often the router asks every replica (and the primary) for its head.
    /// Defaults to 100 ms.
    #[must_use]
    pub fn with_replica_poll_interval(mut self, interval: Duration) -> Self {
        self.replica_poll_ms = interval.as_millis().max(1) as u64;
        self
    }

    /// Whether batches send a `NOTIFY` (in their transaction) while some process
    /// follows the schema, so that its subscribers wake at once. Defaults to on (a
    /// store nobody follows sends none either way). Off, other processes notice new
    /// events by polling (`subscription_poll_ms`). PostgreSQL serialises the commits of
    /// all notifying transactions of one database, so many busy schemas in one
    /// database may prefer it off.
    #[must_use]
    pub fn with_notify_commits(mut self, notify: bool) -> Self {
        self.notify_commits = notify;
        self
    }

    /// The recent events (all of them, unfiltered) kept in memory for live
    /// subscribers, shared by all subscriptions of the store: at most `events` events
    /// and `bytes` bytes. A subscriber further behind reads from the database.
    /// Defaults to 10,000 events and 32 MiB.
    #[must_use]
    pub fn with_subscription_buffer(mut self, events: usize, bytes: usize) -> Self {
        self.subscription_buffer_events = events;
        self.subscription_buffer_bytes = bytes;
        self
    }

    /// How often subscriptions look for new events when no wake-up came (a lost
    /// notification, or `notify_commits` off). Defaults to 1 s.
    #[must_use]
    pub fn with_subscription_poll_interval(mut self, interval: Duration) -> Self {
        self.subscription_poll_ms = interval.as_millis().max(1) as u64;
        self
    }

    /// How many projection states (one per projection and parameters) the store keeps
    /// in memory for decision models, least recently used first out; 0 turns the cache
    /// off. Defaults to 10,000.
    #[must_use]
    pub fn with_decision_cache(mut self, entries: usize) -> Self {
        self.decision_cache_entries = entries;
        self
    }

    /// Once building decision models has folded this many events into a projection's
    /// state since its last snapshot, a new snapshot is saved in the background; 0
    /// never saves one automatically. Defaults to 1,000.
    #[must_use]
    pub fn with_snapshot_after(mut self, events: u64) -> Self {
        self.snapshot_after_events = events;
        self
    }

    /// How many conflicts `decide` reads again after before it returns
    /// `Error::ConditionFailed`. Defaults to 16.
    #[must_use]
    pub fn with_decide_retries(mut self, retries: u32) -> Self {
        self.decide_retries = retries;
        self
    }

    /// The PostgreSQL connection string (URL or `key=value` form). Defaults to none:
    /// then [`EventStore::connect`](crate::EventStore::connect) fails, unless a
    /// throwaway server was asked for.
    #[must_use]
    pub fn with_database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// TLS to the server: `Disable` (default), `Require` (encrypted, certificate not
    /// checked) or `VerifyFull` (certificate checked against
    /// [`with_tls_root_cert`](Config::with_tls_root_cert) and the host name).
    #[must_use]
    pub fn with_tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = mode;
        self
    }

    /// PEM file of the root certificate(s) for `VerifyFull`.
    #[must_use]
    pub fn with_tls_root_cert(mut self, path: impl Into<String>) -> Self {
        self.tls_root_cert = Some(path.into());
        self
    }

    /// The PostgreSQL schema that holds the store's tables: letters, digits and `_`,
    /// not starting with a digit, at most 63 bytes. Defaults to `dcb`.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Number of reader actors, each with its own connection. Defaults to 2.
    #[must_use]
    pub fn with_readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// Most events in one writer batch (one transaction). Defaults to 2000.
    #[must_use]
    pub fn with_max_batch_events(mut self, events: usize) -> Self {
        self.max_batch_events = events;
        self
    }

    /// Most JSON bytes in one writer batch. Defaults to 8 MiB.
    #[must_use]
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Whether the writer gathers concurrent appends into one transaction. Defaults to
    /// true; false writes one append per transaction (a benchmark baseline).
    #[must_use]
    pub fn with_batching(mut self, batching: bool) -> Self {
        self.batching = batching;
        self
    }

    /// Whether the writer sends the next batch while the current one is still being
    /// written (pipelined behind it on the same connection, so the server starts on
    /// it the moment the first commits). On by default; off is a benchmark baseline.
    #[must_use]
    pub fn with_pipelining(mut self, pipelining: bool) -> Self {
        self.pipelining = pipelining;
        self
    }

    /// Whether operations send instrumentation records to the metrics actor. Defaults
    /// to true; false is a benchmark baseline (snapshots then stay empty).
    #[must_use]
    pub fn with_metrics(mut self, metrics: bool) -> Self {
        self.metrics = metrics;
        self
    }

    /// Appends the writer holds at once (queued or being written) before callers wait,
    /// or fail with `Error::Overloaded` under `fail_when_busy`. Defaults to 1024.
    #[must_use]
    pub fn with_writer_mailbox(mut self, appends: usize) -> Self {
        self.writer_mailbox = appends;
        self
    }

    /// Time limit of every operation. Defaults to 30 s.
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout_ms = timeout.as_millis().max(1) as u64;
        self
    }

    /// Connections the pool keeps for short tasks (migrations); the actors hold
    /// dedicated connections of their own. Defaults to 4.
    #[must_use]
    pub fn with_pool_size(mut self, connections: u32) -> Self {
        self.pool_size = connections;
        self
    }

    /// Reads each reader's mailbox holds before callers wait. Defaults to 256.
    #[must_use]
    pub fn with_reader_mailbox(mut self, reads: usize) -> Self {
        self.reader_mailbox = reads;
        self
    }

    /// Reads one reader pipelines on its connection at once. Defaults to 32.
    #[must_use]
    pub fn with_reader_max_in_flight(mut self, reads: usize) -> Self {
        self.reader_max_in_flight = reads;
        self
    }

    /// Time limit of making one connection. Defaults to 10 s.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout_ms = timeout.as_millis().try_into().unwrap_or(u64::MAX);
        self
    }

    /// The most tags one event may carry. Defaults to 256.
    #[must_use]
    pub fn with_max_tags_per_event(mut self, tags: usize) -> Self {
        self.max_tags_per_event = tags;
        self
    }

    /// Instrumentation records buffered for the metrics actor; beyond this they are
    /// dropped (and counted), never waited for. Defaults to 65536.
    #[must_use]
    pub fn with_metrics_channel_capacity(mut self, records: usize) -> Self {
        self.metrics_channel_capacity = records;
        self
    }

    /// The longest event type, tag or data key accepted, in bytes; at most
    /// [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES). Defaults to 1024.
    #[must_use]
    pub fn with_max_name_bytes(mut self, bytes: usize) -> Self {
        self.max_name_bytes = bytes;
        self
    }

    /// The most items a query (of a read or a condition) may have. Defaults to 1000.
    #[must_use]
    pub fn with_max_query_items(mut self, items: usize) -> Self {
        self.max_query_items = items;
        self
    }

    /// The most types, tags and data predicates one query item may have, each.
    /// Defaults to 100 each.
    #[must_use]
    pub fn with_max_item_parts(mut self, types: usize, tags: usize, data_pairs: usize) -> Self {
        self.max_item_types = types;
        self.max_item_tags = tags;
        self.max_item_data_pairs = data_pairs;
        self
    }

    /// Largest event in bytes: type, tags, data and metadata. Defaults to 1 MiB.
    #[must_use]
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Query shapes whose prepared statements each reader keeps. Defaults to 64;
    /// 0 turns the cache off (every read prepares its statement: a benchmark baseline).
    #[must_use]
    pub fn with_statement_cache_size(mut self, shapes: usize) -> Self {
        self.statement_cache_size = shapes;
        self
    }

    /// Events per page of [`EventStore::read_stream`](crate::EventStore::read_stream). Defaults to 1000.
    #[must_use]
    pub fn with_read_page_size(mut self, events: usize) -> Self {
        self.read_page_size = events;
        self
    }

    /// The connection string, if one is configured.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }
    pub(crate) fn tls_root_cert(&self) -> Option<&str> {
        self.tls_root_cert.as_deref()
    }
    pub(crate) fn readers(&self) -> usize {
        self.readers
    }
    pub(crate) fn pool_size(&self) -> u32 {
        self.pool_size
    }
    pub(crate) fn batching(&self) -> bool {
        self.batching
    }
    pub(crate) fn metrics_enabled(&self) -> bool {
        self.metrics
    }
    pub(crate) fn writer_mailbox(&self) -> usize {
        self.writer_mailbox
    }
    pub(crate) fn reader_mailbox(&self) -> usize {
        self.reader_mailbox
    }
    pub(crate) fn reader_max_in_flight(&self) -> usize {
        self.reader_max_in_flight
    }
    pub(crate) fn statement_cache_size(&self) -> usize {
        self.statement_cache_size
    }
    pub(crate) fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub(crate) fn read_page_size(&self) -> usize {
        self.read_page_size
    }
    pub(crate) fn metrics_channel_capacity(&self) -> usize {
        self.metrics_channel_capacity
    }
    pub(crate) fn notify_commits(&self) -> bool {
        self.notify_commits
    }
    pub(crate) fn subscription_buffer(&self) -> (usize, usize) {
        (
            self.subscription_buffer_events,
            self.subscription_buffer_bytes,
        )
    }
    pub(crate) fn subscription_poll_interval(&self) -> Duration {
        Duration::from_millis(self.subscription_poll_ms)
    }
    pub(crate) fn pipelining(&self) -> bool {
        self.pipelining
    }
    pub(crate) fn decision_cache_entries(&self) -> usize {
        self.decision_cache_entries
    }
    pub(crate) fn snapshot_after_events(&self) -> u64 {
        self.snapshot_after_events
    }
    /// The replicas' connection strings.
    pub fn replica_urls(&self) -> &[String] {
        &self.replica_urls
    }
    pub(crate) fn replica_max_lag(&self) -> Duration {
        Duration::from_millis(self.replica_max_lag_ms)
    }
    pub(crate) fn replica_wait(&self) -> Duration {
        Duration::from_millis(self.replica_wait_ms)
    }
    pub(crate) fn replica_poll_interval(&self) -> Duration {
        Duration::from_millis(self.replica_poll_ms)
    }
    pub(crate) fn decide_retries(&self) -> u32 {
        self.decide_retries
    }
    /// The schema name, checked to be a plain identifier.
    pub(crate) fn schema_identifier(&self) -> Result<Identifier> {
        Identifier::parse(&self.schema, "schema")
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_tags: self.max_tags_per_event,
            max_name_bytes: self.max_name_bytes,
            max_batch_events: self.max_batch_events,
            max_batch_bytes: self.max_batch_bytes,
            max_query_items: self.max_query_items,
            max_item_types: self.max_item_types,
            max_item_tags: self.max_item_tags,
            max_item_data_pairs: self.max_item_data_pairs,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_password),
            )
            .field("tls_mode", &self.tls_mode)
            .field("tls_root_cert", &self.tls_root_cert)
            .field("schema", &self.schema)
            .field("readers", &self.readers)
            .field("pool_size", &self.pool_size)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("batching", &self.batching)
            .field("pipelining", &self.pipelining)
            .field("writer_mailbox", &self.writer_mailbox)
            .field("reader_mailbox", &self.reader_mailbox)
            .field("reader_max_in_flight", &self.reader_max_in_flight)
            .field("statement_cache_size", &self.statement_cache_size)
            .field("operation_timeout_ms", &self.operation_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_tags_per_event", &self.max_tags_per_event)
            .field("max_name_bytes", &self.max_name_bytes)
            .field("max_query_items", &self.max_query_items)
            .field("max_item_types", &self.max_item_types)
            .field("max_item_tags", &self.max_item_tags)
            .field("max_item_data_pairs", &self.max_item_data_pairs)
            .field("read_page_size", &self.read_page_size)
            .field("metrics_channel_capacity", &self.metrics_channel_capacity)
            .field("metrics", &self.metrics)
            .field("notify_commits", &self.notify_commits)
            .field(
                "subscription_buffer_events",
                &self.subscription_buffer_events,
            )
            .field("subscription_buffer_bytes", &self.subscription_buffer_bytes)
            .field("subscription_poll_ms", &self.subscription_poll_ms)
            .field("decision_cache_entries", &self.decision_cache_entries)
            .field("snapshot_after_events", &self.snapshot_after_events)
            .field("decide_retries", &self.decide_retries)
            .field(
                "replica_urls",
                &self
                    .replica_urls
                    .iter()
                    .map(|url| redact_password(url))
                    .collect::<Vec<_>>(),
            )
            .field("replica_max_lag_ms", &self.replica_max_lag_ms)
            .field("replica_wait_ms", &self.replica_wait_ms)
            .field("replica_poll_ms", &self.replica_poll_ms)
            .field("indexed_keys", &self.indexed_keys)
            .field("indexed_metadata_keys", &self.indexed_metadata_keys)
            .finish()
    }
}

/// Schema names are identifiers, which SQL cannot take as bind parameters; they are
/// checked here so that quoting them into statement text is safe.
/// Hides the password of a connection string in either form, for logs and `Debug`.
pub(crate) fn redact_password(conninfo: &str) -> String {
    if let Some(scheme_end) = conninfo.find("://") {
        let rest = &conninfo[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &conninfo[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        // `?password=` in the query string
        return redact_key_value(conninfo, '&');
    }
    redact_key_value(conninfo, ' ')
}

fn redact_key_value(conninfo: &str, separator: char) -> String {
    let lower = conninfo.to_ascii_lowercase();
    let Some(start) = lower.find("password") else {
        return conninfo.to_owned();
    };
    let after_key = &conninfo[start + "password".len()..];
    let Some(eq) = after_key.find('=') else {
        return conninfo.to_owned();
    };
    let value_start = start + "password".len() + eq + 1;
    let value = &conninfo[value_start..];
    let value_len = if value.trim_start().starts_with('\'') {
        let open = value.find('\'').unwrap_or(0);
        value[open + 1..]
            .find('\'')
            .map_or(value.len(), |close| open + close + 2)
    } else {
        value.find(separator).unwrap_or(value.len())
    };
    format!(
        "{}***{}",
        &conninfo[..value_start],
        &conninfo[value_start + value_len..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_both_forms() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_password("postgres://db/x?user=a&password=s3cret&sslmode=require"),
            "postgres://db/x?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            redact_password("host=db password='se cret' user=a"),
            "host=db password=*** user=a"
        );
        assert_eq!(redact_password("host=db user=a"), "host=db user=a");
        let debug = format!(
            "{:?}",
            Config::default().with_database_url("postgres://a:hunter2@h/d")
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn schema_names_must_be_identifiers() {
        assert!(Config::default().with_schema("shop_1").validate().is_ok());
        for bad in ["", "1a", "a-b", "a\"b", "a;drop", &"x".repeat(64)] {
            assert!(
                Config::default().with_schema(bad).validate().is_err(),
                "{bad}"
            );
        }
    }
}
