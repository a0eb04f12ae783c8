//! `audit-api` against the real Kafka, PostgreSQL and OpenSearch of the local stack, with
//! tokens made by a JWT library: who may call what (every route × every role and every kind
//! of bad token), clearance over hits, totals and histograms, personal fields only with scope
//! and reason, every read audited into `audit_events`, 10,000 events over HTTP with retries →
//! exactly 10,000 rows, and query parameters that stay data.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use auditflow::api::auth::Role;
use auditflow::api::routes::{Access, ROUTES};
use auditflow::event::Classification;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;
use tokio::sync::Mutex;

/// The tests share one OpenSearch node with tests/index.rs's outage test: one at a time here.
static SERIAL: Mutex<()> = Mutex::const_new(());

const SECRET: &str = "api-test-secret-of-at-least-32-bytes!!";

fn vector(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/vectors/jwt").join(name)).expect("test key")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str, roles: &[Role], clearance: Classification, scope: Option<&str>, aud: &str, exp: i64) -> Value {
    let mut c = json!({
        "sub": sub, "iss": "auditflow", "aud": aud, "exp": exp, "nbf": now() - 5, "iat": now() - 5,
        "clearance": clearance.as_str(),
        "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
    });
    if let Some(s) = scope {
        c["scope"] = json!(s);
    }
    c
}

fn hs(c: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), c, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign")
}

fn token(sub: &str, roles: &[Role], clearance: Classification, scope: Option<&str>) -> String {
    hs(&claims(sub, roles, clearance, scope, "auditflow-api", now() + 600))
}

/// Every kind of token that must be refused with 401.
fn bad_tokens() -> Vec<(&'static str, Option<String>)> {
    let all = Role::ALL;
    let good = claims("mallory", &all, Classification::Restricted, Some("pii:read"), "auditflow-api", now() + 600);
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("test-rsa-1".into());
    let other_rsa = EncodingKey::from_rsa_pem(vector("other-rsa-private.pem").as_bytes()).expect("pem");
    let mut rs_other = Header::new(Algorithm::RS256);
    rs_other.kid = Some("test-rsa-1".into());
    vec![
        ("no token", None),
        ("expired", Some(hs(&claims("mallory", &all, Classification::Restricted, None, "auditflow-api", now() - 3600)))),
        ("wrong audience", Some(hs(&claims("mallory", &all, Classification::Restricted, None, "another-api", now() + 600)))),
        ("alg none", Some(format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good)))),
        // HS256 keyed with the RSA key's public material, naming the RSA key.
        ("HS/RS confusion", Some(jsonwebtoken::encode(&confused, &good, &EncodingKey::from_secret(vector("jwks.json").as_bytes())).expect("sign"))),
        ("another signer", Some(jsonwebtoken::encode(&rs_other, &good, &other_rsa).expect("sign"))),
        ("garbage", Some("not.a.token".into())),
    ]
}

struct Api {
    process: StageProcess,
    base: String,
    http: reqwest::Client,
}

fn start_api(env: &TestEnv, extra: &[(&str, &str)]) -> Api {
    let jwks = repo_root().join("tests/vectors/jwt/jwks.json").display().to_string();
    let mut vars: Vec<(&str, &str)> = vec![
        ("AUDITFLOW_API_LISTEN", "127.0.0.1:0"),
        ("AUDITFLOW_JWT_SECRET", SECRET),
        ("AUDITFLOW_JWKS_FILE", &jwks),
    ];
    vars.extend_from_slice(extra);
    serving(env.start_binary(env!("CARGO_BIN_EXE_audit-api"), "audit-api", "1", &vars))
}

