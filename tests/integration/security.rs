//! Least privilege, tenant isolation by schema, and secrets kept out of errors.

use dcb_store::{Config, Error, EventStore, Query, QueryItem, ReadOptions};
use tokio_postgres::error::SqlState;

use crate::support;

#[actix::test]
async fn an_application_role_can_read_and_append_but_not_change_anything() {
    let schema = support::unique_schema("priv");
    let role = format!("{schema}_app");
    let admin = support::client().await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    EventStore::migrate_with_role(
        &support::config(&schema).with_indexed_keys(["order"]),
        Some(&role),
    )
    .await
    .unwrap();

    let app_url = support::database_url().replacen("postgres@", &format!("{role}@"), 1);
    let app_url = if app_url.contains("user=") {
        app_url.replace("user=postgres", &format!("user={role}"))
    } else {
        app_url
    };
    // The declared keys are the owner's to change: a role that may not is told so.
    let other_keys = support::config(&schema)
        .with_database_url(&app_url)
        .with_indexed_keys(["customer"]);
    match EventStore::connect(other_keys).await {
        Err(error @ Error::PermissionDenied { .. }) => {
            assert_eq!(
                error.sql_state(),
                Some(&dcb_store::SqlState::INSUFFICIENT_PRIVILEGE)
            );
            assert!(error.to_string().contains("migrate"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let store = EventStore::connect(
        support::config(&schema)
            .with_database_url(&app_url)
            .with_indexed_keys(["order"]),
    )
    .await
    .unwrap();
    // Appends write the declared key's entries, reads probe them.
    store
        .append(
            vec![dcb_store::Event::new("E", serde_json::json!({"order": "o1"})).with_tags(["t"])],
            None,
        )
        .await
        .unwrap();
    let by_order = Query::new([QueryItem::new().data_all([("order", "o1")])]);
    let found = store.read(&by_order, ReadOptions::default()).await.unwrap();
    assert_eq!(found.events.len(), 1);
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
    // Durable consumers work under the role: checkpoints are its to write.
    let options = dcb_store::SubscribeOptions::default().consumer("app-consumer");
    let mut sub = store.subscribe(Query::all(), options).await.unwrap();
    let batch = sub.next().await.unwrap().unwrap();
    sub.ack(batch.scanned_to).await.unwrap();
    assert_eq!(store.checkpoint("app-consumer").await.unwrap(), Some(1));
    drop(sub);
    // Snapshots are the role's to save, replace and delete.
    let seats = crate::decisions::SeatsOf::new("c1", 1);
    assert!(store.save_snapshot(&seats, &1, 1).await.unwrap());
    assert!(store
        .save_snapshot(&crate::decisions::SeatsOf::new("c1", 2), &1, 1)
        .await
        .unwrap());
    assert_eq!(
        store
            .delete_snapshot(&crate::decisions::SeatsOf::new("c1", 2))
            .await
            .unwrap(),
        1
    );

    let app = support::client_for(&app_url).await;
    for sql in [
        format!("UPDATE \"{schema}\".events SET event_type = 'X'"),
        format!("DELETE FROM \"{schema}\".events"),
        format!("TRUNCATE \"{schema}\".events"),
        format!("DROP TABLE \"{schema}\".events"),
        format!("DROP TABLE \"{schema}\".consumers"),
        format!("CREATE TABLE \"{schema}\".sneaky (x int)"),
        format!("ALTER TABLE \"{schema}\".events DISABLE TRIGGER ALL"),
    ] {
        let err = app.batch_execute(&sql).await.expect_err(&sql);
        let code = err.code().cloned();
        assert!(
            code == Some(SqlState::INSUFFICIENT_PRIVILEGE)
                || code == Some(SqlState::RESTRICT_VIOLATION),
            "{sql}: {err:?}"
        );
    }
    drop(store);
    drop(app);
    let _ = admin
        .batch_execute(&format!("REVOKE ALL ON ALL TABLES IN SCHEMA \"{schema}\" FROM {role}; REVOKE ALL ON SCHEMA \"{schema}\" FROM {role}; DROP ROLE {role}"))
        .await;
}

#[actix::test]
async fn one_store_cannot_reach_another_schema_through_any_input() {
    let a = support::store("tenant_a").await;
    let b = support::store("tenant_b").await;
    b.append(vec![support::event("Secret", &["s"])], None)
        .await
        .unwrap();
    let other = b.config().schema().to_owned();
    let hostile = [
        format!("\"{other}\".events"),
        format!("x' UNION SELECT * FROM \"{other}\".events --"),
        format!("'); DELETE FROM \"{other}\".events; --"),
        "$1".to_owned(),
    ];
    for text in &hostile {
        let q = Query::new([QueryItem::new()
            .types([text.as_str()])
            .tags([text.as_str()])
            .data_any([(text.as_str(), text.as_str())])]);
        assert!(a
            .read(&q, ReadOptions::default())
            .await
            .unwrap()
            .events
            .is_empty());
        a.append(vec![support::event(text, &[text.as_str()])], None)
            .await
            .unwrap();
    }
    assert_eq!(
        a.read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .len(),
        hostile.len()
    );
    let secrets = b.read(&Query::all(), ReadOptions::default()).await.unwrap();
    assert_eq!(secrets.events.len(), 1, "the other tenant is untouched");
}

#[actix::test]
async fn passwords_never_appear_in_errors_or_debug_output() {
    let config = Config::default()
        .with_database_url("postgres://app:hunter2-secret@127.0.0.1:1/nowhere")
        .with_schema("s");
    assert!(!format!("{config:?}").contains("hunter2"));
    let error = EventStore::connect(config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(error, Error::Connect(_)), "{error:?}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
    let bad_url =
        Config::default().with_database_url("postgres://app:hunter2-secret@host:notaport/db");
    let error = EventStore::connect(bad_url).await.expect_err("invalid url");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

/// A test CA and a server certificate it signed, for `localhost` and 127.0.0.1.
struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn test_pki(name: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("dcb-store test CA {name}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

#[actix::test]
async fn tls_require_and_verify_full_work_and_a_wrong_root_is_refused() {
    use dcb_store::{EmbeddedPostgres, TlsMode};
    let pki = test_pki("server");
    let (cert, key) = (pki.server_cert_pem.clone(), pki.server_key_pem.clone());
    let server = tokio::task::spawn_blocking(move || EmbeddedPostgres::start_with_tls(&cert, &key))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &pki.ca_pem).unwrap();
    let other_root = dir.path().join("other.pem");
    std::fs::write(&other_root, test_pki("other").ca_pem).unwrap();
    let url = support::url_with_application_name(&server.url(), "tls_test");
    let admin = support::client_for(&server.url()).await;

    for (mode, root) in [(TlsMode::Require, None), (TlsMode::VerifyFull, Some(&root))] {
        let mut config = Config::default()
            .with_database_url(&url)
            .with_schema("tls")
            .with_tls_mode(mode);
        if let Some(root) = root {
            config = config.with_tls_root_cert(root.display().to_string());
        }
        let store = EventStore::connect(config).await.unwrap();
        store
            .append(vec![support::event("E", &["tls"])], None)
            .await
            .unwrap();
        assert!(!store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events
            .is_empty());
        // Every connection of the store is encrypted.
        let row = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tls_test'",
                &[],
            )
            .await
            .unwrap();
        let (all, encrypted): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            all > 0 && all == encrypted,
            "{mode:?}: {encrypted} of {all} connections use TLS"
        );
    }

    let wrong_root = Config::default()
        .with_database_url(&url)
        .with_schema("tls")
        .with_tls_mode(TlsMode::VerifyFull)
        .with_tls_root_cert(other_root.display().to_string());
    let refused = EventStore::connect(wrong_root).await;
    assert!(
        matches!(refused, Err(Error::Connect(_))),
        "{:?}",
        refused.err()
    );
}

#[actix::test]
async fn without_the_temporary_privilege_batches_are_explicit_transactions_and_as_exact() {
    // A database in which roles may not create temporary objects, so the writer
    // cannot define its append functions there.
    let admin = support::client().await;
    let db = support::unique_schema("notemp");
    let role = format!("{db}_app");
    for statement in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let owner_url = support::url_with_database(support::database_url(), &db);
    EventStore::migrate_with_role(
        &support::config("dcb").with_database_url(&owner_url),
        Some(&role),
    )
    .await
    .unwrap();
    let app_url = owner_url.replace("user=postgres", &format!("user={role}"));
    let store = EventStore::connect(support::config("dcb").with_database_url(&app_url))
        .await
        .unwrap();

    let seat = Query::new([QueryItem::new().types(["Seat"]).tags(["seat:1"])]);
    let taken = dcb_store::Event::new("Seat", serde_json::json!({})).with_tags(["seat:1"]);
    let first = store
        .append(
            vec![taken.clone()],
            Some(dcb_store::AppendCondition::new(seat.clone(), None)),
        )
        .await
        .unwrap();
    // The same append again is a retry; another one under the condition is refused.
    let again = store
        .append(
            vec![taken],
            Some(dcb_store::AppendCondition::new(seat.clone(), None)),
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    let other = dcb_store::Event::new("Seat", serde_json::json!({})).with_tags(["seat:1"]);
    let refused = store
        .append(
            vec![other],
            Some(dcb_store::AppendCondition::new(seat, None)),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::ConditionFailed { .. })),
        "{refused:?}"
    );
    let m = store.metrics().await.unwrap();
    assert_eq!(
        m.statements["commit"].count,
        3,
        "every batch was BEGIN ... COMMIT: {:?}",
        m.statements.keys().collect::<Vec<_>>()
    );
    drop(store);
    for statement in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {role}"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
}
