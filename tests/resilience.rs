//! No valid input and no fault may halt a stage or break the ledger: records the outputs
//! refuse, events far from now, large events, several persist instances on new chains, a
//! wrong master key, a stage that cannot commit, a broker frozen across commits. Real Kafka and PostgreSQL; counts reconcile
//! exactly (rows + dead letters = input).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::sync::Mutex;

/// Tests here pause or saturate shared services: one at a time.
static STACK: Mutex<()> = Mutex::const_new(());

fn event(id: &str, at: chrono::DateTime<chrono::Utc>, user: &str, metadata: serde_json::Value) -> (Option<String>, Vec<u8>) {
    let e = json!({
        "id": id,
        "timestamp": at.to_rfc3339(),
        "userId": user,
        "action": "login",
        "resource": "authentication",
        "ipAddress": "192.0.2.10",
        "success": true,
        "metadata": metadata,
    });
    (Some(user.to_string()), serde_json::to_vec(&e).expect("json"))
}

fn normal_events(n: usize, prefix: &str) -> Vec<(Option<String>, Vec<u8>)> {
    let now = chrono::Utc::now();
    (0..n).map(|i| event(&format!("{prefix}-{i}"), now, &format!("user-{}", i % 37), json!({"n": i}))).collect()
}

fn dead_letter_kinds(env: &TestEnv) -> Vec<String> {
    let mut kinds: Vec<String> = read_topic(&env.dlq, 3, Duration::from_secs(2))
        .iter()
        .map(|r| r.headers.get("dlq.error.kind").cloned().unwrap_or_default())
        .collect();
    kinds.sort();
    kinds
}

