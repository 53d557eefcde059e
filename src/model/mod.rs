//! The model: events, queries, append conditions and read options, with their
//! in-memory meaning and validation. Knows nothing about SQL, actors or I/O.

mod event;
mod json;
mod options;
mod query;
mod timestamp;

pub(crate) use event::Limits;
pub use event::{Event, SequencedEvent, MAX_NAME_BYTES};
pub(crate) use json::JsonText;
pub use options::{AppendOptions, ReadOptions};
pub(crate) use query::MatchView;
pub use query::{AppendCondition, AppendResult, DataFilter, Query, QueryItem, ReadResult};

/// How many times this thread has parsed event data for matching (tests only).
#[cfg(test)]
pub(crate) fn json_parses() -> usize {
    json::tests::PARSES.with(|n| n.get())
}
