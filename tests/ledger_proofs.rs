//! The ledger checked from outside the database, on the real stack: `auditflow verify` against
//! the copies of the checkpoints on `audit-checkpoints` and in the export directory after an
//! insider deletes rows, checkpoints and whole chains; inclusion and consistency proofs built
//! from a live ledger and checked offline; and the witness catching a rewritten history
//! signed with the real key.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use auditflow::ledger::{self, Checkpoint, Hash, LedgerSigner};
use auditflow::privacy::SecretKey;
use support::*;

fn auditflow(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow")).args(args).envs(env.env_vars()).output().expect("run auditflow")
}

/// `auditflow` with no database, broker or key in its environment: what an auditor runs.
fn offline(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDITFLOW_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("AUDITFLOW_KAFKA_BROKERS", "127.0.0.1:1")
        .output()
        .expect("run auditflow")
}

fn signer() -> LedgerSigner {
    LedgerSigner::new(&SecretKey::parse("AUDITFLOW_SIGNING_KEY", TEST_SIGNING_KEY).expect("test key"))
}

fn public_key_text() -> String {
    SecretKey(signer().verifying_key().to_bytes()).to_base64()
}

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("JSON report: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// Findings per chain, in the order reported.
fn findings(report: &serde_json::Value) -> HashMap<String, Vec<(String, i64)>> {
    let mut out: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for b in report["breaks"].as_array().expect("breaks") {
        out.entry(b["chain"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push((b["kind"].as_str().unwrap_or_default().to_string(), b["seq"].as_i64().unwrap_or(-1)));
    }
    out
}

/// Wait until every checkpoint is signed and published (and, with an export directory, until
/// the directory holds as many files).
async fn wait_published(env: &TestEnv, export: Option<&Path>) -> i64 {
    let start = Instant::now();
    loop {
        let (unsigned, unpublished, total): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ledger_chain_heads WHERE checkpointed_seq < last_seq),
                    (SELECT count(*) FROM ledger_checkpoints WHERE published_at IS NULL),
                    (SELECT count(*) FROM ledger_checkpoints)",
        )
        .fetch_one(&env.pool)
        .await
        .expect("checkpoint counts");
        let files = export.map(count_files).unwrap_or(total as usize);
        if unsigned == 0 && unpublished == 0 && files as i64 == total {
            return total;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "checkpoints not published: {unsigned} unsigned, {unpublished} unpublished, {files}/{total} files");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                n += 1;
            }
        }
    }
    n
}

async fn chains(env: &TestEnv) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT chain_id, last_seq FROM ledger_chain_heads ORDER BY chain_id").fetch_all(&env.pool).await.expect("chains")
}

