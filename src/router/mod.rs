//! Read replicas: the router actor that tracks each replica's head and lag, and the
//! routing of a read by its [`Consistency`].
//!
//! The router polls every replica (and the primary) for its head each
//! `replica_poll_interval`, on a connection of its own per server, each server on its
//! own (a server that hangs delays only its own figures, and is not asked again until
//! it answers or its bound passes), and keeps each
//! replica's figures in atomics ([`ReplicaStats`]) that the read path and the metrics
//! read without messages. A replica is *in rotation* for eventual reads while it
//! answers and lacks no event the primary had longer ago than `replica_max_lag`. Lag in
//! time is measured against the primary's heads as the router saw them grow, so an
//! idle store has no lag (unlike `now() - pg_last_xact_replay_timestamp()`).
//!
//! Routing (in `route.rs`) never trusts these figures for exactness: an
//! `AtLeast(p)` read is accepted from a replica only when the replica's head *at the
//! read's own snapshot* is at least `p`. A replica's reader does not retry a failed
//! connection; the read goes to the primary and the replica leaves the rotation until
//! the router sees it healthy again, so reads never fail because a replica is down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::Client;

use crate::base::connect::Connector;
use crate::base::heads::Heads;
use crate::error::{Error, Result};
use crate::metrics::{MetricsSink, ReplicaGauge, ReplicaList};

mod stats;

use crate::reader::Reader;
use stats::PollTicket;
pub(crate) use stats::ReplicaStats;

mod route;

pub(crate) use route::{ask, Server};

/// The replicas as the read path sees them. Shared; read without messages.
pub(crate) struct Replicas {
    replicas: Vec<Replica>,
    /// Round-robin over the replicas in rotation.
    next: AtomicUsize,
    /// How long an `AtLeast` read waits for a replica to have its position.
    wait: Duration,
    metrics: MetricsSink,
}

pub(crate) struct Replica {
    readers: Vec<Addr<Reader>>,
    next_reader: AtomicUsize,
    stats: Arc<ReplicaStats>,
}

impl Replica {
    pub(crate) fn new(readers: Vec<Addr<Reader>>, stats: Arc<ReplicaStats>) -> Self {
        Replica {
            readers,
            next_reader: AtomicUsize::new(0),
            stats,
        }
    }

    fn reader(&self) -> &Addr<Reader> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed);
        &self.readers[i % self.readers.len()]
    }
}

impl Replicas {
    pub(crate) fn new(replicas: Vec<Replica>, wait: Duration, metrics: MetricsSink) -> Self {
        Replicas {
            replicas,
            next: AtomicUsize::new(0),
            wait,
            metrics,
        }
    }

    /// The next replica in rotation, in turn.
    fn next_in_rotation(&self) -> Option<(u16, &Replica)> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.replicas[i].stats.in_rotation())
            .map(|i| (i as u16, &self.replicas[i]))
    }

    /// The reachable replica with the newest head (in or out of rotation: lag does not
    /// matter to a read that names its position).
    fn most_advanced(&self) -> Option<(u16, &Replica)> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.stats.reachable())
            .max_by_key(|(_, r)| r.stats.head())
            .map(|(i, r)| (i as u16, r))
    }
}

/// A server the router polls.
struct Probe {
    connector: Connector,
    /// Kept between polls; `None` after a failure (the next poll connects again).
    client: Option<Client>,
    /// A poll of this server is under way (it is not asked again meanwhile).
    polling: bool,
}

/// The actor that polls the replicas' heads and decides which are in rotation.
pub(crate) struct Router {
    primary: Probe,
    replicas: Vec<(Probe, Arc<ReplicaStats>)>,
    head_sql: Arc<str>,
    heads: Heads,
    interval: Duration,
    max_lag: Duration,
    /// The primary's head at each poll that saw it grow, oldest first: a replica's lag
    /// in time is the age of the oldest entry beyond its head.
    history: VecDeque<(u64, Instant)>,
}

/// Heads the primary's history keeps; at 10 polls a second, over 15 minutes of
/// growth, beyond which a replica's lag in time stops growing (it is out of rotation
/// long before).
const HISTORY: usize = 10_000;

pub(crate) struct RouterSettings {
    pub head_sql: String,
    pub interval: Duration,
    pub max_lag: Duration,
}

impl Router {
    pub(crate) fn new(
        primary: Connector,
        replicas: Vec<(Connector, Arc<ReplicaStats>)>,
        heads: Heads,
        settings: RouterSettings,
    ) -> Self {
        let probe = |connector| Probe {
            connector,
            client: None,
            polling: false,
        };
        Router {
            primary: probe(primary),
            replicas: replicas
                .into_iter()
                .map(|(connector, stats)| (probe(connector), stats))
                .collect(),
            head_sql: settings.head_sql.into(),
            heads,
            interval: settings.interval,
            max_lag: settings.max_lag,
            history: VecDeque::new(),
        }
    }

