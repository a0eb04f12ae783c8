//! OpenTelemetry traces: one event followed from its producer through every stage.
//!
//! The trace model:
//! - **Context travels with the records.** W3C Trace Context (`traceparent`, `tracestate`)
//!   is read from the headers of each consumed record and written on every record a stage
//!   produces from it (outputs and dead letters alike), so one trace id follows an event from
//!   `audit-raw` to `security-alerts`. `auditflow emit` and `audit-api` start the trace when
//!   the producer did not.
//! - **Spans.** Each stage records one span per batch (kind consumer) with a child per phase
//!   (poll, process, produce or sink, commit) and, for each recorded event, a span named after
//!   the stage, parented by the event's incoming context and linked to its batch
//!   ([`spans::BatchTraces`]). The alert dispatcher adds a span per alert and one per channel
//!   delivery attempt, under the span of the match that opened the alert.
//! - **Sampling** is decided once per trace: by the producer's sampled flag when it sent one,
//!   else by the first stage with `AUDITFLOW_TRACE_SAMPLE_RATIO` (default 1%). The decision
//!   travels in the flag, so a trace is recorded whole or not at all.
//! - **Off** without `AUDITFLOW_OTLP_ENDPOINT`: no span, no id generated; context that arrives
//!   with a record is still passed on.
//! - **Export** never blocks a batch ([`export`]); JSON log lines written inside a span carry
//!   its `trace_id` and `span_id` ([`log`]).

pub mod context;
pub mod export;
pub mod log;
pub mod settings;
pub mod spans;

pub use context::{TraceParent, TRACEPARENT, TRACESTATE};
pub use export::{active, init, shutdown, FlushOnDrop, Tracing};
pub use settings::TraceSettings;
pub use spans::{remote_context, BatchTraces, EventEnd, EventInfo};

/// The trace context of the `tracing` span the caller is in, if it is an OpenTelemetry one.
pub fn current() -> Option<TraceParent> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    active()?;
    let cx = tracing::Span::current().context();
    spans::trace_parent(cx.span().span_context())
}

/// Start a root span that is recorded whatever the sampling ratio: for rare events an operator
/// is told about (operational alerts), whose message names the trace. `None` when tracing is off.
pub fn start_recorded(name: &'static str, attributes: Vec<opentelemetry::KeyValue>) -> Option<opentelemetry_sdk::trace::Span> {
    use opentelemetry::trace::{SamplingDecision, SamplingResult, SpanBuilder, TraceState};
    let tracing = active()?;
    let recorded = SamplingResult { decision: SamplingDecision::RecordAndSample, attributes: Vec::new(), trace_state: TraceState::default() };
    Some(
        SpanBuilder::from_name(name)
            .with_attributes(attributes)
            .with_sampling_result(recorded)
            .start_with_context(tracing.tracer(), &opentelemetry::Context::new()),
    )
}

/// The context of an OpenTelemetry span, as a `traceparent`.
pub fn span_trace_parent(span: &opentelemetry_sdk::trace::Span) -> Option<TraceParent> {
    use opentelemetry::trace::Span as _;
    spans::trace_parent(span.span_context())
}

/// Make the current `tracing` span a child of `parent` (received with an alert, a request…).
/// Without tracing this does nothing.
pub fn set_parent(span: &tracing::Span, parent: &TraceParent) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if active().is_some() {
        let _ = span.set_parent(remote_context(parent));
    }
}
