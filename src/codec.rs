//! Avro encoding of [`RawEvent`] and [`EnrichedEvent`] with single-object encoding:
//! `0xC3 0x01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
//! Canonical Form, then the binary datum. Consumers can check the schema without a registry.
//!
//! The binary datum is written and read by hand for these two fixed schemas (the generic
//! `apache_avro::Value` path is many times slower). The schemas themselves are the `.avsc` files
//! embedded below; `apache-avro` parses them and produces their canonical form, and the tests
//! prove the hand-written code and `apache-avro` agree byte for byte.
//!
//! The fingerprint uses the canonical form as the Avro specification defines it. `apache-avro`
//! (0.21) leaves `{"type":"long"}` where a logical type was stripped, whereas the specification
//! (and the Java implementation) reduce it to `"long"`; [`canonical_form`] applies that reduction
//! so that non-Rust consumers computing the fingerprint get the same 8 bytes.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use crate::error::{Rejection, RejectionKind};
use crate::event::{
    Asn, Classification, ComplianceFlags, EnrichedEvent, IpFacts, Location, RawEvent, RawTimestamp,
    Severity, SourcePosition,
};

/// The `audit-raw` schema text.
pub const RAW_SCHEMA_JSON: &str = include_str!("../schemas/audit_raw.avsc");
/// The `audit-enriched` schema text.
pub const ENRICHED_SCHEMA_JSON: &str = include_str!("../schemas/audit_enriched.avsc");
/// Version 1 of the `audit-enriched` schema (before `asn`): records written with it are still
/// read (the new field takes its default), so the consumers of `audit-enriched` can be upgraded
/// before `audit-enrich`.
pub const ENRICHED_V1_SCHEMA_JSON: &str = include_str!("../schemas/audit_enriched.v1.avsc");
/// First two bytes of every single-object encoded message.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Magic plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// A parsed embedded schema and what is derived from it, computed once.
pub struct SchemaInfo {
    pub schema: apache_avro::Schema,
    /// Parsing Canonical Form as the specification defines it.
    pub canonical_form: String,
    /// CRC-64-AVRO of the canonical form, as the little-endian bytes the header carries.
    pub fingerprint: [u8; 8],
    /// Magic plus fingerprint.
    pub header: [u8; HEADER_LEN],
}

fn schema_info(text: &'static str, name: &str) -> SchemaInfo {
    // The schemas are compiled into the binary and covered by tests, so a failure here is a
    // build defect, not an input problem.
    let schema = match apache_avro::Schema::parse_str(text) {
        Ok(s) => s,
        Err(e) => panic!("embedded Avro schema {name} is invalid: {e}"),
    };
    let canonical_form = canonical_form(&schema);
    let fingerprint = crc64_avro(canonical_form.as_bytes()).to_le_bytes();
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&SINGLE_OBJECT_MAGIC);
    header[2..].copy_from_slice(&fingerprint);
    SchemaInfo {
        schema,
        canonical_form,
        fingerprint,
        header,
    }
}

/// The `audit-raw` schema (`auditflow.AuditRaw`).
pub fn raw_schema() -> &'static SchemaInfo {
    static RAW: OnceLock<SchemaInfo> = OnceLock::new();
    RAW.get_or_init(|| schema_info(RAW_SCHEMA_JSON, "audit_raw.avsc"))
}

/// The `audit-enriched` schema (`auditflow.AuditEnriched`).
pub fn enriched_schema() -> &'static SchemaInfo {
    static ENRICHED: OnceLock<SchemaInfo> = OnceLock::new();
    ENRICHED.get_or_init(|| schema_info(ENRICHED_SCHEMA_JSON, "audit_enriched.avsc"))
}

/// Version 1 of the `audit-enriched` schema, still read.
pub fn enriched_v1_schema() -> &'static SchemaInfo {
    static ENRICHED_V1: OnceLock<SchemaInfo> = OnceLock::new();
    ENRICHED_V1.get_or_init(|| schema_info(ENRICHED_V1_SCHEMA_JSON, "audit_enriched.v1.avsc"))
}

/// Parsing Canonical Form per the Avro specification: `apache-avro`'s form with primitive
/// schemas that carried only a (stripped) logical type reduced to their plain name.
pub fn canonical_form(schema: &apache_avro::Schema) -> String {
    let mut pcf = schema.canonical_form();
    // In canonical form every string is a name, symbol or keyword (no braces or quotes inside),
    // so this textual reduction cannot touch anything but a bare primitive schema object.
    for p in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        let obj = format!("{{\"type\":\"{p}\"}}");
        if pcf.contains(&obj) {
            pcf = pcf.replace(&obj, &format!("\"{p}\""));
        }
    }
    pcf
}

const CRC64_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const CRC64_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (CRC64_EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// The CRC-64-AVRO ("Rabin") fingerprint from the Avro specification.
pub fn crc64_avro(data: &[u8]) -> u64 {
    let mut fp = CRC64_EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ CRC64_TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

// ---------------------------------------------------------------------------------------------
// Writing

#[inline]
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// `["null", "string"]`.
#[inline]
fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_long(out, 0),
        Some(s) => {
            put_long(out, 1);
            put_str(out, s);
        }
    }
}

/// `["null", "long"]` / `["null", "int"]` (same encoding).
#[inline]
fn put_opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => put_long(out, 0),
        Some(v) => {
            put_long(out, 1);
            put_long(out, v);
        }
    }
}

