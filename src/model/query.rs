//! Queries, append conditions and read options: what to read and when to refuse an append.
//!
//! [`Query::matches`] states the meaning of a query in memory; the SQL built in
//! `crate::sql` must agree with it (the integration tests compare the two).

use chrono::{DateTime, Utc};

use super::event::Event;
use super::json::DataMembers;
use super::timestamp;

/// A query: a list of items, OR'd together. An event matches when any item matches it.
///
/// ```
/// use dcb_store::{Query, QueryItem};
/// let q = Query::new([
///     QueryItem::new().types(["CourseDefined", "StudentSubscribed"]).tags(["course:c1"]),
///     QueryItem::new().types(["StudentSubscribed"]).tags(["student:s1"]),
/// ]);
/// assert_eq!(q.items().len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    items: Vec<QueryItem>,
}

/// One alternative of a query.
///
/// It matches an event when (types is empty or the event's type is one of them) AND
/// every tag of the item is among the event's tags AND the data filter (if any)
/// holds AND the metadata filter (if any) holds AND `occurred_at` is within the range
/// (if any).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryItem {
    types: Vec<String>,
    tags: Vec<String>,
    data: Option<DataFilter>,
    metadata: Option<DataFilter>,
    occurred_from: Option<DateTime<Utc>>,
    occurred_until: Option<DateTime<Utc>>,
}

/// Predicates on the top-level keys of an event's JSON data (or metadata): `key`
/// equals the JSON string `value`. A key that is missing, or holds a non-string, does
/// not match.
#[derive(Clone, Debug, PartialEq)]
pub struct DataFilter {
    pairs: Vec<(String, String)>,
    all: bool,
}

impl DataFilter {
    /// A filter of `pairs` (`None` when there are none).
    fn of<I, K, V>(pairs: I, all: bool) -> Option<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        (!pairs.is_empty()).then_some(DataFilter { pairs, all })
    }

    /// The `(key, value)` pairs.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `true` when every pair must hold, `false` when any one is enough.
    pub fn requires_all(&self) -> bool {
        self.all
    }

    fn matches(&self, members: &DataMembers) -> bool {
        let holds = |(key, value): &(String, String)| members.has(key, value);
        if self.all {
            self.pairs.iter().all(holds)
        } else {
            self.pairs.iter().any(holds)
        }
    }
}

impl Query {
    /// A query of the given items (at least one is needed; see [`Query::all`]).
    pub fn new(items: impl IntoIterator<Item = QueryItem>) -> Self {
        Query {
            items: items.into_iter().collect(),
        }
    }

    /// The query that matches every event.
    pub fn all() -> Self {
        Query {
            items: vec![QueryItem::new()],
        }
    }

    /// The items of this query.
    pub fn items(&self) -> &[QueryItem] {
        &self.items
    }

    /// Whether `event` matches this query (the in-memory meaning of the SQL).
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_view(&MatchView::new(event))
    }

    /// [`Query::matches`] on a view that parses the event's data at most once.
    pub(crate) fn matches_view(&self, view: &MatchView<'_>) -> bool {
        self.items.iter().any(|item| item.matches_view(view))
    }
}

impl QueryItem {
    /// An item that matches every event; narrow it with the methods below.
    pub fn new() -> Self {
        Self::default()
    }

