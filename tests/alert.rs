//! audit-rule-matches → audit-alert → PostgreSQL, e-mail, webhooks and security-alerts, on the
//! real local stack: Kafka, PostgreSQL, a real SMTP server (aiosmtpd, `scripts/smtp-sink.py`)
//! and a real HTTP receiver inside this test process.
//!
//! Needs `scripts/stack up` (which also installs aiosmtpd). Rule matches are produced directly,
//! as the rules stage would write them.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow::event::{Classification, ComplianceFlags, EnrichedEvent, Severity, SourcePosition};
use auditflow::rule_match::{RuleAction, RuleKind, RuleMatch};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::smtp::*;
use support::*;

// ---------------------------------------------------------------- fixtures

/// A request the HTTP receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
    /// Unix seconds on this process's clock when the request arrived.
    received_at: i64,
}

/// A local HTTP server answering 500 to the first `fail_first[path]` requests of a path, then 200.
#[derive(Clone)]
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(fail_first: HashMap<String, usize>) -> Receiver {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode, Uri};
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = got.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            let fail_first = fail_first.clone();
            async move {
                let path = uri.path().to_string();
                let mut got = state.lock().unwrap();
                let seen = got.iter().filter(|r| r.path == path).count();
                let code = if seen < fail_first.get(&path).copied().unwrap_or(0) { 500 } else { 200 };
                got.push(Received {
                    path,
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body: body.to_vec(),
                    answered: code,
                    received_at: Utc::now().timestamp(),
                });
                (StatusCode::from_u16(code).unwrap(), if code == 200 { "ok" } else { "try again" })
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self, path: &str) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

fn event(id: &str, user: &str, action: &str, success: bool, at: DateTime<Utc>) -> EnrichedEvent {
    EnrichedEvent {
        id: id.into(),
        timestamp: at,
        user_id: Some(user.into()),
        session_id: Some("sess-1".into()),
        action: action.into(),
        resource: "authentication".into(),
        resource_id: None,
        method: Some("POST".into()),
        endpoint: Some("/api/login".into()),
        status_code: Some(401),
        user_agent: Some("curl/8.0".into()),
        ip_address: Some("10.0.0.50".into()),
        ip: None,
        location: None,
        classification: Classification::Internal,
        severity: Severity::High,
        metadata: None,
        success,
        error_message: Some("Invalid credentials".into()),
        duration_ms: Some(12),
        compliance: ComplianceFlags::default(),
        source: SourcePosition { topic: "audit-raw".into(), partition: 0, offset: 0, timestamp_ms: None },
        enriched_at: at,
        asn: None,
    }
}

fn rule_match(rule: &str, ev: EnrichedEvent) -> RuleMatch {
    RuleMatch {
        match_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{rule}/{}", ev.id).as_bytes()).to_string(),
        rule_id: rule.into(),
        rule_name: "Multiple Failed Login Attempts".into(),
        kind: RuleKind::Pattern,
        severity: Severity::High,
        action: RuleAction::Alert,
        compliance: vec!["SOX".into(), "GDPR".into()],
        tags: vec!["attack.credential_access".into(), "attack.t1110".into()],
        group_key: BTreeMap::new(),
        window: None,
        evidence_event_ids: vec![ev.id.clone()],
        matched_at: ev.timestamp,
        event: Some(ev),
        detail: None,
    }
}

/// `n` failed logins of `user`, one second apart, ending now.
fn failed_logins(user: &str, n: usize, tag: &str) -> Vec<RuleMatch> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let at = now - chrono::Duration::seconds((n - i) as i64);
            rule_match("failed-login-attempts", event(&format!("{tag}-{user}-{i}"), user, "login", false, at))
        })
        .collect()
}

fn rule_matches_topic(env: &TestEnv) -> String {
    format!("{}.audit-rule-matches", env.id)
}

fn security_alerts_topic(env: &TestEnv) -> String {
    format!("{}.security-alerts", env.id)
}

