//! Starting the engine: the database (configured, or a throwaway server when asked),
//! the schema, the indexed keys, then the actors: the writer on the calling thread's
//! arbiter, the readers, the router and the metrics actor on a thread of their own.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;

use super::Engine;
use crate::base::connect::{Connector, PoolerMode};
use crate::base::heads::Heads;
use crate::config::{Checked, Config};
#[cfg(feature = "embedded")]
use crate::embedded::EmbeddedPostgres;
use crate::error::{Error, Result};
use crate::indexing;
use crate::metrics::{ConsumerRegistry, MetricsActor};
use crate::model::MigrateOptions;
use crate::reader::{Reader, ReaderSettings};
use crate::router::{self, Replica, Replicas, Router, RouterSettings};
use crate::sql::{self, schema, Identifier, KeyStatements};
use crate::writer::{NotifySettings, Writer, WriterSettings};

/// What keeps a throwaway server alive as long as the store that started it.
#[cfg(feature = "embedded")]
pub(crate) type Throwaway = Option<EmbeddedPostgres>;
#[cfg(not(feature = "embedded"))]
pub(crate) type Throwaway = ();

const NO_DATABASE_URL: &str = "no database URL: set DATABASE_URL, or database_url in the \
     configuration file (Config::with_database_url)";

/// The database to connect to: the configured URL, or a throwaway server when one was
/// asked for; never a silent fallback.
async fn database(config: &Config) -> Result<(String, Throwaway)> {
    if let Some(url) = config.database_url() {
        return Ok((url.to_owned(), Throwaway::default()));
    }
    #[cfg(feature = "embedded")]
    if config.throwaway_server() {
        let server = tokio::task::spawn_blocking(EmbeddedPostgres::start)
            .await
            .map_err(|e| Error::Embedded(e.to_string()))??;
        return Ok((server.url(), Some(server)));
    }
    Err(Error::Config(NO_DATABASE_URL.into()))
}

