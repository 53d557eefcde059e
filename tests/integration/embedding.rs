//! What an application embedding the store can rely on: no silent throwaway
//! database, and configuration files that must exist when named.

use std::time::{Duration, Instant};

use dcb_store::{Config, Error, EventStore};

#[actix::test]
async fn connecting_without_a_database_url_fails_at_once_and_starts_nothing() {
    let started = Instant::now();
    let result = EventStore::connect(Config::default()).await;
    let Err(Error::Config(message)) = result else {
        panic!(
            "expected a configuration error, got {:?}",
            result.map(|_| ())
        );
    };
    assert!(
        message.contains("DATABASE_URL") && message.contains("database_url"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_named_configuration_file_must_exist_unless_defaults_are_asked_for() {
    let missing = std::env::temp_dir().join(format!("dcb-no-such-{}.toml", std::process::id()));
    assert!(matches!(Config::load(&missing), Err(Error::Config(_))));
    let defaults = Config::load_or_default(&missing).unwrap();
    assert_eq!(defaults.schema(), Config::default().schema());
    let shipped = Config::load(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    assert_eq!(shipped.schema(), "dcb");
}

#[actix::test]
async fn ping_goes_through_the_writer_and_a_reader_within_the_timeout() {
    let schema = crate::support::unique_schema("ping");
    let store = EventStore::connect(
        crate::support::config(&schema).with_operation_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    store.ping().await.unwrap();
    // Reads wait behind an exclusive lock: the ping reports it within its deadline.
    let lock = crate::support::lock_events(&schema, "ACCESS EXCLUSIVE").await;
    let started = Instant::now();
    let result = store.ping().await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    lock.batch_execute("COMMIT").await.unwrap();
    store.ping().await.unwrap();
}
