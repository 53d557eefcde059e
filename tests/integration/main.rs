//! Integration tests against a real PostgreSQL server, one module per area.

mod support;

mod appends;
mod batching;
mod checker;
mod concurrency;
mod crashes;
mod decisions;
mod embedding;
mod exactly_once;
mod exactness;
mod faults;
mod generate;
mod ha;
mod indexed;
mod matching;
mod metrics;
mod ordering;
mod outcomes;
mod partitioning;
mod pooler;
mod properties;
mod readback;
mod reads;
mod replicas;
mod restarts;
mod schema;
mod security;
mod sizes;
mod subscriptions;
mod tracking;
mod validation;