async fn row_hashes(env: &TestEnv, chain: &str) -> Vec<Hash> {
    let hs: Vec<Vec<u8>> = sqlx::query_scalar("SELECT row_hash FROM audit_events WHERE chain_id = $1 ORDER BY chain_seq")
        .bind(chain)
        .fetch_all(&env.pool)
        .await
        .expect("row hashes");
    hs.iter().map(|h| ledger::hash_from_slice(h).expect("32-byte hash")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_deleted_rows_checkpoints_and_chains_from_the_outside_copies() {
    let env = TestEnv::new("outside", 4).await;
    let export = tempfile::tempdir().expect("export dir");
    let export_dir = export.path().to_str().expect("utf-8 path").to_string();
    let enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage_with("audit-persist", "p1", &[("AUDITFLOW_CHECKPOINT_EXPORT_DIR", &export_dir)]);
    // Several batches, so every chain has several checkpoints.
    for part in sample_events(2_400, 21).chunks(600) {
        env.produce_events(part);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    env.wait_for_rows(2_400, Duration::from_secs(120)).await;
    let total = wait_published(&env, Some(export.path())).await;
    drop((enrich, persist));
    let chains = chains(&env).await;
    assert_eq!(chains.len(), 4, "{chains:?}");
    let per_chain: Vec<i64> = {
        let mut v = Vec::new();
        for (c, _) in &chains {
            v.push(sqlx::query_scalar("SELECT count(*) FROM ledger_checkpoints WHERE chain_id = $1").bind(c).fetch_one(&env.pool).await.expect("n"));
        }
        v
    };
    assert!(per_chain.iter().all(|n| *n >= 2), "a checkpoint per batch: {per_chain:?}");
    let trees: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_checkpoints WHERE tree_root IS NOT NULL").fetch_one(&env.pool).await.expect("n");
    assert_eq!(trees, total, "every checkpoint signs a tree head");

    let out = auditflow(&env, &["verify", "--json"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["outsideRecords"].as_i64(), Some(total), "every checkpoint is on the topic: {r}");

    // The careful insider: the newest rows of chain 0 and the checkpoints covering them go,
    // and the head is moved back so the database agrees with itself.
    let (c0, len0) = (&chains[0].0, chains[0].1);
    let keep = len0 - 40;
    let db = env.id.clone();
    superuser_sql(
        &db,
        &format!(
            "DELETE FROM audit_events WHERE chain_id = '{c0}' AND chain_seq > {keep};
             DELETE FROM ledger_checkpoints WHERE chain_id = '{c0}' AND seq > {keep};
             UPDATE ledger_chain_heads SET last_seq = {keep}, checkpointed_seq = {keep},
                    last_hash = (SELECT row_hash FROM audit_events WHERE chain_id = '{c0}' AND chain_seq = {keep}),
                    merkle_frontier = NULL
              WHERE chain_id = '{c0}'"
        ),
    );
    // Chain 1 vanishes entirely: rows, head and checkpoints.
    let c1 = &chains[1].0;
    superuser_sql(
        &db,
        &format!(
            "DELETE FROM audit_events WHERE chain_id = '{c1}'; DELETE FROM ledger_checkpoints WHERE chain_id = '{c1}';
             DELETE FROM ledger_chain_heads WHERE chain_id = '{c1}'"
        ),
    );
    // Chain 2 gets a checkpoint signed with the real key that never left the database.
    let (c2, len2) = (&chains[2].0, chains[2].1);
    let leaves = row_hashes(&env, c2).await;
    let cp = Checkpoint::sign(&signer(), c2, len2, leaves[len2 as usize - 1], auditflow::merkle::root(&leaves), chrono::Utc::now());
    sqlx::query(
        "INSERT INTO ledger_checkpoints (chain_id, month_start, seq, head_hash, tree_root, signed_at, key_id, signature, published_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())",
    )
    .bind(c2)
    .bind(ledger::chain_month(c2))
    .bind(len2)
    .bind(cp.head_hash.to_vec())
    .bind(cp.tree_root.map(|r| r.to_vec()))
    .bind(cp.signed_at)
    .bind(&cp.key_id)
    .bind(&cp.signature)
    .execute(&env.pool)
    .await
    .expect("insert an unpublished checkpoint");

    let expect = |r: &serde_json::Value| {
        let f = findings(r);
        let kinds = |c: &str| f.get(c).map(|v| v.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()).unwrap_or_default();
        assert_eq!(f.get(c0).and_then(|v| v.first()), Some(&("truncated tail".to_string(), keep + 1)), "{r}");
        assert!(kinds(c0).contains(&"deleted checkpoint"), "{r}");
        assert_eq!(kinds(c1), ["deleted chain"], "{r}");
        assert_eq!(kinds(c2), ["unpublished checkpoint"], "{r}");
        assert!(!f.contains_key(&chains[3].0), "the untouched chain verifies: {r}");
        assert_eq!(f.len(), 3, "{r}");
    };
    let out = auditflow(&env, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    expect(&report(&out));
    // Air-gapped: the exported files alone say the same.
    let out = auditflow(&env, &["verify", "--json", "--no-topic", "--offline-checkpoints", &export_dir]);
    assert_eq!(out.status.code(), Some(3));
    let r = report(&out);
    expect(&r);
    assert_eq!(r["outsideRecords"].as_i64(), Some(total), "one file per checkpoint: {r}");
    // Without any outside copy the careful deletion of chain 0 and the vanished chain 1 are
    // invisible: this is what the copies are for.
    let out = auditflow(&env, &["verify", "--json", "--no-topic"]);
    let r = report(&out);
    assert!(!findings(&r).contains_key(c0) && !findings(&r).contains_key(c1), "{r}");
    assert_eq!(out.status.code(), Some(0), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proofs_from_the_live_ledger_verify_offline_and_survive_erasure() {
    let env = TestEnv::new("proofs", 2).await;
    let events = sample_events(900, 22);
    let enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage("audit-persist", "p1");
    env.produce_events(&events[..500]);
    env.wait_for_rows(500, Duration::from_secs(120)).await;
    env.produce_events(&events[500..]);
    env.wait_for_rows(900, Duration::from_secs(120)).await;
    wait_published(&env, None).await;
    drop((enrich, persist));
    let dir = tempfile::tempdir().expect("dir");
    let key = public_key_text();
    let file = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();

    // A sample of events, spread over both chains and positions.
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, chain_id FROM audit_events WHERE chain_seq IN (1, 2, 7, 100, 255, 256, 300) ORDER BY chain_id, chain_seq",
    )
    .fetch_all(&env.pool)
    .await
    .expect("sample");
    assert!(ids.len() >= 10, "{ids:?}");
    for (id, _) in &ids {
        let out = auditflow(&env, &["prove", id, "--output", &file("p.json")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = offline(&["verify-proof", &file("p.json"), "--key", &key]);
        assert!(out.status.success(), "{id}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: event"), "{}", String::from_utf8_lossy(&out.stdout));
    }

    // Against an older checkpoint too, and a changed proof, event or key fails.
    let (id, chain) = &ids[1];
    let older: i64 = sqlx::query_scalar("SELECT min(seq) FROM ledger_checkpoints WHERE chain_id = $1 AND tree_root IS NOT NULL AND seq >= 2")
        .bind(chain)
        .fetch_one(&env.pool)
        .await
        .expect("older checkpoint");
    let out = auditflow(&env, &["prove", id, "--checkpoint", &older.to_string(), "--output", &file("old.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let proof: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file("old.json")).expect("read")).expect("json");
    assert_eq!(proof["treeSize"].as_i64(), Some(older));
    assert!(offline(&["verify-proof", &file("old.json"), "--key", &key]).status.success());
    let text = std::fs::read_to_string(file("old.json")).expect("read");
    for field in ["rowHash", "signature", "treeRoot"] {
        let value = text.split(&format!("\"{field}\": \"")).nth(1).and_then(|r| r.get(..64)).expect("hex field").to_string();
        let flipped = format!("{}{}", if value.starts_with('0') { '1' } else { '0' }, &value[1..]);
        std::fs::write(file("bad.json"), text.replacen(&value, &flipped, 1)).expect("write");
        let out = offline(&["verify-proof", &file("bad.json"), "--key", &key]);
        assert_eq!(out.status.code(), Some(3), "{field}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let stranger = SecretKey(LedgerSigner::new(&SecretKey([9; 32])).verifying_key().to_bytes()).to_base64();
    assert_eq!(offline(&["verify-proof", &file("old.json"), "--key", &stranger]).status.code(), Some(3));

    // No proof for an event that was never stored.
    let out = auditflow(&env, &["prove", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the ledger"), "{}", String::from_utf8_lossy(&out.stderr));

    // Consistency between the chain's oldest and newest tree heads.
    let (from, to): (i64, i64) = sqlx::query_as("SELECT min(seq), max(seq) FROM ledger_checkpoints WHERE chain_id = $1 AND tree_root IS NOT NULL")
        .bind(chain)
        .fetch_one(&env.pool)
        .await
        .expect("sizes");
    assert!(from < to);
    let out = auditflow(&env, &["prove", "--consistency", chain, &from.to_string(), &to.to_string(), "-o", &file("c.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = offline(&["verify-proof", &file("c.json"), "--key", &key]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The data subject's export carries the stored rows: a proof checks against it.
    let subject = events[0].user_id.clone().expect("users");
    let out = auditflow(&env, &["export", "--subject", &subject, "--output", &file("export.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(file("export.json")).expect("read")).expect("json");
    let theirs = exported[0]["id"].as_str().expect("id").to_string();
    let out = auditflow(&env, &["prove", &theirs, "-o", &file("theirs.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = offline(&["verify-proof", &file("theirs.json"), "--key", &key, "--event", &file("export.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let mut changed = exported.clone();
    changed[0]["storedRow"]["action"] = "nothing.happened".into();
    std::fs::write(file("changed.json"), serde_json::to_string(&changed).expect("json")).expect("write");
    let out = offline(&["verify-proof", &file("theirs.json"), "--key", &key, "--event", &file("changed.json")]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));

    // Erasure destroys the subject's key, not the ciphertext the tree is over: old and new
    // proofs of every remaining event still verify.
    let out = auditflow(&env, &["erase", "--subject", &subject, "--reason", "GDPR Art. 17 request"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(offline(&["verify-proof", &file("theirs.json"), "--key", &key]).status.success());
    let out = auditflow(&env, &["prove", &theirs, "-o", &file("after.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(offline(&["verify-proof", &file("after.json"), "--key", &key]).status.success());
    let out = auditflow(&env, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", report(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_witness_cosigns_consistent_history_and_catches_a_rewrite_with_the_real_key() {
    let env = TestEnv::new("witness", 1).await;
    let store = tempfile::tempdir().expect("store");
    let store_dir = store.path().to_str().expect("utf-8").to_string();
    let witness_seed = "0707070707070707070707070707070707070707070707070707070707070707";
    let enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage("audit-persist", "p1");
    // The operational alert goes to a real SMTP server.
    let port = support::smtp::free_port();
    let smtp = support::smtp::SmtpSink::start(port);
    let port_text = port.to_string();
    let witness = env.start_command(
        &["witness", "--store", &store_dir],
        "w1",
        &[
            ("AUDITFLOW_WITNESS_KEY", witness_seed),
            ("AUDITFLOW_SMTP_HOST", "127.0.0.1"),
            ("AUDITFLOW_SMTP_PORT", &port_text),
            ("AUDITFLOW_SMTP_TLS", "none"),
            ("AUDITFLOW_SMTP_FROM", "auditflow witness <witness@auditflow.test>"),
            ("AUDITFLOW_OPS_RECIPIENTS", "sre@example.org"),
            ("AUDITFLOW_ALERT_RECIPIENTS", "security@example.org"),
        ],
    );
    // Three growths of one chain, each persisted, checkpointed and co-signed before the next,
    // so the witness checks consistency between sizes however fast the stages run.
    let events = sample_events(600, 23);
    let state = store.path().join("state.json");
    let accepted = |chain: &str, min: i64| -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
        let a = v["chains"][chain].clone();
        (a["checkpoint"]["seq"].as_i64()? >= min).then_some(a)
    };
    let mut chain = String::new();
    let mut honest = serde_json::Value::Null;
    for (i, part) in events.chunks(200).enumerate() {
        env.produce_events(part);
        let size = 200 * (i as i64 + 1);
        env.wait_for_rows(size, Duration::from_secs(120)).await;
        wait_published(&env, None).await;
        if chain.is_empty() {
            chain = chains(&env).await.remove(0).0;
        }
        let start = Instant::now();
        honest = loop {
            if let Some(a) = accepted(&chain, size) {
                break a;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the witness never co-signed size {size}: {}", witness.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
    }
    let accepted = |min: i64| accepted(&chain, min);
    let log = std::fs::read_to_string(store.path().join("witness.log.jsonl")).expect("witness log");
    let cosigned = log.lines().filter(|l| l.contains("\"cosigned\"")).count();
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_checkpoints").fetch_one(&env.pool).await.expect("n");
    assert!(cosigned >= 2 && cosigned as i64 <= published, "{cosigned} of {published} co-signed");
    let w = LedgerSigner::new(&SecretKey::parse("w", witness_seed).expect("seed"));
    let acc: auditflow::witness::Accepted = serde_json::from_value(honest.clone()).expect("accepted");
    assert!(auditflow::witness::cosignature_valid(&acc, &w.verifying_key()));
    drop((enrich, persist));

    // A compromised signer rewrites row 10 (its hash and every later one) and signs the new
    // history at a greater size with the real key, then publishes that checkpoint.
    let db = env.id.clone();
    let mut leaves = row_hashes(&env, &chain).await;
    for (i, leaf) in leaves.iter_mut().enumerate().skip(9) {
        leaf[0] ^= 0x55;
        leaf[31] = i as u8;
        superuser_sql(&db, &format!("UPDATE audit_events SET row_hash = '\\x{}' WHERE chain_id = '{chain}' AND chain_seq = {}", hex::encode(*leaf), i + 1));
    }
    let n = leaves.len();
    let forged = Checkpoint::sign(&signer(), &chain, n as i64, leaves[n - 1], auditflow::merkle::root(&leaves), chrono::Utc::now());
    // Same size as the co-signed one: two trees of one size. Then the witness must refuse it.
    produce(&format!("{}.audit-checkpoints", env.id), &[(Some(format!("{chain}#{n}")), forged.to_json(&signer().verifying_key()).to_string().into_bytes())]);
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(store.path().join("witness.log.jsonl")).unwrap_or_default();
        if log.contains("\"inconsistent\"") {
            assert!(log.contains("rewritten history"), "{log}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the witness did not see the rewrite: {}", witness.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted(0).map(|a| a["checkpoint"]["treeRoot"].clone()), Some(honest["checkpoint"]["treeRoot"].clone()), "never co-signed");
    assert!(witness.log().contains("rewritten history"), "the alert is logged");
    let mails = smtp.wait_for_mails(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1, "one operational alert e-mail");
    assert!(mails[0].header("subject").is_some_and(|s| s.contains("witness inconsistent_history")), "{}", mails[0].raw);
    let (status, metrics) = http_get(&http_addr(&witness), "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("auditflow_witness_checkpoints_total{outcome=\"inconsistent\"} 1"), "{metrics}");
}
