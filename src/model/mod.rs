//! The model: events, queries, append conditions and read options, with their
//! in-memory meaning and validation. Knows nothing about SQL, actors or I/O.

mod event;
mod json;
mod query;

pub(crate) use event::Limits;
pub use event::{Event, SequencedEvent};
pub(crate) use json::JsonText;
pub use query::{
    AppendCondition, AppendResult, DataFilter, Query, QueryItem, ReadOptions, ReadResult,
};
