//! Detection end to end with the shipped rule pack and alert policies: raw events →
//! audit-enrich → audit-rules (Redis windows) → audit-alert → e-mail and security-alerts.

mod support;

use std::time::Duration;

use support::smtp::*;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_brute_force_raises_exactly_one_alert_with_every_attempt_accounted_for() {
    let mut env = TestEnv::new("detect", 3).await;
    let port = free_port();
    let smtp = SmtpSink::start(port);
    env.extra_env.extend([
        ("AUDITFLOW_SMTP_HOST".to_string(), "127.0.0.1".to_string()),
        ("AUDITFLOW_SMTP_PORT".to_string(), port.to_string()),
        ("AUDITFLOW_SMTP_TLS".to_string(), "none".to_string()),
        ("AUDITFLOW_SMTP_FROM".to_string(), "auditflow <alerts@auditflow.test>".to_string()),
        ("AUDITFLOW_ALERT_RECIPIENTS".to_string(), "security@example.com".to_string()),
        ("AUDITFLOW_OPS_RECIPIENTS".to_string(), "sre@example.org".to_string()),
        ("AUDITFLOW_ALERT_GROUP_WAIT_SECONDS".to_string(), "3".to_string()),
        ("AUDITFLOW_REDIS_PREFIX".to_string(), format!("test:{}:", env.id)),
        ("AUDITFLOW_RULES_DIR".to_string(), repo_root().join("rules").display().to_string()),
    ]);
    let _enrich = env.start_stage("audit-enrich", "e1");
    let _rules = env.start_stage("audit-rules", "r1");
    let alert = env.start_stage("audit-alert", "a1");

    // 12 failed logins for one account within a minute, plus ordinary traffic around them.
    let base = chrono::Utc::now() - chrono::Duration::seconds(30);
    let mut records: Vec<(Option<String>, Vec<u8>)> = sample_events(200, 41)
        .into_iter()
        // Quiet background: no failures, nothing HIGH or CRITICAL, no role grants (each of
        // those is an alert of its own under the shipped rules).
        .filter(|e| {
            e.success != Some(false)
                && !matches!(e.severity.as_deref(), Some("HIGH") | Some("CRITICAL"))
                && e.action.as_deref() != Some("grant_role")
        })
        .map(|e| (e.user_id.clone(), serde_json::to_vec(&e).expect("json")))
        .collect();
    for i in 0..12 {
        let ev = serde_json::json!({
            "id": format!("bf-{i}"),
            "timestamp": (base + chrono::Duration::seconds(i * 2)).to_rfc3339(),
            "action": "login", "resource": "authentication", "userId": "eve",
            "ipAddress": "198.51.100.7", "success": false, "severity": "HIGH",
            "errorMessage": "Invalid credentials"
        });
        records.push((Some("eve".into()), serde_json::to_vec(&ev).expect("json")));
    }
    env.produce_raw(&records);

    let mails = smtp.wait_for_mails(1, Duration::from_secs(90)).await;
    assert!(!mails.is_empty(), "an alert e-mail arrives (log {})", alert.log_path.display());
    // Let any further (wrong) notification surface before counting.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let alerts = read_topic(&format!("{}.security-alerts", env.id), 3, Duration::from_secs(3));
    let rows: Vec<(String, String, i32, i32)> = sqlx::query_as(
        "SELECT policy_id, rule_id, match_count, suppressed_count FROM audit_alerts ORDER BY first_seen",
    )
    .fetch_all(&env.pool)
    .await
    .expect("alerts");
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "exactly one e-mail for one brute force: {rows:?}");
    assert_eq!(alerts.len(), 1, "exactly one security-alerts record: {rows:?}");
    assert_eq!(rows.len(), 1, "one stored alert: {rows:?}");
    let record: serde_json::Value = serde_json::from_slice(&alerts[0].payload).expect("alert JSON");
    let (_, _, match_count, suppressed) = rows[0].clone();
    assert_eq!(record["suppressedCount"], suppressed, "{record}");
    assert_eq!(suppressed, match_count - 1);
    assert!(match_count >= 10, "the attempts that made the alert are folded into it: {rows:?}");
    assert!(mails[0].raw.contains("eve"), "the e-mail names the account");
}
