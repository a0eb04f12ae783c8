//! Field-level validation and normalisation of a [`RawEvent`] into an [`EnrichedEvent`]
//! (without the lookups: geolocation and compliance are added by the `Enricher`).
//!
//! Strings are trimmed in place and moved, not copied, into the result.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ip_facts::{ip_facts, parse_ip};
use crate::error::{Rejection, RejectionKind};
use crate::event::{
    Classification, ComplianceFlags, EnrichedEvent, RawEvent, RawTimestamp, Severity,
    SourcePosition,
};

/// Maximum length in characters of the event id.
pub const MAX_ID_CHARS: usize = 128;
/// Maximum length of action, resource and the other identifiers.
pub const MAX_IDENT_CHARS: usize = 256;
pub const MAX_METHOD_CHARS: usize = 32;
pub const MAX_ENDPOINT_CHARS: usize = 2048;
pub const MAX_USER_AGENT_CHARS: usize = 1024;
pub const MAX_ERROR_MESSAGE_CHARS: usize = 8192;
/// Longest textual IPv6 form (with an embedded IPv4 part) is 45 characters.
const MAX_IP_CHARS: usize = 64;

/// Events claiming to be older than this are rejected: clocks that far off are broken.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000; // 2000-01-01T00:00:00Z
/// How far in the future an event time may be (clock skew allowance).
pub const MAX_FUTURE_SKEW_MS: i64 = 24 * 60 * 60 * 1000;

/// Namespace of the UUIDv5 ids given to events that arrive without one.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x85c3_3470_3a8b_4c6b_8686_3af7_442d_1f6b);

#[derive(Debug)]
pub(crate) struct Limits {
    pub max_metadata_depth: usize,
}

fn reject(kind: RejectionKind, detail: impl Into<String>) -> Rejection {
    Rejection::new(kind, detail)
}

/// A short, escaped rendering of untrusted text for rejection details (which travel in Kafka
/// headers and logs, so they must not carry control characters or megabytes).
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Controls {
    /// No control characters at all: the value ends up in headers, subjects, log lines.
    Forbid,
    /// Tab, CR and LF allowed (multi-line error messages); other control characters are not.
    AllowWhitespace,
}

/// Finds a C0 control, DEL or C1 control character (the Unicode `Cc` category), scanning
/// bytes: C1 controls are U+0080..U+009F, encoded as `C2 80`..`C2 9F`.
fn first_control(s: &str, allow_ws: bool) -> Option<char> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c < 0x20 || c == 0x7f {
            if allow_ws && matches!(c, b'\t' | b'\n' | b'\r') {
                continue;
            }
            return Some(char::from(c));
        }
        if c == 0xc2 {
            if let Some(&n) = b.get(i + 1) {
                if (0x80..=0x9f).contains(&n) {
                    return char::from_u32(u32::from(n));
                }
            }
        }
    }
    None
}

fn trim_in_place(s: &mut String) {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    if start > 0 {
        s.drain(..start);
    }
}

fn too_long(s: &str, max: usize) -> bool {
    // Byte length bounds the character count, so the count is only needed near the limit.
    s.len() > max && s.chars().count() > max
}

/// Trims; empty becomes `None`; checks length and control characters.
fn text(
    field: &str,
    v: Option<String>,
    max: usize,
    controls: Controls,
) -> Result<Option<String>, Rejection> {
    let Some(mut s) = v else { return Ok(None) };
    trim_in_place(&mut s);
    if s.is_empty() {
        return Ok(None);
    }
    if too_long(&s, max) {
        return Err(reject(
            RejectionKind::InvalidField,
            format!("{field} is longer than {max} characters"),
        ));
    }
    if let Some(c) = first_control(&s, controls == Controls::AllowWhitespace) {
        return Err(reject(
            RejectionKind::InvalidField,
            format!("{field} contains control character U+{:04X}", u32::from(c)),
        ));
    }
    Ok(Some(s))
}

fn required(field: &str, v: Option<String>) -> Result<String, Rejection> {
    text(field, v, MAX_IDENT_CHARS, Controls::Forbid)?
        .ok_or_else(|| reject(RejectionKind::MissingField, format!("{field} is required")))
}

