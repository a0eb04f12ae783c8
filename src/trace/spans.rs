//! The spans of a stage's loop: one per batch, with a child per phase, and one per recorded
//! event, parented by the context the event arrived with and linked to its batch.
//!
//! Which events are recorded is decided before any span exists, without allocating: an
//! event whose `traceparent` says sampled is recorded, one that says not sampled passes its
//! context on untouched, and one without starts a trace recorded with the configured ratio
//! (and otherwise carries the new, unsampled context on, so no later stage rolls the dice
//! again: a trace is recorded whole or not at all). The batch span is recorded when any of
//! its events is, so every recorded event's link leads somewhere, and otherwise with the ratio.

use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SamplingDecision, SamplingResult, Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status,
    TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use super::context::TraceParent;
use super::export::Tracing;

/// One input of a batch, as tracing sees it.
#[derive(Debug, Clone, Copy)]
pub struct EventInfo<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// When the previous hop wrote it (Kafka timestamp), epoch millis.
    pub timestamp_ms: Option<i64>,
    /// The context it arrived with.
    pub incoming: Option<TraceParent>,
}

/// How one event's processing ended, for its span.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventEnd<'a> {
    /// Records produced from it (outputs, not counting a dead letter).
    pub outputs: usize,
    /// Dead-lettered, with the rejection kind. Only the kind: a rejection's detail can quote
    /// the event, and event values stay out of the trace backend.
    pub dead_letter: Option<&'a str>,
}

/// The spans of one batch. Dropping it without [`finish`](Self::finish) ends them as not
/// committed (the batch is read again, and traced again).
pub struct BatchTraces {
    tracing: &'static Tracing,
    batch: Option<Span>,
    batch_context: Option<SpanContext>,
    /// Recording event spans, by input index (ascending).
    events: Vec<(usize, Span)>,
    finished: bool,
}

pub(crate) fn span_context(tp: &TraceParent, remote: bool) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        remote,
        TraceState::default(),
    )
}

pub(crate) fn trace_parent(sc: &SpanContext) -> Option<TraceParent> {
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// A context whose parent is `tp` (received from elsewhere).
pub fn remote_context(tp: &TraceParent) -> Context {
    Context::new().with_remote_span_context(span_context(tp, true))
}

fn recorded() -> SamplingResult {
    SamplingResult { decision: SamplingDecision::RecordAndSample, attributes: Vec::new(), trace_state: TraceState::default() }
}

impl Tracing {
    /// Decide each input's context and start the batch's spans. Returns the spans and, per
    /// input, the context its outputs carry.
    pub fn begin_batch(
        &'static self,
        stage: &'static str,
        group: &str,
        poll_started: SystemTime,
        inputs: &[EventInfo<'_>],
    ) -> (BatchTraces, Vec<TraceParent>) {
        // 1. Decisions, no spans yet.
        let mut contexts: Vec<TraceParent> = Vec::with_capacity(inputs.len());
        let mut to_record: Vec<(usize, Option<TraceParent>, TraceParent)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let (context, record) = match input.incoming {
                Some(p) if p.sampled() => (p, Some(Some(p))),
                // The upstream decided not to record: its context goes on untouched.
                Some(p) => (p, None),
                None => {
                    // Recorded or not, a new trace, so later stages honour this decision.
                    let root = TraceParent::new_root(false);
                    (root, self.samples(&root.trace_id).then_some(None))
                }
            };
            if let Some(parent) = record {
                to_record.push((i, parent, context));
            }
            contexts.push(context); // a recorded event's is replaced by its span's below
        }
        // 2. The batch span: recorded when an event is, else by the ratio.
        let batch_id = TraceParent::new_root(false);
        let record_batch = !to_record.is_empty() || self.samples(&batch_id.trace_id);
        let (batch, batch_context) = if record_batch {
            let span = SpanBuilder::from_name(format!("{stage} batch"))
                .with_kind(SpanKind::Consumer)
                .with_trace_id(TraceId::from_bytes(batch_id.trace_id))
                .with_start_time(poll_started)
                .with_attributes([
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.operation.type", "receive"),
                    KeyValue::new("messaging.consumer.group.name", group.to_string()),
                    KeyValue::new("messaging.batch.message_count", inputs.len() as i64),
                    KeyValue::new("auditflow.stage", stage),
                ])
                .with_sampling_result(recorded())
                .start_with_context(&self.tracer, &Context::new());
            let sc = span.span_context().clone();
            (Some(span), Some(sc))
        } else {
            (None, None)
        };
        // 3. The recorded events' spans.
        let mut events = Vec::with_capacity(to_record.len());
        for (i, parent, root) in to_record {
            let Some(input) = inputs.get(i) else { continue };
            let mut attributes = vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", input.topic.to_string()),
                KeyValue::new("messaging.destination.partition.id", input.partition.to_string()),
                KeyValue::new("messaging.kafka.offset", input.offset),
                KeyValue::new("messaging.consumer.group.name", group.to_string()),
                KeyValue::new("auditflow.stage", stage),
            ];
            if let (Some(ts), Ok(polled)) = (input.timestamp_ms, poll_started.duration_since(SystemTime::UNIX_EPOCH)) {
                // Time in Kafka since the previous hop wrote it: the other half of "which hop
                // made it late".
                attributes.push(KeyValue::new("auditflow.queued_ms", (polled.as_millis() as i64 - ts).max(0)));
            }
            let mut builder = SpanBuilder::from_name(stage)
                .with_kind(SpanKind::Consumer)
                .with_start_time(poll_started)
                .with_attributes(attributes)
                .with_sampling_result(recorded());
            if let Some(sc) = &batch_context {
                builder = builder.with_links(vec![Link::with_context(sc.clone())]);
            }
            let span = match parent {
                Some(p) => builder.start_with_context(&self.tracer, &remote_context(&p)),
                None => builder.with_trace_id(TraceId::from_bytes(root.trace_id)).start_with_context(&self.tracer, &Context::new()),
            };
            if let (Some(slot), Some(tp)) = (contexts.get_mut(i), trace_parent(span.span_context())) {
                *slot = tp;
            }
            events.push((i, span));
        }
        (BatchTraces { tracing: self, batch, batch_context, events, finished: false }, contexts)
    }
}

