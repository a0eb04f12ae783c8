//! The enrich stage's pure core: raw message bytes → validated, normalised, enriched event.
//!
//! Rejection kinds, by check. Size, encoding and parsing come first; then `action` and
//! `resource`; then the other fields in schema order. The first failing check wins.
//!
//! | check | kind |
//! |---|---|
//! | payload longer than `max_message_bytes` | `TooLarge` |
//! | empty, or neither a JSON object nor Avro single-object (`C3 01`) | `UnsupportedEncoding` |
//! | JSON syntax error, truncated JSON, or a JSON value that is not an object | `InvalidJson` |
//! | JSON of the wrong shape: a field of the wrong type (`"statusCode":"200"`), a duplicate field | `InvalidField` |
//! | Avro fingerprint mismatch, truncated or malformed datum | `InvalidAvro` |
//! | Avro `metadata` text that is not JSON | `InvalidField` |
//! | `action` / `resource` absent or blank | `MissingField` |
//! | a string over its length limit, or with control characters | `InvalidField` |
//! | `timestamp` unparseable, before 2000-01-01, or > 1 day ahead of `now` (a JSON value of the wrong type, e.g. `true`, is `InvalidField` like any type error) | `InvalidTimestamp` |
//! | `method` not an HTTP token; `statusCode` outside 100..=599; `duration` < 0 | `InvalidField` |
//! | `ipAddress` not an IPv4/IPv6 address | `InvalidIp` |
//! | `classification` / `severity` not an allowed value | `UnknownEnum` |
//! | `metadata` not an object, or containing NUL | `InvalidField` |
//! | `metadata` nested deeper than `max_metadata_depth` (or than the JSON parser's 128 levels) | `MetadataTooDeep` |
//!
//! Type errors are told apart from syntax errors with `serde_json::Error::classify`: text that
//! is not JSON is `InvalidJson`, well-formed JSON with a wrongly typed field is `InvalidField`.

mod asn;
mod compliance;
mod geo;
mod ip_facts;
pub mod mmdb_writer;
mod validate;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::codec;
use crate::error::{ConfigError, Rejection, RejectionKind};
use crate::event::{EnrichedEvent, RawEvent, SourcePosition};

pub use compliance::{
    Compliance, ComplianceConfig, GdprConfig, HipaaConfig, MatchField, PciConfig, SoxConfig,
};
pub use asn::AsnDb;
pub use geo::GeoDb;
pub use ip_facts::{ip_facts, parse_ip};
pub use validate::{
    default_id, ID_NAMESPACE, MAX_ENDPOINT_CHARS, MAX_ERROR_MESSAGE_CHARS, MAX_FUTURE_SKEW_MS,
    MAX_IDENT_CHARS, MAX_ID_CHARS, MAX_METHOD_CHARS, MAX_USER_AGENT_CHARS, MIN_EVENT_TIME_MS,
};

use validate::Limits;

/// Settings of the enrich stage (`[enrich]` in the config file; every key optional).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// Larger payloads are rejected before parsing. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Deepest metadata nesting accepted; the metadata object itself is depth 1. Default 8.
    pub max_metadata_depth: usize,
    /// A City database (`.mmdb`), or a directory of them; without one, events get no location.
    pub geoip_db: Option<PathBuf>,
    /// An ASN database (`.mmdb`) or range table (`.csv`), or a directory of them; without one,
    /// events get no autonomous system.
    pub asn_db: Option<PathBuf>,
    pub compliance: ComplianceConfig,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            max_message_bytes: 1024 * 1024,
            max_metadata_depth: 8,
            geoip_db: None,
            asn_db: None,
            compliance: ComplianceConfig::default(),
        }
    }
}

/// Beyond this, `serde_json` refuses the document anyway (recursion limit 128, and metadata
/// sits one level inside the event), so a larger setting would be a silent lie.
const METADATA_DEPTH_CEILING: usize = 126;

impl EnrichConfig {
    fn check(&self) -> Result<Limits, ConfigError> {
        if self.max_message_bytes == 0 {
            return Err(ConfigError::new(
                "enrich.max_message_bytes",
                "must be at least 1",
            ));
        }
        if !(1..=METADATA_DEPTH_CEILING).contains(&self.max_metadata_depth) {
            return Err(ConfigError::new(
                "enrich.max_metadata_depth",
                format!("must be between 1 and {METADATA_DEPTH_CEILING}"),
            ));
        }
        Ok(Limits {
            max_metadata_depth: self.max_metadata_depth,
        })
    }
}

/// Validates, normalises and enriches raw audit messages. Build once at start and share:
/// it is `Send + Sync` and `enrich` takes `&self`.
#[derive(Debug)]
pub struct Enricher {
    max_message_bytes: usize,
    limits: Limits,
    geo: Option<GeoDb>,
    asn: Option<AsnDb>,
    compliance: Compliance,
}

