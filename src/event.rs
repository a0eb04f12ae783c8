//! The audit event model: what producers send ([`RawEvent`]) and the normalised, enriched
//! record every later stage works with ([`EnrichedEvent`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// `FromStr` failure for [`Classification`] / [`Severity`]; the message lists the allowed values
/// because it ends up verbatim in DLQ headers and CLI errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub allowed: &'static [&'static str],
}

impl fmt::Display for ParseEnumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is untrusted input: escaped by `{:?}` and cut short.
        let value = match self.value.char_indices().nth(64) {
            Some((cut, _)) => &self.value[..cut],
            None => &self.value,
        };
        write!(
            f,
            "unknown {} {value:?} (allowed: {})",
            self.what,
            self.allowed.join(", ")
        )
    }
}

impl std::error::Error for ParseEnumError {}

/// Generates the string conversions shared by the two enums: upper-case canonical form,
/// case-insensitive parsing without allocating, serde through those.
macro_rules! string_enum {
    ($ty:ident, $what:literal, $visitor:ident, [$($variant:ident => $text:literal),+ $(,)?]) => {
        impl $ty {
            /// All values, in order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// The canonical upper-case names, in order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let t = s.trim();
                $(if t.eq_ignore_ascii_case($text) {
                    return Ok($ty::$variant);
                })+
                Err(ParseEnumError { what: $what, value: s.to_owned(), allowed: Self::NAMES })
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        struct $visitor;

        impl<'de> Visitor<'de> for $visitor {
            type Value = $ty;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "one of {}", $ty::NAMES.join(", "))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                v.parse().map_err(E::custom)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str($visitor)
            }
        }
    };
}

/// Security classification of the data touched. Ordered from least to most sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Classification {
    Public,
    #[default]
    Internal,
    Confidential,
    Restricted,
}

string_enum!(Classification, "classification", ClassificationVisitor, [
    Public => "PUBLIC",
    Internal => "INTERNAL",
    Confidential => "CONFIDENTIAL",
    Restricted => "RESTRICTED",
]);

/// Event severity. Ordered, so rules can say "HIGH or above".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Severity {
    #[default]
    Low,
    Medium,
    High,
    Critical,
}

string_enum!(Severity, "severity", SeverityVisitor, [
    Low => "LOW",
    Medium => "MEDIUM",
    High => "HIGH",
    Critical => "CRITICAL",
]);

/// The event time as a producer sent it: RFC 3339 text or epoch milliseconds.
/// Kept as sent so validation, not serde, decides what is acceptable.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTimestamp {
    Rfc3339(String),
    EpochMillis(i64),
}

impl Serialize for RawTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RawTimestamp::Rfc3339(s) => serializer.serialize_str(s),
            RawTimestamp::EpochMillis(ms) => serializer.serialize_i64(*ms),
        }
    }
}

struct RawTimestampVisitor;

