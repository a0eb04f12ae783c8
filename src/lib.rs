//! auditflow: an audit-logging pipeline built as Kafka stream-processing stages.
//!
//! Layout, from the pure core outwards:
//! - [`event`], [`enrich`], [`codec`]: the event model, validation/enrichment, Avro encoding.
//!   Pure functions, no I/O.
//! - [`runtime`]: the one place that talks to Kafka: batching, exactly-once commits, offsets
//!   stored in sinks, rebalances, dead letters, retries, shutdown.
//! - [`stages`]: each stage's logic plugged into the runtime.
//! - [`alert`]: alert policies, deduplication state, notification channels and their dispatcher.
//! - [`config`], [`telemetry`], [`db`], [`redis_conn`], [`cli`]: configuration, logs/metrics/health,
//!   database and Redis connections, and the `auditflow` operator command.
//! - [`trace`]: OpenTelemetry traces — W3C context through Kafka, batch and event spans, OTLP export.
//! - [`bench`]: the benchmark of every stage and the whole fleet (`auditflow-bench`).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alert;
pub mod api;
pub mod bench;
pub mod checkpoints;
pub mod cli;
pub mod codec;
pub mod compliance;
pub mod config;
pub mod db;
pub mod demo;
pub mod enrich;
pub mod error;
pub mod event;
pub mod index;
pub mod ledger;
pub mod merkle;
pub mod privacy;
pub mod proof;
pub mod redact;
pub mod redis_conn;
pub mod retention;
pub mod rule_match;
pub mod rules;
pub mod runtime;
pub mod stages;
pub mod telemetry;
pub mod trace;
pub mod witness;
