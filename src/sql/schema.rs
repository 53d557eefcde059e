//! Creates and migrates the store's tables in its schema, at connect.
//!
//! Migrations are `.sql` files named by version and object, applied in order in one
//! transaction that holds an advisory lock, so two processes connecting at once
//! neither race on `CREATE SCHEMA` nor apply a step twice. Applied versions are
//! recorded in `<schema>.schema_migrations`; every step is idempotent as well.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::Identifier;
use crate::error::{Error, Result};

/// The migration steps, in order: (version, name, SQL with `{schema}` placeholders).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "table_events",
        include_str!("schema/001_table_events.sql"),
    ),
    (
        2,
        "idx_events_type_position",
        include_str!("schema/002_idx_events_type_position.sql"),
    ),
    (
        3,
        "table_event_tags",
        include_str!("schema/003_table_event_tags.sql"),
    ),
    (
        4,
        "fn_immutable",
        include_str!("schema/004_fn_immutable.sql"),
    ),
    (
        5,
        "col_events_starts_append",
        include_str!("schema/005_col_events_starts_append.sql"),
    ),
    (
        6,
        "table_consumers",
        include_str!("schema/006_table_consumers.sql"),
    ),
    (
        7,
        "table_parked",
        include_str!("schema/007_table_parked.sql"),
    ),
    (
        8,
        "table_snapshots",
        include_str!("schema/008_table_snapshots.sql"),
    ),
    (
        9,
        "table_event_keys",
        include_str!("schema/009_table_event_keys.sql"),
    ),
    (
        10,
        "idx_events_occurred_at",
        include_str!("schema/010_idx_events_occurred_at.sql"),
    ),
];

/// Serialises migrations of all schemas in one database (a constant key).
const MIGRATION_LOCK_KEY: i64 = 0x6463_625f_6d69_6772; // "dcb_migr"

/// Lets `role` use the store in `schema` and nothing more: read and append events, no
/// update, delete or DDL (the immutability triggers hold even for the owner).
pub(crate) async fn grant_application_role(
    client: &Client,
    schema: &Identifier,
    role: &Identifier,
) -> Result<()> {
    client
        .batch_execute(&grant_statements(schema, role))
        .await
        .map_err(Error::db)
}

/// What an application role may do, table by table: the one list that
/// [`EventStore::migrate_with_role`](crate::EventStore::migrate_with_role) grants and
/// the CLI and README describe (a test keeps README in step). Nothing else: no
/// `UPDATE` or `DELETE` of events (triggers refuse those even to the owner), no DDL.
pub const APPLICATION_GRANTS: &[(&str, &str)] = &[
    ("events", "SELECT, INSERT"),
    ("event_tags", "SELECT, INSERT"),
    ("event_keys", "SELECT, INSERT"),
    ("indexed_keys", "SELECT"),
    ("schema_migrations", "SELECT"),
    ("consumers", "SELECT, INSERT, UPDATE, DELETE"),
    ("parked", "SELECT, INSERT, UPDATE, DELETE"),
    ("snapshots", "SELECT, INSERT, UPDATE, DELETE"),
];

/// Revokes everything `role` had on the schema's tables, then grants it
/// [`APPLICATION_GRANTS`] and the use of the schema.
fn grant_statements(schema: &Identifier, role: &Identifier) -> String {
    let s = schema.quoted();
    // Role names reach GRANT as identifiers (it takes no bind parameters).
    let role = role.quoted();
    let mut text = format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {role};
         GRANT USAGE ON SCHEMA {s} TO {role};"
    );
    for (table, privileges) in APPLICATION_GRANTS {
        text.push_str(&format!("\nGRANT {privileges} ON {s}.{table} TO {role};"));
    }
    text
}

/// The latest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings `schema` up to [`SCHEMA_VERSION`]; returns the versions it applied.
/// Refuses a database whose encoding is not UTF8: there, text the store accepts (any
/// Unicode) could be refused by the server's conversion, failing whole batches.
pub(crate) async fn migrate(client: &mut Client, schema: &Identifier) -> Result<Vec<i32>> {
    let encoding: String = client
        .query_typed_one(super::session::SERVER_ENCODING, &[])
        .await
        .map_err(Error::db)?
        .get(0);
    if encoding != "UTF8" {
        return Err(Error::Config(format!(
            "the database's encoding is {encoding}; the store needs a UTF8 database"
        )));
    }
    let s = schema.quoted();
    // Up to date: nothing to lock or create. This is also the path of an application
    // role that may read the schema but not change it.
    let current = client
        .query_typed_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"),
            &[],
        )
        .await;
    if let Ok(row) = current {
        if row.get::<_, i32>(0) == SCHEMA_VERSION {
            return Ok(Vec::new());
        }
    }
    let tx = client.transaction().await.map_err(Error::db)?;
    tx.execute_typed(super::WRITE_LOCK, &[(&MIGRATION_LOCK_KEY, Type::INT8)])
        .await
        .map_err(Error::db)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
             version    int         PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(Error::db)?;
    let applied: Vec<i32> = tx
        .query_typed(&format!("SELECT version FROM {s}.schema_migrations"), &[])
        .await
        .map_err(Error::db)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(newer) = applied.iter().find(|v| **v > SCHEMA_VERSION) {
        return Err(Error::SchemaTooNew {
            schema: schema.as_str().to_owned(),
            version: *newer,
            supported: SCHEMA_VERSION,
        });
    }
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{schema}", &s))
            .await
            .map_err(Error::db)?;
        tx.execute_typed(
            &format!("INSERT INTO {s}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[(version, Type::INT4), (name, Type::TEXT)],
        )
        .await
        .map_err(Error::db)?;
        done.push(*version);
    }
    tx.commit().await.map_err(Error::db)?;
    if !done.is_empty() {
        tracing::info!(schema = schema.as_str(), versions = ?done, "applied schema migrations");
    }
    Ok(done)
}
