//! The store's subscription methods: subscribe, deliver to an actor, checkpoints and
//! parked events.

use actix::prelude::*;

use super::EventStore;
use crate::error::Result;
use crate::model::Query;
use crate::subscribe::{
    replay_parked, Deliver, ParkedEvent, ReplayOutcome, SubscribeOptions, Subscription,
    SubscriptionHandle,
};

impl EventStore {
    /// Follows the events matching `query`: first those already stored after
    /// `options.after` (or a durable consumer's checkpoint), then new ones as they are
    /// committed, by any process, in position order, each once.
    ///
    /// With [`SubscribeOptions::consumer`](crate::SubscribeOptions::consumer), only one subscriber of that name receives
    /// events at a time across all processes; the others wait in
    /// [`Subscription::next`](crate::Subscription::next) as hot standbys and take over (from the stored
    /// checkpoint) when the holder goes away.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a query beyond the limits, a batch size of 0, or an
    /// invalid consumer name. (A durable consumer's row is created when it first takes
    /// the lease; errors doing so come from [`Subscription::next`](crate::Subscription::next).)
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
        self.inner
            .subscriptions
            .subscribe(self.engine(), query, options)
            .await
    }

    /// Delivers the events matching `query` to an actor as a durable consumer
    /// (`options.consumer` is required): each batch as a [`Deliver`](crate::Deliver) message, the
    /// next only after the reply. `Ok` moves the checkpoint; `Err` is retried with
    /// backoff up to `max_attempts` (each attempt counted in the database before it is
    /// made, so a crash counts), then the failing event is parked (see
    /// [`EventStore::parked`]) or the consumer stops, as
    /// [`SubscribeOptions::on_failure`](crate::SubscribeOptions::on_failure) says.
    ///
    /// # Errors
    /// As [`EventStore::subscribe`], and [`Error::InvalidInput`](crate::Error::InvalidInput) without a consumer
    /// name or with `max_attempts` 0.
    pub async fn subscribe_recipient(
        &self,
        query: Query,
        options: SubscribeOptions,
        recipient: Recipient<Deliver>,
    ) -> Result<SubscriptionHandle> {
        self.inner
            .subscriptions
            .subscribe_recipient(self.engine(), query, options, recipient)
            .await
    }

    /// The stored checkpoint of durable consumer `consumer` (`None`: never
    /// acknowledged, or no such consumer).
    ///
    /// # Errors
    /// Database and connection errors.
    pub async fn checkpoint(&self, consumer: &str) -> Result<Option<u64>> {
        self.inner
            .subscriptions
            .consumers
            .checkpoint(consumer)
            .await
    }

    /// The events `consumer` parked, in position order.
    ///
    /// # Errors
    /// Database and connection errors.
    pub async fn parked(&self, consumer: &str) -> Result<Vec<ParkedEvent>> {
        self.inner.subscriptions.consumers.parked(consumer).await
    }

    /// Delivers each event `consumer` parked to `recipient` once, alone (a batch of
    /// one whose `scanned_to` is its position); those it accepts are no longer
    /// parked, the others stay with their attempts counted and new error.
    ///
    /// # Errors
    /// Database errors, and [`Error::Closed`](crate::Error::Closed) when the recipient is gone.
    pub async fn replay_parked(
        &self,
        consumer: &str,
        recipient: Recipient<Deliver>,
    ) -> Result<ReplayOutcome> {
        let consumers = &self.inner.subscriptions.consumers;
        replay_parked(self.engine(), consumers, consumer, &recipient).await
    }

    /// Forgets a parked event without delivering it; whether it was parked.
    ///
    /// # Errors
    /// Database and connection errors.
    pub async fn discard_parked(&self, consumer: &str, position: u64) -> Result<bool> {
        self.inner
            .subscriptions
            .consumers
            .unpark(consumer, position)
            .await
    }
}
