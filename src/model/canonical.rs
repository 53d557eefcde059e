//! The canonical text of a query: one spelling for all the ways of writing the same
//! query (items, types, tags and data pairs in any order or repeated), so that a cache
//! entry or a snapshot keyed by it is shared by equivalent queries and by nothing else.
//!
//! The text is written by hand, not through a serializer whose map order could depend
//! on features enabled elsewhere: snapshots keyed by it outlive the process.

use chrono::SecondsFormat;
use sha2::{Digest, Sha256};

use super::query::{DataFilter, Query, QueryItem};

impl Query {
    /// The canonical text: items sorted and deduplicated, each with its types, tags
    /// and data pairs sorted and deduplicated. A data filter of one pair means the same
    /// whether "any" or "all", and is written as "all".
    pub(crate) fn canonical(&self) -> String {
        let mut items: Vec<String> = self.items().iter().map(canonical_item).collect();
        items.sort_unstable();
        items.dedup();
        format!("[{}]", items.join(","))
    }

    /// A fingerprint of [`Query::canonical`]: SHA-256, in hex.
    pub(crate) fn fingerprint(canonical: &str) -> String {
        let digest = Sha256::digest(canonical.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn canonical_item(item: &QueryItem) -> String {
    let strings = |values: &mut dyn Iterator<Item = &String>| {
        let mut sorted: Vec<&String> = values.collect();
        sorted.sort_unstable();
        sorted.dedup();
        let quoted: Vec<String> = sorted.iter().map(|v| quote(v)).collect();
        format!("[{}]", quoted.join(","))
    };
    let types = strings(&mut item.type_names().iter());
    let tags = strings(&mut item.tag_names().iter());
    let data = canonical_filter(item.data_filter());
    // Written only when present, so queries without one keep their texts (and
    // their snapshots) from before metadata filters existed.
    let metadata = item.metadata_filter().map_or(String::new(), |f| {
        format!(",\"metadata\":{}", canonical_filter(Some(f)))
    });
    let (from, until) = item.occurred_range();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("null".to_owned(), |t| {
            quote(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
        })
    };
    format!(
        "{{\"types\":{types},\"tags\":{tags},\"data\":{data}{metadata},\"from\":{},\"until\":{}}}",
        time(from),
        time(until)
    )
}

fn canonical_filter(filter: Option<&DataFilter>) -> String {
    let Some(filter) = filter else {
        return "null".to_owned();
    };
    let mut pairs: Vec<&(String, String)> = filter.pairs().iter().collect();
    pairs.sort_unstable();
    pairs.dedup();
    let all = filter.requires_all() || pairs.len() == 1;
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("[{},{}]", quote(k), quote(v)))
        .collect();
    format!("{{\"all\":{all},\"pairs\":[{}]}}", pairs.join(","))
}

/// A JSON string literal (escaping as `serde_json` does, which never changes).
fn quote(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_spellings_share_a_text_and_different_values_do_not() {
        let a = Query::new([
            QueryItem::new().types(["A", "B"]).tags(["t:1", "u:2"]),
            QueryItem::new().types(["C"]).data_any([("k", "v")]),
        ]);
        let b = Query::new([
            QueryItem::new().types(["C"]).data_all([("k", "v")]),
            QueryItem::new().tags(["u:2", "t:1"]).types(["B", "A"]),
            QueryItem::new().types(["A", "B"]).tags(["t:1", "u:2"]),
        ]);
        assert_eq!(a.canonical(), b.canonical());
        let other = Query::new([
            QueryItem::new().types(["A", "B"]).tags(["t:1", "u:3"]),
            QueryItem::new().types(["C"]).data_any([("k", "v")]),
        ]);
        assert_ne!(a.canonical(), other.canonical());
        // Two pairs: "any" and "all" differ.
        let any = Query::new([QueryItem::new().data_any([("k", "v"), ("j", "w")])]);
        let all = Query::new([QueryItem::new().data_all([("k", "v"), ("j", "w")])]);
        assert_ne!(any.canonical(), all.canonical());
        // A value that looks like structure stays one value.
        let tricky = Query::new([QueryItem::new().tags(["a\",\"b"])]);
        let split = Query::new([QueryItem::new().tags(["a", "b"])]);
        assert_ne!(tricky.canonical(), split.canonical());
        assert_eq!(Query::fingerprint(&a.canonical()).len(), 64);
    }

    #[test]
    fn metadata_filters_are_part_of_the_text_and_absent_ones_change_nothing() {
        let plain = Query::new([QueryItem::new().types(["A"]).data_all([("k", "v")])]);
        // The text of a query without metadata filters, as snapshots saved before
        // metadata filters existed were keyed.
        assert_eq!(
            plain.canonical(),
            r#"[{"types":["A"],"tags":[],"data":{"all":true,"pairs":[["k","v"]]},"from":null,"until":null}]"#
        );
        let correlated = |id: &str| {
            Query::new([QueryItem::new()
                .types(["A"])
                .data_all([("k", "v")])
                .metadata_all([("correlation_id", id)])])
        };
        assert_ne!(plain.canonical(), correlated("c1").canonical());
        assert_ne!(correlated("c1").canonical(), correlated("c2").canonical());
        // Metadata pairs are not data pairs.
        let as_data = Query::new([QueryItem::new()
            .types(["A"])
            .data_all([("k", "v")])
            .data_all([("correlation_id", "c1")])]);
        assert_ne!(as_data.canonical(), correlated("c1").canonical());
    }
}
