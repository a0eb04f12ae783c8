//! The stage runtime: everything about Kafka, batching, offsets, rebalances, dead letters,
//! retries, metrics and shutdown lives here, once. A stage only supplies business logic:
//!
//! - a [`TransformStage`] turns each input message into output records (topic → topic). The
//!   runtime runs it **exactly once**: outputs, dead letters and the consumed offsets are
//!   committed in one Kafka transaction ([`transform::run_transform`]).
//! - a [`SinkStage`] decodes messages and writes batches to an external store together with
//!   the consumed offsets, in the store's own transaction; on assignment the runtime seeks to
//!   the offsets the store holds ([`sink::run_sink`]).
//!
//! Stage code never sees an rdkafka type: it gets an [`InputMessage`] and returns plain data.

pub mod dlq;
pub mod kafka;
pub mod offsets;
pub mod outbox;
pub mod process;
pub mod shutdown;
pub mod sink;
pub mod traces;
pub mod transform;

use std::sync::Arc;

use crate::error::{ConfigError, Rejection};

pub use shutdown::Shutdown;
pub use offsets::OffsetAdvance;
pub use sink::{run_sink, SinkError, SinkErrorKind, SinkStage, WriteOutcome};
pub use transform::{run_transform, BatchOutput, MessageTransform, PerMessage, TransformStage};

/// One consumed message, as stage logic sees it.
#[derive(Debug, Clone, Copy)]
pub struct InputMessage<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Kafka message timestamp (create or log-append time), epoch millis.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// W3C trace context: as the record arrived, until the runtime has decided the event's
    /// own (its span's, when recorded); records made from this input carry it.
    pub trace: Option<crate::trace::TraceParent>,
    /// `tracestate` as it arrived, passed on with `trace`.
    pub tracestate: Option<&'a [u8]>,
}

impl InputMessage<'_> {
    /// The `traceparent` (and `tracestate`) headers for a record made from this input.
    pub fn trace_headers(&self) -> impl Iterator<Item = (&'static str, Vec<u8>)> + '_ {
        let parent = self.trace.map(|t| (crate::trace::TRACEPARENT, t.encode().to_vec()));
        let state = self.trace.and(self.tracestate).map(|s| (crate::trace::TRACESTATE, s.to_vec()));
        parent.into_iter().chain(state)
    }
}

/// A record a stage wants produced.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
}

/// What can stop a stage. Invalid input is never one of these: it goes to the DLQ.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The producer was fenced or hit a fatal error: another instance owns this work now.
    #[error("fatal kafka error, restart required: {0}")]
    FatalKafka(String),
    /// Too much of a batch was invalid; stopping beats draining a bad deploy into the DLQ.
    #[error("stage {stage}: {invalid} of {total} messages in one batch were invalid (limit {limit}); last error: {last}")]
    InvalidRatioExceeded { stage: &'static str, invalid: usize, total: usize, limit: f64, last: Rejection },
    #[error("sink {0}")]
    Sink(String),
    #[error("could not start: {0}")]
    Startup(String),
}

/// Exponential backoff with jitter for transient failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub fn new(max_ms: u64) -> Backoff {
        Backoff { next_ms: 50, max_ms: max_ms.max(50) }
    }
    /// The delay to wait now; doubles each call up to the maximum.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        // ±25% jitter keeps a fleet of instances from retrying in lockstep.
        let jitter = (crate::telemetry::now_ms() as u64 % 50) as f64 / 100.0 - 0.25;
        std::time::Duration::from_millis(((base as f64) * (1.0 + jitter)).max(1.0) as u64)
    }
    pub fn reset(&mut self) {
        self.next_ms = 50;
    }
}

/// The invalid-ratio guard shared by both loops.
pub(crate) fn check_invalid_ratio(
    stage: &'static str,
    config: &crate::config::StageConfig,
    invalid: usize,
    total: usize,
    last: Option<&Rejection>,
) -> Result<(), RuntimeError> {
    if total >= config.invalid_ratio_min_batch && config.max_invalid_ratio < 1.0 {
        let ratio = invalid as f64 / total as f64;
        if ratio > config.max_invalid_ratio {
            return Err(RuntimeError::InvalidRatioExceeded {
                stage,
                invalid,
                total,
                limit: config.max_invalid_ratio,
                last: last.cloned().unwrap_or_else(|| {
                    Rejection::new(crate::error::RejectionKind::InvalidField, "unknown")
                }),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let mut b = Backoff::new(1000);
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert!(delays[0] <= 63, "{delays:?}");
        assert!(delays[9] >= 750 && delays[9] <= 1250, "{delays:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 63);
    }

    #[test]
    fn invalid_ratio_guard() {
        let mut cfg = crate::config::StageConfig {
            max_invalid_ratio: 0.5,
            invalid_ratio_min_batch: 10,
            ..Default::default()
        };
        let r = Rejection::new(crate::error::RejectionKind::InvalidJson, "x");
        assert!(check_invalid_ratio("t", &cfg, 9, 9, Some(&r)).is_ok(), "small batches are not judged");
        assert!(check_invalid_ratio("t", &cfg, 5, 10, Some(&r)).is_ok());
        assert!(check_invalid_ratio("t", &cfg, 6, 10, Some(&r)).is_err());
        cfg.max_invalid_ratio = 1.0;
        assert!(check_invalid_ratio("t", &cfg, 10, 10, Some(&r)).is_ok(), "1.0 disables the guard");
    }
}
