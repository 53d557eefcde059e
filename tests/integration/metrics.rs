//! The metrics actor's counts and histograms follow what the store did.

use dcb_store::{AppendCondition, Error, Query, QueryItem, ReadOptions};

use crate::support;

#[actix::test]
async fn metrics_count_appends_events_reads_conflicts_and_bad_input() {
    let store = support::store("metrics").await;
    for _ in 0..3 {
        store
            .append(
                vec![support::event("E", &["m"]), support::event("E", &["m"])],
                None,
            )
            .await
            .unwrap();
    }
    let q = Query::new([QueryItem::new().tags(["m"])]);
    let failed = store
        .append(
            vec![support::event("E", &[])],
            Some(AppendCondition::new(q.clone(), None)),
        )
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed { .. })));
    let bad = store.append(vec![], None).await;
    assert!(matches!(bad, Err(Error::InvalidInput { .. })));
    for _ in 0..5 {
        store.read(&q, ReadOptions::default()).await.unwrap();
    }
    let m = store.metrics().await.unwrap();
    assert_eq!(m.appends, 3);
    assert_eq!(m.appends_failed, 2);
    assert_eq!(m.events_appended, 6);
    assert_eq!(m.conditions_failed, 1);
    assert_eq!(m.invalid_inputs, 1);
    assert_eq!(m.reads, 5);
    assert_eq!(
        m.batches, 4,
        "three writes and the failed condition's transaction"
    );
    assert_eq!(m.dropped_records, 0);
    assert_eq!(m.methods["append"].count, 5);
    assert_eq!(m.methods["read"].count, 5);
    assert_eq!(m.statements["read"].count, 5);
    assert_eq!(m.statements["commit"].count, 4);
    for component in [
        "read.query_building",
        "read.sql_execution",
        "read.result_processing",
        "append.sql_execution",
    ] {
        assert!(m.components[component].count > 0, "{component}");
    }
    let text = m.to_prometheus();
    assert!(text.contains("dcb_appends_total 3"), "{text}");
    assert!(text.contains("dcb_method_latency_ms{method=\"read\",quantile=\"0.99\"}"));
}
