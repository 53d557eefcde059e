//! The error type every public operation returns.
//!
//! One enum for the public boundary, so callers match on what happened
//! (`ConditionFailed`, `InvalidInput`, `Timeout`, ...) rather than on text.
//! Database errors keep their cause and say whether a write may have happened.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use uuid::Uuid;

/// What can go wrong when talking to the store.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The input can never be stored or run; nothing was sent to the database.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong and where, e.g. `event 2: type is empty`.
        reason: String,
    },

    /// The append condition matched an event, so nothing of this append was written.
    #[error(
        "append condition failed: an event matching the condition exists{}",
        match after { Some(p) => format!(" after position {p}"), None => String::new() }
    )]
    ConditionFailed {
        /// The condition's `after` position (`None`: any matching event fails it).
        after: Option<u64>,
    },

    /// An event id of this append is already stored with other content (type, tags,
    /// data or metadata); nothing of this append was written. (An append whose events
    /// are all stored unchanged is a retry and returns the original positions.)
    #[error("duplicate event id {id}: an event with this id is already stored with other content")]
    DuplicateEventId {
        /// The first id of the append found in the store.
        id: Uuid,
    },

    /// A tracked append ([`AppendOptions::tracking`](crate::AppendOptions::tracking))
    /// found its consumer's checkpoint at or beyond the position it tracks: that
    /// position was handled already, so nothing of this append was written (and the
    /// checkpoint did not move). `checkpoint` is the stored one, as
    /// [`EventStore::checkpoint`](crate::EventStore::checkpoint) reads it, read right
    /// after the refusing batch committed (so it includes the batch's own later
    /// moves); it is at least the tracked position.
    #[error("consumer {consumer:?} already tracked position {checkpoint}: nothing appended")]
    AlreadyTracked {
        /// The consumer's name.
        consumer: String,
        /// Its checkpoint when the append was decided.
        checkpoint: u64,
    },

    /// The operation did not finish in time.
    ///
    /// For an append, `may_have_been_written` is true when the batch had already been
    /// sent: retry with the same event ids to learn the outcome.
    #[error("operation timed out after {after:?}")]
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
        /// Whether the append may still have been (or be) committed.
        may_have_been_written: bool,
    },

    /// The writer's mailbox is full: the store is taking appends as fast as it can.
    /// Returned by [`EventStore::append_with`](crate::EventStore::append_with) with
    /// [`AppendOptions::fail_when_busy`](crate::AppendOptions::fail_when_busy); nothing
    /// was queued. Back off and retry, or use `append`, which waits for room.
    #[error("the store is overloaded: the writer's mailbox is full")]
    Overloaded,

    /// The store is shutting down or its actors have stopped.
    ///
    /// For an append, `may_have_been_written` is true when the writer stopped while
    /// the append's batch was in flight: retry with the same event ids to learn the
    /// outcome.
    #[error("the event store is closed{}", if *.may_have_been_written { " (the append may have been written)" } else { "" })]
    Closed {
        /// Whether the append may have been committed before the store closed.
        may_have_been_written: bool,
    },

    /// A database error. Its message names the SQLSTATE when the server sent one; the
    /// server's own message is its [`source`](std::error::Error::source) (print it
    /// with [`Error::report`], or any reporter that walks the chain).
    ///
    /// `may_have_been_written` is true only when the connection failed while a commit
    /// was in flight, so the outcome is unknown.
    #[error("database error{}{}", match .source.code() { Some(code) => format!(" (SQLSTATE {})", code.code()), None => String::new() }, if *.may_have_been_written { " (the append may have been written)" } else { "" })]
    Database {
        /// The driver's error, with SQLSTATE when the server sent one.
        #[source]
        source: Arc<tokio_postgres::Error>,
        /// Whether the append may have been committed despite the error.
        may_have_been_written: bool,
    },

    /// The role the store connects as may not do what was needed; nothing was changed.
    /// Its [`sql_state`](Error::sql_state) is `42501` (`insufficient_privilege`).
    #[error("permission denied: {needed}")]
    PermissionDenied {
        /// What was refused, and what to do instead.
        needed: String,
        /// The server's refusal.
        #[source]
        source: Arc<tokio_postgres::Error>,
    },

    /// The schema was migrated by a newer build of the store than this one, which
    /// cannot know what the newer versions changed; nothing was changed.
    #[error("schema {schema:?} is at version {version}, newer than this build's {supported}: upgrade dcb-store")]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// Its newest applied version.
        version: i32,
        /// The newest version this build knows ([`SCHEMA_VERSION`](crate::SCHEMA_VERSION)).
        supported: i32,
    },

    /// What was asked needs a server session of its own (`LISTEN` for subscriptions, a
    /// session lock for a durable consumer's lease), which a transaction-mode pooler
    /// does not give; nothing was started. Configure `direct_url`
    /// ([`Config::with_direct_url`](crate::Config::with_direct_url)): a URL that reaches
    /// PostgreSQL directly or through a session-mode pool.
    #[error("{what} needs a session of its own, which pooler_mode = \"transaction\" does not give: set direct_url to a URL that reaches PostgreSQL directly (or through a session-mode pool)")]
    NeedsSession {
        /// What needed it: `subscriptions (LISTEN)` or `durable consumers (leases)`.
        what: &'static str,
    },

    /// No connection to the database could be made.
    #[error("cannot connect to the database: {0}")]
    Connect(String),

    /// The configuration is not usable.
    #[error("configuration error: {0}")]
    Config(String),

    /// The embedded (throwaway) PostgreSQL could not be started.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),

    /// An event's data or metadata did not deserialize into the requested type.
    #[error("cannot decode event JSON: {0}")]
    Decode(#[source] Arc<serde_json::Error>),

    /// This subscriber no longer holds the durable consumer (another took it over, or
    /// its lock's connection was lost); nothing was changed. The subscription resumes
    /// from the stored checkpoint once it holds the consumer again.
    #[error("consumer {consumer:?}: the lease was lost to another subscriber")]
    LeaseLost {
        /// The consumer's name.
        consumer: String,
    },

    /// A durable consumer configured with `OnFailure::Stop` stopped: its handler
    /// failed the event at `position` `attempts` times.
    #[error("consumer {consumer:?} stopped: event {position} failed {attempts} times: {error}")]
    DeliveryFailed {
        /// The consumer's name.
        consumer: String,
        /// The failing event's position (the checkpoint stays before it).
        position: u64,
        /// Deliveries that failed.
        attempts: u32,
        /// The handler's last error.
        error: String,
    },
}

