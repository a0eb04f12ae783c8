//! Operator commands on the real stack: dead letters listed, shown and replayed after a fix
//! (never twice), lag per stage, and moving a stopped stage back in time without duplicates.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn auditflow(env: &TestEnv, extra: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(args)
        .envs(env.env_vars())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .output()
        .expect("run auditflow")
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn deep_metadata_event(i: usize) -> Vec<u8> {
    let mut v = serde_json::json!({"leaf": i});
    for _ in 0..12 {
        v = serde_json::json!({ "n": v });
    }
    serde_json::to_vec(&serde_json::json!({
        "id": format!("deep-{i}"), "action": "export", "resource": "reports", "userId": format!("u{i}"), "metadata": v
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_shown_and_replayed_once_after_a_fix() {
    let env = TestEnv::new("dlqops", 2).await;
    let good = sample_events(200, 21);
    let mut records: Vec<(Option<String>, Vec<u8>)> =
        good.iter().map(|e| (e.user_id.clone(), serde_json::to_vec(e).expect("json"))).collect();
    for i in 0..5 {
        records.push((Some(format!("u{i}")), deep_metadata_event(i)));
    }
    records.push((None, b"{broken".to_vec()));
    let mut enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage("audit-persist", "p1");
    env.produce_raw(&records);
    env.wait_for_rows(200, Duration::from_secs(120)).await;
    // Give the last batch's dead letters time to be committed with it.
    assert_eq!(read_topic(&env.dlq, 3, Duration::from_secs(2)).len(), 6);

    let list = stdout(&auditflow(&env, &[], &["dlq", "list"]));
    assert_eq!(list.matches("metadata_too_deep").count(), 5, "{list}");
    assert_eq!(list.matches("invalid_json").count(), 1, "{list}");
    assert!(list.contains("6 of 6 dead letter(s) shown"), "{list}");
    let position = list
        .lines()
        .find(|l| l.contains("invalid_json"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a position")
        .to_string();
    let shown = stdout(&auditflow(&env, &[], &["dlq", "show", &position]));
    assert!(shown.contains("dlq.error.kind: invalid_json") && shown.contains("{broken"), "{shown}");

    // The fix: accept deeper metadata. Then replay just those dead letters.
    enrich.terminate();
    let enrich_fixed = env.start_stage_with("audit-enrich", "e1", &[("AUDITFLOW_MAX_METADATA_DEPTH", "32")]);
    let dry = stdout(&auditflow(&env, &[], &["dlq", "replay", "--kind", "metadata_too_deep", "--dry-run"]));
    assert!(dry.starts_with("5 would be replayed"), "{dry}");
    assert_eq!(env.row_count().await, 200, "a dry run sends nothing");
    let out = stdout(&auditflow(&env, &[], &["dlq", "replay", "--kind", "metadata_too_deep"]));
    assert!(out.starts_with("5"), "{out}");
    env.wait_for_rows(205, Duration::from_secs(60)).await;
    let again = stdout(&auditflow(&env, &[], &["dlq", "replay", "--kind", "metadata_too_deep"]));
    assert!(again.contains("0  replayed, 5 already replayed"), "{again}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.row_count().await, 205, "a second replay duplicates nothing");

    // Lag: everything consumed. audit-enriched is written in transactions, and the commit
    // marker after the last record takes an offset of its own: at most 1 there.
    let lag = stdout(&auditflow(&env, &[], &["lag"]));
    for (stage, max) in [("enrich", 0), ("persist", 1)] {
        let lines: Vec<&str> = lag.lines().filter(|l| l.starts_with(stage)).collect();
        assert_eq!(lines.len(), 2, "one line per partition for {stage}: {lag}");
        for l in lines {
            let n: i64 = l.split_whitespace().last().and_then(|x| x.parse().ok()).expect("lag column");
            assert!(n <= max, "no lag left for {stage}: {lag}");
        }
    }
    drop((enrich_fixed, persist));
}

/// Dead letters written by someone other than a stage: `show` escapes what they carry, and
/// `replay` sends nothing into the topic they name, only to a stage's input topic.
#[tokio::test(flavor = "multi_thread")]
async fn forged_dead_letters_are_shown_escaped_and_never_replayed_where_they_say() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let env = TestEnv::new("dlqforge", 1).await;
    let actions = format!("{}.security-actions", env.id);
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    let forged: [(&str, &str, &[u8]); 2] = [
        ("enrich", actions.as_str(), b"{\"forged\":1}\x1b]52;c;ZXZpbA==\x07\xff"),
        ("no-such-stage", env.raw.as_str(), b"{}"),
    ];
    for (stage, source, payload) in forged {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dlq.source.topic", value: Some(source) })
            .insert(Header { key: "dlq.stage", value: Some(stage) })
            .insert(Header { key: "dlq.error.kind", value: Some("invalid_json") })
            .insert(Header { key: "dlq.error.message", value: Some("\x1b[2Jgone") });
        producer.send(BaseRecord::<(), [u8]>::to(&env.dlq).partition(0).payload(payload).headers(headers)).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");

    let shown = stdout(&auditflow(&env, &[], &["dlq", "show", "0:0"]));
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "no raw control byte reaches the terminal: {shown:?}");
    assert!(shown.contains("dlq.error.message: \\u{1b}[2Jgone"), "{shown}");
    assert!(shown.contains("{\"forged\":1}\\u{1b}]52;c;ZXZpbA==\\u{7}\\xff"), "{shown}");
    let list = stdout(&auditflow(&env, &[], &["dlq", "list"]));
    assert!(!list.contains('\u{1b}'), "{list:?}");

    let out = auditflow(&env, &[], &["dlq", "replay"]);
    let text = stdout(&out);
    assert!(text.starts_with("0  replayed") && text.contains("2 refused"), "{text}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("refused 0:0") && why.contains("not the input topic"), "{why}");
    assert!(why.contains("refused 0:1") && why.contains("no-such-stage"), "{why}");

    let anywhere = auditflow(&env, &[], &["dlq", "replay", "--to", &actions]);
    assert_eq!(anywhere.status.code(), Some(2), "--to must name a stage's input topic");
    assert!(String::from_utf8_lossy(&anywhere.stderr).contains("not a stage's input topic"));

    let chosen = stdout(&auditflow(&env, &[], &["dlq", "replay", "--to", &env.raw]));
    assert!(chosen.starts_with("1  replayed") && chosen.contains("1 refused"), "the unknown stage stays refused: {chosen}");
    let raw = read_topic(&env.raw, 1, Duration::from_secs(2));
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert!(raw[0].payload.starts_with(b"{\"forged\":1}"));
    assert!(read_topic(&actions, 3, Duration::from_secs(1)).is_empty(), "nothing reached the topic the header named");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_stage_is_moved_back_in_time_and_reprocesses_without_duplicates() {
    let env = TestEnv::new("rewind", 2).await;
    let start = chrono::Utc::now() - chrono::Duration::minutes(1);
    let events = sample_events(1_000, 22);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let mut persist = env.start_stage("audit-persist", "p1");
    env.produce_events(&events);
    env.wait_for_rows(1_000, Duration::from_secs(120)).await;

    let from = start.to_rfc3339();
    let refused = auditflow(&env, &[], &["replay", "--stage", "persist", "--from", &from]);
    assert_eq!(refused.status.code(), Some(2), "a running stage is not moved");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is running"));

    assert!(persist.terminate().success());
    // The group's members leave on SIGTERM; the broker may take a moment to show it.
    let mut moved = String::new();
    for _ in 0..20 {
        let out = auditflow(&env, &[], &["replay", "--stage", "persist", "--from", &from]);
        if out.status.success() {
            moved = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(moved.contains("partition 0 restarts at offset 0"), "{moved}");
    let stored: i64 = sqlx::query_scalar("SELECT COALESCE(sum(next_offset), -1)::bigint FROM stage_offsets")
        .fetch_one(&env.pool)
        .await
        .expect("offsets");
    assert_eq!(stored, 0, "persist's stored offsets were moved back");

    let _persist = env.start_stage("audit-persist", "p1");
    let start_wait = std::time::Instant::now();
    loop {
        let caught_up: i64 = sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::bigint FROM stage_offsets")
            .fetch_one(&env.pool)
            .await
            .expect("offsets");
        if caught_up >= 1_000 {
            break;
        }
        assert!(start_wait.elapsed() < Duration::from_secs(90), "persist never re-read the topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.row_count().await, 1_000, "re-reading stored nothing twice");
    let (ok, report) = verify_ledger(&env);
    assert!(ok, "{report}");
}