impl<'de> Visitor<'de> for RawTimestampVisitor {
    type Value = RawTimestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 string or epoch milliseconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTimestamp, E> {
        Ok(RawTimestamp::Rfc3339(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RawTimestamp, E> {
        Ok(RawTimestamp::Rfc3339(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTimestamp, E> {
        Ok(RawTimestamp::EpochMillis(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTimestamp, E> {
        i64::try_from(v)
            .map(RawTimestamp::EpochMillis)
            .map_err(|_| E::custom("timestamp out of range"))
    }

    // Browsers produce fractional milliseconds (`performance.timeOrigin + performance.now()`);
    // the fraction is dropped, as the event model keeps milliseconds.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawTimestamp, E> {
        if v.is_finite() && v.abs() < 9.0e15 {
            Ok(RawTimestamp::EpochMillis(v.floor() as i64))
        } else {
            Err(E::custom("timestamp out of range"))
        }
    }
}

impl<'de> Deserialize<'de> for RawTimestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawTimestampVisitor)
    }
}

/// Accepts whole or fractional milliseconds (browsers measure with `performance.now()`),
/// rounding fractions; validation checks the sign.
fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct DurationVisitor;

    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration in milliseconds")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<i64>, D2::Error> {
            d.deserialize_any(self)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<i64>, E> {
            Ok(Some(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<i64>, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("duration out of range"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<i64>, E> {
            if v.is_finite() && v.abs() < 9.0e15 {
                Ok(Some(v.round() as i64))
            } else {
                Err(E::custom("duration out of range"))
            }
        }
    }

    deserializer.deserialize_option(DurationVisitor)
}

/// What upstream services produce to `audit-raw`. Everything is optional here; validation in
/// `crate::enrich` decides what is acceptable, so that a bad value is reported precisely
/// instead of as a generic parse failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<RawTimestamp>,
    #[serde(default, alias = "user_id", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, alias = "session_id", skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(
        default,
        alias = "resource_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(
        default,
        alias = "status_code",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_code: Option<i32>,
    #[serde(default, alias = "user_agent", skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, alias = "ip_address", skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(
        default,
        alias = "error_message",
        skip_serializing_if = "Option::is_none"
    )]
    pub error_message: Option<String>,
    /// Milliseconds. `durationMs`/`duration_ms` are accepted so an enriched event fed back in
    /// keeps its duration.
    #[serde(
        default,
        alias = "durationMs",
        alias = "duration_ms",
        deserialize_with = "de_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<i64>,
}

/// Where an input message came from (Kafka coordinates as plain data).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message timestamp, if the broker/producer set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

/// Facts about the client address, computed locally (no lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpFacts {
    /// 4 or 6 (IPv4-mapped IPv6 addresses are reported as 4).
    pub version: u8,
    /// RFC 1918 ranges, or IPv6 unique-local fc00::/7.
    pub private: bool,
    pub loopback: bool,
    pub link_local: bool,
    pub multicast: bool,
    /// Special-purpose space that is neither private nor routable: unspecified, documentation,
    /// benchmarking, shared CGNAT 100.64/10, 240/4 incl. broadcast, IETF assignments, …
    pub reserved: bool,
    /// None of the above: a publicly routable address.
    pub global: bool,
}

/// Geolocation of a global address, from a MaxMind City database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// ISO 3166-1 alpha-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// First (largest) subdivision, e.g. a US state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

impl Location {
    pub fn is_empty(&self) -> bool {
        self.country_code.is_none()
            && self.country.is_none()
            && self.region.is_none()
            && self.city.is_none()
            && self.latitude.is_none()
            && self.longitude.is_none()
    }
}

/// The autonomous system (network operator) announcing a global address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Asn {
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// What the ledger stores of an address's facts: the [`IpFacts`] and, under `asn`, its
/// autonomous system (one JSON column, covered by the row hash like the rest).
pub fn stored_ip_facts(ip: Option<&IpFacts>, asn: Option<&Asn>) -> Option<serde_json::Value> {
    let mut v = serde_json::to_value(ip?).ok()?;
    if let (Some(a), serde_json::Value::Object(m)) = (asn, &mut v) {
        m.insert("asn".into(), serde_json::to_value(a).ok()?);
    }
    Some(v)
}

/// The autonomous system kept in a stored `ip_facts` value, if any.
pub fn stored_asn(ip_facts: &serde_json::Value) -> Option<Asn> {
    serde_json::from_value(ip_facts.get("asn")?.clone()).ok()
}

/// Which compliance regimes the event is relevant to (decided by configured criteria).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ComplianceFlags {
    pub gdpr: bool,
    pub sox: bool,
    pub hipaa: bool,
    pub pci: bool,
}

/// The normalised, enriched record sent to `audit-enriched` and persisted.
///
/// Timestamps carry millisecond precision (what the Avro schema stores), so an event survives an
/// Avro round trip unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrichedEvent {
    /// Upstream id, or a UUIDv5 of the source coordinates (stable across replays).
    pub id: String,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub action: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Upper-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Canonical textual form (IPv4-mapped IPv6 shown as IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    pub classification: Classification,
    pub severity: Severity,
    /// Always a JSON object when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    pub compliance: ComplianceFlags,
    /// Coordinates of the raw message in `audit-raw`.
    pub source: SourcePosition,
    pub enriched_at: DateTime<Utc>,
    /// The address's autonomous system, when the ASN database knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<Asn>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_strings_and_defaults() {
        assert_eq!(Classification::default(), Classification::Internal);
        assert_eq!(Severity::default(), Severity::Low);
        assert_eq!(Classification::Restricted.as_str(), "RESTRICTED");
        assert_eq!(Severity::Critical.to_string(), "CRITICAL");
        for c in Classification::ALL {
            assert_eq!(c.as_str().parse::<Classification>().unwrap(), *c);
        }
        for s in Severity::ALL {
            assert_eq!(s.as_str().to_lowercase().parse::<Severity>().unwrap(), *s);
        }
        assert_eq!(
            "cOnFiDeNtIaL".parse::<Classification>().unwrap(),
            Classification::Confidential
        );
    }

    #[test]
    fn enum_parse_error_names_allowed_values() {
        let e = "urgent".parse::<Severity>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("LOW, MEDIUM, HIGH, CRITICAL"), "{msg}");
        assert!(msg.contains("urgent"), "{msg}");
        let e = "secret".parse::<Classification>().unwrap_err();
        assert!(e
            .to_string()
            .contains("PUBLIC, INTERNAL, CONFIDENTIAL, RESTRICTED"));
    }

