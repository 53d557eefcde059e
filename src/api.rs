//! The public API in one list: every public type, re-exported at the crate's root, by
//! what it is for. Nothing public is defined elsewhere without appearing here.

// The store and its configuration.
pub use crate::base::connect::PoolerMode;
pub use crate::base::tls::TlsMode;
pub use crate::config::Config;
pub use crate::store::EventStore;
/// The PostgreSQL driver the store uses: [`ReadModel`] handlers write their tables
/// through its [`Transaction`](tokio_postgres::Transaction).
pub use tokio_postgres;

// Events, queries, conditions and per-call options.
pub use crate::model::{
    AppendCondition, AppendOptions, AppendResult, Consistency, DataFilter, DecideOptions, Event,
    MigrateOptions, Query, QueryItem, ReadOptions, ReadResult, SequencedEvent, Tracking,
    MAX_NAME_BYTES,
};

// Errors.
pub use crate::error::{Error, Result};
/// SQLSTATE codes, as [`Error::sql_state`] returns them.
pub use tokio_postgres::error::SqlState;

// Decisions.
pub use crate::decide::{Decided, DecisionModel, Projection};
#[doc(hidden)]
pub use crate::decide::{Members, States};

// Subscriptions and durable consumers.
pub use crate::subscribe::{
    Deliver, DeliveryError, EventBatch, OnFailure, ParkedEvent, ReplayOutcome, SubscribeOptions,
    Subscription, SubscriptionHandle,
};

// Exactly once: read models in the consumer's transaction, process managers.
pub use crate::store::{ProcessManager, Reaction};
pub use crate::subscribe::{ReadModel, ReadModelHandle};

// Messages for actor callers.
pub use crate::reader::Read;
pub use crate::writer::Append;

// Indexed keys, the schema and its grants.
pub use crate::indexing::{IndexedKey, KeySource};
pub use crate::sql::schema::{APPLICATION_GRANTS, SCHEMA_VERSION};

// Metrics.
pub use crate::metrics::{
    ConsumerMetrics, LatencySummary, MetricsSnapshot, ReplicaMetrics, SizeSummary,
};

// A throwaway server for demos and tests.
#[cfg(feature = "embedded")]
pub use crate::embedded::EmbeddedPostgres;
