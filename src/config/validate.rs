//! Checking settings: every value `connect` will use, once, with errors that name the
//! key; and hiding passwords in what is shown.

use super::Config;
use crate::error::{Error, Result};
use crate::model::{Limits, MAX_NAME_BYTES};
use crate::sql::{DeclaredKeys, Identifier, MAX_INDEXED_KEYS, MAX_INDEXED_KEY_BYTES};

/// What validation produces: the settings that needed parsing or assembling, in the
/// form the store runs with, so nothing is parsed twice.
pub(crate) struct Checked {
    /// The schema name as statement text may hold it.
    pub schema: Identifier,
    /// Input limits, batch caps included.
    pub limits: Limits,
    /// The declared indexed keys.
    pub keys: DeclaredKeys,
}

impl Config {
    /// Checks every setting; [`EventStore::connect`](crate::EventStore::connect) calls it.
    ///
    /// # Errors
    /// [`Error::Config`], naming the key, for the first setting that cannot work.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(|_| ())
    }

    /// [`Config::validate`], keeping what it parsed.
    pub(crate) fn checked(&self) -> Result<Checked> {
        let schema = Identifier::parse(&self.schema, "schema")?;
        let positive = [
            ("readers", self.readers),
            ("pool_size", self.pool_size as usize),
            ("max_batch_events", self.max_batch_events),
            ("max_batch_bytes", self.max_batch_bytes),
            ("writer_mailbox", self.writer_mailbox),
            ("reader_mailbox", self.reader_mailbox),
            ("reader_max_in_flight", self.reader_max_in_flight),
            ("operation_timeout_ms", self.operation_timeout_ms as usize),
            ("connect_timeout_ms", self.connect_timeout_ms as usize),
            ("max_event_bytes", self.max_event_bytes),
            ("max_name_bytes", self.max_name_bytes),
            ("max_query_items", self.max_query_items),
            ("read_page_size", self.read_page_size),
            ("metrics_channel_capacity", self.metrics_channel_capacity),
            (
                "subscription_buffer_events",
                self.subscription_buffer_events,
            ),
            ("subscription_buffer_bytes", self.subscription_buffer_bytes),
            ("subscription_poll_ms", self.subscription_poll_ms as usize),
            ("replica_poll_ms", self.replica_poll_ms as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be greater than 0")));
            }
        }
        if self.max_name_bytes > MAX_NAME_BYTES {
            return Err(Error::Config(format!(
                "max_name_bytes is {}, more than {MAX_NAME_BYTES}: longer types and tags \
                 would not fit in the store's B-tree indexes",
                self.max_name_bytes
            )));
        }
        self.check_indexed_keys()?;
        let urls = self.replica_urls.iter().map(|url| ("replica url", url));
        for (key, url) in urls.chain(self.direct_url.iter().map(|url| ("direct_url", url))) {
            url.parse::<tokio_postgres::Config>().map_err(|e| {
                Error::Config(format!(
                    "{key} {:?} is not valid: {e}",
                    redact_password(url)
                ))
            })?;
        }
        Ok(Checked {
            schema,
            limits: self.limits(),
            keys: DeclaredKeys::new(&self.indexed_keys, &self.indexed_metadata_keys),
        })
    }

    fn check_indexed_keys(&self) -> Result<()> {
        let count = self.indexed_keys.len() + self.indexed_metadata_keys.len();
        if count > MAX_INDEXED_KEYS {
            return Err(Error::Config(format!(
                "{count} indexed keys listed (data and metadata), more than {MAX_INDEXED_KEYS}"
            )));
        }
        for keys in [&self.indexed_keys, &self.indexed_metadata_keys] {
            for (i, key) in keys.iter().enumerate() {
                if key.is_empty() || key.len() > MAX_INDEXED_KEY_BYTES || key.contains('\0') {
                    return Err(Error::Config(format!(
                        "indexed key {key:?} must be 1 to {MAX_INDEXED_KEY_BYTES} bytes, without NUL"
                    )));
                }
                if keys[..i].contains(key) {
                    return Err(Error::Config(format!(
                        "indexed key {key:?} is listed twice"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Schema names are identifiers, which SQL cannot take as bind parameters; they are
/// checked here so that quoting them into statement text is safe.
/// Hides the password of a connection string in either form, for logs and `Debug`.
pub(crate) fn redact_password(conninfo: &str) -> String {
    if let Some(scheme_end) = conninfo.find("://") {
        let rest = &conninfo[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &conninfo[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        // `?password=` in the query string
        return redact_key_value(conninfo, '&');
    }
    redact_key_value(conninfo, ' ')
}

fn redact_key_value(conninfo: &str, separator: char) -> String {
    let lower = conninfo.to_ascii_lowercase();
    let Some(start) = lower.find("password") else {
        return conninfo.to_owned();
    };
    let after_key = &conninfo[start + "password".len()..];
    let Some(eq) = after_key.find('=') else {
        return conninfo.to_owned();
    };
    let value_start = start + "password".len() + eq + 1;
    let value = &conninfo[value_start..];
    let value_len = if value.trim_start().starts_with('\'') {
        let open = value.find('\'').unwrap_or(0);
        value[open + 1..]
            .find('\'')
            .map_or(value.len(), |close| open + close + 2)
    } else {
        value.find(separator).unwrap_or(value.len())
    };
    format!(
        "{}***{}",
        &conninfo[..value_start],
        &conninfo[value_start + value_len..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_both_forms() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_password("postgres://db/x?user=a&password=s3cret&sslmode=require"),
            "postgres://db/x?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            redact_password("host=db password='se cret' user=a"),
            "host=db password=*** user=a"
        );
        assert_eq!(redact_password("host=db user=a"), "host=db user=a");
        let debug = format!(
            "{:?}",
            Config::default().with_database_url("postgres://a:hunter2@h/d")
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn schema_names_must_be_identifiers() {
        assert!(Config::default().with_schema("shop_1").validate().is_ok());
        for bad in ["", "1a", "a-b", "a\"b", "a;drop", &"x".repeat(64)] {
            assert!(
                Config::default().with_schema(bad).validate().is_err(),
                "{bad}"
            );
        }
    }
}
