//! The fixture: one database server for the whole test binary (`DATABASE_URL` when it
//! is set and reachable, otherwise an embedded throwaway server), and a fresh schema
//! per test so that tests run in parallel without seeing each other.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use dcb_store::{Config, EmbeddedPostgres, Event, EventStore};

struct Server {
    url: String,
    _embedded: Option<EmbeddedPostgres>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The connection string of the test server.
pub fn database_url() -> &'static str {
    &SERVER
        .get_or_init(|| {
            // A static is never dropped: the server's watchdog removes it when we exit.
            let (url, embedded) =
                EmbeddedPostgres::url_from_env_or_start().expect("a database for the tests");
            Server {
                url,
                _embedded: embedded,
            }
        })
        .url
}

/// A schema name no other test (or earlier run) uses.
pub fn unique_schema(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Configuration for a test store on `schema`.
pub fn config(schema: &str) -> Config {
    Config::default()
        .with_database_url(database_url())
        .with_schema(schema)
}

/// A store on a fresh schema of its own.
pub async fn store(prefix: &str) -> EventStore {
    EventStore::connect(config(&unique_schema(prefix)))
        .await
        .expect("connect test store")
}

/// A plain client for checks from outside the store.
pub async fn client() -> tokio_postgres::Client {
    client_for(database_url()).await
}

pub async fn client_for(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    actix::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// An event of `event_type` with `tags` and small data.
pub fn event(event_type: &str, tags: &[&str]) -> Event {
    Event::new(event_type, serde_json::json!({ "type": event_type }))
        .with_tags(tags.iter().copied())
}

/// `url` with an `application_name`, so a test can find (and kill) its own backends.
pub fn url_with_application_name(url: &str, name: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// Awaits spawned calls in order; a panicked task fails the test.
pub async fn results<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task panicked"))
        .collect()
}

/// `url` pointing at database `db` instead.
pub fn url_with_database(url: &str, db: &str) -> String {
    let config = <tokio_postgres::Config as std::str::FromStr>::from_str(url).unwrap();
    let mut parts = vec![format!("dbname={db}")];
    parts.extend(target_parts(&config));
    parts.join(" ")
}

fn target_parts(config: &tokio_postgres::Config) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
        parts.push(format!("host={host}"));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    parts
}

/// The test server's host and port (for proxies in front of it).
pub fn server_address() -> (String, u16) {
    let config = <tokio_postgres::Config as std::str::FromStr>::from_str(database_url()).unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// The test server's connection string, but through 127.0.0.1:`port` (a proxy).
pub fn url_via(port: u16) -> String {
    let config = <tokio_postgres::Config as std::str::FromStr>::from_str(database_url()).unwrap();
    let mut parts = vec![
        "host=127.0.0.1".to_owned(),
        format!("port={port}"),
        format!("dbname={}", config.get_dbname().unwrap_or("postgres")),
    ];
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    parts.join(" ")
}

/// Locks `schema`'s events table from outside in `mode` (e.g. `EXCLUSIVE`: appends
/// wait, reads do not) until `COMMIT` on the returned client.
pub async fn lock_events(schema: &str, mode: &str) -> tokio_postgres::Client {
    let client = client().await;
    client
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{schema}\".events IN {mode} MODE"
        ))
        .await
        .unwrap();
    client
}

/// A throwaway server of the test's own (to restart, say).
pub async fn throwaway_server() -> std::sync::Arc<EmbeddedPostgres> {
    let server = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .expect("start task")
        .expect("start a throwaway server");
    std::sync::Arc::new(server)
}

/// `url` with a server setting for every session (`options=-c name=value`).
pub fn url_with_setting(url: &str, setting: &str) -> String {
    let escaped = setting.replace(' ', "\\ ");
    let options = format!("-c {escaped}");
    if url.contains("://") {
        let encoded: String = options
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options={encoded}")
    } else {
        format!("{url} options='{}'", options.replace('\\', "\\\\"))
    }
}

/// Passes a client's startup message (or cancel request: length-prefixed, no type
/// byte) on to the server, for the tests' wire-protocol proxies; false when either side
/// is gone.
pub async fn pass_startup(
    client: &mut tokio::net::tcp::OwnedReadHalf,
    server: &mut tokio::net::tcp::OwnedWriteHalf,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut len = [0u8; 4];
    if client.read_exact(&mut len).await.is_err() {
        return false;
    }
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    client.read_exact(&mut body).await.is_ok()
        && server.write_all(&len).await.is_ok()
        && server.write_all(&body).await.is_ok()
}
