//! `dcb-store`: a Dynamic Consistency Boundary event store on PostgreSQL for actix.
//!
//! Read by query, append with a condition ("fail if an event matching Q was stored
//! after position P"), correct under concurrency from any number of processes.
//!
//! ```no_run
//! use dcb_store::{AppendCondition, Config, Error, Event, EventStore, Query, QueryItem, ReadOptions};
//!
//! # actix::System::new().block_on(async {
//! let store = EventStore::connect(Config::default().with_schema("shop_1")).await?;
//! let course = Query::new([QueryItem::new().types(["CourseDefined"]).tags(["course:c1"])]);
//! let seen = store.read(&course, ReadOptions::default()).await?;
//! if seen.events.is_empty() {
//!     let defined = Event::new("CourseDefined", serde_json::json!({"courseId": "c1", "capacity": 2}))
//!         .with_tags(["course:c1"]);
//!     match store.append(vec![defined], Some(AppendCondition::new(course, seen.head))).await {
//!         Ok(_) | Err(Error::ConditionFailed { .. }) => {}
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok::<(), Error>(()) });
//! ```
//!
//! # Behavior
//! - Positions are unique and increase with commit order; a reader never sees a
//!   position appear below one it has already seen (writers hold one advisory lock
//!   from before positions are taken until commit).
//! - Appends arriving while a batch is written form the next batch: one transaction,
//!   one prepared statement per round, each caller its own result.
//! - Reads use statements prepared once per query shape on each reader's connection.
//! - Subscriptions follow a query from any position, history then live, each event
//!   once and in order; durable consumers keep a checkpoint in the schema and have one
//!   holder at a time across processes ([`EventStore::subscribe`]).
//! - Effects happen once: a tracked append moves a consumer's checkpoint with its
//!   events ([`AppendOptions::tracking`]), a read model writes its tables in the
//!   transaction that moves its checkpoint ([`EventStore::run_read_model`]), and a
//!   process manager reacts through tracked appends
//!   ([`EventStore::run_process_manager`]).
//! - Reads may go to streaming replicas ([`Consistency`]): eventual, or at least a
//!   position (read your own writes); appends and conditions always use the primary,
//!   and a multi-host primary URL (`target_session_attrs=read-write`) survives failover.
//! - Instrumentation goes through a bounded channel to a metrics actor.
//!
//! See `ARCHITECTURE.md` for the layers, the actors, their messages and the invariants;
//! every public item is re-exported here from one list, `src/api.rs`.
//!
//! # Features
//! - `tls-aws-lc-rs` (default) or `tls-ring`: rustls's crypto provider for TLS
//!   (aws-lc-rs has post-quantum key exchange; rustls deprecates ring's provider).
//! - `toml` (default): [`Config::load`] and [`Config::load_or_default`].
//! - `embedded`: `EmbeddedPostgres` and `Config::with_throwaway_server`, a throwaway
//!   server for demos and tests.
//! - `internals`: internals for the benchmarks and the fuzz target; not a stable API.

#![warn(missing_docs)]

mod api;
mod base;
mod config;
mod decide;
#[cfg(feature = "embedded")]
mod embedded;
mod engine;
mod error;
mod indexing;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
mod metrics;
mod model;
mod reader;
mod router;
mod sql;
mod store;
mod subscribe;
mod writer;

pub use api::*;
