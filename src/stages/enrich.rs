//! `audit-enrich`: the runtime adapter around [`crate::enrich::Enricher`].

use std::sync::Arc;

use chrono::Utc;

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
}