#[inline]
fn put_opt_double(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => put_long(out, 0),
        Some(v) => {
            put_long(out, 1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `["null", "string"]` holding JSON text, written in place: the JSON goes to the end of `out`
/// and its length prefix is inserted before it, which avoids a scratch buffer per event.
fn put_opt_json(out: &mut Vec<u8>, v: Option<&serde_json::Value>) {
    let Some(v) = v else {
        put_long(out, 0);
        return;
    };
    let branch_at = out.len();
    put_long(out, 1);
    let start = out.len();
    if serde_json::to_writer(&mut *out, v).is_err() {
        // Serialising a `Value` into a Vec cannot fail; should it ever, null is still a
        // well-formed datum.
        out.truncate(branch_at);
        put_long(out, 0);
        return;
    }
    let len = out.len() - start;
    let mut tmp = [0u8; 10];
    let n = long_into(&mut tmp, len as i64);
    out.splice(start..start, tmp[..n].iter().copied());
}

/// Zig-zag varint into a stack buffer; returns the number of bytes used.
fn long_into(buf: &mut [u8; 10], v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 0;
    while z >= 0x80 {
        buf[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    buf[n] = z as u8;
    n + 1
}

/// Appends the single-object encoding of `ev` to `out` (which is not cleared, so a caller can
/// reuse one buffer).
pub fn encode_enriched(ev: &EnrichedEvent, out: &mut Vec<u8>) {
    out.reserve(256);
    out.extend_from_slice(&enriched_schema().header);
    put_str(out, &ev.id);
    put_long(out, ev.timestamp.timestamp_millis());
    put_opt_str(out, ev.user_id.as_deref());
    put_opt_str(out, ev.session_id.as_deref());
    put_str(out, &ev.action);
    put_str(out, &ev.resource);
    put_opt_str(out, ev.resource_id.as_deref());
    put_opt_str(out, ev.method.as_deref());
    put_opt_str(out, ev.endpoint.as_deref());
    put_opt_long(out, ev.status_code.map(i64::from));
    put_opt_str(out, ev.user_agent.as_deref());
    put_opt_str(out, ev.ip_address.as_deref());
    match &ev.ip {
        None => put_long(out, 0),
        Some(ip) => {
            put_long(out, 1);
            put_long(out, i64::from(ip.version));
            put_bool(out, ip.private);
            put_bool(out, ip.loopback);
            put_bool(out, ip.link_local);
            put_bool(out, ip.multicast);
            put_bool(out, ip.reserved);
            put_bool(out, ip.global);
        }
    }
    match &ev.location {
        None => put_long(out, 0),
        Some(loc) => {
            put_long(out, 1);
            put_opt_str(out, loc.country_code.as_deref());
            put_opt_str(out, loc.country.as_deref());
            put_opt_str(out, loc.region.as_deref());
            put_opt_str(out, loc.city.as_deref());
            put_opt_double(out, loc.latitude);
            put_opt_double(out, loc.longitude);
        }
    }
    put_long(out, ev.classification as i64);
    put_long(out, ev.severity as i64);
    put_opt_json(out, ev.metadata.as_ref());
    put_bool(out, ev.success);
    put_opt_str(out, ev.error_message.as_deref());
    put_opt_long(out, ev.duration_ms);
    put_bool(out, ev.compliance.gdpr);
    put_bool(out, ev.compliance.sox);
    put_bool(out, ev.compliance.hipaa);
    put_bool(out, ev.compliance.pci);
    put_str(out, &ev.source.topic);
    put_long(out, i64::from(ev.source.partition));
    put_long(out, ev.source.offset);
    put_opt_long(out, ev.source.timestamp_ms);
    put_long(out, ev.enriched_at.timestamp_millis());
    match &ev.asn {
        None => put_long(out, 0),
        Some(a) => {
            put_long(out, 1);
            put_long(out, i64::from(a.number));
            put_opt_str(out, a.organization.as_deref());
        }
    }
}

/// Single-object encoding of a raw event (used by tests and `auditflow emit --format avro`).
pub fn encode_raw(raw: &RawEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&raw_schema().header);
    put_opt_str(&mut out, raw.id.as_deref());
    match &raw.timestamp {
        None => put_long(&mut out, 0),
        Some(RawTimestamp::EpochMillis(ms)) => {
            put_long(&mut out, 1);
            put_long(&mut out, *ms);
        }
        Some(RawTimestamp::Rfc3339(s)) => {
            put_long(&mut out, 2);
            put_str(&mut out, s);
        }
    }
    put_opt_str(&mut out, raw.user_id.as_deref());
    put_opt_str(&mut out, raw.session_id.as_deref());
    put_opt_str(&mut out, raw.action.as_deref());
    put_opt_str(&mut out, raw.resource.as_deref());
    put_opt_str(&mut out, raw.resource_id.as_deref());
    put_opt_str(&mut out, raw.method.as_deref());
    put_opt_str(&mut out, raw.endpoint.as_deref());
    put_opt_long(&mut out, raw.status_code.map(i64::from));
    put_opt_str(&mut out, raw.user_agent.as_deref());
    put_opt_str(&mut out, raw.ip_address.as_deref());
    put_opt_str(&mut out, raw.classification.as_deref());
    put_opt_str(&mut out, raw.severity.as_deref());
    put_opt_json(&mut out, raw.metadata.as_ref());
    match raw.success {
        None => put_long(&mut out, 0),
        Some(b) => {
            put_long(&mut out, 1);
            put_bool(&mut out, b);
        }
    }
    put_opt_str(&mut out, raw.error_message.as_deref());
    put_opt_long(&mut out, raw.duration);
    out
}

// ---------------------------------------------------------------------------------------------
// Reading

fn bad(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectionKind::InvalidAvro, detail)
}

/// A cursor over untrusted bytes: every read is bounds-checked and every length is checked
/// against what remains before anything is sliced or allocated.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn truncated(&self) -> Rejection {
        bad(format!("truncated datum at byte {}", self.pos))
    }

    fn long(&mut self) -> Result<i64, Rejection> {
        let mut z: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.truncated());
            };
            self.pos += 1;
            // The 10th byte may only carry the top bit of a 64-bit value.
            if shift == 63 && b > 1 {
                return Err(bad(format!(
                    "varint overflows 64 bits at byte {}",
                    self.pos - 1
                )));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn int(&mut self) -> Result<i32, Rejection> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| bad(format!("int out of range at byte {at}")))
    }

    fn boolean(&mut self) -> Result<bool, Rejection> {
        match self.buf.get(self.pos) {
            None => Err(self.truncated()),
            Some(0) => {
                self.pos += 1;
                Ok(false)
            }
            Some(1) => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) => Err(bad(format!(
                "invalid boolean byte {b:#04x} at byte {}",
                self.pos
            ))),
        }
    }

    fn double(&mut self) -> Result<f64, Rejection> {
        let end = self.pos.checked_add(8).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.truncated());
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(f64::from_le_bytes(b))
    }

    fn str(&mut self) -> Result<&'a str, Rejection> {
        let at = self.pos;
        let len = self.long()?;
        let remaining = self.buf.len() - self.pos;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= remaining)
            .ok_or_else(|| {
                bad(format!(
                    "string length {len} at byte {at} exceeds the datum"
                ))
            })?;
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        std::str::from_utf8(bytes).map_err(|_| bad(format!("string at byte {at} is not UTF-8")))
    }

    fn string(&mut self) -> Result<String, Rejection> {
        self.str().map(str::to_owned)
    }

    /// Union branch index, checked against the number of branches.
    fn branch(&mut self, branches: i64) -> Result<i64, Rejection> {
        let at = self.pos;
        let i = self.long()?;
        if (0..branches).contains(&i) {
            Ok(i)
        } else {
            Err(bad(format!("union branch {i} at byte {at} out of range")))
        }
    }

    fn opt_string(&mut self) -> Result<Option<String>, Rejection> {
        Ok(match self.branch(2)? {
            0 => None,
            _ => Some(self.string()?),
        })
    }

    fn opt_long(&mut self) -> Result<Option<i64>, Rejection> {
        Ok(match self.branch(2)? {
            0 => None,
            _ => Some(self.long()?),
        })
    }

    fn opt_int(&mut self) -> Result<Option<i32>, Rejection> {
        Ok(match self.branch(2)? {
            0 => None,
            _ => Some(self.int()?),
        })
    }

    fn opt_double(&mut self) -> Result<Option<f64>, Rejection> {
        Ok(match self.branch(2)? {
            0 => None,
            _ => Some(self.double()?),
        })
    }

    fn opt_bool(&mut self) -> Result<Option<bool>, Rejection> {
        Ok(match self.branch(2)? {
            0 => None,
            _ => Some(self.boolean()?),
        })
    }

    fn timestamp(&mut self, field: &str) -> Result<DateTime<Utc>, Rejection> {
        let ms = self.long()?;
        DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| bad(format!("{field}: timestamp {ms} out of range")))
    }

    fn enum_index(&mut self, symbols: i64, field: &str) -> Result<i64, Rejection> {
        let i = self.long()?;
        if (0..symbols).contains(&i) {
            Ok(i)
        } else {
            Err(bad(format!("{field}: enum index {i} out of range")))
        }
    }

    fn finish(&self) -> Result<(), Rejection> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(bad(format!(
                "{} trailing bytes after the datum",
                self.buf.len() - self.pos
            )))
        }
    }
}

