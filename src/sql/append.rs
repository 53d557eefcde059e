//! The append statement, its bind parameters and the rows it returns; and the
//! statement that tells a retry from a duplicate for the appends it found stored.
//!
//! Longer than most files because the append statement is written here whole, with the
//! append function and the stored statement, which must agree with its parameters and
//! rows.

use chrono::{DateTime, Utc};
use postgres_types::{ToSql, Type};
use uuid::Uuid;

use super::{
    item_probes, item_rows, keys, probe, Access, DeclaredKeys, Identifier, ItemArrays, Probes,
    ITEM_FILTERS,
};
use crate::model::{AppendCondition, Event, JsonText, Tracking};

/// What the append statement of one round must be able to check: the probes its
/// conditions' items may run and whether any has a data, metadata or time filter.
///
/// The statement is written for its round's shape because PostgreSQL initialises
/// every node of a plan on each execution, run or not: with one statement for every
/// shape, plan start-up was the largest part of the writer backend's CPU for lone
/// unconditional appends (BENCHMARKS.md, *The write path at the physical limit*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct AppendShape {
    probes: Probes,
    filtered: bool,
    /// Whether any append of the round is tracked (moves a consumer's checkpoint),
    /// and whether one of those has no events.
    tracked: TrackingShape,
}

/// What a round's tracked appends need of its statement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) enum TrackingShape {
    /// No tracked append: the statement has no tracking at all.
    #[default]
    None,
    /// Tracked appends, each with events.
    Tracked,
    /// Tracked appends, some without events (their success is a row of its own).
    WithEmpty,
}

impl AppendShape {
    /// The name of this shape's [`append_function`].
    fn function_name(self) -> String {
        format!(
            "dcb_append_{}_{}{}",
            self.probes.bits(),
            u8::from(self.filtered),
            match self.tracked {
                TrackingShape::None => "",
                TrackingShape::Tracked => "_t",
                TrackingShape::WithEmpty => "_te",
            }
        )
    }
}

/// The types of the parameters that describe the events (`$1`..`$10`), all that
/// [`stored_statement`] takes.
pub(crate) const EVENT_TYPES: [Type; 10] = [
    Type::INT4_ARRAY,
    Type::UUID_ARRAY,
    Type::TEXT_ARRAY,
    Type::JSONB_ARRAY,
    Type::JSONB_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::BOOL_ARRAY,
    Type::INT4_ARRAY,
    Type::INT4_ARRAY,
    Type::TEXT_ARRAY,
];

/// The types of the append statement's parameters (see [`AppendParams::as_params`]),
/// given when it is prepared, since a shape's text may leave some unused: the events',
/// the condition items' appends and positions, then [`ItemArrays::TYPES`], then the
/// tracked appends' indexes, consumers and positions (`$26`..`$28`).
pub(crate) fn append_types() -> Vec<Type> {
    let conditions = [Type::INT4_ARRAY, Type::INT8_ARRAY];
    let tracking = [Type::INT4_ARRAY, Type::TEXT_ARRAY, Type::INT8_ARRAY];
    [&EVENT_TYPES[..], &conditions, &ItemArrays::TYPES, &tracking].concat()
}

/// The events of a round as rows `ev`: `$1`..`$9` unnested, in order (`n`); an
/// event's tags are `$10[tag_lo:tag_hi]` (empty when `tag_lo > tag_hi`).
fn event_rows() -> &'static str {
    "SELECT * FROM unnest($1::int4[], $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[],
                          $6::timestamptz[], $7::bool[], $8::int4[], $9::int4[])
        WITH ORDINALITY AS u(append_idx, event_id, event_type, data, metadata, occurred_at,
                             starts, tag_lo, tag_hi, n)"
}

