//! Statements of projection snapshots (table `snapshots`, see `schema/008`).
//!
//! A save only ever moves a snapshot forward: the upsert changes the row only when the
//! new position is greater, so a slow process saving an old state never replaces a
//! newer one.

use tokio_postgres::Row;

use super::Identifier;
use crate::error::{Error, Result};

/// The texts, built once per store for its schema.
pub(crate) struct SnapshotStatements {
    /// `$1` names, `$2` fingerprints (parallel arrays): every version's row of each
    /// key, with the key's index (1-based) first, for the caller to choose from (and to
    /// count the ones of other versions it ignores), and whether the store still holds
    /// the event the snapshot was saved after at its position. Sent unprepared with its
    /// types (one round trip): loads happen on cache misses only.
    pub load: String,
    /// `$1` name, `$2` version, `$3` fingerprint, `$4` canonical query, `$5` position,
    /// `$6` state (JSON text): returns a row only when it stored the snapshot, and then
    /// deletes the rows of older versions of the same name and query (never read again
    /// by a process of this version or newer).
    pub save: String,
    /// `$1` names, `$2` fingerprints (parallel arrays): deletes every version's row of
    /// each key; one row per deleted snapshot.
    pub delete: String,
    /// The store's head (0 when empty): a snapshot may not claim more than exists.
    pub head: String,
    /// `$1` names: those that have any snapshot (sent unprepared, like `load`).
    pub present: String,
}

impl SnapshotStatements {
    pub(crate) fn new(schema: &Identifier) -> Self {
        let s = schema.quoted();
        SnapshotStatements {
            load: format!(
                "SELECT k.i, s.version, s.query, s.position, s.state,
                        s.event_id IS NOT DISTINCT FROM
                            (SELECT e.event_id FROM {s}.events e WHERE e.position = s.position)
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(name, fingerprint, i)
                 JOIN {s}.snapshots s ON s.name = k.name AND s.fingerprint = k.fingerprint"
            ),
            save: format!(
                "WITH saved AS (
                     INSERT INTO {s}.snapshots AS old
                         (name, version, fingerprint, query, position, event_id, state)
                     VALUES ($1, $2, $3, $4, $5,
                             (SELECT e.event_id FROM {s}.events e WHERE e.position = $5), $6)
                     ON CONFLICT (name, fingerprint, version) DO UPDATE
                     SET query = EXCLUDED.query, position = EXCLUDED.position,
                         event_id = EXCLUDED.event_id, state = EXCLUDED.state, saved_at = now()
                     WHERE old.position < EXCLUDED.position
                     RETURNING position),
                 older AS (
                     DELETE FROM {s}.snapshots
                     WHERE name = $1 AND fingerprint = $3 AND version < $2
                       AND EXISTS (SELECT 1 FROM saved))
                 SELECT position FROM saved"
            ),
            delete: format!(
                "DELETE FROM {s}.snapshots s
                 USING unnest($1::text[], $2::text[]) AS k(name, fingerprint)
                 WHERE s.name = k.name AND s.fingerprint = k.fingerprint
                 RETURNING s.version"
            ),
            head: super::head_statement(schema),
            present: format!(
                "SELECT DISTINCT name FROM {s}.snapshots WHERE name = ANY ($1::text[])"
            ),
        }
    }
}

/// A row of the `load` statement: which leaf it answers (1-based), and the stored
/// snapshot's version, canonical query, position and state, and whether its history
/// is the store's (its position is not beyond the head).
pub(crate) struct SnapshotRow {
    pub index: i64,
    pub version: i32,
    pub query: String,
    pub position: i64,
    pub state: String,
    pub same_history: bool,
}

impl SnapshotRow {
    pub(crate) fn decode(row: &Row) -> Result<Self> {
        Ok(SnapshotRow {
            index: row.try_get(0).map_err(Error::db)?,
            version: row.try_get(1).map_err(Error::db)?,
            query: row.try_get(2).map_err(Error::db)?,
            position: row.try_get(3).map_err(Error::db)?,
            state: row.try_get(4).map_err(Error::db)?,
            same_history: row.try_get(5).map_err(Error::db)?,
        })
    }
}

/// The projection names a `present` row set holds.
pub(crate) fn decode_present(rows: &[Row]) -> std::collections::HashSet<String> {
    rows.iter().filter_map(|r| r.try_get(0).ok()).collect()
}