    /// Asks each server that is not still answering the previous poll for its head,
    /// each within a bound (a server that hangs counts as down when it passes), each
    /// answer taken as it comes.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let bound = (self.interval * 10).max(Duration::from_secs(1));
        let targets = std::iter::once(None).chain((0..self.replicas.len()).map(Some));
        for target in targets {
            let (probe, ticket) = match target {
                None => (&mut self.primary, None),
                Some(i) => {
                    let (probe, stats) = &mut self.replicas[i];
                    (probe, Some(stats.poll_started()))
                }
            };
            if probe.polling {
                continue;
            }
            probe.polling = true;
            let (connector, client) = (probe.connector.clone(), probe.client.take());
            let sql = self.head_sql.clone();
            let asked = async move {
                match tokio::time::timeout(bound, head_of(&connector, client, &sql)).await {
                    Ok(Ok((client, head))) => (Some(client), Some(head)),
                    Ok(Err(error)) => {
                        tracing::debug!(error = %crate::error::Chain(&error), "router: a server did not answer");
                        (None, None)
                    }
                    Err(_) => (None, None),
                }
            };
            ctx.spawn(
                asked
                    .into_actor(self)
                    .map(move |(client, head), router, _| match (target, ticket) {
                        (Some(i), Some(ticket)) => router.replica_polled(i, ticket, client, head),
                        _ => router.primary_polled(client, head),
                    }),
            );
        }
    }

    fn primary_polled(&mut self, client: Option<Client>, head: Option<u64>) {
        self.primary.polling = false;
        self.primary.client = client;
        self.saw_primary_head(head.unwrap_or(0), Instant::now());
    }

    /// Records `head` (or the head this process knows, if newer) in the primary's
    /// history when it grew; returns the newest head the history holds.
    fn saw_primary_head(&mut self, head: u64, now: Instant) -> u64 {
        let newest = self.history.back().map_or(0, |(head, _)| *head);
        let head = head.max(self.heads.current());
        if head > newest {
            // The first head seen counts as old: a replica that lacks it at start may be
            // far behind, and stays out of rotation until it has it.
            let seen = if self.history.is_empty() {
                now.checked_sub(self.max_lag.saturating_mul(2))
                    .unwrap_or(now)
            } else {
                now
            };
            self.history.push_back((head, seen));
            if self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        head.max(newest)
    }

    /// Takes replica `i`'s answer into its figures.
    fn replica_polled(
        &mut self,
        i: usize,
        ticket: PollTicket,
        client: Option<Client>,
        head: Option<u64>,
    ) {
        let now = Instant::now();
        // What this process knows the primary has counts even before the primary's
        // own poll answers.
        let primary_head = self.saw_primary_head(0, now);
        let Some((probe, stats)) = self.replicas.get_mut(i) else {
            return;
        };
        probe.polling = false;
        probe.client = client;
        let Some(head) = head else {
            stats.failed();
            return;
        };
        // Heads in the history grow: the first one beyond the replica's is the oldest
        // event it lacks.
        let lacking = self.history.partition_point(|(h, _)| *h <= head);
        let lag = self
            .history
            .get(lacking)
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at));
        stats.polled(
            ticket,
            head,
            primary_head.saturating_sub(head),
            lag,
            lag <= self.max_lag,
        );
        // Heads every replica has are no longer needed to measure anyone's lag.
        let slowest = self.replicas.iter().map(|(_, stats)| stats.head()).min();
        while self.history.len() > 1 && self.history.front().map(|(h, _)| *h) <= slowest {
            self.history.pop_front();
        }
    }
}

/// A server's head, on `client` or on a new connection.
async fn head_of(
    connector: &Connector,
    client: Option<Client>,
    sql: &str,
) -> Result<(Client, u64)> {
    let client = match client {
        Some(client) if !client.is_closed() => client,
        _ => connector.direct().await?,
    };
    let row = client.query_typed_one(sql, &[]).await.map_err(Error::db)?;
    Ok((client, crate::sql::decode_head(&row)?))
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.poll(ctx);
        ctx.run_interval(self.interval, |router, ctx| router.poll(ctx));
    }
}

/// The name a replica is shown by in metrics: its first host and port.
pub(crate) fn replica_name(index: usize, url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return format!("replica-{index}");
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Names for the replicas of `urls`, made unique (a duplicate gets its index), each
/// with its figures.
pub(crate) fn replica_list(urls: &[String]) -> Vec<(String, Arc<ReplicaStats>)> {
    let mut names: Vec<String> = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let mut name = replica_name(i, url);
        if names.contains(&name) {
            name = format!("{name}#{i}");
        }
        names.push(name);
    }
    names
        .into_iter()
        .map(|name| (name, Arc::new(ReplicaStats::default())))
        .collect()
}

/// The replicas' figures as the metrics read them.
pub(crate) fn gauges(replicas: &[(String, Arc<ReplicaStats>)]) -> ReplicaList {
    replicas
        .iter()
        .map(|(name, stats)| (name.clone(), stats.clone() as Arc<dyn ReplicaGauge>))
        .collect()
}