/// The append statement for rounds of `shape`: checks every append's condition and
/// whether any of its event ids is stored, against the state before this statement;
/// inserts the events of the appends that pass at consecutive positions after the
/// head, with their tags and the entries of every declared key (as `indexed_keys`
/// lists them at the statement's snapshot). Returns rows decoded by
/// [`AppendRow::decode`]: the first position of each append written, and the
/// appends refused by their condition or found stored (a retry or a duplicate,
/// which [`stored_statement`] tells apart; a stored id is checked before the
/// condition, which a retry's own events may now fail). An append may appear twice
/// with the same answer.
///
/// Parameters are parallel arrays (see [`AppendParams`]). Only the probes of `shape`
/// are written; an item row whose guard chooses another probe (which [`Probes::of`]
/// rules out) fails its append rather than pass unchecked, so a wrong shape could
/// only ever cost a refusal, never exactness.
pub(crate) fn append_statement(schema: &Identifier, shape: AppendShape) -> String {
    let s = schema.quoted();
    let head = super::head_of(&s);
    let events = event_rows();
    let key_entries = keys::entries(
        "(SELECT head.p + a.rn AS position, a.data, a.metadata FROM accepted a CROSS JOIN head)",
        &format!("{s}.indexed_keys"),
    );
    let conditions = if shape.probes.is_empty() {
        "failed AS (
    SELECT NULL::int4 AS append_idx WHERE false
),"
        .to_owned()
    } else {
        let filters = if shape.filtered { ITEM_FILTERS } else { "" };
        let included = |access: &Access| shape.probes.contains(*access);
        let mut violations: Vec<String> = item_probes(&s, "ci.after_pos", &i64::MAX.to_string())
            .into_iter()
            .zip(Access::ALL)
            .filter(|(_, access)| included(access))
            .map(|((probe, _), _)| format!("EXISTS (SELECT 1 FROM {probe}{filters})"))
            .collect();
        if !Access::ALL.iter().all(included) {
            let chosen: Vec<String> = Access::ALL
                .into_iter()
                .filter(included)
                .map(|access| format!("({})", probe::guard(access)))
                .collect();
            violations.push(format!("NOT ({})", chosen.join(" OR ")));
        }
        let items = item_rows(&s, 13);
        format!(
            "ci AS (
    SELECT a.append_idx, a.after_pos, i.*
    FROM unnest($11::int4[], $12::int8[]) WITH ORDINALITY AS a(append_idx, after_pos, item)
    JOIN ({items}) i USING (item)
),
failed AS (
    -- Each item row runs one of its probes (the others' guards are false).
    SELECT DISTINCT ci.append_idx FROM ci
    WHERE {}
),",
            violations.join("\n       OR ")
        )
    };
    // Tracked appends (only in tracked shapes, so other rounds pay nothing): the
    // upsert moves each consumer's checkpoint when it is below the tracked position.
    // On a conflict, ON CONFLICT locks the row and decides its WHERE on the row as last
    // committed (at READ COMMITTED it follows a row changed after this statement's
    // snapshot: acks and leases do not take the write lock), so the decision is exact.
    // A refused append's row carries no checkpoint: the writer reads it after the
    // commit (refusals are the rare path; a join here cost every tracked append). The
    // planner puts two tracked appends of one consumer in different rounds.
    let (tracking, not_refused, tracked_rows) = match shape.tracked {
        TrackingShape::None => (String::new(), "", String::new()),
        tracked => (
            format!(
                // Without conditions nothing fails: one subplan less per execution.
                "tracking_in AS (
    SELECT * FROM unnest($26::int4[], $27::text[], $28::int8[])
        AS t(append_idx, consumer, position)
    WHERE {unconditioned}t.append_idx NOT IN (SELECT append_idx FROM stored)
),
tracked AS (
    INSERT INTO {s}.consumers AS c (name, checkpoint)
    SELECT consumer, position FROM tracking_in
    ON CONFLICT (name) DO UPDATE SET checkpoint = EXCLUDED.checkpoint
    WHERE c.checkpoint IS NULL OR c.checkpoint < EXCLUDED.checkpoint
    RETURNING c.name
),
tracking_refused AS (
    SELECT append_idx FROM tracking_in WHERE consumer NOT IN (SELECT name FROM tracked)
),",
                unconditioned = if shape.probes.is_empty() {
                    ""
                } else {
                    "t.append_idx NOT IN (SELECT append_idx FROM failed)\n      AND "
                },
            ),
            "\n      AND ev.append_idx NOT IN (SELECT append_idx FROM tracking_refused)",
            format!(
                "
UNION ALL
SELECT r.append_idx::int4, 3::int2, NULL::int8 FROM tracking_refused r{}",
                if tracked == TrackingShape::WithEmpty {
                    "
UNION ALL
-- A tracked append without events: written, as the empty range after the head.
SELECT t.append_idx::int4, 0::int2, head.p + (SELECT count(*) FROM accepted) + 1
FROM tracking_in t CROSS JOIN head
WHERE t.consumer IN (SELECT name FROM tracked)
  AND NOT EXISTS (SELECT 1 FROM ev WHERE ev.append_idx = t.append_idx)"
                } else {
                    ""
                }
            ),
        ),
    };
    format!(
        "WITH
head(p) AS (
    {head}
),
ev AS (
    {events}
),
{conditions}
stored AS (
    -- Appends with an event id already stored: written before (a retry) or a
    -- duplicate, which the writer asks about after the batch. LATERAL ... LIMIT 1
    -- keeps this a unique-index probe per event: as a semi-join, the generic plan
    -- (made once, maybe on an empty table) may hash it against a scan of the table.
    SELECT ev.append_idx FROM ev
    CROSS JOIN LATERAL (
        SELECT 1 FROM {s}.events e WHERE e.event_id = ev.event_id LIMIT 1) s
),
{tracking}
accepted AS (
    SELECT ev.*, row_number() OVER (ORDER BY ev.n) AS rn FROM ev
    WHERE ev.append_idx NOT IN (SELECT append_idx FROM failed)
      AND ev.append_idx NOT IN (SELECT append_idx FROM stored){not_refused}
),
inserted AS (
    INSERT INTO {s}.events (position, event_id, event_type, tags, data, metadata, occurred_at, starts_append)
    SELECT head.p + a.rn, a.event_id, a.event_type, ($10::text[])[a.tag_lo:a.tag_hi], a.data, a.metadata,
           a.occurred_at, a.starts
    FROM accepted a CROSS JOIN head
    ORDER BY a.rn
),
inserted_tags AS (
    INSERT INTO {s}.event_tags (tag, position)
    SELECT t.tag, head.p + a.rn
    FROM accepted a CROSS JOIN head CROSS JOIN LATERAL unnest(($10::text[])[a.tag_lo:a.tag_hi]) AS t(tag)
),
inserted_keys AS (
    INSERT INTO {s}.event_keys (source, key, value, position)
    {key_entries}
)
SELECT a.append_idx::int4, 0::int2, head.p + a.rn FROM accepted a CROSS JOIN head WHERE a.starts
UNION ALL
SELECT st.append_idx::int4, 2::int2, NULL::int8 FROM stored st
UNION ALL
SELECT f.append_idx::int4, 1::int2, NULL::int8 FROM failed f
WHERE f.append_idx NOT IN (SELECT append_idx FROM stored){tracked_rows}"
    )
}