/// The dead letters' kinds, once the first ones have arrived (or after 30 s).
fn wait_for_dead_letters(env: &TestEnv) -> Vec<String> {
    let start = Instant::now();
    loop {
        let kinds = dead_letter_kinds(env);
        if !kinds.is_empty() || start.elapsed() > Duration::from_secs(30) {
            return kinds;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_two_hours_ahead_and_a_one_megabyte_event_flow_with_the_rest() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("poison_valid", 3).await;
    let mut records = normal_events(2_000, "n");
    let ahead = chrono::Utc::now() + chrono::Duration::hours(2);
    records.insert(700, event("future", ahead, "user-future", json!({})));
    // Just under the raw limit (1 MiB) once wrapped in the event's JSON.
    let big = "x".repeat(1_000_000);
    records.insert(1_300, event("big", chrono::Utc::now(), "user-big", json!({ "blob": big })));
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    env.produce_raw(&records);
    env.wait_for_rows(2_002, Duration::from_secs(120)).await;
    assert!(dead_letter_kinds(&env).is_empty(), "valid events are rows, not dead letters");
    // Output records carry produce time: the broker never sees the event's own time.
    let enriched = read_topic(&env.enriched, 3, Duration::from_secs(2));
    assert_eq!(enriched.len(), 2_002);
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_the_broker_refuses_is_dead_lettered_and_the_rest_flow() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("refused_out", 3).await;
    // The topic was made (or later changed) smaller than the configuration says: the broker,
    // not librdkafka, refuses the large record, together with the rest of its message set.
    let status = std::process::Command::new(repo_root().join("scripts/stack"))
        .args([
            "kafka-run",
            "kafka.admin.ConfigCommand",
            "--bootstrap-server",
            &brokers(),
            "--alter",
            "--entity-type",
            "topics",
            "--entity-name",
            &env.enriched,
            "--add-config",
            "max.message.bytes=200000",
        ])
        .status()
        .expect("run ConfigCommand");
    assert!(status.success(), "alter topic config");
    let mut records = normal_events(1_000, "n");
    // Incompressible, so that even lz4-compressed it exceeds the topic's limit.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let blob: String = (0..600_000)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.below(62) as usize]))
        .collect();
    records.insert(500, event("big", chrono::Utc::now(), "user-big", json!({ "blob": blob })));
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    env.produce_raw(&records);
    env.wait_for_rows(1_000, Duration::from_secs(120)).await;
    let kinds = wait_for_dead_letters(&env);
    assert_eq!(kinds, ["refused_by_broker"], "exactly the refused event is a dead letter");
    assert_eq!(env.row_count().await + kinds.len() as i64, records.len() as i64, "rows + dead letters = input");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_database_refuses_is_dead_lettered_and_the_rest_are_stored() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("refused_row", 3).await;
    // Stands for any value the store refuses for good (SQLSTATE class 23).
    sqlx::query("ALTER TABLE audit_events ADD CONSTRAINT no_forbidden_resource CHECK (resource <> 'forbidden')")
        .execute(&env.pool)
        .await
        .expect("add constraint");
    let mut records = normal_events(500, "n");
    let bad = json!({"id": "bad", "userId": "u", "action": "read", "resource": "forbidden"});
    records.insert(250, (Some("u".into()), serde_json::to_vec(&bad).expect("json")));
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    env.produce_raw(&records);
    env.wait_for_rows(500, Duration::from_secs(120)).await;
    let kinds = wait_for_dead_letters(&env);
    assert_eq!(kinds, ["refused_by_store"]);
    assert_eq!(env.row_count().await + 1, records.len() as i64, "rows + dead letters = input");
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_persist_instances_backfilling_new_months_keep_every_chain_whole() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("persist_x3", 6).await;
    // A backfill: months with no chain yet, events of one raw partition spread over every
    // enriched partition (keyed by user), so all three instances extend the same new chains.
    let base = chrono::Utc::now() - chrono::Duration::days(120);
    let records: Vec<(Option<String>, Vec<u8>)> = (0..6_000)
        .map(|i| {
            let at = base + chrono::Duration::hours((i % 2_000) as i64);
            event(&format!("b-{i}"), at, &format!("user-{}", i % 101), json!({}))
        })
        .collect();
    let _enrich = env.start_stage("audit-enrich", "e1");
    let persists: Vec<StageProcess> =
        (1..=3).map(|i| env.start_stage_with("audit-persist", &format!("p{i}"), &[("AUDITFLOW_BATCH_MAX_MESSAGES", "200")])).collect();
    // Let all three join before the backfill arrives.
    tokio::time::sleep(Duration::from_secs(8)).await;
    env.produce_raw(&records);
    env.wait_for_rows(6_000, Duration::from_secs(180)).await;
    let forks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT chain_id, chain_seq FROM audit_events GROUP BY 1, 2 HAVING count(*) > 1) f",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count forks");
    assert_eq!(forks, 0, "no two rows share a chain position");
    let chains: i64 = sqlx::query_scalar("SELECT count(DISTINCT chain_id) FROM audit_events").fetch_one(&env.pool).await.expect("chains");
    assert!(chains >= 6, "the backfill spans several chains, got {chains}");
    drop(persists);
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn persist_refuses_to_start_with_another_master_key() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("wrong_key", 3).await;
    let _enrich = env.start_stage("audit-enrich", "e1");
    let mut persist = env.start_stage("audit-persist", "p1");
    env.produce_raw(&normal_events(100, "n"));
    env.wait_for_rows(100, Duration::from_secs(60)).await;
    persist.terminate();

    let other = "0909090909090909090909090909090909090909090909090909090909090909";
    let mut wrong = env.start_stage_with("audit-persist", "p2", &[("AUDITFLOW_MASTER_KEY", other)]);
    let start = Instant::now();
    while wrong.is_running() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!wrong.is_running(), "a persist with the wrong master key must not run");
    assert!(wrong.log().contains("AUDITFLOW_MASTER_KEY is not the key"), "{}", wrong.log());

    // Rows written meanwhile would have lost their personal fields: there are none.
    env.produce_raw(&normal_events(10, "m"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.row_count().await, 100);
    let unsealed: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE personal IS NULL")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(unsealed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_that_cannot_commit_says_so_on_healthz_and_recovers() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("stall", 3).await;
    let _enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage_with("audit-persist", "p1", &[("AUDITFLOW_STALL_TIMEOUT_SECS", "10")]);
    env.produce_raw(&normal_events(50, "a"));
    env.wait_for_rows(50, Duration::from_secs(60)).await;
    let addr = http_addr(&persist);
    assert_eq!(http_get(&addr, "/healthz").0, 200);

    // Hold the chain heads: persist can read its input but not commit it.
    let mut blocker = env.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE ledger_chain_heads IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.expect("lock");
    env.produce_raw(&normal_events(50, "b"));
    let start = Instant::now();
    let mut code = 200;
    while code == 200 && start.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        code = http_get(&addr, "/healthz").0;
    }
    assert_eq!(code, 503, "a stage with input waiting and no commit is not healthy");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metrics.contains("auditflow_stage_stalled{stage=\"persist\"} 1"), "{metrics}");

    blocker.rollback().await.expect("release");
    env.wait_for_rows(100, Duration::from_secs(60)).await;
    // The rows are visible as the transaction commits; the stage records its progress when the
    // write returns, a moment later.
    let start = Instant::now();
    let mut code = http_get(&addr, "/healthz").0;
    while code != 200 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        code = http_get(&addr, "/healthz").0;
    }
    assert_eq!(code, 200, "healthy again once it commits");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_invalid_ratio_guard_dead_letters_its_batch_and_a_restart_moves_on() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("ratio", 3).await;
    let guard = [("AUDITFLOW_MAX_INVALID_RATIO", "0.5"), ("AUDITFLOW_INVALID_RATIO_MIN_BATCH", "10")];
    let junk: Vec<(Option<String>, Vec<u8>)> = (0..200).map(|i| (None, format!("{{not json {i}").into_bytes())).collect();
    env.produce_raw(&junk);
    let mut enrich = env.start_stage_with("audit-enrich", "e1", &guard);
    let start = Instant::now();
    while enrich.is_running() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!enrich.is_running(), "the guard stops the stage");
    let first = read_topic(&env.dlq, 3, Duration::from_secs(2)).len();
    assert!(first > 0, "the batch that tripped the guard is dead-lettered before the stop");

    // After a restart the stage does not fail on the same batch again: it goes on until the
    // junk is gone (tripping on later junk batches), then stores the valid events.
    env.produce_raw(&normal_events(100, "ok"));
    let _persist = env.start_stage("audit-persist", "p1");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut restarts = 0;
    while env.row_count().await < 100 && Instant::now() < deadline {
        let mut e = env.start_stage_with("audit-enrich", &format!("e{}", restarts + 2), &guard);
        let t = Instant::now();
        while e.is_running() && env.row_count().await < 100 && t.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        restarts += 1;
        assert!(restarts <= 200, "every restart must move past at least one batch");
    }
    env.wait_for_rows(100, Duration::from_secs(30)).await;
    assert_eq!(read_topic(&env.dlq, 3, Duration::from_secs(2)).len(), 200, "each junk message dead-lettered once");
}

