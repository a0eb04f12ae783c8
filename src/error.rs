//! Errors, split the three ways the pipeline treats them:
//! - [`Rejection`]: the input itself is invalid; it goes to the DLQ and the stage moves on.
//! - [`TransientError`]: infrastructure hiccup (broker, database, Redis); retried with backoff.
//! - [`ConfigError`]: fatal at start, with a message naming the setting.

use std::fmt;

/// Why a message was rejected. The `as_str` form is what the DLQ's `error.kind` header carries
/// and what the `auditflow_dlq_total{kind=..}` metric is labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// Payload is not valid JSON (or not a JSON object).
    InvalidJson,
    /// Payload looked like Avro but could not be decoded with the known schema.
    InvalidAvro,
    /// Payload is neither JSON nor Avro single-object encoding.
    UnsupportedEncoding,
    /// Payload larger than the configured maximum.
    TooLarge,
    /// A required field (action, resource) is absent or empty.
    MissingField,
    /// classification / severity not one of the allowed values.
    UnknownEnum,
    /// ipAddress is not a valid IPv4/IPv6 address.
    InvalidIp,
    /// timestamp unparseable or out of the accepted range.
    InvalidTimestamp,
    /// A field has the wrong type, is too long, or holds control characters where none are allowed.
    InvalidField,
    /// metadata nested deeper than the configured limit.
    MetadataTooDeep,
    /// Valid input whose output the broker refuses for good (too large, timestamp out of the
    /// topic's bounds, corrupt record): retrying could never succeed.
    RefusedByBroker,
    /// Valid input whose write a store refuses for good: PostgreSQL (a value out of range, a
    /// constraint: SQLSTATE classes 22 and 23), OpenSearch (a mapping error), Redis (a window
    /// script's error, a key of the wrong type).
    RefusedByStore,
}

impl RejectionKind {
    pub const ALL: [RejectionKind; 12] = [
        RejectionKind::InvalidJson,
        RejectionKind::InvalidAvro,
        RejectionKind::UnsupportedEncoding,
        RejectionKind::TooLarge,
        RejectionKind::MissingField,
        RejectionKind::UnknownEnum,
        RejectionKind::InvalidIp,
        RejectionKind::InvalidTimestamp,
        RejectionKind::InvalidField,
        RejectionKind::MetadataTooDeep,
        RejectionKind::RefusedByBroker,
        RejectionKind::RefusedByStore,
    ];

    /// The kind named by `as_str`'s spelling (a dead letter's `dlq.error.kind` header).
    pub fn from_bytes(name: &[u8]) -> Option<RejectionKind> {
        RejectionKind::ALL.into_iter().find(|k| k.as_str().as_bytes() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::InvalidJson => "invalid_json",
            RejectionKind::InvalidAvro => "invalid_avro",
            RejectionKind::UnsupportedEncoding => "unsupported_encoding",
            RejectionKind::TooLarge => "too_large",
            RejectionKind::MissingField => "missing_field",
            RejectionKind::UnknownEnum => "unknown_enum",
            RejectionKind::InvalidIp => "invalid_ip",
            RejectionKind::InvalidTimestamp => "invalid_timestamp",
            RejectionKind::InvalidField => "invalid_field",
            RejectionKind::MetadataTooDeep => "metadata_too_deep",
            RejectionKind::RefusedByBroker => "refused_by_broker",
            RejectionKind::RefusedByStore => "refused_by_store",
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An input message that can never be processed; carries a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub detail: String,
}

impl Rejection {
    pub fn new(kind: RejectionKind, detail: impl Into<String>) -> Self {
        Rejection { kind, detail: detail.into() }
    }
}

/// A configuration problem found at start. The process exits with this message.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    /// The setting as the operator spells it, e.g. `AUDITFLOW_KAFKA_BROKERS` or `enrich.max_metadata_depth`.
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { setting: setting.into(), reason: reason.into() }
    }
}

/// An infrastructure failure worth retrying (Redis, PostgreSQL, an HTTP endpoint). The runtime
/// commits nothing for the batch, backs off and tries the same batch again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}: {detail}")]
pub struct TransientError {
    /// Short label for metrics and logs, e.g. `redis`, `postgres`, `smtp`.
    pub cause: &'static str,
    pub detail: String,
    /// The server answered and refused the request itself (a script error, a key of the
    /// wrong type): the same input fails the same way however often it is retried. A stage
    /// that can tell which input caused it dead-letters that input; otherwise it is retried
    /// like any other fault and shows as a stall.
    pub refused: bool,
}

impl TransientError {
    pub fn new(cause: &'static str, detail: impl Into<String>) -> Self {
        TransientError { cause, detail: detail.into(), refused: false }
    }

    pub fn refused(cause: &'static str, detail: impl Into<String>) -> Self {
        TransientError { cause, detail: detail.into(), refused: true }
    }
}
