//! Validation, in one place: what an append or a query must be for the store to take
//! it (the configured limits, and everything PostgreSQL would refuse), checked before
//! anything reaches the database. Messages say where (`event 2: tag 0 is empty`).
//! What `jsonb` accepts lives with the JSON text (`json.rs`), what `timestamptz`
//! accepts with the timestamps (`timestamp.rs`); this file applies them.

use chrono::{DateTime, Utc};

use super::timestamp;
use super::{AppendCondition, Event, Query, QueryItem, Tracking};
use crate::error::{Error, Result};

/// The longest type or tag any store accepts (`max_name_bytes` may not exceed it):
/// a B-tree entry holds at most 2704 bytes, and `(tag, position)` and
/// `(event_type, position)` entries add up to 20 bytes of header, length and position
/// to the name. Incompressible names longer than this would make PostgreSQL refuse
/// the whole batch they travel in.
pub const MAX_NAME_BYTES: usize = 2_048;

/// The limits input must keep to; set from [`Config`](crate::Config).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_event_bytes: usize,
    pub max_tags: usize,
    pub max_name_bytes: usize,
    /// An append must fit in one batch.
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_query_items: usize,
    pub max_item_types: usize,
    pub max_item_tags: usize,
    pub max_item_data_pairs: usize,
}

/// Checks an append and fixes its events' `occurred_at` (the append's time, as
/// stored, where none was given), so that the planner and the database see the same
/// events.
pub(crate) fn prepare_append(
    events: &mut [Event],
    condition: Option<&AppendCondition>,
    tracking: Option<&Tracking>,
    limits: &Limits,
) -> Result<()> {
    if let Some(tracking) = tracking {
        validate_consumer_name(&tracking.consumer)?;
        if tracking.position == 0 || i64::try_from(tracking.position).is_err() {
            return Err(Error::invalid(format!(
                "tracked position {} is not a position (1 to 2^63 - 1)",
                tracking.position
            )));
        }
    } else if events.is_empty() {
        return Err(Error::invalid(
            "an append needs at least one event (or tracking, to move a checkpoint only)",
        ));
    }
    // Every append fits in one batch, so the caps hold for every batch.
    if events.len() > limits.max_batch_events {
        return Err(Error::invalid(format!(
            "{} events, more than one batch holds (max_batch_events {})",
            events.len(),
            limits.max_batch_events
        )));
    }
    let now = Utc::now();
    let mut ids = std::collections::HashSet::with_capacity(events.len());
    for (i, event) in events.iter_mut().enumerate() {
        prepare_event(event, &format!("event {i}"), limits, now)?;
        if !ids.insert(event.id()) {
            return Err(Error::invalid(format!(
                "event {i}: id {} appears twice in this append",
                event.id()
            )));
        }
    }
    let bytes: usize = events.iter().map(Event::size_bytes).sum();
    if bytes > limits.max_batch_bytes {
        return Err(Error::invalid(format!(
            "{bytes} bytes of events, more than one batch holds (max_batch_bytes {})",
            limits.max_batch_bytes
        )));
    }
    if let Some(condition) = condition {
        validate_query(&condition.fail_if_events_match, "condition query", limits)?;
    }
    Ok(())
}

fn prepare_event(event: &mut Event, at: &str, limits: &Limits, now: DateTime<Utc>) -> Result<()> {
    check_name(event.event_type(), &format!("{at}: type"), limits)?;
    if event.tags().len() > limits.max_tags {
        return Err(Error::invalid(format!(
            "{at}: {} tags, more than the limit of {}",
            event.tags().len(),
            limits.max_tags
        )));
    }
    for (i, tag) in event.tags().iter().enumerate() {
        check_name(tag, &format!("{at}: tag {i}"), limits)?;
    }
    let bytes = event.size_bytes();
    if bytes > limits.max_event_bytes {
        return Err(Error::invalid(format!(
            "{at}: type, tags, data and metadata are {bytes} bytes, more than \
             max_event_bytes ({})",
            limits.max_event_bytes
        )));
    }
    event.data_text().validate(&format!("{at}: data"))?;
    event.metadata_text().validate(&format!("{at}: metadata"))?;
    if !event.metadata_text().is_object() {
        return Err(Error::invalid(format!(
            "{at}: metadata must be a JSON object"
        )));
    }
    let occurred_at = event.occurred_at_or(now);
    timestamp::check_range(occurred_at, &format!("{at}: occurred_at"))
}

