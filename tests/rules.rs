//! `audit-rules` on the real local stack (Kafka, Redis): exactly-once matches, replays that do
//! not double count, two instances deciding one crossing, a Redis outage, and the Redis window
//! scripts checked against the in-memory store on random streams.
//!
//! Needs `scripts/stack up` (Kafka on 127.0.0.1:9092, Redis on 6379). Every test uses its own
//! topics and its own Redis key prefix; the outage test runs a private `redis-server`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditflow::codec::{decode_enriched, encode_enriched};
use auditflow::event::{Classification, ComplianceFlags, EnrichedEvent, Severity, SourcePosition};
use auditflow::rule_match::RuleMatch;
use auditflow::rules::{
    BlockDecision, MemoryStore, RedisKeys, RedisWindowStore, RulesEngine, TraceOutcome, WindowLimits, WindowOutcome,
};
use chrono::{TimeZone, Utc};
use support::*;

fn redis_url() -> String {
    std::env::var("AUDITFLOW_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn default_rules() -> PathBuf {
    repo_root().join("rules")
}

/// A test's environment with its own Redis prefix and the rule directory.
async fn rules_env(name: &str, partitions: i32, redis: &str, rules: &std::path::Path) -> (TestEnv, String) {
    let mut env = TestEnv::new(name, partitions).await;
    let prefix = format!("test:{}:", env.id);
    env.extra_env.push(("AUDITFLOW_REDIS_URL".into(), redis.to_string()));
    env.extra_env.push(("AUDITFLOW_REDIS_PREFIX".into(), prefix.clone()));
    env.extra_env.push(("AUDITFLOW_RULES_DIR".into(), rules.display().to_string()));
    env.extra_env.push(("AUDITFLOW_RETRY_MAX_BACKOFF_MS".into(), "500".into()));
    (env, prefix)
}

fn failed_login(id: &str, t_ms: i64, user: &str, ip: &str) -> EnrichedEvent {
    let t = Utc.timestamp_millis_opt(t_ms).unwrap();
    EnrichedEvent {
        id: id.to_string(),
        timestamp: t,
        user_id: Some(user.to_string()),
        session_id: None,
        action: "login".into(),
        resource: "authentication".into(),
        resource_id: None,
        method: Some("POST".into()),
        endpoint: Some("/api/auth/login".into()),
        status_code: Some(401),
        user_agent: None,
        ip_address: Some(ip.to_string()),
        ip: None,
        location: None,
        classification: Classification::Internal,
        severity: Severity::High,
        metadata: None,
        success: false,
        error_message: Some("Invalid credentials".into()),
        duration_ms: None,
        compliance: ComplianceFlags::default(),
        source: SourcePosition { topic: "audit-raw".into(), partition: 0, offset: 0, timestamp_ms: Some(t_ms) },
        enriched_at: t,
        asn: None,
    }
}

fn produce_enriched(env: &TestEnv, events: &[EnrichedEvent], key: impl Fn(&EnrichedEvent) -> String) {
    let records: Vec<(Option<String>, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let mut buf = Vec::new();
            encode_enriched(e, &mut buf);
            (Some(key(e)), buf)
        })
        .collect();
    produce(&env.enriched, &records);
}

fn matches_topic(env: &TestEnv) -> String {
    format!("{}.audit-rule-matches", env.id)
}

fn actions_topic(env: &TestEnv) -> String {
    format!("{}.security-actions", env.id)
}

fn read_matches(env: &TestEnv, quiet: Duration) -> Vec<RuleMatch> {
    read_topic(&matches_topic(env), env.partitions, quiet)
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a RuleMatch"))
        .collect()
}

/// Wait until the matches topic holds `n` committed records, then for quiet, and return them.
fn wait_for_matches(env: &TestEnv, n: usize, timeout: Duration, stages: &[&StageProcess]) -> Vec<RuleMatch> {
    let start = Instant::now();
    loop {
        let got = read_matches(env, Duration::from_secs(2));
        if got.len() >= n || start.elapsed() > timeout {
            if got.len() < n {
                for s in stages {
                    eprintln!("---- {}\n{}", s.log_path.display(), s.log());
                }
            }
            // read once more after a pause: nothing further may arrive
            std::thread::sleep(Duration::from_secs(2));
            return read_matches(env, Duration::from_secs(3));
        }
    }
}

/// What the pure engine with an in-memory store makes of the same events: the reference.
fn expected(events: &[EnrichedEvent]) -> (Vec<RuleMatch>, Vec<BlockDecision>) {
    let engine = RulesEngine::load_dir(&default_rules()).expect("default rules");
    let results = engine.evaluate(events, &mut MemoryStore::new(), false).expect("memory store");
    let matches = results.iter().flat_map(|r| r.matches.clone()).collect();
    let blocks = results.iter().flat_map(|r| r.blocks.clone()).collect();
    (matches, blocks)
}

