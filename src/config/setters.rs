//! The setters: one per key of `config.toml`, named like it (`with_<key>`, a
//! `Duration` for the `_ms` keys), plus a few that set two or three keys at once.
//! A setter stores what it is given, never an adjusted value; [`Config::validate`]
//! (called by `connect`) refuses what cannot work, naming the key.
//!
//! Longer than most files because every setting has a documented setter.

use std::time::Duration;

use super::Config;
use crate::base::connect::PoolerMode;
use crate::base::tls::TlsMode;

/// A duration as the whole milliseconds the keys hold (saturating; below 1 ms is 0,
/// which `validate` refuses where 0 cannot work).
fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

impl Config {
    /// When no database URL is configured, start a throwaway PostgreSQL (removed when
    /// the store is dropped) instead of failing. For demos and tests only: nothing
    /// written to it survives. Off by default.
    #[cfg(feature = "embedded")]
    #[must_use]
    pub fn with_throwaway_server(mut self) -> Self {
        self.throwaway_server = true;
        self
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
        self.replica_max_lag_ms = millis(lag);
        self
    }

    /// How long a read with [`Consistency::AtLeast`](crate::Consistency::AtLeast) waits
    /// for a replica to reach its position before the primary serves it. Defaults to
    /// 1 s; with 0, one read on the most advanced replica, then the primary.
    #[must_use]
    pub fn with_replica_wait(mut self, wait: Duration) -> Self {
        self.replica_wait_ms = millis(wait);
        self
    }

    /// How often the router asks every replica (and the primary) for its head.
    /// Defaults to 100 ms.
    #[must_use]
    pub fn with_replica_poll_interval(mut self, interval: Duration) -> Self {
        self.replica_poll_ms = millis(interval);
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
        self.subscription_poll_ms = millis(interval);
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

    /// What stands between the store and `database_url`: `none` (the default),
    /// `session` or `transaction` (PgBouncer's pool modes). With `transaction` the store
    /// keeps nothing on a server session between transactions, and subscriptions and
    /// durable consumers need [`Config::with_direct_url`]; see [`PoolerMode`].
    #[must_use]
    pub fn with_pooler_mode(mut self, mode: PoolerMode) -> Self {
        self.pooler_mode = mode;
        self
    }

    /// A URL that reaches PostgreSQL directly (or through a session-mode pool), for
    /// the connections that need a session of their own: the subscriptions' `LISTEN`
    /// and each durable consumer's lease. Used only with
    /// [`PoolerMode::Transaction`]; otherwise those connections use `database_url`.
    #[must_use]
    pub fn with_direct_url(mut self, url: impl Into<String>) -> Self {
        self.direct_url = Some(url.into());
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
        self.operation_timeout_ms = millis(timeout);
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
        self.connect_timeout_ms = millis(timeout);
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

    /// [`Config::with_decision_cache`] under its key's name (`decision_cache_entries`).
    #[must_use]
    pub fn with_decision_cache_entries(self, entries: usize) -> Self {
        self.with_decision_cache(entries)
    }

    /// [`Config::with_snapshot_after`] under its key's name (`snapshot_after_events`).
    #[must_use]
    pub fn with_snapshot_after_events(self, events: u64) -> Self {
        self.with_snapshot_after(events)
    }

    /// [`Config::with_subscription_poll_interval`] under its key's name
    /// (`subscription_poll_ms`).
    #[must_use]
    pub fn with_subscription_poll(self, interval: Duration) -> Self {
        self.with_subscription_poll_interval(interval)
    }

    /// [`Config::with_replica_poll_interval`] under its key's name (`replica_poll_ms`).
    #[must_use]
    pub fn with_replica_poll(self, interval: Duration) -> Self {
        self.with_replica_poll_interval(interval)
    }

    /// The events part of [`Config::with_subscription_buffer`] (key
    /// `subscription_buffer_events`).
    #[must_use]
    pub fn with_subscription_buffer_events(mut self, events: usize) -> Self {
        self.subscription_buffer_events = events;
        self
    }

    /// The bytes part of [`Config::with_subscription_buffer`] (key
    /// `subscription_buffer_bytes`).
    #[must_use]
    pub fn with_subscription_buffer_bytes(mut self, bytes: usize) -> Self {
        self.subscription_buffer_bytes = bytes;
        self
    }

    /// The types part of [`Config::with_max_item_parts`] (key `max_item_types`).
    #[must_use]
    pub fn with_max_item_types(mut self, types: usize) -> Self {
        self.max_item_types = types;
        self
    }

    /// The tags part of [`Config::with_max_item_parts`] (key `max_item_tags`).
    #[must_use]
    pub fn with_max_item_tags(mut self, tags: usize) -> Self {
        self.max_item_tags = tags;
        self
    }

    /// The data part of [`Config::with_max_item_parts`] (key `max_item_data_pairs`).
    #[must_use]
    pub fn with_max_item_data_pairs(mut self, data_pairs: usize) -> Self {
        self.max_item_data_pairs = data_pairs;
        self
    }
}
