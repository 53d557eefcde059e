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
    // Each batch of one round is one call of its append function (its own commit).
    assert_eq!(m.statements["append"].count, 4);
    assert!(
        !m.statements.contains_key("commit"),
        "no explicit transaction for batches of one round"
    );
    for component in [
        "read.query_building",
        "read.sql_execution",
        "read.result_processing",
        "append.sql_execution",
    ] {
        assert!(m.components[component].count > 0, "{component}");
    }
    let text = m.to_prometheus();
    check_exposition(&text);
    let scrape = parse(&text);
    let schema = m.schema.as_str();
    assert_eq!(
        value(&scrape, "dcb_appends_total", &[("schema", schema)]),
        3.0
    );
    let read = [("schema", schema), ("method", "read")];
    assert_eq!(
        histogram_count(&scrape, "dcb_method_duration_seconds", &read),
        5.0
    );
    let batches = histogram_count(&scrape, "dcb_batch_appends", &[("schema", schema)]);
    assert_eq!(batches, m.batches as f64);
}

/// Parses the exposition as Prometheus text.
pub fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn find<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> &'a prometheus_parse::Value {
    &scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, name, labels) {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name} is {other:?}"),
    }
}

/// The `+Inf` bucket of a histogram, after checking that its buckets are cumulative.
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let prometheus_parse::Value::Histogram(buckets) = find(scrape, name, labels) else {
        panic!("{name} is not a histogram");
    };
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "{name}: {buckets:?}"
    );
    buckets.last().map_or(0.0, |b| b.count)
}

/// Prometheus's own checker (`promtool check metrics`: syntax and naming conventions)
/// when it is available: `PROMTOOL`, `promtool` on `PATH`, or where `.ci/run` puts it.
pub fn check_exposition(text: &str) {
    let candidates = [
        std::env::var("PROMTOOL").ok(),
        Some("promtool".to_owned()),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/promtool").to_owned()),
    ];
    for promtool in candidates.into_iter().flatten() {
        let Ok(mut child) = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            continue;
        };
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let output = child.wait_with_output().expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool check metrics:\n{}{}\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    eprintln!("promtool not found: the exposition was checked by the parser only");
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn expressions(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => found.push(e.clone()),
                    _ => expressions(v, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, found)),
        _ => {}
    }
}

#[actix::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let store = support::store("dashboard").await;
    store
        .append(vec![support::event("E", &["d"])], None)
        .await
        .unwrap();
    let text = store.metrics().await.unwrap().to_prometheus();
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/dcb-store.json"
    )))
    .unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut queried = std::collections::BTreeSet::new();
    for expr in &exprs {
        for (i, _) in expr.match_indices("dcb_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            queried.insert(name);
        }
    }
    for name in &queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                text.contains(&format!("# TYPE {base} histogram"))
                    .then_some(base)
            })
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which is not exported"
        );
    }
    // And the other way round: the dashboard shows every family the store exports.
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let family = line.split(' ').next().unwrap_or_default();
        assert!(
            queried.iter().any(|q| q.starts_with(family)),
            "{family} is exported but not on the dashboard"
        );
    }
}
