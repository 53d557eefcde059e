//! Schema creation: idempotent, safe when several processes connect at once, and
//! stored events cannot be changed.

use dcb_store::{Error, EventStore, Query, ReadOptions};
use futures_util::future::join_all;
use tokio_postgres::error::SqlState;

use crate::support;

#[actix::test]
async fn stores_connecting_at_once_create_the_schema_exactly_once() {
    let schema = support::unique_schema("schema");
    let stores: Vec<_> = join_all((0..4).map(|_| EventStore::connect(support::config(&schema))))
        .await
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    stores[0]
        .append(vec![support::event("E", &["t"])], None)
        .await
        .unwrap();
    // Connecting again later changes nothing.
    let again = EventStore::connect(support::config(&schema)).await.unwrap();
    assert_eq!(
        again
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
    let applied = EventStore::migrate(&support::config(&schema))
        .await
        .unwrap();
    assert!(applied.is_empty());
    let admin = support::client().await;
    let rows = admin
        .query(
            &format!("SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=dcb_store::SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

#[actix::test]
async fn stored_events_cannot_be_updated_deleted_or_truncated() {
    let store = support::store("immutable").await;
    store
        .append(vec![support::event("E", &["t"])], None)
        .await
        .unwrap();
    let s = store.config().schema().to_owned();
    let admin = support::client().await;
    for sql in [
        format!("UPDATE \"{s}\".events SET event_type = 'X'"),
        format!("DELETE FROM \"{s}\".events"),
        format!("TRUNCATE \"{s}\".events"),
        format!("UPDATE \"{s}\".event_tags SET tag = 'x'"),
        format!("DELETE FROM \"{s}\".event_tags"),
    ] {
        let err = admin.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::RESTRICT_VIOLATION),
            "{sql}: {err}"
        );
    }
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

#[actix::test]
async fn a_schema_name_that_is_not_an_identifier_is_refused() {
    let result = EventStore::connect(support::config("x\"; DROP SCHEMA public; --")).await;
    assert!(matches!(result, Err(dcb_store::Error::Config(_))));
}

#[actix::test]
async fn a_database_that_is_not_utf8_is_refused_at_connect() {
    let admin = support::client().await;
    let db = support::unique_schema("latin1");
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {db} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let url = support::url_with_database(support::database_url(), &db);
    let result = EventStore::connect(support::config("dcb").with_database_url(url)).await;
    assert!(
        matches!(result, Err(Error::Config(_))),
        "{:?}",
        result.err()
    );
    admin
        .batch_execute(&format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}

#[actix::test]
async fn a_schema_migrated_by_a_newer_build_is_refused_with_its_versions() {
    let schema = support::unique_schema("newer");
    drop(EventStore::connect(support::config(&schema)).await.unwrap());
    let newer = dcb_store::SCHEMA_VERSION + 1;
    support::client()
        .await
        .execute(
            &format!(
                "INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, 'future')"
            ),
            &[&newer],
        )
        .await
        .unwrap();
    match EventStore::connect(support::config(&schema)).await {
        Err(Error::SchemaTooNew {
            schema: named,
            version,
            supported,
        }) => {
            assert_eq!(
                (named, version, supported),
                (schema, newer, dcb_store::SCHEMA_VERSION)
            );
        }
        other => panic!("{other:?}"),
    }
}