fn by_id(ms: &[RuleMatch]) -> BTreeMap<String, RuleMatch> {
    ms.iter().map(|m| (m.match_id.clone(), m.clone())).collect()
}

fn count_rule(ms: &[RuleMatch], rule: &str) -> usize {
    ms.iter().filter(|m| m.rule_id == rule).count()
}

fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url).expect("redis url").get_connection().expect("redis reachable: run scripts/stack up")
}

fn zcard(url: &str, key: &str) -> i64 {
    redis::cmd("ZCARD").arg(key).query(&mut redis_conn(url)).expect("ZCARD")
}

/// Twelve failed logins of one user from one address within a minute of event time.
fn twelve_failed_logins(tag: &str) -> Vec<EnrichedEvent> {
    let t0 = Utc::now().timestamp_millis() - 30_000;
    (0..12).map(|i| failed_login(&format!("{tag}-e{i:02}"), t0 + i * 1000, "victim", "198.51.100.7")).collect()
}

fn assert_failed_login_matches(got: &[RuleMatch], events: &[EnrichedEvent], env: &TestEnv) {
    let (want, _) = expected(events);
    assert_eq!(want.len(), 15, "reference: 12 pattern + per-user + per-IP + suspicious activity");
    let ids: BTreeSet<&str> = got.iter().map(|m| m.match_id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "each match exactly once (logs: {})", env.log_dir.display());
    assert_eq!(by_id(got), by_id(&want), "the same matches as the in-memory engine, field for field");
    assert_eq!(count_rule(got, "failed-login-attempts"), 12);
    let per_user: Vec<&RuleMatch> = got.iter().filter(|m| m.rule_id == "failed-logins-per-user").collect();
    assert_eq!(per_user.len(), 1);
    let m = per_user[0];
    let w = m.window.as_ref().expect("window figures");
    assert_eq!((w.observed, w.limit, w.seconds), (10, 10, 60));
    assert_eq!(w.end, events[9].timestamp, "the 10th event crossed");
    assert_eq!(m.evidence_event_ids.len(), 10);
    assert_eq!(m.evidence_event_ids.last(), Some(&events[9].id));
    assert_eq!(m.match_id, auditflow::rules::match_id("failed-logins-per-user", &events[9].id));
    assert_eq!(m.group_key.get("user_id").map(String::as_str), Some("victim"));
    assert_eq!(count_rule(got, "failed-logins-per-ip"), 1);
    assert_eq!(count_rule(got, "suspicious-activity"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_failed_logins_give_each_match_exactly_once() {
    let (env, prefix) = rules_env("rules_once", 3, &redis_url(), &default_rules()).await;
    let events = twelve_failed_logins(&env.id);
    let stage = env.start_stage("audit-rules", "r1");
    produce_enriched(&env, &events, |e| e.user_id.clone().unwrap_or_default());
    // and one record that is not an enriched event at all
    produce(&env.enriched, &[(Some("victim".into()), b"{\"not\":\"avro\"}".to_vec())]);

    let got = wait_for_matches(&env, 15, Duration::from_secs(90), &[&stage]);
    assert_failed_login_matches(&got, &events, &env);

    // The BLOCK rule: one decision on security-actions, and in Redis for upstream services.
    let actions = read_topic(&actions_topic(&env), 3, Duration::from_secs(2));
    assert_eq!(actions.len(), 1);
    let b: BlockDecision = serde_json::from_slice(&actions[0].payload).expect("a block decision");
    assert_eq!((b.subject_type.as_str(), b.subject.as_str(), b.ttl_seconds), ("ip", "198.51.100.7", 900));
    let key = RedisKeys { prefix: &prefix }.block("ip", "198.51.100.7");
    let mut c = redis_conn(&redis_url());
    let stored: String = redis::cmd("GET").arg(&key).query(&mut c).expect("block key set");
    assert_eq!(serde_json::from_str::<BlockDecision>(&stored).expect("json"), b);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut c).expect("PTTL");
    assert!(ttl > 800_000 && ttl <= 900_000, "expires with the block: {ttl} ms");

    // The undecodable record went to the DLQ, named after this stage.
    let dlq = read_topic(&env.dlq, 3, Duration::from_secs(2));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers.get("dlq.stage").map(String::as_str), Some("rules"));

    let window = RedisKeys { prefix: &prefix }.window("failed-logins-per-user", "user_id=victim", "ev");
    assert_eq!(zcard(&redis_url(), &window), 12);
}

/// Redis refusing one group's window for good (here: its key holds a value of another type)
/// dead-letters the events of that group with Redis's reason; every other event is judged as
/// usual and the stage does not stall.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_redis_refuses_is_dead_lettered_and_the_rest_flow() {
    let (env, prefix) = rules_env("rules_refused", 3, &redis_url(), &default_rules()).await;
    let window = RedisKeys { prefix: &prefix }.window("failed-logins-per-user", "user_id=poisoned", "ev");
    let _: () = redis::cmd("SET").arg(&window).arg("not a window").query(&mut redis_conn(&redis_url())).expect("SET");
    let mut events = twelve_failed_logins(&env.id);
    let t0 = events[0].timestamp.timestamp_millis();
    let poisoned: Vec<EnrichedEvent> = (0..3).map(|i| failed_login(&format!("{}-p{i}", env.id), t0 + i * 500, "poisoned", "203.0.113.99")).collect();
    events.extend(poisoned.iter().cloned());
    let stage = env.start_stage("audit-rules", "r1");
    produce_enriched(&env, &events, |e| e.user_id.clone().unwrap_or_default());

    let got = wait_for_matches(&env, 15, Duration::from_secs(90), &[&stage]);
    assert_failed_login_matches(&got, &events[..12], &env);
    assert!(got.iter().all(|m| m.group_key.get("user_id").map(String::as_str) != Some("poisoned")), "nothing of the refused events");
    let dlq = read_topic(&env.dlq, 3, Duration::from_secs(2));
    assert_eq!(dlq.len(), poisoned.len(), "each refused event is a dead letter: {}", stage.log());
    for d in &dlq {
        assert_eq!(d.headers.get("dlq.stage").map(String::as_str), Some("rules"));
        assert_eq!(d.headers.get("dlq.error.kind").map(String::as_str), Some("refused_by_store"));
        assert!(d.headers.get("dlq.error.message").is_some_and(|m| m.contains("WRONGTYPE")), "{:?}", d.headers);
    }
    let ids: BTreeSet<String> = dlq.iter().map(|d| decode_enriched(&d.payload).expect("the event itself").id).collect();
    assert_eq!(ids, poisoned.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>());
    // rows + dead letters = input: every event consumed, and the stage healthy.
    let (status, _) = http_get(&http_addr(&stage), "/healthz");
    assert_eq!(status, 200, "{}", stage.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_the_beginning_does_not_count_twice() {
    let (env, prefix) = rules_env("rules_replay", 3, &redis_url(), &default_rules()).await;
    let events = twelve_failed_logins(&env.id);
    let mut first = env.start_stage("audit-rules", "r1");
    produce_enriched(&env, &events, |e| e.user_id.clone().unwrap_or_default());
    let got = wait_for_matches(&env, 15, Duration::from_secs(90), &[&first]);
    assert_eq!(got.len(), 15);
    assert!(first.terminate().success());

    // A new consumer group reads the same topic from the start: every event is processed again.
    let group = format!("{}-replay", env.id);
    let replay = env.start_stage_with("audit-rules", "r2", &[("AUDITFLOW_GROUP_ID", group.as_str())]);
    let all = wait_for_matches(&env, 30, Duration::from_secs(90), &[&replay]);

    let window = RedisKeys { prefix: &prefix }.window("failed-logins-per-user", "user_id=victim", "ev");
    assert_eq!(zcard(&redis_url(), &window), 12, "the window still holds 12 events, not 24");
    let ip_window = RedisKeys { prefix: &prefix }.window("failed-logins-per-ip", "ip_address=198.51.100.7", "ev");
    assert_eq!(zcard(&redis_url(), &ip_window), 12);
    // The replay re-emits the very same matches (same ids, same figures), and no new crossing.
    assert_eq!(all.len(), 30);
    let mut copies: BTreeMap<String, Vec<RuleMatch>> = BTreeMap::new();
    for m in &all {
        copies.entry(m.match_id.clone()).or_default().push(m.clone());
    }
    assert_eq!(copies.len(), 15);
    for (id, ms) in &copies {
        assert_eq!(ms.len(), 2, "{id}: once from the first run, once from the replay");
        assert_eq!(ms[0], ms[1], "{id}: the replay is identical");
    }
    let once: Vec<RuleMatch> = copies.into_values().map(|mut v| v.remove(0)).collect();
    assert_failed_login_matches(&once, &events, &env);
    drop(replay);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_decide_one_crossing_once() {
    let (env, _prefix) = rules_env("rules_two", 4, &redis_url(), &default_rules()).await;
    let r1 = env.start_stage("audit-rules", "r1");
    wait_for_log(&r1, "partitions assigned");
    let r2 = env.start_stage("audit-rules", "r2");
    wait_for_log(&r2, "partitions assigned");
    // let the group settle: each instance owns two of the four partitions
    std::thread::sleep(Duration::from_secs(4));

    // 40 failed logins from one address, 40 different users: keyed by user, so they land on
    // every partition, i.e. on both instances, at once.
    let t0 = Utc::now().timestamp_millis() - 20_000;
    let events: Vec<EnrichedEvent> = (0..40)
        .map(|i| failed_login(&format!("{}-e{i:02}", env.id), t0 + i * 200, &format!("user{i}"), "203.0.113.99"))
        .collect();
    produce_enriched(&env, &events, |e| e.user_id.clone().unwrap_or_default());
    // 40 pattern matches + per-IP threshold + suspicious activity + password spraying
    let got = wait_for_matches(&env, 43, Duration::from_secs(90), &[&r1, &r2]);
    assert_eq!(count_rule(&got, "failed-login-attempts"), 40);
    assert_eq!(count_rule(&got, "failed-logins-per-ip"), 1, "one crossing, decided once across instances");
    assert_eq!(count_rule(&got, "suspicious-activity"), 1);
    assert_eq!(count_rule(&got, "password-spraying"), 1);
    assert_eq!(got.len(), 43);
    let ids: BTreeSet<&str> = got.iter().map(|m| m.match_id.as_str()).collect();
    assert_eq!(ids.len(), 43);
    let per_ip = got.iter().find(|m| m.rule_id == "failed-logins-per-ip").expect("per-ip match");
    assert_eq!(per_ip.window.as_ref().map(|w| (w.observed, w.limit)), Some((10, 10)));
    assert_eq!(read_topic(&actions_topic(&env), 3, Duration::from_secs(2)).len(), 1, "one block decision");

    // Both instances did part of the work.
    for s in [&r1, &r2] {
        let (_, metrics) = http_get(&http_addr(s), "/metrics");
        let consumed: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("auditflow_consumed_total{stage=\"rules\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(consumed > 0 && consumed < 40, "each instance consumed part of the stream: {consumed}");
    }
}

/// A private redis-server: append-only file fsynced at every write, so a kill -9 loses nothing
/// (as a production Redis with persistence would), on a port of its own.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let mut r = PrivateRedis { child: None, port, dir: tempfile::tempdir().expect("tempdir") };
        r.spawn();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server installed (scripts/stack up installs it)");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(20), "private redis-server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_mid_stream_changes_nothing() {
    let mut redis = PrivateRedis::start();
    let (env, prefix) = rules_env("rules_outage", 3, &redis.url(), &default_rules()).await;
    let events = twelve_failed_logins(&env.id);
    let stage = env.start_stage("audit-rules", "r1");
    produce_enriched(&env, &events[..6], |e| e.user_id.clone().unwrap_or_default());
    let before = wait_for_matches(&env, 6, Duration::from_secs(60), &[&stage]);
    assert_eq!(before.len(), 6, "six pattern matches before the outage");

    redis.kill();
    let down = Instant::now();
    produce_enriched(&env, &events[6..], |e| e.user_id.clone().unwrap_or_default());
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(read_matches(&env, Duration::from_secs(4)).len(), 6, "nothing is committed while Redis is down");
    assert!(stage.log().contains("batch failed; retrying"), "the stage retried the batch:\n{}", stage.log());
    redis.spawn();
    eprintln!("redis was down for {:?}", down.elapsed());

    let got = wait_for_matches(&env, 15, Duration::from_secs(60), &[&stage]);
    assert_failed_login_matches(&got, &events, &env);
    let window = RedisKeys { prefix: &prefix }.window("failed-logins-per-user", "user_id=victim", "ev");
    assert_eq!(zcard(&redis.url(), &window), 12);
}

fn wait_for_log(stage: &StageProcess, needle: &str) {
    let start = Instant::now();
    while !stage.log().contains(needle) {
        assert!(start.elapsed() < Duration::from_secs(60), "no {needle:?} in {}:\n{}", stage.log_path.display(), stage.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to stage http");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).ok();
    let status = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body)
}

fn http_addr(stage: &StageProcess) -> String {
    let log = stage.log();
    let i = log.find("addr=").expect("stage logged its http address");
    let rest = &log[i + 5..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].trim_matches('"').to_string()
}

// ------------------------------------------------------- Redis scripts vs the in-memory store

const DIFF_RULES: &str = r#"rules:
  - id: th
    name: Threshold
    severity: HIGH
    action: ALERT
    match: { success: false }
    threshold: { count: 4, window: 10s, group_by: [user_id], lateness: 5s }
  - id: dc
    name: Distinct
    severity: HIGH
    action: ALERT
    match: { success: false }
    distinct: { field: user_id, more_than: 2, window: 10s, group_by: [ip_address] }
  - id: sq
    name: Sequence
    severity: HIGH
    action: ALERT
    sequence:
      within: 8s
      group_by: [user_id]
      steps:
        - action: { regex: "^grant_role$" }
        - action: { regex: "^data_export$" }
        - action: { regex: "^delete_user$" }
  - id: tp
    name: Temporal
    severity: HIGH
    action: ALERT
    sequence:
      within: 6s
      ordered: false
      at_least: 2
      group_by: [user_id]
      steps:
        - action: { regex: "^grant_role$" }
        - action: { regex: "^data_export$" }
        - action: { regex: "^delete_user$" }
  - id: ag
    name: Aggregate
    severity: MEDIUM
    action: ALERT
    match: { success: true }
    aggregate: { period: 5s, group_by: [user_id], count: { gte: 1, lte: 2 }, lateness: 2s }
  - id: ad
    name: Aggregate of distinct values
    severity: MEDIUM
    action: ALERT
    aggregate: { period: 8s, group_by: [user_id], distinct: ip_address, count: { eq: 2 }, lateness: 2s }
  - id: tv
    name: Travel
    severity: HIGH
    action: ALERT
    match: { success: true }
    travel: { max_speed_kmh: 900, within: 1h, min_distance_km: 100, group_by: [user_id] }
  - id: fs
    name: First seen
    severity: MEDIUM
    action: ALERT
    first_seen: { field: country_code, group_by: [user_id], learning: 20s, forget_after: 1h }
  - id: ch
    name: Chained
    severity: CRITICAL
    action: ALERT
    match: { fired: th }
    threshold: { count: 2, window: 20s, group_by: [ip_address] }
"#;

/// Places the random streams log in from: (address, city, country, latitude, longitude).
const PLACES: [(&str, &str, &str, f64, f64); 5] = [
    ("128.59.1.1", "New York", "US", 40.8123, -73.9682),
    ("144.82.1.1", "London", "GB", 51.5415, -0.1445),
    ("141.2.1.1", "Frankfurt am Main", "DE", 50.1143, 8.6641),
    ("133.11.1.1", "Tokyo", "JP", 35.6837, 139.6805),
    ("134.157.1.1", "Paris", "FR", 48.8558, 2.3494),
];

/// Random streams with out-of-order events and replays give the same matches through the Redis
/// scripts as through the in-memory store.
#[test]
fn redis_scripts_agree_with_the_memory_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("r.yaml"), DIFF_RULES).expect("write rules");
    let bounded = RulesEngine::load_dir(dir.path()).expect("rules compile");
    // Odd seeds keep one event per sequence step, so the cap is hit all the time.
    let one_kept = bounded.clone().with_limits(WindowLimits { sequence_keep: 1, ..WindowLimits::default() });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut total_fired = 0;
    let mut seen: BTreeMap<(String, &str), usize> = BTreeMap::new();
    for seed in 1..=12u64 {
        let prefix = format!("test:diff:{}:{seed}:", uuid::Uuid::new_v4().simple());
        let mut redis = rt
            .block_on(RedisWindowStore::connect(&redis_url(), &prefix, Duration::from_secs(5)))
            .expect("redis reachable: run scripts/stack up");
        let mut memory = MemoryStore::new();
        let engine = if seed % 2 == 1 { &one_kept } else { &bounded };
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let t0 = 1_700_000_000_000i64;
        let mut clock = t0;
        let mut events: Vec<EnrichedEvent> = Vec::new();
        for i in 0..300 {
            clock += rng.below(1500) as i64;
            // a tenth arrive late, by up to 12 s (some beyond the allowed lateness)
            let t = if rng.below(10) == 0 { clock - rng.below(12_000) as i64 } else { clock };
            let user = format!("u{}", rng.below(3));
            // Mostly one home address per user, sometimes a trip.
            let place = &PLACES[if rng.below(6) == 0 { rng.below(5) } else { u64::from(user.as_bytes()[1]) % 5 } as usize];
            let mut e = failed_login(&format!("s{seed}-e{i}"), t, &user, place.0);
            e.ip = Some(auditflow::enrich::ip_facts(place.0.parse().expect("address")));
            e.location = Some(auditflow::event::Location {
                country_code: Some(place.2.into()),
                city: Some(place.1.into()),
                latitude: Some(place.3),
                longitude: Some(place.4),
                ..Default::default()
            });
            e.action = ["login", "login", "grant_role", "data_export", "delete_user"][rng.below(5) as usize].into();
            e.success = rng.below(3) != 0 && e.action != "login";
            // some claim to be from an hour after they were received
            if rng.below(20) == 0 {
                e.enriched_at = Utc.timestamp_millis_opt(t - 3_600_000).single().expect("time");
            }
            events.push(e);
            // replays: an earlier event again
            if rng.below(8) == 0 {
                let j = rng.below(events.len() as u64) as usize;
                events.push(events[j].clone());
            }
        }
        let mut i = 0;
        while i < events.len() {
            let n = 1 + rng.below(25) as usize;
            let batch = &events[i..(i + n).min(events.len())];
            let a = engine.evaluate(batch, &mut memory, true).expect("memory");
            let b = engine.evaluate(batch, &mut redis, true).expect("redis");
            // The clock the periods close on follows the stream.
            let now = Utc.timestamp_millis_opt(clock).single().expect("time");
            let (ca, cb) = (engine.check_clock(now, &mut memory).expect("memory"), engine.check_clock(now, &mut redis).expect("redis"));
            assert_eq!(ca, cb, "seed {seed}: periods closed at {now}");
            for m in &ca {
                *seen.entry((m.rule_id.clone(), "closed")).or_default() += 1;
            }
            for (x, (ra, rb)) in batch.iter().zip(a.iter().zip(b.iter())) {
                assert_eq!(ra.trace, rb.trace, "seed {seed}, event {} at {}", x.id, x.timestamp);
                assert_eq!(ra.matches, rb.matches, "seed {seed}, event {}", x.id);
                total_fired += ra.matches.len();
                for t in &ra.trace {
                    if let TraceOutcome::Window { outcome, .. } = &t.outcome {
                        let what = match outcome {
                            WindowOutcome::Fired { replayed: true, .. } => "replayed",
                            WindowOutcome::Fired { .. } => "fired",
                            WindowOutcome::Suppressed { .. } => "suppressed",
                            WindowOutcome::TooLate => "late",
                            _ => "counted",
                        };
                        *seen.entry((t.rule_id.to_string(), what)).or_default() += 1;
                    }
                }
            }
            i += n;
        }
        drop(redis);
    }
    assert!(total_fired > 50, "the streams exercise firings: {total_fired}");
    for (rule, what) in [
        ("th", "fired"),
        ("th", "replayed"),
        ("th", "suppressed"),
        ("th", "late"),
        ("dc", "fired"),
        ("dc", "suppressed"),
        ("sq", "fired"),
        ("sq", "replayed"),
        ("tp", "fired"),
        ("tp", "replayed"),
        ("tv", "fired"),
        ("tv", "replayed"),
        ("fs", "fired"),
        ("ch", "fired"),
        ("ag", "closed"),
        ("ad", "closed"),
    ] {
        assert!(seen.contains_key(&(rule.to_string(), what)), "no {rule}/{what} outcome in {seen:?}");
    }
}

const RULE_A: &str = "rules:\n  - id: rule-a\n    name: A\n    severity: LOW\n    action: LOG\n    match: { success: false }\n";
const RULE_B: &str = "rules:\n  - id: rule-b\n    name: B\n    severity: LOW\n    action: LOG\n    match: { text: { contains: login } }\n";

#[tokio::test(flavor = "multi_thread")]
async fn rules_reload_while_running_and_a_broken_set_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), RULE_A).expect("write");
    let (mut env, _prefix) = rules_env("rules_reload", 1, &redis_url(), dir.path()).await;
    env.extra_env.push(("AUDITFLOW_RULES_RELOAD_SECS".into(), "1".into()));
    let stage = env.start_stage("audit-rules", "r1");
    wait_for_log(&stage, "stage running");
    let t0 = Utc::now().timestamp_millis();
    let send = |i: i64| produce_enriched(&env, &[failed_login(&format!("{}-{i}", env.id), t0 + i, "u", "192.0.2.1")], |_| "u".into());

    send(1);
    let got = wait_for_matches(&env, 1, Duration::from_secs(60), &[&stage]);
    assert_eq!(got.iter().map(|m| m.rule_id.as_str()).collect::<Vec<_>>(), vec!["rule-a"]);

    // A broken file: refused, logged with its line, rule-a stays in force.
    std::fs::write(dir.path().join("b.yaml"), "rules:\n  - id: rule-b\n    name: B\n    severity: LOW\n    action: LOG\n    match: { ip_cidr: 192.0.2.0/33 }\n").expect("write");
    wait_for_log(&stage, "new rule set refused");
    assert!(stage.log().contains("b.yaml:6"), "the error names the file and line:\n{}", stage.log());
    send(2);
    let got = wait_for_matches(&env, 2, Duration::from_secs(60), &[&stage]);
    assert_eq!(count_rule(&got, "rule-a"), 2);

    // Fixed: both rules apply to the next event, without a restart.
    std::fs::write(dir.path().join("b.yaml"), RULE_B).expect("write");
    wait_for_log(&stage, "rules reloaded");
    send(3);
    let got = wait_for_matches(&env, 4, Duration::from_secs(60), &[&stage]);
    assert_eq!((count_rule(&got, "rule-a"), count_rule(&got, "rule-b")), (3, 1));

    // A Sigma file the stage cannot serve (a Windows logsource): refused with the file, the
    // rule and the reason; the rules in force stay.
    let refusals = || stage.log().matches("new rule set refused").count();
    std::fs::write(
        dir.path().join("c.yml"),
        "title: Windows logons\nid: 9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\nlogsource: {product: windows, service: security}\ndetection:\n  s: {EventID: 4625}\n  condition: s\n",
    )
    .expect("write");
    let start = Instant::now();
    while refusals() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "the Sigma file was not refused:\n{}", stage.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stage.log();
    assert!(log.contains("c.yml") && log.contains("Windows logons") && log.contains("not one auditflow serves"), "{log}");
    send(4);
    let got = wait_for_matches(&env, 6, Duration::from_secs(60), &[&stage]);
    assert_eq!((count_rule(&got, "rule-a"), count_rule(&got, "rule-b")), (4, 2));
    // Fixed as a Sigma rule on auditflow's events, it applies from the next event.
    std::fs::write(
        dir.path().join("c.yml"),
        "title: Failed logins\nid: 9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\nname: sigma-c\nlogsource: {product: auditflow}\ndetection:\n  s: {action: login, success: false}\n  condition: s\nlevel: low\n",
    )
    .expect("write");
    let start = Instant::now();
    while stage.log().matches("rules reloaded").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "the fixed Sigma file was not loaded:\n{}", stage.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    send(5);
    let got = wait_for_matches(&env, 9, Duration::from_secs(60), &[&stage]);
    assert_eq!(count_rule(&got, "sigma-c"), 1);

    // SIGHUP reloads at once too.
    let pid = stage.pid().expect("stage running").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    wait_for_log(&stage, "SIGHUP: reloading rules");
    let reloads = || stage.log().matches("rules reloaded").count();
    let start = Instant::now();
    while reloads() < 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "no reload after SIGHUP:\n{}", stage.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------ Sigma correlations end to end

/// One Sigma rule set with a correlation of each type, and one correlation of a correlation.
const SIGMA_CORRELATIONS: &str = r#"title: Failed login
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f601
name: failed
logsource: {product: auditflow, category: audit}
detection:
  s: {action: login, success: false}
  condition: s
level: medium
---
title: Successful login
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f602
name: succeeded
logsource: {product: auditflow, category: audit}
detection:
  s: {action: login, success: true}
  condition: s
level: low
---
title: Data export
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f603
name: exported
logsource: {product: auditflow, category: audit}
detection:
  s: {action: data_export}
  condition: s
level: medium
---
title: Three failures
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f611
name: c-count
correlation: {type: event_count, rules: [failed], group-by: [user.name], timespan: 1m, condition: {gte: 3}}
level: high
---
title: At most two failures in a period
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f612
name: c-low
correlation: {type: event_count, rules: [failed], group-by: [user.name], timespan: 5s, condition: {lte: 2}}
level: low
auditflow: {lateness: 2s}
---
title: Three users from one address
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f613
name: c-users
correlation: {type: value_count, rules: [failed], group-by: [src_ip], timespan: 1m, condition: {field: user.name, gte: 3}}
level: high
---
title: A failure and an export, in any order
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f614
name: c-any
correlation: {type: temporal, rules: [exported, failed], group-by: [user.name], timespan: 1m}
level: high
---
title: A failure, then a success
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f615
name: c-order
correlation: {type: temporal_ordered, rules: [failed, succeeded], group-by: [user.name], timespan: 1m}
level: high
---
title: Three failures, then a success
id: 7d1f2c3a-5b6e-4f70-8a91-b2c3d4e5f616
name: c-chain
correlation: {type: temporal_ordered, rules: [c-count, succeeded], group-by: [user.name], timespan: 2m, generate: true}
level: critical
"#;

/// A stream for the correlations above: users a, b, c with failures, a success and exports,
/// spread over three addresses; ordered by time.
fn correlation_stream(tag: &str) -> Vec<EnrichedEvent> {
    let t0 = Utc::now().timestamp_millis() - 40_000;
    // (user, address, action, success, ms after t0)
    let plan: [(&str, &str, &str, bool, i64); 12] = [
        ("alice", "198.51.100.1", "login", false, 0),
        ("bob", "198.51.100.1", "data_export", true, 500),
        ("alice", "198.51.100.1", "login", false, 1_000),
        ("carol", "198.51.100.1", "login", false, 1_500),
        ("alice", "198.51.100.2", "login", false, 2_000),
        ("bob", "198.51.100.1", "login", false, 2_500),
        ("alice", "198.51.100.2", "login", true, 3_000),
        ("carol", "198.51.100.3", "data_export", true, 12_000),
        ("dave", "198.51.100.3", "login", false, 13_000),
        ("dave", "198.51.100.3", "login", true, 14_000),
        ("erin", "198.51.100.3", "login", false, 21_000),
        ("erin", "198.51.100.3", "login", false, 21_500),
    ];
    plan.iter()
        .enumerate()
        .map(|(i, (user, ip, action, success, dt))| {
            let mut e = failed_login(&format!("{tag}-c{i:02}"), t0 + dt, user, ip);
            e.action = (*action).into();
            e.success = *success;
            e
        })
        .collect()
}

/// The matches the in-memory engine makes of `events` (periods closed an hour later).
fn expected_with(rules: &std::path::Path, events: &[EnrichedEvent]) -> Vec<RuleMatch> {
    let engine = RulesEngine::load_dir(rules).expect("rules compile");
    let mut store = MemoryStore::new();
    let mut out: Vec<RuleMatch> = engine.evaluate(events, &mut store, false).expect("memory").into_iter().flat_map(|r| r.matches).collect();
    out.extend(engine.check_clock(Utc::now() + chrono::Duration::hours(1), &mut store).expect("clock"));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sigma_correlation_type_fires_exactly_once_replayed_and_across_two_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("correlations.yml"), SIGMA_CORRELATIONS).expect("write rules");
    let (mut env, _prefix) = rules_env("sigma_corr", 4, &redis_url(), dir.path()).await;
    // Ended periods are looked for every second.
    env.extra_env.push(("AUDITFLOW_RULES_ABSENCE_CHECK_SECS".into(), "1".into()));
    let events = correlation_stream(&env.id);
    let want = expected_with(dir.path(), &events);
    let per_rule = |ms: &[RuleMatch]| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for x in ms {
            *m.entry(x.rule_id.clone()).or_default() += 1;
        }
        m
    };
    // Every type fires, as the stream was written for.
    let counts = per_rule(&want);
    for (rule, n) in [("c-count", 1), ("c-users", 1), ("c-any", 2), ("c-order", 2), ("c-chain", 1)] {
        assert_eq!(counts.get(rule), Some(&n), "{rule} in the reference: {counts:?}");
    }
    assert!(counts.get("c-low").is_some_and(|n| *n >= 3), "periods with one or two failures: {counts:?}");

    // Two instances share the four partitions; events keyed by user land on both.
    let r1 = env.start_stage("audit-rules", "r1");
    wait_for_log(&r1, "partitions assigned");
    let r2 = env.start_stage("audit-rules", "r2");
    wait_for_log(&r2, "partitions assigned");
    std::thread::sleep(Duration::from_secs(4));
    produce_enriched(&env, &events, |e| e.user_id.clone().unwrap_or_default());
    let got = wait_for_matches(&env, want.len(), Duration::from_secs(90), &[&r1, &r2]);
    assert_eq!(got.len(), want.len(), "{:?}", per_rule(&got));
    // Groups within one user stay in one partition, in order: the very same matches. The
    // address group spans users, i.e. partitions and instances, so which event crosses the
    // limit depends on arrival; the crossing itself is decided once.
    let (cross, within): (Vec<RuleMatch>, Vec<RuleMatch>) = got.iter().cloned().partition(|m| m.rule_id == "c-users");
    let want_within: Vec<RuleMatch> = want.iter().filter(|m| m.rule_id != "c-users").cloned().collect();
    assert_eq!(by_id(&within), by_id(&want_within), "the stage's matches are the reference's, each once");
    assert_eq!(cross.len(), 1);
    assert_eq!(cross[0].group_key.get("ip_address").map(String::as_str), Some("198.51.100.1"));
    assert_eq!(cross[0].window.as_ref().map(|w| (w.observed, w.limit)), Some((3, 3)));
    let chain = got.iter().find(|m| m.rule_id == "c-chain").expect("the chained correlation");
    assert_eq!(chain.group_key.get("user.name").map(String::as_str), None, "group keys use auditflow's names");
    assert_eq!(chain.group_key.get("user_id").map(String::as_str), Some("alice"));
    drop((r1, r2));

    // Replayed from the start by a new group: the same matches again, nothing new (an ended
    // period takes no more events, so it is not reported twice).
    let group = format!("{}-replay", env.id);
    let replay = env.start_stage_with("audit-rules", "r3", &[("AUDITFLOW_GROUP_ID", group.as_str())]);
    let event_matches = want.iter().filter(|m| m.rule_id != "c-low").count();
    let all = wait_for_matches(&env, want.len() + event_matches, Duration::from_secs(90), &[&replay]);
    assert_eq!(all.len(), want.len() + event_matches, "{:?}", per_rule(&all));
    let ids: BTreeSet<&str> = all.iter().map(|m| m.match_id.as_str()).collect();
    assert_eq!(ids.len(), want.len(), "the replay re-emits the same match ids");
    let first = by_id(&got);
    for m in &all {
        assert_eq!(Some(m), first.get(&m.match_id), "{}: identical", m.match_id);
    }
}
