//! Range partitioning by position (`docs/scale/partition_by_position.sql`): a store's
//! schema converted in place keeps every event at its position, and the store's
//! unchanged SQL keeps every guarantee on the partitioned tables: positions, conditions,
//! idempotent retries, duplicate ids, reads that agree with `Query::matches`.

use std::time::Duration;

use dcb_store::{
    AppendCondition, AppendResult, Error, Event, EventStore, Query, QueryItem, ReadOptions,
    SequencedEvent,
};
use tokio_postgres::error::SqlState;

use crate::support;

const MIGRATION: &str = include_str!("../../docs/scale/partition_by_position.sql");

/// Partitions of this many positions, so that a few events span several of them.
const PARTITION_SIZE: u64 = 4;

/// The migration for `schema`, with small partitions (2 kept ahead of the head).
fn migration(schema: &str) -> String {
    let sql = MIGRATION.replace("{schema}", &format!("\"{schema}\""));
    let small = sql.replace(
        "VALUES (10000000, 2)",
        &format!("VALUES ({PARTITION_SIZE}, 2)"),
    );
    assert_ne!(sql, small, "the migration's parameter line has changed");
    small
}

fn course(c: &str) -> Query {
    Query::new([QueryItem::new()
        .types(["CourseDefined", "StudentSubscribed"])
        .tags([format!("course:{c}")])])
}

async fn everything(store: &EventStore) -> Vec<SequencedEvent> {
    store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap()
        .events
}

async fn head(store: &EventStore) -> u64 {
    store
        .read(&Query::all(), ReadOptions::default().backwards().limit(1))
        .await
        .unwrap()
        .head
        .unwrap_or(0)
}

