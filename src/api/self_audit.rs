//! Every read is audited: each request that returns audit data, each decryption, export,
//! erasure and triage, and each refused request becomes an audit event of its own on
//! `audit-raw`, so it flows through enrichment, the ledger and the rules like any other.
//!
//! The event is written before the answer leaves: when Kafka does not take it, the caller gets
//! 503 and no data (an unaudited read is worse than a failed one).

use std::net::IpAddr;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::event::{RawEvent, RawTimestamp};
use crate::trace::{TraceParent, TRACEPARENT};

/// What happened, as the service saw it.
#[derive(Debug, Clone)]
pub struct Access {
    /// The token's subject; `None` when no token proved one.
    pub actor: Option<String>,
    /// `audit.search`, `audit.read`, `audit.read_pii`, `audit.export`, `privacy.erase`,
    /// `alert.acknowledge`, `auth.denied`, …
    pub action: &'static str,
    /// What was asked: the route (`/v1/events/{id}`).
    pub resource: String,
    /// Which one: an event id, an alert id, a subject's pseudonym.
    pub resource_id: Option<String>,
    pub method: String,
    /// The path as requested.
    pub endpoint: String,
    pub status: u16,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The reason the caller gave.
    pub reason: Option<String>,
    /// The question (filters) and what was answered (counts), never the answer itself.
    pub detail: Value,
    pub request_id: String,
}

/// The audit event for an access. Its id is the request id, so a retried write of the same
/// record is stored once.
pub fn event(a: &Access) -> RawEvent {
    let success = a.status < 400;
    let severity = match a.action {
        "auth.denied" | "audit.read_pii" | "audit.export" | "privacy.erase" | "dlq.replay" | "hold.place" | "hold.release" => "MEDIUM",
        _ => "LOW",
    };
    let mut metadata = json!({
        "service": "audit-api",
        "requestId": a.request_id,
        "actor": a.actor.clone().unwrap_or_else(|| "anonymous".into()),
    });
    if let Some(r) = &a.reason {
        metadata["reason"] = json!(r);
    }
    if !a.detail.is_null() {
        metadata["request"] = a.detail.clone();
    }
    RawEvent {
        id: Some(a.request_id.clone()),
        timestamp: Some(RawTimestamp::Rfc3339(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true))),
        user_id: a.actor.clone(),
        action: Some(a.action.to_string()),
        resource: Some(a.resource.clone()),
        resource_id: a.resource_id.clone(),
        method: Some(a.method.clone()),
        endpoint: Some(a.endpoint.chars().take(512).collect()),
        status_code: Some(i32::from(a.status)),
        user_agent: a.user_agent.as_ref().map(|u| u.chars().take(256).collect()),
        ip_address: a.ip.map(|i| i.to_string()),
        classification: Some("INTERNAL".into()),
        severity: Some(severity.into()),
        metadata: Some(metadata),
        success: Some(success),
        error_message: (!success).then(|| format!("answered {}", a.status)),
        ..RawEvent::default()
    }
}

/// Sends events to `audit-raw` with the idempotent producer, acknowledged by every in-sync
/// replica before the call returns. Shared by ingest and the self-audit.
#[derive(Clone)]
pub struct RawProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("Kafka did not take the event: {0}")]
pub struct SendError(pub String);

