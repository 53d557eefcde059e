//! Connections: the bb8 pool every actor takes its connection from.
//!
//! The writer and the readers each hold one long-lived connection (their prepared
//! statements live on it), taken from the pool's manager as a dedicated connection
//! and replaced when it breaks; short tasks (migrations) borrow from the pool.

use std::str::FromStr;
use std::time::Duration;

use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{Client, NoTls};

use crate::config::redact_password;
use crate::error::{with_causes, Error, Result};

type Manager = PostgresConnectionManager<NoTls>;

/// Makes connections to the store's database.
#[derive(Clone)]
pub(crate) struct Connector {
    pool: Pool<Manager>,
}

impl Connector {
    pub(crate) async fn new(url: &str, pool_size: u32, connect_timeout: Duration) -> Result<Self> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            Error::Config(format!(
                "database url {:?} is not valid: {e}",
                redact_password(url)
            ))
        })?;
        config.connect_timeout(connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("dcb-store");
        }
        let pool = Pool::builder()
            .max_size(pool_size)
            .connection_timeout(connect_timeout)
            .build(PostgresConnectionManager::new(config, NoTls))
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))?;
        Ok(Connector { pool })
    }

    /// A connection of its own for an actor; it is closed when the client is dropped.
    pub(crate) async fn dedicated(&self) -> Result<Client> {
        self.pool
            .dedicated_connection()
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))
    }
}