#[actix::test]
async fn a_schema_partitioned_by_position_keeps_its_events_and_the_stores_guarantees() {
    let schema = support::unique_schema("partitioned");
    let s = format!("\"{schema}\"");

    // A store with history: appends of three events (so some cross partition boundaries),
    // each conditioned on its course being new, and one that the condition refuses.
    let store = EventStore::connect(support::config(&schema)).await.unwrap();
    let mut appended: Vec<(Vec<Event>, AppendResult)> = Vec::new();
    for c in 0..5 {
        let name = format!("c{c}");
        let tag = format!("course:{name}");
        let events = vec![
            support::event("CourseDefined", &[tag.as_str()]),
            support::event("StudentSubscribed", &[tag.as_str(), "student:s1"]),
            support::event("Note", &[]),
        ];
        let at = store
            .append(
                events.clone(),
                Some(AppendCondition::new(course(&name), None)),
            )
            .await
            .unwrap();
        appended.push((events, at));
    }
    assert!(matches!(
        store
            .append(
                vec![support::event("CourseDefined", &["course:c0"])],
                Some(AppendCondition::new(course("c0"), None)),
            )
            .await,
        Err(Error::ConditionFailed { .. })
    ));
    let before = everything(&store).await;
    assert_eq!(before.len(), 15);
    store.shutdown().await;
    drop(store);

    // The migration, as an operator runs it.
    let admin = support::client().await;
    admin.batch_execute(&migration(&schema)).await.unwrap();
    let kinds: Vec<(String, String, bool)> = admin
        .query(
            "SELECT c.relname::text, c.relkind::text,
                    EXISTS (SELECT 1 FROM pg_partitioned_table p
                            WHERE p.partrelid = c.oid AND p.partstrat = 'r')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname IN ('events', 'event_tags')
             ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("event_tags".to_owned(), "p".to_owned(), true),
            ("events".to_owned(), "p".to_owned(), true),
        ]
    );
    let holding: i64 = admin
        .query_one(
            &format!("SELECT count(DISTINCT tableoid) FROM {s}.events"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holding, 4, "15 events in partitions of {PARTITION_SIZE}");

    // A new store on the same schema: it is up to date, and every event is where it was.
    let store = EventStore::connect(support::config(&schema)).await.unwrap();
    assert!(EventStore::migrate(&support::config(&schema))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(everything(&store).await, before);

    // New appends follow the head; conditions fail exactly when a match lies after `after`.
    let at = store
        .append(
            vec![support::event(
                "StudentSubscribed",
                &["course:c0", "student:s2"],
            )],
            Some(AppendCondition::new(course("c0"), Some(15))),
        )
        .await
        .unwrap();
    assert_eq!((at.first_position, at.last_position), (16, 16));
    for (query, after) in [
        (course("c0"), None),
        (course("c0"), Some(15)),
        (course("c1"), Some(3)), // course c1 is at 4 and 5, across a partition boundary
        (Query::new([QueryItem::new().types(["Note"])]), Some(14)),
    ] {
        let refused = store
            .append(
                vec![support::event("Never", &[])],
                Some(AppendCondition::new(query, after)),
            )
            .await;
        assert!(
            matches!(refused, Err(Error::ConditionFailed { .. })),
            "{after:?}: {refused:?}"
        );
    }
    let at = store
        .append(
            vec![support::event("Note", &[])],
            Some(AppendCondition::new(
                Query::new([QueryItem::new().types(["Note"])]),
                Some(15),
            )),
        )
        .await
        .unwrap();
    assert_eq!(at.first_position, 17);
    store
        .append(
            vec![support::event("CourseDefined", &["course:c9"])],
            Some(AppendCondition::new(course("c9"), None)),
        )
        .await
        .unwrap();

    // Retries (same ids, same content) return the original positions and write nothing,
    // for appends stored before the migration (one across partitions 0 and 1) and after.
    let stored = everything(&store).await.len();
    for (events, at) in &appended {
        assert_eq!(store.append(events.clone(), None).await.unwrap(), *at);
    }
    let note = vec![
        support::event("Note", &["n"]),
        support::event("Note", &["n"]),
    ];
    let first = store.append(note.clone(), None).await.unwrap();
    assert_eq!(store.append(note, None).await.unwrap(), first);
    assert_eq!(everything(&store).await.len(), stored + 2);

    // An id stored before the migration, reused with other content.
    let reused = appended[2].0[1].id();
    let refused = store
        .append(
            vec![
                support::event("Other", &[]),
                support::event("Other", &[]).with_id(reused),
            ],
            None,
        )
        .await;
    assert!(
        matches!(refused, Err(Error::DuplicateEventId { id }) if id == reused),
        "{refused:?}"
    );

    // event_ids holds every id once, and refuses a stored id from a writer that does not
    // look first, under the old constraint's name.
    let (events, ids): (i64, i64) = {
        let row = admin
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {s}.events), (SELECT count(*) FROM {s}.event_ids)"
                ),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((events, ids), (stored as i64 + 2, stored as i64 + 2));
    let next = head(&store).await + 1;
    let err = admin
        .batch_execute(&format!(
            "INSERT INTO {s}.events (position, event_id, event_type, tags, data, metadata, occurred_at)
             SELECT {next}, event_id, 'Copy', '{{}}', '{{}}', '{{}}', now() FROM {s}.events WHERE position = 1"
        ))
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::UNIQUE_VIOLATION);
    assert_eq!(db.constraint(), Some("events_event_id_key"));

    // Stored events stay immutable, partitions included.
    for sql in [
        format!("DELETE FROM {s}.events WHERE position = 1"),
        format!("UPDATE {s}.events_p000001 SET event_type = 'X'"),
        format!("TRUNCATE {s}.events_p000000"),
        format!("TRUNCATE {s}.event_tags_p000000"),
        format!("DELETE FROM {s}.event_ids"),
    ] {
        let err = admin.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(err.code(), Some(&SqlState::RESTRICT_VIOLATION), "{sql}");
    }

    // The script's lock is the writer's: while it is held, appends wait.
    let locker = support::client().await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({s}.write_lock_key())"
        ))
        .await
        .unwrap();
    let waiting = actix::spawn({
        let store = store.clone();
        async move {
            store
                .append(vec![support::event("AfterLock", &[])], None)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the append waits for the write lock"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();

    // Beyond the last partition an append fails and writes nothing (at most 3 partitions
    // of 4 lie ahead of the head, so 30 events do not fit) ...
    let thirty = || -> Vec<Event> { (0..30).map(|_| support::event("Bulk", &["bulk"])).collect() };
    let h = head(&store).await;
    let refused = store.append(thirty(), None).await.unwrap_err();
    assert_eq!(
        refused.sql_state(),
        Some(&SqlState::CHECK_VIOLATION),
        "{refused}"
    );
    assert!(!refused.may_have_been_written());
    assert_eq!(head(&store).await, h);
    // ... until ensure_event_partitions makes room; then it spans several partitions.
    let created: i32 = admin
        .query_one(
            &format!("SELECT {s}.ensure_event_partitions($1)"),
            &[&((h + 30) as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(created >= 5, "created {created}");
    let at = store.append(thirty(), None).await.unwrap();
    assert_eq!((at.first_position, at.last_position), (h + 1, h + 30));
    let created: i32 = admin
        .query_one(&format!("SELECT {s}.ensure_event_partitions()"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(created <= 2, "created {created}");

    // Reads by tag, by type and of everything agree with Query::matches over all that
    // is stored, from the start and after positions (where partitions are pruned).
    let all = everything(&store).await;
    assert!(all.windows(2).all(|w| w[1].position == w[0].position + 1));
    assert_eq!(all.first().map(|e| e.position), Some(1));
    assert_eq!(&all[..before.len()], &before[..]);
    let queries = [
        Query::all(),
        Query::new([QueryItem::new().tags(["course:c1"])]),
        Query::new([QueryItem::new().tags(["course:c2", "student:s1"])]),
        Query::new([QueryItem::new().types(["Note"])]),
        Query::new([QueryItem::new().types(["Bulk"]).tags(["bulk"])]),
        course("c0"),
        Query::new([
            QueryItem::new().types(["CourseDefined"]),
            QueryItem::new().tags(["student:s1"]),
        ]),
    ];
    let last = all.last().map_or(0, |e| e.position);
    for query in &queries {
        for after in [0, 3, 4, 5, 15, 21, last - 7, last] {
            let expected: Vec<&SequencedEvent> = all
                .iter()
                .filter(|e| e.position > after && query.matches(&e.event))
                .collect();
            let read = store
                .read(query, ReadOptions::default().after(after))
                .await
                .unwrap();
            assert_eq!(
                read.events.iter().collect::<Vec<_>>(),
                expected,
                "{query:?} after {after}"
            );
            let newest = store
                .read(
                    query,
                    ReadOptions::default().after(after).backwards().limit(2),
                )
                .await
                .unwrap();
            assert_eq!(
                newest.events.iter().collect::<Vec<_>>(),
                expected.iter().rev().take(2).copied().collect::<Vec<_>>(),
                "{query:?} after {after}, backwards"
            );
        }
    }
}
