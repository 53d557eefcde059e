//! Declared keys (`Config::with_indexed_keys`, `with_indexed_metadata_keys`): declared
//! at connect (made to match the configuration by `migrate`), backfilled in the
//! background, and their state.
//!
//! Exactness never depends on this module's progress: every read and condition asks
//! the database, in its own statement, whether a key is ready before it probes the
//! key's entries, and filters rows otherwise.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, IsolationLevel};

use crate::base::connect::Connector;
use crate::base::retry::Backoff;
use crate::error::{Error, Result};
use crate::sql::{DeclaredKeys, KeyRow, KeyStatements, DATA, METADATA, WRITE_LOCK};

/// Positions backfilled per transaction: short enough not to hold back vacuum or
/// replication for long, large enough that a 5M-event store backfills in a minute.
const BACKFILL_CHUNK: i64 = 50_000;

/// Pauses before a failed background backfill is tried again: 200 ms, doubling, at
/// most 10 s.
const BACKFILL_AGAIN: Backoff =
    Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));

/// Where a declared key is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// A top-level key of the event's data.
    Data,
    /// A top-level key of the event's metadata.
    Metadata,
}

impl KeySource {
    fn code(self) -> &'static str {
        match self {
            KeySource::Data => DATA,
            KeySource::Metadata => METADATA,
        }
    }
}

/// A declared key and how far its backfill has come.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexedKey {
    /// Data or metadata.
    pub source: KeySource,
    /// The top-level key.
    pub key: String,
    /// Entries exist for every event up to this position of those up to `backfill_to`.
    pub backfilled: u64,
    /// The head when the key was declared: appends write entries for later events.
    pub backfill_to: u64,
}

impl IndexedKey {
    /// Whether reads and conditions probe this key's entries (the backfill is done).
    pub fn is_ready(&self) -> bool {
        self.backfilled >= self.backfill_to
    }
}

/// The store's declared keys.
pub(crate) async fn list(client: &Client, sql: &KeyStatements) -> Result<Vec<IndexedKey>> {
    let rows = client
        .query_typed(&sql.list, &[])
        .await
        .map_err(Error::db)?;
    rows.iter()
        .map(|row| {
            let row = KeyRow::decode(row)?;
            Ok(IndexedKey {
                source: if row.source == METADATA {
                    KeySource::Metadata
                } else {
                    KeySource::Data
                },
                key: row.key,
                backfill_to: row.backfill_to,
                backfilled: row.backfilled,
            })
        })
        .collect()
}

/// Declares the keys of `wanted` the store lacks (to be backfilled) and, with
/// `drop_others`, drops the store's keys `wanted` lacks with their entries: one
/// transaction at READ COMMITTED under the write lock, so the head a declaration records
/// is read after every batch before it committed, and each batch sees either the old set
/// or the new one. Writes nothing when nothing changes (an application role may lack
/// the right to). Returns whether some key needs a backfill.
pub(crate) async fn sync(
    client: &mut Client,
    sql: &KeyStatements,
    write_lock_key: i64,
    wanted: &DeclaredKeys,
    drop_others: bool,
) -> Result<bool> {
    let declared = list(client, sql).await?;
    let wanted = wanted.all();
    let missing: Vec<(&str, &str)> = wanted
        .iter()
        .copied()
        .filter(|&(source, key)| {
            !declared
                .iter()
                .any(|d| d.source.code() == source && d.key == key)
        })
        .collect();
    let unwanted: Vec<(&str, &str)> = declared
        .iter()
        .map(|d| (d.source.code(), d.key.as_str()))
        .filter(|key| drop_others && !wanted.contains(key))
        .collect();
    if !missing.is_empty() || !unwanted.is_empty() {
        // An application role may not change the keys: say what to do instead.
        let refused = |e: tokio_postgres::Error| {
            if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                Error::PermissionDenied {
                    needed: format!(
                        "indexed keys {missing:?} (d: data, m: metadata) are not declared in \
                         this store and this role may not declare them: run `migrate` as the \
                         schema's owner with these keys"
                    ),
                    source: std::sync::Arc::new(e),
                }
            } else {
                Error::db(e)
            }
        };
        let tx = read_committed(client).await?;
        tx.execute_typed(WRITE_LOCK, &[(&write_lock_key, Type::INT8)])
            .await
            .map_err(Error::db)?;
        for (source, key) in &missing {
            tx.execute_typed(&sql.declare, &[(source, Type::TEXT), (key, Type::TEXT)])
                .await
                .map_err(refused)?;
        }
        // Under the write lock, so that no batch writes entries of a dropped key and
        // no declaration of it again can interleave; appends wait meanwhile.
        for (source, key) in &unwanted {
            tx.execute_typed(&sql.undeclare, &[(source, Type::TEXT), (key, Type::TEXT)])
                .await
                .map_err(Error::db)?;
            tx.execute_typed(
                &sql.drop_entries,
                &[(source, Type::TEXT), (key, Type::TEXT)],
            )
            .await
            .map_err(Error::db)?;
        }
        tx.commit().await.map_err(Error::db)?;
        tracing::info!(declared = ?missing, dropped = ?unwanted, "indexed keys changed");
    }
    let pending = !missing.is_empty() || declared.iter().any(|d| !d.is_ready());
    Ok(pending)
}