/// RFC 7230 `tchar`: what an HTTP method token may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn method(v: Option<String>) -> Result<Option<String>, Rejection> {
    let Some(mut m) = text("method", v, MAX_METHOD_CHARS, Controls::Forbid)? else {
        return Ok(None);
    };
    if !m.bytes().all(is_tchar) {
        return Err(reject(
            RejectionKind::InvalidField,
            format!("method {} is not an HTTP method token", shown(&m)),
        ));
    }
    m.make_ascii_uppercase();
    Ok(Some(m))
}

fn truncate_to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

fn in_accepted_range(ms: i64, now: DateTime<Utc>) -> bool {
    ms >= MIN_EVENT_TIME_MS && ms <= now.timestamp_millis().saturating_add(MAX_FUTURE_SKEW_MS)
}

/// The event time: given, else the Kafka message timestamp (when plausible), else `now`.
fn event_time(
    raw: Option<&RawTimestamp>,
    source: &SourcePosition,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Rejection> {
    let invalid = |d: String| reject(RejectionKind::InvalidTimestamp, d);
    let ms = match raw {
        None => {
            // A producer without a clock of its own: the broker's stamp is the best evidence.
            return Ok(source
                .timestamp_ms
                .filter(|&ms| in_accepted_range(ms, now))
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or_else(|| truncate_to_millis(now)));
        }
        Some(RawTimestamp::EpochMillis(ms)) => *ms,
        Some(RawTimestamp::Rfc3339(s)) => {
            let t = s.trim();
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| invalid(format!("timestamp {} is not RFC 3339: {e}", shown(t))))?
                .timestamp_millis()
        }
    };
    if ms < MIN_EVENT_TIME_MS {
        // Epoch seconds sent as milliseconds is the classic mistake; say so.
        let hint = if (MIN_EVENT_TIME_MS / 1000..MIN_EVENT_TIME_MS).contains(&ms) {
            " (epoch seconds? milliseconds are expected)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "timestamp {ms} ms is before 2000-01-01{hint}"
        )));
    }
    if !in_accepted_range(ms, now) {
        return Err(invalid(format!(
            "timestamp {ms} ms is more than a day ahead of now ({})",
            now.timestamp_millis()
        )));
    }
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| invalid(format!("timestamp {ms} ms is out of range")))
}

/// The id given to an event without one: UUIDv5 of `topic/partition/offset`, so a replay of
/// the same raw message gets the same id and downstream de-duplication works.
pub fn default_id(source: &SourcePosition) -> String {
    // Kafka topic names are at most 249 characters, so the name fits on the stack.
    let mut name = [0u8; 320];
    let mut w = &mut name[..];
    let uuid = if write!(w, "{}/{}/{}", source.topic, source.partition, source.offset).is_ok() {
        let used = 320 - w.len();
        Uuid::new_v5(&ID_NAMESPACE, &name[..used])
    } else {
        let name = format!("{}/{}/{}", source.topic, source.partition, source.offset);
        Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
    };
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut buf).to_owned()
}

/// Depth of the object itself is 1; arrays count as a level like objects. Also refuses NUL,
/// which PostgreSQL cannot store in `text` or `jsonb`.
fn check_metadata(v: &serde_json::Value, max_depth: usize) -> Result<(), Rejection> {
    use serde_json::Value;
    if !v.is_object() {
        let got = match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        return Err(reject(
            RejectionKind::InvalidField,
            format!("metadata must be a JSON object, got {got}"),
        ));
    }
    fn walk(v: &Value, depth: usize, max: usize) -> Result<(), Rejection> {
        let nul = || {
            reject(
                RejectionKind::InvalidField,
                "metadata contains a NUL character (\\u0000)",
            )
        };
        match v {
            Value::String(s) if s.contains('\0') => Err(nul()),
            Value::Array(items) => {
                if depth > max {
                    return Err(too_deep(max));
                }
                items.iter().try_for_each(|i| walk(i, depth + 1, max))
            }
            Value::Object(map) => {
                if depth > max {
                    return Err(too_deep(max));
                }
                map.iter().try_for_each(|(k, i)| {
                    if k.contains('\0') {
                        return Err(nul());
                    }
                    walk(i, depth + 1, max)
                })
            }
            _ => Ok(()),
        }
    }
    walk(v, 1, max_depth)
}