fn produce_matches(env: &TestEnv, matches: &[RuleMatch]) {
    let records: Vec<(Option<String>, Vec<u8>)> = matches
        .iter()
        .map(|m| {
            let key = m.event.as_ref().and_then(|e| e.user_id.clone());
            (key, serde_json::to_vec(m).expect("json"))
        })
        .collect();
    produce(&rule_matches_topic(env), &records);
}

/// Configuration shared by the tests: the seed's failed-authentication policy alone (so one
/// burst makes exactly one alert), a short group wait, quick retries.
fn write_config(env: &TestEnv, body: &str) -> PathBuf {
    let path = env.log_dir.join("alert.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

const FAILED_AUTH_POLICY: &str = r#"
[alert]
group_wait_seconds = 2
poll_interval_ms = 250

[alert.retry]
initial_backoff_ms = 500
max_backoff_ms = 2000
budget_seconds = 120

[[alert.policies]]
id = "failed-authentication"
name = "Failed Authentication Attempts"
actions = ["login", "authentication"]
success = false
group_by = ["user_id"]
frequency = { count = 10, window_seconds = 600 }
suppression_window_seconds = 600
routes = ["security-team"]

[[alert.routes]]
name = "security-team"
channels = ["email"]
recipients = ["security@example.com"]
"#;

fn smtp_env(port: u16) -> Vec<(String, String)> {
    vec![
        ("AUDITFLOW_SMTP_HOST".into(), "127.0.0.1".into()),
        ("AUDITFLOW_SMTP_PORT".into(), port.to_string()),
        ("AUDITFLOW_SMTP_TLS".into(), "none".into()),
        ("AUDITFLOW_SMTP_FROM".into(), "auditflow alerts <alerts@auditflow.test>".into()),
        ("AUDITFLOW_OPS_RECIPIENTS".into(), "sre@example.org".into()),
    ]
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stored_offsets(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::bigint FROM stage_offsets")
        .fetch_one(&env.pool)
        .await
        .unwrap_or(-1)
}

#[derive(Debug, sqlx::FromRow)]
struct AlertRow {
    id: String,
    policy_id: String,
    status: String,
    match_count: i32,
    suppressed_count: i32,
    dispatched_suppressed_count: Option<i32>,
    evidence: i32,
}

async fn alerts(env: &TestEnv) -> Vec<AlertRow> {
    sqlx::query_as(
        "SELECT id::text AS id, policy_id, status, match_count, suppressed_count, dispatched_suppressed_count,
                cardinality(evidence_event_ids) AS evidence
           FROM audit_alerts ORDER BY created_at",
    )
    .fetch_all(&env.pool)
    .await
    .expect("alerts")
}

async fn deliveries(env: &TestEnv, channel: &str) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT attempt, outcome FROM alert_deliveries WHERE channel = $1 ORDER BY id")
        .bind(channel)
        .fetch_all(&env.pool)
        .await
        .expect("deliveries")
}

fn security_alerts(env: &TestEnv) -> Vec<(String, serde_json::Value)> {
    read_topic(&security_alerts_topic(env), 3, Duration::from_secs(2))
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.expect("keyed by alert id")).expect("utf-8 key"),
                serde_json::from_slice(&r.payload).expect("alert record is JSON"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- tests

/// (a) twelve failed logins of one user → one alert, one e-mail, one security-alerts record
/// that stands for all twelve (the first + 11 suppressed); (b) replays change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn twelve_failed_logins_make_one_alert_and_replays_change_nothing() {
    let mut env = TestEnv::new("alert_dedup", 3).await;
    let port = free_port();
    let smtp = SmtpSink::start(port);
    let config = write_config(&env, FAILED_AUTH_POLICY);
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.extend(smtp_env(port));
    let mut stage = env.start_stage("audit-alert", "a1");

    let burst = failed_logins("user456", 12, "burst");
    // Another user's two failures must neither count toward user456 nor alert on their own.
    let other = failed_logins("user789", 2, "other");
    produce_matches(&env, &burst);
    produce_matches(&env, &other);

    let mails = smtp.wait_for_mails(1, Duration::from_secs(60)).await;
    assert_eq!(mails.len(), 1, "one e-mail (logs: {})", stage.log_path.display());
    wait_until("the alert to be marked dispatched", Duration::from_secs(20), || async {
        alerts(&env).await.first().is_some_and(|a| a.status == "dispatched")
    })
    .await;

    let rows = alerts(&env).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let alert = &rows[0];
    assert_eq!(alert.policy_id, "failed-authentication");
    assert_eq!((alert.match_count, alert.suppressed_count), (12, 11), "{alert:?}");
    assert_eq!(alert.dispatched_suppressed_count, Some(11));
    assert_eq!(alert.evidence, 12);

    let mail = &mails[0];
    assert_eq!(mail.meta["rcpt_tos"], serde_json::json!(["security@example.com"]));
    let subject = mail.header("subject").expect("subject");
    // Users are named by their pseudonyms, everywhere an alert goes.
    let user456 = alert_pseudonym("user456");
    assert!(subject.contains("Failed Authentication Attempts") && subject.contains(&user456[..40]), "{subject}");
    assert_eq!(mail.header("message-id").as_deref(), Some(format!("<alert-{}@auditflow>", alert.id).as_str()));
    let plain = mail.part("text/plain");
    assert!(plain.contains("Matches: 12 (the first, and 11 suppressed)"), "{plain}");
    assert!(mail.part("text/html").contains(&format!("user_id={user456}")));
    // (Event ids are the upstream's and not personal; these ones happen to spell the user.)
    for part in [mail.part("text/plain"), mail.part("text/html"), subject.clone()] {
        for clear in ["user_id=user456", "User: user456", ">user456<"] {
            assert!(!part.contains(clear), "the user id left in the clear: {part}");
        }
    }

    let records = security_alerts(&env);
    assert_eq!(records.len(), 1, "{records:?}");
    let (key, record) = &records[0];
    assert_eq!(key, &alert.id);
    assert_eq!(record["alertId"], alert.id.as_str());
    assert_eq!(record["matchCount"], 12);
    assert_eq!(record["suppressedCount"], 11);
    assert_eq!(record["groupKey"], serde_json::json!({ "user_id": user456 }));
    assert_eq!(record["trigger"]["event"]["userId"], user456.as_str());
    assert!(!record.to_string().contains("\"user456\""), "{record}");
    assert_eq!(record["evidenceEventIds"].as_array().map(Vec::len), Some(12), "the evidence ids lead to the events");
    assert_eq!(record["policyId"], "failed-authentication");
    assert_eq!(record["trigger"]["ruleId"], "failed-login-attempts");

    // (b1) the same matches again, same match ids: nothing changes.
    produce_matches(&env, &burst);
    wait_until("the replay to be consumed", Duration::from_secs(60), || async { stored_offsets(&env).await >= 26 }).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // longer than the group wait
    let rows = alerts(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].match_count, rows[0].suppressed_count), (12, 11), "a replayed match is not counted twice");
    assert_eq!(smtp.mails().len(), 1, "no second e-mail");

    // (b2) rewind the stored offsets to the start and run the stage again.
    assert!(stage.terminate().success(), "clean stop");
    sqlx::query("UPDATE stage_offsets SET next_offset = 0").execute(&env.pool).await.expect("rewind");
    let mut stage = env.start_stage("audit-alert", "a1");
    wait_until("the rewound topic to be re-read", Duration::from_secs(60), || async {
        stored_offsets(&env).await >= 26
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rows = alerts(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].match_count, rows[0].suppressed_count), (12, 11));
    assert_eq!(smtp.mails().len(), 1, "no second e-mail after the rewind");
    assert_eq!(security_alerts(&env).len(), 1, "no second security-alerts record");

    // New matches inside the suppression window fold into the dispatched alert: counted,
    // not sent again.
    produce_matches(&env, &failed_logins("user456", 3, "later"));
    wait_until("three more matches to fold in", Duration::from_secs(30), || async {
        alerts(&env).await.first().is_some_and(|a| a.match_count == 15)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rows = alerts(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].suppressed_count, rows[0].dispatched_suppressed_count), (14, Some(11)));
    assert_eq!(smtp.mails().len(), 1);
    let delivered = deliveries(&env, "email").await;
    assert_eq!(delivered, vec![(1, "delivered".to_string())]);
    assert!(stage.is_running());
}

