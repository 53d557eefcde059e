//! Statements of durable consumers: the lease, checkpoints, delivery attempts and
//! parked events (tables `consumers` and `parked`, see `schema/006` and `007`).
//!
//! Every change a holder makes is guarded by its `generation` (the fencing token it got
//! when it took the consumer over), so a holder that lost its lease without noticing
//! changes nothing: its statements match no row.

use tokio_postgres::Row;

use super::Identifier;
use crate::error::{Error, Result};

/// The texts, built once per store for its schema.
pub(crate) struct ConsumerStatements {
    /// `$1` name: creates the consumer's row if it is new.
    pub ensure: String,
    /// `$1` lock key: the consumer's session lock, without waiting.
    pub try_lock: &'static str,
    /// `$1` name, `$2` holder: the new holder's generation and where to resume.
    pub take_over: String,
    /// `$1` name, `$2` generation, `$3` position: moves the checkpoint forward only.
    pub ack: String,
    /// `$1` name.
    pub checkpoint: String,
    /// `$1` name, `$2` generation, `$3` first position of the batch about to be
    /// delivered: the attempt count, counted before delivery, and the last error.
    pub attempt: String,
    /// `$1` name, `$2` generation, `$3` error.
    pub failed: String,
    /// `$1` name, `$2` generation, `$3` last position to deliver one event at a time.
    pub isolate: String,
    /// `$1` name, `$2` generation: forgets the attempt count.
    pub reset: String,
    /// `$1` name, `$2` generation, `$3` position, `$4` attempts, `$5` error: parks the
    /// event and moves the checkpoint past it, in one statement.
    pub park: String,
    /// `$1` name.
    pub parked: String,
    /// `$1` name, `$2` position.
    pub unpark: String,
    /// `$1` name, `$2` position, `$3` error.
    pub replay_failed: String,
    /// `$1` name, `$2` generation: the checkpoint, when the generation still holds.
    pub held_checkpoint: String,
    /// `$1` name, `$2` generation, `$3` position: a read model's checkpoint moved
    /// forward in its batch's transaction; when the generation no longer holds the
    /// consumer it fails ([`LEASE_LOST_STATE`]), which aborts the transaction, so the
    /// `COMMIT` pipelined behind it rolls back.
    pub commit_checkpoint: String,
    /// `$1` name, `$2` generation, `$3` where to start again: a rebuild's reset of
    /// the checkpoint and the attempts (the parked events go with `unpark_all`).
    pub rebuild: String,
    /// `$1` name: forgets every parked event (a rebuild replays them).
    pub unpark_all: String,
}

impl ConsumerStatements {
    pub(crate) fn new(schema: &Identifier) -> Self {
        let s = schema.quoted();
        ConsumerStatements {
            ensure: format!(
                "INSERT INTO {s}.consumers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
            ),
            try_lock: "SELECT pg_try_advisory_lock($1)",
            take_over: format!(
                "UPDATE {s}.consumers
                 SET generation = generation + 1, holder = $2, acquired_at = now()
                 WHERE name = $1
                 RETURNING generation, checkpoint, isolate_until"
            ),
            ack: format!(
                "UPDATE {s}.consumers SET checkpoint = GREATEST(checkpoint, $3), acked_at = now()
                 WHERE name = $1 AND generation = $2
                 RETURNING checkpoint"
            ),
            checkpoint: checkpoint_statement(schema),
            attempt: format!(
                "UPDATE {s}.consumers
                 SET attempts = CASE WHEN attempt_position = $3 THEN attempts + 1 ELSE 1 END,
                     attempt_position = $3,
                     last_error = CASE WHEN attempt_position = $3 THEN last_error END
                 WHERE name = $1 AND generation = $2
                 RETURNING attempts, last_error, isolate_until"
            ),
            failed: format!(
                "UPDATE {s}.consumers SET last_error = $3 WHERE name = $1 AND generation = $2
                 RETURNING name"
            ),
            reset: format!(
                "UPDATE {s}.consumers SET attempts = 0, last_error = NULL
                 WHERE name = $1 AND generation = $2
                 RETURNING name"
            ),
            isolate: format!(
                "UPDATE {s}.consumers SET isolate_until = $3, attempts = 0, last_error = NULL
                 WHERE name = $1 AND generation = $2
                 RETURNING name"
            ),
            park: format!(
                "WITH moved AS (
                     UPDATE {s}.consumers
                     SET checkpoint = GREATEST(checkpoint, $3), acked_at = now(),
                         attempts = 0, last_error = NULL
                     WHERE name = $1 AND generation = $2
                     RETURNING name)
                 INSERT INTO {s}.parked (consumer, position, attempts, error)
                 SELECT name, $3, $4, $5 FROM moved
                 ON CONFLICT (consumer, position)
                 DO UPDATE SET attempts = EXCLUDED.attempts, error = EXCLUDED.error,
                               parked_at = now()
                 RETURNING position"
            ),
            parked: format!(
                "SELECT position, attempts, error, parked_at FROM {s}.parked
                 WHERE consumer = $1 ORDER BY position"
            ),
            unpark: format!("DELETE FROM {s}.parked WHERE consumer = $1 AND position = $2"),
            replay_failed: format!(
                "UPDATE {s}.parked SET attempts = attempts + 1, error = $3, parked_at = now()
                 WHERE consumer = $1 AND position = $2"
            ),
            commit_checkpoint: format!(
                "WITH moved AS (
                     UPDATE {s}.consumers
                     SET checkpoint = GREATEST(coalesce(checkpoint, 0), $3), acked_at = now()
                     WHERE name = $1 AND generation = $2
                     RETURNING checkpoint)
                 SELECT coalesce((SELECT checkpoint::text FROM moved), 'lease lost')::int8"
            ),
            held_checkpoint: format!(
                "SELECT checkpoint FROM {s}.consumers WHERE name = $1 AND generation = $2"
            ),
            rebuild: format!(
                "UPDATE {s}.consumers
                 SET checkpoint = $3, acked_at = now(), attempts = 0, attempt_position = NULL,
                     isolate_until = NULL, last_error = NULL
                 WHERE name = $1 AND generation = $2
                 RETURNING name"
            ),
            unpark_all: format!("DELETE FROM {s}.parked WHERE consumer = $1"),
        }
    }
}

