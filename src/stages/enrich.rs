//! `audit-enrich`: the runtime adapter around [`crate::enrich::Enricher`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::codec::encode_enriched;
use crate::enrich::Enricher;
use crate::error::Rejection;
use crate::event::{EnrichedEvent, SourcePosition};
use crate::runtime::{InputMessage, MessageTransform, OutputRecord};

/// Content type header on every `audit-enriched` record.
pub const ENRICHED_CONTENT_TYPE: &[u8] = b"application/vnd.auditflow.enriched.v1+avro";

pub struct EnrichStage {
    enricher: Enricher,
    input_topic: String,
    output_topic: Arc<str>,
}

impl EnrichStage {
    pub fn new(enricher: Enricher, input_topic: String, output_topic: &str) -> EnrichStage {
        EnrichStage { enricher, input_topic, output_topic: Arc::from(output_topic) }
    }
}

/// Enrichment data older than this is stale: geolocations and network owners move.
pub const STALE_DATA_DAYS: i64 = 90;

/// Puts the dates of the enrichment data in use on `/metrics`
/// (`auditflow_enrich_data_timestamp_seconds{data="geoip"|"asn"}`, for an alert on its age) and
/// warns about data older than [`STALE_DATA_DAYS`]; returns the stale ones.
pub fn report_data_dates(enricher: &Enricher, registry: &prometheus::Registry, now: DateTime<Utc>) -> prometheus::Result<Vec<&'static str>> {
    let gauge = prometheus::GaugeVec::new(
        prometheus::Opts::new("auditflow_enrich_data_timestamp_seconds", "When the enrichment data in use (geoip, asn) was made, Unix time"),
        &["data"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    let mut stale = Vec::new();
    for (data, at) in enricher.data_dates() {
        gauge.with_label_values(&[data]).set(at.timestamp() as f64);
        let days = (now - at).num_days();
        if days > STALE_DATA_DAYS {
            tracing::warn!(data, made = %at.date_naive(), days, "enrichment data is older than {STALE_DATA_DAYS} days: fetch a current copy (scripts/stack geoip, or the image's)");
            stale.push(data);
        } else {
            tracing::info!(data, made = %at.date_naive(), days, "enrichment data loaded");
        }
    }
    Ok(stale)
}

/// Partition key downstream: who did it, so per-subject windows see events in order.
fn partition_key(event: &EnrichedEvent) -> Option<Vec<u8>> {
    event
        .user_id
        .as_deref()
        .or(event.session_id.as_deref())
        .or(event.ip_address.as_deref())
        .map(|k| k.as_bytes().to_vec())
}

impl MessageTransform for EnrichStage {
    fn name(&self) -> &'static str {
        "enrich"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input_topic.clone()]
    }

    fn process(&mut self, input: &InputMessage<'_>, out: &mut Vec<OutputRecord>) -> Result<(), Rejection> {
        let source = SourcePosition {
            topic: input.topic.to_string(),
            partition: input.partition,
            offset: input.offset,
            timestamp_ms: input.timestamp_ms,
        };
        let event = self.enricher.enrich(input.payload, &source, Utc::now())?;
        let mut payload = Vec::with_capacity(input.payload.len() + 64);
        encode_enriched(&event, &mut payload);
        out.push(OutputRecord {
            topic: self.output_topic.clone(),
            key: partition_key(&event),
            payload,
            headers: vec![("content-type", ENRICHED_CONTENT_TYPE.to_vec())],
            // Produce time, not event time: the broker bounds record times (1 h ahead by
            // default) and time retention deletes by them; the event time is in the payload.
            timestamp_ms: None,
        });
        Ok(())
    }

    fn describe(&self, _input: &InputMessage<'_>, records: &[OutputRecord]) -> Vec<(&'static str, String)> {
        // Recorded events only: decoding again is cheaper than keeping every id.
        records
            .iter()
            .filter_map(|r| crate::codec::decode_enriched(&r.payload).ok())
            .map(|e| ("auditflow.event_id", e.id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::mmdb_writer::MmdbWriter;
    use crate::enrich::EnrichConfig;

    #[test]
    fn the_data_dates_are_on_metrics_and_old_data_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let made = 1_781_700_000i64;
        MmdbWriter::new().build_epoch(made as u64).write_to(dir.path().join("city.mmdb")).unwrap();
        let enricher = Enricher::new(&EnrichConfig { geoip_db: Some(dir.path().to_path_buf()), ..Default::default() }).unwrap();
        let at = |days: i64| DateTime::from_timestamp(made + days * 86_400, 0).unwrap();
        let registry = prometheus::Registry::new();
        assert!(report_data_dates(&enricher, &registry, at(30)).unwrap().is_empty());
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(text.contains(&format!("auditflow_enrich_data_timestamp_seconds{{data=\"geoip\"}} {made}")), "{text}");
        assert_eq!(report_data_dates(&enricher, &prometheus::Registry::new(), at(STALE_DATA_DAYS + 1)).unwrap(), ["geoip"]);
    }
}