/// (c) SMTP down for 30 s: the e-mail is retried and arrives once the server is back.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_down_for_thirty_seconds_then_the_alert_arrives() {
    let mut env = TestEnv::new("alert_smtp_down", 1).await;
    let port = free_port();
    let config = write_config(&env, FAILED_AUTH_POLICY);
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.extend(smtp_env(port));
    let stage = env.start_stage("audit-alert", "c1");

    produce_matches(&env, &failed_logins("mallory", 10, "down"));
    wait_until("the first failed e-mail attempt", Duration::from_secs(60), || async {
        deliveries(&env, "email").await.iter().any(|(_, o)| o == "retrying")
    })
    .await;
    let down_since = Instant::now();
    // security-alerts does not wait for e-mail.
    wait_until("the security-alerts record", Duration::from_secs(30), || async {
        deliveries(&env, "kafka").await.iter().any(|(_, o)| o == "delivered")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
    assert_eq!(alerts(&env).await[0].status, "pending", "still retrying while SMTP is down");

    let smtp = SmtpSink::start(port);
    let mails = smtp.wait_for_mails(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1, "delivered after the server returned (logs: {})", stage.log_path.display());
    assert!(mails[0].part("text/plain").contains("Matches: 10 (the first, and 9 suppressed)"));
    wait_until("status dispatched", Duration::from_secs(10), || async {
        alerts(&env).await[0].status == "dispatched"
    })
    .await;
    let attempts = deliveries(&env, "email").await;
    let retries = attempts.iter().filter(|(_, o)| o == "retrying").count();
    assert!(retries >= 5, "retried while down: {attempts:?}");
    assert_eq!(attempts.last().map(|(_, o)| o.as_str()), Some("delivered"));
    assert!(!attempts.iter().any(|(_, o)| o == "failed"));
    assert_eq!(security_alerts(&env).len(), 1);
}

/// (d) a webhook that answers 500 twice: retried, then delivered, with a valid signature.
/// Slack gets the same alert, escaped for mrkdwn.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_failing_twice_is_retried_and_signed() {
    let mut env = TestEnv::new("alert_webhook", 1).await;
    let receiver = Receiver::start([("/hook".to_string(), 2)].into()).await;
    let secret = "whsec-test-7f3a";
    let config = write_config(
        &env,
        r#"
[alert]
group_wait_seconds = 1
poll_interval_ms = 250

[alert.retry]
initial_backoff_ms = 500
max_backoff_ms = 2000
budget_seconds = 60

[[alert.policies]]
id = "immediate"
name = "Immediate Rule Alerts"
rule_ids = ["privilege-escalation"]
group_by = ["user_id"]
frequency = { count = 1, window_seconds = 60 }
routes = ["chatops"]

[[alert.routes]]
name = "chatops"
channels = ["webhook", "slack"]
"#,
    );
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("AUDITFLOW_WEBHOOK_URL".into(), receiver.url("/hook")));
    // The receiver is plain http on 127.0.0.1.
    env.extra_env.push(("AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP".into(), "true".into()));
    env.extra_env.push(("AUDITFLOW_WEBHOOK_SECRET".into(), secret.into()));
    env.extra_env.push(("AUDITFLOW_SLACK_WEBHOOK_URL".into(), receiver.url("/slack")));
    let stage = env.start_stage("audit-alert", "d1");

    let mut m = rule_match(
        "privilege-escalation",
        event("esc-1", "eve <!channel>", "grant_role", true, Utc::now()),
    );
    m.rule_name = "Privilege Escalation <!here>".into();
    m.severity = Severity::Critical;
    m.action = RuleAction::Block;
    produce_matches(&env, &[m]);

    wait_until("three webhook requests", Duration::from_secs(60), || async { receiver.requests("/hook").len() >= 3 })
        .await;
    wait_until("status dispatched", Duration::from_secs(20), || async {
        alerts(&env).await.first().is_some_and(|a| a.status == "dispatched")
    })
    .await;
    let hooks = receiver.requests("/hook");
    assert_eq!(hooks.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 500, 200], "logs: {}", stage.log_path.display());
    let ok = &hooks[2];
    let signature = &ok.headers["x-auditflow-signature"];
    let timestamp: i64 = ok.headers["x-auditflow-timestamp"].parse().expect("unix seconds");
    // Fresh: signed when it was sent, not when the alert opened or at the first attempt.
    assert!(ok.received_at.abs_diff(timestamp) <= 5, "timestamp {timestamp}, received at {}", ok.received_at);
    // Independent check with the hmac crate, as a receiver would do it: HMAC of "<t>.<body>".
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&ok.body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(signature, &format!("t={timestamp},v1={expected}"));
    use auditflow::alert::channels::webhook::{verify, VerifyError};
    assert_eq!(verify(secret.as_bytes(), &ok.body, signature, ok.received_at, 300), Ok(()));
    assert_eq!(verify(b"wrong", &ok.body, signature, ok.received_at, 300), Err(VerifyError::Mismatch));
    // The same request replayed ten minutes later is refused.
    assert_eq!(verify(secret.as_bytes(), &ok.body, signature, timestamp + 600, 300), Err(VerifyError::Stale));
    assert_eq!(ok.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&ok.body).expect("JSON body");
    assert_eq!(ok.headers["x-auditflow-alert-id"], body["alertId"].as_str().unwrap());
    assert_eq!(body["policyId"], "immediate");
    assert_eq!(body["suppressedCount"], 0);
    assert!(hooks.iter().all(|r| r.body == ok.body), "every attempt sends the same signed body");

    let attempts = deliveries(&env, "webhook").await;
    assert_eq!(
        attempts,
        vec![(1, "retrying".to_string()), (2, "retrying".to_string()), (3, "delivered".to_string())]
    );

    let slack = receiver.requests("/slack");
    assert_eq!(slack.len(), 1);
    let text = serde_json::from_slice::<serde_json::Value>(&slack[0].body).unwrap()["text"].as_str().unwrap().to_string();
    assert!(text.contains("Privilege Escalation &lt;!here&gt;") && !text.contains("<!here>"), "{text}");
    assert!(!text.contains("eve &lt;") && text.contains(&alert_pseudonym("eve <!channel>")), "{text}");
    assert!(!String::from_utf8_lossy(&ok.body).contains("eve <"), "the webhook body names the user by pseudonym");
}

