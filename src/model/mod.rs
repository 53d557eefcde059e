//! The model: events, queries, append conditions and read options, with their
//! in-memory meaning and validation. Knows nothing about SQL, actors or I/O.

mod canonical;
mod event;
mod json;
mod options;
mod query;
mod timestamp;
mod validate;

pub use event::{Event, SequencedEvent};
pub(crate) use json::JsonText;
pub use options::{
    AppendOptions, Consistency, DecideOptions, MigrateOptions, ReadOptions, Tracking,
};
pub(crate) use query::MatchView;
pub use query::{AppendCondition, AppendResult, DataFilter, Query, QueryItem, ReadResult};
pub use validate::MAX_NAME_BYTES;
pub(crate) use validate::{prepare_append, validate_consumer_name, validate_query, Limits};

/// How many times this thread has parsed event data for matching (tests only).
#[cfg(test)]
pub(crate) fn json_parses() -> usize {
    json::tests::PARSES.with(|n| n.get())
}
