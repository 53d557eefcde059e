//! The append statement, its bind parameters and the rows it returns.

use chrono::{DateTime, Utc};
use postgres_types::ToSql;
use uuid::Uuid;

use postgres_types::Type;

use super::{
    item_probes, item_rows, keys, probe_guards, DeclaredKeys, Identifier, ItemArrays, Probes,
    ITEM_FILTERS,
};
use crate::model::{AppendCondition, Event, JsonText};

/// What the append statement of one round must be able to check: the probes its
/// conditions' items may run and whether any has a data, metadata or time filter.
///
/// The statement is written for its round's shape because PostgreSQL initialises
/// every node of a plan on each execution, run or not: with one statement for every
/// shape, plan start-up was 27 % of the writer backend's CPU for lone unconditional
/// appends (BENCHMARKS.md, *The write path at the physical limit*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct AppendShape {
    probes: Probes,
    filtered: bool,
}

/// The types of the append statement's parameters (see [`AppendParams::as_params`]),
/// given when it is prepared: a shape's text leaves the ones it needs not unused.
pub(crate) const APPEND_TYPES: [Type; 24] = [
    Type::INT4_ARRAY,
    Type::UUID_ARRAY,
    Type::TEXT_ARRAY,
    Type::JSONB_ARRAY,
    Type::JSONB_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    // The thirteen of `ItemArrays::TYPES`.
    Type::JSONB_ARRAY,
    Type::JSONB_ARRAY,
    Type::JSONB_ARRAY,
    Type::JSONB_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT4,
];

/// The append statement for rounds of `shape`: checks every append's event ids and
/// condition against the state before this statement, inserts the events of the
/// appends that pass at consecutive positions after the head, and returns one row
/// per append, decoded by [`AppendRow::decode`]. A retry (every event stored
/// unchanged, as exactly one earlier append: same positions in order,
/// `starts_append` on the first only, and the next stored event starting another
/// append) is recognised before the condition, which its own events may now fail.
/// Tags compare as sets. The entries of every declared key (as `indexed_keys` lists
/// them at the statement's snapshot) are inserted with the events.
///
/// Parameters are parallel arrays (see [`AppendParams`]); `$24` is the number of
/// appends. Only the probes of `shape` are written; an item row whose guard chooses
/// another probe (which [`Probes::of`] rules out) fails its append rather than pass
/// unchecked, so the shape can only ever cost a refusal, never exactness.
pub(crate) fn append_statement(schema: &Identifier, shape: AppendShape) -> String {
    let s = schema.quoted();
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
        let guards = probe_guards();
        let included = |i: &usize| shape.probes.contains(*i);
        let mut violations: Vec<String> = item_probes(&s, "ci.after_pos", &i64::MAX.to_string())
            .into_iter()
            .enumerate()
            .filter(|(i, _)| included(i))
            .map(|(_, (probe, _))| format!("EXISTS (SELECT 1 FROM {probe}{filters})"))
            .collect();
        if (0..guards.len()).any(|i| !included(&i)) {
            let chosen: Vec<String> = (0..guards.len())
                .filter(included)
                .map(|i| format!("({})", guards[i]))
                .collect();
            violations.push(format!("NOT ({})", chosen.join(" OR ")));
        }
        let items = item_rows(&s, 11);
        format!(
            "ci AS (
    SELECT a.append_idx, a.after_pos, i.*
    FROM unnest($9::int4[], $10::int8[]) WITH ORDINALITY AS a(append_idx, after_pos, item)
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
    format!(
        "WITH
head AS (
    SELECT coalesce(max(position), 0) AS p FROM {s}.events
),
ev AS (
    -- k: the event's place in its append (an append's events are adjacent).
    SELECT u.*, u.n - min(u.n) OVER (PARTITION BY u.append_idx) AS k
    FROM unnest($1::int4[], $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::timestamptz[])
        WITH ORDINALITY AS u(append_idx, event_id, event_type, data, metadata, occurred_at, n)
),
ev_tags AS (
    SELECT * FROM unnest($7::int8[], $8::text[]) WITH ORDINALITY AS t(n, tag, ord)
),
{conditions}
ev_tag_lists AS (
    SELECT n, array_agg(tag ORDER BY ord) AS tags FROM ev_tags GROUP BY n
),
stored AS (
    -- Events of the batch whose id is already stored, and whether the stored event is
    -- the same (type, tags, data, metadata). LATERAL ... LIMIT 1 keeps this a
    -- unique-index probe per event: as a join, the generic plan (which guesses 10 input
    -- rows) may hash it against a scan of the whole table.
    SELECT ev.append_idx, ev.event_id, s.position, s.position - ev.k AS start,
           (s.event_type = ev.event_type
            AND s.tags @> coalesce(tl.tags, '{{}}') AND s.tags <@ coalesce(tl.tags, '{{}}')
            AND s.data = ev.data AND s.metadata = ev.metadata
            AND s.starts_append = (ev.k = 0)) AS same
    FROM ev
    CROSS JOIN LATERAL (
        SELECT e.position, e.event_type, e.tags, e.data, e.metadata, e.starts_append
        FROM {s}.events e WHERE e.event_id = ev.event_id LIMIT 1) s
    LEFT JOIN ev_tag_lists tl ON tl.n = ev.n
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
),
dup AS (
    SELECT st.append_idx, min(st.event_id::text)::uuid AS event_id FROM stored st
    WHERE st.append_idx NOT IN (SELECT append_idx FROM replayed)
    GROUP BY st.append_idx
),
accepted AS (
    SELECT ev.*, row_number() OVER (ORDER BY ev.n) AS rn FROM ev
    WHERE ev.append_idx NOT IN (SELECT append_idx FROM failed)
      AND ev.append_idx NOT IN (SELECT append_idx FROM stored)
),
inserted AS (
    INSERT INTO {s}.events (position, event_id, event_type, tags, data, metadata, occurred_at, starts_append)
    SELECT head.p + a.rn, a.event_id, a.event_type, coalesce(tl.tags, '{{}}'), a.data, a.metadata, a.occurred_at, a.k = 0
    FROM accepted a CROSS JOIN head LEFT JOIN ev_tag_lists tl ON tl.n = a.n
    ORDER BY a.rn
),
inserted_tags AS (
    INSERT INTO {s}.event_tags (tag, position)
    SELECT t.tag, head.p + a.rn FROM accepted a CROSS JOIN head JOIN ev_tags t ON t.n = a.n
),
inserted_keys AS (
    INSERT INTO {s}.event_keys (source, key, value, position)
    {key_entries}
)
SELECT r.idx::int4,
       (CASE WHEN r.idx IN (SELECT append_idx FROM replayed) THEN 3
             WHEN r.idx IN (SELECT append_idx FROM dup) THEN 2
             WHEN r.idx IN (SELECT append_idx FROM failed) THEN 1
             ELSE 0 END)::int2,
       coalesce(rp.first_pos, head.p + s.first_rn)::int8,
       coalesce(rp.last_pos, head.p + s.last_rn)::int8,
       d.event_id
FROM generate_series(0, $24::int4 - 1) AS r(idx) CROSS JOIN head
LEFT JOIN (SELECT append_idx, min(rn) AS first_rn, max(rn) AS last_rn
           FROM accepted GROUP BY append_idx) s ON s.append_idx = r.idx
LEFT JOIN replayed rp ON rp.append_idx = r.idx
LEFT JOIN dup d ON d.append_idx = r.idx
ORDER BY r.idx"
    )
}