impl BatchTraces {
    /// Whether input `index` has a recording span (worth describing).
    pub fn recording(&self, index: usize) -> bool {
        self.events.binary_search_by_key(&index, |(i, _)| *i).is_ok()
    }

    /// Input indices with a recording span.
    pub fn recorded_inputs(&self) -> impl Iterator<Item = usize> + '_ {
        self.events.iter().map(|(i, _)| *i)
    }

    /// Add an attribute to input `index`'s span, if it has one.
    pub fn note(&mut self, index: usize, attribute: KeyValue) {
        if let Ok(k) = self.events.binary_search_by_key(&index, |(i, _)| *i) {
            if let Some((_, span)) = self.events.get_mut(k) {
                span.set_attribute(attribute);
            }
        }
    }

    /// Record a phase of the batch (a child span with its own times), if the batch is recorded.
    pub fn phase(&self, name: &'static str, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>) {
        let Some(sc) = &self.batch_context else { return };
        let cx = Context::new().with_remote_span_context(sc.clone());
        let mut span = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .with_sampling_result(recorded())
            .start_with_context(&self.tracing.tracer, &cx);
        span.end_with_timestamp(end);
    }

    /// The batch span's context, for log lines written while the batch is handled.
    pub fn batch_context(&self) -> Option<Context> {
        self.batch_context.as_ref().map(|sc| Context::new().with_remote_span_context(sc.clone()))
    }

    /// End every span: the batch committed at `end`.
    pub fn finish<'a>(mut self, end: SystemTime, batch_attributes: Vec<KeyValue>, event_end: impl Fn(usize) -> EventEnd<'a>) {
        self.finished = true;
        for (i, span) in &mut self.events {
            let e = event_end(*i);
            span.set_attribute(KeyValue::new("auditflow.outputs", e.outputs as i64));
            match e.dead_letter {
                Some(kind) => {
                    span.set_attribute(KeyValue::new("auditflow.outcome", "dead_lettered"));
                    span.set_attribute(KeyValue::new("error.type", kind.to_string()));
                    span.set_status(Status::error(format!("dead-lettered: {kind}")));
                }
                None => span.set_attribute(KeyValue::new("auditflow.outcome", "committed")),
            }
            span.end_with_timestamp(end);
        }
        if let Some(batch) = &mut self.batch {
            for a in batch_attributes {
                batch.set_attribute(a);
            }
            batch.set_attribute(KeyValue::new("auditflow.outcome", "committed"));
            batch.end_with_timestamp(end);
        }
    }
}

impl Drop for BatchTraces {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let now = SystemTime::now();
        let status = || Status::error("batch not committed; it is read again");
        for (_, span) in &mut self.events {
            span.set_attribute(KeyValue::new("auditflow.outcome", "retried"));
            span.set_status(status());
            span.end_with_timestamp(now);
        }
        if let Some(batch) = &mut self.batch {
            batch.set_attribute(KeyValue::new("auditflow.outcome", "retried"));
            batch.set_status(status());
            batch.end_with_timestamp(now);
        }
    }
}

/// The trace context a producer puts on a record it writes (`auditflow emit`, `audit-api`
/// ingest), and its span when recorded.
pub struct Send {
    /// For the record's `traceparent`; `None`: no header (tracing off and no caller context).
    pub context: Option<TraceParent>,
    /// The recorded `send` span; end it once the record is handed over.
    pub span: Option<Span>,
}

