//! Test harness controls for [`EmbeddedPostgres`]: what a test does to a server to see
//! how the store behaves (a restart, a crash, a failover), and the real infrastructure
//! a test puts around a server ([`PgBouncer`], a `pg_auto_failover` [`Formation`]). Kept out of the library,
//! whose throwaway server only starts and stops with its owner, so that embedders
//! compile none of it and never mistake it for API.
//!
//! ```no_run
//! use dcb_store::EmbeddedPostgres;
//! use dcb_store_testkit::ServerControls;
//!
//! let server = EmbeddedPostgres::start()?;
//! server.kill()?; // as a crash would
//! server.start_again()?;
//! # Ok::<(), dcb_store::Error>(())
//! ```

mod autofailover;
mod pgbouncer;
mod process;

pub use autofailover::Formation;
pub use pgbouncer::{PgBouncer, PoolMode};

use dcb_store::internals::{control_server, ServerAction};
use dcb_store::{EmbeddedPostgres, Result};

/// What a test can do to a throwaway server. Each call blocks until the server has
/// done it; call it from `spawn_blocking` inside async code.
pub trait ServerControls {
    /// Stops the server (fast shutdown: clients are disconnected, nothing committed is
    /// lost); [`ServerControls::start_again`] brings it back.
    fn stop(&self) -> Result<()>;

    /// Stops the server as a crash would (immediate shutdown: no checkpoint; the next
    /// start recovers from the WAL).
    fn kill(&self) -> Result<()>;

    /// Starts the server again after [`ServerControls::stop`] or
    /// [`ServerControls::kill`], on the same port and data.
    fn start_again(&self) -> Result<()>;

    /// Restarts the server (fast shutdown, then start), as an operator would; clients
    /// lose their connections.
    fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Promotes a replica ([`EmbeddedPostgres::replica`]) to a primary: it stops
    /// replaying and accepts writes.
    fn promote(&self) -> Result<()>;
}

impl ServerControls for EmbeddedPostgres {
    fn stop(&self) -> Result<()> {
        control_server(self, ServerAction::Stop)
    }

    fn kill(&self) -> Result<()> {
        control_server(self, ServerAction::Kill)
    }

    fn start_again(&self) -> Result<()> {
        control_server(self, ServerAction::Start)
    }

    fn promote(&self) -> Result<()> {
        control_server(self, ServerAction::Promote)
    }
}