    /// Matches events of any of these types (added to those already given).
    #[must_use]
    pub fn types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for t in types {
            let t = t.into();
            if !self.types.contains(&t) {
                self.types.push(t);
            }
        }
        self
    }

    /// Matches events that carry all of these tags (added to those already given).
    #[must_use]
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for t in tags {
            let t = t.into();
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
        self
    }

    /// Matches events whose data has every `key: "value"` pair (string values only).
    #[must_use]
    pub fn data_all<I, K, V>(self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.with_data_filter(pairs, true)
    }

    /// Matches events whose data has at least one of the `key: "value"` pairs.
    #[must_use]
    pub fn data_any<I, K, V>(self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.with_data_filter(pairs, false)
    }

    fn with_data_filter<I, K, V>(mut self, pairs: I, all: bool) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.data = DataFilter::of(pairs, all);
        self
    }

    /// Matches events whose metadata has every `key: "value"` pair (string values
    /// only), e.g. all events of one correlation id.
    #[must_use]
    pub fn metadata_all<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.metadata = DataFilter::of(pairs, true);
        self
    }

    /// Matches events whose metadata has at least one of the `key: "value"` pairs.
    #[must_use]
    pub fn metadata_any<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.metadata = DataFilter::of(pairs, false);
        self
    }

    /// Matches events that occurred at or after `from`. Stored times are whole
    /// microseconds; a finer `from` is rounded up to the next microsecond, which
    /// selects exactly the same events.
    #[must_use]
    pub fn occurred_from(mut self, from: DateTime<Utc>) -> Self {
        self.occurred_from = Some(timestamp::bound(from));
        self
    }

    /// Matches events that occurred strictly before `until` (rounded up to whole
    /// microseconds like `occurred_from`, selecting exactly the same events).
    #[must_use]
    pub fn occurred_until(mut self, until: DateTime<Utc>) -> Self {
        self.occurred_until = Some(timestamp::bound(until));
        self
    }

    /// The types (empty: any type).
    pub fn type_names(&self) -> &[String] {
        &self.types
    }

    /// The required tags.
    pub fn tag_names(&self) -> &[String] {
        &self.tags
    }

    /// The data filter, if any.
    pub fn data_filter(&self) -> Option<&DataFilter> {
        self.data.as_ref()
    }

    /// The metadata filter, if any.
    pub fn metadata_filter(&self) -> Option<&DataFilter> {
        self.metadata.as_ref()
    }

    /// The `occurred_at` range `[from, until)`; either end may be open.
    pub fn occurred_range(&self) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        (self.occurred_from, self.occurred_until)
    }

    /// Whether the item has an `occurred_at` bound.
    pub(crate) fn has_occurred_range(&self) -> bool {
        self.occurred_from.is_some() || self.occurred_until.is_some()
    }

    /// Whether `event` matches this item.
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_view(&MatchView::new(event))
    }

    /// Whether this item matches every event (no condition of any kind).
    pub(crate) fn matches_everything(&self) -> bool {
        self.types.is_empty()
            && self.tags.is_empty()
            && self.data.is_none()
            && self.metadata.is_none()
            && !self.has_occurred_range()
    }

    /// The one definition of matching; the SQL in `crate::sql` states the same rule.
    pub(crate) fn matches_view(&self, view: &MatchView<'_>) -> bool {
        let event = view.event;
        if !self.types.is_empty() && !self.types.iter().any(|t| t == event.event_type()) {
            return false;
        }
        if !self.tags.iter().all(|t| event.tags().contains(t)) {
            return false;
        }
        if self.has_occurred_range() {
            let Some(at) = event.occurred_at() else {
                return false;
            };
            if self.occurred_from.is_some_and(|from| at < from)
                || self.occurred_until.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        self.data
            .as_ref()
            .is_none_or(|filter| filter.matches(view.data()))
            && self
                .metadata
                .as_ref()
                .is_none_or(|filter| filter.matches(view.metadata()))
    }
}

/// An event as the matcher sees it: its data's and metadata's members are parsed on
/// first use and then kept, so matching one event against many items parses its JSON
/// once.
pub(crate) struct MatchView<'a> {
    event: &'a Event,
    data: std::cell::OnceCell<DataMembers>,
    metadata: std::cell::OnceCell<DataMembers>,
}

impl<'a> MatchView<'a> {
    pub(crate) fn new(event: &'a Event) -> Self {
        MatchView {
            event,
            data: std::cell::OnceCell::new(),
            metadata: std::cell::OnceCell::new(),
        }
    }

    fn data(&self) -> &DataMembers {
        self.data
            .get_or_init(|| DataMembers::of(self.event.data_text()))
    }

    fn metadata(&self) -> &DataMembers {
        self.metadata
            .get_or_init(|| DataMembers::of(self.event.metadata_text()))
    }
}

/// Refuse an append when an event matching `fail_if_events_match` exists at a
/// position greater than `after` (any position when `after` is `None`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AppendCondition {
    /// The query whose matches make the append fail.
    pub fail_if_events_match: Query,
    /// Exclusive lower bound: usually the `head` of the read the decision was based on.
    pub after: Option<u64>,
}

impl AppendCondition {
    /// A condition from a query and the position the decision saw.
    pub fn new(fail_if_events_match: Query, after: Option<u64>) -> Self {
        AppendCondition {
            fail_if_events_match,
            after,
        }
    }

    /// Whether this condition is violated by `event` stored at `position`.
    pub fn is_violated_by(&self, event: &Event, position: u64) -> bool {
        self.after.is_none_or(|after| position > after) && self.fail_if_events_match.matches(event)
    }
}

/// Where an append's events were stored: consecutive positions `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendResult {
    /// Position of the first event of the append.
    pub first_position: u64,
    /// Position of the last event of the append.
    pub last_position: u64,
}

/// The events a read found, and the position to build an append condition from.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReadResult {
    /// Matching events in the requested order.
    pub events: Vec<SequencedEvent>,
    /// Passed as [`AppendCondition::after`], makes the condition exact for what this
    /// read saw: the store's head at the read's snapshot, or the last event returned
    /// when a forward read stopped at its limit. `None` when the store was empty.
    pub head: Option<u64>,
}

use super::event::SequencedEvent;
