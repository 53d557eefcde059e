//! Read rows into events and the read's head: the layout `sql::read_columns` names,
//! decoded in one place.

use tokio_postgres::Row;

use super::Answer;
use crate::error::{Error, Result};
use crate::model::{Event, JsonText, ReadOptions, ReadResult, SequencedEvent};
use crate::sql::read_columns as col;

/// Turns the rows of a read statement into events, the read's head and the server's
/// head at the statement's snapshot.
pub(crate) fn decode(rows: &[Row], options: &ReadOptions) -> Result<Answer> {
    let store_head = rows.first().map_or(0, |r| r.get::<_, i64>(col::HEAD)) as u64;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(position) = row.get::<_, Option<i64>>(col::POSITION) else {
            continue; // nothing matched: the row only carries the head
        };
        let event = Event::from_stored(
            row.try_get(col::EVENT_ID).map_err(Error::db)?,
            row.try_get(col::EVENT_TYPE).map_err(Error::db)?,
            row.try_get(col::TAGS).map_err(Error::db)?,
            row.try_get::<_, JsonText>(col::DATA).map_err(Error::db)?,
            row.try_get::<_, JsonText>(col::METADATA)
                .map_err(Error::db)?,
            row.try_get(col::OCCURRED_AT).map_err(Error::db)?,
        );
        events.push(SequencedEvent {
            position: position as u64,
            event,
            recorded_at: row.try_get(col::RECORDED_AT).map_err(Error::db)?,
        });
    }
    let mut head = store_head;
    if let Some(before) = options.before {
        head = head.min(before.saturating_sub(1));
    }
    let stopped_at_limit = options.limit.is_some_and(|l| events.len() as u64 >= l);
    if stopped_at_limit && !options.backwards {
        // Matching events after the last one returned were not seen; nor anything
        // beyond the store's head (an `after` past it saw nothing up to `after`).
        head = events
            .last()
            .map_or(options.after.unwrap_or(0), |e| e.position)
            .min(store_head);
    }
    Ok(Answer {
        result: ReadResult {
            events,
            head: (head > 0).then_some(head),
        },
        server_head: store_head,
    })
}