/// (e) hostile event fields: `<script>`, CR/LF header injection attempts, 100 KB strings.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_event_fields_are_escaped_and_cannot_inject_headers() {
    let mut env = TestEnv::new("alert_hostile", 1).await;
    let port = free_port();
    let smtp = SmtpSink::start(port);
    let config = write_config(
        &env,
        r#"
[alert]
group_wait_seconds = 1
poll_interval_ms = 250

[[alert.policies]]
id = "immediate"
name = "Immediate Rule Alerts"
frequency = { count = 1, window_seconds = 60 }
group_by = ["user_id"]

[[alert.routes]]
name = "security-team"
channels = ["email"]
recipients = ["security@example.com"]
"#,
    );
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.extend(smtp_env(port));
    // Personal fields in the clear (the operator's opt-in): they must be escaped like the rest.
    env.extra_env.push(("AUDITFLOW_ALERT_INCLUDE_PERSONAL_FIELDS".into(), "true".into()));
    let mut stage = env.start_stage("audit-alert", "e1");

    let user = "<script>alert('owned')</script>\r\nBcc: victim@evil.example\r\nX-Injected: yes";
    let mut ev = event("hostile-1", user, "login\r\nSubject: you have been hacked\r\n\r\n<h1>body</h1>", false, Utc::now());
    ev.resource = "A".repeat(100 * 1024);
    ev.error_message = Some(format!("{}<script>x()</script>", "E".repeat(100 * 1024)));
    ev.user_agent = Some("<img src=x onerror=alert(1)>".into());
    ev.endpoint = Some("/x\nContent-Type: text/html".into());
    ev.resource_id = Some("</td></tr></table><script>steal()</script>".into());
    ev.metadata = Some(serde_json::json!({ "big": "M".repeat(100 * 1024), "note": "<b>bold</b>" }));
    let mut m = rule_match("failed-login-attempts", ev);
    m.rule_name = "Brute force\r\nReply-To: attacker@evil.example".into();
    produce_matches(&env, &[m]);

    let mails = smtp.wait_for_mails(1, Duration::from_secs(60)).await;
    assert_eq!(mails.len(), 1, "logs: {}", stage.log_path.display());
    let mail = &mails[0];
    assert_eq!(mail.meta["rcpt_tos"], serde_json::json!(["security@example.com"]), "no injected recipient");
    let names = mail.header_names();
    for bad in ["bcc", "x-injected", "reply-to"] {
        assert!(!names.contains(&bad.to_string()), "{bad} header injected: {names:?}");
    }
    for once in ["subject", "to", "from", "content-type"] {
        assert_eq!(names.iter().filter(|n| *n == once).count(), 1, "{once}: {names:?}");
    }
    let allowed = ["from", "to", "subject", "message-id", "date", "mime-version", "content-type", "content-transfer-encoding"];
    assert!(names.iter().all(|n| allowed.contains(&n.as_str())), "unexpected header in {names:?}");
    let subject = mail.header("subject").unwrap();
    assert!(!subject.contains('\n') && !subject.contains('\r'), "{subject:?}");

    let html = mail.part("text/html");
    assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("<h1>"), "markup reached the HTML");
    assert!(html.contains("&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;"));
    assert!(html.contains("&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;"));
    assert!(html.contains("[truncated, 102400 characters]"), "long fields are cut and say so: {}", &html[html.find("truncated").unwrap_or(0).saturating_sub(200)..][..400]);
    assert!(html.len() < 60_000, "HTML part is {} bytes", html.len());
    let plain = mail.part("text/plain");
    for line in plain.lines() {
        for fake in ["Bcc:", "X-Injected:", "Subject:", "Reply-To:", "Content-Type:"] {
            assert!(!line.starts_with(fake), "a value started its own line: {line:?}");
        }
    }
    assert!(mail.raw.len() < 200_000, "message is {} bytes", mail.raw.len());

    let records = security_alerts(&env);
    assert_eq!(records.len(), 1);
    let trigger = &records[0].1["trigger"]["event"];
    assert!(trigger["resource"].as_str().unwrap().len() < 5000, "published strings are cut");
    assert!(stage.is_running(), "no crash");
    assert_eq!(stage.terminate().code(), Some(0));
}

