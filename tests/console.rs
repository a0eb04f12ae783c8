//! The console in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven over
//! the W3C WebDriver protocol), against `audit-api` on the real Kafka, PostgreSQL and OpenSearch:
//! sign in with a token, find the brute-force user, open an event and its alert, acknowledge it
//! and see the state change; a caller cleared for INTERNAL never sees a RESTRICTED event; markup
//! in event fields stays inert text; every count on a page is the API's. Screenshots of each page
//! go to `target/console-screenshots/`.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditflow::api::auth::Role;
use auditflow::event::Classification;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "console-test-secret-of-at-least-32-bytes";

fn token(sub: &str, roles: &[Role], clearance: Classification) -> String {
    let now = chrono::Utc::now().timestamp();
    let c = json!({
        "sub": sub, "iss": "auditflow", "aud": "auditflow-api", "exp": now + 600, "nbf": now - 5, "iat": now - 5,
        "clearance": clearance.as_str(), "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
    });
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign")
}

/// chromedriver and one browser session, spoken to over HTTP (W3C WebDriver).
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/prereqs installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir").keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // The machine's network is closed: no background requests, no first-run work.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,800", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r = json_of(http.post(format!("{base}/session")).header("content-type", "application/json").body(caps.to_string()).send().await.expect("new session")).await;
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {r}")).to_string();
        Browser { driver, base, session, http }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body).await.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    async fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).header("content-type", "application/json").body(body.unwrap_or(json!({})).to_string()),
        };
        let v = json_of(req.send().await.expect("webdriver")).await;
        if v["value"]["error"].is_string() {
            return Err(v["value"]["message"].as_str().unwrap_or_default().chars().take(200).collect());
        }
        Ok(v["value"].clone())
    }

    /// The text of `css` now, or `None` while the page is being replaced.
    async fn try_text(&self, css: &str) -> Option<String> {
        let v = self.try_cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await.ok()?;
        let e = v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str)?.to_string();
        self.try_cmd("GET", &format!("/element/{e}/text"), None).await.ok().and_then(|t| t.as_str().map(str::to_string))
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap_or_else(|| panic!("no element {css}")).to_string()
    }

    async fn count(&self, css: &str) -> usize {
        self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css}))).await.as_array().map(Vec::len).unwrap_or(0)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), None).await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.cmd("GET", &format!("/element/{e}/text"), None).await.as_str().unwrap_or_default().to_string()
    }

    async fn attr(&self, css: &str, name: &str) -> String {
        let e = self.find(css).await;
        self.cmd("GET", &format!("/element/{e}/attribute/{name}"), None).await.as_str().unwrap_or_default().to_string()
    }

    /// After a click that navigates: wait (bounded) until `css` shows `expected`.
    async fn wait_text(&self, css: &str, expected: &str) {
        let started = Instant::now();
        loop {
            let now = self.try_text(css).await;
            if now.as_deref() == Some(expected) {
                return;
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!("{css} never showed {expected:?}; it shows {now:?} on {}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After a click that navigates: wait (bounded) until the URL contains `part`.
    async fn wait_url(&self, part: &str) {
        let started = Instant::now();
        while !self.url().await.contains(part) {
            assert!(started.elapsed() < Duration::from_secs(15), "never got to {part}: at {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn url(&self) -> String {
        self.cmd("GET", "/url", None).await.as_str().unwrap_or_default().to_string()
    }

    async fn source(&self) -> String {
        self.cmd("GET", "/source", None).await.as_str().unwrap_or_default().to_string()
    }

    async fn script(&self, js: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": js, "args": []}))).await
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).expect("png");
        let dir = repo_root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.expect("body")).expect("a JSON answer")
}

/// An open alert about `user` with one evidence event, as audit-alert stores them.
async fn insert_alert(pool: &sqlx::PgPool, id: uuid::Uuid, user: &str, evidence: &str) {
    sqlx::query(
        "INSERT INTO audit_alerts (id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key, group_hash,
            window_start, window_end, first_seen, last_seen, match_count, suppressed_count, evidence_event_ids, trigger_match, dispatch_after)
         VALUES ($1, $1::text, 'default', 'Default', 'failed-logins-per-user', 'Brute force against one account', 'HIGH',
            jsonb_build_object('user_id', $2::text), 'g', now(), now() + interval '1 hour', now(), now(), 12, 11, ARRAY[$3], '{}', now())",
    )
    .bind(id)
    .bind(user)
    .bind(evidence)
    .execute(pool)
    .await
    .expect("alert");
}

async fn api_get(http: &reqwest::Client, base: &str, path: &str, token: &str) -> Value {
    json_of(http.get(format!("{base}{path}")).bearer_auth(token).send().await.expect("api")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_signs_in_finds_the_user_opens_the_alert_and_acknowledges_it() {
    let env = TestEnv::new("console", 1).await;
    let _enrich = env.start_stage("audit-enrich", "1");
    let _persist = env.start_stage("audit-persist", "1");
    let _index = env.start_stage("audit-index", "1");
    let _compliance = env.start_stage("audit-compliance", "1");
    let api_proc = env.start_binary(env!("CARGO_BIN_EXE_audit-api"), "audit-api", "1", &[("AUDITFLOW_API_LISTEN", "127.0.0.1:0"), ("AUDITFLOW_JWT_SECRET", SECRET)]);
    let base = api_base(&api_proc);
    let http = reqwest::Client::new();
    let marker = format!("console-{}", env.id);

    // The demo's brute force (INTERNAL), one RESTRICTED event of the same user, and an event
    // whose fields carry markup and script.
    let mut events: Vec<Value> = (0..12)
        .map(|_| json!({"action": "login", "resource": marker, "userId": "mallory", "ipAddress": "198.51.100.7", "success": false,
                       "severity": "HIGH", "classification": "INTERNAL", "errorMessage": "Invalid credentials"}))
        .collect();
    events.push(json!({"action": "data_export", "resource": marker, "userId": "mallory", "classification": "RESTRICTED",
                       "severity": "HIGH", "success": true, "errorMessage": "restricted-marker-7f3"}));
    events.push(json!({"action": "login", "resource": marker, "userId": "mallory", "classification": "INTERNAL", "success": false,
                       "errorMessage": "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">",
                       "endpoint": "javascript:window.__pwned=3", "userAgent": "</style><style>body{display:none}</style>"}));
    let ingest = token("svc", &[Role::Ingest], Classification::Public);
    let r = http.post(format!("{base}/v1/events")).bearer_auth(&ingest).header("content-type", "application/json").body(Value::Array(events).to_string()).send().await.expect("ingest");
    assert_eq!(r.status().as_u16(), 202);
    let ids: Vec<String> = json_of(r).await["ids"].as_array().expect("ids").iter().map(|v| v["id"].as_str().unwrap_or_default().to_string()).collect();
    let (first, restricted, hostile) = (ids[0].clone(), ids[12].clone(), ids[13].clone());
    let auditor = token("auditor", &[Role::Auditor], Classification::Restricted);
    let started = Instant::now();
    while api_get(&http, &base, &format!("/v1/events?resource={marker}&limit=1"), &auditor).await["total"] != 14 {
        assert!(started.elapsed() < Duration::from_secs(90), "events never searchable");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let alert = uuid::Uuid::new_v4();
    insert_alert(&env.pool, alert, "mallory", &first).await;

    let analyst = token("analyst-ina", &[Role::Analyst], Classification::Internal);
    let b = Browser::start().await;

    // Without a session: sent to sign in. Then sign in by pasting the token.
    b.goto(&format!("{base}/ui/alerts")).await;
    assert!(b.url().await.contains("/ui/login"), "not sent to sign in: {}", b.url().await);
    b.type_into("#token", &analyst).await;
    b.screenshot("sign-in").await;
    b.click("button[type=submit]").await;
    b.wait_url("/ui/alerts").await;
    b.wait_text("h1", "Alerts").await;
    assert!(!b.url().await.contains(&analyst[..20]), "the token is never in a URL");
    let cookie_visible = b.script("return document.cookie").await;
    assert_eq!(cookie_visible, json!(""), "the session cookie is HttpOnly");
    let listed = api_get(&http, &base, "/v1/alerts", &analyst).await["alerts"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(b.attr("#alert-count", "data-count").await, listed.to_string(), "the page shows the API's count");
    b.screenshot("alerts").await;

    // Search the brute-force user: the page's total is the API's, RESTRICTED left out.
    b.goto(&format!("{base}/ui/events?user=mallory&resource={marker}")).await;
    let api_total = api_get(&http, &base, &format!("/v1/events?user=mallory&resource={marker}"), &analyst).await["total"].clone();
    assert_eq!(api_total, 13);
    assert_eq!(b.attr("#total", "data-total").await, api_total.to_string());
    let page = b.source().await;
    assert!(!page.contains(&restricted) && !page.contains("restricted-marker-7f3"), "a RESTRICTED event on an INTERNAL caller's page");
    assert!(!b.text("table").await.contains("mallory"), "the user shows as a pseudonym only");
    assert!(b.count(".histogram .bar").await >= 1);
    b.screenshot("events").await;

    // An event: pseudonyms, its ledger link; the RESTRICTED one is not there.
    b.goto(&format!("{base}/ui/events/{first}")).await;
    assert_eq!(b.text("#event-userId").await, "");
    assert_eq!(b.text("#link-verifies").await, "true");
    b.screenshot("event").await;
    b.goto(&format!("{base}/ui/events/{restricted}")).await;
    assert!(b.source().await.contains("no such resource"));

    // Markup in fields stays text: no script ran, nothing was hidden.
    b.goto(&format!("{base}/ui/events/{hostile}")).await;
    assert_eq!(b.script("return typeof window.__pwned").await, json!("undefined"), "a script from an event ran");
    assert!(b.text("#event-errorMessage").await.contains("<script>window.__pwned = 1</script>"), "shown as text");
    assert_eq!(b.count("#event-errorMessage img, #event-errorMessage script, a[href^='javascript']").await, 0);
    assert_eq!(b.script("return getComputedStyle(document.body).display").await, json!("block"), "CSS from an event applied");
    b.screenshot("hostile-event").await;

    // The alert, reached from the event it is evidence for: acknowledge it, see the new state.
    b.goto(&format!("{base}/ui/events/{first}")).await;
    let api_event = api_get(&http, &base, &format!("/v1/events/{first}"), &analyst).await;
    assert_eq!(api_event["alerts"].as_array().map(Vec::len), Some(1), "{api_event}");
    assert_eq!(b.attr("#event-alerts", "data-total").await, "1");
    b.click(&format!("li[data-alert-id='{alert}'] a")).await;
    b.wait_url(&format!("/ui/alerts/{alert}")).await;
    b.wait_text("#alert-triageStatus", "open").await;
    b.type_into("input[name=note]", "looking into it").await;
    b.click("button[value=acknowledge]").await;
    b.wait_text("#alert-triageStatus", "acknowledged").await;
    assert_eq!(b.text("#alert-triagedBy").await, "analyst-ina");
    let via_api = api_get(&http, &base, &format!("/v1/alerts/{alert}"), &analyst).await;
    assert_eq!(via_api["triageStatus"], "acknowledged");
    b.screenshot("alert-acknowledged").await;

    // The live view: a change made elsewhere reaches the open list without a reload, and a new
    // alert is announced.
    b.goto(&format!("{base}/ui/alerts")).await;
    let cell = format!("tr[data-alert-id='{alert}'] [data-field=triageStatus]");
    assert_eq!(b.text(&cell).await, "acknowledged");
    b.script("window.__notReloaded = true; return null").await;
    // The script has opened its stream once the page is loaded; give it a moment to connect.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http
        .post(format!("{base}/v1/alerts/{alert}/resolve"))
        .bearer_auth(token("analyst-two", &[Role::Analyst], Classification::Internal))
        .header("content-type", "application/json")
        .body(r#"{"note": "closed elsewhere"}"#)
        .send()
        .await
        .expect("resolve");
    assert_eq!(r.status().as_u16(), 200);
    b.wait_text(&cell, "resolved").await;
    assert_eq!(b.script("return window.__notReloaded === true").await, json!(true), "the page was reloaded");
    let second = uuid::Uuid::new_v4();
    insert_alert(&env.pool, second, "mallory", &first).await;
    b.wait_text("#live-notice", "1 new alert(s) since this page was loaded: reload to see them.").await;
    assert_eq!(b.script("return window.__notReloaded === true").await, json!(true));
    b.screenshot("alerts-live").await;

    // The user's timeline, oldest first, the API's count.
    b.goto(&format!("{base}/ui/timeline?kind=user&subject=mallory")).await;
    let api_timeline = api_get(&http, &base, "/v1/subjects/user/mallory/timeline", &analyst).await;
    assert_eq!(b.attr("#total", "data-total").await, api_timeline["total"].to_string());
    // The alerts about mallory stand among the events, as many as the API answers.
    let api_alerts = api_timeline["alerts"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(api_alerts, 2, "both alerts about mallory: {api_timeline}");
    assert_eq!(b.attr("#timeline-alerts", "data-total").await, api_alerts.to_string());
    assert_eq!(b.count(&format!("tr.alert-row[data-alert-id='{alert}']")).await, 1);
    assert!(b.count("tr.alert-row").await == api_alerts);
    b.screenshot("timeline").await;

    // Pipeline health: each stage's lag and the dead letters, as the API sees them.
    b.goto(&format!("{base}/ui/health")).await;
    assert!(b.count("tr.lag").await >= 1, "no stage lag shown");
    let dead = api_get(&http, &base, "/v1/dead-letters", &analyst).await["total"].clone();
    assert_eq!(b.attr("#dead-letters", "data-total").await, dead.to_string());
    b.screenshot("health").await;
    // An analyst is not an auditor: the compliance page is refused.
    b.goto(&format!("{base}/ui/compliance")).await;
    assert!(b.source().await.contains("needs role auditor"));

    // Sign out, then in again as an auditor cleared for everything.
    b.goto(&format!("{base}/ui/alerts")).await;
    b.click("form.who button").await;
    b.wait_url("/ui/login").await;
    b.goto(&format!("{base}/ui/alerts")).await;
    assert!(b.url().await.contains("/ui/login"), "signed out means signed out");
    b.type_into("#token", &auditor).await;
    b.click("button[type=submit]").await;
    b.wait_text("h1", "Alerts").await;
    // The compliance records of these events reach the page as the API reports them.
    let started = Instant::now();
    let report = loop {
        let r = api_get(&http, &base, "/v1/reports/gdpr", &auditor).await;
        if r["totals"]["records"].as_i64().unwrap_or(0) > 0 || started.elapsed() > Duration::from_secs(30) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    b.goto(&format!("{base}/ui/compliance?framework=gdpr")).await;
    assert_eq!(b.text("#records").await, report["totals"]["records"].to_string());
    assert_eq!(b.text("#events").await, report["totals"]["events"].to_string());
    b.screenshot("compliance").await;
    let r = http.get(format!("{base}/ui/compliance/gdpr/report.csv")).bearer_auth(&auditor).send().await.expect("download");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("content-disposition").and_then(|v| v.to_str().ok()).unwrap_or("").starts_with("attachment"));
    // The ledger: run a verification from the page; it finishes with no break.
    b.goto(&format!("{base}/ui/ledger")).await;
    b.click("form[action='/ui/ledger/verify'] button").await;
    // The run is in the background: wait for its result through the API, then on the page.
    let started = Instant::now();
    let latest = loop {
        let r = http.get(format!("{base}/v1/ledger/verifications/latest")).bearer_auth(&auditor).send().await.expect("latest");
        if r.status().as_u16() == 200 {
            let v = json_of(r).await;
            if !v["finishedAt"].is_null() {
                break v;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the verification never finished");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(latest["ok"], true, "{latest}");
    b.goto(&format!("{base}/ui/ledger")).await;
    assert_eq!(b.text("#verification").await, "verified: no break");
    assert_eq!(b.text("#rows").await, latest["report"]["rows"].to_string());
    b.screenshot("ledger").await;

    // Every page carries the CSP; the stylesheet is the only other resource.
    let r = http.get(format!("{base}/ui/login")).send().await.expect("login page");
    let csp = r.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe"), "{csp}");
    // A form posted from another site is refused.
    let r = http.post(format!("{base}/ui/logout")).header("origin", "https://evil.example").send().await.expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let _ = b.cmd("DELETE", "", None).await;
    drop(api_proc);
}

/// A real OpenID provider (npm oidc-provider, `scripts/oidc`), stopped with the test.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start(port: u16, redirect: &str) -> Provider {
        let mut child = Command::new("node")
            .arg(repo_root().join("scripts/oidc/provider.mjs"))
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_REDIRECT_URIS", redirect)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node scripts/oidc/provider.mjs (scripts/prereqs installs its packages)");
        let out = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
        let issuer = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on ") => break l.rsplit(' ').next().unwrap_or_default().to_string(),
                Some(Ok(_)) => continue,
                _ => panic!("the OpenID provider did not start"),
            }
        };
        Provider { child, issuer }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_signs_in_through_the_identity_provider_with_pkce() {
    let env = TestEnv::new("console_oidc", 1).await;
    let api_port = support::smtp::free_port();
    let callback = format!("http://127.0.0.1:{api_port}/ui/oidc/callback");
    let idp = Provider::start(support::smtp::free_port(), &callback);
    let issuer = idp.issuer.clone();
    let api_proc = env.start_binary(
        env!("CARGO_BIN_EXE_audit-api"),
        "audit-api",
        "1",
        &[
            ("AUDITFLOW_API_LISTEN", &format!("127.0.0.1:{api_port}")),
            ("AUDITFLOW_JWT_ISSUER", &issuer),
            ("AUDITFLOW_JWKS_URL", &format!("{issuer}/jwks")),
            ("AUDITFLOW_JWT_AUDIENCE", "auditflow-api"),
            ("AUDITFLOW_OIDC_CLIENT_ID", "auditflow-console"),
            ("AUDITFLOW_OIDC_REDIRECT_URL", &callback),
            ("AUDITFLOW_OIDC_RESOURCE", "urn:auditflow:api"),
            ("AUDITFLOW_OIDC_SCOPES", "openid profile"),
        ],
    );
    let base = api_base(&api_proc);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");

    // A callback that no sign-in of this browser started is refused, whatever it carries.
    let r = http.get(format!("{base}/ui/oidc/callback?code=stolen&state=guessed")).send().await.expect("callback");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/ui/login?why=provider");
    // The start sends the browser to the provider with a PKCE challenge, and nothing secret.
    let r = http.get(format!("{base}/ui/oidc/start")).send().await.expect("start");
    let to = r.headers()["location"].to_str().expect("location").to_string();
    assert!(to.starts_with(&format!("{issuer}/auth?")), "{to}");
    assert!(to.contains("code_challenge_method=S256") && to.contains("code_challenge=") && !to.contains("code_verifier"), "{to}");
    let flow_cookie = r.headers()["set-cookie"].to_str().expect("cookie").to_string();
    assert!(flow_cookie.contains("HttpOnly") && flow_cookie.contains("SameSite=Lax") && flow_cookie.contains("Path=/ui/oidc"), "{flow_cookie}");

    let b = Browser::start().await;
    b.goto(&format!("{base}/ui/alerts")).await;
    assert!(b.url().await.contains("/ui/login"));
    b.screenshot("sign-in-provider").await;
    b.click("#oidc-signin").await;
    b.wait_url("/interaction/").await;
    b.type_into("#login", "alice").await;
    b.click("#sign-in").await;
    b.wait_url("/ui/alerts").await;
    b.wait_text("h1", "Alerts").await;
    assert_eq!(b.text("form.who span").await, "alice", "signed in as the provider's subject");
    let url = b.url().await;
    assert!(!url.contains("code=") && !url.contains("token"), "nothing of the flow stays in the URL: {url}");
    assert_eq!(b.script("return document.cookie").await, json!(""), "the session cookie is HttpOnly");
    // The provider's token carries alice's roles and clearance: analyst pages yes, auditor no.
    b.goto(&format!("{base}/ui/events")).await;
    b.wait_text("h1", "Events").await;
    b.goto(&format!("{base}/ui/compliance")).await;
    assert!(b.source().await.contains("needs role auditor"));

    // The sign-in is audited with its method, under the provider's subject.
    let started = Instant::now();
    loop {
        let signins: Vec<Value> = read_topic(&env.raw, 1, Duration::from_secs(2))
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
            .filter(|e| e["action"] == "auth.signin")
            .collect();
        if let Some(e) = signins.first() {
            assert_eq!(e["userId"], "alice");
            assert_eq!(e["metadata"]["request"]["method"], "oidc", "{e}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no auth.signin event on audit-raw");
    }
    let _ = b.cmd("DELETE", "", None).await;
    drop(api_proc);
}