/// The append function of rounds of `shape`: a session-local (`pg_temp`) PL/pgSQL
/// function that takes the schema's write lock in its first statement and runs
/// [`append_statement`] in its second. A volatile function's statements each take a
/// fresh snapshot at READ COMMITTED, so the check sees every commit before the lock,
/// as in the explicit transaction; called on its own ([`append_call`]), the function
/// is the whole transaction (commit at its `Sync`), so a batch of one round is one
/// statement and one answer. Parameters: the append statement's, then the last, the
/// `NOTIFY` channel (`NULL`: none), notified with the head after the inserts.
pub(crate) fn append_function(schema: &Identifier, shape: AppendShape) -> String {
    let parameters: Vec<String> = append_types()
        .iter()
        .map(|t| match t.kind() {
            postgres_types::Kind::Array(element) => format!("{}[]", element.name()),
            _ => t.name().to_owned(),
        })
        .collect();
    format!(
        "CREATE OR REPLACE FUNCTION pg_temp.{name}({parameters}, text)
    RETURNS TABLE (r_append int4, r_status int2, r_first int8)
    LANGUAGE plpgsql VOLATILE AS $dcb_append$
BEGIN
    PERFORM pg_advisory_xact_lock({key});
    RETURN QUERY {statement};
    IF ${channel} IS NOT NULL THEN
        PERFORM pg_notify(${channel}, ({head})::text);
    END IF;
END
$dcb_append$",
        name = shape.function_name(),
        channel = parameters.len() + 1,
        parameters = parameters.join(", "),
        key = super::write_lock_key(schema),
        statement = append_statement(schema, shape),
        head = super::head_statement(schema),
    )
}