/// Start a record's trace: a child of `parent` (the caller's own context, e.g. an HTTP
/// request's `traceparent`) or a new trace. The caller's sampled flag is honoured; a new trace
/// is recorded with the ratio. Tracing off: the caller's context is passed on as it is.
pub fn start_send(parent: Option<TraceParent>, topic: &str, event_id: &str) -> Send {
    let Some(tracing) = super::active() else { return Send { context: parent, span: None } };
    let record = match parent {
        Some(p) => p.sampled(),
        None => {
            let root = TraceParent::new_root(false);
            if !tracing.samples(&root.trace_id) {
                return Send { context: Some(root), span: None };
            }
            true
        }
    };
    if !record {
        return Send { context: parent, span: None };
    }
    let builder = SpanBuilder::from_name(format!("send {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.to_string()),
            KeyValue::new("auditflow.event_id", event_id.to_string()),
        ])
        .with_sampling_result(recorded());
    let cx = parent.map(|p| remote_context(&p)).unwrap_or_default();
    let span = builder.start_with_context(&tracing.tracer, &cx);
    Send { context: trace_parent(span.span_context()), span: Some(span) }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SimpleSpanProcessor, SpanData, SpanExporter};

    use super::*;

    /// Keeps every exported span.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn tracing(ratio: f64) -> (&'static Tracing, Kept) {
        let kept = Kept::default();
        (super::super::export::for_tests(SimpleSpanProcessor::new(kept.clone()), ratio), kept)
    }

    fn info(incoming: Option<TraceParent>) -> EventInfo<'static> {
        EventInfo { topic: "audit-raw", partition: 0, offset: 7, timestamp_ms: Some(1_000), incoming }
    }

    fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    }

    #[test]
    fn an_upstream_decision_is_honoured_and_a_new_trace_is_decided_once() {
        let (t, kept) = tracing(0.0);
        let sampled = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let declined = TraceParent::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        let (batch, contexts) = t.begin_batch("enrich", "g", SystemTime::now(), &[info(Some(sampled)), info(Some(declined)), info(None)]);
        // Sampled upstream: recorded, same trace, this stage's own span.
        assert_eq!(contexts[0].trace_id, sampled.trace_id);
        assert_ne!(contexts[0].span_id, sampled.span_id);
        assert!(contexts[0].sampled() && batch.recording(0));
        // Declined upstream: passed on untouched, nothing recorded.
        assert_eq!(contexts[1], declined);
        assert!(!batch.recording(1));
        // No context at ratio 0: a new trace that says "not sampled", so later stages agree.
        assert!(!contexts[2].sampled() && !batch.recording(2));
        assert_ne!(contexts[2].trace_id, sampled.trace_id);
        batch.finish(SystemTime::now(), vec![], |i| EventEnd { outputs: 1, dead_letter: (i == 0).then_some("invalid_json") });
        let spans = kept.0.lock().unwrap().clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["enrich", "enrich batch"], "one event span and its batch's");
        let event = &spans[0];
        assert_eq!(event.parent_span_id.to_bytes(), sampled.span_id);
        assert_eq!(event.span_context.span_id().to_bytes(), contexts[0].span_id);
        assert_eq!(attr(event, "auditflow.outcome").as_deref(), Some("dead_lettered"));
        assert_eq!(attr(event, "error.type").as_deref(), Some("invalid_json"));
        assert!(matches!(event.status, Status::Error { .. }));
        assert_eq!(event.links.links.len(), 1, "linked to its batch");
        assert_eq!(event.links.links[0].span_context.span_id(), spans[1].span_context.span_id());
        assert_eq!(attr(&spans[1], "messaging.batch.message_count").as_deref(), Some("3"));
    }

    #[test]
    fn at_full_ratio_everything_is_recorded_and_a_batch_not_committed_says_so() {
        let (t, kept) = tracing(1.0);
        let (mut batch, contexts) = t.begin_batch("rules", "g", SystemTime::now(), &[info(None), info(None)]);
        assert!(contexts.iter().all(TraceParent::sampled));
        assert_ne!(contexts[0].trace_id, contexts[1].trace_id, "one trace per event");
        batch.note(1, KeyValue::new("auditflow.rules.matched", "brute-force"));
        batch.phase("process", SystemTime::now(), SystemTime::now(), vec![]);
        drop(batch);
        let spans = kept.0.lock().unwrap().clone();
        let events: Vec<&SpanData> = spans.iter().filter(|s| s.name == "rules").collect();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|s| attr(s, "auditflow.outcome").as_deref() == Some("retried")));
        assert_eq!(attr(events[1], "auditflow.rules.matched").as_deref(), Some("brute-force"));
        let phase = spans.iter().find(|s| s.name == "process").expect("a phase span");
        let batch = spans.iter().find(|s| s.name == "rules batch").expect("the batch span");
        assert_eq!(phase.parent_span_id, batch.span_context.span_id());
    }

    #[test]
    fn producers_start_or_continue_a_trace() {
        // Without a tracer (tracing off) the caller's context is passed on as it is.
        let caller = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        if super::super::active().is_none() {
            assert_eq!(start_send(Some(caller), "audit-raw", "e1").context, Some(caller));
            assert_eq!(start_send(None, "audit-raw", "e1").context, None);
        }
    }
}