/// Checks a query of a read or a condition; `what` names it in messages.
pub(crate) fn validate_query(query: &Query, what: &str, limits: &Limits) -> Result<()> {
    if query.items().is_empty() {
        return Err(Error::invalid(format!(
            "{what} has no items; use Query::all() to match every event"
        )));
    }
    if query.items().len() > limits.max_query_items {
        return Err(Error::invalid(format!(
            "{what} has {} items, more than max_query_items ({})",
            query.items().len(),
            limits.max_query_items
        )));
    }
    for (i, item) in query.items().iter().enumerate() {
        validate_item(item, &format!("{what} item {i}"), limits)?;
    }
    Ok(())
}

fn validate_item(item: &QueryItem, what: &str, limits: &Limits) -> Result<()> {
    let pairs = item.data_filter().map_or(&[][..], |f| f.pairs());
    let metadata_pairs = item.metadata_filter().map_or(&[][..], |f| f.pairs());
    for (part, count, (limit_name, limit)) in [
        (
            "types",
            item.type_names().len(),
            ("max_item_types", limits.max_item_types),
        ),
        (
            "tags",
            item.tag_names().len(),
            ("max_item_tags", limits.max_item_tags),
        ),
        (
            "data predicates",
            pairs.len(),
            ("max_item_data_pairs", limits.max_item_data_pairs),
        ),
        (
            "metadata predicates",
            metadata_pairs.len(),
            ("max_item_data_pairs", limits.max_item_data_pairs),
        ),
    ] {
        if count > limit {
            return Err(Error::invalid(format!(
                "{what} has {count} {part}, more than {limit_name} ({limit})"
            )));
        }
    }
    for (i, t) in item.type_names().iter().enumerate() {
        check_name(t, &format!("{what}: type {i}"), limits)?;
    }
    for (i, t) in item.tag_names().iter().enumerate() {
        check_name(t, &format!("{what}: tag {i}"), limits)?;
    }
    for (part, pairs) in [("data", pairs), ("metadata", metadata_pairs)] {
        for (i, (k, v)) in pairs.iter().enumerate() {
            check_name(k, &format!("{what}: {part} key {i}"), limits)?;
            if v.contains('\0') {
                return Err(Error::invalid(format!(
                    "{what}: {part} value {i} contains a NUL character"
                )));
            }
        }
    }
    let (from, until) = item.occurred_range();
    for (name, bound) in [("occurred_from", from), ("occurred_until", until)] {
        if let Some(bound) = bound {
            timestamp::check_range(bound, &format!("{what}: {name}"))?;
        }
    }
    if let (Some(from), Some(until)) = (from, until) {
        if from > until {
            return Err(Error::invalid(format!(
                "{what}: occurred_from {from} is after occurred_until {until}"
            )));
        }
    }
    Ok(())
}

/// Checks a type, tag, or predicate key: not empty, no NUL, within the length limit.
fn check_name(name: &str, what: &str, limits: &Limits) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if name.contains('\0') {
        return Err(Error::invalid(format!(
            "{what} contains a NUL character, which PostgreSQL text cannot store"
        )));
    }
    if name.len() > limits.max_name_bytes {
        return Err(Error::invalid(format!(
            "{what} is {} bytes, more than the limit of {}",
            name.len(),
            limits.max_name_bytes
        )));
    }
    Ok(())
}

/// The longest durable consumer name.
pub(crate) const MAX_CONSUMER_NAME_BYTES: usize = 200;

/// Checks a durable consumer's name: not empty, at most
/// [`MAX_CONSUMER_NAME_BYTES`], no NUL (which `text` cannot hold).
pub(crate) fn validate_consumer_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("consumer name is empty"));
    }
    if name.len() > MAX_CONSUMER_NAME_BYTES {
        return Err(Error::invalid(format!(
            "consumer name is {} bytes, more than {MAX_CONSUMER_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::invalid("consumer name contains a NUL character"));
    }
    Ok(())
}