/// Calls the append function of `shape` with all its parameters; rows as
/// [`append_statement`]'s.
pub(crate) fn append_call(shape: AppendShape) -> String {
    let arguments: Vec<String> = (1..=append_types().len() + 1)
        .map(|i| format!("${i}"))
        .collect();
    format!(
        "SELECT * FROM pg_temp.{}({})",
        shape.function_name(),
        arguments.join(", ")
    )
}

/// The types of [`append_call`]'s parameters.
pub(crate) fn append_call_types() -> Vec<Type> {
    let mut types = append_types();
    types.push(Type::TEXT);
    types
}

/// For appends the append statement found stored (their events as `$1`..`$10`, as
/// [`AppendParams::event_params`] gives them): whether each was stored unchanged as
/// exactly one earlier append (a retry: every event with the same type, tags as a
/// set, data and metadata, at consecutive positions in order, `starts_append` on the
/// first only, and the next stored event starting another append), and its
/// positions; otherwise the smallest of its event ids that is stored. One row per
/// append, decoded by [`StoredRow::decode`]. Stored events never change, so asking
/// after the batch's commit gives the answer the batch would have.
pub(crate) fn stored_statement(schema: &Identifier) -> String {
    let s = schema.quoted();
    let events = event_rows();
    format!(
        "WITH
ev AS (
    -- k: the event's place in its append (an append's events are adjacent).
    SELECT u.*, u.n - min(u.n) OVER (PARTITION BY u.append_idx) AS k
    FROM ({events}) u
),
stored AS (
    -- LATERAL ... LIMIT 1 keeps this a unique-index probe per event.
    SELECT ev.append_idx, ev.event_id, s.position, s.position - ev.k AS start,
           (s.event_type = ev.event_type
            AND s.tags @> ($10::text[])[ev.tag_lo:ev.tag_hi] AND s.tags <@ ($10::text[])[ev.tag_lo:ev.tag_hi]
            AND s.data = ev.data AND s.metadata = ev.metadata
            AND s.starts_append = (ev.k = 0)) AS same
    FROM ev
    CROSS JOIN LATERAL (
        SELECT e.position, e.event_type, e.tags, e.data, e.metadata, e.starts_append
        FROM {s}.events e WHERE e.event_id = ev.event_id LIMIT 1) s
),
replay_candidates AS (
    -- Every event stored unchanged, at consecutive positions in the append's order.
    SELECT st.append_idx, min(st.position) AS first_pos, max(st.position) AS last_pos
    FROM stored st
    GROUP BY st.append_idx
    HAVING bool_and(st.same) AND count(DISTINCT st.start) = 1
       AND count(*) = (SELECT count(*) FROM ev WHERE ev.append_idx = st.append_idx)
),
replayed AS (
    -- ... and exactly one stored append: the event after the last starts another.
    SELECT c.* FROM replay_candidates c
    WHERE NOT EXISTS (
        SELECT 1 FROM {s}.events e WHERE e.position = c.last_pos + 1 AND NOT e.starts_append)
)
SELECT a.append_idx::int4, rp.first_pos::int8, rp.last_pos::int8, d.event_id
FROM (SELECT DISTINCT append_idx FROM ev) a
LEFT JOIN replayed rp USING (append_idx)
LEFT JOIN (SELECT append_idx, min(event_id::text)::uuid AS event_id FROM stored
           GROUP BY append_idx) d USING (append_idx)"
    )
}

