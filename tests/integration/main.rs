//! Integration tests against a real PostgreSQL server, one module per area.

mod support;

mod appends;
mod batching;
mod concurrency;
mod matching;
mod metrics;
mod ordering;
mod reads;
mod schema;
mod validation;
