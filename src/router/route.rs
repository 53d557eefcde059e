//! Which server serves a read: the primary for `Strong`; a replica in rotation for
//! `Eventual`; for `AtLeast(p)` a replica whose head, at the read's own snapshot, is
//! at least `p`, waiting up to `replica_wait` for one; the primary whenever no replica
//! can.

use std::time::{Duration, Instant};

use actix::Addr;

use super::{Replica, Replicas};
use crate::base::failure::Failure;
use crate::base::retry::Backoff;
use crate::error::{Error, Result};
use crate::metrics::{Level, Record};
use crate::model::{Consistency, Query, ReadOptions, ReadResult};
use crate::reader::{Answer, Read, ReadBy, Reader};

/// Pauses between two looks at a replica that lacks a read's position: 1 ms,
/// doubling, at most 50 ms.
const LOOK_AGAIN: Backoff = Backoff::doubling(Duration::from_millis(1), Duration::from_millis(50));

/// Which kind of server answered a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Server {
    Primary,
    Replica,
}

impl Server {
    /// The consistency for the next read of a sequence (pages, a fold's reads) after
    /// this server answered one with `head`: a server that has at least what this one
    /// saw (monotonic reads across replicas), or the primary once it had to serve (a
    /// replica lagged: no second wait for it).
    pub(crate) fn next_read(self, consistency: Consistency, head: Option<u64>) -> Consistency {
        match self {
            Server::Primary => Consistency::Strong,
            Server::Replica => consistency.at_least(head),
        }
    }
}

impl Replicas {
    /// Serves `read` by its consistency, on `primary` when no replica can; says which
    /// kind of server answered.
    pub(crate) async fn read(
        &self,
        read: Read,
        deadline: Instant,
        primary: &Addr<Reader>,
    ) -> Result<(ReadResult, Server)> {
        let consistency = read.options.consistency;
        let served = match consistency {
            Consistency::Strong => None,
            Consistency::Eventual => self.eventual(&read, deadline).await,
            Consistency::AtLeast(position) => self.at_least(&read, position, deadline).await,
        };
        let level = Level::of(consistency);
        if let Some((replica, result)) = served {
            self.routed(level, Some(replica));
            return Ok((result, Server::Replica));
        }
        let answer = ask(primary, read, deadline).await?;
        self.routed(level, None);
        Ok((answer.result, Server::Primary))
    }

    fn routed(&self, consistency: Level, replica: Option<u16>) {
        self.metrics.record(Record::Routed {
            consistency,
            replica,
        });
    }

    async fn eventual(&self, read: &Read, deadline: Instant) -> Option<(u16, ReadResult)> {
        let (i, replica) = self.next_in_rotation()?;
        let answer = try_replica(replica, read.clone(), deadline).await?;
        Some((i, answer.result))
    }

    /// A replica's answer whose head is at least `position`, if one comes by the wait
    /// bound (`replica_wait`, at most half the caller's time, so that the primary keeps
    /// the rest). The most advanced replica gets the read at once; while it lacks the
    /// position it is asked for its head alone (a read of nothing), with a growing pause,
    /// and gets the read again once it has it.
    async fn at_least(
        &self,
        read: &Read,
        position: u64,
        deadline: Instant,
    ) -> Option<(u16, ReadResult)> {
        let now = Instant::now();
        let give_up = now + self.wait.min(deadline.saturating_duration_since(now) / 2);
        let mut looks = 0;
        // The first look is the read itself: the router's figures are usually a poll
        // behind a replica that already has the position.
        let mut first = true;
        loop {
            let (i, replica) = self.most_advanced()?;
            if !first && replica.stats.head() < position {
                let head_only = Read::new(Query::all(), ReadOptions::default().limit(0));
                try_replica(replica, head_only, give_up).await;
            }
            if first || replica.stats.head() >= position {
                first = false;
                if let Some(answer) = try_replica(replica, read.clone(), deadline).await {
                    // The head at the read's snapshot decides, not what the router saw.
                    if answer.server_head >= position {
                        return Some((i, answer.result));
                    }
                }
            }
            let now = Instant::now();
            if now >= give_up {
                return None;
            }
            looks += 1;
            tokio::time::sleep(LOOK_AGAIN.after(looks).min(give_up - now)).await;
        }
    }
}

/// `read` on `replica`, within half the time left until `deadline` (the primary keeps
/// the other half); `None` when it failed. A replica that cannot be reached, or does not answer in time,
/// leaves the rotation until the router sees it healthy.
async fn try_replica(replica: &Replica, read: Read, deadline: Instant) -> Option<Answer> {
    let now = Instant::now();
    let bound = now + deadline.saturating_duration_since(now) / 2;
    let asked = tokio::time::timeout_at(bound.into(), ask(replica.reader(), read, bound));
    match asked.await {
        Ok(Ok(answer)) => {
            replica.stats.saw_head(answer.server_head);
            Some(answer)
        }
        Ok(Err(error)) => {
            tracing::debug!(error = %crate::error::Chain(&error), "a replica failed a read; the primary serves it");
            if Failure::of_error(&error).connection_failed()
                || matches!(error, Error::Timeout { .. })
            {
                replica.stats.failed();
            }
            None
        }
        Err(_) => {
            replica.stats.failed();
            None
        }
    }
}

pub(crate) async fn ask(reader: &Addr<Reader>, read: Read, deadline: Instant) -> Result<Answer> {
    reader
        .send(ReadBy { read, deadline })
        .await
        .map_err(|_| Error::CLOSED)?
}
