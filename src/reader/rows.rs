//! A read's answer from its rows (decoded by `sql::decode_read`): the events, and the
//! head an append condition may use, which a limit or `before` can lower.

use tokio_postgres::Row;

use super::Answer;
use crate::error::Result;
use crate::model::{ReadOptions, ReadResult};
use crate::sql;

/// Turns the rows of a read statement into events, the read's head and the server's
/// head at the statement's snapshot.
pub(crate) fn decode(rows: &[Row], options: &ReadOptions) -> Result<Answer> {
    let (store_head, events) = sql::decode_read(rows)?;
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
