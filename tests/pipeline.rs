//! audit-raw → audit-enrich → audit-enriched → audit-persist → PostgreSQL, end to end on the
//! real local stack, including crashes, scaling and infrastructure faults.
//!
//! Needs `scripts/stack up`. Tests that stop or restart Kafka or PostgreSQL take a global lock
//! so they never disturb another test.

mod support;

use std::collections::{BTreeSet, HashMap};
use tokio::sync::Mutex;
use std::time::{Duration, Instant};

use support::*;

/// Held by every test: fault tests stop shared services, so tests in this file run one at a time.
static STACK: Mutex<()> = Mutex::const_new(());

async fn lock() -> tokio::sync::MutexGuard<'static, ()> {
    STACK.lock().await
}

fn ids(events: &[auditflow::event::RawEvent]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().filter_map(|e| e.id.clone()).collect();
    v.sort();
    v
}

/// Every enriched record committed to the topic, by event id: exactly once means each id once.
fn enriched_ids(env: &TestEnv) -> Vec<String> {
    let records = read_topic(&env.enriched, env.partitions, Duration::from_secs(3));
    let mut v: Vec<String> = records
        .iter()
        .map(|r| auditflow::codec::decode_enriched(&r.payload).expect("enriched record decodes").id)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_become_exactly_ten_thousand_rows() {
    let _g = lock().await;
    let env = TestEnv::new("e2e", 3).await;
    let events = sample_events(10_000, 1);
    let enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage("audit-persist", "p1");
    env.produce_events(&events);
    env.wait_for_rows(10_000, Duration::from_secs(120)).await;

    assert_eq!(env.persisted_ids().await, ids(&events), "the persisted ids are exactly the emitted ones");
    assert_eq!(enriched_ids(&env), ids(&events), "audit-enriched holds each event exactly once");
    assert!(read_topic(&env.dlq, 3, Duration::from_secs(1)).is_empty(), "no valid event is dead-lettered");

    // The stored offsets account for every consumed message.
    let stored: i64 = sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::bigint FROM stage_offsets")
        .fetch_one(&env.pool)
        .await
        .expect("offsets");
    assert!(stored >= 10_000, "persist stored offsets past all 10,000 records, got {stored}");

    // Every binary serves metrics and health.
    for (stage, name) in [(&enrich, "enrich"), (&persist, "persist")] {
        let addr = http_addr(stage);
        let (code, body) = http_get(&addr, "/metrics");
        assert_eq!(code, 200);
        assert!(body.contains(&format!("auditflow_consumed_total{{stage=\"{name}\"")), "{body}");
        assert!(body.contains("auditflow_batch_processing_seconds_bucket"), "{body}");
        assert_eq!(http_get(&addr, "/healthz").0, 200);
        assert_eq!(http_get(&addr, "/readyz").0, 200);
    }
    // Lag per partition, measured against the committed positions (stats every 5 s).
    for (stage, name, topic) in [(&enrich, "enrich", &env.raw), (&persist, "persist", &env.enriched)] {
        let addr = http_addr(stage);
        let start = Instant::now();
        let lag_lines = loop {
            let (_, body) = http_get(&addr, "/metrics");
            let lines: Vec<String> = body
                .lines()
                .filter(|l| l.starts_with("auditflow_consumer_lag{") && l.contains(&format!("stage=\"{name}\"")) && l.contains(topic.as_str()))
                .map(str::to_string)
                .collect();
            if lines.len() == 3 || start.elapsed() > Duration::from_secs(20) {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(lag_lines.len(), 3, "a lag gauge per partition for {name}");
        for l in &lag_lines {
            let v: i64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("gauge value");
            assert!(v <= 1, "{name} caught up (a transaction marker may count 1): {l}");
        }
    }
    let (_, metrics) = http_get(&http_addr(&persist), "/metrics");
    assert!(metrics.contains("auditflow_sunk_total{sink=\"postgres.audit_events\",stage=\"persist\"} 10000"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_both_stages_mid_stream_loses_and_duplicates_nothing() {
    let _g = lock().await;
    let env = TestEnv::new("kill9", 3).await;
    let events = sample_events(10_000, 2);
    let chunks: Vec<Vec<auditflow::event::RawEvent>> = events.chunks(500).map(<[_]>::to_vec).collect();
    let producer_env_raw = env.raw.clone();
    let producer = std::thread::spawn(move || {
        for chunk in chunks {
            let records: Vec<(Option<String>, Vec<u8>)> =
                chunk.iter().map(|e| (e.user_id.clone(), serde_json::to_vec(e).expect("json"))).collect();
            produce(&producer_env_raw, &records);
            std::thread::sleep(Duration::from_millis(150));
        }
    });

    let mut enrich = env.start_stage("audit-enrich", "e1");
    let mut persist = env.start_stage("audit-persist", "p1");
    let mut kills = 0;
    for round in 1..=4 {
        // Let some work happen, then kill both without warning and start them again.
        let target = round * 1500;
        let start = Instant::now();
        while env.row_count().await < target && start.elapsed() < Duration::from_secs(90) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        enrich.kill9();
        persist.kill9();
        kills += 2;
        // Restart under the same instance names: the new producer fences the dead one's
        // open transaction at once instead of waiting for it to time out.
        enrich = env.start_stage("audit-enrich", "e1");
        persist = env.start_stage("audit-persist", "p1");
    }
    producer.join().expect("producer thread");
    env.wait_for_rows(10_000, Duration::from_secs(180)).await;
    assert_eq!(kills, 8);
    assert_eq!(env.persisted_ids().await, ids(&events), "no gap, no duplicate");
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "hash chains intact across crashes: {report}");
    assert_eq!(enriched_ids(&env), ids(&events), "audit-enriched holds each event exactly once");
    drop((enrich, persist));
}

#[tokio::test(flavor = "multi_thread")]
async fn persist_scaled_one_to_three_to_one_under_load_writes_exactly_n_rows() {
    let _g = lock().await;
    let env = TestEnv::new("scale", 6).await;
    let n = 30_000;
    let events = sample_events(n, 3);
    let chunks: Vec<Vec<auditflow::event::RawEvent>> = events.chunks(1000).map(<[_]>::to_vec).collect();
    let raw = env.raw.clone();
    let producer = std::thread::spawn(move || {
        for chunk in chunks {
            let records: Vec<(Option<String>, Vec<u8>)> =
                chunk.iter().map(|e| (e.user_id.clone(), serde_json::to_vec(e).expect("json"))).collect();
            produce(&raw, &records);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _p1 = env.start_stage("audit-persist", "p1");
    while env.row_count().await < 5_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut p2 = env.start_stage("audit-persist", "p2");
    let mut p3 = env.start_stage("audit-persist", "p3");
    let rows_at_scale_up = env.row_count().await;
    while env.row_count().await < rows_at_scale_up + 10_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p2.is_running() && p3.is_running());
    assert!(p2.terminate().success(), "SIGTERM is a clean exit");
    assert!(p3.terminate().success(), "SIGTERM is a clean exit");
    producer.join().expect("producer thread");
    env.wait_for_rows(n as i64, Duration::from_secs(180)).await;
    assert_eq!(env.persisted_ids().await, ids(&events));
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "hash chains intact across rebalances: {report}");
    let assigned_to_more_than_one: i64 = sqlx::query_scalar("SELECT count(*) FROM stage_offsets")
        .fetch_one(&env.pool)
        .await
        .expect("offsets");
    assert_eq!(assigned_to_more_than_one, 6, "every partition has its stored offset");
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_mid_stream_loses_nothing() {
    let _g = lock().await;
    let env = TestEnv::new("brokerrestart", 3).await;
    let events = sample_events(6_000, 4);
    let (first, second) = events.split_at(3_000);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    env.produce_events(first);
    while env.row_count().await < 1_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack(&["restart", "kafka"]);
    env.produce_events(second);
    env.wait_for_rows(6_000, Duration::from_secs(240)).await;
    assert_eq!(env.persisted_ids().await, ids(&events));
    assert_eq!(enriched_ids(&env), ids(&events), "audit-enriched holds each event exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_for_twenty_seconds_mid_stream_loses_nothing() {
    let _g = lock().await;
    let env = TestEnv::new("pgdown", 3).await;
    let events = sample_events(8_000, 5);
    let (first, second) = events.split_at(4_000);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage("audit-persist", "p1");
    env.produce_events(first);
    while env.row_count().await < 1_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The harness's own pool must not keep the server from stopping.
    env.pool.close().await;
    stack(&["stop", "postgres"]);
    env.produce_events(second);
    tokio::time::sleep(Duration::from_secs(20)).await;
    stack(&["start", "postgres"]);
    let pool = sqlx::PgPool::connect(&env.database_url).await.expect("reconnect");
    let start = Instant::now();
    let mut count = 0i64;
    while start.elapsed() < Duration::from_secs(180) {
        count = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.unwrap_or(-1);
        if count >= 8_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(count, 8_000, "rows after PostgreSQL came back (log {})", persist.log_path.display());
    let persisted: Vec<String> =
        sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id").fetch_all(&pool).await.expect("ids");
    assert_eq!(persisted, ids(&events));
    assert!(persist.log().contains("sink write failed; retrying"), "the outage was seen and retried");
}

/// One malformed payload and the rejection kind it must be dead-lettered with.
fn malformed_payloads() -> Vec<(Vec<u8>, &'static str)> {
    let deep = {
        let mut v = serde_json::json!({"leaf": 1});
        for _ in 0..20 {
            v = serde_json::json!({ "n": v });
        }
        v
    };
    let huge = format!(r#"{{"action":"login","resource":"r","errorMessage":"{}"}}"#, "x".repeat(1_100_000));
    let kinds: Vec<(Vec<u8>, &'static str)> = vec![
        (b"{\"action\": \"login\", \"resource\": ".to_vec(), "invalid_json"),
        (b"[1, 2, 3]".to_vec(), "unsupported_encoding"),
        (vec![0xff, 0xfe, 0x00, 0x13, 0x37], "unsupported_encoding"),
        (huge.into_bytes(), "too_large"),
        (br#"{"resource": "user_account", "userId": "u1"}"#.to_vec(), "missing_field"),
        (br#"{"action": "login", "resource": "r", "severity": "URGENT"}"#.to_vec(), "unknown_enum"),
        (br#"{"action": "login", "resource": "r", "ipAddress": "999.1.1.1"}"#.to_vec(), "invalid_ip"),
        (br#"{"action": "login", "resource": "r", "timestamp": "yesterday"}"#.to_vec(), "invalid_timestamp"),
        (br#"{"action": "login", "resource": "r", "statusCode": 999}"#.to_vec(), "invalid_field"),
        (serde_json::to_vec(&serde_json::json!({"action": "a", "resource": "r", "metadata": deep})).expect("json"), "metadata_too_deep"),
        (vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9], "invalid_avro"),
    ];
    kinds
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_go_to_the_dlq_with_reasons_and_good_ones_are_persisted() {
    let _g = lock().await;
    let env = TestEnv::new("dlq", 3).await;
    let kinds = malformed_payloads();
    let distinct_kinds: BTreeSet<&str> = kinds.iter().map(|(_, k)| *k).collect();
    assert!(distinct_kinds.len() >= 8, "at least 8 kinds of malformed input");

    let good = sample_events(1_000, 6);
    let mut records: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    let mut expected_kind_by_payload: HashMap<Vec<u8>, &'static str> = HashMap::new();
    let mut bad_count = 0;
    for (i, event) in good.iter().enumerate() {
        // Raw events arrive as JSON and as Avro; both are valid input.
        let payload =
            if i % 5 == 0 { auditflow::codec::encode_raw(event) } else { serde_json::to_vec(event).expect("json") };
        records.push((event.user_id.clone(), payload));
        if i % 10 == 0 && bad_count < 100 {
            let (payload, kind) = &kinds[bad_count % kinds.len()];
            // Make each malformed payload unique so its DLQ record can be matched back.
            let mut unique = payload.clone();
            if *kind != "too_large" && *kind != "invalid_avro" && *kind != "unsupported_encoding" {
                unique.extend_from_slice(" ".repeat(bad_count + 1).as_bytes());
            } else {
                unique.extend_from_slice(&(bad_count as u32).to_be_bytes());
            }
            expected_kind_by_payload.insert(unique.clone(), kind);
            records.push((Some(format!("bad-{bad_count}")), unique));
            bad_count += 1;
        }
    }
    assert_eq!(bad_count, 100);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    env.produce_raw(&records);
    env.wait_for_rows(1_000, Duration::from_secs(120)).await;
    assert_eq!(env.persisted_ids().await, ids(&good), "every good event is persisted");

    let dead = read_topic(&env.dlq, 3, Duration::from_secs(3));
    assert_eq!(dead.len(), 100, "every malformed message is in the DLQ exactly once");
    let mut seen_kinds = BTreeSet::new();
    for d in &dead {
        assert_eq!(d.headers.get("dlq.source.topic"), Some(&env.raw));
        assert_eq!(d.headers.get("dlq.stage").map(String::as_str), Some("enrich"));
        assert!(d.headers.get("dlq.source.partition").and_then(|p| p.parse::<i32>().ok()).is_some());
        assert!(d.headers.get("dlq.source.offset").and_then(|p| p.parse::<i64>().ok()).is_some());
        assert!(!d.headers.get("dlq.error.message").map(String::is_empty).unwrap_or(true));
        let kind = d.headers.get("dlq.error.kind").expect("kind header").clone();
        let expected = if d.headers.contains_key("dlq.payload.truncated") {
            "too_large"
        } else {
            expected_kind_by_payload.get(&d.payload).copied().unwrap_or("<payload not one we sent>")
        };
        assert_eq!(kind, expected, "payload starting {:?}", String::from_utf8_lossy(&d.payload[..d.payload.len().min(60)]));
        seen_kinds.insert(kind);
    }
    assert_eq!(seen_kinds.len(), distinct_kinds.len(), "{seen_kinds:?}");
}
