//! Generated events and queries with the edge inputs where memory and SQL could
//! disagree: JSON at the edges of what the store accepts (numbers at f64's ends and
//! below its precision, nesting at serde_json's limit), duplicate and escaped keys,
//! non-object data, unicode, timestamps with
//! nanoseconds (also before 1970), and every query shape.
//!
//! Seeded: a failure prints its seed, and `DCB_SEED=<n>` runs that seed again.

use chrono::{DateTime, TimeDelta, Utc};
use dcb_store::{Event, Query, QueryItem};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub const TYPES: &[&str] = &["A", "B", "C"];
pub const TAGS: &[&str] = &["x", "y", "é", "t\u{1F600}", "z"];
/// The data keys generated events use (stores may declare them as indexed).
pub const KEYS: &[&str] = &["k", "m"];
const VALUES: &[&str] = &["1", "2", "é", "\u{1F600}"];

/// The generator; `seed()` says how to run it again.
pub struct Gen {
    rng: StdRng,
    seed: u64,
    base: DateTime<Utc>,
}

impl Gen {
    /// Seeded from `DCB_SEED` when set, otherwise from the clock.
    pub fn new() -> Gen {
        let seed = std::env::var("DCB_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        Gen {
            rng: StdRng::seed_from_u64(seed),
            seed,
            base: DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456789Z")
                .map(|t| t.to_utc())
                .unwrap_or_default(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from.choose(&mut self.rng).copied().unwrap_or("x")
    }

    fn some<'a>(&mut self, from: &[&'a str], most: usize) -> Vec<&'a str> {
        let n = self.rng.gen_range(0..=most);
        from.choose_multiple(&mut self.rng, n).copied().collect()
    }

    /// A time near a few fixed instants, with nanoseconds.
    pub fn time(&mut self) -> DateTime<Utc> {
        let anchors = [
            0i64,
            1,
            1_000,
            86_400_000_000_000,
            -3_913_000_000_000_000_000,
        ];
        let anchor = anchors[self.rng.gen_range(0..anchors.len())];
        let jitter = self.rng.gen_range(-2_000i64..2_000);
        self.base + TimeDelta::nanoseconds(anchor + jitter)
    }

    /// A JSON value as text, at times at the edges of what the store accepts (within
    /// the two levels `data` may wrap it in).
    fn json_value(&mut self) -> String {
        match self.rng.gen_range(0..10) {
            0 => ["1e308", "-1e308", "5e-324", "1e-400"][self.rng.gen_range(0..4)].to_owned(),
            1 => "-0".to_owned(),
            2 => "123456789012345678901234567890.000000000000000000001".to_owned(),
            3 => format!("{}\"deep\"{}", "[".repeat(125), "]".repeat(125)),
            9 => "-1.7976931348623157e307".to_owned(),
            4 => format!("{{\"k\":{}}}", serde_json::json!(self.pick(VALUES))),
            5 => "null".to_owned(),
            6 => "1".to_owned(),
            _ => serde_json::json!(self.pick(VALUES)).to_string(),
        }
    }

    /// Data as JSON text: usually an object, with duplicate and escaped keys at times.
    fn data(&mut self) -> String {
        match self.rng.gen_range(0..12) {
            0 => format!("[{{\"k\":{}}}]", serde_json::json!(self.pick(VALUES))),
            1 => serde_json::json!(self.pick(VALUES)).to_string(),
            _ => self.object(),
        }
    }

    /// A JSON object, with duplicate and escaped keys at times.
    fn object(&mut self) -> String {
        let members: Vec<String> = (0..self.rng.gen_range(0..5))
            .map(|_| {
                let key = match self.pick(KEYS) {
                    // `\u006b` is `k`: jsonb and the matcher decode it alike.
                    "k" if self.rng.gen_bool(0.2) => "\"\\u006b\"".to_owned(),
                    key => serde_json::json!(key).to_string(),
                };
                format!("{key}:{}", self.json_value())
            })
            .collect();
        format!("{{{}}}", members.join(","))
    }

    /// An event with edge data, tags and an `occurred_at` with nanoseconds.
    pub fn event(&mut self) -> Event {
        let event_type = self.pick(TYPES);
        let data = self.data();
        let tags = self.some(TAGS, 3);
        let mut event = Event::from_json(event_type, data).with_tags(tags);
        if self.rng.gen_bool(0.5) {
            event = event.with_metadata_json(self.object());
        }
        if self.rng.gen_bool(0.8) {
            event = event.with_occurred_at(self.time());
        }
        event
    }

    /// A query of one to three items of every shape, or at times of 9 to 12 (served
    /// by the statement for many items).
    pub fn query(&mut self) -> Query {
        if self.rng.gen_bool(0.05) {
            return Query::all();
        }
        let n = if self.rng.gen_bool(0.1) {
            self.rng.gen_range(9..=12)
        } else {
            self.rng.gen_range(1..=3)
        };
        let items: Vec<QueryItem> = (0..n).map(|_| self.item()).collect();
        Query::new(items)
    }

    /// One or two `(key, value)` predicates.
    fn pairs(&mut self) -> Vec<(&'static str, &'static str)> {
        (0..self.rng.gen_range(1..=2))
            .map(|_| (self.pick(KEYS), self.pick(VALUES)))
            .collect()
    }

    fn item(&mut self) -> QueryItem {
        let mut item = QueryItem::new()
            .types(self.some(TYPES, 2))
            .tags(self.some(TAGS, 2));
        if self.rng.gen_bool(0.4) {
            let pairs = self.pairs();
            item = if self.rng.gen_bool(0.5) {
                item.data_all(pairs)
            } else {
                item.data_any(pairs)
            };
        }
        if self.rng.gen_bool(0.25) {
            let pairs = self.pairs();
            item = if self.rng.gen_bool(0.5) {
                item.metadata_all(pairs)
            } else {
                item.metadata_any(pairs)
            };
        }
        if self.rng.gen_bool(0.3) {
            item = item.occurred_from(self.time());
        }
        if self.rng.gen_bool(0.3) {
            item = item.occurred_until(self.time());
        }
        let (from, until) = item.occurred_range();
        if let (Some(from), Some(until)) = (from, until) {
            if from > until {
                // Refused as invalid; keep the generated queries valid.
                return QueryItem::new()
                    .types(item.type_names().to_vec())
                    .occurred_from(until)
                    .occurred_until(from);
            }
        }
        item
    }
}
