//! What the command-line tests share: their database and fresh schema names.

use std::sync::OnceLock;

use dcb_store::EmbeddedPostgres;

/// The database of these tests (`DATABASE_URL`, or else a throwaway server).
pub fn database_url() -> String {
    static SERVER: OnceLock<(String, Option<EmbeddedPostgres>)> = OnceLock::new();
    SERVER
        .get_or_init(|| EmbeddedPostgres::url_from_env_or_start().expect("a database"))
        .0
        .clone()
}

/// A schema name no other test (or earlier run) uses.
pub fn unique_schema(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("t_{prefix}_{}_{nanos}", std::process::id())
}
