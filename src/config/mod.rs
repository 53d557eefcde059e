//! Configuration: the raw settings (field names are the keys of `config.toml`) and
//! what the rest of the crate reads of them.
//!
//! - `load`: defaults, then `config.toml`, then the environment, then setters.
//! - `setters`: one `with_<key>` per key, storing values as given.
//! - `validate`: the one check of every value, with errors naming the key.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

mod load;
mod setters;
mod validate;

pub(crate) use validate::{redact_password, Checked};

use crate::base::connect::PoolerMode;
use crate::base::tls::TlsMode;
use crate::model::Limits;

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
    pooler_mode: PoolerMode,
    direct_url: Option<String>,
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
            pooler_mode: PoolerMode::None,
            direct_url: None,
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
    #[cfg(feature = "embedded")]
    pub(crate) fn throwaway_server(&self) -> bool {
        self.throwaway_server
    }

    /// The declared indexed data keys (see [`Config::with_indexed_keys`]).
    pub fn indexed_keys(&self) -> &[String] {
        &self.indexed_keys
    }

    /// The declared indexed metadata keys.
    pub fn indexed_metadata_keys(&self) -> &[String] {
        &self.indexed_metadata_keys
    }

    /// The connection string, if one is configured.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// What stands between the store and `database_url` (see [`PoolerMode`]).
    pub fn pooler_mode(&self) -> PoolerMode {
        self.pooler_mode
    }

    /// The URL for connections that need a session of their own, if one is configured
    /// (see [`Config::with_direct_url`]).
    pub fn direct_url(&self) -> Option<&str> {
        self.direct_url.as_deref()
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
            .field("pooler_mode", &self.pooler_mode)
            .field(
                "direct_url",
                &self.direct_url.as_deref().map(redact_password),
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
