//! Tamper evidence and crypto-shredding on the real stack: `auditflow verify` passes on an
//! untouched ledger and names each kind of tampering done with plain SQL as a superuser;
//! erasure makes a subject unreadable while the chains still verify; the stages' role can
//! insert but never change the ledger.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use auditflow::privacy::SubjectKind;
use support::*;

fn auditflow(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow")).args(args).envs(env.env_vars()).output().expect("run auditflow")
}

fn verify_json(env: &TestEnv) -> (Option<i32>, serde_json::Value) {
    let out = auditflow(env, &["verify", "--json"]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify prints JSON: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

/// Start the pipeline with persist logged in as a member of the insert-only role.
async fn ledger_env(name: &str, partitions: i32, events: usize) -> (TestEnv, Vec<auditflow::event::RawEvent>, StageProcess, StageProcess) {
    let mut env = TestEnv::new(name, partitions).await;
    let writer = format!("w_{}", env.id);
    sqlx::query(&format!("CREATE ROLE \"{writer}\" LOGIN PASSWORD 'w' IN ROLE auditflow_writer"))
        .execute(&env.pool)
        .await
        .expect("create writer login");
    let writer_url = env.database_url.replacen("auditflow:auditflow@", &format!("{writer}:w@"), 1);
    let evs = sample_events(events, 11);
    let enrich = env.start_stage("audit-enrich", "e1");
    env.extra_env.push(("AUDITFLOW_DATABASE_URL".into(), writer_url));
    let persist = env.start_stage("audit-persist", "p1");
    env.extra_env.pop();
    env.produce_events(&evs);
    env.wait_for_rows(events as i64, Duration::from_secs(120)).await;
    // Wait until a signed checkpoint covers every chain head.
    let start = Instant::now();
    loop {
        let behind: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_chain_heads WHERE checkpointed_seq < last_seq")
            .fetch_one(&env.pool)
            .await
            .expect("heads");
        if behind == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "checkpoints never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (env, evs, enrich, persist)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_untouched_and_names_each_kind_of_tampering() {
    let (env, _events, enrich, persist) = ledger_env("tamper", 6, 3_000).await;
    drop((enrich, persist));

    let (code, report) = verify_json(&env);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["rows"], 3_000);
    assert!(report["checkpoints"].as_u64().unwrap_or(0) >= 6, "{report}");

    // The same ledger is on the topic, signed, outside the database.
    let published = read_topic(&format!("{}.audit-checkpoints", env.id), 1, Duration::from_secs(3));
    assert!(!published.is_empty(), "checkpoints are published");
    for p in &published {
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("checkpoint JSON");
        assert!(v["signature"].as_str().is_some_and(|s| s.len() == 128), "{v}");
    }

    let chains: Vec<(String, i64)> =
        sqlx::query_as("SELECT chain_id, last_seq FROM ledger_chain_heads ORDER BY chain_id").fetch_all(&env.pool).await.expect("chains");
    assert_eq!(chains.len(), 6, "one chain per partition this month");
    for (_, len) in &chains {
        assert!(*len >= 20, "each chain has enough rows to tamper with: {chains:?}");
    }
    let db = env.id.clone();
    let c = |i: usize| chains[i].0.replace('\'', "''");
    superuser_sql(&db, &format!("UPDATE audit_events SET action = 'logout' WHERE chain_id = '{}' AND chain_seq = 5", c(0)));
    superuser_sql(&db, &format!("DELETE FROM audit_events WHERE chain_id = '{}' AND chain_seq = 7", c(1)));
    // A superuser can drop the unique chain-position index first; verify must still catch what follows.
    superuser_sql(
        &db,
        "DO $$ DECLARE i RECORD; BEGIN FOR i IN SELECT indexname FROM pg_indexes WHERE indexname LIKE '%\\_chain\\_seq' LOOP EXECUTE format('DROP INDEX %I', i.indexname); END LOOP; END $$",
    );
    superuser_sql(
        &db,
        &format!(
            "CREATE TEMP TABLE forged AS SELECT * FROM audit_events WHERE chain_id = '{}' AND chain_seq = 3;
             UPDATE forged SET id = 'forged-' || id, action = 'grant_role';
             INSERT INTO audit_events SELECT * FROM forged",
            c(2)
        ),
    );
    superuser_sql(
        &db,
        &format!(
            "UPDATE audit_events SET chain_seq = CASE chain_seq WHEN 4 THEN 5 ELSE 4 END WHERE chain_id = '{}' AND chain_seq IN (4, 5)",
            c(3)
        ),
    );
    superuser_sql(&db, &format!("DELETE FROM audit_events WHERE chain_id = '{}' AND chain_seq > {}", c(4), chains[4].1 - 3));
    superuser_sql(&db, &format!("UPDATE ledger_checkpoints SET seq = seq - 1 WHERE chain_id = '{}'", c(5)));

    let (code, report) = verify_json(&env);
    assert_eq!(code, Some(3), "a broken ledger exits with code 3: {report}");
    // The first finding of each chain is the walk's; the topic's copies may add more (the
    // renumbered checkpoints of chain 5 are missing from the database as published).
    let mut breaks: HashMap<String, (String, i64)> = HashMap::new();
    for b in report["breaks"].as_array().expect("breaks") {
        breaks
            .entry(b["chain"].as_str().unwrap_or_default().to_string())
            .or_insert((b["kind"].as_str().unwrap_or_default().to_string(), b["seq"].as_i64().unwrap_or(-1)));
    }
    assert_eq!(breaks.get(&chains[0].0), Some(&("modified row".to_string(), 5)), "{report}");
    assert_eq!(breaks.get(&chains[1].0), Some(&("deleted row".to_string(), 7)), "{report}");
    assert_eq!(breaks.get(&chains[2].0), Some(&("inserted row".to_string(), 3)), "{report}");
    assert_eq!(breaks.get(&chains[3].0), Some(&("reordered rows".to_string(), 4)), "{report}");
    assert_eq!(breaks.get(&chains[4].0), Some(&("truncated tail".to_string(), chains[4].1 - 2)), "{report}");
    assert_eq!(breaks.get(&chains[5].0).map(|b| b.0.as_str()), Some("forged checkpoint"), "{report}");
    assert_eq!(breaks.len(), 6, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn erasure_makes_a_subject_unreadable_and_the_ledger_still_verifies() {
    let (env, events, enrich, persist) = ledger_env("erase", 2, 1_500).await;
    drop((enrich, persist));
    let keys = test_keys();

    // Personal fields are stored only sealed.
    let plaintext: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE user_id IS NOT NULL OR ip_address IS NOT NULL OR metadata IS NOT NULL OR user_agent IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(plaintext, 0, "no personal field in clear");

    let subject = events[0].user_id.clone().expect("sample events have users");
    let expected = events.iter().filter(|e| e.user_id.as_deref() == Some(subject.as_str())).count();
    let out = auditflow(&env, &["export", "--subject", &subject]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("export JSON");
    assert_eq!(exported.len(), expected);
    assert!(exported.iter().all(|e| e["userId"] == subject.as_str() && e["ipAddress"].is_string()), "decrypted");

    // A legal hold blocks erasure.
    let pseudonym = keys.pseudonym(SubjectKind::User, &subject);
    sqlx::query("INSERT INTO legal_holds (subject_pseudonym, reason, created_by) VALUES ($1, 'litigation 42', 'test')")
        .bind(&pseudonym)
        .execute(&env.pool)
        .await
        .expect("hold");
    let out = auditflow(&env, &["erase", "--subject", &subject, "--reason", "GDPR Art. 17 request"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("legal hold"));
    sqlx::query("UPDATE legal_holds SET released_at = now() WHERE subject_pseudonym = $1")
        .bind(&pseudonym)
        .execute(&env.pool)
        .await
        .expect("release");
    // So does a range hold covering one of the subject's events (and only while it is active).
    sqlx::query(
        r#"INSERT INTO legal_holds (from_ts, to_ts, reason, created_by)
           SELECT min("timestamp"), min("timestamp") + interval '1 millisecond', 'regulator inquiry', 'test'
             FROM audit_events WHERE subject_pseudonym = $1"#,
    )
    .bind(&pseudonym)
    .execute(&env.pool)
    .await
    .expect("range hold");
    // A range hold over a time when the subject did nothing does not block.
    sqlx::query(
        "INSERT INTO legal_holds (from_ts, to_ts, reason, created_by)
         VALUES ('1990-01-01Z', '1990-02-01Z', 'old case', 'test')",
    )
    .execute(&env.pool)
    .await
    .expect("unrelated range hold");
    let out = auditflow(&env, &["erase", "--subject", &subject, "--reason", "GDPR Art. 17 request"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("regulator inquiry"), "{}", String::from_utf8_lossy(&out.stderr));
    let released = sqlx::query("UPDATE legal_holds SET released_at = now() WHERE reason = 'regulator inquiry'")
        .execute(&env.pool)
        .await
        .expect("release range hold")
        .rows_affected();
    assert_eq!(released, 1);

    // An alert about the subject keeps a copy of the event: erasure must reach it too.
    sqlx::query(
        r#"INSERT INTO audit_alerts (id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key,
                                     group_hash, window_start, window_end, first_seen, last_seen, match_count,
                                     suppressed_count, trigger_match, dispatch_after)
           VALUES (gen_random_uuid(), 'fp', 'p', 'P', 'r', 'R', 'HIGH', jsonb_build_object('user_id', $1::text), 'h',
                   now(), now(), now(), now(), 1, 0,
                   jsonb_build_object('groupKey', jsonb_build_object('user_id', $1::text),
                                      'evidenceEventIds', jsonb_build_array('e1'),
                                      'event', jsonb_build_object('userId', $1::text, 'ipAddress', '10.0.0.1', 'action', 'login')),
                   now())"#,
    )
    .bind(&subject)
    .execute(&env.pool)
    .await
    .expect("alert row");

    let out = auditflow(&env, &["erase", "--subject", &subject, "--reason", "GDPR Art. 17 request"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (group_key, trigger): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT group_key, trigger_match FROM audit_alerts").fetch_one(&env.pool).await.expect("alert");
    assert!(!group_key.to_string().contains(&subject) && !trigger.to_string().contains(&subject), "{group_key} {trigger}");
    assert!(trigger["event"]["ipAddress"].is_null() && trigger["event"]["action"] == "login", "{trigger}");
    assert_eq!(trigger["groupKey"]["user_id"], "[erased]", "{trigger}");
    assert_eq!(group_key["user_id"], "[erased]", "{group_key}");
    assert_eq!(trigger["evidenceEventIds"], serde_json::json!(["e1"]), "evidence ids are not personal");
    let receipts: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure_receipts WHERE subject_pseudonym = $1")
        .bind(&pseudonym)
        .fetch_one(&env.pool)
        .await
        .expect("receipts");
    assert_eq!(receipts, 1, "a signed receipt is recorded");

    // Unreadable everywhere it is stored: no key left to open the sealed fields.
    let live_keys: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_keys WHERE subject_pseudonym = $1 AND wrapped_key IS NOT NULL")
        .bind(&pseudonym)
        .fetch_one(&env.pool)
        .await
        .expect("keys");
    assert_eq!(live_keys, 0);
    let out = auditflow(&env, &["export", "--subject", &subject]);
    let exported: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("export JSON");
    assert_eq!(exported.len(), expected, "the events remain, as facts");
    for e in &exported {
        assert!(e["userId"].is_null() && e["ipAddress"].is_null() && e["metadata"].is_null(), "{e}");
        assert_eq!(e["personalDataErased"], true);
    }
    // Another subject is untouched.
    let other = events.iter().filter_map(|e| e.user_id.clone()).find(|u| *u != subject).expect("another user");
    let out = auditflow(&env, &["export", "--subject", &other]);
    let exported: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("export JSON");
    assert!(!exported.is_empty() && exported.iter().all(|e| e["userId"] == other.as_str()));

    let (code, report) = verify_json(&env);
    assert_eq!(code, Some(0), "erasure does not break the chains: {report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stage_role_can_insert_but_not_change_the_ledger() {
    let (env, _events, enrich, persist) = ledger_env("roles", 1, 200).await;
    drop((enrich, persist));
    let writer = format!("w_{}", env.id);
    let writer_url = env.database_url.replacen("auditflow:auditflow@", &format!("{writer}:w@"), 1);
    let as_writer = sqlx::PgPool::connect(&writer_url).await.expect("writer connects");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&as_writer).await.expect("select");
    assert_eq!(n, 200, "persist, logged in as the writer role, stored every row");
    let err = sqlx::query("UPDATE audit_events SET action = 'x'").execute(&as_writer).await.expect_err("no update");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = sqlx::query("DELETE FROM audit_events").execute(&as_writer).await.expect_err("no delete");
    assert!(err.to_string().contains("permission denied"), "{err}");
    // Even the owner is stopped by the trigger.
    let err = sqlx::query("UPDATE audit_events SET action = 'x'").execute(&env.pool).await.expect_err("trigger");
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("DELETE FROM audit_events").execute(&env.pool).await.expect_err("trigger");
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_still_verifies_after_retention_drops_old_months() {
    let env = TestEnv::new("retire", 2).await;
    let mut events = sample_events(600, 12);
    for e in events.iter_mut().take(300) {
        // Far past the default 2555-day retention.
        e.timestamp = Some(auditflow::event::RawTimestamp::Rfc3339("2012-03-15T10:00:00Z".into()));
    }
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _persist = env.start_stage("audit-persist", "p1");
    env.produce_events(&events);
    env.wait_for_rows(600, Duration::from_secs(120)).await;
    let start = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ledger_chain_heads WHERE checkpointed_seq < last_seq")
        .fetch_one(&env.pool)
        .await
        .expect("heads")
        > 0
    {
        assert!(start.elapsed() < Duration::from_secs(60), "checkpoints never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, before) = verify_json(&env);
    assert_eq!(code, Some(0), "{before}");
    assert_eq!(before["chains"], 4, "two partitions × two months: {before}");

    let out = auditflow(&env, &["retention", "run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.row_count().await, 300, "the 2012 month is gone");

    let (code, after) = verify_json(&env);
    assert_eq!(code, Some(0), "verification after retention: {after}");
    assert_eq!(after["chains"], 2);
    assert_eq!(after["retiredChains"], 2, "the dropped month's chains are retired, not broken: {after}");
    assert_eq!(after["rows"], 300);
    // Proofs of the remaining month's events still hold.
    let (id,): (String,) = sqlx::query_as("SELECT id FROM audit_events ORDER BY chain_id, chain_seq LIMIT 1").fetch_one(&env.pool).await.expect("an event");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("p.json");
    let out = auditflow(&env, &["prove", &id, "--output", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = auditflow::privacy::SecretKey(
        auditflow::ledger::LedgerSigner::new(&auditflow::privacy::SecretKey::parse("k", TEST_SIGNING_KEY).expect("key")).verifying_key().to_bytes(),
    )
    .to_base64();
    let out = auditflow(&env, &["verify-proof", file.to_str().expect("utf-8"), "--key", &key]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