    #[test]
    fn severity_is_ordered() {
        assert!(Severity::Low < Severity::Medium);
        assert!(Severity::High < Severity::Critical);
        assert!(Classification::Public < Classification::Restricted);
    }

    #[test]
    fn enum_serde_uses_upper_case() {
        assert_eq!(serde_json::to_string(&Severity::High).unwrap(), "\"HIGH\"");
        assert_eq!(
            serde_json::from_str::<Severity>("\"high\"").unwrap(),
            Severity::High
        );
        assert!(serde_json::from_str::<Severity>("\"nope\"").is_err());
    }

    #[test]
    fn raw_event_accepts_camel_and_snake_case_and_ignores_unknown() {
        let a: RawEvent = serde_json::from_str(
            r#"{"userId":"u1","statusCode":200,"ipAddress":"1.2.3.4","extra":{"x":1},"timestamp":1700000000000}"#,
        )
        .unwrap();
        let b: RawEvent = serde_json::from_str(
            r#"{"user_id":"u1","status_code":200,"ip_address":"1.2.3.4","timestamp":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.timestamp,
            Some(RawTimestamp::EpochMillis(1_700_000_000_000))
        );
        let c: RawEvent =
            serde_json::from_str(r#"{"timestamp":"2024-01-01T00:00:00Z","duration":12.6}"#)
                .unwrap();
        assert_eq!(
            c.timestamp,
            Some(RawTimestamp::Rfc3339("2024-01-01T00:00:00Z".into()))
        );
        assert_eq!(c.duration, Some(13));
        let d: RawEvent = serde_json::from_str(r#"{"durationMs":5}"#).unwrap();
        assert_eq!(d.duration, Some(5));
    }

    #[test]
    fn raw_event_serialises_camel_case_without_nones() {
        let raw = RawEvent {
            action: Some("login".into()),
            user_id: Some("u".into()),
            timestamp: Some(RawTimestamp::EpochMillis(5)),
            ..Default::default()
        };
        let json = serde_json::to_string(&raw).unwrap();
        assert_eq!(json, r#"{"timestamp":5,"userId":"u","action":"login"}"#);
        assert_eq!(serde_json::from_str::<RawEvent>(&json).unwrap(), raw);
    }
}
