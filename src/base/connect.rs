//! Connections: the bb8 pool every actor takes its connection from.
//!
//! The writer and the readers each hold one long-lived connection (their prepared
//! statements live on it), taken from the pool's manager as a dedicated connection
//! and replaced when it breaks; short tasks (migrations) borrow from the pool.
//!
//! Behind a transaction-mode pooler ([`PoolerMode::Transaction`]) a connection is a
//! different server session at every transaction, so nothing may live on it between
//! transactions: the connector says so ([`Connector::keeps_sessions`]) and what
//! needs a session (`LISTEN`, leases) takes a connector of its own (`direct_url`).

use std::str::FromStr;
use std::time::Duration;

use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;
use serde::Deserialize;
use tokio_postgres::config::SslMode;
use tokio_postgres::{CancelToken, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::base::tls::{self, TlsMode};
use crate::config::{redact_password, Config};
use crate::error::{with_causes, Error, Result};

type Manager = PostgresConnectionManager<MakeRustlsConnect>;

/// What stands between the store and PostgreSQL (`pooler_mode` in `config.toml`).
///
/// ```
/// use dcb_store::{Config, PoolerMode};
/// let config = Config::default()
///     .with_database_url("postgres://app@127.0.0.1:6432/shop")
///     .with_pooler_mode(PoolerMode::Transaction)
///     .with_direct_url("postgres://app@127.0.0.1:5432/shop");
/// assert_eq!(config.pooler_mode(), PoolerMode::Transaction);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PoolerMode {
    /// Direct connections to PostgreSQL. The default.
    #[default]
    None,
    /// A pooler that gives each client connection one server session for as long as
    /// it lasts (PgBouncer's `pool_mode = session`): everything works as with `None`.
    /// The pooler's `server_reset_query` (PgBouncer's default, `DISCARD ALL`) releases
    /// a departed client's consumer leases.
    Session,
    /// A pooler that gives each transaction whichever server session is free
    /// (PgBouncer's `pool_mode = transaction`, up to 1.20 without prepared statements):
    /// the store keeps nothing on a session between transactions. No named prepared
    /// statements (each statement travels unnamed: parsed and planned every time), no
    /// session settings, no temporary append functions (every batch is an explicit
    /// `BEGIN ISOLATION LEVEL READ COMMITTED` transaction). Subscriptions (`LISTEN`)
    /// and durable consumers (session advisory locks) need a session: they use
    /// `direct_url` and are refused with [`Error::NeedsSession`] without one.
    Transaction,
}

impl PoolerMode {
    /// The name `config.toml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolerMode::None => "none",
            PoolerMode::Session => "session",
            PoolerMode::Transaction => "transaction",
        }
    }
}

/// Makes connections to the store's database.
#[derive(Clone)]
pub(crate) struct Connector {
    pool: Pool<Manager>,
    tls: MakeRustlsConnect,
    /// For connections whose messages the store reads itself (`LISTEN`).
    config: tokio_postgres::Config,
    pooler: PoolerMode,
}

impl Connector {
    /// A connector for `url`, which is reached through `pooler`.
    pub(crate) async fn new(
        settings: &Config,
        url: &str,
        pool_size: u32,
        pooler: PoolerMode,
    ) -> Result<Self> {
        let connect_timeout: Duration = settings.connect_timeout();
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
        let root_cert = match settings.tls_root_cert() {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Error::Config(format!("tls_root_cert {path}: {e}")))?,
            ),
            None => None,
        };
        let tls = tls::connector(settings.tls_mode(), root_cert.as_deref())?;
        match settings.tls_mode() {
            // Plain TCP unless the URL itself says `sslmode=require` (then encrypted, the
            // certificate not checked, as libpq does); `prefer` becomes plain.
            TlsMode::Disable => {
                if config.get_ssl_mode() != SslMode::Require {
                    config.ssl_mode(SslMode::Disable);
                }
            }
            TlsMode::Require | TlsMode::VerifyFull => {
                config.ssl_mode(SslMode::Require);
            }
        }
        let pool = Pool::builder()
            .max_size(pool_size)
            .connection_timeout(connect_timeout)
            .build(PostgresConnectionManager::new(config.clone(), tls.clone()))
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))?;
        Ok(Connector {
            pool,
            tls,
            config,
            pooler,
        })
    }

    /// Whether what a connection's session holds (prepared statements, settings,
    /// temporary functions) lasts beyond the transaction that made it: not behind a
    /// transaction-mode pooler, where the next transaction is another session.
    pub(crate) fn keeps_sessions(&self) -> bool {
        self.pooler != PoolerMode::Transaction
    }

    /// A connection of its own for an actor; it is closed when the client is dropped.
    pub(crate) async fn dedicated(&self) -> Result<Client> {
        self.pool
            .dedicated_connection()
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))
    }

    /// A connection made at once, without the pool's retries (one attempt per host,
    /// each within `connect_timeout`): for the router's health polls, where a server
    /// that does not answer must be reported, not waited for.
    pub(crate) async fn direct(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A connection from the pool, for short administrative statements.
    pub(crate) async fn pooled(&self) -> Result<bb8::PooledConnection<'_, Manager>> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))
    }

    /// A connection that ran `listen` (a `LISTEN` statement): each notification's
    /// payload arrives on the receiver, which ends when the connection does. The
    /// connection closes when the returned client is dropped.
    /// `announce` runs first on the connection (the store takes its listeners' shared
    /// lock there, so writers know someone listens).
    pub(crate) async fn listen(
        &self,
        listen: &str,
        announce: (&str, i64),
    ) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
        use futures_util::StreamExt;
        use tokio_postgres::AsyncMessage;

        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| Error::Connect(with_causes(&e)))?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    if sender.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        client
            .execute_typed(
                announce.0,
                &[(&announce.1, tokio_postgres::types::Type::INT8)],
            )
            .await
            .map_err(Error::db)?;
        client.batch_execute(listen).await.map_err(Error::db)?;
        Ok((client, receiver))
    }

    /// Asks the server to cancel what `token`'s connection is running, in the
    /// background (a timed-out statement must not keep its locks).
    pub(crate) fn cancel_in_background(&self, token: CancelToken) {
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let _ = token.cancel_query(tls).await;
        });
    }
}