/// What a payload looks like, judged from its first bytes.
enum Encoding<'a> {
    Json(&'a [u8]),
    Avro,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn detect(payload: &[u8]) -> Result<Encoding<'_>, Rejection> {
    if payload.starts_with(&codec::SINGLE_OBJECT_MAGIC) {
        return Ok(Encoding::Avro);
    }
    // Some producers prepend a byte-order mark; JSON parsers do not accept one.
    let body = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let first = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| body[i]);
    match first {
        Some(b'{') => Ok(Encoding::Json(body)),
        None => Err(Rejection::new(
            RejectionKind::UnsupportedEncoding,
            if payload.is_empty() {
                "empty payload"
            } else {
                "blank payload"
            },
        )),
        Some(b) => {
            // Valid JSON that is not an object deserves the more precise answer.
            if b"[\"-0123456789tfn".contains(&b)
                && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
            {
                return Err(Rejection::new(
                    RejectionKind::InvalidJson,
                    "the JSON payload must be an object",
                ));
            }
            Err(Rejection::new(
                RejectionKind::UnsupportedEncoding,
                format!(
                    "payload starts with byte {b:#04x}: neither a JSON object nor Avro single-object encoding"
                ),
            ))
        }
    }
}

fn parse_json(body: &[u8]) -> Result<RawEvent, Rejection> {
    serde_json::from_slice(body)
        .map_err(|e| codec::json_rejection(&e, RejectionKind::InvalidJson, "invalid JSON"))
}

impl Enricher {
    /// Checks the settings, compiles the compliance patterns and opens the GeoIP database.
    pub fn new(config: &EnrichConfig) -> Result<Enricher, ConfigError> {
        let limits = config.check()?;
        let compliance = Compliance::new(&config.compliance)?;
        let geo = config.geoip_db.as_deref().map(GeoDb::open).transpose()?;
        let asn = config.asn_db.as_deref().map(AsnDb::open).transpose()?;
        // Derive the schema fingerprints now rather than on the first message.
        let _ = (codec::raw_schema(), codec::enriched_schema());
        Ok(Enricher {
            max_message_bytes: config.max_message_bytes,
            limits,
            geo,
            asn,
            compliance,
        })
    }

    /// Whether a GeoIP database is loaded.
    pub fn has_geoip(&self) -> bool {
        self.geo.is_some()
    }

    /// When the geolocation (`geoip`) and autonomous-system (`asn`) data in use were made.
    pub fn data_dates(&self) -> Vec<(&'static str, DateTime<Utc>)> {
        let geo = self.geo.as_ref().and_then(GeoDb::built).map(|d| ("geoip", d));
        let asn = self.asn.as_ref().and_then(AsnDb::built).map(|d| ("asn", d));
        geo.into_iter().chain(asn).collect()
    }

    /// One raw message (JSON, or Avro single-object encoded with `schemas/audit_raw.avsc`) →
    /// enriched event, or the reason it can never be processed.
    ///
    /// `now` is the processing time: it bounds future timestamps, is the fallback event time,
    /// and becomes `enriched_at`.
    pub fn enrich(
        &self,
        payload: &[u8],
        source: &SourcePosition,
        now: DateTime<Utc>,
    ) -> Result<EnrichedEvent, Rejection> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejection::new(
                RejectionKind::TooLarge,
                format!(
                    "payload is {} bytes; the limit is {}",
                    payload.len(),
                    self.max_message_bytes
                ),
            ));
        }
        let raw = match detect(payload)? {
            Encoding::Json(body) => parse_json(body)?,
            Encoding::Avro => codec::decode_raw(payload)?,
        };
        let (mut ev, addr) = validate::normalize(raw, &self.limits, source, now)?;
        if let (Some(addr), Some(facts)) = (addr, &ev.ip) {
            // Private and special addresses have no meaningful location or network.
            if facts.global {
                ev.location = self.geo.as_ref().and_then(|g| g.lookup(addr));
                ev.asn = self.asn.as_ref().and_then(|a| a.lookup(addr));
            }
        }
        ev.compliance = self.compliance.flags(&ev);
        Ok(ev)
    }
}

/// Validation and normalisation alone, with the limits of `config` (used by `auditflow emit`
/// to refuse bad input before sending). Time bounds are checked against the current clock.
pub fn validate_raw(raw: &RawEvent, config: &EnrichConfig) -> Result<(), Rejection> {
    let limits = config.check().map_err(|e| {
        Rejection::new(RejectionKind::InvalidField, format!("cannot validate: {e}"))
    })?;
    // The enrich stage measures the message as sent; `emit` sends this JSON serialisation.
    let mut size = ByteCount(0);
    if serde_json::to_writer(&mut size, raw).is_ok() && size.0 > config.max_message_bytes {
        return Err(Rejection::new(
            RejectionKind::TooLarge,
            format!(
                "event is {} bytes as JSON; the limit is {}",
                size.0, config.max_message_bytes
            ),
        ));
    }
    let source = SourcePosition {
        topic: String::new(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };
    validate::normalize(raw.clone(), &limits, &source, Utc::now()).map(|_| ())
}

/// Counts bytes written, to size a serialisation without keeping it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