impl Engine {
    /// Connects, creates or migrates the schema, and starts the actors (see
    /// [`EventStore::connect`](crate::EventStore::connect)).
    pub(crate) async fn start(config: Config) -> Result<Engine> {
        let Checked {
            schema,
            limits,
            keys,
        } = config.checked()?;
        let (url, throwaway) = database(&config).await?;
        let pooler = config.pooler_mode();
        let connector = Connector::new(&config, &url, config.pool_size(), pooler).await?;
        // What needs a session (LISTEN, leases): behind a transaction-mode pooler only
        // through `direct_url`, itself reached without one.
        let session = match (pooler, config.direct_url()) {
            (PoolerMode::Transaction, Some(direct)) => {
                Some(Connector::new(&config, direct, 1, PoolerMode::None).await?)
            }
            (PoolerMode::Transaction, None) => None,
            _ => Some(connector.clone()),
        };
        let mut client = connector.dedicated().await?;
        schema::migrate(&mut client, &schema).await?;
        let key_sql = KeyStatements::new(&schema);
        let backfill = indexing::sync(
            &mut client,
            &key_sql,
            sql::write_lock_key(&schema),
            &keys,
            false,
        )
        .await?;
        drop(client);

        let heads = Heads::new();
        let consumer_stats = Arc::new(ConsumerRegistry::default());
        let replica_list = router::replica_list(config.replica_urls());
        let (metrics_actor, metrics) = MetricsActor::new(
            config.schema(),
            config.metrics_channel_capacity(),
            config.metrics_enabled(),
            consumer_stats.clone(),
            heads.clone(),
            router::gauges(&replica_list),
        );
        // Appends the writer holds at once, queued or in flight.
        let admission = Arc::new(tokio::sync::Semaphore::new(config.writer_mailbox()));
        let reader_arbiter = Arbiter::new();
        let metrics_actor =
            MetricsActor::start_in_arbiter(&reader_arbiter.handle(), |_| metrics_actor);

        let writer = {
            let connector = connector.clone();
            let metrics = metrics.clone();
            let settings = WriterSettings {
                schema: schema.clone(),
                limits,
                batching: config.batching(),
                pipelining: config.pipelining(),
                timeout: config.operation_timeout(),
                notify: config.notify_commits().then(|| NotifySettings {
                    sql: sql::notify_statement(&schema),
                    channel: sql::notify_channel(&schema),
                    listener_key: sql::listener_lock_key(&schema),
                }),
                keys: keys.clone(),
            };
            let mailbox = config.writer_mailbox();
            let heads = heads.clone();
            let admission = admission.clone();
            Writer::start_in_arbiter(&Arbiter::current(), move |ctx| {
                ctx.set_mailbox_capacity(mailbox);
                Writer::new(connector, settings, heads, metrics, admission)
            })
        };
        let start_readers = |connector: &Connector, for_replica: bool| -> Vec<Addr<Reader>> {
            (0..config.readers())
                .map(|_| {
                    let connector = connector.clone();
                    let metrics = metrics.clone();
                    let settings = ReaderSettings {
                        schema: schema.clone(),
                        limits,
                        cache_size: NonZeroUsize::new(config.statement_cache_size()),
                        max_in_flight: config.reader_max_in_flight(),
                        timeout: config.operation_timeout(),
                        for_replica,
                        keys: keys.clone(),
                    };
                    let mailbox = config.reader_mailbox();
                    Reader::start_in_arbiter(&reader_arbiter.handle(), move |ctx| {
                        ctx.set_mailbox_capacity(mailbox);
                        Reader::new(connector, settings, metrics)
                    })
                })
                .collect()
        };
        let readers = start_readers(&connector, false);
        let (replicas, router) = if replica_list.is_empty() {
            (None, None)
        } else {
            let mut probes = Vec::new();
            let mut replicas = Vec::new();
            for (url, (_, stats)) in config.replica_urls().iter().zip(replica_list.iter()) {
                // No connection is made here: a replica that is down at start is only
                // out of rotation.
                let replica = Connector::new(&config, url, 1, pooler).await?;
                replicas.push(Replica::new(start_readers(&replica, true), stats.clone()));
                probes.push((replica, stats.clone()));
            }
            let settings = RouterSettings {
                head_sql: sql::head_statement(&schema),
                interval: config.replica_poll_interval(),
                max_lag: config.replica_max_lag(),
            };
            let primary = connector.clone();
            let heads = heads.clone();
            let router = Router::start_in_arbiter(&reader_arbiter.handle(), move |_| {
                Router::new(primary, probes, heads, settings)
            });
            let replicas = Replicas::new(replicas, config.replica_wait(), metrics.clone());
            (Some(Arc::new(replicas)), Some(router))
        };
        if backfill {
            reader_arbiter.spawn(indexing::backfill_in_background(connector.clone(), key_sql));
        }
        tracing::info!(
            schema = config.schema(),
            readers = config.readers(),
            "event store started"
        );
        Ok(Engine {
            config,
            schema,
            connector,
            session,
            writer,
            admission,
            readers,
            next_reader: AtomicUsize::new(0),
            replicas,
            _router: router,
            metrics_actor,
            metrics,
            arbiter: reader_arbiter,
            heads,
            consumer_stats,
            _throwaway: throwaway,
        })
    }
}

/// Creates or migrates the schema of `config` (see
/// [`EventStore::migrate_with`](crate::EventStore::migrate_with)).
pub(crate) async fn migrate(config: &Config, options: MigrateOptions) -> Result<Vec<i32>> {
    let application_role = options.application_role.as_deref();
    let Checked { schema, keys, .. } = config.checked()?;
    let url = config
        .database_url()
        .ok_or_else(|| Error::Config(NO_DATABASE_URL.into()))?;
    let connector = Connector::new(config, url, 1, config.pooler_mode()).await?;
    let mut client = connector.dedicated().await?;
    let role = application_role
        .map(|role| Identifier::parse(role, "role"))
        .transpose()?;
    let applied = schema::migrate(&mut client, &schema).await?;
    let key_sql = KeyStatements::new(&schema);
    let write_lock = sql::write_lock_key(&schema);
    if indexing::sync(&mut client, &key_sql, write_lock, &keys, true).await? {
        indexing::backfill(&mut client, &key_sql).await?;
    }
    if let Some(role) = &role {
        schema::grant_application_role(&client, &schema, role).await?;
    }
    Ok(applied)
}
