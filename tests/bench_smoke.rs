//! Keeps the benchmark from rotting: a tiny run of `auditflow-bench`'s logic against the real
//! local stack, judged on correctness only (counts reconcile, the report is well-formed JSON),
//! never on timing. The real benchmark is `scripts/bench`.

use std::path::PathBuf;

use auditflow::bench::{report::render_table, run, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_benchmark_run_reconciles() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_audit-enrich")).parent().expect("bin dir").to_path_buf();
    let events = 3000u64;
    let opts = BenchOptions {
        events,
        paced_rates: vec![1000],
        paced_secs: 2,
        saturation_events: 2000,
        partitions: 3,
        bin_dir: Some(bin_dir),
        stack_script: Some(root.join("scripts/stack")),
        log_dir: Some(root.join("target/test-logs").join(format!("bench-smoke-{}", std::process::id()))),
        phase_timeout_secs: 240,
        search_docs: 4000,
        search_repeat: 2,
        api_events: events,
        pack_rounds: 1,
        tracing_events: 1500,
        tracing_rounds: 1,
        ..BenchOptions::default()
    };
    let report = run(&opts).await.expect("benchmark runs");
    assert!(report.errors.is_empty(), "phases failed: {:#?}", report.errors);
    assert!(report.cleanup_problems.is_empty(), "cleanup: {:#?}", report.cleanup_problems);

    // One well-formed JSON document with every section.
    let text = serde_json::to_string_pretty(&report).expect("serialises");
    let json: serde_json::Value = serde_json::from_str(&text).expect("well-formed JSON");
    for key in ["machine", "load_average", "settings", "generation", "fill", "limits", "stages", "fleet", "targets"] {
        assert!(!json[key].is_null(), "missing {key}");
    }
    assert!(render_table(&report).contains("TARGETS"));

    // Limits were measured on the same data.
    let limits = &report.limits;
    assert_eq!(limits.kafka_produce.as_ref().expect("producer limit").records, events);
    assert_eq!(limits.kafka_produce_raw_events.as_ref().expect("producer limit, raw events").records, events);
    assert!(limits.kafka_consume.as_ref().expect("consumer limit").records >= events);
    assert_eq!(limits.postgres_copy.as_ref().expect("COPY").rows, events);
    assert_eq!(limits.postgres_copy_batched.as_ref().expect("COPY in batches").rows, events);
    assert_eq!(limits.opensearch_bulk.as_ref().expect("plain _bulk").docs, events);

    // Every stage alone saw every record of its input; nothing was dead-lettered.
    let names: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["enrich", "persist", "compliance", "rules", "alert", "index"]);
    let produced_to = |stage: &str, topic: &str| -> u64 {
        report.stages.iter().filter(|s| s.stage == stage).flat_map(|s| &s.produced).filter(|(t, _)| t.ends_with(topic)).map(|(_, n)| n).sum()
    };
    for s in &report.stages {
        let expected = if s.stage == "alert" { produced_to("rules", ".audit-rule-matches") } else { events };
        assert_eq!(s.events, expected, "{}", s.stage);
        assert!(s.events > 0, "{}", s.stage);
        assert_eq!(s.dead_lettered, 0, "{}", s.stage);
        assert!(s.usage.peak_rss_mb > 0.0, "{}", s.stage);
        assert!(s.ratio_to_bound.is_some(), "{}", s.stage);
    }
    assert_eq!(produced_to("enrich", ".audit-enriched"), events);

    // The fleet lost nothing, every stage drained its input, every row has a latency, and
    // every alert record was measured.
    assert_eq!(report.fleet.runs.len(), 2);
    for r in &report.fleet.runs {
        assert_eq!(r.produce_failures, 0, "{}", r.load);
        assert_eq!(r.lost, 0, "{}", r.load);
        assert_eq!(r.rows, r.produced, "{}", r.load);
        assert_eq!(r.row_latency.samples, r.rows, "{}", r.load);
        assert_eq!(r.usage.len(), 6, "{}", r.load);
        for d in &r.drained {
            assert!(d.input_records > 0 && d.consumed >= d.input_records, "{}: {d:?}", r.load);
        }
        assert!(r.alerts > 0, "{}", r.load);
        assert_eq!(r.alert_latency.iter().map(|p| p.latency.samples).sum::<u64>(), r.alerts, "{}", r.load);
    }
    let searchable = report.fleet.runs[0].searchable_latency.as_ref().expect("produce -> searchable measured at 1000/s");
    assert!(searchable.samples > 0 && searchable.p50_ms > 0.0, "{searchable:?}");
    assert_eq!(report.fleet.runs[0].produced, 2000);
    assert_eq!(report.fleet.runs[1].produced, 2000);
    assert!(report.fleet.alert_latency.measured, "{}", report.fleet.alert_latency.note);
    assert_eq!(report.targets.len(), 17);
    // Search latency over the documents it indexed, every typical query answered.
    let search = report.search.as_ref().expect("search phase ran");
    assert_eq!(search.docs, 4000);
    assert_eq!(search.queries.len(), 6);
    assert!(search.queries.iter().all(|q| q.latency.samples == 2), "{search:?}");
    assert!(search.queries.iter().any(|q| q.hits > 0), "{search:?}");
    // The ledger's trees and per-batch signatures are measured against persist's CPU.
    let ledger = report.ledger_evidence.as_ref().expect("ledger evidence measured");
    assert!(ledger.signatures > 0 && ledger.cpu_seconds_per_million > 0.0, "{ledger:?}");
    assert!(report.targets.iter().any(|t| t.name == "ledger trees + per-batch signing" && t.value.is_some()));
    // The API phase: the same events over HTTP and to Kafka, the search questions through the
    // API (whose totals it checked against OpenSearch's).
    let api = report.api.as_ref().expect("api phase ran");
    let ingest = api.ingest.as_ref().expect("ingest measured");
    assert_eq!(ingest.events, events);
    assert!(ingest.http_events_per_sec > 0.0 && ingest.kafka_events_per_sec > 0.0, "{ingest:?}");
    assert_eq!(api.queries.len(), 6);
    assert!(api.queries.iter().all(|q| q.api.samples == 2 && q.direct.samples == 2), "{api:?}");
    assert!(report.targets.iter().filter(|t| t.name.starts_with("HTTP bulk ingest") || t.name.starts_with("API search")).all(|t| t.value.is_some()));
    // The rules stage read every enriched event on both rule packs.
    let packs = report.rule_packs.as_ref().expect("rule packs compared");
    assert_eq!(packs.events, events);
    assert_eq!((packs.native_events_per_sec.len(), packs.sigma_events_per_sec.len()), (1, 1));
    assert!(packs.ratio.is_finite() && packs.ratio > 0.0, "{packs:?}");
    // The fleet ran with tracing off, at 1% and at 100%, losing nothing.
    let tracing = report.tracing.as_ref().expect("tracing cost measured");
    assert_eq!(tracing.events, 1500);
    assert_eq!(tracing.lost, 0);
    assert!(tracing.events_per_sec.iter().all(|(_, v)| v.len() == 1 && v[0] > 0.0), "{tracing:?}");
    assert!(tracing.cost_of("1%").is_some_and(f64::is_finite) && tracing.cost_of("100%").is_some_and(f64::is_finite), "{tracing:?}");
}