/// What the append statement decided for one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendStatus {
    /// Written now from `first` on (at consecutive positions, one per event).
    Written { first: u64 },
    /// The condition matched; nothing written.
    ConditionFailed,
    /// An event id is stored: a retry or a duplicate ([`stored_statement`] tells);
    /// nothing written.
    Stored,
    /// Tracked, and the consumer's checkpoint was not below the tracked position;
    /// nothing written.
    AlreadyTracked,
}

/// One row of the append statement.
pub(crate) struct AppendRow {
    /// The append's index within its round.
    pub index: usize,
    pub status: AppendStatus,
}

impl AppendRow {
    /// Decodes `(append index, status code, position)`; the codes are the
    /// statement's: 0 written (from the position), 1 condition failed, 2 an event id
    /// stored, 3 already tracked.
    pub(crate) fn decode(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let index: i32 = row.try_get(0)?;
        let code: i16 = row.try_get(1)?;
        let status = match code {
            0 => AppendStatus::Written {
                first: row.try_get::<_, i64>(2)? as u64,
            },
            1 => AppendStatus::ConditionFailed,
            3 => AppendStatus::AlreadyTracked,
            _ => AppendStatus::Stored,
        };
        Ok(AppendRow {
            index: index as usize,
            status,
        })
    }
}

/// What [`stored_statement`] found for one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoredStatus {
    /// Stored before, unchanged, as this very append (a retry): its positions.
    Replayed { first: u64, last: u64 },
    /// An event id is stored with other content, or not as this one append; the id
    /// when the statement names one.
    DuplicateId(Option<Uuid>),
}

/// One row of the stored statement.
pub(crate) struct StoredRow {
    /// The append's index within the appends asked about.
    pub index: usize,
    pub status: StoredStatus,
}

impl StoredRow {
    /// Decodes `(append index, first, last, duplicate id)`: positions when replayed.
    pub(crate) fn decode(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let index: i32 = row.try_get(0)?;
        let first: Option<i64> = row.try_get(1)?;
        let last: Option<i64> = row.try_get(2)?;
        let status = match (first, last) {
            (Some(first), Some(last)) => StoredStatus::Replayed {
                first: first as u64,
                last: last as u64,
            },
            _ => StoredStatus::DuplicateId(row.try_get(3)?),
        };
        Ok(StoredRow {
            index: index as usize,
            status,
        })
    }
}

/// The append statement's bind parameters for one round of a batch, as parallel
/// arrays borrowed from the appends.
#[derive(Default)]
pub(crate) struct AppendParams<'a> {
    ev_append: Vec<i32>,
    ev_id: Vec<Uuid>,
    ev_type: Vec<&'a str>,
    ev_data: Vec<&'a JsonText>,
    ev_metadata: Vec<&'a JsonText>,
    ev_occurred: Vec<DateTime<Utc>>,
    /// Whether the event is its append's first.
    ev_starts: Vec<bool>,
    /// The event's tags: `tag_value[lo - 1..hi]` (one-based, inclusive).
    ev_tag_lo: Vec<i32>,
    ev_tag_hi: Vec<i32>,
    tag_value: Vec<&'a str>,
    ci_append: Vec<i32>,
    ci_after: Vec<i64>,
    items: ItemArrays<'a>,
    tr_append: Vec<i32>,
    tr_consumer: Vec<&'a str>,
    tr_position: Vec<i64>,
    /// Whether a tracked append has no events.
    tracked_empty: bool,
    appends: i32,
}