fn too_deep(max: usize) -> Rejection {
    reject(
        RejectionKind::MetadataTooDeep,
        format!("metadata is nested deeper than {max} levels"),
    )
}

/// Validates and normalises `raw`. The result has no location and no compliance flags yet, and
/// `enriched_at` = `now`; the parsed client address comes alongside for the lookups.
pub(crate) fn normalize(
    raw: RawEvent,
    limits: &Limits,
    source: &SourcePosition,
    now: DateTime<Utc>,
) -> Result<(EnrichedEvent, Option<IpAddr>), Rejection> {
    let RawEvent {
        id,
        timestamp,
        user_id,
        session_id,
        action,
        resource,
        resource_id,
        method: raw_method,
        endpoint,
        status_code,
        user_agent,
        ip_address,
        classification,
        severity,
        metadata,
        success,
        error_message,
        duration,
    } = raw;

    let action = required("action", action)?;
    let resource = required("resource", resource)?;
    let id = match text("id", id, MAX_ID_CHARS, Controls::Forbid)? {
        Some(id) => id,
        None => default_id(source),
    };
    let timestamp = event_time(timestamp.as_ref(), source, now)?;
    let user_id = text("userId", user_id, MAX_IDENT_CHARS, Controls::Forbid)?;
    let session_id = text("sessionId", session_id, MAX_IDENT_CHARS, Controls::Forbid)?;
    let resource_id = text("resourceId", resource_id, MAX_IDENT_CHARS, Controls::Forbid)?;
    let method = method(raw_method)?;
    let endpoint = text("endpoint", endpoint, MAX_ENDPOINT_CHARS, Controls::Forbid)?;
    let status_code = match status_code {
        None => None,
        Some(c) if (100..=599).contains(&c) => Some(c),
        Some(c) => {
            return Err(reject(
                RejectionKind::InvalidField,
                format!("statusCode {c} is not an HTTP status (100..=599)"),
            ))
        }
    };
    let user_agent = text(
        "userAgent",
        user_agent,
        MAX_USER_AGENT_CHARS,
        Controls::Forbid,
    )?;

    let (ip_address, ip, addr) = match ip_address {
        None => (None, None, None),
        Some(mut s) => {
            trim_in_place(&mut s);
            if s.is_empty() {
                (None, None, None)
            } else {
                let addr = (s.len() <= MAX_IP_CHARS).then(|| parse_ip(&s)).flatten();
                let Some(addr) = addr else {
                    return Err(reject(
                        RejectionKind::InvalidIp,
                        format!("ipAddress {} is not an IPv4 or IPv6 address", shown(&s)),
                    ));
                };
                // Reuse the string's buffer for the canonical spelling.
                s.clear();
                let _ = write!(s, "{addr}");
                (Some(s), Some(ip_facts(addr)), Some(addr))
            }
        }
    };

    let classification = match classification.as_deref().map(str::trim) {
        None | Some("") => Classification::default(),
        Some(c) => c
            .parse()
            .map_err(|e| reject(RejectionKind::UnknownEnum, format!("classification: {e}")))?,
    };
    let severity = match severity.as_deref().map(str::trim) {
        None | Some("") => Severity::default(),
        Some(s) => s
            .parse()
            .map_err(|e| reject(RejectionKind::UnknownEnum, format!("severity: {e}")))?,
    };

    if let Some(m) = &metadata {
        check_metadata(m, limits.max_metadata_depth)?;
    }
    let error_message = text(
        "errorMessage",
        error_message,
        MAX_ERROR_MESSAGE_CHARS,
        Controls::AllowWhitespace,
    )?;
    if let Some(d) = duration.filter(|d| *d < 0) {
        return Err(reject(
            RejectionKind::InvalidField,
            format!("duration {d} is negative"),
        ));
    }

    let ev = EnrichedEvent {
        id,
        timestamp,
        user_id,
        session_id,
        action,
        resource,
        resource_id,
        method,
        endpoint,
        status_code,
        user_agent,
        ip_address,
        ip,
        location: None,
        classification,
        severity,
        metadata,
        success: success.unwrap_or(true),
        error_message,
        duration_ms: duration,
        compliance: ComplianceFlags::default(),
        source: source.clone(),
        enriched_at: truncate_to_millis(now),
        asn: None,
    };
    Ok((ev, addr))
}