/// The API once it has logged its address.
fn serving(process: StageProcess) -> Api {
    let base = api_base(&process);
    // Redirects are answers to check (the console's sign-in), not to follow.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).redirect(reqwest::redirect::Policy::none()).build().expect("client");
    Api { process, base, http }
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, Vec<u8>)>, headers: &[(&str, &str)]) -> (u16, Value, String) {
        let url = format!("{}{}", self.base, path);
        let mut req = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            other => self.http.request(other.parse().expect("method"), &url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some((media, bytes)) = body {
            req = req.header("content-type", media).body(bytes);
        }
        let r = req.send().await.expect("request sent");
        let status = r.status().as_u16();
        let media = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let r_csp = r.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).map(str::to_string);
        let location = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = match location {
            Some(l) => format!("redirect to {l}"),
            // A live stream (the console's alert changes) runs for minutes: its status is the answer.
            None if media.starts_with("text/event-stream") => String::new(),
            None => r.text().await.unwrap_or_default(),
        };
        if status >= 400 && !path.starts_with("/ui") {
            assert!(media.starts_with("application/problem+json"), "{method} {path}: error {status} as {media:?}: {text}");
        }
        if path.starts_with("/ui") && media.starts_with("text/html") {
            assert!(r_csp.as_deref().is_some_and(|c| c.contains("default-src 'none'")), "{method} {path}: console page without its CSP");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, v, _) = self.call("GET", path, Some(token), None, &[]).await;
        (s, v)
    }

    async fn post_json(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call("POST", path, Some(token), Some(("application/json", body.to_string().into_bytes())), &[]).await;
        (s, v)
    }
}

/// A login in `auditflow_api` for this test's database: the API runs with exactly its grants.
async fn api_login(env: &TestEnv) -> String {
    let name = format!("t_{}", env.id);
    let admin = sqlx::PgPool::connect(&admin_database_url()).await.expect("admin");
    sqlx::query(&format!("CREATE ROLE \"{name}\" LOGIN PASSWORD 'test-only' IN ROLE auditflow_api")).execute(&admin).await.expect("create login");
    admin.close().await;
    let url = env.database_url.replacen("auditflow:auditflow@", &format!("{name}:test-only@"), 1);
    assert!(url.contains(&name), "database URL not of the form user:password@…");
    url
}

fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::new_v4().to_string())
        .replace("{kind}", "user")
        .replace("{subject}", "nobody")
        .replace("{framework}", "sox")
        .replace("{partition}", "0")
        .replace("{offset}", "0")
        .replace("{file}", "report.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_role_and_every_bad_token_as_its_rule_says() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("api_matrix", 1).await;
    let api = start_api(&env, &[]);

    // The router is built from handlers(); every handler has a rule and every rule a handler.
    let handlers: BTreeSet<(&str, &str)> = auditflow::api::server::handlers().iter().map(|(m, p, _)| (*m, *p)).collect();
    let rules: BTreeSet<(&str, &str)> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(handlers, rules, "every endpoint needs an access rule in api::routes::ROUTES");

    let mut checked = 0;
    for (method, path, _) in auditflow::api::server::handlers() {
        let rule = ROUTES.iter().find(|r| r.method == method && r.path == path).expect("rule");
        let url = concrete(path);
        let body = (method == "POST").then(|| ("application/json", b"{}".to_vec()));
        match rule.access {
            Access::Anyone => {
                let (s, _, _) = api.call(method, &url, None, body.clone(), &[]).await;
                // Sign-in through an identity provider exists only where one is configured
                // (tests/console.rs covers it); this API has none.
                let expected = if path.starts_with("/ui/oidc/") { 404 } else { rule.ok.0 };
                assert_eq!(s, expected, "{method} {path} is public");
            }
            Access::Roles { any_of, clearance } => {
                // The console sends a browser without a valid session to its sign-in page.
                let console = path.starts_with("/ui");
                let to_sign_in = |s: u16, text: &str| console && s == 303 && text.contains("/ui/login");
                for (what, t) in bad_tokens() {
                    let (s, _, text) = api.call(method, &url, t.as_deref(), body.clone(), &[]).await;
                    assert!(if console { to_sign_in(s, &text) } else { s == 401 }, "{method} {path} with {what}: {s} {text}");
                    if let Some(t) = &t {
                        assert!(!text.contains(t.as_str()), "the token is never echoed");
                    }
                }
                for role in Role::ALL {
                    let t = token("matrix", &[role], Classification::Restricted, None);
                    let (s, _, text) = api.call(method, &url, Some(&t), body.clone(), &[]).await;
                    if any_of.contains(&role) {
                        assert!(s != 401 && s != 403 && !to_sign_in(s, &text), "{method} {path} admits {role}: got {s} {text}");
                    } else {
                        assert_eq!(s, 403, "{method} {path} refuses {role}: {text}");
                    }
                }
                if clearance > Classification::Public {
                    let t = token("matrix", any_of, Classification::Confidential, None);
                    let (s, _, _) = api.call(method, &url, Some(&t), body.clone(), &[]).await;
                    assert_eq!(s, 403, "{method} {path} needs clearance {}", clearance.as_str());
                }
                // An identity provider's key (RS256 from the JWKS) works like the secret.
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some("test-rsa-1".into());
                let rsa = EncodingKey::from_rsa_pem(vector("rsa-private.pem").as_bytes()).expect("pem");
                let t = jsonwebtoken::encode(&h, &claims("oidc-user", any_of, Classification::Restricted, None, "auditflow-api", now() + 600), &rsa).expect("sign");
                let (s, _, text) = api.call(method, &url, Some(&t), body.clone(), &[]).await;
                assert!(s != 401 && s != 403 && !to_sign_in(s, &text), "{method} {path} with an RS256 token: {s} {text}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, ROUTES.len());
    // Unknown paths are 404 problems, not a route without a rule.
    let (s, _, _) = api.call("GET", "/v1/nothing-here", None, None, &[]).await;
    assert_eq!(s, 404);
    // The served OpenAPI document is the committed one.
    let (_, served, _) = api.call("GET", "/openapi.json", None, None, &[]).await;
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("schemas/openapi.json")).expect("committed")).expect("json");
    assert_eq!(served, committed);
    drop(api.process);
}

async fn wait_rows(env: &TestEnv, sql: &str, expected: i64, timeout: Duration) -> i64 {
    let start = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap_or(-1);
        if n >= expected || start.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn event(i: usize, marker: &str, classification: &str, user: &str) -> Value {
    json!({
        "action": if i.is_multiple_of(2) { "login" } else { "record.read" },
        "resource": marker,
        "userId": user,
        "ipAddress": format!("10.20.{}.{}", i % 200, i % 250 + 1),
        "classification": classification,
        "severity": "LOW",
        "success": !i.is_multiple_of(3),
        "metadata": {"n": i},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearance_pii_self_audit_and_injection_on_the_live_pipeline() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("api_reads", 2).await;
    let _enrich = env.start_stage("audit-enrich", "1");
    let _persist = env.start_stage("audit-persist", "1");
    let _index = env.start_stage("audit-index", "1");
    let login = api_login(&env).await;
    let api = start_api(&env, &[("AUDITFLOW_DATABASE_URL", &login)]);
    let keys = test_keys();
    let marker = format!("res-{}", env.id);
    let ingest = token("svc-ingest", &[Role::Ingest], Classification::Public, None);

    // 10 events of each classification, all for one user.
    let classes = ["PUBLIC", "INTERNAL", "CONFIDENTIAL", "RESTRICTED"];
    let mut body = String::new();
    for (c, class) in classes.iter().enumerate() {
        for i in 0..10 {
            body.push_str(&event(c * 10 + i, &marker, class, "carol@example.com").to_string());
            body.push('\n');
        }
    }
    let (s, r, text) = api.call("POST", "/v1/events", Some(&ingest), Some(("application/x-ndjson", body.into_bytes())), &[]).await;
    assert_eq!(s, 202, "{text}");
    assert_eq!(r["accepted"], 40);
    let ids: Vec<String> = r["ids"].as_array().expect("ids").iter().map(|v| v["id"].as_str().expect("id").to_string()).collect();
    let marked = format!("SELECT count(*) FROM audit_events WHERE resource = '{marker}'");
    assert_eq!(wait_rows(&env, &marked, 40, Duration::from_secs(90)).await, 40);

    // Searchable once indexed.
    let auditor = token("auditor-1", &[Role::Auditor], Classification::Restricted, None);
    let start = Instant::now();
    loop {
        let (_, v) = api.get(&format!("/v1/events?resource={marker}&limit=1"), &auditor).await;
        if v["total"] == 40 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "never indexed: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Clearance: results, totals and histogram leave out what is above it.
    for (level, clearance) in Classification::ALL.iter().enumerate() {
        let t = token("analyst-c", &[Role::Analyst], *clearance, None);
        let (s, v) = api.get(&format!("/v1/events?resource={marker}&limit=100&interval=1d"), &t).await;
        assert_eq!(s, 200, "{v}");
        let expected = 10 * (level + 1);
        assert_eq!(v["total"], expected, "clearance {}", clearance.as_str());
        assert_eq!(v["hits"].as_array().map(Vec::len), Some(expected));
        let in_histogram: u64 = v["histogram"].as_array().expect("histogram").iter().map(|b| b["count"].as_u64().unwrap_or(0)).sum();
        assert_eq!(in_histogram, expected as u64, "histogram for {}", clearance.as_str());
        for h in v["hits"].as_array().expect("hits") {
            let c: Classification = h["classification"].as_str().expect("classification").parse().expect("known");
            assert!(c <= *clearance);
        }
        // Asking for a classification above the clearance finds nothing, not an error.
        let (_, v) = api.get(&format!("/v1/events?resource={marker}&classification=RESTRICTED"), &t).await;
        assert_eq!(v["total"], if *clearance == Classification::Restricted { 10 } else { 0 });
    }
    // By id: a RESTRICTED event is not there for a PUBLIC caller (the same 404 as a missing id).
    let public = token("analyst-p", &[Role::Analyst], Classification::Public, None);
    let restricted_id = &ids[35];
    let (s, missing) = api.get(&format!("/v1/events/{restricted_id}"), &public).await;
    let (s2, missing2) = api.get("/v1/events/no-such-event", &public).await;
    assert_eq!((s, s2), (404, 404));
    assert_eq!(missing["detail"], missing2["detail"]);

    // Cursor pagination walks every hit exactly once.
    let mut seen = BTreeSet::new();
    let mut path = format!("/v1/events?resource={marker}&limit=7");
    loop {
        let (_, v) = api.get(&path, &auditor).await;
        for h in v["hits"].as_array().expect("hits") {
            assert!(seen.insert(h["id"].as_str().expect("id").to_string()), "a hit on two pages");
        }
        match v["next"].as_str() {
            Some(c) => path = format!("/v1/events?resource={marker}&limit=7&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 40);

    // PII: in clear only with role, scope and reason.
    let id = &ids[0];
    let no_scope = token("analyst-1", &[Role::Analyst], Classification::Restricted, None);
    let scoped = token("analyst-1", &[Role::Analyst], Classification::Restricted, Some("pii:read"));
    for (t, q) in [(&no_scope, "?reason=case-1"), (&scoped, ""), (&scoped, "?reason=%20")] {
        let (s, v) = api.get(&format!("/v1/events/{id}{q}"), t).await;
        assert_eq!(s, 200, "{v}");
        assert!(!v.to_string().contains("carol@example.com"), "personal field left in clear: {v}");
        assert_eq!(v["userId"], Value::Null);
        assert_eq!(v["userPseudonym"], json!(keys.pseudonym(auditflow::privacy::SubjectKind::User, "carol@example.com")));
    }
    let (s, v) = api.get(&format!("/v1/events/{id}?reason=incident%2042"), &scoped).await;
    assert_eq!(s, 200);
    assert_eq!(v["userId"], "carol@example.com");
    assert_eq!(v["personalFieldsShown"], true);
    assert_eq!(v["ledger"]["linkVerifies"], true, "{v}");
    // Searches never carry personal fields, with or without the scope.
    let (_, v) = api.get(&format!("/v1/events?resource={marker}&user=carol@example.com"), &scoped).await;
    assert_eq!(v["total"], 40);
    assert!(!v["hits"].to_string().contains("carol@example.com") && !v["hits"].to_string().contains("10.20."));

    // Injection: query syntax, SQL and huge values are data or refused, never structure.
    for q in [
        "action=login%22%20OR%201%3D1%20--",
        "q=*%3A*",
        "q=classification%3ARESTRICTED%20OR%20*",
        "resource=%27%3B%20DROP%20TABLE%20audit_events%3B%20--",
        "user=%27%20OR%20%271%27%3D%271",
    ] {
        let (s, v) = api.get(&format!("/v1/events?{q}"), &public).await;
        assert_eq!(s, 200, "{q}: {v}");
        assert_eq!(v["total"], 0, "{q} matched something: {v}");
    }
    let huge = "x".repeat(5000);
    for q in [format!("q={huge}"), "limit=100000".into(), "interval=1h%22%7D".into(), "size=5".into(), "cursor=e30".into()] {
        let (s, _) = api.get(&format!("/v1/events?{q}"), &public).await;
        assert_eq!(s, 400, "{}", &q[..q.len().min(40)]);
    }
    let (s, v) = api.get("/v1/alerts?severity=HIGH%27%20OR%201%3D1--", &public).await;
    assert_eq!((s, v["alerts"].as_array().map(Vec::len)), (200, Some(0)));
    let still: i64 = sqlx::query_scalar(&marked).fetch_one(&env.pool).await.expect("audit_events is still there");
    assert_eq!(still, 40);

    // Alerts: one over a PUBLIC and one over a RESTRICTED event; triage by an analyst.
    let insert = |alert: uuid::Uuid, evidence: &str| {
        format!(
            "INSERT INTO audit_alerts (id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key, group_hash,
                window_start, window_end, first_seen, last_seen, match_count, suppressed_count, evidence_event_ids, trigger_match, dispatch_after)
             VALUES ('{alert}', '{alert}', 'p', 'Policy', 'r', 'Rule', 'HIGH', '{{\"user_id\": \"carol@example.com\"}}', 'g',
                now(), now() + interval '1 hour', now(), now(), 1, 0, ARRAY['{evidence}'], '{{}}', now())"
        )
    };
    let (low, high) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query(&insert(low, &ids[0])).execute(&env.pool).await.expect("alert");
    sqlx::query(&insert(high, &ids[35])).execute(&env.pool).await.expect("alert");
    let (_, v) = api.get("/v1/alerts", &public).await;
    let listed: Vec<&str> = v["alerts"].as_array().expect("alerts").iter().map(|a| a["alertId"].as_str().unwrap_or_default()).collect();
    assert_eq!(listed, vec![low.to_string().as_str()], "the alert over a RESTRICTED event is left out");
    assert!(!v.to_string().contains("carol@example.com"), "group keys carry pseudonyms: {v}");
    let (s, _) = api.get(&format!("/v1/alerts/{high}"), &public).await;
    assert_eq!(s, 404);
    let (s, v) = api.post_json(&format!("/v1/alerts/{low}/acknowledge"), &public, json!({"note": "looking", "assignee": "dave"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["triageStatus"].as_str(), v["assignee"].as_str(), v["triagedBy"].as_str()), (Some("acknowledged"), Some("dave"), Some("analyst-p")));
    let (_, v) = api.get(&format!("/v1/alerts/{low}"), &public).await;
    assert_eq!(v["triage"][0]["note"], "looking");
    assert_eq!(v["evidence"][0]["id"], json!(ids[0]));
    let partitions = env.config().topics.security_alerts.partitions;
    let updates = read_topic(&format!("{}.security-alerts", env.id), partitions, Duration::from_secs(3));
    let update = updates.iter().filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok()).find(|u| u["type"] == "alert.triage");
    assert_eq!(update.expect("triage update on security-alerts")["triageStatus"], "acknowledged");
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_triage WHERE published_at IS NULL").fetch_one(&env.pool).await.expect("count");
    assert_eq!(unpublished, 0, "a published decision is marked so");
    // A decision whose update never left (Kafka away, the process stopped): the outbox sends it.
    sqlx::query(&format!("INSERT INTO alert_triage (alert_id, status, note, actor, at) VALUES ('{low}', 'resolved', 'from the outbox', 'outbox-test', now() - interval '1 minute')"))
        .execute(&env.pool)
        .await
        .expect("pending decision");
    // Marked published only once Kafka acknowledged it; then it is on the topic.
    let marked = "SELECT count(*) FROM alert_triage WHERE published_at IS NOT NULL AND actor = 'outbox-test'";
    assert_eq!(wait_rows(&env, marked, 1, Duration::from_secs(60)).await, 1, "the outbox never sent the pending decision");
    let records = read_topic(&format!("{}.security-alerts", env.id), partitions, Duration::from_secs(3));
    let sent: Vec<Value> = records.iter().filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok()).filter(|u| u["by"] == "outbox-test").collect();
    assert!(!sent.is_empty(), "marked published but not on security-alerts");
    assert_eq!((sent[0]["triageStatus"].as_str(), sent[0]["note"].as_str()), (Some("resolved"), Some("from the outbox")));

    // Export by the privacy role, then a refused request.
    let privacy = token("dpo-1", &[Role::Privacy], Classification::Restricted, None);
    let (s, v) = api.post_json("/v1/subjects/user/carol@example.com/export", &privacy, json!({"reason": "DSAR 7"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["events"].as_array().map(Vec::len), Some(40));
    let (s, _) = api.get("/v1/ledger/checkpoints", &public).await;
    assert_eq!(s, 403);

    // Every one of those is an audit event of its own, by the token's subject.
    let by = |who: &str| keys.pseudonym(auditflow::privacy::SubjectKind::User, who);
    for (action, who) in [
        ("audit.search", "analyst-c"),
        ("audit.read_pii", "analyst-1"),
        ("audit.read", "analyst-1"),
        ("audit.export", "dpo-1"),
        ("alert.acknowledge", "analyst-p"),
        ("auth.denied", "analyst-p"),
    ] {
        let sql = format!("SELECT count(*) FROM audit_events WHERE action = '{action}' AND subject_pseudonym = '{}' AND resource LIKE '/v1/%'", by(who));
        assert!(wait_rows(&env, &sql, 1, Duration::from_secs(60)).await >= 1, "no {action} event by {who}");
    }
    // The PII read names its reason (sealed with the actor's other personal fields).
    let row: (String, Option<String>) = sqlx::query_as("SELECT endpoint, resource_id FROM audit_events WHERE action = 'audit.read_pii' LIMIT 1")
        .fetch_one(&env.pool)
        .await
        .expect("pii read row");
    assert_eq!(row.1.as_deref(), Some(id.as_str()));
    drop(api.process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_http_with_retries_are_ten_thousand_rows() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("api_ingest", 2).await;
    let _enrich = env.start_stage("audit-enrich", "1");
    let _persist = env.start_stage("audit-persist", "1");
    let login = api_login(&env).await;
    let api = start_api(&env, &[("AUDITFLOW_API_MAX_BODY_BYTES", "1048576"), ("AUDITFLOW_API_MAX_EVENTS", "2000"), ("AUDITFLOW_DATABASE_URL", &login)]);
    let t = token("svc-bulk", &[Role::Ingest], Classification::Public, None);
    let marker = format!("bulk-{}", env.id);

    // 8,000 in bulk: eight NDJSON requests of 1,000, each sent twice with its Idempotency-Key
    // (a client that did not see the first answer), each with two bad events mixed in.
    let mut sent = 0usize;
    for chunk in 0..8 {
        let mut body = String::new();
        for i in 0..1000 {
            body.push_str(&event(chunk * 1000 + i, &marker, "INTERNAL", &format!("user-{}", i % 50)).to_string());
            body.push('\n');
            if i == 10 {
                body.push_str("{\"action\": \"\", \"resource\": \"x\"}\n");
            }
            if i == 500 {
                body.push_str("{not json\n");
            }
        }
        let key = format!("bulk-{chunk}");
        for attempt in 0..2 {
            let (s, v, text) = api.call("POST", "/v1/events", Some(&t), Some(("application/x-ndjson", body.clone().into_bytes())), &[("Idempotency-Key", &key)]).await;
            assert_eq!(s, 202, "chunk {chunk} attempt {attempt}: {text}");
            assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(1000), Some(2)));
            let bad: Vec<u64> = v["errors"].as_array().expect("errors").iter().map(|e| e["index"].as_u64().expect("index")).collect();
            assert_eq!(bad, vec![11, 502], "bad events reported by their index in the request");
        }
        sent += 1000;
    }
    // 2,000 one by one: half carry their own id, half rely on an Idempotency-Key; a third of
    // each is sent twice.
    for i in 0..2000 {
        let mut e = event(8000 + i, &marker, "PUBLIC", "solo");
        let key = format!("single-{i}");
        let headers: Vec<(&str, &str)> = if i % 2 == 0 {
            e["id"] = json!(format!("{}-own-{i}", env.id));
            e["timestamp"] = json!(chrono::Utc::now().to_rfc3339());
            vec![]
        } else {
            vec![("Idempotency-Key", key.as_str())]
        };
        for _ in 0..(if i % 3 == 0 { 2 } else { 1 }) {
            let (s, _, text) = api.call("POST", "/v1/events", Some(&t), Some(("application/json", e.to_string().into_bytes())), &headers).await;
            assert_eq!(s, 202, "{text}");
        }
        sent += 1;
    }
    assert_eq!(sent, 10_000);

    // Refused whole: all bad (400, nothing sent), too large (413), too many (413), wrong type,
    // a reused key with another body (422).
    let (s, v, _) = api.call("POST", "/v1/events", Some(&t), Some(("application/json", b"[{\"action\":\"\"},{\"resource\":\"\"}]".to_vec())), &[]).await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(2));
    let mut padded = event(0, &marker, "PUBLIC", "big");
    padded["metadata"]["pad"] = json!("p".repeat(1000));
    // Fewer events than the limit, more bytes than the body limit.
    let big = format!("[{}]", vec![padded.to_string(); 1500].join(","));
    assert!(big.len() > 1_048_576);
    let (s, _, _) = api.call("POST", "/v1/events", Some(&t), Some(("application/json", big.into_bytes())), &[]).await;
    assert_eq!(s, 413);
    let many = format!("[{}]", vec!["{}"; 2001].join(","));
    let (s, _, _) = api.call("POST", "/v1/events", Some(&t), Some(("application/json", many.into_bytes())), &[]).await;
    assert_eq!(s, 413);
    let (s, _, _) = api.call("POST", "/v1/events", Some(&t), Some(("text/plain", b"hello".to_vec())), &[]).await;
    assert_eq!(s, 415);
    let (s, _, _) = api.call("POST", "/v1/events", Some(&t), Some(("application/json", event(1, &marker, "PUBLIC", "x").to_string().into_bytes())), &[("Idempotency-Key", "bulk-0")]).await;
    assert_eq!(s, 422);

    let marked = format!("SELECT count(*) FROM audit_events WHERE resource = '{marker}'");
    let n = wait_rows(&env, &marked, 10_000, Duration::from_secs(180)).await;
    // A little longer: a duplicate would arrive after the last original.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n2: i64 = sqlx::query_scalar(&marked).fetch_one(&env.pool).await.expect("count");
    assert_eq!((n, n2), (10_000, 10_000), "exactly one row per event sent");
    let dead = read_topic(&env.dlq, 2, Duration::from_secs(2));
    assert!(dead.is_empty(), "nothing invalid was sent: {} dead letters", dead.len());
    let (_, metrics) = http_get(&http_addr(&api.process), "/metrics");
    assert!(metrics.contains("auditflow_api_requests_total"), "{metrics}");
    drop(api.process);
}

/// A JWKS endpoint on loopback: serves whatever document it holds, counting fetches.
fn jwks_server(doc: std::sync::Arc<std::sync::Mutex<String>>, fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = doc.lock().map(|d| d.clone()).unwrap_or_default();
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_identity_provider_key_is_fetched_once_when_a_token_names_it() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("api_jwks", 1).await;
    let full: Value = serde_json::from_str(&vector("jwks.json")).expect("jwks");
    let mut before = full.clone();
    before["keys"] = json!(full["keys"].as_array().expect("keys").iter().filter(|k| k["kid"] == "test-rsa-1").cloned().collect::<Vec<_>>());
    let doc = std::sync::Arc::new(std::sync::Mutex::new(before.to_string()));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = jwks_server(doc.clone(), fetches.clone());
    // No HS256 secret: only the provider's keys.
    let jwks = String::new();
    let vars: Vec<(&str, &str)> = vec![("AUDITFLOW_API_LISTEN", "127.0.0.1:0"), ("AUDITFLOW_JWKS_URL", &url), ("AUDITFLOW_JWKS_FILE", &jwks)];
    let api = serving(env.start_binary(env!("CARGO_BIN_EXE_audit-api"), "audit-api", "jwks", &vars));
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "fetched at start");
    let ec = EncodingKey::from_ec_pem(vector("ec-private.pem").as_bytes()).expect("pem");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("test-ec-1".into());
    let t = jsonwebtoken::encode(&h, &claims("rotated", &[Role::Auditor], Classification::Restricted, None, "auditflow-api", now() + 600), &ec).expect("sign");
    // The provider rotates in the EC key; the first token naming it makes the API fetch again.
    *doc.lock().expect("doc") = full.to_string();
    let (s, v) = api.get("/v1/ledger/checkpoints", &t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Forged key ids right after: refused without a fetch each.
    for i in 0..5 {
        h.kid = Some(format!("forged-{i}"));
        let forged = jsonwebtoken::encode(&h, &claims("x", &[Role::Auditor], Classification::Restricted, None, "auditflow-api", now() + 600), &ec).expect("sign");
        let (s, _) = api.get("/v1/ledger/checkpoints", &forged).await;
        assert_eq!(s, 401);
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2, "reloads are rate-limited");
    // An HS256 token is refused: no secret is configured.
    let (s, _) = api.get("/v1/ledger/checkpoints", &token("x", &[Role::Auditor], Classification::Restricted, None)).await;
    assert_eq!(s, 401);
    drop(api.process);
}