/// The parameters of the statements on key `(source, key)`'s positions in `(from, to]`.
fn range<'a>(
    source: &'a &str,
    key: &'a String,
    from: &'a i64,
    to: &'a i64,
) -> [(&'a (dyn ToSql + Sync), Type); 4] {
    [
        (source, Type::TEXT),
        (key, Type::TEXT),
        (from, Type::INT8),
        (to, Type::INT8),
    ]
}

async fn read_committed(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(Error::db)
}

/// Backfills every key that is not ready, chunk by chunk, each chunk's progress and
/// entries in one transaction (so a crash loses at most a chunk, done again by the
/// next connect's backfill). The progress is updated first, which locks the key's row
/// until the chunk commits: a drop waits for the chunk (and deletes its entries too),
/// and a chunk after a drop and a new declaration either finds no row or writes every
/// entry it records. Progress moves only from where it stood (`backfilled >= start`).
/// Several processes may backfill at once: entries already present are skipped.
pub(crate) async fn backfill(client: &mut Client, sql: &KeyStatements) -> Result<()> {
    for key in list(client, sql).await? {
        let started = std::time::Instant::now();
        let source = key.source.code();
        let mut done = key.backfilled as i64;
        let to = key.backfill_to as i64;
        while done < to {
            let end = (done + BACKFILL_CHUNK).min(to);
            let tx = read_committed(client).await?;
            let advanced = tx
                .execute_typed(&sql.advance, &range(&source, &key.key, &done, &end))
                .await
                .map_err(Error::db)?;
            if advanced == 0 {
                tracing::info!(
                    key = key.key,
                    "indexed key dropped or declared again; its own backfill covers it"
                );
                break;
            }
            tx.execute_typed(&sql.backfill, &range(&source, &key.key, &done, &end))
                .await
                .map_err(Error::db)?;
            tx.commit().await.map_err(Error::db)?;
            done = end;
        }
        if key.backfilled < key.backfill_to && done >= to {
            tracing::info!(key = key.key, through_position = to, elapsed = ?started.elapsed(), "indexed key backfilled");
        }
    }
    Ok(())
}

/// [`backfill`] in the background, on a connection of its own, tried again after a
/// pause while it fails (until the store stops).
pub(crate) async fn backfill_in_background(connector: Connector, sql: KeyStatements) {
    let mut failures = 0;
    loop {
        let outcome = match connector.dedicated().await {
            Ok(mut client) => backfill(&mut client, &sql).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return,
            Err(e) if e.sql_state() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                tracing::warn!(error = %crate::error::Chain(&e), "this role may not backfill indexed keys: run `migrate` as the schema's owner");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "backfilling indexed keys failed; trying again");
                failures += 1;
                tokio::time::sleep(BACKFILL_AGAIN.after(failures)).await;
            }
        }
    }
}
