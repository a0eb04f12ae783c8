//! OpenTelemetry traces through the real stages, read back from a real Jaeger (`scripts/stack
//! up` builds and starts it): one event followed from its producer to the alert e-mail, the
//! sampling decision made once and honoured everywhere, trace context on dead letters, and a
//! collector that is down or hangs never holding up the pipeline.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use auditflow::event::RawEvent;
use auditflow::trace::TraceParent;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value as Json;
use support::smtp::{free_port, SmtpSink};
use support::{brokers, http_addr, http_get, read_topic, repo_root, TestEnv};

fn jaeger_url() -> String {
    std::env::var("AUDITFLOW_STACK_JAEGER_URL").unwrap_or_else(|_| "http://127.0.0.1:16686".into())
}

fn otlp_endpoint() -> String {
    std::env::var("AUDITFLOW_STACK_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4318".into())
}

/// Environment of a traced stage: spans to the stack's Jaeger, `ratio` of new traces recorded.
fn traced(ratio: &str) -> Vec<(String, String)> {
    vec![
        ("AUDITFLOW_OTLP_ENDPOINT".into(), otlp_endpoint()),
        ("AUDITFLOW_TRACE_SAMPLE_RATIO".into(), ratio.into()),
    ]
}

/// An upstream producer's own span: a fresh trace, sampled or not.
fn upstream(sampled: bool) -> TraceParent {
    let mut tp = TraceParent::new_root(sampled);
    tp.flags = u8::from(sampled);
    tp
}

/// A payload and its headers.
type Record<'a> = (Vec<u8>, Vec<(&'a str, String)>);

/// Produce raw payloads, each with its own headers, and wait for the acknowledgements.
fn produce_with_headers(topic: &str, records: &[Record<'_>]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (payload, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header { key: k, value: Some(v.as_str()) });
        }
        producer.send(BaseRecord::<(), _>::to(topic).payload(payload.as_slice()).headers(h)).expect("enqueue");
    }
    producer.flush(Duration::from_secs(60)).expect("acknowledged");
}

fn event(id: &str, action: &str, resource: &str, user: &str) -> RawEvent {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "userId": user,
        "action": action,
        "resource": resource,
        "ipAddress": "203.0.113.7",
        "classification": "CONFIDENTIAL",
        "severity": "HIGH",
        "success": true,
    }))
    .expect("raw event")
}

/// One span as Jaeger's query API returns it.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    trace_id: String,
    /// The CHILD_OF reference.
    parent: Option<String>,
    /// FOLLOWS_FROM references (OpenTelemetry links): (trace id, span id).
    links: Vec<(String, String)>,
    service: String,
    operation: String,
    start_us: u64,
    tags: HashMap<String, Json>,
}

impl Span {
    fn tag(&self, key: &str) -> Option<&Json> {
        self.tags.get(key)
    }
    fn tag_str(&self, key: &str) -> String {
        match self.tag(key) {
            Some(Json::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    }
}

/// The spans of one trace, or `None` while Jaeger does not know it.
async fn jaeger_spans(trace_id: &str) -> Option<Vec<Span>> {
    let url = format!("{}/api/traces/{trace_id}", jaeger_url());
    let response = reqwest::get(&url).await.expect("Jaeger's query API answers: run scripts/stack up");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(response.status().is_success(), "{url}: {}", response.status());
    let body: Json = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
    let trace = body["data"].as_array()?.first()?.clone();
    let processes = &trace["processes"];
    let spans = trace["spans"]
        .as_array()?
        .iter()
        .map(|s| {
            let refs = s["references"].as_array().cloned().unwrap_or_default();
            let parent = refs
                .iter()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str().map(String::from));
            let links = refs
                .iter()
                .filter(|r| r["refType"] == "FOLLOWS_FROM")
                .map(|r| (r["traceID"].as_str().unwrap_or("").to_string(), r["spanID"].as_str().unwrap_or("").to_string()))
                .collect();
            let tags = s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| (t["key"].as_str().unwrap_or("").to_string(), t["value"].clone()))
                .collect();
            let process = s["processID"].as_str().unwrap_or("");
            Span {
                id: s["spanID"].as_str().unwrap_or("").to_string(),
                trace_id: s["traceID"].as_str().unwrap_or("").to_string(),
                parent,
                links,
                service: processes[process]["serviceName"].as_str().unwrap_or("").to_string(),
                operation: s["operationName"].as_str().unwrap_or("").to_string(),
                start_us: s["startTime"].as_u64().unwrap_or(0),
                tags,
            }
        })
        .collect();
    Some(spans)
}