/// What the append statement decided for one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendStatus {
    /// Written now at `first..=last`.
    Written { first: u64, last: u64 },
    /// The condition matched; nothing written.
    ConditionFailed,
    /// An event id is stored with other content, or not as this one append; the id
    /// when the statement names one.
    DuplicateId(Option<Uuid>),
    /// Stored before, unchanged, as this very append (a retry): its positions.
    Replayed { first: u64, last: u64 },
}

/// One row of the append statement.
pub(crate) struct AppendRow {
    /// The append's index within its round.
    pub index: usize,
    pub status: AppendStatus,
}

impl AppendRow {
    /// Decodes `(append index, status code, first, last, duplicate id)`; the codes
    /// are the statement's: 0 written, 1 condition failed, 2 duplicate id, 3 replayed.
    pub(crate) fn decode(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let index: i32 = row.try_get(0)?;
        let code: i16 = row.try_get(1)?;
        let span = || -> Result<(u64, u64), tokio_postgres::Error> {
            Ok((
                row.try_get::<_, i64>(2)? as u64,
                row.try_get::<_, i64>(3)? as u64,
            ))
        };
        let status = match code {
            0 => {
                let (first, last) = span()?;
                AppendStatus::Written { first, last }
            }
            1 => AppendStatus::ConditionFailed,
            3 => {
                let (first, last) = span()?;
                AppendStatus::Replayed { first, last }
            }
            _ => AppendStatus::DuplicateId(row.try_get(4)?),
        };
        Ok(AppendRow {
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
    tag_event: Vec<i64>,
    tag_value: Vec<&'a str>,
    ci_append: Vec<i32>,
    ci_after: Vec<i64>,
    items: ItemArrays<'a>,
    appends: i32,
}

impl<'a> AppendParams<'a> {
    /// The shape of the statement these parameters need.
    pub(crate) fn shape(&self) -> AppendShape {
        AppendShape {
            probes: self.items.probes(),
            filtered: self.items.filtered(),
        }
    }

    /// Adds one append; appends are numbered in the order they are pushed.
    pub(crate) fn push(
        &mut self,
        events: &'a [Event],
        condition: Option<&'a AppendCondition>,
        keys: &DeclaredKeys,
    ) {
        let idx = self.appends;
        self.appends += 1;
        for event in events {
            self.ev_append.push(idx);
            self.ev_id.push(event.id());
            self.ev_type.push(event.event_type());
            self.ev_data.push(event.data_text());
            self.ev_metadata.push(event.metadata_text());
            // Set by validation before an event reaches a batch.
            self.ev_occurred
                .push(event.occurred_at().unwrap_or_else(Utc::now));
            let n = self.ev_id.len() as i64; // WITH ORDINALITY counts from 1
            for tag in event.tags() {
                self.tag_event.push(n);
                self.tag_value.push(tag);
            }
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

    pub(crate) fn as_params(&self) -> [&(dyn ToSql + Sync); 24] {
        let [data_all, data_any, metadata_all, metadata_any, from, until, probe_source, probe_key, probe_value, type_item, type_value, tag_item, tag_value] =
            self.items.params();
        [
            &self.ev_append,
            &self.ev_id,
            &self.ev_type,
            &self.ev_data,
            &self.ev_metadata,
            &self.ev_occurred,
            &self.tag_event,
            &self.tag_value,
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
            &self.appends,
        ]
    }
}