impl RawProducer {
    pub fn new(config: &crate::config::Config) -> Result<RawProducer, rdkafka::error::KafkaError> {
        let mut cc = crate::runtime::kafka::base_client_config(config);
        cc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "15000");
        for (k, v) in &config.kafka.librdkafka {
            cc.set(k, v);
        }
        Ok(RawProducer { producer: cc.create()?, topic: config.topics.raw.name.clone(), timeout: Duration::from_secs(15) })
    }

    /// Send every event and wait for all acknowledgements. Records the broker refuses for good
    /// (too large for the topic, a timestamp it rejects: the runtime's own test) come back by
    /// index with the broker's reason, so the caller can report them and keep the rest; any
    /// other failure is returned after all have settled, to be retried (the idempotent producer
    /// keeps order and never duplicates).
    ///
    /// Each record carries W3C trace context: a child of `parent` (the request's own
    /// `traceparent`) or a trace of its own (see [`crate::trace::spans::start_send`]).
    pub async fn send_all(&self, events: &[RawEvent], parent: Option<TraceParent>) -> Result<Vec<(usize, String)>, SendError> {
        let payloads: Vec<(Vec<u8>, Option<String>)> = events
            .iter()
            .map(|e| Ok((serde_json::to_vec(e).map_err(|x| SendError(x.to_string()))?, crate::cli::emit::event_key(e).map(str::to_string))))
            .collect::<Result<_, SendError>>()?;
        let mut traces: Vec<crate::trace::spans::Send> = events
            .iter()
            .map(|e| crate::trace::spans::start_send(parent, &self.topic, e.id.as_deref().unwrap_or("")))
            .collect();
        let sends = payloads.iter().zip(&traces).map(|((p, k), trace)| {
            let mut r = FutureRecord::to(&self.topic).payload(p);
            if let Some(context) = trace.context {
                r = r.headers(OwnedHeaders::new().insert(Header { key: TRACEPARENT, value: Some(&context.encode()[..]) }));
            }
            if let Some(k) = k {
                r = r.key(k);
            }
            self.producer.send(r, self.timeout)
        });
        let results = futures::future::join_all(sends).await;
        let mut refused = Vec::new();
        let mut failure = None;
        for (i, (r, trace)) in results.into_iter().zip(&mut traces).enumerate() {
            let outcome = match r {
                Ok(_) => "sent",
                Err((e, _)) if crate::runtime::kafka::is_record_refusal(&e) => {
                    refused.push((i, format!("refused by the broker: {e}")));
                    "refused"
                }
                Err((e, _)) => {
                    failure.get_or_insert(SendError(e.to_string()));
                    "failed"
                }
            };
            if let Some(span) = &mut trace.span {
                use opentelemetry::trace::Span as _;
                span.set_attribute(opentelemetry::KeyValue::new("auditflow.outcome", outcome));
                span.end();
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(refused),
        }
    }

    /// One record to another topic (an alert's triage update on `security-alerts`).
    pub async fn send_to(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), SendError> {
        let r = FutureRecord::to(topic).key(key).payload(payload);
        self.producer.send(r, self.timeout).await.map(|_| ()).map_err(|(e, _)| SendError(e.to_string()))
    }

    /// An access's audit event; refused for good counts as not written (the read is refused).
    pub async fn record(&self, access: &Access) -> Result<(), SendError> {
        match self.send_all(std::slice::from_ref(&event(access)), None).await?.pop() {
            Some((_, why)) => Err(SendError(why)),
            None => Ok(()),
        }
    }

    /// Whether the brokers answer for `audit-raw` (readiness). Blocking.
    pub fn ping(&self, timeout: Duration) -> bool {
        use rdkafka::producer::Producer;
        self.producer.client().fetch_metadata(Some(&self.topic), timeout).is_ok()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_becomes_a_valid_raw_event() {
        let a = Access {
            actor: Some("alice@example.com".into()),
            action: "audit.read_pii",
            resource: "/v1/events/{id}".into(),
            resource_id: Some("e-1".into()),
            method: "GET".into(),
            endpoint: "/v1/events/e-1?reason=case%2042".into(),
            status: 200,
            ip: "10.1.2.3".parse().ok(),
            user_agent: Some("curl/8".into()),
            reason: Some("case 42".into()),
            detail: json!({"fields": ["userId"]}),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        let e = event(&a);
        crate::enrich::validate_raw(&e, &crate::enrich::EnrichConfig::default()).unwrap();
        assert_eq!(e.user_id.as_deref(), Some("alice@example.com"));
        assert_eq!(e.severity.as_deref(), Some("MEDIUM"));
        assert_eq!(e.metadata.as_ref().unwrap()["reason"], "case 42");
        let denied = event(&Access { actor: None, action: "auth.denied", status: 401, ..a });
        assert_eq!(denied.success, Some(false));
        assert_eq!(denied.metadata.unwrap()["actor"], "anonymous");
    }
}
