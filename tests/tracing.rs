//! Spans as OpenTelemetry reads them, captured by a subscriber of the test's own (its
//! own test binary, since a subscriber is process-wide): every append, read and batch
//! span carries the database fields, errors mark the status, and the writer's batch
//! span follows from the span of each append it wrote.

// The integration tests' fixture; this binary uses only part of it.
#[allow(dead_code)]
#[path = "integration/support.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dcb_store::{AppendCondition, Error, Query, QueryItem, ReadOptions};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Clone, Debug, Default)]
struct Captured {
    name: String,
    fields: HashMap<String, String>,
    follows: Vec<u64>,
}

/// Every span of this crate, by id, with its fields and follows-from links.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<HashMap<u64, Captured>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if !attrs.metadata().name().starts_with("dcb.") {
            return;
        }
        let mut span = Captured {
            name: attrs.metadata().name().to_owned(),
            ..Captured::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        self.0.lock().unwrap().insert(id.into_u64(), span);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(span) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, _: Context<'_, S>) {
        if let Some(span) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            span.follows.push(follows.into_u64());
        }
    }
}

#[test]
fn spans_carry_database_fields_and_each_batch_links_to_the_appends_it_wrote() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .expect("the only subscriber of this test binary");
    let system = actix::System::new();
    let schema = support::unique_schema("tracing");
    system.block_on(async {
        let store = dcb_store::EventStore::connect(support::config(&schema))
            .await
            .unwrap();
        let appends: Vec<_> = (0..6)
            .map(|i| {
                let store = store.clone();
                actix::spawn(async move {
                    store
                        .append(vec![support::event("E", &[&format!("t{i}")])], None)
                        .await
                })
            })
            .collect();
        for result in support::results(appends).await {
            result.unwrap();
        }
        store
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap();
        let refused = store
            .append(
                vec![support::event("E", &[])],
                Some(AppendCondition::new(
                    Query::new([QueryItem::new().tags(["t0"])]),
                    None,
                )),
            )
            .await;
        assert!(matches!(refused, Err(Error::ConditionFailed { .. })));
    });
    let spans = capture.0.lock().unwrap().clone();
    let named = |name: &str| -> Vec<(u64, Captured)> {
        spans
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    };
    let (appends, batches, reads) = (named("dcb.append"), named("dcb.batch"), named("dcb.read"));
    assert_eq!(appends.len(), 7, "{spans:?}");
    assert!(!batches.is_empty() && !reads.is_empty());
    for (_, span) in appends.iter().chain(&batches).chain(&reads) {
        assert_eq!(span.fields["db.system"], "postgresql", "{span:?}");
        assert_eq!(span.fields["db.namespace"], schema, "{span:?}");
        assert!(span.fields.contains_key("db.operation.name"), "{span:?}");
    }
    for (id, append) in &appends {
        assert!(
            batches.iter().any(|(_, batch)| batch.follows.contains(id)),
            "no batch follows from {append:?}"
        );
    }
    let failed: Vec<_> = appends
        .iter()
        .filter(|(_, s)| s.fields.get("otel.status_code").map(String::as_str) == Some("ERROR"))
        .collect();
    assert_eq!(failed.len(), 1, "{appends:?}");
    assert_eq!(failed[0].1.fields["error.type"], "condition_failed");
}