impl<'a> AppendParams<'a> {
    /// The shape of the statement these parameters need.
    pub(crate) fn shape(&self) -> AppendShape {
        AppendShape {
            probes: self.items.probes(),
            filtered: self.items.filtered(),
            tracked: if self.tr_append.is_empty() {
                TrackingShape::None
            } else if self.tracked_empty {
                TrackingShape::WithEmpty
            } else {
                TrackingShape::Tracked
            },
        }
    }

    /// Adds one append; appends are numbered in the order they are pushed.
    pub(crate) fn push(
        &mut self,
        events: &'a [Event],
        condition: Option<&'a AppendCondition>,
        tracking: Option<&'a Tracking>,
        keys: &DeclaredKeys,
    ) {
        let idx = self.appends;
        self.appends += 1;
        if let Some(tracking) = tracking {
            self.tracked_empty |= events.is_empty();
            self.tr_append.push(idx);
            self.tr_consumer.push(&tracking.consumer);
            // Validation keeps tracked positions within 1..=i64::MAX.
            self.tr_position
                .push(i64::try_from(tracking.position).unwrap_or(i64::MAX));
        }
        for (k, event) in events.iter().enumerate() {
            self.ev_append.push(idx);
            self.ev_id.push(event.id());
            self.ev_type.push(event.event_type());
            self.ev_data.push(event.data_text());
            self.ev_metadata.push(event.metadata_text());
            // Set by validation before an event reaches a batch.
            self.ev_occurred
                .push(event.occurred_at().unwrap_or_else(Utc::now));
            self.ev_starts.push(k == 0);
            self.ev_tag_lo.push(self.tag_value.len() as i32 + 1);
            self.tag_value
                .extend(event.tags().iter().map(String::as_str));
            self.ev_tag_hi.push(self.tag_value.len() as i32);
        }
        let Some(condition) = condition else { return };
        // No position is below 1, so 0 means "any"; none is above i64::MAX either, so
        // a larger `after` means the same as i64::MAX: nothing can fail the condition.
        let after = condition
            .after
            .map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        for item in condition.fail_if_events_match.items() {
            self.ci_append.push(idx);
            self.ci_after.push(after);
            self.items.push(item, keys);
        }
    }

    /// The parameters of the append statement.
    pub(crate) fn as_params(&self) -> [&(dyn ToSql + Sync); 28] {
        let [data_all, data_any, metadata_all, metadata_any, from, until, probe_source, probe_key, probe_value, type_item, type_value, tag_item, tag_value] =
            self.items.params();
        let [e1, e2, e3, e4, e5, e6, e7, e8, e9, e10] = self.event_params();
        [
            e1,
            e2,
            e3,
            e4,
            e5,
            e6,
            e7,
            e8,
            e9,
            e10,
            &self.ci_append,
            &self.ci_after,
            data_all,
            data_any,
            metadata_all,
            metadata_any,
            from,
            until,
            probe_source,
            probe_key,
            probe_value,
            type_item,
            type_value,
            tag_item,
            tag_value,
            &self.tr_append,
            &self.tr_consumer,
            &self.tr_position,
        ]
    }

    /// The parameters describing the events (`$1`..`$10`), all that
    /// [`stored_statement`] takes.
    pub(crate) fn event_params(&self) -> [&(dyn ToSql + Sync); EVENT_TYPES.len()] {
        [
            &self.ev_append,
            &self.ev_id,
            &self.ev_type,
            &self.ev_data,
            &self.ev_metadata,
            &self.ev_occurred,
            &self.ev_starts,
            &self.ev_tag_lo,
            &self.ev_tag_hi,
            &self.tag_value,
        ]
    }
}
