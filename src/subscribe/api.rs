//! The subscription service: what the store's subscription methods
//! (`store/subscribe.rs`) run: the live subscribers' shared buffer, subscribing, and
//! delivering to an actor.

use std::sync::{Arc, OnceLock};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::deliver::{DeliverySettings, Handler, ToActor};
use super::read_model::{InTransaction, ReadModel, ReadModelHandle};
use super::{
    follow_tail, listen, run_delivery, Consumers, Deliver, Follower, Lease, Shared,
    SubscribeOptions, Subscription, SubscriptionHandle, Tail,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{validate_consumer_name, validate_query, Query};
use crate::sql::{self, consumer_lock_key, ConsumerStatements};

/// What needs a session of its own, as [`Error::NeedsSession`] names it.
const LISTEN: &str = "subscriptions (LISTEN)";
const LEASES: &str = "durable consumers (leases)";

/// Bigger batches would only hold more memory per subscriber.
const MAX_BATCH_SIZE: usize = 100_000;

/// The store's subscriptions: the shared buffer of live events (started with the
/// first subscription) and the durable consumers' statements.
pub(crate) struct Subscriptions {
    tail: OnceLock<Arc<Tail>>,
    pub(crate) consumers: Consumers,
}

impl Subscriptions {
    pub(crate) fn new(engine: &Engine) -> Self {
        Subscriptions {
            tail: OnceLock::new(),
            consumers: Consumers {
                connector: engine.connector().clone(),
                sql: Arc::new(ConsumerStatements::new(engine.schema_identifier())),
                moved: Arc::new(tokio::sync::Notify::new()),
            },
        }
    }

    /// The live subscribers' shared buffer; the first call starts its follower task
    /// and the `LISTEN` connection on the engine's arbiter.
    ///
    /// # Errors
    /// [`Error::NeedsSession`] when there is no connection with a session to listen on.
    fn tail(&self, engine: &Arc<Engine>) -> Result<Arc<Tail>> {
        let listening = engine.session_connector(LISTEN)?;
        Ok(self
            .tail
            .get_or_init(|| {
                let config = engine.config();
                let (events, bytes) = config.subscription_buffer();
                let tail = Arc::new(Tail::new(events, bytes));
                let schema = engine.schema_identifier();
                engine.arbiter().spawn(follow_tail(
                    Arc::downgrade(engine),
                    tail.clone(),
                    engine.heads().clone(),
                    config.subscription_poll_interval(),
                    config.read_page_size() as u64,
                ));
                engine.arbiter().spawn(listen(
                    listening.clone(),
                    sql::notify_channel(schema),
                    sql::listener_lock_key(schema),
                    engine.heads().clone(),
                ));
                tail
            })
            .clone())
    }

    pub(crate) async fn subscribe(
        &self,
        engine: &Arc<Engine>,
        query: Query,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let limits = engine.config().limits();
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
                    consumer_lock_key(engine.schema_identifier(), name),
                    engine.session_connector(LEASES)?.clone(),
                    self.consumers.sql.clone(),
                    engine.config().operation_timeout(),
                );
                (Some(lease), Some(engine.consumer_stats().stats(name)))
            }
            None => (None, None),
        };
        let follower = Follower::new(
            engine.clone(),
            self.tail(engine)?,
            query,
            options.batch_size,
            options.after,
            options.heartbeat,
            engine.config().subscription_poll_interval(),
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

    pub(crate) async fn subscribe_recipient(
        &self,
        engine: &Arc<Engine>,
        query: Query,
        options: SubscribeOptions,
        recipient: Recipient<Deliver>,
    ) -> Result<SubscriptionHandle> {
        self.run(
            engine,
            query,
            options,
            "subscribe_recipient",
            ToActor(recipient),
        )
        .await
    }

    /// Runs `handler` as durable consumer `options.consumer` (required; `what` names
    /// the caller in the error) on the caller's arbiter.
    pub(crate) async fn run<H: Handler + 'static>(
        &self,
        engine: &Arc<Engine>,
        query: Query,
        options: SubscribeOptions,
        what: &str,
        handler: H,
    ) -> Result<SubscriptionHandle> {
        if options.consumer.is_none() {
            return Err(Error::invalid(format!(
                "{what} needs a durable consumer (SubscribeOptions::consumer)"
            )));
        }
        if options.max_attempts == 0 {
            return Err(Error::invalid("max_attempts must be at least 1"));
        }
        let settings = DeliverySettings {
            max_attempts: options.max_attempts,
            on_failure: options.on_failure,
            retry_backoff: options.retry_backoff,
        };
        let subscription = self.subscribe(engine, query, options).await?;
        let (stop, stopped) = oneshot::channel();
        let done = actix::spawn(run_delivery(subscription, handler, settings, stopped));
        Ok(SubscriptionHandle::new(stop, done))
    }

    /// Runs `model` as durable consumer `options.consumer`, each batch in a
    /// transaction with its checkpoint.
    pub(crate) async fn run_read_model<M: ReadModel>(
        &self,
        engine: &Arc<Engine>,
        query: Query,
        options: SubscribeOptions,
        model: M,
    ) -> Result<ReadModelHandle> {
        let name = options.consumer.clone().unwrap_or_default();
        let (requests, rebuilds) = mpsc::channel(4);
        let handler = InTransaction {
            model,
            name,
            connector: engine.session_connector(LEASES)?.clone(),
            sql: self.consumers.sql.clone(),
            start: options.after.unwrap_or(0),
            moved: self.consumers.moved.clone(),
            rebuilds,
            rebuild: None,
            connection: None,
            unsure: false,
        };
        let delivery = self
            .run(engine, query, options, "run_read_model", handler)
            .await?;
        Ok(ReadModelHandle::new(delivery, requests))
    }
}