/// A delivery that still fails when the retry budget is spent: recorded, dead-lettered with
/// the reason, alert `failed`; security-alerts still has the alert.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_failing_past_its_budget_is_dead_lettered() {
    let mut env = TestEnv::new("alert_dlq", 1).await;
    let receiver = Receiver::start([("/down".to_string(), usize::MAX)].into()).await;
    let config = write_config(
        &env,
        r#"
[alert]
group_wait_seconds = 1
poll_interval_ms = 250

[alert.retry]
initial_backoff_ms = 300
max_backoff_ms = 1000
budget_seconds = 3

[[alert.policies]]
id = "immediate"
name = "Immediate Rule Alerts"
frequency = { count = 1, window_seconds = 60 }

[[alert.routes]]
name = "hooks"
channels = ["webhook"]
"#,
    );
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("AUDITFLOW_WEBHOOK_URL".into(), receiver.url("/down")));
    // The receiver is plain http on 127.0.0.1.
    env.extra_env.push(("AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP".into(), "true".into()));
    env.extra_env.push(("AUDITFLOW_WEBHOOK_SECRET".into(), "s".into()));
    let stage = env.start_stage("audit-alert", "f1");
    produce_matches(&env, &failed_logins("trudy", 1, "dlq"));

    wait_until("status failed", Duration::from_secs(60), || async {
        alerts(&env).await.first().is_some_and(|a| a.status == "failed")
    })
    .await;
    let attempts = deliveries(&env, "webhook").await;
    assert!(attempts.len() >= 3, "retried within the budget: {attempts:?}");
    assert_eq!(attempts.last().map(|(_, o)| o.as_str()), Some("failed"));
    assert_eq!(receiver.requests("/down").len(), attempts.len());

    let dead = read_topic(&format!("{}.audit-alert-dlq", env.id), 1, Duration::from_secs(2));
    assert_eq!(dead.len(), 1, "logs: {}", stage.log_path.display());
    let d = &dead[0];
    let id = alerts(&env).await[0].id.clone();
    assert_eq!(d.key.as_deref(), Some(id.as_bytes()));
    assert_eq!(d.headers["dlq.stage"], "alert");
    assert_eq!(d.headers["dlq.error.kind"], "delivery_failed");
    assert_eq!(d.headers["dlq.alert.channel"], "webhook");
    assert!(d.headers["dlq.error.message"].contains("HTTP 500"), "{:?}", d.headers);
    let record: serde_json::Value = serde_json::from_slice(&d.payload).expect("the alert record");
    assert_eq!(record["alertId"], id.as_str());
    assert_eq!(security_alerts(&env).len(), 1, "analysts still get the alert");
}

