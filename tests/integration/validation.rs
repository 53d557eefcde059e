//! Bad input: each kind is refused with `Error::InvalidInput` before it reaches a
//! batch, the other appends sent alongside still succeed, and nothing else changes.
//! An append the database itself refuses fails alone; its batch's others commit.

use dcb_store::{AppendCondition, Error, Event, EventStore, Query, QueryItem, ReadOptions};
use serde_json::json;

use crate::appends::Stall;
use crate::support;

fn bad_appends() -> Vec<(&'static str, Vec<Event>, Option<AppendCondition>)> {
    let ok = || support::event("Ok", &["ok"]);
    let deep = format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000));
    let dup = uuid::Uuid::new_v4();
    vec![
        ("no events", vec![], None),
        ("empty type", vec![Event::new("", json!({}))], None),
        ("NUL in type", vec![Event::new("a\0b", json!({}))], None),
        ("empty tag", vec![ok().with_tags([""])], None),
        ("NUL in tag", vec![ok().with_tags(["x\0"])], None),
        (
            "NUL in data",
            vec![Event::new("E", json!({"s": "a\u{0}b"}))],
            None,
        ),
        (
            "NUL in a data key",
            vec![Event::new("E", json!({"a\u{0}": 1}))],
            None,
        ),
        (
            "invalid JSON",
            vec![Event::from_json("E", "{not json")],
            None,
        ),
        (
            "trailing garbage",
            vec![Event::from_json("E", "{} {}")],
            None,
        ),
        (
            "unpaired surrogate",
            vec![Event::from_json("E", r#"{"s":"\ud800"}"#)],
            None,
        ),
        (
            "escaped NUL",
            vec![Event::from_json("E", r#"{"s":"\u0000"}"#)],
            None,
        ),
        (
            "non-object metadata",
            vec![ok().with_metadata(json!([1, 2]))],
            None,
        ),
        (
            "invalid metadata",
            vec![ok().with_metadata_json("nope")],
            None,
        ),
        ("too deep", vec![Event::from_json("E", deep)], None),
        (
            "too large",
            vec![Event::new("E", json!({"s": "x".repeat(5_000)}))],
            None,
        ),
        (
            "too many tags",
            vec![ok().with_tags((0..300).map(|i| format!("t{i}")))],
            None,
        ),
        ("huge tag", vec![ok().with_tags(["x".repeat(2_000)])], None),
        (
            "same id twice",
            vec![ok().with_id(dup), ok().with_id(dup)],
            None,
        ),
        (
            "condition without items",
            vec![ok()],
            Some(AppendCondition::new(Query::new([]), None)),
        ),
        (
            "condition with an empty tag",
            vec![ok()],
            Some(AppendCondition::new(
                Query::new([QueryItem::new().tags([""])]),
                None,
            )),
        ),
        (
            "condition with NUL in a type",
            vec![ok()],
            Some(AppendCondition::new(
                Query::new([QueryItem::new().types(["\0"])]),
                None,
            )),
        ),
        (
            "condition with an empty data key",
            vec![ok()],
            Some(AppendCondition::new(
                Query::new([QueryItem::new().data_all([("", "v")])]),
                None,
            )),
        ),
    ]
}

#[actix::test]
async fn every_kind_of_bad_append_is_refused_and_the_good_ones_alongside_succeed() {
    let schema = support::unique_schema("bad");
    let store = EventStore::connect(support::config(&schema).with_max_event_bytes(4_096))
        .await
        .unwrap();
    let mut calls = Vec::new();
    for (i, (what, events, condition)) in bad_appends().into_iter().enumerate() {
        let good = {
            let store = store.clone();
            let tag = format!("good:{i}");
            actix::spawn(async move {
                store
                    .append(vec![support::event("Good", &[&tag])], None)
                    .await
            })
        };
        let bad = {
            let store = store.clone();
            actix::spawn(async move { store.append(events, condition).await })
        };
        calls.push((what, good, bad));
    }
    let count = calls.len();
    for (what, good, bad) in calls {
        good.await
            .unwrap()
            .unwrap_or_else(|e| panic!("good append beside {what}: {e}"));
        match bad.await.unwrap() {
            Err(Error::InvalidInput { reason }) => assert!(!reason.is_empty()),
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    let all = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(all.events.len(), count, "only the good appends are stored");
    assert!(all.events.iter().all(|e| e.event.event_type() == "Good"));
    let m = store.metrics().await.unwrap();
    assert_eq!(m.invalid_inputs, count as u64);
}

#[actix::test]
async fn bad_reads_are_refused_with_invalid_input() {
    let store = support::store("bad_read").await;
    let bad: Vec<(Query, ReadOptions)> = vec![
        (Query::new([]), ReadOptions::default()),
        (
            Query::new([QueryItem::new().tags(["a\0"])]),
            ReadOptions::default(),
        ),
        (
            Query::new([QueryItem::new().types([""])]),
            ReadOptions::default(),
        ),
        (
            Query::new([QueryItem::new().data_any([("k", "v\0")])]),
            ReadOptions::default(),
        ),
        (
            Query::new([QueryItem::new()
                .occurred_from(chrono::Utc::now())
                .occurred_until(chrono::Utc::now() - chrono::Duration::hours(1))]),
            ReadOptions::default(),
        ),
    ];
    for (query, options) in bad {
        let result = store.read(&query, options).await;
        assert!(
            matches!(result, Err(Error::InvalidInput { .. })),
            "{query:?} {options:?}: {result:?}"
        );
    }
    // The store still serves reads.
    assert_eq!(
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .head,
        None
    );
}

#[actix::test]
async fn an_append_the_database_refuses_fails_alone_and_its_batch_commits() {
    let store = support::store("poison").await;
    // A real refusal from the server for one kind of event, which validation cannot know.
    let admin = support::client().await;
    let s = store.config().schema().to_owned();
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION \"{s}\".no_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.event_type = 'Poison' THEN RAISE EXCEPTION 'poison' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER no_poison BEFORE INSERT ON \"{s}\".events FOR EACH ROW EXECUTE FUNCTION \"{s}\".no_poison();"
        ))
        .await
        .unwrap();
    let stall = Stall::start(&store).await;
    let mut calls = Vec::new();
    for i in 0..9 {
        let store = store.clone();
        let kind = if i == 4 { "Poison" } else { "Good" };
        calls.push(actix::spawn(async move {
            store.append(vec![support::event(kind, &["p"])], None).await
        }));
    }
    stall.release().await;
    let results: Vec<_> = support::results(calls).await;
    for (i, r) in results.iter().enumerate() {
        if i == 4 {
            let err = r.as_ref().unwrap_err();
            assert_eq!(
                err.sql_state(),
                Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
                "{err}"
            );
            assert!(!err.may_have_been_written());
        } else {
            assert!(r.is_ok(), "append {i}: {r:?}");
        }
    }
    let stored = store
        .read(
            &Query::new([QueryItem::new().tags(["p"])]),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(stored.events.len(), 8);
    let m = store.metrics().await.unwrap();
    assert!(
        m.database_errors.get("23").copied().unwrap_or(0) >= 1,
        "{m:?}"
    );
}
