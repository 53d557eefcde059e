//! Fills a schema with N events fast (binary COPY), for the read benchmark, and keeps
//! it: a later run with the same N reuses it.
//!
//! Event i (1-based) has type `Type{i % 4}`, tags `entity:{i / 10}` (10 events per
//! entity) and `kind:{i % 7}`, about 200 bytes of data with the string keys `order`
//! (`o{i / 10}`), `customer` (`c{i % 5000}`) and `region` (`r{i / 10}`), and occurred
//! 1 ms after event i - 1 (so 100 consecutive events span 100 ms). The store declares
//! `order` and `customer` as indexed keys; `region` stays undeclared.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use dcb_store::{Config, Error, EventStore};
use futures_util::pin_mut;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

pub fn schema_name(n: u64) -> String {
    format!("bench_read_v2_{n}")
}

pub fn entity_tag(i: u64) -> String {
    format!("entity:{}", i / 10)
}

pub fn event_type(i: u64) -> String {
    format!("Type{}", i % 4)
}

/// The prefilled store's declared indexed keys.
pub const INDEXED_KEYS: [&str; 2] = ["order", "customer"];

pub fn order(i: u64) -> String {
    format!("o{}", i / 10)
}

pub fn region(i: u64) -> String {
    format!("r{}", i / 10)
}

/// When event i occurred.
pub fn occurred_at(i: u64) -> DateTime<Utc> {
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    base + chrono::TimeDelta::milliseconds(i as i64)
}

/// The configuration of the prefilled store of `n` events.
pub fn store_config(config: &Config, n: u64) -> Config {
    config
        .clone()
        .with_schema(schema_name(n))
        .with_indexed_keys(INDEXED_KEYS)
}

const CHUNK: u64 = 50_000;

/// Makes sure `bench_read_<n>` holds exactly events 1..=n.
pub async fn ensure(config: &Config, n: u64) -> Result<(), Error> {
    let schema = schema_name(n);
    let url = config.database_url().ok_or_else(|| {
        Error::Config("bench read needs DATABASE_URL (the prefilled store is kept)".into())
    })?;
    // Creates the schema and tables when missing.
    drop(EventStore::connect(store_config(config, n)).await?);
    let pg = tokio_postgres::Config::from_str(url).map_err(|e| Error::Config(e.to_string()))?;
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    actix::spawn(async move {
        let _ = connection.await;
    });
    let db = Error::from;
    let have: i64 = client
        .query_one(
            &format!("SELECT coalesce(max(position), 0) FROM \"{schema}\".events"),
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if have as u64 == n {
        wait_for_keys(config, n).await?;
        prewarm(&client, &schema).await;
        return Ok(());
    }
    if have != 0 {
        return Err(Error::Config(format!(
            "schema {schema} holds {have} events, not {n}; drop it (DROP SCHEMA {schema} CASCADE) to refill"
        )));
    }
    let progress = ProgressBar::new(n);
    progress.set_style(
        ProgressStyle::with_template("prefill {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(schema.clone());
    let payload = "x".repeat(120);
    let mut start = 1;
    while start <= n {
        let end = (start + CHUNK - 1).min(n);
        let sink = client
            .copy_in(&format!(
                "COPY \"{schema}\".events (position, event_id, event_type, tags, data, metadata, occurred_at) FROM STDIN BINARY"
            ))
            .await
            .map_err(db)?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::UUID,
                Type::TEXT,
                Type::TEXT_ARRAY,
                Type::JSONB,
                Type::JSONB,
                Type::TIMESTAMPTZ,
            ],
        );
        pin_mut!(writer);
        let empty = serde_json::json!({});
        for i in start..=end {
            let data = serde_json::json!({
                "order": order(i), "customer": format!("c{}", i % 5000), "region": region(i),
                "seq": i, "payload": payload
            });
            let tags = vec![entity_tag(i), format!("kind:{}", i % 7)];
            writer
                .as_mut()
                .write(&[
                    &(i as i64),
                    &uuid::Uuid::new_v4(),
                    &event_type(i),
                    &tags,
                    &data,
                    &empty,
                    &occurred_at(i),
                ])
                .await
                .map_err(db)?;
        }
        writer.finish().await.map_err(db)?;
        let sink = client
            .copy_in(&format!(
                "COPY \"{schema}\".event_tags (tag, position) FROM STDIN BINARY"
            ))
            .await
            .map_err(db)?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8]);
        pin_mut!(writer);
        for i in start..=end {
            writer
                .as_mut()
                .write(&[&entity_tag(i), &(i as i64)])
                .await
                .map_err(db)?;
            writer
                .as_mut()
                .write(&[&format!("kind:{}", i % 7), &(i as i64)])
                .await
                .map_err(db)?;
        }
        writer.finish().await.map_err(db)?;
        progress.set_position(end);
        start = end + 1;
    }
    progress.finish_and_clear();
    // The keys were declared on the empty store: drop them, then connecting declares
    // them anew over the copied events and backfills them, as on a store in service.
    EventStore::migrate(&store_config(config, n).with_indexed_keys(Vec::<String>::new())).await?;
    wait_for_keys(config, n).await?;
    // Sets the visibility map (index-only scans) and statistics, as autovacuum would.
    for table in ["events", "event_tags", "event_keys"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE \"{schema}\".{table}"))
            .await
            .map_err(db)?;
    }
    prewarm(&client, &schema).await;
    Ok(())
}

/// Connects with the declared keys and waits until their backfill is done.
async fn wait_for_keys(config: &Config, n: u64) -> Result<(), Error> {
    let store = EventStore::connect(store_config(config, n)).await?;
    let started = std::time::Instant::now();
    loop {
        let keys = store.indexed_keys().await?;
        if keys.iter().all(|k| k.is_ready()) {
            if started.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "indexed keys {:?} backfilled over {n} events in {:.1} s",
                    INDEXED_KEYS,
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Loads the store into shared buffers when `pg_prewarm` is available, so that read
/// latency compares index probes, not cold caches (it only helps when
/// `shared_buffers` can hold the store: see BENCHMARKS.md).
async fn prewarm(client: &tokio_postgres::Client, schema: &str) {
    let sql = format!(
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm;
         SELECT pg_prewarm(c.oid::regclass) FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'i')"
    );
    if let Err(e) = client.batch_execute(&sql).await {
        eprintln!("prewarm skipped: {e}");
    }
}
