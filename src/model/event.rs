//! Events as callers build them and as reads return them.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::json::JsonText;
use super::timestamp;
use crate::error::Result;

/// An event: a type, a set of tags, JSON data and JSON metadata.
///
/// ```
/// use dcb_store::Event;
/// let e = Event::new("CourseDefined", serde_json::json!({"courseId": "c1", "capacity": 2}))
///     .with_tags(["course:c1"])
///     .with_metadata(serde_json::json!({"correlationId": "x"}));
/// assert_eq!(e.event_type(), "CourseDefined");
/// assert_eq!(e.tags(), ["course:c1"]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    id: Uuid,
    event_type: String,
    tags: Vec<String>,
    data: JsonText,
    metadata: JsonText,
    occurred_at: Option<DateTime<Utc>>,
}

/// An event as stored, with its position in the store.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SequencedEvent {
    /// Unique, increasing with commit order; gaps are possible.
    pub position: u64,
    /// The event itself; its `occurred_at` is always set.
    pub event: Event,
    /// When the database stored the event.
    pub recorded_at: DateTime<Utc>,
}

impl Event {
    /// A new event with the given type and JSON data, a fresh id, no tags and
    /// empty metadata (`{}`). `occurred_at` is set to the time of the append unless given.
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self::with_data_text(event_type.into(), JsonText::from_value(&data))
    }

    /// A new event whose data is already-serialized JSON text. The text is checked
    /// when the event is appended; invalid JSON is refused with [`Error::InvalidInput`](crate::Error::InvalidInput).
    pub fn from_json(event_type: impl Into<String>, data_json: impl Into<String>) -> Self {
        Self::with_data_text(event_type.into(), JsonText::from_text(data_json.into()))
    }

    fn with_data_text(event_type: String, data: JsonText) -> Self {
        Event {
            // Version 7 ids are time-ordered, which keeps the unique index on ids compact.
            id: Uuid::now_v7(),
            event_type,
            tags: Vec::new(),
            data,
            metadata: JsonText::empty_object(),
            occurred_at: None,
        }
    }

    /// Adds tags. Tags are a set: a tag already present is not added twice.
    #[must_use]
    pub fn with_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for tag in tags {
            let tag = tag.into();
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        self
    }

    /// Sets the metadata, which must be a JSON object (correlation and causation ids
    /// belong here).
    #[must_use]
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = JsonText::from_value(&metadata);
        self
    }

    /// Sets the metadata from already-serialized JSON text, checked at append.
    #[must_use]
    pub fn with_metadata_json(mut self, metadata_json: impl Into<String>) -> Self {
        self.metadata = JsonText::from_text(metadata_json.into());
        self
    }

    /// Sets the event id. Defaults to a fresh (version 7) UUID.
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets when the event happened, truncated to whole microseconds (what
    /// PostgreSQL stores). Defaults to the time of the append.
    ///
    /// ```
    /// # use dcb_store::Event;
    /// let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456789Z").unwrap();
    /// let e = Event::new("E", serde_json::json!({})).with_occurred_at(at.to_utc());
    /// assert_eq!(e.occurred_at().unwrap().timestamp_subsec_nanos(), 123_456_000);
    /// ```
    #[must_use]
    pub fn with_occurred_at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(timestamp::stored(occurred_at));
        self
    }

    /// The event id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The tags, in the order they were added.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// When the event happened; `None` only for an event not yet appended without one.
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        self.occurred_at
    }

    /// Deserializes the data into `T` (for example `serde_json::Value` or your own type).
    pub fn data<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_str(self.data.as_str())?)
    }

    /// Deserializes the metadata into `T`.
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_str(self.metadata.as_str())?)
    }

    /// The data as JSON text, exactly as stored (jsonb normalizes whitespace and key order).
    pub fn data_json(&self) -> &str {
        self.data.as_str()
    }

    /// The metadata as JSON text.
    pub fn metadata_json(&self) -> &str {
        self.metadata.as_str()
    }

    pub(crate) fn data_text(&self) -> &JsonText {
        &self.data
    }

    pub(crate) fn metadata_text(&self) -> &JsonText {
        &self.metadata
    }

    /// The event's size: type, tags, data and metadata, for the size limits.
    pub(crate) fn size_bytes(&self) -> usize {
        self.event_type.len()
            + self.tags.iter().map(String::len).sum::<usize>()
            + self.data.len()
            + self.metadata.len()
    }

    pub(crate) fn from_stored(
        id: Uuid,
        event_type: String,
        tags: Vec<String>,
        data: JsonText,
        metadata: JsonText,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Event {
            id,
            event_type,
            tags,
            data,
            metadata,
            occurred_at: Some(occurred_at),
        }
    }

    /// `occurred_at`, set to `now` (as stored) when the caller gave none.
    pub(crate) fn occurred_at_or(&mut self, now: DateTime<Utc>) -> DateTime<Utc> {
        *self.occurred_at.get_or_insert(timestamp::stored(now))
    }
}
