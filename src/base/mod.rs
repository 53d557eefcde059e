//! Leaves: what every actor and service builds on, importing no domain module (only
//! [`crate::error`] and, for connecting, [`crate::config`]).
//!
//! - [`heads`]: the newest committed position this process knows.
//! - [`retry`]: the one rule for pausing between attempts.
//! - [`failure`]: the one classification of driver errors.
//! - [`connect`] and [`tls`]: the pool, dedicated connections and TLS.

pub(crate) mod connect;
pub(crate) mod failure;
pub(crate) mod heads;
pub(crate) mod retry;
pub(crate) mod tls;