/// Resumes the broker however the test ends: a frozen broker would hang every later test.
struct Paused;

impl Paused {
    fn kafka() -> Paused {
        stack(&["pause", "kafka"]);
        Paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        stack(&["resume", "kafka"]);
    }
}

/// Restart `stage` whenever its `/healthz` fails, as an orchestrator's liveness probe would,
/// until `done`; returns the number of restarts.
async fn supervise(env: &TestEnv, stage: &mut StageProcess, binary: &str, extra: &[(&str, &str)], done: impl AsyncFn() -> bool) -> usize {
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while !done().await {
        assert!(Instant::now() < deadline, "{binary} did not finish within 240 s ({restarts} restarts)");
        let healthy = stage.is_running() && http_get(&http_addr(stage), "/healthz").0 == 200;
        if !healthy {
            restarts += 1;
            eprintln!("{binary} unhealthy: restarting it ({restarts})");
            stage.kill9();
            *stage = env.start_stage_with(binary, &format!("{binary}-r{restarts}"), extra);
            // Like a probe's initial delay: a stage starting up is not yet asked.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    restarts
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_frozen_across_transaction_commits_costs_nothing() {
    let _g = STACK.lock().await;
    let env = TestEnv::new("broker_pause", 3).await;
    // Short transaction and session timeouts: the pause outlasts both, so the broker resumes
    // with the stages' transactions timed out, their group members expired, and the broker
    // itself fenced for a moment by its controller.
    let fast = [
        ("AUDITFLOW_TRANSACTION_TIMEOUT_MS", "5000"),
        ("AUDITFLOW_BATCH_MAX_MESSAGES", "200"),
        ("AUDITFLOW_STALL_TIMEOUT_SECS", "30"),
    ];
    let mut enrich = env.start_stage_with("audit-enrich", "e1", &fast);
    let mut persist = env.start_stage_with("audit-persist", "p1", &fast);
    let records = normal_events(20_000, "p");
    env.produce_raw(&records);
    // Freeze while batches are flowing: some rows are in, most are not.
    let start = Instant::now();
    while env.row_count().await == 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = env.row_count().await;
    assert!(before > 0 && before < records.len() as i64, "paused mid-stream ({before} rows)");
    {
        let _paused = Paused::kafka();
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    // A stage either carries on by itself or says on /healthz that it cannot, and is restarted.
    let all = records.len() as i64;
    let enriched_all = || async { read_topic(&env.enriched, 3, Duration::from_millis(500)).len() >= records.len() };
    let enrich_restarts = supervise(&env, &mut enrich, "audit-enrich", &fast, enriched_all).await;
    let stored_all = || async { env.row_count().await >= all };
    let persist_restarts = supervise(&env, &mut persist, "audit-persist", &fast, stored_all).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.row_count().await, all, "nothing doubled");
    assert!(dead_letter_kinds(&env).is_empty(), "a frozen broker is a transient fault, not bad input");
    let enriched = read_topic(&env.enriched, 3, Duration::from_secs(2));
    assert_eq!(enriched.len(), records.len(), "committed output once per input");
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "{report}");
    let log = enrich.log();
    eprintln!(
        "rows before the pause: {before}; restarts: enrich {enrich_restarts}, persist {persist_restarts}; \
         enrich: commit retried {}, transaction re-read {}, producer replaced {}",
        log.matches("retrying the commit").count(),
        log.matches("re-reading the batch").count(),
        log.matches("replacing it").count()
    );
}

/// Odd but valid text: astral-plane emoji, combining marks, right-to-left and zero-width
/// characters, quotes and markup, cut to exactly `chars` characters.
fn odd_text(rng: &mut Rng, chars: usize) -> String {
    const PIECES: [&str; 10] = ["a", "😀", "e\u{301}", "\u{202e}", "\u{200b}", "漢", "\"", "<b>", "\\", "ß"];
    let mut s: Vec<char> = Vec::with_capacity(chars);
    while s.len() < chars {
        s.extend(PIECES[rng.below(PIECES.len() as u64) as usize].chars());
    }
    s.truncate(chars);
    s.into_iter().collect()
}

/// One valid event with awkward values, of a kind chosen by `rng`.
fn awkward_event(rng: &mut Rng, i: usize, now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    let oldest = chrono::DateTime::from_timestamp_millis(946_684_800_000).expect("2000-01-01");
    let mut e = json!({
        "id": format!("awk-{i}"),
        "timestamp": now.to_rfc3339(),
        "userId": format!("awk-user-{}", i % 7),
        "action": "login",
        "resource": "authentication",
        "ipAddress": "198.51.100.7",
        "success": false,
    });
    match rng.below(9) {
        // the oldest accepted time, and just after it
        0 => e["timestamp"] = json!((oldest + chrono::Duration::milliseconds(rng.below(1000) as i64)).to_rfc3339()),
        // almost the day ahead enrich allows (with room for the time the stream takes)
        1 => e["timestamp"] = json!((now + chrono::Duration::hours(23) + chrono::Duration::minutes(50)).to_rfc3339()),
        // anywhere in between
        2 => {
            let span = (now - oldest).num_milliseconds() as u64;
            e["timestamp"] = json!((oldest + chrono::Duration::milliseconds(rng.below(span) as i64)).to_rfc3339());
        }
        // identifiers of the longest accepted length, in odd Unicode (long group keys)
        3 => {
            e["id"] = json!(format!("awk-{i}-{}", "i".repeat(100)));
            e["userId"] = json!(odd_text(rng, 256));
            e["resource"] = json!(odd_text(rng, 256));
            e["sessionId"] = json!(odd_text(rng, 256));
        }
        // every free-text field at its limit
        4 => {
            e["endpoint"] = json!(format!("/{}", odd_text(rng, 2047)));
            e["userAgent"] = json!(odd_text(rng, 1024));
            e["errorMessage"] = json!(odd_text(rng, 8192));
            e["method"] = json!("M".repeat(32));
        }
        // metadata nested to the deepest accepted level, with odd keys
        5 => {
            let mut m = json!({ odd_text(rng, 20): odd_text(rng, 50) });
            for _ in 0..7 {
                m = json!({ odd_text(rng, 5): m });
            }
            e["metadata"] = m;
        }
        // extreme numbers
        6 => {
            e["statusCode"] = json!(599);
            e["durationMs"] = json!(i64::MAX);
            e["metadata"] = json!({ "big": u64::MAX, "neg": i64::MIN, "float": 1.0e308 });
        }
        // IPv6, mapped IPv4, and addresses of every kind
        7 => {
            let ips = ["::ffff:192.0.2.1", "2001:db8::1", "fe80::1", "0.0.0.0", "255.255.255.255", "::", "100.64.0.1"];
            e["ipAddress"] = json!(ips[rng.below(ips.len() as u64) as usize]);
        }
        // a payload just under the raw size limit (1 MiB)
        _ => e["metadata"] = json!({ "blob": "y".repeat(1_048_576 - 2_000) }),
    }
    e
}

/// Valid events with awkward values interleaved with normal ones, through enrich → persist and
/// enrich → rules: every event ends as a row or a dead letter, every normal event is stored,
/// and the rules stage keeps up.
#[tokio::test(flavor = "multi_thread")]
async fn awkward_valid_events_never_hold_up_the_normal_ones() {
    let _g = STACK.lock().await;
    let mut env = TestEnv::new("awkward", 3).await;
    let redis = std::env::var("AUDITFLOW_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    env.extra_env.push(("AUDITFLOW_REDIS_URL".into(), redis));
    env.extra_env.push(("AUDITFLOW_REDIS_PREFIX".into(), format!("test:{}:", env.id)));
    env.extra_env.push(("AUDITFLOW_RULES_DIR".into(), repo_root().join("rules").display().to_string()));
    let seed = std::env::var("AUDITFLOW_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 | 1).unwrap_or(7)
    });
    eprintln!("stream seed {seed} (AUDITFLOW_TEST_SEED={seed} reproduces it)");
    let mut rng = Rng(seed);
    let now = chrono::Utc::now();
    let mut records = Vec::new();
    let mut normal_ids = Vec::new();
    let mut big = 0;
    for i in 0..1_500 {
        if rng.below(3) == 0 {
            let mut e = awkward_event(&mut rng, i, now);
            // at most four events of a megabyte: they are about limits, not volume
            if e["metadata"]["blob"].is_string() {
                big += 1;
                if big > 4 {
                    e["metadata"] = json!({});
                }
            }
            records.push((Some(format!("k{}", rng.below(50))), serde_json::to_vec(&e).expect("json")));
        } else {
            let id = format!("norm-{i}");
            records.push(event(&id, now, &format!("user-{}", i % 37), json!({ "n": i })));
            normal_ids.push(id);
        }
    }
    // One user with a 256-character odd name fails to log in twelve times in a minute: the
    // per-user threshold fires with that long group key.
    let long_user = odd_text(&mut rng, 256);
    for j in 0..12 {
        let e = json!({
            "id": format!("long-user-{j}"), "timestamp": (now + chrono::Duration::seconds(j)).to_rfc3339(),
            "userId": long_user, "action": "login", "resource": "authentication", "success": false,
        });
        records.push((Some("long".into()), serde_json::to_vec(&e).expect("json")));
    }

    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    let mut rules = env.start_stage("audit-rules", "r1");
    let started = Instant::now();
    env.produce_raw(&records);

    // The bound for the normal events: generous for this machine, and far below "for ever".
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored = env.persisted_ids().await;
        let missing = normal_ids.iter().filter(|id| !stored.contains(id)).count();
        let dead = read_topic(&env.dlq, 3, Duration::from_millis(500))
            .iter()
            .filter(|r| r.headers.get("dlq.stage").is_some_and(|s| s == "enrich" || s == "persist"))
            .count();
        if missing == 0 && stored.len() + dead == records.len() {
            eprintln!("{} rows, {dead} dead letters, all in after {:?}", stored.len(), started.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 180 s: {missing} normal events missing; {} rows + {dead} dead letters of {} (seed {seed})",
            stored.len(),
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A valid event may be refused by what it is written to, never silently lost: whatever was
    // dead-lettered says why.
    for r in read_topic(&env.dlq, 3, Duration::from_secs(1)) {
        let kind = r.headers.get("dlq.error.kind").cloned().unwrap_or_default();
        assert!(!kind.is_empty(), "a dead letter without its reason: {:?}", r.headers);
        eprintln!("dead letter from {:?}: {kind}", r.headers.get("dlq.stage"));
    }

    // The rules stage went through the same stream: the long-named user's threshold fired.
    let matches_topic = format!("{}.audit-rule-matches", env.id);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found = read_topic(&matches_topic, 3, Duration::from_secs(1)).iter().any(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).is_ok_and(|m| {
                m["ruleId"] == "failed-logins-per-user" && m["groupKey"]["user_id"] == long_user.as_str()
            })
        });
        if found {
            break;
        }
        assert!(rules.is_running(), "audit-rules stopped: {}", rules.log());
        assert!(Instant::now() < deadline, "no threshold match for the long user name (seed {seed})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "{report}");
}
