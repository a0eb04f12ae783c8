//! audit-raw → audit-enrich → audit-enriched → audit-compliance → PostgreSQL
//! `compliance_events` and the `compliance-events` topic, end to end on the real local stack;
//! then `auditflow report` checked against independent SQL.
//!
//! Needs `scripts/stack up`. Touches no shared service: its own database, topics and groups.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use auditflow::compliance::{records_for, ComplianceRecord, Framework, Mapping, Pseudonyms};
use auditflow::event::{RawEvent, RawTimestamp};
use auditflow::privacy::{SecretKey, SubjectKind};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use support::*;

const PSEUDONYM_KEY: [u8; 32] = [0x5a; 32];

fn raw(action: &str, resource: &str, user: Option<&str>) -> RawEvent {
    RawEvent {
        id: Some(uuid::Uuid::new_v4().to_string()),
        action: Some(action.into()),
        resource: Some(resource.into()),
        user_id: user.map(String::from),
        ip_address: Some("198.51.100.7".into()),
        ..RawEvent::default()
    }
}

/// The demo mix plus events aimed at specific controls of every framework.
fn event_mix(n: usize) -> Vec<RawEvent> {
    let mut events = sample_events(n, 11);
    let mut targeted = auditflow::demo::seed_examples(); // login, failed login, delete_user, data_export
    for e in &mut targeted {
        e.id = Some(uuid::Uuid::new_v4().to_string());
    }
    targeted.extend([
        RawEvent { severity: Some("CRITICAL".into()), classification: Some("CONFIDENTIAL".into()), ..raw("grant_role", "iam_roles", Some("admin7")) },
        RawEvent { classification: Some("RESTRICTED".into()), ..raw("view_chart", "patient_record", Some("doc1")) },
        RawEvent { success: Some(false), ..raw("view_chart", "patient_record", Some("doc2")) },
        raw("subject_access_request", "user_data", Some("user5")),
        raw("rectify_personal_data", "user_profile", Some("user6")),
        raw("view", "card_vault", Some("clerk1")),
        raw("read", "audit_logs", Some("auditor1")),
        raw("stop_audit_logging", "syslog", Some("root")),
        raw("drop_table", "db_archive", Some("dba1")),
        raw("update_entry", "general_ledger", Some("acct1")),
        // An anonymous actor: the subject is the client address.
        raw("login", "authentication", None),
        // A hostile resource name must come out escaped in the HTML report.
        RawEvent { severity: Some("HIGH".into()), ..raw("grant_role", "<script>alert(1)</script>", Some("admin8")) },
    ]);
    events.extend(targeted);
    // Spread over the last four days so the per-day figures mean something.
    let now = Utc::now();
    for (i, e) in events.iter_mut().enumerate() {
        let at = now - chrono::Duration::hours((i % 4) as i64 * 24 + 1);
        e.timestamp = Some(RawTimestamp::Rfc3339(at.to_rfc3339()));
    }
    events
}

type Row = (String, DateTime<Utc>, String, String, String, bool, String, String, bool, String, String, Option<String>);

fn as_row(r: &ComplianceRecord) -> Row {
    (
        r.event_id.clone(),
        r.event_time,
        r.framework.as_str().to_string(),
        r.control.clone(),
        r.control_name.clone(),
        r.privileged,
        r.action.clone(),
        r.resource.clone(),
        r.success,
        r.severity.as_str().to_string(),
        r.classification.as_str().to_string(),
        r.subject_pseudonym.clone(),
    )
}

async fn table_rows(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT event_id, event_time, framework, control, control_name, privileged, action, resource, success,
                severity, classification, subject_pseudonym
           FROM compliance_events ORDER BY event_id, framework, control",
    )
    .fetch_all(pool)
    .await
    .expect("compliance_events rows")
}

async fn wait_for_table(pool: &PgPool, expected: usize, env: &TestEnv) {
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(120) {
        last = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM compliance_events").fetch_one(pool).await.unwrap_or(0) as usize;
        if last >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last, expected, "compliance_events rows (logs in {})", env.log_dir.display());
}

