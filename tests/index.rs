//! `audit-index` against the real OpenSearch, Kafka and PostgreSQL of the local stack: exactly
//! one document per event (the same ids as `audit_events`) through replays, kill -9, two
//! instances and an OpenSearch outage; a document the mapping refuses is a dead letter and the
//! partition flows on; no document carries a personal identifier in clear; a rebuild from
//! PostgreSQL gives back the same documents.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::sync::Mutex;

/// Tests here share one OpenSearch node, and one of them stops it: one at a time.
static OPENSEARCH: Mutex<()> = Mutex::const_new(());

fn client(env: &TestEnv) -> auditflow::index::client::SearchClient {
    auditflow::index::client::SearchClient::new(&env.config().index).expect("client")
}

async fn documents(env: &TestEnv) -> Vec<Value> {
    let c = client(env);
    let pattern = format!("{}-*", env.index_prefix());
    if c.refresh(&pattern).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({"size": 5000, "sort": [{"id": "asc"}], "query": {"match_all": {}}, "track_total_hits": true});
        if let Some(a) = &after {
            body["search_after"] = a.clone();
        }
        let r = match c.search(&pattern, &body).await {
            Ok(r) => r,
            Err(_) => return out,
        };
        let hits = r["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            return out;
        }
        after = hits.last().map(|h| h["sort"].clone());
        out.extend(hits);
    }
}

async fn document_ids(env: &TestEnv) -> Vec<String> {
    documents(env).await.iter().map(|h| h["_id"].as_str().unwrap_or_default().to_string()).collect()
}

