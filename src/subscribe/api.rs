//! The store's subscription methods (an `impl EventStore` kept next to what it
//! drives): subscribe, deliver to an actor, checkpoints and parked events.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::deliver::DeliverySettings;
use super::{
    replay_parked, run_delivery, Deliver, Follower, Lease, ParkedEvent, ReplayOutcome, Shared,
    SubscribeOptions, Subscription, SubscriptionHandle,
};
use crate::error::{Error, Result};
use crate::model::{validate_consumer_name, validate_query, Query};
use crate::sql::consumer_lock_key;
use crate::store::EventStore;

/// Bigger batches would only hold more memory per subscriber.
const MAX_BATCH_SIZE: usize = 100_000;

impl EventStore {
    /// Follows the events matching `query`: first those already stored after
    /// `options.after` (or a durable consumer's checkpoint), then new ones as they are
    /// committed, by any process, in position order, each once.
    ///
    /// With [`SubscribeOptions::consumer`], only one subscriber of that name receives
    /// events at a time across all processes; the others wait in
    /// [`Subscription::next`] as hot standbys and take over (from the stored
    /// checkpoint) when the holder goes away.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a query beyond the limits, a batch size of 0, or an
    /// invalid consumer name. (A durable consumer's row is created when it first takes
    /// the lease; errors doing so come from [`Subscription::next`].)
    ///
    /// # Example
    /// ```no_run
    /// # use dcb_store::*;
    /// # async fn live(store: &EventStore) -> Result<()> {
    /// let course = Query::new([QueryItem::new().tags(["course:c1"])]);
    /// let mut sub = store.subscribe(course, SubscribeOptions::default().after(0)).await?;
    /// while let Some(batch) = sub.next().await {
    ///     let batch = batch?;
    ///     println!("{} events, up to {}", batch.events.len(), batch.scanned_to);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, query: Query, options: SubscribeOptions) -> Result<Subscription> {
        let limits = self.config().limits();
        validate_query(&query, "subscription query", &limits)?;
        if options.batch_size == 0 || options.batch_size > MAX_BATCH_SIZE {
            return Err(Error::invalid(format!(
                "batch size must be between 1 and {MAX_BATCH_SIZE}"
            )));
        }
        let (lease, stats) = match &options.consumer {
            Some(name) => {
                validate_consumer_name(name)?;
                let lease = Lease::new(
                    name.clone(),
                    consumer_lock_key(self.schema_identifier(), name),
                    self.connector().clone(),
                    self.consumers().sql,
                    self.config().operation_timeout(),
                );
                (Some(lease), Some(self.consumer_stats().stats(name)))
            }
            None => (None, None),
        };
        let follower = Follower::new(
            self.clone(),
            self.tail(),
            query,
            options.batch_size,
            options.after,
            options.heartbeat,
            self.config().subscription_poll_interval(),
        );
        Ok(Subscription::new(
            follower,
            Shared {
                lease,
                stats,
                standby_poll: options.standby_poll,
                start_after: options.after,
                holding: std::sync::atomic::AtomicBool::new(false),
            },
        ))
    }

    /// Delivers the events matching `query` to an actor as a durable consumer
    /// (`options.consumer` is required): each batch as a [`Deliver`] message, the
    /// next only after the reply. `Ok` moves the checkpoint; `Err` is retried with
    /// backoff up to `max_attempts` (each attempt counted in the database before it is
    /// made, so a crash counts), then the failing event is parked (see
    /// [`EventStore::parked`]) or the consumer stops, as
    /// [`SubscribeOptions::on_failure`] says.
    ///
    /// # Errors
    /// As [`EventStore::subscribe`], and [`Error::InvalidInput`] without a consumer
    /// name or with `max_attempts` 0.
    pub async fn subscribe_recipient(
        &self,
        query: Query,
        options: SubscribeOptions,
        recipient: Recipient<Deliver>,
    ) -> Result<SubscriptionHandle> {
        if options.consumer.is_none() {
            return Err(Error::invalid(
                "subscribe_recipient needs a durable consumer (SubscribeOptions::consumer)",
            ));
        }
        if options.max_attempts == 0 {
            return Err(Error::invalid("max_attempts must be at least 1"));
        }
        let settings = DeliverySettings {
            max_attempts: options.max_attempts,
            on_failure: options.on_failure,
            retry_backoff: options.retry_backoff,
        };
        let subscription = self.subscribe(query, options).await?;
        let (stop, stopped) = oneshot::channel();
        let done = actix::spawn(run_delivery(subscription, recipient, settings, stopped));
        Ok(SubscriptionHandle::new(stop, done))
    }

    /// The stored checkpoint of durable consumer `consumer` (`None`: never
    /// acknowledged, or no such consumer).
    ///
    /// # Errors
    /// Database and connection errors.
    pub async fn checkpoint(&self, consumer: &str) -> Result<Option<u64>> {
        self.consumers().checkpoint(consumer).await
    }

    /// The events `consumer` parked, in position order.
    ///
    /// # Errors
    /// Database and connection errors.
    pub async fn parked(&self, consumer: &str) -> Result<Vec<ParkedEvent>> {
        self.consumers().parked(consumer).await
    }

    /// Delivers each event `consumer` parked to `recipient` once, alone (a batch of
    /// one whose `scanned_to` is its position); those it accepts are no longer
    /// parked, the others stay with their attempts counted and new error.
    ///
    /// # Errors
    /// Database errors, and [`Error::Closed`] when the recipient is gone.
    pub async fn replay_parked(
        &self,
        consumer: &str,
        recipient: Recipient<Deliver>,
    ) -> Result<ReplayOutcome> {
        replay_parked(self, consumer, &recipient).await
    }

    /// Forgets a parked event without delivering it; whether it was parked.
    ///
    /// # Errors
    /// Database and connection errors.
    pub async fn discard_parked(&self, consumer: &str, position: u64) -> Result<bool> {
        self.consumers().unpark(consumer, position).await
    }
}