impl Error {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    pub(crate) fn db(source: tokio_postgres::Error) -> Self {
        Error::Database {
            source: Arc::new(source),
            may_have_been_written: false,
        }
    }

    /// A short, stable name of the variant (`condition_failed`, `timeout`, ...), for
    /// logs, spans (`error.type`) and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::ConditionFailed { .. } => "condition_failed",
            Error::DuplicateEventId { .. } => "duplicate_event_id",
            Error::AlreadyTracked { .. } => "already_tracked",
            Error::Timeout { .. } => "timeout",
            Error::Overloaded => "overloaded",
            Error::Closed { .. } => "closed",
            Error::Database { .. } => "database",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::SchemaTooNew { .. } => "schema_too_new",
            Error::NeedsSession { .. } => "needs_session",
            Error::Connect(_) => "connect",
            Error::Config(_) => "config",
            Error::Embedded(_) => "embedded",
            Error::Decode(_) => "decode",
            Error::LeaseLost { .. } => "lease_lost",
            Error::DeliveryFailed { .. } => "delivery_failed",
        }
    }

    /// The SQLSTATE code when this is an error the server reported.
    pub fn sql_state(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Database { source, .. } | Error::PermissionDenied { source, .. } => {
                source.code()
            }
            _ => None,
        }
    }

    /// This error and its causes, joined with `: ` (the server's message of a
    /// [`Error::Database`], for one), for logs and messages.
    ///
    /// ```
    /// let error = dcb_store::Error::Config("no database URL".into());
    /// assert_eq!(error.report(), "configuration error: no database URL");
    /// ```
    pub fn report(&self) -> String {
        with_causes(self)
    }

    /// The store is closed and nothing of the operation was sent.
    pub(crate) const CLOSED: Error = Error::Closed {
        may_have_been_written: false,
    };

    /// Whether an append that returned this error may nonetheless have been written.
    ///
    /// `false` is a promise: nothing of the append was committed. `true` means the
    /// outcome is unknown (a connection failed or a deadline passed after the batch's
    /// `COMMIT` was sent); appending the same events again with the same ids is safe
    /// and returns the original positions if the first attempt was committed.
    pub fn may_have_been_written(&self) -> bool {
        matches!(
            self,
            Error::Database {
                may_have_been_written: true,
                ..
            } | Error::Timeout {
                may_have_been_written: true,
                ..
            } | Error::Closed {
                may_have_been_written: true
            }
        )
    }

    /// This error for an append whose outcome is unknown, when the variant can say so;
    /// `None` when it cannot (the caller then reports the earlier unknown outcome).
    pub(crate) fn as_possibly_written(&self) -> Option<Error> {
        let mut error = self.clone();
        match &mut error {
            Error::Database {
                may_have_been_written,
                ..
            }
            | Error::Timeout {
                may_have_been_written,
                ..
            }
            | Error::Closed {
                may_have_been_written,
            } => {
                *may_have_been_written = true;
                Some(error)
            }
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    /// A database error that is known not to have written anything.
    fn from(e: tokio_postgres::Error) -> Self {
        Error::db(e)
    }
}

/// `error` and its causes, joined with `: ` (tokio-postgres puts the server's message
/// in the source, not in `Display`).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    Chain(error).to_string()
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Decode(Arc::new(e))
    }
}

/// Shows an error with its causes (`error = %Chain(&e)` in logs), since `Display` of
/// a well-behaved error leaves its causes to `source()`.
pub(crate) struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
