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

/// Where the stack put the current geolocation and AS data (`scripts/stack geoip`, run by
/// `scripts/test`).
fn geodata() -> (String, String) {
    let root = repo_root().join(".stack/geoip");
    let city = std::env::var("AUDITFLOW_GEOIP_DB").unwrap_or_else(|_| root.join("city").display().to_string());
    let asn = std::env::var("AUDITFLOW_ASN_DB").unwrap_or_else(|_| root.join("asn").display().to_string());
    for p in [&city, &asn] {
        assert!(std::path::Path::new(p).exists(), "{p} missing: run scripts/stack geoip");
    }
    (city, asn)
}

const WHERE_RULES: &str = r#"rules:
  - id: impossible-travel
    name: Impossible travel
    severity: HIGH
    action: ALERT
    tags: [attack.initial_access, attack.t1078]
    match: { text: { regex: "login" }, success: true }
    travel: { max_speed_kmh: 900, within: 24h, min_distance_km: 100, group_by: [user_id] }
  - id: new-country-for-user
    name: First login from a new country
    severity: MEDIUM
    action: ALERT
    match: { text: { regex: "login" }, success: true }
    first_seen: { field: country_code, group_by: [user_id], learning: 1h, forget_after: 90d }
  - id: new-network-for-user
    name: First login from a new network
    severity: LOW
    action: ALERT
    match: { text: { regex: "login" }, success: true }
    first_seen: { field: asn, group_by: [user_id], learning: 1h, forget_after: 90d }
"#;

/// Raw events → audit-enrich with the real GeoLite2 City and AS data → audit-rules: impossible
/// travel and first sightings of a country and a network, placed by real lookups of university
/// networks; the same matches, and no others, after a replay.
#[tokio::test(flavor = "multi_thread")]
async fn impossible_travel_and_new_countries_from_real_geolocation() {
    let (city, asn) = geodata();
    let mut env = TestEnv::new("geo_detect", 2).await;
    let rules = tempfile::tempdir().expect("tempdir");
    std::fs::write(rules.path().join("where.yaml"), WHERE_RULES).expect("rules");
    env.extra_env.extend([
        ("AUDITFLOW_GEOIP_DB".to_string(), city),
        ("AUDITFLOW_ASN_DB".to_string(), asn),
        ("AUDITFLOW_REDIS_PREFIX".to_string(), format!("test:{}:", env.id)),
        ("AUDITFLOW_RULES_DIR".to_string(), rules.path().display().to_string()),
    ]);
    let enrich = env.start_stage("audit-enrich", "e1");
    let rules_stage = env.start_stage("audit-rules", "r1");

    // (user, address, minutes before now): New York, Tokyo, London, Frankfurt, Paris.
    let (ny, tokyo, london, frankfurt, paris) = ("128.59.1.1", "133.11.1.1", "144.82.1.1", "141.2.1.1", "134.157.1.1");
    let now = chrono::Utc::now();
    let plan = [
        ("alice", ny, 180), ("alice", ny, 120), ("alice", tokyo, 60), // 10,800 km in an hour, and a new country and network
        ("bob", ny, 180), ("bob", ny, 100), ("bob", london, 95),      // 5,500 km in five minutes
        ("carol", frankfurt, 180), ("carol", frankfurt, 120), ("carol", paris, 60), // 480 km in an hour: a train
        ("dave", "10.1.2.3", 180), ("dave", "10.9.9.9", 60),          // private addresses are not placed
    ];
    let records: Vec<(Option<String>, Vec<u8>)> = plan
        .iter()
        .enumerate()
        .map(|(i, (user, ip, ago))| {
            let ev = serde_json::json!({
                "id": format!("{}-g{i:02}", env.id), "timestamp": (now - chrono::Duration::minutes(*ago)).to_rfc3339(),
                "action": "login", "resource": "authentication", "userId": user, "ipAddress": ip, "success": true,
            });
            (Some(user.to_string()), serde_json::to_vec(&ev).expect("json"))
        })
        .collect();
    env.produce_raw(&records);

    let matches_topic = format!("{}.audit-rule-matches", env.id);
    let read = || -> Vec<auditflow::rule_match::RuleMatch> {
        read_topic(&matches_topic, 2, Duration::from_secs(2)).iter().map(|r| serde_json::from_slice(&r.payload).expect("a match")).collect()
    };
    let start = std::time::Instant::now();
    let mut got = read();
    while got.len() < 4 && start.elapsed() < Duration::from_secs(90) {
        got = read();
    }
    std::thread::sleep(Duration::from_secs(3));
    got = read();
    let of = |rule: &str| -> Vec<&auditflow::rule_match::RuleMatch> { got.iter().filter(|m| m.rule_id == rule).collect() };
    let travel = of("impossible-travel");
    assert_eq!(travel.len(), 2, "alice and bob, not carol or dave: {got:#?}\n{}\n{}", enrich.log(), rules_stage.log());
    let alice = travel.iter().find(|m| m.group_key.get("user_id").map(String::as_str) == Some("alice")).expect("alice's travel");
    let d = alice.detail.as_ref().expect("detail");
    assert_eq!((d["from"]["countryCode"].as_str(), d["to"]["countryCode"].as_str()), (Some("US"), Some("JP")), "{d}");
    assert!(d["to"]["place"].as_str().unwrap_or_default().starts_with("Tokyo"), "{d}");
    let km = d["distanceKm"].as_u64().unwrap_or_default();
    assert!((10_700..11_000).contains(&km), "{km} km from New York to Tokyo");
    assert_eq!(d["minutes"], 60);
    assert_eq!(alice.tags, ["attack.initial_access", "attack.t1078"]);
    let bob = travel.iter().find(|m| m.group_key.get("user_id").map(String::as_str) == Some("bob")).expect("bob's travel");
    assert_eq!(bob.detail.as_ref().map(|d| d["to"]["countryCode"].clone()), Some(serde_json::json!("GB")));
    let new_country = of("new-country-for-user");
    assert_eq!(new_country.len(), 3, "alice (JP), bob (GB) and carol (FR), each after more than an hour of history: {got:#?}");
    assert!(new_country.iter().any(|m| m.detail.as_ref().is_some_and(|d| d["value"] == "JP" && d["field"] == "country_code")));
    assert!(new_country.iter().any(|m| m.detail.as_ref().is_some_and(|d| d["value"] == "FR")));
    // The enriched events carry the networks the AS data names for these universities.
    let tokyo_login = alice.event.as_ref().expect("the triggering event");
    assert_eq!(tokyo_login.asn.as_ref().map(|a| a.number), Some(2501), "{tokyo_login:?}");
    assert!(of("new-network-for-user").iter().any(|m| m.group_key.get("user_id").map(String::as_str) == Some("alice")));
    let first = got.clone();

    // Replayed by a new group: the same match ids, nothing new.
    let group = format!("{}-replay", env.id);
    let _replay = env.start_stage_with("audit-rules", "r2", &[("AUDITFLOW_GROUP_ID", group.as_str())]);
    let start = std::time::Instant::now();
    while read().len() < 2 * first.len() && start.elapsed() < Duration::from_secs(90) {}
    std::thread::sleep(Duration::from_secs(3));
    let all = read();
    assert_eq!(all.len(), 2 * first.len(), "each match once more, identical");
    let ids: std::collections::BTreeSet<&str> = all.iter().map(|m| m.match_id.as_str()).collect();
    assert_eq!(ids.len(), first.len());
}