/// The SQLSTATE of `commit_checkpoint` when the generation no longer holds the consumer
/// (`'lease lost'` is not a number).
pub(crate) const LEASE_LOST_STATE: tokio_postgres::error::SqlState =
    tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION;

/// `$1` name: the consumer's checkpoint (no row: none).
pub(crate) fn checkpoint_statement(schema: &Identifier) -> String {
    format!(
        "SELECT checkpoint FROM {}.consumers WHERE name = $1",
        schema.quoted()
    )
}

/// The session lock that makes one process the holder of consumer `name` in `schema`
/// (FNV-1a, like the write lock: stable across processes). Two names that collide
/// only make their consumers wait for each other; the generation keeps them exact.
pub(crate) fn consumer_lock_key(schema: &Identifier, name: &str) -> i64 {
    super::fnv(&[
        b"dcb-store:consumer:",
        schema.as_str().as_bytes(),
        b"\0",
        name.as_bytes(),
    ])
}

/// What taking a consumer over returns: the new generation, the stored checkpoint and
/// the position up to which events are delivered alone (after a crash mid-batch).
pub(crate) struct TakenOver {
    pub generation: i64,
    pub checkpoint: Option<u64>,
    pub isolate_until: Option<u64>,
}

impl TakenOver {
    pub(crate) fn decode(row: &Row) -> Result<Self> {
        Ok(TakenOver {
            generation: row.try_get(0).map_err(Error::db)?,
            checkpoint: decode_position(row, 1)?,
            isolate_until: decode_position(row, 2)?,
        })
    }
}

/// A delivery attempt counted: attempts so far (this one included) and the previous
/// failed attempt's error.
pub(crate) struct AttemptRow {
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl AttemptRow {
    pub(crate) fn decode(row: &Row) -> Result<Self> {
        Ok(AttemptRow {
            attempts: row.try_get::<_, i32>(0).map_err(Error::db)?.max(0) as u32,
            last_error: row.try_get(1).map_err(Error::db)?,
        })
    }
}

/// A parked event: position, attempts, the last error, when it was parked.
pub(crate) struct ParkedRow {
    pub position: u64,
    pub attempts: u32,
    pub error: String,
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

impl ParkedRow {
    pub(crate) fn decode(row: &Row) -> Result<Self> {
        Ok(ParkedRow {
            position: row.try_get::<_, i64>(0).map_err(Error::db)?.max(0) as u64,
            attempts: row.try_get::<_, i32>(1).map_err(Error::db)?.max(0) as u32,
            error: row.try_get(2).map_err(Error::db)?,
            parked_at: row.try_get(3).map_err(Error::db)?,
        })
    }
}

/// A position as a bind parameter (`bigint`; no position is beyond `i64::MAX`).
pub(crate) fn position_param(p: u64) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

/// The position (a checkpoint) in column `column`, or none.
pub(crate) fn decode_position(row: &Row, column: usize) -> Result<Option<u64>> {
    position_in(row, column).map_err(Error::db)
}

/// The checkpoint of [`checkpoint_statement`]'s row (none: 0), with the driver's error
/// (the writer classifies it).
pub(crate) fn decode_checkpoint(row: &Row) -> std::result::Result<u64, tokio_postgres::Error> {
    Ok(position_in(row, 0)?.unwrap_or(0))
}

fn position_in(
    row: &Row,
    column: usize,
) -> std::result::Result<Option<u64>, tokio_postgres::Error> {
    let position: Option<i64> = row.try_get(column)?;
    Ok(position.map(|p| p.max(0) as u64))
}

/// Whether the lock was taken (`try_lock`'s row).
pub(crate) fn decode_locked(row: &Row) -> Result<bool> {
    row.try_get(0).map_err(Error::db)
}