/// Two instances share the dispatching: every alert is sent once.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_send_each_alert_once() {
    let mut env = TestEnv::new("alert_two", 4).await;
    let receiver = Receiver::start(HashMap::new()).await;
    let config = write_config(
        &env,
        r#"
[alert]
group_wait_seconds = 1
poll_interval_ms = 100

[[alert.policies]]
id = "immediate"
name = "Immediate Rule Alerts"
frequency = { count = 1, window_seconds = 60 }
group_by = ["user_id"]

[[alert.routes]]
name = "hooks"
channels = ["webhook"]
"#,
    );
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("AUDITFLOW_WEBHOOK_URL".into(), receiver.url("/hook")));
    // The receiver is plain http on 127.0.0.1.
    env.extra_env.push(("AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP".into(), "true".into()));
    env.extra_env.push(("AUDITFLOW_WEBHOOK_SECRET".into(), "s".into()));
    let _a = env.start_stage("audit-alert", "i1");
    let _b = env.start_stage("audit-alert", "i2");
    let users = 40;
    let matches: Vec<RuleMatch> = (0..users).flat_map(|u| failed_logins(&format!("user{u}"), 2, "two")).collect();
    produce_matches(&env, &matches);

    wait_until("every alert dispatched", Duration::from_secs(90), || async {
        let rows = alerts(&env).await;
        rows.len() == users && rows.iter().all(|a| a.status == "dispatched")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids: Vec<String> = receiver
        .requests("/hook")
        .iter()
        .map(|r| r.headers["x-auditflow-alert-id"].clone())
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((n, ids.len()), (users, users), "each alert delivered exactly once");
    for a in alerts(&env).await {
        assert_eq!((a.match_count, a.suppressed_count), (2, 1), "{a:?}");
    }
}

fn privilege_escalation(user: &str) -> RuleMatch {
    let mut m = rule_match("privilege-escalation", event(&format!("esc-{user}"), user, "grant_role", true, Utc::now()));
    m.rule_name = "Privilege Escalation".into();
    m.severity = Severity::Critical;
    m.action = RuleAction::Block;
    m
}

/// A privilege escalation under the shipped policies reaches `security-alerts` as soon as the
/// sink commits it: the dispatcher's poll interval is ten minutes here, so only the sink's
/// wake-up can deliver it within the test. Twice, so a wake-up after the first dispatch works
/// too; then a burst far larger than one claim, which must drain without waiting for a poll.
#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_alert_goes_out_on_commit_not_at_the_next_poll() {
    let mut env = TestEnv::new("alert_wake", 3).await;
    // The shipped policies; claims of two alerts, so the burst below is many claims.
    let config = write_config(&env, "[alert]\ndispatch_batch = 2\n");
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("AUDITFLOW_ALERT_POLL_INTERVAL_MS".into(), "600000".into()));
    let stage = env.start_stage("audit-alert", "w1");

    // The dispatcher's first poll happens at start; the next would be ten minutes later.
    let addr = http_addr(&stage);
    wait_until("the dispatcher's first poll", Duration::from_secs(30), || {
        let addr = addr.clone();
        async move {
            let (_, metrics) = http_get(&addr, "/metrics");
            metrics.lines().any(|l| {
                l.starts_with("auditflow_alert_dispatcher_polls_total{")
                    && l.contains("outcome=\"ok\"")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 1.0)
            })
        }
    })
    .await;

    for (n, user) in ["mallory", "trudy"].into_iter().enumerate() {
        produce_matches(&env, &[privilege_escalation(user)]);
        wait_until(&format!("alert {} on security-alerts", n + 1), Duration::from_secs(30), || async {
            security_alerts(&env).len() > n
        })
        .await;
        let records = security_alerts(&env);
        assert_eq!(records.len(), n + 1, "one record per alert (logs: {})", stage.log_path.display());
        let record = records.iter().map(|(_, r)| r).find(|r| r["groupKey"]["user_id"] == alert_pseudonym(user).as_str()).expect("this user's alert");
        assert_eq!(record["policyId"], "immediate", "{record}");
    }
    wait_until("both alerts marked dispatched", Duration::from_secs(10), || async {
        let rows = alerts(&env).await;
        rows.len() == 2 && rows.iter().all(|a| a.status == "dispatched")
    })
    .await;

    let burst: Vec<RuleMatch> = (0..30).map(|u| privilege_escalation(&format!("burst{u}"))).collect();
    produce_matches(&env, &burst);
    wait_until("every alert of the burst dispatched", Duration::from_secs(30), || async {
        let rows = alerts(&env).await;
        rows.len() == 32 && rows.iter().all(|a| a.status == "dispatched")
    })
    .await;
    assert_eq!(security_alerts(&env).len(), 32, "one record per alert (logs: {})", stage.log_path.display());
}

