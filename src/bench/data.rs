//! The benchmark's input: the realistic [`EventMix`], generated and serialised before any clock
//! starts, so producing never waits for generation.

use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::cli::emit::event_key;
use crate::codec::encode_enriched;
use crate::demo::EventMix;
use crate::enrich::Enricher;
use crate::event::{EnrichedEvent, SourcePosition};

/// One raw event as it goes on the wire: its partition key and its JSON, without `timestamp`
/// (a paced producer stamps the send time with [`stamp`]).
pub struct Prepared {
    pub id: String,
    pub key: Vec<u8>,
    pub json: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub events: u64,
    pub seconds: f64,
    /// Events generated and serialised per second, single thread.
    pub events_per_sec: f64,
    pub raw_json_bytes_mean: f64,
}

/// `n` events of the mix with `seed`, keyed like `auditflow emit` keys them.
pub fn generate(seed: u64, users: u64, n: u64) -> (Vec<Prepared>, Generation) {
    let started = Instant::now();
    let mut mix = EventMix::new(seed, users);
    let mut out = Vec::with_capacity(n as usize);
    let mut bytes = 0usize;
    for _ in 0..n {
        let raw = mix.next_event();
        let key = event_key(&raw).unwrap_or_default().as_bytes().to_vec();
        // A RawEvent of plain strings, numbers and a JSON object always serialises.
        let json = serde_json::to_vec(&raw).unwrap_or_default();
        bytes += json.len();
        out.push(Prepared { id: raw.id.clone().unwrap_or_default(), key, json });
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = Generation {
        events: n,
        seconds,
        events_per_sec: rate(n, seconds),
        raw_json_bytes_mean: if n == 0 { 0.0 } else { bytes as f64 / n as f64 },
    };
    (out, stats)
}

/// `json` with `"timestamp":<epoch millis>` inserted as its first field, into `out` (cleared).
pub fn stamp(json: &[u8], epoch_ms: i64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"timestamp\":");
    out.extend_from_slice(epoch_ms.to_string().as_bytes());
    match json.get(1..) {
        Some(rest) if json.len() > 2 => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
}

/// What the persist stage would write for `events`, as PostgreSQL `COPY … FROM STDIN` text
/// (same columns as its INSERT), plus the mean Avro size of the enriched records.
pub struct CopyRows {
    pub text: Vec<u8>,
    pub rows: u64,
    pub months: Vec<chrono::DateTime<Utc>>,
    pub enriched_avro_bytes_mean: f64,
}

/// Columns written by `COPY`, in the order [`copy_rows`] emits them.
pub const COPY_COLUMNS: &str = r#"id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint, status_code, user_agent, ip_address, location, ip_facts, classification, severity, metadata, success, error_message, duration, compliance, source_topic, source_partition, source_offset, enriched_at"#;

/// The `i`-th raw event enriched in process, as `audit-enrich` would, with source coordinates
/// spread round-robin over `partitions` of `topic`. `None` for an event enrichment refuses.
pub fn enrich_one(enricher: &Enricher, json: &[u8], i: usize, topic: &str, partitions: i32, now: chrono::DateTime<Utc>) -> Option<EnrichedEvent> {
    let partitions = partitions.max(1) as usize;
    let source = SourcePosition {
        topic: topic.to_string(),
        partition: (i % partitions) as i32,
        offset: (i / partitions) as i64,
        timestamp_ms: Some(now.timestamp_millis()),
    };
    enricher.enrich(json, &source, now).ok()
}

/// Enrich every event in process (as `audit-enrich` would) and render the rows.
pub fn copy_rows(enricher: &Enricher, events: &[Prepared], topic: &str, partitions: i32) -> CopyRows {
    let now = Utc::now();
    let mut text = Vec::with_capacity(events.len() * 600);
    let mut avro = Vec::with_capacity(1024);
    let mut avro_bytes = 0usize;
    let mut rows = 0u64;
    let mut months: Vec<chrono::DateTime<Utc>> = Vec::new();
    for (i, p) in events.iter().enumerate() {
        let Some(ev) = enrich_one(enricher, &p.json, i, topic, partitions, now) else { continue };
        avro.clear();
        encode_enriched(&ev, &mut avro);
        avro_bytes += avro.len();
        use chrono::Datelike;
        if !months.iter().any(|m| (m.year(), m.month()) == (ev.timestamp.year(), ev.timestamp.month())) {
            months.push(ev.timestamp);
        }
        push_row(&mut text, &ev);
        rows += 1;
    }
    CopyRows {
        text,
        rows,
        months,
        enriched_avro_bytes_mean: if rows == 0 { 0.0 } else { avro_bytes as f64 / rows as f64 },
    }
}

fn push_row(out: &mut Vec<u8>, ev: &EnrichedEvent) {
    let ts = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let fields: [Option<String>; 25] = [
        Some(ev.id.clone()),
        Some(ts(&ev.timestamp)),
        ev.user_id.clone(),
        ev.session_id.clone(),
        Some(ev.action.clone()),
        Some(ev.resource.clone()),
        ev.resource_id.clone(),
        ev.method.clone(),
        ev.endpoint.clone(),
        ev.status_code.map(|c| c.to_string()),
        ev.user_agent.clone(),
        ev.ip_address.clone(),
        ev.location.as_ref().and_then(|l| serde_json::to_string(l).ok()),
        ev.ip.as_ref().and_then(|f| serde_json::to_string(f).ok()),
        Some(ev.classification.as_str().to_string()),
        Some(ev.severity.as_str().to_string()),
        ev.metadata.as_ref().map(|m| m.to_string()),
        Some(if ev.success { "t" } else { "f" }.to_string()),
        ev.error_message.clone(),
        ev.duration_ms.map(|d| d.to_string()),
        Some(serde_json::to_string(&ev.compliance).unwrap_or_else(|_| "{}".into())),
        Some(ev.source.topic.clone()),
        Some(ev.source.partition.to_string()),
        Some(ev.source.offset.to_string()),
        Some(ts(&ev.enriched_at)),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match f {
            None => out.extend_from_slice(b"\\N"),
            Some(s) => escape_copy_text(s, out),
        }
    }
    out.push(b'\n');
}

pub use crate::stages::persist::escape_copy_text;

pub fn rate(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_keeps_the_json_valid() {
        let (events, stats) = generate(1, 100, 50);
        assert_eq!(stats.events, 50);
        let mut out = Vec::new();
        for p in &events {
            stamp(&p.json, 1_700_000_000_123, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["timestamp"], 1_700_000_000_123i64);
            assert!(v["id"].is_string());
        }
        stamp(b"{}", 5, &mut out);
        assert_eq!(out, b"{\"timestamp\":5}");
    }

    #[test]
    fn copy_rows_have_every_column() {
        let (events, _) = generate(2, 100, 200);
        let enricher = Enricher::new(&crate::enrich::EnrichConfig::default()).unwrap();
        let rows = copy_rows(&enricher, &events, "t", 6);
        assert_eq!(rows.rows, 200);
        assert!(rows.enriched_avro_bytes_mean > 100.0);
        let text = String::from_utf8(rows.text).unwrap();
        let columns = COPY_COLUMNS.split(',').count();
        for line in text.lines() {
            assert_eq!(line.split('\t').count(), columns, "{line}");
        }
        let mut out = Vec::new();
        escape_copy_text("a\\b\tc\nd\re", &mut out);
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re");
    }
}