/// Wait until Jaeger's trace holds a span for each (service, operation) wanted.
async fn wait_for_spans(trace_id: &str, wanted: &[(&str, &str)], timeout: Duration) -> Vec<Span> {
    let start = Instant::now();
    loop {
        let spans = jaeger_spans(trace_id).await.unwrap_or_default();
        let have: HashSet<(&str, &str)> = spans.iter().map(|s| (s.service.as_str(), s.operation.as_str())).collect();
        if wanted.iter().all(|w| have.contains(w)) {
            return spans;
        }
        assert!(
            start.elapsed() < timeout,
            "trace {trace_id} after {timeout:?}: wanted {wanted:?}, Jaeger has {:?}",
            spans.iter().map(|s| (&s.service, &s.operation)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn one<'a>(spans: &'a [Span], service: &str, operation: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.service == service && s.operation == operation).collect();
    assert_eq!(found.len(), 1, "one {service} {operation} span: {found:#?}");
    found[0]
}

/// `parent` is `child`'s parent, and began first: the trace is in causal order.
fn caused(parent: &Span, child: &Span) {
    assert_eq!(child.parent.as_deref(), Some(parent.id.as_str()), "{} {} is a child of {} {}", child.service, child.operation, parent.service, parent.operation);
    assert!(child.start_us >= parent.start_us, "{} began before its parent {}", child.operation, parent.operation);
}

/// Every committed record of `topic` (one of the test's), all partitions.
fn read_all(env: &TestEnv, topic: &str, quiet: Duration) -> Vec<support::ReadRecord> {
    let config = env.config();
    let partitions = config.topics.all().iter().find(|s| s.name == topic).map_or(1, |s| s.partitions);
    read_topic(topic, partitions, quiet)
}

fn trace_id_of(headers: &HashMap<String, String>) -> TraceParent {
    headers.get("traceparent").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("a traceparent header: {headers:?}"))
}

const PRIVILEGE_POLICY: &str = r#"
[alert]
group_wait_seconds = 0
poll_interval_ms = 250

[[alert.policies]]
id = "privilege-escalation"
name = "Privilege escalation"
rule_ids = ["privilege-escalation"]
routes = ["security-team"]

[[alert.routes]]
name = "security-team"
channels = ["email"]
recipients = ["security@example.com"]
"#;

/// An event produced with a sampled `traceparent` becomes an alert, and Jaeger then holds one
/// trace with that id: enrich, persist, rules, compliance, the alert stage, its dispatch and the
/// e-mail delivery, each the child of the hop before it. The alert names the trace, the JSON
/// log lines written inside it carry it, and each batch's span (with its phases) is linked.
#[tokio::test(flavor = "multi_thread")]
async fn a_sampled_event_is_one_trace_from_its_producer_to_the_alert_e_mail() {
    let mut env = TestEnv::new("trace_e2e", 1).await;
    let port = free_port();
    let smtp = SmtpSink::start(port);
    let config = env.log_dir.join("alert.toml");
    std::fs::write(&config, PRIVILEGE_POLICY).expect("config");
    env.extra_env.extend([
        ("AUDITFLOW_CONFIG".to_string(), config.display().to_string()),
        ("AUDITFLOW_RULES_DIR".into(), repo_root().join("rules").display().to_string()),
        ("AUDITFLOW_SMTP_HOST".into(), "127.0.0.1".into()),
        ("AUDITFLOW_SMTP_PORT".into(), port.to_string()),
        ("AUDITFLOW_SMTP_TLS".into(), "none".into()),
        ("AUDITFLOW_SMTP_FROM".into(), "auditflow alerts <alerts@auditflow.test>".into()),
        ("AUDITFLOW_OPS_RECIPIENTS".into(), "sre@example.org".into()),
        ("AUDITFLOW_ALERT_RECIPIENTS".into(), "security@example.com".into()),
        ("AUDITFLOW_LOG_FORMAT".into(), "json".into()),
    ]);
    // Ratio 0: only the producer's sampled flag records anything, so the trace is exactly this event's.
    env.extra_env.extend(traced("0"));
    let stages: Vec<_> = ["audit-enrich", "audit-persist", "audit-rules", "audit-compliance", "audit-alert"]
        .iter()
        .map(|s| env.start_stage(s, "t1"))
        .collect();

    let producer = upstream(true);
    let trace_id = producer.trace_id_hex();
    let ev = event("trace-e2e-1", "grant_role", "permissions", "alice");
    produce_with_headers(&env.raw, &[(serde_json::to_vec(&ev).expect("json"), vec![("traceparent", producer.to_string())])]);

    // The alert names the trace: e-mail footer, security-alerts record and its header.
    let mails = smtp.wait_for_mails(1, Duration::from_secs(90)).await;
    assert_eq!(mails.len(), 1, "one e-mail (logs in {})", env.log_dir.display());
    let text = mails[0].part("text/plain");
    assert!(text.contains(&format!("Trace: {trace_id}")), "the e-mail names the trace:\n{text}");
    env.wait_for_rows(1, Duration::from_secs(30)).await;
    let alerts = read_all(&env, &format!("{}.security-alerts", env.id), Duration::from_secs(2));
    assert_eq!(alerts.len(), 1);
    let record: Json = serde_json::from_slice(&alerts[0].payload).expect("alert record");
    assert_eq!(record["traceId"], trace_id.as_str());
    assert_eq!(trace_id_of(&alerts[0].headers).trace_id_hex(), trace_id);
    // Every record on the way carries the trace, each from its own hop's span.
    let enriched = read_all(&env, &env.enriched, Duration::from_secs(1));
    let enriched_tp = trace_id_of(&enriched[0].headers);
    assert_eq!(enriched_tp.trace_id, producer.trace_id);
    assert_ne!(enriched_tp.span_id, producer.span_id, "enrich writes its own span's context");
    assert!(enriched_tp.sampled());
    for topic in ["audit-rule-matches", "compliance-events"] {
        for r in read_all(&env, &format!("{}.{topic}", env.id), Duration::from_secs(1)) {
            assert_eq!(trace_id_of(&r.headers).trace_id, producer.trace_id, "{topic}");
        }
    }

    let spans = wait_for_spans(
        &trace_id,
        &[
            ("audit-enrich", "enrich"),
            ("audit-persist", "persist"),
            ("audit-rules", "rules"),
            ("audit-compliance", "compliance"),
            ("audit-alert", "alert"),
            ("audit-alert", "alert dispatch"),
            ("audit-alert", "deliver email"),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(spans.iter().all(|s| s.trace_id == trace_id));
    let enrich = one(&spans, "audit-enrich", "enrich");
    assert_eq!(enrich.parent.as_deref(), Some(producer.span_id_hex().as_str()), "enrich continues the producer's span");
    assert_eq!(enrich.tag_str("auditflow.event_id"), "trace-e2e-1");
    assert_eq!(enrich.tag_str("auditflow.outcome"), "committed");
    let persist = one(&spans, "audit-persist", "persist");
    let rules = one(&spans, "audit-rules", "rules");
    let compliance = one(&spans, "audit-compliance", "compliance");
    for downstream in [persist, rules, compliance] {
        caused(enrich, downstream);
    }
    assert!(rules.tag_str("auditflow.rules.matched").split(',').any(|r| r == "privilege-escalation"), "{rules:?}");
    let alert = one(&spans, "audit-alert", "alert");
    caused(rules, alert);
    assert_eq!(alert.tag_str("auditflow.alert.policies"), "privilege-escalation");
    let dispatch = one(&spans, "audit-alert", "alert dispatch");
    caused(alert, dispatch);
    let email = one(&spans, "audit-alert", "deliver email");
    caused(dispatch, email);
    assert_eq!(email.tag_str("auditflow.outcome"), "delivered");
    assert_eq!(email.tag_str("auditflow.attempt"), "1");
    let kafka = one(&spans, "audit-alert", "deliver kafka");
    caused(dispatch, kafka);

    // Each event span is linked to its batch's span, a trace of its own with the phases.
    for (span, phases) in [(enrich, &["poll", "process", "produce", "commit"][..]), (persist, &["poll", "process", "sink"][..])] {
        let (batch_trace, batch_span) = span.links.first().cloned().unwrap_or_else(|| panic!("{} is linked to its batch", span.operation));
        let mut wanted = vec![(span.service.as_str(), format!("{} batch", span.operation))];
        wanted.extend(phases.iter().map(|p| (span.service.as_str(), p.to_string())));
        let wanted: Vec<(&str, &str)> = wanted.iter().map(|(s, o)| (*s, o.as_str())).collect();
        let batch = wait_for_spans(&batch_trace, &wanted, Duration::from_secs(30)).await;
        let root = batch.iter().find(|s| s.id == batch_span).expect("the linked span is the batch span");
        assert_eq!(root.tag_str("messaging.batch.message_count"), "1");
        for phase in batch.iter().filter(|s| s.id != batch_span) {
            caused(root, phase);
        }
    }

    // JSON log lines written inside the trace carry its ids.
    let alert_log = stages[4].log();
    let correlated = alert_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find(|l| l["message"] == "alert dispatched")
        .expect("the dispatch was logged");
    assert_eq!(correlated["trace_id"], trace_id.as_str(), "{correlated}");
    assert_eq!(correlated["span_id"], dispatch.id.as_str());

    // Counts reconcile: the one event is stored, nothing dead-lettered.
    assert!(read_all(&env, &env.dlq, Duration::from_secs(1)).is_empty());
}

/// Without a `traceparent` the first stage decides: at 100% a new trace is recorded, at 0% none
/// is, yet the records still carry a (new, unsampled) context. An upstream's decision not to
/// record goes on untouched, and with tracing off a stage passes the context on as it came.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_hop_decides_sampling_and_context_always_travels() {
    let env = TestEnv::new("trace_sampling", 1).await;
    let enriched_by_id = |n: usize| -> HashMap<String, HashMap<String, String>> {
        let start = Instant::now();
        loop {
            let records = read_all(&env, &env.enriched, Duration::from_millis(500));
            if records.len() >= n || start.elapsed() > Duration::from_secs(60) {
                return records
                    .into_iter()
                    .map(|r| (auditflow::codec::decode_enriched(&r.payload).expect("avro").id, r.headers))
                    .collect();
            }
        }
    };

    // 100%, no context: a new trace, recorded.
    let mut all = env.start_stage_with("audit-enrich", "all", &[("AUDITFLOW_OTLP_ENDPOINT", &otlp_endpoint()), ("AUDITFLOW_TRACE_SAMPLE_RATIO", "1")]);
    env.produce_events(&[event("sampled-1", "read", "reports", "bob")]);
    let headers = enriched_by_id(1);
    let recorded = trace_id_of(&headers["sampled-1"]);
    assert!(recorded.sampled());
    let spans = wait_for_spans(&recorded.trace_id_hex(), &[("audit-enrich", "enrich")], Duration::from_secs(30)).await;
    assert_eq!(one(&spans, "audit-enrich", "enrich").parent, None, "the trace starts here");
    all.terminate();

    // 0%: no span, but a context still goes on; an upstream's "not sampled" is passed on untouched.
    let mut none = env.start_stage_with("audit-enrich", "none", &[("AUDITFLOW_OTLP_ENDPOINT", &otlp_endpoint()), ("AUDITFLOW_TRACE_SAMPLE_RATIO", "0")]);
    let declined = upstream(false);
    produce_with_headers(
        &env.raw,
        &[
            (serde_json::to_vec(&event("unsampled-1", "read", "reports", "bob")).expect("json"), vec![]),
            (serde_json::to_vec(&event("declined-1", "read", "reports", "bob")).expect("json"), vec![("traceparent", declined.to_string())]),
        ],
    );
    let headers = enriched_by_id(3);
    let unsampled = trace_id_of(&headers["unsampled-1"]);
    assert!(!unsampled.sampled(), "not recorded, and says so to the next stages");
    assert_ne!(unsampled.trace_id, recorded.trace_id);
    assert_eq!(headers["declined-1"]["traceparent"], declined.to_string(), "passed on as it came");
    // A clean stop exports whatever was recorded: after it, Jaeger has all there is.
    none.terminate();
    for t in [&unsampled, &declined] {
        assert!(jaeger_spans(&t.trace_id_hex()).await.is_none(), "trace {} was not recorded", t.trace_id_hex());
    }

    // Tracing off: the context and its tracestate pass through.
    let _off = env.start_stage("audit-enrich", "off");
    let sampled = upstream(true);
    produce_with_headers(
        &env.raw,
        &[(
            serde_json::to_vec(&event("off-1", "read", "reports", "bob")).expect("json"),
            vec![("traceparent", sampled.to_string()), ("tracestate", "vendor=abc".into())],
        )],
    );
    let headers = enriched_by_id(4);
    assert_eq!(headers["off-1"]["traceparent"], sampled.to_string());
    assert_eq!(headers["off-1"]["tracestate"], "vendor=abc");
}

/// A dead letter stays in its event's trace: its record carries the context (the span of the
/// stage that refused it), and that span says why, by kind only.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_event_keeps_its_trace_context() {
    let env = TestEnv::new("trace_dlq", 1).await;
    let _enrich = env.start_stage_with("audit-enrich", "d1", &[("AUDITFLOW_OTLP_ENDPOINT", &otlp_endpoint()), ("AUDITFLOW_TRACE_SAMPLE_RATIO", "0")]);
    let producer = upstream(true);
    produce_with_headers(&env.raw, &[(b"{not json at all".to_vec(), vec![("traceparent", producer.to_string())])]);
    let start = Instant::now();
    let letters = loop {
        let l = read_all(&env, &env.dlq, Duration::from_millis(500));
        if !l.is_empty() || start.elapsed() > Duration::from_secs(60) {
            break l;
        }
    };
    assert_eq!(letters.len(), 1);
    let tp = trace_id_of(&letters[0].headers);
    assert_eq!(tp.trace_id, producer.trace_id, "the letter is in the event's trace");
    assert_eq!(letters[0].headers["dlq.error.kind"], "invalid_json");
    let spans = wait_for_spans(&producer.trace_id_hex(), &[("audit-enrich", "enrich")], Duration::from_secs(30)).await;
    let span = one(&spans, "audit-enrich", "enrich");
    assert_eq!(span.id, tp.span_id_hex(), "the letter names the span that refused the event");
    assert_eq!(span.tag_str("auditflow.outcome"), "dead_lettered");
    assert_eq!(span.tag_str("error.type"), "invalid_json");
    assert_eq!(span.tag_str("otel.status_code"), "ERROR");
    assert!(!span.tags.values().any(|v| v.to_string().contains("not json")), "no event content in the trace: {span:?}");
}

/// The collector hangs (accepts connections, never answers): every span is recorded, none can
/// be exported, the bounded queue fills and spans are dropped and counted, while the stages
/// store every event and dead-letter every bad one, exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_collector_costs_spans_never_events() {
    let env = TestEnv::new("trace_down", 2).await;
    // A collector that takes the connection and never says a word.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().flatten() {
            held.push(s);
        }
    });
    let endpoint = format!("http://{hung_addr}");
    let tracing = [
        ("AUDITFLOW_OTLP_ENDPOINT", endpoint.as_str()),
        ("AUDITFLOW_TRACE_SAMPLE_RATIO", "1"),
        ("AUDITFLOW_OTLP_TIMEOUT_MS", "2000"),
        ("AUDITFLOW_TRACE_QUEUE_SIZE", "64"),
    ];
    let enrich = env.start_stage_with("audit-enrich", "h1", &tracing);
    let _persist = env.start_stage_with("audit-persist", "h1", &tracing);

    let events = support::sample_events(3000, 11);
    env.produce_events(&events);
    support::produce(&env.raw, &(0..10).map(|i| (None, format!("{{broken {i}").into_bytes())).collect::<Vec<_>>());
    env.wait_for_rows(3000, Duration::from_secs(120)).await;
    let start = Instant::now();
    let letters = loop {
        let l = read_all(&env, &env.dlq, Duration::from_millis(500));
        if l.len() >= 10 || start.elapsed() > Duration::from_secs(60) {
            break l;
        }
    };
    assert_eq!(letters.len(), 10, "rows + dead letters = input");

    let addr = http_addr(&enrich);
    let (status, _) = http_get(&addr, "/healthz");
    assert_eq!(status, 200, "a hung collector is not the stage's problem");
    let (_, metrics) = http_get(&addr, "/metrics");
    let value = |outcome: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("auditflow_trace_spans_total") && l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {outcome} count in:\n{metrics}"))
    };
    assert_eq!(value("exported"), 0.0);
    assert!(value("dropped") > 0.0, "the full queue drops spans and says so:\n{metrics}");
}
