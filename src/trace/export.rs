//! A process's span pipeline: OTLP over HTTP (protobuf) behind a bounded queue.
//!
//! Spans end on the stage's thread and are handed to a queue; a thread of their own exports
//! them in batches. The queue is bounded and checked before anything is queued: when it is
//! full (a collector that is down or slow), new spans are dropped and counted, so tracing can
//! lose spans but never slow a batch down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::settings::TraceSettings;
use crate::error::ConfigError;

/// The process's tracer, once [`init`] has run with an endpoint.
pub struct Tracing {
    provider: SdkTracerProvider,
    pub(crate) tracer: SdkTracer,
    /// Share of new traces recorded.
    pub(crate) ratio: f64,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// The process's tracer; `None` when tracing is off (no endpoint), and in unit tests.
pub fn active() -> Option<&'static Tracing> {
    TRACING.get()
}

impl Tracing {
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Whether a new trace with this id is recorded: the OpenTelemetry `TraceIdRatioBased`
    /// rule (the id's lower 63 bits against the ratio), so every SDK agrees on the decision.
    pub fn samples(&self, trace_id: &[u8; 16]) -> bool {
        sample_by_ratio(self.ratio, trace_id)
    }
}

/// A tracer over any span processor, for unit tests.
#[cfg(test)]
pub(crate) fn for_tests(processor: impl SpanProcessor + 'static, ratio: f64) -> &'static Tracing {
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .build();
    let tracer = provider.tracer("auditflow-test");
    Box::leak(Box::new(Tracing { provider, tracer, ratio }))
}

pub(crate) fn sample_by_ratio(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < bound
}

/// Start exporting spans when `settings` name an endpoint. `service` is the OpenTelemetry
/// service name (the binary, e.g. `audit-enrich`), `stage` the metrics label. Returns whether
/// tracing is on. Called once per process, before logging starts (logs carry trace ids).
pub fn init(
    settings: &TraceSettings,
    service: &'static str,
    stage: &'static str,
    instance: &str,
    registry: &Registry,
) -> Result<bool, ConfigError> {
    let Some(url) = settings.traces_url() else { return Ok(false) };
    if TRACING.get().is_some() {
        return Ok(true);
    }
    let spans = IntCounterVec::new(
        Opts::new("auditflow_trace_spans_total", "Spans by fate: exported, export_failed, dropped (queue full)"),
        &["stage", "outcome"],
    )
    .map_err(|e| ConfigError::new("trace metrics", e.to_string()))?;
    // A second registration (a test building two processes' worth) keeps the first.
    let _ = registry.register(Box::new(spans.clone()));
    let queued = Arc::new(AtomicUsize::new(0));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_millis(settings.export_timeout_ms))
        .with_headers(settings.headers()?)
        .build()
        .map_err(|e| ConfigError::new("AUDITFLOW_OTLP_ENDPOINT", e.to_string()))?;
    let exporter = CountingExporter {
        inner: exporter,
        queued: queued.clone(),
        exported: spans.with_label_values(&[stage, "exported"]),
        failed: spans.with_label_values(&[stage, "export_failed"]),
        last_warning: Mutex::new(None),
    };
    let batch = BatchConfigBuilder::default()
        // Room beyond our own bound, so the processor's queue never refuses what we admit.
        .with_max_queue_size(settings.queue_size + 512)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_secs(1))
        .build();
    let processor = Bounded {
        inner: BatchSpanProcessor::builder(exporter).with_batch_config(batch).build(),
        queued,
        capacity: settings.queue_size,
        dropped: spans.with_label_values(&[stage, "dropped"]),
    };
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.namespace", "auditflow"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance.to_string()),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // Parent-based: an upstream's decision (the sampled flag) is honoured; a new trace is
        // recorded with the configured probability.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("auditflow");
    let _ = TRACING.set(Tracing { provider, tracer, ratio: settings.sample_ratio });
    Ok(true)
}

/// Export what is queued and stop: called when the process ends. Bounded in time (a shutdown
/// exports what is left), so an absent collector cannot hold up a stage's exit.
pub fn shutdown() {
    if let Some(t) = TRACING.get() {
        let _ = t.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// Calls [`shutdown`] when dropped: held by a process's `main`, so queued spans go out at exit.
pub struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        shutdown();
    }
}

/// Counts exports and frees queue room as batches leave.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
    exported: IntCounter,
    failed: IntCounter,
    last_warning: Mutex<Option<Instant>>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n.min(self.queued.load(Ordering::Relaxed)), Ordering::Relaxed);
        match &result {
            Ok(()) => self.exported.inc_by(n as u64),
            Err(e) => {
                self.failed.inc_by(n as u64);
                // One line a minute: a collector that is down must not flood the logs.
                let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(spans = n, error = %e, "trace export failed; spans dropped (auditflow_trace_spans_total counts them)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Admits an ended span only while fewer than `capacity` wait for export.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: IntCounter,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx)
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampling_follows_the_trace_id_rule() {
        let id = |low: u64| {
            let mut t = [0u8; 16];
            t[0] = 1;
            t[8..].copy_from_slice(&low.to_be_bytes());
            t
        };
        assert!(sample_by_ratio(1.0, &id(u64::MAX)));
        assert!(!sample_by_ratio(0.0, &id(0)));
        assert!(sample_by_ratio(0.5, &id(0)));
        assert!(!sample_by_ratio(0.5, &id(u64::MAX)));
        let hits = (0..100_000u64).filter(|i| sample_by_ratio(0.01, &id(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))).count();
        assert!((700..1300).contains(&hits), "about 1%: {hits}");
    }
}