/// Matches at the edges of time: the last representable second is an alert like any other;
/// times the stage cannot do date arithmetic on are dead letters, and the stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn extreme_match_times_are_alerts_or_dead_letters_never_a_halt() {
    let mut env = TestEnv::new("alert_extreme", 1).await;
    let config = write_config(
        &env,
        r#"
[alert]
group_wait_seconds = 0
poll_interval_ms = 250

[[alert.policies]]
id = "immediate"
name = "Immediate Rule Alerts"
group_by = ["user_id"]
frequency = { count = 1, window_seconds = 60 }
routes = []
"#,
    );
    env.extra_env.push(("AUDITFLOW_CONFIG".into(), config.display().to_string()));
    let mut stage = env.start_stage("audit-alert", "x1");
    let now = Utc::now();
    let mut matches: Vec<RuleMatch> =
        (0..5).map(|i| rule_match("failed-login-attempts", event(&format!("n{i}"), &format!("u{i}"), "login", false, now))).collect();
    let last_second = "9999-12-31T23:59:59Z".parse::<DateTime<Utc>>().expect("time");
    let year_one = "0001-01-01T00:00:00Z".parse::<DateTime<Utc>>().expect("time");
    let far = chrono::NaiveDate::from_ymd_opt(100_000, 1, 1).expect("date").and_hms_opt(0, 0, 0).expect("time").and_utc();
    for (id, at) in [("end-of-time", last_second), ("year-one", year_one), ("year-100000", far)] {
        let mut m = rule_match("failed-login-attempts", event(id, id, "login", false, now));
        m.matched_at = at;
        matches.push(m);
    }
    produce_matches(&env, &matches);
    wait_until("every match consumed", Duration::from_secs(60), || async {
        stored_offsets(&env).await >= matches.len() as i64
    })
    .await;
    let dead = read_topic(&env.dlq, 3, Duration::from_secs(2));
    let rows = alerts(&env).await;
    assert_eq!(rows.len() + dead.len(), matches.len(), "alerts + dead letters = matches: {rows:?}");
    assert_eq!(dead.len(), 2, "year 1 and year 100000 are refused with a reason");
    let last: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT max(first_seen) FROM audit_alerts").fetch_one(&env.pool).await.expect("max");
    assert_eq!(last, Some(last_second), "the last second of year 9999 is an alert like any other");
    for d in &dead {
        assert_eq!(d.headers.get("dlq.error.kind").map(String::as_str), Some("invalid_timestamp"), "{:?}", d.headers);
    }
    assert!(stage.is_running(), "the stage goes on: {}", stage.log());
}
