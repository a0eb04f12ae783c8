//! Retention and legal holds against real PostgreSQL: `auditflow hold …` and
//! `auditflow retention run [--dry-run]` on months of audit_events / compliance_events rows
//! written directly with old timestamps.
//!
//! Needs `scripts/stack up` (PostgreSQL; topics are created but unused).

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use auditflow::compliance::Pseudonyms;
use auditflow::privacy::{SecretKey, SubjectKind};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use sqlx::PgPool;

use support::*;

const PSEUDONYM_KEY: [u8; 32] = [0x33; 32];

/// A `retention_drops` row: table, partition, month start and end, rows, retention days.
type DropRow = (String, String, DateTime<Utc>, DateTime<Utc>, i64, i32);

/// First instant of the month `k` months before the current one (UTC).
fn month(k: i32) -> DateTime<Utc> {
    let now = Utc::now();
    let index = now.year() * 12 + now.month0() as i32 - k;
    Utc.with_ymd_and_hms(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1, 0, 0, 0).unwrap()
}

struct Row<'a> {
    at: DateTime<Utc>,
    user: Option<&'a str>,
    /// None: the row predates subject pseudonyms.
    pseudonymise: bool,
    classification: &'a str,
    sox: bool,
}

impl<'a> Row<'a> {
    fn new(at: DateTime<Utc>, user: &'a str) -> Row<'a> {
        Row { at, user: Some(user), pseudonymise: true, classification: "INTERNAL", sox: false }
    }
}

async fn insert(pool: &PgPool, p: &Pseudonyms, rows: &[Row<'_>]) {
    for (i, r) in rows.iter().enumerate() {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query("SELECT audit_events_ensure_month($1)").bind(r.at).execute(pool).await.unwrap();
        let pseudonym = r.user.filter(|_| r.pseudonymise).map(|u| p.of(SubjectKind::User, u));
        sqlx::query(
            r#"INSERT INTO audit_events (id, "timestamp", user_id, action, resource, classification, severity, success,
                   compliance, source_topic, source_partition, source_offset, enriched_at, subject_pseudonym)
               VALUES ($1, $2, $3, 'login', 'user_account', $4, 'LOW', true, $5::jsonb, 'audit-raw', 0, $6, $2, $7)"#,
        )
        .bind(&id)
        .bind(r.at)
        .bind(r.user)
        .bind(r.classification)
        .bind(format!(r#"{{"gdpr": true, "sox": {}, "hipaa": false, "pci": false}}"#, r.sox))
        .bind(i as i64)
        .bind(&pseudonym)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn insert_compliance(pool: &PgPool, at: DateTime<Utc>, framework: &str, pseudonym: Option<&str>) {
    sqlx::query("SELECT compliance_events_ensure_month($1)").bind(at).execute(pool).await.unwrap();
    sqlx::query(
        "INSERT INTO compliance_events (event_id, event_time, framework, control, control_name, privileged, action, resource,
             success, severity, classification, subject_pseudonym)
         VALUES ($1, $2, $3, 'C-1', 'control', false, 'login', 'user_account', true, 'LOW', 'INTERNAL', $4)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(at)
    .bind(framework)
    .bind(pseudonym)
    .execute(pool)
    .await
    .unwrap();
}

fn auditflow(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_auditflow")).envs(env.env_vars()).args(args).output().expect("run auditflow");
    assert!(out.status.success(), "auditflow {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Month partitions that exist: (table, month) → rows.
async fn partitions(pool: &PgPool) -> BTreeMap<String, i64> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname IN ('audit_events', 'compliance_events') ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for n in names {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{n}\"")).fetch_one(pool).await.unwrap();
        out.insert(n, rows);
    }
    out
}

fn part(table: &str, k: i32) -> String {
    format!("{table}_{}", month(k).format("%Y_%m"))
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_only_expired_unheld_months_and_logs_each_drop() {
    let mut env = TestEnv::new("retention", 1).await;
    let key = SecretKey(PSEUDONYM_KEY);
    env.extra_env.push(("AUDITFLOW_PSEUDONYM_KEY".into(), key.to_base64()));
    // About a year by default (370 days: a row in the last hour of the month twelve months ago
    // is always within it); restricted data and SOX evidence much longer.
    env.extra_env.push(("AUDITFLOW_RETENTION_DAYS".into(), "370".into()));
    env.extra_env.push(("AUDITFLOW_RETENTION_DAYS_RESTRICTED".into(), "5000".into()));
    env.extra_env.push(("AUDITFLOW_RETENTION_DAYS_SOX".into(), "5000".into()));
    let p = Pseudonyms::new(key);
    let pool = &env.pool;
    let mid = |k: i32| month(k) + Duration::days(14);

    // k = 30: a held subject's month.          k = 29: within a held time range.
    // k = 28: expired, unheld (both tables).   k = 27: a RESTRICTED row (5000 days).
    // k = 26: a SOX compliance record.         k = 25: a row without a pseudonym while a subject is held.
    // k = 24: a subject whose hold is released. k = 12: its last row is less than a year old.
    // k = 1: recent.                            k = 0: the current month.
    insert(pool, &p, &[Row::new(mid(30), "alice"), Row::new(mid(30) + Duration::days(1), "bob")]).await;
    insert(pool, &p, &[Row::new(mid(29), "bob")]).await;
    insert(pool, &p, &[Row::new(mid(28), "bob"), Row::new(mid(28) + Duration::hours(5), "dave")]).await;
    insert_compliance(pool, mid(28), "GDPR", Some(&p.of(SubjectKind::User, "bob"))).await;
    insert(pool, &p, &[Row::new(mid(27), "bob"), Row { classification: "RESTRICTED", ..Row::new(mid(27), "dave") }]).await;
    insert(pool, &p, &[Row { sox: false, ..Row::new(mid(26), "bob") }]).await;
    insert_compliance(pool, mid(26), "SOX", Some(&p.of(SubjectKind::User, "bob"))).await;
    insert(pool, &p, &[Row { pseudonymise: false, ..Row::new(mid(25), "legacy") }]).await;
    insert(pool, &p, &[Row::new(mid(24), "carol")]).await;
    insert(pool, &p, &[Row::new(month(11) - Duration::hours(1), "bob"), Row::new(month(12), "bob")]).await;
    insert(pool, &p, &[Row::new(mid(1), "bob")]).await;
    insert(pool, &p, &[Row::new(month(0) + Duration::minutes(1), "bob")]).await;
    let before = partitions(pool).await;
    assert_eq!(before.len(), 12, "{before:?}");

    // Holds, through the CLI. Only pseudonyms are stored.
    let out = auditflow(&env, &["hold", "add", "--subject", "alice", "--reason", "litigation 2024-17", "--created-by", "legal"]);
    assert!(out.contains("placed legal hold"), "{out}");
    assert!(!out.contains("alice"), "the plaintext subject is not echoed: {out}");
    let (from, to) = (mid(29).to_rfc3339(), (mid(29) + Duration::days(1)).to_rfc3339());
    auditflow(&env, &["hold", "add", "--from", &from, "--to", &to, "--reason", "regulator inquiry"]);
    let carol = auditflow(&env, &["hold", "add", "--subject", "carol", "--reason", "closed case"]);
    let carol_id = carol.split_whitespace().nth(3).expect("hold id").to_string();
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT subject_pseudonym FROM legal_holds ORDER BY id").fetch_all(pool).await.unwrap();
    assert_eq!(stored, [Some(p.of(SubjectKind::User, "alice")), None, Some(p.of(SubjectKind::User, "carol"))]);
    let list = auditflow(&env, &["hold", "list"]);
    assert_eq!(list.lines().count(), 4, "header and three active holds:\n{list}");
    let out = auditflow(&env, &["hold", "release", &carol_id]);
    assert!(out.contains("released legal hold"), "{out}");
    assert_eq!(auditflow(&env, &["hold", "list"]).lines().count(), 3);
    assert_eq!(auditflow(&env, &["hold", "list", "--all"]).lines().count(), 4);

    // Dry run: reports, changes nothing.
    let dry = auditflow(&env, &["retention", "run", "--dry-run"]);
    assert!(dry.contains("2 month(s) would be dropped"), "{dry}");
    assert_eq!(partitions(pool).await, before);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM retention_drops").fetch_one(pool).await.unwrap();
    assert_eq!(logged, 0);

    // The real run: k = 28 (both tables) and k = 24 go; everything else stays, row for row.
    let json = auditflow(&env, &["retention", "run", "--json"]);
    let outcome: serde_json::Value = serde_json::from_str(&json).expect("outcome JSON");
    let decisions: BTreeMap<String, String> = outcome["months"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["monthStart"].as_str().unwrap()[..7].to_string(), m["decision"].as_str().unwrap().to_string()))
        .collect();
    let d = |k: i32| decisions[&month(k).format("%Y-%m").to_string()].as_str();
    assert_eq!(d(30), "keep_held");
    assert_eq!(d(29), "keep_held");
    assert_eq!(d(28), "dropped");
    assert_eq!(d(27), "keep_retention");
    assert_eq!(d(26), "keep_retention");
    assert_eq!(d(25), "keep_held", "unknown subject while a subject hold is active");
    assert_eq!(d(24), "dropped", "its hold was released");
    assert_eq!(d(12), "keep_retention", "retention is per row, not per month start");
    assert_eq!(d(1), "keep_retention");
    assert_eq!(d(0), "keep_current");

    let mut expected = before.clone();
    for gone in [part("audit_events", 28), part("compliance_events", 28), part("audit_events", 24)] {
        assert!(expected.remove(&gone).is_some(), "{gone} existed");
    }
    assert_eq!(partitions(pool).await, expected, "only the expired, unheld months were dropped");

    let drops: Vec<DropRow> = sqlx::query_as(
        "SELECT table_name, partition_name, month_start, month_end, rows_dropped, retention_days FROM retention_drops ORDER BY month_start, table_name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        drops,
        vec![
            ("audit_events".into(), part("audit_events", 28), month(28), month(27), 2, 370),
            ("compliance_events".into(), part("compliance_events", 28), month(28), month(27), 1, 370),
            ("audit_events".into(), part("audit_events", 24), month(24), month(23), 1, 370),
        ]
    );
    let dropped_at_ok: bool = sqlx::query_scalar("SELECT bool_and(dropped_at > now() - interval '5 minutes') FROM retention_drops").fetch_one(pool).await.unwrap();
    assert!(dropped_at_ok);

    // Held data is all there; a second run changes nothing.
    let alice: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE subject_pseudonym = $1")
        .bind(p.of(SubjectKind::User, "alice"))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(alice, 1);
    let again = auditflow(&env, &["retention", "run"]);
    assert!(again.contains("0 month(s) dropped"), "{again}");
    assert_eq!(partitions(pool).await, expected);

    // Releasing the range hold lets its month go on the next run.
    auditflow(&env, &["hold", "release", "2"]);
    auditflow(&env, &["retention", "run"]);
    assert!(!partitions(pool).await.contains_key(&part("audit_events", 29)));
    assert!(partitions(pool).await.contains_key(&part("audit_events", 30)), "alice's hold is still active");
}
