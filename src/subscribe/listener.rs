//! Wake-ups from other processes: a connection that `LISTEN`s on the schema's channel
//! (each batch of any process sends one `NOTIFY` with the head, in its transaction,
//! while some connection holds the listeners' shared lock, as this one does) and moves
//! this process's known head. Reconnects when the connection breaks; the
//! follower's slow poll covers notifications lost meanwhile.

use std::time::Duration;

use crate::base::connect::Connector;
use crate::base::heads::Heads;
use crate::base::retry::Backoff;

/// Pauses before listening again after the connection failed: 200 ms more each time, at
/// most 5 s.
const LISTEN_AGAIN: Backoff = Backoff::linear(Duration::from_millis(200), Duration::from_secs(5));

/// Listens on `channel`, holding the listeners' shared lock `listener_key` on the same
/// connection: writers notify only while some connection holds it.
pub(crate) async fn listen(connector: Connector, channel: String, listener_key: i64, heads: Heads) {
    let listen_statement = crate::sql::session::listen(&channel);
    let mut failures = 0u32;
    loop {
        let announce = (crate::sql::HOLD_LISTENER_LOCK, listener_key);
        match connector.listen(&listen_statement, announce).await {
            Ok((client, mut notifications)) => {
                failures = 0;
                // Whatever was committed while nobody listened is read now.
                heads.wake();
                while let Some(payload) = notifications.recv().await {
                    if let Ok(head) = payload.parse::<u64>() {
                        heads.advance(head);
                    }
                }
                drop(client);
                tracing::warn!("subscriptions: the LISTEN connection closed; reconnecting");
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(error = %crate::error::Chain(&error), "subscriptions: cannot LISTEN; retrying");
            }
        }
        tokio::time::sleep(LISTEN_AGAIN.after(failures)).await;
    }
}
