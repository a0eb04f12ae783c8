//! Logs, metrics and the health endpoints every binary serves.
//!
//! Metric names start with `auditflow_` and carry a `stage` label, so one dashboard covers the
//! whole fleet. The same words are used in the README and the Grafana dashboard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Set up `tracing`: human-readable text, or one JSON object per line (with the active
/// trace's `trace_id` / `span_id`). When tracing is on ([`crate::trace::init`] ran first), this
/// crate's spans are also OpenTelemetry spans.
pub fn init_logging(config: &LogConfig) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer, Registry};
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::with_capacity(2);
    if config.format == "json" {
        let json = tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(crate::trace::log::WithTraceIds(
                tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false),
            ))
            .with_writer(std::io::stderr);
        layers.push(json.boxed());
    } else {
        let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
        layers.push(text.boxed());
    }
    // Only auditflow's own spans become trace spans: libraries' internals stay local.
    if let Some(t) = crate::trace::active() {
        let otel = tracing_opentelemetry::layer()
            .with_tracer(t.tracer().clone())
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("auditflow", tracing::Level::INFO));
        layers.push(otel.boxed());
    }
    // The log filter is global (as a per-layer filter, target directives such as
    // `librdkafka=warn` were seen to drop unrelated events): the dispatcher's spans, at INFO,
    // are made only when INFO is enabled for them. The stage loop's spans do not depend on it.
    // try_init: tests may set it up more than once.
    let _ = tracing_subscriber::registry().with(layers).with(filter).try_init();
}

/// The runtime's metrics. One instance per process, shared by the loop and the HTTP server.
pub struct Metrics {
    pub registry: Registry,
    /// Messages read from the input topic.
    pub consumed: IntCounterVec,
    /// Records written to an output topic.
    pub produced: IntCounterVec,
    /// Rows (or other sink records) made durable by a sink stage.
    pub sunk: IntCounterVec,
    /// Messages sent to the DLQ, by rejection kind.
    pub dlq: IntCounterVec,
    /// Messages per processed batch.
    pub batch_size: HistogramVec,
    /// Wall time from the first message of a batch to its commit.
    pub batch_seconds: HistogramVec,
    /// From each message's Kafka timestamp (when the previous hop wrote it: records carry
    /// produce time) to the commit of the batch that processed it.
    pub end_to_end_seconds: HistogramVec,
    /// Batches committed / aborted / retried.
    pub commits: IntCounterVec,
    /// Partitions assigned and revoked.
    pub rebalances: IntCounterVec,
    /// Consumer lag per partition, as librdkafka reports it.
    pub consumer_lag: IntGaugeVec,
    /// Transient failures that were retried (broker, database).
    pub retries: IntCounterVec,
    /// 1 while input has waited longer than the stall timeout without a commit.
    pub stalled: IntGaugeVec,
    /// Unix time of the stage's last commit.
    pub last_commit: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let consumed = counter("auditflow_consumed_total", "Messages consumed from the input topic", &["stage", "topic"]);
        let produced = counter("auditflow_produced_total", "Records produced to an output topic", &["stage", "topic"]);
        let sunk = counter("auditflow_sunk_total", "Records made durable in a sink", &["stage", "sink"]);
        let dlq = counter("auditflow_dlq_total", "Messages dead-lettered, by rejection kind", &["stage", "kind"]);
        let commits = counter(
            "auditflow_commits_total",
            "Batch commits by outcome (committed, aborted, fenced)",
            &["stage", "outcome"],
        );
        let rebalances =
            counter("auditflow_rebalances_total", "Partition assignment changes", &["stage", "kind"]);
        let retries = counter("auditflow_retries_total", "Transient failures retried", &["stage", "cause"]);
        let batch_size = HistogramVec::new(
            HistogramOpts::new("auditflow_batch_size", "Messages per committed batch")
                .buckets(vec![1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0]),
            &["stage"],
        )
        .expect("static metric definition");
        registry.register(Box::new(batch_size.clone())).expect("metric registered once");
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "auditflow_batch_processing_seconds",
                "Time from a batch's first message to its commit",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &["stage"],
        )
        .expect("static metric definition");
        registry.register(Box::new(batch_seconds.clone())).expect("metric registered once");
        let end_to_end_seconds = HistogramVec::new(
            HistogramOpts::new(
                "auditflow_end_to_end_seconds",
                "Time from a message's timestamp to the commit of the batch that processed it",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["stage"],
        )
        .expect("static metric definition");
        registry.register(Box::new(end_to_end_seconds.clone())).expect("metric registered once");
        let consumer_lag = IntGaugeVec::new(
            Opts::new("auditflow_consumer_lag", "Messages behind the end of the partition"),
            &["stage", "topic", "partition"],
        )
        .expect("static metric definition");
        registry.register(Box::new(consumer_lag.clone())).expect("metric registered once");
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["stage"]).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let stalled = gauge(
            "auditflow_stage_stalled",
            "1 while input has waited longer than the stall timeout without a commit",
        );
        let last_commit = gauge("auditflow_stage_last_commit_timestamp_seconds", "Unix time of the last commit");
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Arc::new(Metrics {
            registry,
            consumed,
            produced,
            sunk,
            dlq,
            batch_size,
            batch_seconds,
            end_to_end_seconds,
            commits,
            rebalances,
            consumer_lag,
            retries,
            stalled,
            last_commit,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Liveness and readiness, written by the processing loop and read by the HTTP server.
///
/// Live means the loop turns *and* makes progress: a stage retrying the same batch for ever
/// turns busily but is stalled, and `/healthz` says so once input has waited longer than the
/// stall timeout without a commit.
pub struct Health {
    /// Unix millis of the loop's last turn.
    last_turn_ms: AtomicI64,
    ready: AtomicBool,
    /// Unix millis since which input has been waiting for a commit; 0 when none waits.
    waiting_since_ms: AtomicI64,
    /// Unix millis since which the consumer has not been a member of its group; 0 when it is.
    unjoined_since_ms: AtomicI64,
    stall_timeout_ms: AtomicI64,
    stage: std::sync::OnceLock<&'static str>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            last_turn_ms: AtomicI64::new(0),
            ready: AtomicBool::new(false),
            waiting_since_ms: AtomicI64::new(0),
            unjoined_since_ms: AtomicI64::new(0),
            stall_timeout_ms: AtomicI64::new(300_000),
            stage: std::sync::OnceLock::new(),
        }
    }
}

