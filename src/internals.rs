//! Internals exposed, with the `internals` feature, for the criterion benchmarks
//! (`benches/`) and the fuzz target (`fuzz/`) only. Not part of the public API:
//! hidden from the docs and free to change.

use std::num::NonZeroUsize;

use tokio_postgres::{Client, Row};

use crate::error::Result;
use crate::model::{AppendCondition, Event, Query, ReadOptions, ReadResult};
use crate::sql::{self, AppendParams, DeclaredKeys, ReadParams, ReadShape};

/// Encodes appends into the append statement's bind parameters, as the writer does
/// for one round; returns the number of parameters (to keep the work observable).
pub fn encode_append_round(appends: &[(Vec<Event>, Option<AppendCondition>)]) -> usize {
    let mut params = AppendParams::default();
    for (events, condition) in appends {
        params.push(events, condition.as_ref(), None, &DeclaredKeys::default());
    }
    params.as_params().len()
}

/// Plans a batch's rounds as the writer does; returns (rounds, appends planned into
/// this batch: the rest would lead the next batch).
pub fn plan_rounds(appends: &[(Vec<Event>, Option<AppendCondition>)]) -> (usize, usize) {
    let appends: Vec<_> = appends
        .iter()
        .map(|(events, condition)| crate::writer::PlannedAppend::new(events, condition.as_ref()))
        .collect();
    let plan = crate::writer::plan_rounds(&appends);
    (plan.rounds.len(), plan.planned)
}

/// A reader's statement cache keyed by query shape, holding a stand-in value.
pub struct ShapeCache(lru::LruCache<ReadShape, u32>);

impl ShapeCache {
    /// A cache of `capacity` shapes.
    pub fn new(capacity: usize) -> Self {
        ShapeCache(lru::LruCache::new(
            NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN),
        ))
    }

    /// Computes the shape of a read and looks it up, inserting it when missing.
    pub fn lookup(&mut self, query: &Query, options: &ReadOptions) -> u32 {
        let shape = ReadShape::of(query, options, &DeclaredKeys::default());
        let next = self.0.len() as u32;
        *self.0.get_or_insert(shape, || next)
    }
}

/// The read statement's text for this query's shape in `schema`.
///
/// # Panics
/// When `schema` is not a plain identifier.
pub fn read_statement(schema: &str, query: &Query, options: &ReadOptions) -> String {
    let shape = ReadShape::of(query, options, &DeclaredKeys::default());
    sql::read_statement(&identifier(schema), &shape)
}

fn identifier(schema: &str) -> sql::Identifier {
    sql::Identifier::parse(schema, "schema").expect("a plain identifier")
}

/// The text of the statement that serves queries of any number of items.
///
/// # Panics
/// When `schema` is not a plain identifier.
pub fn many_items_read_statement(schema: &str, options: &ReadOptions) -> String {
    sql::read_statement(&identifier(schema), &ReadShape::many_items(options))
}

/// Runs the prepared statement for many items on a raw client, whatever the
/// query's size.
pub async fn raw_read_many_items(
    client: &Client,
    statement: &tokio_postgres::Statement,
    query: &Query,
    options: &ReadOptions,
) -> Result<Vec<Row>> {
    let shape = ReadShape::many_items(options);
    let params = ReadParams::new(query, options, &shape, &DeclaredKeys::default());
    Ok(client.query(statement, &params.as_params()).await?)
}

/// Runs a prepared read statement on a raw client with the read's parameters.
pub async fn raw_read(
    client: &Client,
    statement: &tokio_postgres::Statement,
    query: &Query,
    options: &ReadOptions,
) -> Result<Vec<Row>> {
    let keys = DeclaredKeys::default();
    let params = ReadParams::new(query, options, &ReadShape::of(query, options, &keys), &keys);
    Ok(client.query(statement, &params.as_params()).await?)
}

/// Decodes read rows into events and the head, as a reader does.
pub fn decode_rows(rows: &[Row], options: &ReadOptions) -> Result<ReadResult> {
    crate::reader::decode(rows, options).map(|answer| answer.result)
}

/// Validates an append as the writer does, with the default limits.
pub fn validate_append(events: Vec<Event>, condition: Option<AppendCondition>) -> Result<()> {
    let mut append = crate::writer::Append::new(events, condition);
    crate::writer::validate_append(&mut append, &crate::Config::default().limits())
}

/// Validates a read as a reader does, with the default limits.
pub fn validate_read(query: &Query, _options: &ReadOptions) -> Result<()> {
    crate::model::validate_query(query, "query", &crate::Config::default().limits())
}

/// The probe plan's SQL guards, one per access path in order (a condition on an item
/// row `ci` with columns `tags`, `keyed`, `occurred_from`, `occurred_until`, `types`),
/// for the test that they agree with [`probe_access`].
pub fn probe_guards() -> Vec<String> {
    sql::Access::ALL.map(sql::probe::guard).to_vec()
}

/// The probe plan's rule: the index (in [`probe_guards`]' order) through which an item
/// with these parts is read.
pub fn probe_access(
    tags: bool,
    key_pair: bool,
    key_ready: bool,
    bounded_range: bool,
    types: bool,
) -> usize {
    let parts = sql::ItemParts {
        tags,
        key_pair,
        bounded_range,
        types,
    };
    parts.access(key_ready) as usize
}

/// What the test harness's other servers (PgBouncer, pg_auto_failover) need as the
/// throwaway server does: the newest versioned PostgreSQL binaries, a user to run them
/// as when root, a free port.
#[cfg(feature = "embedded")]
pub use crate::embedded::{free_port, unprivileged_user, versioned_binaries};

/// What a test harness (`dcb-store-testkit`) does to a throwaway server.
#[cfg(feature = "embedded")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAction {
    /// Fast shutdown.
    Stop,
    /// Immediate shutdown, as a crash.
    Kill,
    /// Start after a stop or a kill.
    Start,
    /// Promote a replica.
    Promote,
}

/// Does `action` to `server`, blocking until it is done.
#[cfg(feature = "embedded")]
pub fn control_server(server: &crate::EmbeddedPostgres, action: ServerAction) -> Result<()> {
    match action {
        ServerAction::Stop => server.stop(),
        ServerAction::Kill => server.kill(),
        ServerAction::Start => server.start_again(),
        ServerAction::Promote => server.promote(),
    }
}
