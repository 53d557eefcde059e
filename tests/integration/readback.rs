//! Everything accepted comes back: JSON at the edges of what `serde_json` reads
//! (127 levels of nesting; numbers at `f64`'s ends, in the form `jsonb` gives them
//! back) is accepted in data and metadata and decodes through every accessor (read,
//! subscription, decision); one step beyond is refused up front with
//! `Error::InvalidInput` saying where. The CLI's side is in `cli/tests/shell.rs`.

use std::time::Duration;

use dcb_store::{
    Decided, Error, Event, Projection, Query, QueryItem, ReadOptions, SequencedEvent,
    SubscribeOptions,
};

use crate::support;

fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

/// An object `levels` deep (metadata must be an object).
fn nested_object(levels: usize) -> String {
    format!("{{\"a\":{}}}", nested(levels - 1))
}

/// Decodes every event it folds, recording what failed.
struct Decodes;

impl Projection for Decodes {
    type State = Vec<String>;
    fn name(&self) -> &'static str {
        "decodes"
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new().types(["Edge"])])
    }
    fn initial(&self) -> Vec<String> {
        Vec::new()
    }
    fn apply(&self, failures: &mut Vec<String>, event: &SequencedEvent) {
        if let Err(e) = decodes(event) {
            failures.push(e);
        }
    }
}

fn decodes(event: &SequencedEvent) -> Result<(), String> {
    let at = event.position;
    event
        .event
        .data::<serde_json::Value>()
        .map_err(|e| format!("data at {at}: {e}"))?;
    event
        .event
        .metadata::<serde_json::Value>()
        .map_err(|e| format!("metadata at {at}: {e}"))?;
    Ok(())
}

#[actix::test]
async fn json_at_serde_jsons_limits_reads_back_everywhere_and_beyond_them_is_refused() {
    let store = support::store("readback").await;
    let accepted_data = [
        nested(126),
        nested(127),
        "1e308".to_owned(),
        "-1e308".to_owned(),
        "1.7976931348623157e307".to_owned(),
        "-9.99e307".to_owned(),
        "[5e-324, -5e-324, 1e-400, 2.2250738585072014e-308]".to_owned(),
        format!("1{}", "0".repeat(308)),
    ];
    let refused_data = [
        nested(128),
        nested(129),
        "1e309".to_owned(),
        "-1e309".to_owned(),
        "1e400".to_owned(),
        "-1e400".to_owned(),
        format!("[1, {{\"n\": 1{}}}]", "0".repeat(309)),
    ];
    let accepted_metadata = [
        nested_object(126),
        nested_object(127),
        r#"{"n":1e308}"#.to_owned(),
    ];
    let refused_metadata = [
        nested_object(128),
        nested_object(129),
        r#"{"n":-1e309}"#.to_owned(),
    ];

    let mut events = Vec::new();
    for data in &accepted_data {
        events.push(Event::from_json("Edge", data.clone()));
    }
    for metadata in &accepted_metadata {
        events.push(Event::from_json("Edge", "{}").with_metadata_json(metadata.clone()));
    }
    let mut subscription = store
        .subscribe(
            Query::new([QueryItem::new().types(["Edge"])]),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    for event in &events {
        store.append(vec![event.clone()], None).await.unwrap();
    }
    let refused = refused_data
        .iter()
        .map(|d| ("data", Event::from_json("Edge", d.clone())))
        .chain(refused_metadata.iter().map(|m| {
            (
                "metadata",
                Event::from_json("Edge", "{}").with_metadata_json(m.clone()),
            )
        }));
    for (part, event) in refused {
        match store.append(vec![event], None).await {
            Err(Error::InvalidInput { reason }) => {
                assert!(
                    reason.contains(part) && reason.contains("at byte"),
                    "{reason}"
                );
                assert!(reason.contains("serde_json cannot read back"), "{reason}");
            }
            other => panic!("{part} beyond serde_json's limits: {other:?}"),
        }
    }

    // Read.
    let read = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.events.len(), events.len(), "only the accepted ones");
    for event in &read.events {
        decodes(event).unwrap();
    }
    // Subscription.
    let mut delivered = Vec::new();
    while delivered.len() < events.len() {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        delivered.extend(batch.events);
    }
    for event in &delivered {
        decodes(event).unwrap();
    }
    // Decision: the projection decodes every event it folds.
    let decided = store
        .decide(&Decodes, |failures| {
            assert!(failures.is_empty(), "{failures:?}");
            Err::<Vec<Event>, ()>(())
        })
        .await
        .unwrap();
    assert!(matches!(decided, Decided::Rejected(())));
}