impl Health {
    pub fn new() -> Arc<Health> {
        let h = Health::default();
        h.heartbeat();
        Arc::new(h)
    }
    /// Name the stage (metric label) and how long input may wait without a commit.
    pub fn configure(&self, stage: &'static str, stall_timeout: Duration) {
        let _ = self.stage.set(stage);
        self.stall_timeout_ms.store(stall_timeout.as_millis() as i64, Ordering::Relaxed);
    }
    pub fn stage(&self) -> Option<&'static str> {
        self.stage.get().copied()
    }
    pub fn heartbeat(&self) {
        self.last_turn_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    pub fn is_live(&self, timeout: Duration) -> bool {
        now_ms() - self.last_turn_ms.load(Ordering::Relaxed) <= timeout.as_millis() as i64 && !self.is_stalled()
    }
    /// Input is waiting (a batch in hand, or lag): starts the stall clock unless it runs.
    pub fn input_waiting(&self) {
        let _ = self.waiting_since_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }
    /// A commit: what waited is done.
    pub fn progressed(&self) {
        self.waiting_since_ms.store(0, Ordering::Relaxed);
    }
    /// The consumer's group membership, as its statistics report it. A consumer that cannot
    /// rejoin its group has no partitions, so no input ever "waits" for it: this is how such a
    /// stall shows (librdkafka can stay stuck after a broker was fenced, until restarted).
    pub fn group_joined(&self, joined: bool) {
        if joined {
            self.unjoined_since_ms.store(0, Ordering::Relaxed);
        } else {
            let _ = self.unjoined_since_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
    /// Whether input has waited longer than the stall timeout without a commit, or the
    /// consumer has been out of its group that long.
    pub fn is_stalled(&self) -> bool {
        let timeout = self.stall_timeout_ms.load(Ordering::Relaxed);
        let over = |since: i64| since != 0 && now_ms() - since > timeout;
        over(self.waiting_since_ms.load(Ordering::Relaxed)) || over(self.unjoined_since_ms.load(Ordering::Relaxed))
    }
}

impl Metrics {
    /// Observe the end-to-end latency of every message of a committed batch.
    pub fn observe_end_to_end(&self, stage: &str, timestamps_ms: impl Iterator<Item = Option<i64>>) {
        let h = self.end_to_end_seconds.with_label_values(&[stage]);
        let now = now_ms();
        for ts in timestamps_ms.flatten() {
            h.observe(((now - ts).max(0) as f64) / 1000.0);
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Serve `/metrics`, `/healthz`, `/readyz` until the process ends. Returns the bound address
/// (useful with port 0).
pub async fn serve_http(
    listen: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    liveness_timeout: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let m = metrics.clone();
    let h_metrics = health.clone();
    let h_live = health.clone();
    let h_ready = health;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                let h = h_metrics.clone();
                async move {
                    if let Some(stage) = h.stage() {
                        m.stalled.with_label_values(&[stage]).set(i64::from(h.is_stalled()));
                    }
                    m.render()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let h = h_live.clone();
                async move {
                    if h.is_stalled() {
                        (StatusCode::SERVICE_UNAVAILABLE, "stalled: input is waiting and nothing was committed within the stall timeout")
                    } else if h.is_live(liveness_timeout) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "processing loop stopped turning")
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let h = h_ready.clone();
                async move {
                    if h.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(addr)
}
