//! Dead letters: the original message plus headers saying where it came from and why it failed.
//!
//! Header names (all stages, one vocabulary):
//! `dlq.source.topic`, `dlq.source.partition`, `dlq.source.offset`, `dlq.source.timestamp`,
//! `dlq.stage`, `dlq.error.kind`, `dlq.error.message`, `dlq.payload.truncated`,
//! `dlq.payload.original_bytes`.

use std::sync::Arc;

use super::{InputMessage, OutputRecord};
use crate::error::Rejection;

pub const H_SOURCE_TOPIC: &str = "dlq.source.topic";
pub const H_SOURCE_PARTITION: &str = "dlq.source.partition";
pub const H_SOURCE_OFFSET: &str = "dlq.source.offset";
pub const H_SOURCE_TIMESTAMP: &str = "dlq.source.timestamp";
pub const H_STAGE: &str = "dlq.stage";
pub const H_ERROR_KIND: &str = "dlq.error.kind";
pub const H_ERROR_MESSAGE: &str = "dlq.error.message";
pub const H_TRUNCATED: &str = "dlq.payload.truncated";
pub const H_ORIGINAL_BYTES: &str = "dlq.payload.original_bytes";

/// Payloads above this are cut: an oversized message must still fit in the DLQ topic.
pub const MAX_DLQ_PAYLOAD: usize = 256 * 1024;
/// Error messages are cut too (a serde error can quote input).
const MAX_ERROR_MESSAGE: usize = 2048;

/// Build the dead letter for `input`, rejected by `stage` for `rejection`.
pub fn dead_letter(dlq_topic: &Arc<str>, stage: &str, input: &InputMessage<'_>, rejection: &Rejection) -> OutputRecord {
    let truncated = input.payload.len() > MAX_DLQ_PAYLOAD;
    let payload = if truncated { input.payload[..MAX_DLQ_PAYLOAD].to_vec() } else { input.payload.to_vec() };
    let mut message = rejection.detail.clone();
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let mut headers = vec![
        (H_SOURCE_TOPIC, input.topic.as_bytes().to_vec()),
        (H_SOURCE_PARTITION, input.partition.to_string().into_bytes()),
        (H_SOURCE_OFFSET, input.offset.to_string().into_bytes()),
        (H_STAGE, stage.as_bytes().to_vec()),
        (H_ERROR_KIND, rejection.kind.as_str().as_bytes().to_vec()),
        (H_ERROR_MESSAGE, message.into_bytes()),
    ];
    if let Some(ts) = input.timestamp_ms {
        headers.push((H_SOURCE_TIMESTAMP, ts.to_string().into_bytes()));
    }
    if truncated {
        headers.push((H_TRUNCATED, b"true".to_vec()));
        headers.push((H_ORIGINAL_BYTES, input.payload.len().to_string().into_bytes()));
    }
    // The letter stays in its event's trace.
    headers.extend(input.trace_headers());
    OutputRecord {
        topic: dlq_topic.clone(),
        key: input.key.map(<[u8]>::to_vec),
        payload,
        headers,
        // Produce time: the source's time is in `dlq.source.timestamp`, and the DLQ's own
        // retention must count from when the letter was written.
        timestamp_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectionKind;

    fn header<'a>(r: &'a OutputRecord, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(k, _)| *k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    #[test]
    fn dead_letter_names_source_stage_and_reason() {
        let topic: Arc<str> = Arc::from("audit-dlq");
        let input = InputMessage {
            topic: "audit-raw",
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"user-1"),
            payload: b"{not json",
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap()),
            tracestate: Some(b"congo=t61rcWkgMzE"),
        };
        let r = dead_letter(&topic, "enrich", &input, &Rejection::new(RejectionKind::InvalidJson, "expected value"));
        assert_eq!(&*r.topic, "audit-dlq");
        assert_eq!(r.payload, b"{not json");
        assert_eq!(r.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(header(&r, H_SOURCE_TOPIC), Some("audit-raw"));
        assert_eq!(header(&r, H_SOURCE_PARTITION), Some("3"));
        assert_eq!(header(&r, H_SOURCE_OFFSET), Some("42"));
        assert_eq!(header(&r, H_STAGE), Some("enrich"));
        assert_eq!(header(&r, H_ERROR_KIND), Some("invalid_json"));
        assert_eq!(header(&r, H_ERROR_MESSAGE), Some("expected value"));
        assert_eq!(header(&r, H_TRUNCATED), None);
        assert_eq!(header(&r, "traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(header(&r, "tracestate"), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn oversized_payloads_and_messages_are_cut() {
        let topic: Arc<str> = Arc::from("audit-dlq");
        let big = vec![b'x'; MAX_DLQ_PAYLOAD + 10];
        let input = InputMessage { topic: "t", partition: 0, offset: 0, timestamp_ms: None, key: None, payload: &big, trace: None, tracestate: None };
        let r = dead_letter(&topic, "enrich", &input, &Rejection::new(RejectionKind::TooLarge, "é".repeat(5000)));
        assert_eq!(r.payload.len(), MAX_DLQ_PAYLOAD);
        assert_eq!(header(&r, H_TRUNCATED), Some("true"));
        assert_eq!(header(&r, H_ORIGINAL_BYTES), Some(big.len().to_string().as_str()));
        assert!(header(&r, H_ERROR_MESSAGE).unwrap().len() <= MAX_ERROR_MESSAGE + 3);
        assert_eq!(header(&r, "traceparent"), None, "no context, none invented");
    }
}