async fn wait_for_documents(env: &TestEnv, n: usize, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ids = document_ids(env).await;
        if ids.len() >= n || start.elapsed() > timeout {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn metric(body: &str, name: &str, label: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_is_one_document_through_replays_crashes_and_two_instances() {
    let _g = OPENSEARCH.lock().await;
    let env = TestEnv::new("index", 3).await;
    let events = sample_events(6_000, 31);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    let mut a = env.start_stage("audit-index", "i1");
    let _b = env.start_stage("audit-index", "i2");
    for (round, part) in events.chunks(1_000).enumerate() {
        env.produce_events(part);
        tokio::time::sleep(Duration::from_millis(400)).await;
        if round % 2 == 1 {
            a.kill9();
            a = env.start_stage("audit-index", &format!("i1-{round}"));
        }
    }
    env.wait_for_rows(6_000, Duration::from_secs(180)).await;
    let ids = wait_for_documents(&env, 6_000, Duration::from_secs(180)).await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id").fetch_all(&env.pool).await.expect("ids");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice");
    assert_eq!(ids, stored, "exactly the persisted events, once each");

    // A replay of the whole topic from the beginning adds nothing.
    drop(a);
    sqlx::query("DELETE FROM stage_offsets WHERE consumer_group = $1")
        .bind(env.config().group_id("index"))
        .execute(&env.pool)
        .await
        .expect("rewind");
    drop(_b);
    let replay = env.start_stage("audit-index", "replay");
    let start = Instant::now();
    loop {
        let (status, body) = http_get(&http_addr(&replay), "/metrics");
        assert_eq!(status, 200);
        if metric(&body, "auditflow_index_items_total", "outcome=\"exists\"") >= 6_000 {
            assert_eq!(metric(&body, "auditflow_index_items_total", "outcome=\"created\""), 0, "{body}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "replay did not finish: {}", replay.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(document_ids(&env).await, stored);

    // Nothing personal in clear; the pseudonyms are PostgreSQL's, so a search finds a user.
    let docs = documents(&env).await;
    let user = events[0].user_id.clone().expect("sample events have users");
    let ip = events.iter().find_map(|e| e.ip_address.clone()).expect("an address");
    // (A user id can still be a *resource* — "delete_user emp00042" — as in PostgreSQL's
    // clear columns; the personal fields themselves never are in clear.)
    for d in &docs {
        let src = d["_source"].as_object().expect("source");
        for f in ["userId", "sessionId", "ipAddress", "userAgent", "location", "metadata"] {
            assert!(!src.contains_key(f), "{f} in clear: {d}");
        }
    }
    let text = serde_json::to_string(&docs).expect("json");
    assert!(!text.contains(&format!("\"{ip}\"")), "no address in clear");
    let pseudonym = test_keys().pseudonym(auditflow::privacy::SubjectKind::User, &user);
    let expected: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE user_pseudonym = $1")
        .bind(&pseudonym)
        .fetch_one(&env.pool)
        .await
        .expect("count");
    let found = docs.iter().filter(|d| d["_source"]["userPseudonym"] == pseudonym.as_str()).count();
    assert!(expected > 0);
    assert_eq!(found as i64, expected, "the user's events are found by pseudonym");

    // `auditflow search` answers as PostgreSQL does, filter by filter.
    let search = |args: &[&str]| -> u64 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditflow"))
            .arg("search")
            .args(args)
            .arg("--json")
            .envs(env.env_vars())
            .output()
            .expect("search");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("search JSON");
        v["total"].as_u64().expect("total")
    };
    let pg = |sql: &str| {
        let pool = env.pool.clone();
        let sql = sql.to_string();
        let p = pseudonym.clone();
        async move {
            let q = sqlx::query_scalar::<_, i64>(&sql);
            let q = if sql.contains("$1") { q.bind(p) } else { q };
            q.fetch_one(&pool).await.expect("count") as u64
        }
    };
    assert_eq!(search(&["--user", &user]), expected as u64);
    assert_eq!(search(&["--user", &user, "--success", "false"]), pg("SELECT count(*) FROM audit_events WHERE user_pseudonym = $1 AND NOT success").await);
    assert_eq!(search(&["--action", "login"]), pg("SELECT count(*) FROM audit_events WHERE action = 'login'").await);
    assert_eq!(search(&["--severity", "high"]), pg("SELECT count(*) FROM audit_events WHERE severity = 'HIGH'").await);
    assert_eq!(search(&["--classification", "CONFIDENTIAL", "--resource", "user_management"]), pg("SELECT count(*) FROM audit_events WHERE classification = 'CONFIDENTIAL' AND resource = 'user_management'").await);
    assert_eq!(search(&["Invalid credentials"]), pg("SELECT count(*) FROM audit_events WHERE error_message = 'Invalid credentials'").await);
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(search(&["--from", &from]), 6_000);
    assert_eq!(search(&["--to", &from]), 0);
    let by_ip = events.iter().filter(|e| e.ip_address.as_deref() == Some(ip.as_str())).count() as u64;
    assert_eq!(search(&["--ip", &ip]), by_ip);
    let in_net = events.iter().filter(|e| e.ip_address.as_deref().is_some_and(|a| a.starts_with("203.0.113."))).count() as u64;
    assert!(in_net > 0);
    assert_eq!(search(&["--ip", "203.0.113.0/24"]), in_net);
    assert_eq!(search(&["--ip", "203.0.112.0/23"]), in_net, "a wider network covers the /24");
    let in_16 = events.iter().filter(|e| e.ip_address.as_deref().is_some_and(|a| a.starts_with("192.168."))).count() as u64;
    assert_eq!(search(&["--ip", "192.168.0.0/16"]), in_16);

    // Erasure reaches the index: the documents stay as facts, nothing identifies the subject.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(["erase", "--subject", &user, "--reason", "GDPR Art. 17 request"])
        .envs(env.env_vars())
        .output()
        .expect("erase");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("search store: {expected} document(s) redacted")), "{stdout}");
    let docs = documents(&env).await;
    let theirs: Vec<&Value> = docs.iter().filter(|d| d["_source"]["personalDataErased"] == true).collect();
    assert_eq!(theirs.len() as i64, expected);
    for d in &theirs {
        let src = d["_source"].as_object().expect("source");
        for f in auditflow::index::IDENTIFYING_FIELDS {
            assert!(src.get(*f).is_none_or(Value::is_null), "{f} left in {d}");
        }
    }
    assert!(!serde_json::to_string(&docs).expect("json").contains(&pseudonym), "the pseudonym is gone");
    assert_eq!(docs.len(), 6_000, "the facts stay");

    // A lost search store comes back from the ledger: the same documents, the erased subject's
    // still redacted; run again (over part of the range), nothing changes.
    let before = comparable(&docs);
    let c = client(&env);
    for index in c.indices(&env.index_prefix()).await.expect("indices") {
        c.delete_index(&index).await.expect("delete index");
    }
    assert!(document_ids(&env).await.is_empty());
    let rebuild = |args: &[&str]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditflow"))
            .args(["index", "rebuild", "--json", "--batch", "700"])
            .args(args)
            .envs(env.env_vars())
            .output()
            .expect("rebuild");
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("rebuild JSON")
    };
    let report = rebuild(&[]);
    assert_eq!(report["events"], 6_000);
    assert_eq!(report["redacted"].as_i64(), Some(expected));
    assert_eq!(comparable(&documents(&env).await), before, "rebuilt documents equal the stage's");
    let mid: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(r#"SELECT "timestamp" FROM audit_events ORDER BY "timestamp", id OFFSET 2500 LIMIT 1"#)
        .fetch_one(&env.pool)
        .await
        .expect("a middle timestamp");
    let later: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM audit_events WHERE "timestamp" >= $1"#).bind(mid).fetch_one(&env.pool).await.expect("count");
    let report = rebuild(&["--from", &mid.to_rfc3339()]);
    assert_eq!(report["events"].as_i64(), Some(later));
    assert_eq!(comparable(&documents(&env).await), before, "a second rebuild changes nothing");
}

/// Documents as (index, id, source without null fields): a redaction in place nulls fields, a
/// rebuilt redacted document leaves them out; both say the same.
fn comparable(docs: &[Value]) -> Vec<(String, String, Value)> {
    docs.iter()
        .map(|d| {
            let mut source = d["_source"].clone();
            if let Some(o) = source.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            (d["_index"].as_str().unwrap_or_default().to_string(), d["_id"].as_str().unwrap_or_default().to_string(), source)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_the_mapping_refuses_is_dead_lettered_and_the_partition_flows_on() {
    let _g = OPENSEARCH.lock().await;
    let env = TestEnv::new("indexdlq", 1).await;
    // An index whose mapping drifted from the template: resourceId became a number.
    let c = client(&env);
    let settings = env.config().index;
    let mut template = auditflow::index::template(&settings);
    template["template"]["mappings"]["properties"]["resourceId"] = json!({"type": "long"});
    let index = settings.index_for(chrono::Utc::now());
    let body = json!({"settings": template["template"]["settings"], "mappings": template["template"]["mappings"]});
    reqwest::Client::new()
        .put(format!("{}/{index}", opensearch_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("create the drifted index")
        .error_for_status()
        .expect("index created");
    let mut events = sample_events(300, 32);
    for (i, e) in events.iter_mut().enumerate() {
        e.resource_id = Some(if i % 30 == 7 { format!("doc-{i}") } else { i.to_string() });
        e.timestamp = None;
    }
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _index = env.start_stage("audit-index", "i1");
    env.produce_events(&events);
    let ids = wait_for_documents(&env, 290, Duration::from_secs(120)).await;
    assert_eq!(ids.len(), 290, "every document the mapping takes");
    let start = Instant::now();
    let letters = loop {
        let l = read_topic(&env.dlq, 3, Duration::from_secs(2));
        if l.len() >= 10 || start.elapsed() > Duration::from_secs(60) {
            break l;
        }
    };
    assert_eq!(letters.len(), 10, "one dead letter per refused document");
    for l in &letters {
        assert_eq!(l.headers.get("dlq.stage").map(String::as_str), Some("index"), "{:?}", l.headers);
        let why = l.headers.get("dlq.error.message").cloned().unwrap_or_default();
        assert!(why.contains("mapper_parsing_exception") || why.contains("failed to parse"), "{why}");
    }
    // The partition flows on.
    let more: Vec<_> = sample_events(50, 33)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.resource_id = Some(i.to_string());
            e.timestamp = None;
            e
        })
        .collect();
    env.produce_events(&more);
    assert_eq!(wait_for_documents(&env, 340, Duration::from_secs(60)).await.len(), 340);
    let _ = c;
}

#[tokio::test(flavor = "multi_thread")]
async fn opensearch_stopped_for_thirty_seconds_mid_stream_loses_nothing() {
    let _g = OPENSEARCH.lock().await;
    let env = TestEnv::new("indexdown", 2).await;
    let events = sample_events(4_000, 34);
    let (first, second) = events.split_at(2_000);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let index = env.start_stage("audit-index", "i1");
    env.produce_events(first);
    wait_for_documents(&env, 500, Duration::from_secs(60)).await;
    stack(&["stop", "opensearch"]);
    env.produce_events(second);
    tokio::time::sleep(Duration::from_secs(30)).await;
    stack(&["start", "opensearch"]);
    let ids = wait_for_documents(&env, 4_000, Duration::from_secs(180)).await;
    assert_eq!(ids.len(), 4_000, "log {}", index.log_path.display());
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 4_000);
    assert!(read_topic(&env.dlq, 2, Duration::from_secs(2)).is_empty(), "nothing on the DLQ");
    assert!(index.log().contains("retrying"), "the outage was seen and retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_an_expired_months_index_and_keeps_a_held_one() {
    let _g = OPENSEARCH.lock().await;
    let env = TestEnv::new("indexret", 1).await;
    let mut events = sample_events(300, 35);
    for (i, e) in events.iter_mut().enumerate() {
        let at = match i % 3 {
            0 => "2012-03-15T10:00:00Z",
            1 => "2012-05-15T10:00:00Z",
            _ => continue,
        };
        e.timestamp = Some(auditflow::event::RawTimestamp::Rfc3339(at.into()));
    }
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    let _index = env.start_stage("audit-index", "i1");
    env.produce_events(&events);
    env.wait_for_rows(300, Duration::from_secs(120)).await;
    assert_eq!(wait_for_documents(&env, 300, Duration::from_secs(120)).await.len(), 300);
    // May 2012 is under a legal hold; March 2012 is long expired.
    sqlx::query("INSERT INTO legal_holds (from_ts, to_ts, reason, created_by) VALUES ('2012-05-01Z', '2012-06-01Z', 'litigation', 'test')")
        .execute(&env.pool)
        .await
        .expect("hold");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(["retention", "run", "--json"])
        .envs(env.env_vars())
        .output()
        .expect("retention");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    let prefix = env.index_prefix();
    assert_eq!(r["indices"], json!([{"index": format!("{prefix}-2012.03"), "monthStart": "2012-03-01T00:00:00Z", "documents": 100, "dropped": true}]), "{r}");
    let left: BTreeSet<String> = client(&env).indices(&prefix).await.expect("indices").into_iter().collect();
    let now = env.config().index.index_for(chrono::Utc::now());
    assert_eq!(left, [format!("{prefix}-2012.05"), now].into_iter().collect(), "the held month and the current one stay");
    let recorded: i64 = sqlx::query_scalar("SELECT rows_dropped FROM retention_drops WHERE table_name = 'opensearch'")
        .fetch_one(&env.pool)
        .await
        .expect("recorded drop");
    assert_eq!(recorded, 100);
    assert_eq!(document_ids(&env).await.len(), 200);
}

/// An index made by an earlier template (no `asn` in its strict mapping) takes documents with
/// the new field once the stage has put its template: the fields are added to existing indices'
/// mappings, so an upgrade dead-letters nothing until next month's index.
#[tokio::test(flavor = "multi_thread")]
async fn a_field_added_to_the_template_reaches_the_existing_indices() {
    let _one = OPENSEARCH.lock().await;
    let env = TestEnv::new("index_upgrade", 1).await;
    let c = client(&env);
    let settings = env.config().index;
    let index = settings.index_for(chrono::Utc::now());
    let mut old = auditflow::index::template(&settings)["template"]["mappings"].clone();
    old["properties"].as_object_mut().expect("properties").remove("asn");
    c.send_json(reqwest::Method::PUT, &index, &json!({"mappings": old, "settings": {"number_of_replicas": 0}})).await.expect("old index");
    let doc = json!({"id": "e1", "timestamp": "2026-12-07T10:00:00.000Z", "action": "login", "resource": "auth", "asn": {"number": 15169, "organization": "Google LLC"}});
    let refused = c.send_json(reqwest::Method::PUT, &format!("{index}/_create/e1"), &doc).await;
    assert!(refused.is_err(), "the old strict mapping refuses asn");
    c.put_template(&settings).await.expect("template and mappings");
    c.send_json(reqwest::Method::PUT, &format!("{index}/_create/e1?refresh=true"), &doc).await.expect("accepted now");
    let mapping = c.get(&format!("{index}/_mapping")).await.expect("mapping");
    assert_eq!(mapping[&index]["mappings"]["properties"]["asn"]["properties"]["number"]["type"], "long");
    let _ = c.delete_index(&index).await;
}