/// Checks the single-object header against `info` and returns the datum.
fn strip_header<'a>(bytes: &'a [u8], info: &SchemaInfo, name: &str) -> Result<&'a [u8], Rejection> {
    if bytes.len() < HEADER_LEN || bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(bad("missing Avro single-object header"));
    }
    if bytes[2..HEADER_LEN] != info.fingerprint {
        return Err(bad(format!(
            "schema fingerprint {} does not match {name} ({})",
            hex(&bytes[2..HEADER_LEN]),
            hex(&info.fingerprint)
        )));
    }
    Ok(&bytes[HEADER_LEN..])
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// How a `serde_json` failure maps to a rejection kind: text that is not JSON is `syntax`,
/// JSON of the wrong shape or type is `field`; nesting past `serde_json`'s recursion limit can
/// only come from metadata (the one nested field), so it is reported as such.
pub(crate) fn json_error_kind(e: &serde_json::Error, syntax: RejectionKind) -> RejectionKind {
    if e.to_string().starts_with("recursion limit exceeded") {
        RejectionKind::MetadataTooDeep
    } else {
        match e.classify() {
            serde_json::error::Category::Data => RejectionKind::InvalidField,
            _ => syntax,
        }
    }
}

/// A rejection for a `serde_json` failure. serde's messages quote the offending value, which
/// can be as large as the payload, so the detail is capped.
pub(crate) fn json_rejection(
    e: &serde_json::Error,
    syntax: RejectionKind,
    what: &str,
) -> Rejection {
    const MAX: usize = 512;
    let mut detail = format!("{what}: {e}");
    if detail.len() > MAX {
        let mut cut = MAX;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    Rejection::new(json_error_kind(e, syntax), detail)
}

fn parse_metadata(text: &str, invalid: RejectionKind) -> Result<serde_json::Value, Rejection> {
    serde_json::from_str(text)
        .map_err(|e| json_rejection(&e, invalid, "metadata is not valid JSON"))
}

/// Decodes an `audit-raw` Avro message. Structural problems are `InvalidAvro`; metadata text
/// that is not JSON is `InvalidField` (the datum itself was fine). Field values are not
/// validated here: that is `crate::enrich`'s job, identical for JSON and Avro input.
pub fn decode_raw(bytes: &[u8]) -> Result<RawEvent, Rejection> {
    let datum = strip_header(bytes, raw_schema(), "auditflow.AuditRaw")?;
    let mut c = Cursor { buf: datum, pos: 0 };
    let id = c.opt_string()?;
    let timestamp = match c.branch(3)? {
        0 => None,
        1 => Some(RawTimestamp::EpochMillis(c.long()?)),
        _ => Some(RawTimestamp::Rfc3339(c.string()?)),
    };
    let user_id = c.opt_string()?;
    let session_id = c.opt_string()?;
    let action = c.opt_string()?;
    let resource = c.opt_string()?;
    let resource_id = c.opt_string()?;
    let method = c.opt_string()?;
    let endpoint = c.opt_string()?;
    let status_code = c.opt_int()?;
    let user_agent = c.opt_string()?;
    let ip_address = c.opt_string()?;
    let classification = c.opt_string()?;
    let severity = c.opt_string()?;
    let metadata_text = match c.branch(2)? {
        0 => None,
        _ => Some(c.str()?),
    };
    let success = c.opt_bool()?;
    let error_message = c.opt_string()?;
    let duration = c.opt_long()?;
    c.finish()?;
    // Parsed after the whole datum is known to be well-formed, so structural damage is
    // reported as such rather than as bad metadata.
    let metadata = match metadata_text {
        None => None,
        Some(t) => Some(parse_metadata(t, RejectionKind::InvalidField)?),
    };
    Ok(RawEvent {
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
        classification,
        severity,
        metadata,
        success,
        error_message,
        duration,
    })
}

/// Decodes an `audit-enriched` Avro message. Anything malformed, including metadata that is not
/// a JSON object, is `InvalidAvro`: a well-behaved producer never writes it.
pub fn decode_enriched(bytes: &[u8]) -> Result<EnrichedEvent, Rejection> {
    // A version 1 record is the current datum without the trailing `asn`.
    let v1 = bytes.get(2..HEADER_LEN) == Some(&enriched_v1_schema().fingerprint[..]);
    let info = if v1 { enriched_v1_schema() } else { enriched_schema() };
    let datum = strip_header(bytes, info, "auditflow.AuditEnriched")?;
    let mut c = Cursor { buf: datum, pos: 0 };
    let id = c.string()?;
    let timestamp = c.timestamp("timestamp")?;
    let user_id = c.opt_string()?;
    let session_id = c.opt_string()?;
    let action = c.string()?;
    let resource = c.string()?;
    let resource_id = c.opt_string()?;
    let method = c.opt_string()?;
    let endpoint = c.opt_string()?;
    let status_code = c.opt_int()?;
    let user_agent = c.opt_string()?;
    let ip_address = c.opt_string()?;
    let ip = match c.branch(2)? {
        0 => None,
        _ => {
            let version = match c.int()? {
                4 => 4,
                6 => 6,
                v => return Err(bad(format!("ip.version {v} is neither 4 nor 6"))),
            };
            Some(IpFacts {
                version,
                private: c.boolean()?,
                loopback: c.boolean()?,
                link_local: c.boolean()?,
                multicast: c.boolean()?,
                reserved: c.boolean()?,
                global: c.boolean()?,
            })
        }
    };
    let location = match c.branch(2)? {
        0 => None,
        _ => Some(Location {
            country_code: c.opt_string()?,
            country: c.opt_string()?,
            region: c.opt_string()?,
            city: c.opt_string()?,
            latitude: c.opt_double()?,
            longitude: c.opt_double()?,
        }),
    };
    let classification = Classification::ALL[c.enum_index(4, "classification")? as usize];
    let severity = Severity::ALL[c.enum_index(4, "severity")? as usize];
    let metadata_text = match c.branch(2)? {
        0 => None,
        _ => Some(c.str()?),
    };
    let success = c.boolean()?;
    let error_message = c.opt_string()?;
    let duration_ms = c.opt_long()?;
    let compliance = ComplianceFlags {
        gdpr: c.boolean()?,
        sox: c.boolean()?,
        hipaa: c.boolean()?,
        pci: c.boolean()?,
    };
    let source = SourcePosition {
        topic: c.string()?,
        partition: c.int()?,
        offset: c.long()?,
        timestamp_ms: c.opt_long()?,
    };
    let enriched_at = c.timestamp("enrichedAt")?;
    let asn = match (v1, if v1 { 0 } else { c.branch(2)? }) {
        (false, 1) => {
            let number = c.long()?;
            let number = u32::try_from(number).map_err(|_| bad(format!("asn.number {number} is out of range")))?;
            Some(Asn { number, organization: c.opt_string()? })
        }
        _ => None,
    };
    c.finish()?;
    let metadata = match metadata_text {
        None => None,
        Some(t) => {
            let v = parse_metadata(t, RejectionKind::InvalidAvro).map_err(|r| bad(r.detail))?;
            if !v.is_object() {
                return Err(bad("metadata is not a JSON object"));
            }
            Some(v)
        }
    };
    Ok(EnrichedEvent {
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
        location,
        classification,
        severity,
        metadata,
        success,
        error_message,
        duration_ms,
        compliance,
        source,
        enriched_at,
        asn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AV;
    use apache_avro::{from_avro_datum, to_avro_datum, GenericSingleObjectReader};
    use serde_json::json;

    struct OurHeader(&'static SchemaInfo);

    impl apache_avro::headers::HeaderBuilder for OurHeader {
        fn build_header(&self) -> Vec<u8> {
            self.0.header.to_vec()
        }
    }

    fn ts(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    pub(crate) fn full_event() -> EnrichedEvent {
        EnrichedEvent {
            id: "evt-1".into(),
            timestamp: ts(1_700_000_000_123),
            user_id: Some("user123".into()),
            session_id: Some("sess-9".into()),
            action: "delete_user".into(),
            resource: "user_management".into(),
            resource_id: Some("user789".into()),
            method: Some("DELETE".into()),
            endpoint: Some("/api/users/user789".into()),
            status_code: Some(200),
            user_agent: Some("Mozilla/5.0".into()),
            ip_address: Some("8.8.8.8".into()),
            ip: Some(IpFacts {
                version: 4,
                private: false,
                loopback: false,
                link_local: false,
                multicast: false,
                reserved: false,
                global: true,
            }),
            location: Some(Location {
                country_code: Some("US".into()),
                country: Some("United States".into()),
                region: Some("California".into()),
                city: Some("Mountain View".into()),
                latitude: Some(37.386),
                longitude: Some(-122.0838),
            }),
            classification: Classification::Confidential,
            severity: Severity::Critical,
            metadata: Some(json!({"records": 1500, "nested": {"a": [1, 2, {"b": null}]}})),
            success: false,
            error_message: Some("Invalid credentials".into()),
            duration_ms: Some(250),
            compliance: ComplianceFlags {
                gdpr: true,
                sox: true,
                hipaa: false,
                pci: true,
            },
            source: SourcePosition {
                topic: "audit-raw".into(),
                partition: 3,
                offset: 42,
                timestamp_ms: Some(1_700_000_000_000),
            },
            enriched_at: ts(1_700_000_000_500),
            asn: Some(Asn { number: 4_200_000_000, organization: Some("Ünïcode Networks, \"Inc.\"".into()) }),
        }
    }

    fn minimal_event() -> EnrichedEvent {
        EnrichedEvent {
            id: String::new(),
            timestamp: ts(0),
            user_id: None,
            session_id: None,
            action: "a".into(),
            resource: "r".into(),
            resource_id: None,
            method: None,
            endpoint: None,
            status_code: None,
            user_agent: None,
            ip_address: None,
            ip: None,
            location: None,
            classification: Classification::Public,
            severity: Severity::Low,
            metadata: None,
            success: true,
            error_message: None,
            duration_ms: None,
            compliance: ComplianceFlags::default(),
            source: SourcePosition {
                topic: String::new(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            enriched_at: ts(0),
            asn: None,
        }
    }

    fn extreme_event() -> EnrichedEvent {
        let mut ev = full_event();
        ev.id = "ünïcödé-🦀-日本語".into();
        ev.action = "ação".repeat(100);
        ev.resource = "ресурс".into();
        ev.timestamp = ts(-62_135_596_800_000); // year 1
        ev.enriched_at = ts(253_402_300_799_999); // year 9999
        ev.status_code = Some(i32::MIN);
        ev.duration_ms = Some(i64::MAX);
        ev.source.partition = i32::MAX;
        ev.source.offset = i64::MIN;
        ev.source.timestamp_ms = Some(i64::MIN);
        ev.ip = Some(IpFacts {
            version: 6,
            private: true,
            loopback: true,
            link_local: true,
            multicast: true,
            reserved: true,
            global: false,
        });
        ev.location = Some(Location {
            country_code: None,
            country: Some("Österreich".into()),
            region: None,
            city: None,
            latitude: Some(f64::MAX),
            longitude: Some(-0.0),
        });
        ev.classification = Classification::Restricted;
        ev.metadata = Some(
            json!({"emoji": "😀", "big": u64::MAX, "neg": i64::MIN, "f": 1.5e300, "s": "x".repeat(5000)}),
        );
        ev
    }

    fn opt(v: Option<AV>) -> AV {
        match v {
            None => AV::Union(0, Box::new(AV::Null)),
            Some(v) => AV::Union(1, Box::new(v)),
        }
    }

    fn ostr(s: &Option<String>) -> AV {
        opt(s.clone().map(AV::String))
    }

    fn rec(fields: Vec<(&str, AV)>) -> AV {
        AV::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// The generic apache-avro form of an enriched event, written independently of our encoder.
    fn enriched_value(ev: &EnrichedEvent) -> AV {
        rec(vec![
            ("id", AV::String(ev.id.clone())),
            (
                "timestamp",
                AV::TimestampMillis(ev.timestamp.timestamp_millis()),
            ),
            ("userId", ostr(&ev.user_id)),
            ("sessionId", ostr(&ev.session_id)),
            ("action", AV::String(ev.action.clone())),
            ("resource", AV::String(ev.resource.clone())),
            ("resourceId", ostr(&ev.resource_id)),
            ("method", ostr(&ev.method)),
            ("endpoint", ostr(&ev.endpoint)),
            ("statusCode", opt(ev.status_code.map(AV::Int))),
            ("userAgent", ostr(&ev.user_agent)),
            ("ipAddress", ostr(&ev.ip_address)),
            (
                "ip",
                opt(ev.ip.map(|ip| {
                    rec(vec![
                        ("version", AV::Int(i32::from(ip.version))),
                        ("private", AV::Boolean(ip.private)),
                        ("loopback", AV::Boolean(ip.loopback)),
                        ("linkLocal", AV::Boolean(ip.link_local)),
                        ("multicast", AV::Boolean(ip.multicast)),
                        ("reserved", AV::Boolean(ip.reserved)),
                        ("global", AV::Boolean(ip.global)),
                    ])
                })),
            ),
            (
                "location",
                opt(ev.location.as_ref().map(|l| {
                    rec(vec![
                        ("countryCode", ostr(&l.country_code)),
                        ("country", ostr(&l.country)),
                        ("region", ostr(&l.region)),
                        ("city", ostr(&l.city)),
                        ("latitude", opt(l.latitude.map(AV::Double))),
                        ("longitude", opt(l.longitude.map(AV::Double))),
                    ])
                })),
            ),
            (
                "classification",
                AV::Enum(ev.classification as u32, ev.classification.as_str().into()),
            ),
            (
                "severity",
                AV::Enum(ev.severity as u32, ev.severity.as_str().into()),
            ),
            (
                "metadata",
                opt(ev.metadata.as_ref().map(|m| AV::String(m.to_string()))),
            ),
            ("success", AV::Boolean(ev.success)),
            ("errorMessage", ostr(&ev.error_message)),
            ("durationMs", opt(ev.duration_ms.map(AV::Long))),
            (
                "compliance",
                rec(vec![
                    ("gdpr", AV::Boolean(ev.compliance.gdpr)),
                    ("sox", AV::Boolean(ev.compliance.sox)),
                    ("hipaa", AV::Boolean(ev.compliance.hipaa)),
                    ("pci", AV::Boolean(ev.compliance.pci)),
                ]),
            ),
            (
                "source",
                rec(vec![
                    ("topic", AV::String(ev.source.topic.clone())),
                    ("partition", AV::Int(ev.source.partition)),
                    ("offset", AV::Long(ev.source.offset)),
                    (
                        "timestampMs",
                        opt(ev.source.timestamp_ms.map(AV::TimestampMillis)),
                    ),
                ]),
            ),
            (
                "enrichedAt",
                AV::TimestampMillis(ev.enriched_at.timestamp_millis()),
            ),
            (
                "asn",
                opt(ev.asn.as_ref().map(|a| {
                    rec(vec![
                        ("number", AV::Long(i64::from(a.number))),
                        ("organization", ostr(&a.organization)),
                    ])
                })),
            ),
        ])
    }

    fn raw_value(raw: &RawEvent) -> AV {
        rec(vec![
            ("id", ostr(&raw.id)),
            (
                "timestamp",
                match &raw.timestamp {
                    None => AV::Union(0, Box::new(AV::Null)),
                    Some(RawTimestamp::EpochMillis(ms)) => {
                        AV::Union(1, Box::new(AV::TimestampMillis(*ms)))
                    }
                    Some(RawTimestamp::Rfc3339(s)) => AV::Union(2, Box::new(AV::String(s.clone()))),
                },
            ),
            ("userId", ostr(&raw.user_id)),
            ("sessionId", ostr(&raw.session_id)),
            ("action", ostr(&raw.action)),
            ("resource", ostr(&raw.resource)),
            ("resourceId", ostr(&raw.resource_id)),
            ("method", ostr(&raw.method)),
            ("endpoint", ostr(&raw.endpoint)),
            ("statusCode", opt(raw.status_code.map(AV::Int))),
            ("userAgent", ostr(&raw.user_agent)),
            ("ipAddress", ostr(&raw.ip_address)),
            ("classification", ostr(&raw.classification)),
            ("severity", ostr(&raw.severity)),
            (
                "metadata",
                opt(raw.metadata.as_ref().map(|m| AV::String(m.to_string()))),
            ),
            ("success", opt(raw.success.map(AV::Boolean))),
            ("errorMessage", ostr(&raw.error_message)),
            ("duration", opt(raw.duration.map(AV::Long))),
        ])
    }

    fn full_raw() -> RawEvent {
        RawEvent {
            id: Some("r-1".into()),
            timestamp: Some(RawTimestamp::EpochMillis(1_700_000_000_000)),
            user_id: Some("user123".into()),
            session_id: Some("s".into()),
            action: Some("login".into()),
            resource: Some("authentication".into()),
            resource_id: Some("rid".into()),
            method: Some("post".into()),
            endpoint: Some("/login".into()),
            status_code: Some(401),
            user_agent: Some("curl/8".into()),
            ip_address: Some("::ffff:10.0.0.50".into()),
            classification: Some("internal".into()),
            severity: Some("HIGH".into()),
            metadata: Some(json!({"attempt": 3, "ünï": ["ü", null, true]})),
            success: Some(false),
            error_message: Some("Invalid credentials".into()),
            duration: Some(i64::MIN),
        }
    }

    fn raw_cases() -> Vec<RawEvent> {
        let mut text_ts = full_raw();
        text_ts.timestamp = Some(RawTimestamp::Rfc3339(
            "2024-05-06T07:08:09.123+02:00".into(),
        ));
        text_ts.status_code = Some(i32::MIN);
        text_ts.action = Some("🦀".repeat(40));
        vec![full_raw(), RawEvent::default(), text_ts]
    }

    fn enriched_cases() -> Vec<EnrichedEvent> {
        vec![full_event(), minimal_event(), extreme_event()]
    }

    #[test]
    fn schemas_parse_and_have_expected_names() {
        assert_eq!(
            raw_schema().schema.name().map(|n| n.fullname(None)),
            Some("auditflow.AuditRaw".to_string())
        );
        assert_eq!(
            enriched_schema().schema.name().map(|n| n.fullname(None)),
            Some("auditflow.AuditEnriched".to_string())
        );
    }

    #[test]
    fn crc64_matches_apache_avro_rabin() {
        use apache_avro::rabin::Rabin;
        for text in [
            RAW_SCHEMA_JSON,
            ENRICHED_SCHEMA_JSON,
            r#""string""#,
            r#"{"type":"fixed","name":"F","size":4}"#,
        ] {
            let schema = apache_avro::Schema::parse_str(text).unwrap();
            let theirs = schema.fingerprint::<Rabin>().bytes;
            let ours = crc64_avro(schema.canonical_form().as_bytes()).to_le_bytes();
            assert_eq!(theirs, ours.to_vec());
        }
    }

    #[test]
    fn canonical_form_reduces_logical_primitives_as_the_spec_says() {
        let pcf = &enriched_schema().canonical_form;
        assert!(!pcf.contains(r#"{"type":"long"}"#), "{pcf}");
        assert!(
            pcf.contains(r#"{"name":"timestamp","type":"long"}"#),
            "{pcf}"
        );
        assert!(
            pcf.contains(r#"{"name":"enrichedAt","type":"long"}"#),
            "{pcf}"
        );
        assert!(!pcf.contains("doc"));
        assert!(!pcf.contains("default"));
        // Same answer the canonical form of a schema without logical types gives.
        let plain = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"t","type":"long"}]}"#,
        )
        .unwrap();
        let logical = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        assert_eq!(canonical_form(&plain), canonical_form(&logical));
        assert_eq!(
            canonical_form(&plain),
            r#"{"name":"R","type":"record","fields":[{"name":"t","type":"long"}]}"#
        );
    }

    #[test]
    fn the_asn_field_is_a_compatible_change_and_version_1_records_still_read() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        let (v1, v2) = (&enriched_v1_schema().schema, &enriched_schema().schema);
        // Full compatibility: new readers read old records, old readers read new ones.
        SchemaCompatibility::mutual_read(v1, v2).unwrap();
        assert_ne!(enriched_v1_schema().fingerprint, enriched_schema().fingerprint);
        for ev in enriched_cases() {
            let mut v2_bytes = Vec::new();
            encode_enriched(&ev, &mut v2_bytes);
            // The same event as a version 1 writer sent it: v1's header, the datum without asn.
            let mut v1_ev = ev.clone();
            v1_ev.asn = None;
            let mut v1_bytes = Vec::new();
            encode_enriched(&v1_ev, &mut v1_bytes);
            v1_bytes.pop(); // the trailing union index 0 of `asn: null`
            v1_bytes[2..HEADER_LEN].copy_from_slice(&enriched_v1_schema().fingerprint);
            // apache-avro agrees that this is a valid version 1 datum, and resolves it to v2.
            let datum = apache_avro::from_avro_datum(v1, &mut &v1_bytes[HEADER_LEN..], Some(v2)).unwrap();
            assert_eq!(datum, enriched_value(&v1_ev).resolve(v2).unwrap());
            assert_eq!(decode_enriched(&v1_bytes).unwrap(), v1_ev, "a version 1 record reads without asn");
            assert_eq!(decode_enriched(&v2_bytes).unwrap(), ev);
            // And an old reader reads a new record, ignoring the field it does not know.
            apache_avro::from_avro_datum(v2, &mut &v2_bytes[HEADER_LEN..], Some(v1)).unwrap();
        }
    }

    #[test]
    fn enriched_ours_equals_apache_avro_both_ways() {
        let info = enriched_schema();
        let reader = GenericSingleObjectReader::new_with_header_builder(
            info.schema.clone(),
            OurHeader(info),
        )
        .unwrap();
        for ev in enriched_cases() {
            let mut ours = Vec::new();
            encode_enriched(&ev, &mut ours);
            // Ours decoded by apache-avro's generic reader.
            let decoded = reader.read_value(&mut &ours[..]).unwrap();
            assert_eq!(decoded, enriched_value(&ev));
            // apache-avro's encoding is byte-identical and decodes with ours.
            let mut theirs = info.header.to_vec();
            theirs.extend(to_avro_datum(&info.schema, enriched_value(&ev)).unwrap());
            assert_eq!(ours, theirs);
            assert_eq!(decode_enriched(&theirs).unwrap(), ev);
        }
    }

    #[test]
    fn raw_ours_equals_apache_avro_both_ways() {
        let info = raw_schema();
        for raw in raw_cases() {
            let ours = encode_raw(&raw);
            let datum = from_avro_datum(&info.schema, &mut &ours[HEADER_LEN..], None).unwrap();
            assert_eq!(datum, raw_value(&raw));
            let mut theirs = info.header.to_vec();
            theirs.extend(to_avro_datum(&info.schema, raw_value(&raw)).unwrap());
            assert_eq!(ours, theirs);
            assert_eq!(decode_raw(&theirs).unwrap(), raw);
        }
    }

    #[test]
    fn encode_appends_to_existing_buffer() {
        let mut buf = vec![1, 2, 3];
        encode_enriched(&full_event(), &mut buf);
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(decode_enriched(&buf[3..]).unwrap(), full_event());
    }

    #[test]
    fn wrong_header_or_schema_is_invalid_avro() {
        let raw = encode_raw(&full_raw());
        let err = decode_enriched(&raw).unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidAvro);
        assert!(err.detail.contains("fingerprint"), "{}", err.detail);
        assert_eq!(
            decode_raw(b"").unwrap_err().kind,
            RejectionKind::InvalidAvro
        );
        assert_eq!(
            decode_raw(b"{\"a\":1}").unwrap_err().kind,
            RejectionKind::InvalidAvro
        );
        let mut trailing = raw.clone();
        trailing.push(0);
        let err = decode_raw(&trailing).unwrap_err();
        assert!(err.detail.contains("trailing"), "{}", err.detail);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let mut enc = Vec::new();
        encode_enriched(&full_event(), &mut enc);
        for n in 0..enc.len() {
            assert_eq!(
                decode_enriched(&enc[..n]).unwrap_err().kind,
                RejectionKind::InvalidAvro,
                "prefix {n}"
            );
        }
        let raw = encode_raw(&full_raw());
        for n in 0..raw.len() {
            assert_eq!(
                decode_raw(&raw[..n]).unwrap_err().kind,
                RejectionKind::InvalidAvro,
                "prefix {n}"
            );
        }
    }

    #[test]
    fn forged_lengths_and_varints_are_rejected_without_allocating() {
        let mut msg = raw_schema().header.to_vec();
        msg.push(2); // id: branch 1 (string)
        put_long(&mut msg, i64::MAX / 2); // absurd string length
        let err = decode_raw(&msg).unwrap_err();
        assert!(err.detail.contains("exceeds"), "{}", err.detail);

        let mut msg = raw_schema().header.to_vec();
        msg.push(2);
        put_long(&mut msg, -5); // negative length
        assert_eq!(
            decode_raw(&msg).unwrap_err().kind,
            RejectionKind::InvalidAvro
        );

        let mut msg = raw_schema().header.to_vec();
        msg.extend([0xff; 11]); // varint longer than 64 bits
        let err = decode_raw(&msg).unwrap_err();
        assert!(err.detail.contains("overflow"), "{}", err.detail);

        let mut msg = raw_schema().header.to_vec();
        msg.push(8); // branch 4 of a 2-branch union
        assert!(decode_raw(&msg).unwrap_err().detail.contains("branch"));
    }

    #[test]
    fn bad_values_inside_enriched_datum_are_rejected() {
        let mut enc = Vec::new();
        encode_enriched(&full_event(), &mut enc);
        // Flip the ip.version value (int 4 → 5).
        let ver_pos = enc.windows(2).position(|w| w == [0x02, 0x08]).unwrap();
        let mut bad_ver = enc.clone();
        bad_ver[ver_pos + 1] = 10;
        let err = decode_enriched(&bad_ver).unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidAvro);
        assert!(err.detail.contains("ip.version"), "{}", err.detail);

        let mut ev = full_event();
        ev.metadata = Some(json!([1, 2]));
        let mut enc = Vec::new();
        encode_enriched(&ev, &mut enc);
        assert!(decode_enriched(&enc)
            .unwrap_err()
            .detail
            .contains("not a JSON object"));
    }

    #[test]
    fn raw_metadata_that_is_not_json_is_invalid_field() {
        let mut msg = raw_schema().header.to_vec();
        msg.extend(std::iter::repeat_n(0u8, 14)); // 14 null fields up to metadata
        msg.push(2);
        put_str(&mut msg, "{not json");
        msg.extend([0, 0, 0]);
        let err = decode_raw(&msg).unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidField);
        let mut deep = raw_schema().header.to_vec();
        deep.extend(std::iter::repeat_n(0u8, 14));
        deep.push(2);
        put_str(
            &mut deep,
            &format!("{}{}", "[".repeat(200), "]".repeat(200)),
        );
        deep.extend([0, 0, 0]);
        assert_eq!(
            decode_raw(&deep).unwrap_err().kind,
            RejectionKind::MetadataTooDeep
        );
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed.max(1);
        move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut next = rng(0x5eed);
        let mut enc = Vec::new();
        encode_enriched(&full_event(), &mut enc);
        let raw = encode_raw(&full_raw());
        for i in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Valid headers so the datum decoders get exercised, not just the header check.
            let mut a = enriched_schema().header.to_vec();
            a.append(&mut body.clone());
            let mut b = raw_schema().header.to_vec();
            b.append(&mut body);
            let _ = decode_enriched(&a);
            if let Err(e) = decode_raw(&b) {
                assert!(matches!(
                    e.kind,
                    RejectionKind::InvalidAvro
                        | RejectionKind::InvalidField
                        | RejectionKind::MetadataTooDeep
                ));
            }
            // Mutations of valid messages: flip one byte.
            let mut m = enc.clone();
            let at = HEADER_LEN + (next() as usize) % (m.len() - HEADER_LEN);
            m[at] ^= (next() as u8) | 1;
            let _ = decode_enriched(&m);
            let mut r = raw.clone();
            let at = HEADER_LEN + (next() as usize) % (r.len() - HEADER_LEN);
            r[at] ^= (next() as u8) | 1;
            let _ = decode_raw(&r);
            let _ = i;
        }
    }
}
