//! W3C Trace Context: the `traceparent` and `tracestate` headers, read and written. Pure.
//!
//! <https://www.w3.org/TR/trace-context/>: `traceparent` is
//! `version-traceid-parentid-flags`, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
//! A header that does not parse is ignored (the event then starts a trace of its own), never a
//! reason to refuse the event: tracing must not change what the pipeline accepts.

use std::fmt;

/// Kafka header and HTTP header names (lower case, as the specification writes them).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` passed on; the specification lets a hop cut longer ones.
pub const MAX_TRACESTATE: usize = 512;

const FLAG_SAMPLED: u8 = 0x01;
/// Trace Context level 2: the trace id's right 7 bytes are random.
const FLAG_RANDOM: u8 = 0x02;

/// A parsed `traceparent`: whose span this is, in which trace, and whether it is sampled.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parse a `traceparent` value. Version 00 must be exactly 55 characters; a later version
    /// may append fields, which are ignored (the specification's forward compatibility).
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let value = value.trim_ascii();
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(value[0], value[1])?;
        if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        if version == 0 && value.len() != 55 {
            return None;
        }
        if value.len() > 55 && value[55] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(value[3 + 2 * i], value[4 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(value[36 + 2 * i], value[37 + 2 * i])?;
        }
        let flags = hex_byte(value[53], value[54])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        // Only the flags this version defines travel on.
        Some(TraceParent { trace_id, span_id, flags: flags & (FLAG_SAMPLED | FLAG_RANDOM) })
    }

    /// A new trace's first span. The ids come from a non-cryptographic generator: they must be
    /// unique, not secret.
    pub fn new_root(sampled: bool) -> TraceParent {
        TraceParent {
            // All 128 bits random, so FLAG_RANDOM (level 2) holds.
            trace_id: fastrand::u128(1..).to_be_bytes(),
            span_id: fastrand::u64(1..).to_be_bytes(),
            flags: FLAG_RANDOM | if sampled { FLAG_SAMPLED } else { 0 },
        }
    }

    /// A child span of this one: same trace, same decision, a new span id.
    pub fn child(&self) -> TraceParent {
        TraceParent { span_id: fastrand::u64(1..).to_be_bytes(), ..*self }
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The header value, version 00.
    pub fn encode(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // encode() writes ASCII only.
        f.write_str(std::str::from_utf8(&self.encode()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl std::str::FromStr for TraceParent {
    type Err = InvalidTraceParent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s.as_bytes()).ok_or(InvalidTraceParent)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")]
pub struct InvalidTraceParent;

/// A `tracestate` value worth passing on: printable ASCII, at most [`MAX_TRACESTATE`] bytes.
/// Anything else is dropped, as the specification allows.
pub fn valid_tracestate(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    (!value.is_empty() && value.len() <= MAX_TRACESTATE && value.iter().all(|b| (0x20..=0x7e).contains(b))).then_some(value)
}

/// A 32-hex-digit trace id, as the query APIs and alert records write it.
pub fn parse_trace_id(s: &str) -> Option<[u8; 16]> {
    let bytes = hex::decode(s.trim()).ok()?;
    let id: [u8; 16] = bytes.try_into().ok()?;
    (id != [0; 16]).then_some(id)
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    // Lower case only: the specification forbids upper-case hex in traceparent.
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let tp: TraceParent = EXAMPLE.parse().unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), EXAMPLE);
        let unsampled: TraceParent = EXAMPLE.replace("-01", "-00").parse().unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn malformed_values_are_ignored_not_guessed() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_version_00_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let tp = TraceParent::parse(later.as_bytes()).unwrap();
        assert_eq!(tp.to_string(), EXAMPLE, "written back as version 00");
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none());
    }

    #[test]
    fn undefined_flags_are_not_passed_on() {
        let tp = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(tp.flags, 0x03);
    }

    #[test]
    fn roots_and_children() {
        let root = TraceParent::new_root(true);
        assert!(root.sampled());
        assert_ne!(root.trace_id, [0; 16]);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(child.flags, root.flags);
        assert!(!TraceParent::new_root(false).sampled());
        assert_eq!(TraceParent::parse(&root.encode()), Some(root));
    }

    #[test]
    fn tracestate_is_passed_on_only_when_well_formed() {
        assert_eq!(valid_tracestate(b" congo=t61rcWkgMzE "), Some(&b"congo=t61rcWkgMzE"[..]));
        assert_eq!(valid_tracestate(b""), None);
        assert_eq!(valid_tracestate("vendor=\u{7f}".as_bytes()), None);
        assert_eq!(valid_tracestate(&vec![b'a'; MAX_TRACESTATE + 1]), None);
    }

    #[test]
    fn trace_ids_as_written_in_alerts() {
        assert_eq!(parse_trace_id("4bf92f3577b34da6a3ce929d0e0e4736").map(hex::encode).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(parse_trace_id("00000000000000000000000000000000"), None);
        assert_eq!(parse_trace_id("4bf92f"), None);
    }
}