fn auditflow(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .envs(env.env_vars())
        .args(args)
        .output()
        .expect("run auditflow");
    assert!(out.status.success(), "auditflow {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The report's figures, recomputed with SQL written independently of the report's.
async fn check_report_against_sql(pool: &PgPool, fw: Framework, from: DateTime<Utc>, to: DateTime<Utc>, report: &serde_json::Value) {
    let f = fw.as_str();
    let scalar = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql).bind(f).bind(from).bind(to).fetch_one(pool).await.expect(sql)
    };
    let totals = &report["totals"];
    assert_eq!(
        totals["records"],
        scalar("SELECT count(*) FROM compliance_events WHERE framework = $1 AND event_time >= $2 AND event_time < $3").await,
        "{f} records"
    );
    assert_eq!(
        totals["events"],
        scalar("SELECT count(*) FROM (SELECT DISTINCT event_id FROM compliance_events WHERE framework = $1 AND event_time BETWEEN $2 AND $3 AND event_time <> $3) e").await,
        "{f} events"
    );
    assert_eq!(
        totals["failures"],
        scalar("SELECT count(*) FROM (SELECT event_id FROM compliance_events WHERE framework = $1 AND event_time >= $2 AND event_time < $3 GROUP BY event_id HAVING bool_or(NOT success)) e").await,
        "{f} failures"
    );
    assert_eq!(
        totals["privilegedActions"],
        scalar("SELECT count(*) FROM (SELECT event_id FROM compliance_events WHERE framework = $1 AND event_time >= $2 AND event_time < $3 GROUP BY event_id HAVING bool_or(privileged)) e").await,
        "{f} privileged actions"
    );

    let per_control: BTreeMap<String, (i64, i64, i64)> = sqlx::query_as::<_, (String, i64, i64, i64)>(
        "SELECT control, count(*), sum(CASE WHEN success THEN 0 ELSE 1 END)::bigint, sum(CASE WHEN privileged THEN 1 ELSE 0 END)::bigint
           FROM compliance_events WHERE framework = $1 AND event_time >= $2 AND event_time < $3 GROUP BY control",
    )
    .bind(f)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .expect("per control")
    .into_iter()
    .map(|(c, n, fails, p)| (c, (n, fails, p)))
    .collect();
    let reported: BTreeMap<String, (i64, i64, i64)> = report["controls"]
        .as_array()
        .expect("controls")
        .iter()
        .filter(|c| c["events"].as_i64() != Some(0))
        .map(|c| {
            (
                c["control"].as_str().unwrap().to_string(),
                (c["events"].as_i64().unwrap(), c["failures"].as_i64().unwrap(), c["privileged"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(reported, per_control, "{f} per control");

    let per_day: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT ((event_time AT TIME ZONE 'UTC')::date)::text, count(DISTINCT event_id)
           FROM compliance_events WHERE framework = $1 AND event_time >= $2 AND event_time < $3 GROUP BY 1",
    )
    .bind(f)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .expect("per day")
    .into_iter()
    .collect();
    let reported: BTreeMap<String, i64> = report["perDay"]
        .as_array()
        .expect("perDay")
        .iter()
        .map(|d| (d["day"].as_str().unwrap().to_string(), d["events"].as_i64().unwrap()))
        .collect();
    assert_eq!(reported, per_day, "{f} per day");

    let actors: Vec<(String, i64)> = sqlx::query_as(
        "SELECT subject_pseudonym, count(DISTINCT event_id) AS n FROM compliance_events
          WHERE framework = $1 AND event_time >= $2 AND event_time < $3 AND subject_pseudonym IS NOT NULL
          GROUP BY subject_pseudonym ORDER BY n DESC, subject_pseudonym LIMIT 10",
    )
    .bind(f)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .expect("top actors");
    let reported: Vec<(String, i64)> = report["topActors"]
        .as_array()
        .expect("topActors")
        .iter()
        .map(|a| (a["key"].as_str().unwrap().to_string(), a["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(reported, actors, "{f} top actors");
}

#[tokio::test(flavor = "multi_thread")]
async fn compliance_records_land_once_in_table_and_topic_and_reports_match_sql() {
    let mut env = TestEnv::new("compl", 3).await;
    let key = SecretKey(PSEUDONYM_KEY);
    env.extra_env.push(("AUDITFLOW_PSEUDONYM_KEY".into(), key.to_base64()));
    // HIPAA is off by default; switch it on for the flags and the records alike.
    env.extra_env.push(("AUDITFLOW_COMPLIANCE_HIPAA".into(), "true".into()));
    env.extra_env.push(("AUDITFLOW_BATCH_MAX_MESSAGES".into(), "50".into()));
    let config = env.config();
    let compliance_topic = config.topics.compliance_events.name.clone();
    let compliance_partitions = config.topics.compliance_events.partitions;

    let events = event_mix(600);
    let (first, second) = events.split_at(events.len() / 2);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let mut compliance = env.start_stage("audit-compliance", "c1");
    env.produce_events(first);

    // Crash the compliance stage mid-stream: whatever it had written to the table or left in an
    // open transaction must neither be lost nor doubled after the restart.
    let start = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM compliance_events").fetch_one(&env.pool).await.unwrap_or(0) == 0 {
        assert!(start.elapsed() < Duration::from_secs(90), "no compliance record yet:\n{}", compliance.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    compliance.kill9();
    env.produce_events(second);
    let compliance = env.start_stage("audit-compliance", "c1");

    // What the pure mapping says the enriched events yield.
    let start = Instant::now();
    let enriched = loop {
        let records = read_topic(&env.enriched, env.partitions, Duration::from_secs(3));
        if records.len() >= events.len() || start.elapsed() > Duration::from_secs(90) {
            break records;
        }
    };
    assert_eq!(enriched.len(), events.len(), "every event enriched once");
    let mapping = Mapping::from_config(&config).expect("mapping");
    let pseudonyms = Pseudonyms::new(key);
    let expected: Vec<ComplianceRecord> = enriched
        .iter()
        .flat_map(|r| {
            let ev = auditflow::codec::decode_enriched(&r.payload).expect("decodes");
            records_for(&mapping, &pseudonyms, &ev)
        })
        .collect();
    let frameworks: BTreeSet<Framework> = expected.iter().map(|r| r.framework).collect();
    assert_eq!(frameworks.len(), 4, "the mix exercises every framework: {frameworks:?}");

    // The table: exactly the expected rows, once each.
    wait_for_table(&env.pool, expected.len(), &env).await;
    let mut want: Vec<Row> = expected.iter().map(as_row).collect();
    want.sort();
    let got = table_rows(&env.pool).await;
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want, "compliance_events holds exactly the mapped records");

    // The topic, read committed: the same records, each once, keyed by event id.
    let start = Instant::now();
    let topic = loop {
        let t = read_topic(&compliance_topic, compliance_partitions, Duration::from_secs(3));
        if t.len() >= expected.len() || start.elapsed() > Duration::from_secs(60) {
            break t;
        }
    };
    let mut on_topic: Vec<Row> = topic
        .iter()
        .map(|r| {
            let rec: ComplianceRecord = serde_json::from_slice(&r.payload).expect("compliance record JSON");
            assert_eq!(r.key.as_deref(), Some(rec.event_id.as_bytes()), "keyed by event id");
            as_row(&rec)
        })
        .collect();
    on_topic.sort();
    assert_eq!(on_topic.len(), want.len(), "no record lost or doubled on the topic");
    assert_eq!(on_topic, want);

    // No plaintext personal data: subjects are 32-hex-digit pseudonyms, never user ids or IPs.
    let users: BTreeSet<String> = events.iter().filter_map(|e| e.user_id.clone()).collect();
    for row in &got {
        if let Some(p) = &row.11 {
            assert!(p.len() == 32 && p.chars().all(|c| c.is_ascii_hexdigit()), "{p}");
            assert!(!users.contains(p));
        }
    }
    let anonymous = pseudonyms.of(SubjectKind::Ip, "198.51.100.7");
    assert!(got.iter().any(|r| r.11.as_deref() == Some(anonymous.as_str())), "an anonymous actor is known by its address's pseudonym");
    assert!(read_topic(&env.dlq, 3, Duration::from_secs(1)).is_empty(), "nothing dead-lettered");

    // A late event for a month whose partition retention has since dropped: the stage notices
    // the partition is gone and creates it again instead of retrying forever.
    let old = Utc::now() - chrono::Duration::days(800);
    let late = |user: &str| RawEvent { timestamp: Some(RawTimestamp::Rfc3339(old.to_rfc3339())), ..raw("delete_user", "user_management", Some(user)) };
    let old_partition = format!("compliance_events_{}", old.format("%Y_%m"));
    let count_old = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM compliance_events WHERE event_time < now() - interval '400 days'")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    env.produce_events(&[late("late1")]);
    let start = Instant::now();
    while count_old().await == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "late event never recorded:\n{}", compliance.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query(&format!("DROP TABLE \"{old_partition}\"")).execute(&env.pool).await.expect("drop the old month");
    env.produce_events(&[late("late2")]);
    let start = Instant::now();
    while count_old().await == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "event for a dropped month never recorded:\n{}", compliance.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(compliance);
    sqlx::query(&format!("DROP TABLE \"{old_partition}\"")).execute(&env.pool).await.expect("remove the late month again");

    // Reports: JSON figures equal independent SQL, for every framework.
    let from = Utc::now() - chrono::Duration::days(7);
    let to = Utc::now() + chrono::Duration::hours(1);
    let (from_s, to_s) = (from.to_rfc3339(), to.to_rfc3339());
    for fw in Framework::ALL {
        let name = fw.as_str().to_lowercase();
        let json = auditflow(&env, &["report", "--framework", &name, "--from", &from_s, "--to", &to_s, "--format", "json"]);
        let report: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
        check_report_against_sql(&env.pool, fw, from, to, &report).await;
        // …and the records equal what the pure mapping gives for the framework.
        assert_eq!(report["totals"]["records"], expected.iter().filter(|r| r.framework == fw).count() as i64);
        assert_eq!(report["totals"]["alerts"], 0);
        assert_eq!(report["alerts"]["available"], true, "audit_alerts exists (migration 0002)");
    }
    // A narrower period: only the oldest day.
    let narrow_to = Utc::now() - chrono::Duration::days(2);
    let json = auditflow(&env, &["report", "--framework", "pci", "--from", &from_s, "--to", &narrow_to.to_rfc3339(), "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    check_report_against_sql(&env.pool, Framework::Pci, from, narrow_to, &report).await;
    assert!(report["totals"]["records"].as_i64().unwrap() > 0);

    // Alerts, once the alert store exists: those active in the period, per SQL.
    let created_alerts = sqlx::query_scalar::<_, bool>("SELECT to_regclass('audit_alerts') IS NULL").fetch_one(&env.pool).await.unwrap();
    if created_alerts {
        sqlx::query(
            "CREATE TABLE audit_alerts (id TEXT PRIMARY KEY, rule_id TEXT NOT NULL, policy_id TEXT, severity TEXT NOT NULL,
                 first_seen TIMESTAMPTZ NOT NULL, last_seen TIMESTAMPTZ NOT NULL, suppressed_count BIGINT NOT NULL DEFAULT 0,
                 status TEXT NOT NULL DEFAULT 'open')",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        for (id, sev, first_days_ago, last_days_ago) in [("a1", "HIGH", 3, 2), ("a2", "CRITICAL", 1, 0), ("a3", "HIGH", 30, 20)] {
            sqlx::query("INSERT INTO audit_alerts (id, rule_id, severity, first_seen, last_seen) VALUES ($1, 'r', $2, $3, $4)")
                .bind(id)
                .bind(sev)
                .bind(Utc::now() - chrono::Duration::days(first_days_ago))
                .bind(Utc::now() - chrono::Duration::days(last_days_ago))
                .execute(&env.pool)
                .await
                .unwrap();
        }
    }
    let json = auditflow(&env, &["report", "--framework", "sox", "--from", &from_s, "--to", &to_s, "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_alerts WHERE first_seen < $2 AND last_seen >= $1")
        .bind(from)
        .bind(to)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(report["totals"]["alerts"], alerts);
    assert_eq!(report["alerts"]["available"], true);
    if created_alerts {
        assert_eq!(alerts, 2);
    }

    // HTML: self-contained, charts inline, the hostile resource name escaped.
    let html_path = env.log_dir.join("sox.html");
    auditflow(&env, &["report", "--framework", "sox", "--from", &from_s, "--to", &to_s, "--format", "html", "--output", html_path.to_str().unwrap()]);
    let html = std::fs::read_to_string(&html_path).expect("html written");
    assert!(html.contains("<svg"), "inline SVG chart");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the resource name is shown escaped");
    assert!(!html.contains("<script"), "no script element gets through");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "self-contained");

    // CSV: the same totals.
    let csv = auditflow(&env, &["report", "--framework", "sox", "--from", &from_s, "--to", &to_s, "--format", "csv"]);
    assert!(csv.starts_with("section,key,name,metric,value\n"));
    assert!(csv.contains(&format!("total,,,records,{}\n", report["totals"]["records"])), "{csv}");
}
