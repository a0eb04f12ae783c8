//! `auditflow emit`: write raw audit events to `audit-raw`, one from flags or many from JSONL.
//! Everything is validated before anything is sent: bad input exits with code 2, nothing sent.

use std::io::BufRead;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::Config;
use crate::enrich::{validate_raw, EnrichConfig};
use crate::event::RawEvent;
use crate::runtime::kafka::{base_client_config, DeliveryTracker};
use crate::trace::{TraceParent, TRACEPARENT};

/// An input problem: reported with its line (for files) and exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Fill in the id (so the caller can print it) and validate.
pub fn prepare(mut raw: RawEvent, enrich: &EnrichConfig) -> Result<RawEvent, InputError> {
    if raw.id.is_none() {
        raw.id = Some(uuid::Uuid::new_v4().to_string());
    }
    validate_raw(&raw, enrich).map_err(|r| InputError(r.to_string()))?;
    Ok(raw)
}

/// Parse and validate JSONL; the first bad line stops everything.
pub fn read_jsonl(reader: impl BufRead, enrich: &EnrichConfig) -> Result<Vec<RawEvent>, InputError> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| InputError(format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawEvent =
            serde_json::from_str(&line).map_err(|e| InputError(format!("line {}: invalid JSON: {e}", i + 1)))?;
        events.push(prepare(raw, enrich).map_err(|e| InputError(format!("line {}: {e}", i + 1)))?);
    }
    Ok(events)
}

/// The key upstream events are partitioned by: user, else session, else IP.
pub fn event_key(raw: &RawEvent) -> Option<&str> {
    raw.user_id.as_deref().or(raw.session_id.as_deref()).or(raw.ip_address.as_deref())
}

/// Send events with an idempotent producer and wait for every acknowledgement.
///
/// Each record carries W3C trace context: a child of `parent` (the caller's own trace, from
/// `--traceparent`) or a new trace, recorded with the configured ratio when tracing is on.
pub fn send(config: &Config, topic: &str, events: &[RawEvent], progress: bool, parent: Option<TraceParent>) -> anyhow::Result<()> {
    let mut cc = base_client_config(config);
    cc.set("enable.idempotence", "true").set("linger.ms", "10").set("compression.type", "lz4");
    for (k, v) in &config.kafka.librdkafka {
        cc.set(k, v);
    }
    let producer: BaseProducer<DeliveryTracker> = cc.create_with_context(DeliveryTracker::default())?;
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(events.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    for (i, raw) in events.iter().enumerate() {
        let payload = serde_json::to_vec(raw)?;
        let key = event_key(raw);
        let mut trace = crate::trace::spans::start_send(parent, topic, raw.id.as_deref().unwrap_or(""));
        let mut record = BaseRecord::to(topic).payload(&payload);
        if let Some(context) = trace.context {
            record = record.headers(OwnedHeaders::new().insert(Header { key: TRACEPARENT, value: Some(&context.encode()[..]) }));
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => {
                    if let Some(span) = &mut trace.span {
                        opentelemetry::trace::Span::end(span);
                    }
                    break;
                }
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
            if let Some(b) = &bar {
                b.set_position(i as u64);
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    if let Some(b) = bar {
        b.finish();
    }
    let failed = producer.context().failed.load(std::sync::atomic::Ordering::SeqCst);
    if failed > 0 {
        let first = producer.context().first_error.lock().ok().and_then(|g| g.clone()).unwrap_or_default();
        anyhow::bail!("{failed} of {} events were not delivered (first error: {first})", events.len());
    }
    Ok(())
}
