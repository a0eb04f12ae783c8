//! The web console, served by `audit-api` under `/ui`: server-rendered HTML over the API's own
//! handlers, so every number on a page is the API's answer, under the caller's token, roles and
//! clearance, and every page view is audited like the API call it makes. No script runs (the
//! CSP forbids it); forms do the work. Sign-in takes a token (`auditflow token issue`) and
//! keeps it in an HttpOnly, SameSite=Strict cookie scoped to `/ui`; forms sent with that cookie
//! carry a CSRF value derived from the token, which a cross-site page cannot compute.

pub mod auditor;
pub mod live;
pub mod oidc;
pub mod operations;
pub mod page;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde_json::Value;
use sha2::{Digest, Sha256};

use self::page::{cell, enc, esc, histogram, page, Nav};
use super::auth::Role;
use super::problem::Problem;
use super::server::{read_body, AppState, Ctx};
use super::{alerts, events};

/// The session cookie's name.
pub const COOKIE: &str = "af_session";
/// Longest a console session lasts, whatever the token's own expiry.
const MAX_SESSION_SECS: i64 = 8 * 3600;

/// The value of cookie `name`, if the request carries a non-empty one.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// The token of a console session, from its cookie.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE)
}

/// The CSRF value of a session: only whoever holds the token can compute it.
pub fn csrf_of(token: &str) -> String {
    let d = Sha256::digest(format!("auditflow-console-csrf\u{0}{token}").as_bytes());
    hex::encode(&d[..16])
}

/// `application/x-www-form-urlencoded` pairs (also query strings).
pub fn form_pairs(text: &str) -> HashMap<String, String> {
    let dec = |v: &str| -> String {
        let b = v.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b[i], hex) {
                (b'%', Some(x)) => {
                    out.push(x);
                    i += 3;
                }
                (b'+', _) => {
                    out.push(b' ');
                    i += 1;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.split('&').filter(|kv| !kv.is_empty()).map(|kv| kv.split_once('=').unwrap_or((kv, ""))).map(|(k, v)| (dec(k), dec(v))).collect()
}

fn nav<'a>(ctx: &'a Ctx, active: &'a str) -> Nav<'a> {
    Nav { subject: ctx.caller.as_ref().map(|c| c.subject.as_str()), active, csrf: ctx.csrf.as_deref() }
}

/// A refused or failed request as a page (the API's reason, nothing more).
pub fn problem_page(ctx: Option<&Ctx>, p: Problem) -> Response {
    let body = format!(r#"<p class="error" role="alert">{}</p><p><a href="/ui/alerts">Back to the alerts</a></p>"#, esc(&p.detail));
    let nav = ctx.map(|c| nav(c, "")).unwrap_or(Nav { subject: None, active: "", csrf: None });
    page(p.status, nav, p.status.canonical_reason().unwrap_or("Error"), &body)
}

type Page = Result<Response, Response>;

fn fail(ctx: &Ctx) -> impl Fn(Problem) -> Response + '_ {
    move |p| problem_page(Some(ctx), p)
}

/// The query string without empty values (an unfilled form field is no filter).
fn filled(q: HashMap<String, String>) -> HashMap<String, String> {
    q.into_iter().filter(|(_, v)| !v.trim().is_empty()).collect()
}

/// A console form's body, once its CSRF value is checked (forms sent with the session cookie).
async fn check_csrf(ctx: &Ctx, body: Body) -> Result<HashMap<String, String>, Response> {
    let bytes = read_body(body, 64 * 1024).await.map_err(fail(ctx))?;
    let form = form_pairs(&String::from_utf8_lossy(&bytes));
    match &ctx.csrf {
        Some(expected) if form.get("csrf") != Some(expected) => Err(problem_page(Some(ctx), Problem::forbidden("the form is not from this console (CSRF check)"))),
        _ => Ok(form),
    }
}

pub async fn root() -> Redirect {
    Redirect::to("/ui/alerts")
}

pub async fn stylesheet() -> Response {
    let mut r = (StatusCode::OK, include_str!("console.css")).into_response();
    page::secure_headers(&mut r, "text/css; charset=utf-8");
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

pub async fn script() -> Response {
    let mut r = (StatusCode::OK, include_str!("console.js")).into_response();
    page::secure_headers(&mut r, "text/javascript; charset=utf-8");
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

pub async fn login_form(State(state): State<Arc<AppState>>, Query(q): Query<HashMap<String, String>>) -> Response {
    // Only fixed messages: nothing from the query string is shown.
    let note = match q.get("why").map(String::as_str) {
        Some("signin") => r#"<p class="error" role="alert">Sign in first (or your session ended).</p>"#,
        Some("refused") => r#"<p class="error" role="alert">That token was refused (expired, wrong audience, unknown signer or malformed).</p>"#,
        Some("provider") => r#"<p class="error" role="alert">The sign-in through the identity provider did not complete; try again.</p>"#,
        _ => "",
    };
    let provider = match &state.oidc {
        Some(o) => format!(
            r#"<p><a class="button" id="oidc-signin" href="/ui/oidc/start">Sign in with your identity provider</a> <span class="muted">({})</span></p><h2>Or paste a token</h2>"#,
            esc(&o.provider.issuer)
        ),
        None => String::new(),
    };
    let body = format!(
        r#"{note}{provider}<form method="post" action="/ui/login">
<label for="token">Token (from your identity provider, or <code>auditflow token issue</code>)</label>
<textarea id="token" name="token" required autocomplete="off" spellcheck="false"></textarea>
<p><button type="submit">Sign in</button></p></form>
<p class="muted">The token is kept in an HttpOnly cookie for this console only, never in the page or a URL.</p>"#
    );
    page(StatusCode::OK, Nav { subject: None, active: "", csrf: None }, "Sign in", &body)
}

pub async fn login(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let Ok(bytes) = read_body(body, 64 * 1024).await else { return Redirect::to("/ui/login?why=refused").into_response() };
    let form = form_pairs(&String::from_utf8_lossy(&bytes));
    let token = form.get("token").map(|t| t.trim().to_string()).unwrap_or_default();
    match state.tokens.verify(&token).await {
        Ok(caller) => start_session(&state, ctx, &headers, &token, caller, "token").await,
        Err(e) => {
            tracing::warn!(ip = ?ctx.ip, "console sign-in refused: {e}");
            let _ = state.audit(&ctx, "auth.denied", None, None, 401, serde_json::json!({"why": e.to_string()})).await;
            Redirect::to("/ui/login?why=refused").into_response()
        }
    }
}

/// A verified token becomes the console session: audited, then kept in the session cookie for
/// as long as it is valid (at most [`MAX_SESSION_SECS`]).
pub(super) async fn start_session(state: &AppState, ctx: Ctx, headers: &HeaderMap, token: &str, caller: super::auth::Caller, method: &str) -> Response {
    // Verified by the caller; only its expiry is read again, for the cookie's lifetime.
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| c["exp"].as_i64())
        .unwrap_or(0);
    let max_age = (exp - chrono::Utc::now().timestamp()).clamp(0, MAX_SESSION_SECS);
    let ctx = Ctx { caller: Some(caller), ..ctx };
    if let Err(p) = state.audit(&ctx, "auth.signin", None, None, 303, serde_json::json!({"method": method})).await {
        return problem_page(None, p);
    }
    let secure = if loopback(headers) { "" } else { "; Secure" };
    let cookie = format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut r = Redirect::to("/ui/alerts").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A console opened on the machine itself (local use) may keep its cookie over plain http.
pub(super) fn loopback(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

pub async fn logout(Extension(ctx): Extension<Ctx>, body: Body) -> Response {
    if let Err(refused) = check_csrf(&ctx, body).await {
        return refused;
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("af_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"));
    r
}

fn sev(s: &Value) -> String {
    let t = s.as_str().unwrap_or("");
    format!(r#"<span class="sev-{}">{}</span>"#, esc(t), esc(t))
}

pub async fn alerts_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> Page {
    let q = filled(q);
    let v = alerts::list(State(state.clone()), Extension(ctx.clone()), Query(q.clone())).await.map_err(fail(&ctx))?.0;
    let select = |name: &str, options: &[&str]| {
        let current = q.get(name).map(String::as_str).unwrap_or("");
        let mut s = format!(r#"<label>{name}<select name="{name}"><option value="">any</option>"#);
        for o in options {
            let sel = if *o == current { " selected" } else { "" };
            s.push_str(&format!(r#"<option{sel}>{o}</option>"#));
        }
        s + "</select></label>"
    };
    let mut body = format!(
        r#"<form class="filters" method="get" action="/ui/alerts">{}{}<label>policy<input name="policy" value="{}"></label><label>rule<input name="rule" value="{}"></label><button type="submit">Filter</button></form>"#,
        select("status", &["open", "acknowledged", "resolved"]),
        select("severity", &["LOW", "MEDIUM", "HIGH", "CRITICAL"]),
        esc(q.get("policy").map(String::as_str).unwrap_or("")),
        esc(q.get("rule").map(String::as_str).unwrap_or("")),
    );
    let list = v["alerts"].as_array().cloned().unwrap_or_default();
    body.push_str(&format!(r#"<p id="alert-count" data-count="{}">{} alert(s) shown</p><p id="live-notice" class="live" role="status" hidden></p>"#, list.len(), list.len()));
    body.push_str("<table><thead><tr><th>first seen</th><th>severity</th><th>rule</th><th>policy</th><th>group</th><th>matches</th><th>suppressed</th><th>triage</th></tr></thead><tbody>");
    for a in &list {
        let id = a["alertId"].as_str().unwrap_or("");
        body.push_str(&format!(
            r#"<tr data-alert-id="{}"><td>{}</td><td>{}</td><td><a href="/ui/alerts/{}">{}</a></td><td>{}</td><td>{}</td><td data-field="matchCount">{}</td><td data-field="suppressedCount">{}</td><td class="triage" data-field="triageStatus">{}</td></tr>"#,
            esc(id),
            cell(&a["firstSeen"]),
            sev(&a["severity"]),
            enc(id),
            cell(&a["ruleName"]),
            cell(&a["policyName"]),
            cell(&a["groupKey"]),
            cell(&a["matchCount"]),
            cell(&a["suppressedCount"]),
            cell(&a["triageStatus"]),
        ));
    }
    body.push_str("</tbody></table>");
    body.push_str(&next_page("/ui/alerts", &q, &v, "Older alerts"));
    Ok(page(StatusCode::OK, nav(&ctx, "Alerts"), "Alerts", &body))
}

/// A link to the next page of an answer that has one (its `next` cursor), same question.
fn next_page(path: &str, q: &HashMap<String, String>, answer: &Value, label: &str) -> String {
    let Some(next) = answer["next"].as_str() else { return String::new() };
    let mut more = q.clone();
    more.insert("cursor".into(), next.to_string());
    format!(r#"<p><a href="{path}?{}">{label}</a></p>"#, esc(&query(&more)))
}

fn query(q: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = q.iter().collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

pub async fn alert_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>) -> Page {
    let a = alerts::one(State(state.clone()), Extension(ctx.clone()), Path(id.clone())).await.map_err(fail(&ctx))?.0;
    // The fields the live view keeps current carry `data-field` (see console.js).
    let live = ["triageStatus", "assignee", "triagedBy", "matchCount", "suppressedCount", "lastSeen", "dispatchStatus"];
    let mut body = format!(r#"<dl data-alert-id="{}">"#, esc(&id));
    for (k, label) in [
        ("ruleName", "rule"), ("policyName", "policy"), ("severity", "severity"), ("triageStatus", "triage"), ("assignee", "assignee"),
        ("triagedBy", "triaged by"), ("groupKey", "group"), ("matchCount", "matches"), ("suppressedCount", "suppressed"),
        ("windowStart", "window start"), ("windowEnd", "window end"), ("firstSeen", "first seen"), ("lastSeen", "last seen"),
        ("compliance", "compliance"), ("dispatchStatus", "notification"),
    ] {
        let field = if live.contains(&k) { format!(r#" data-field="{k}""#) } else { String::new() };
        body.push_str(&format!(r#"<dt>{label}</dt><dd id="alert-{k}"{field}>{}</dd>"#, cell(&a[k])));
    }
    // What the rule is about (ATT&CK) and what it found besides its window (a travel's ends, a
    // first sighting's value), as the API's record of the triggering match says.
    let tags: Vec<String> = a["trigger"]["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect();
    let techniques = crate::rule_match::attack_techniques(&tags);
    if !techniques.is_empty() {
        body.push_str(&format!(r#"<dt>MITRE ATT&amp;CK</dt><dd id="alert-attack">{}</dd>"#, esc(&techniques.join(", "))));
    }
    let d = &a["trigger"]["detail"];
    for (key, label) in [("from", "travelled from"), ("to", "travelled to")] {
        if d[key].is_object() {
            let e = &d[key];
            let place = e["place"].as_str().filter(|p| !p.is_empty()).or(e["countryCode"].as_str()).unwrap_or("");
            let at = e["time"].as_i64().and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()).unwrap_or_default();
            body.push_str(&format!(r#"<dt>{label}</dt><dd id="alert-travel-{key}">{} at {}</dd>"#, esc(place), esc(&at)));
        }
    }
    if d["speedKmh"].is_number() {
        body.push_str(&format!("<dt>travel</dt><dd>{} km in {} min: {} km/h</dd>", cell(&d["distanceKm"]), cell(&d["minutes"]), cell(&d["speedKmh"])));
    }
    if d["value"].is_string() {
        body.push_str(&format!(r#"<dt>first seen</dt><dd id="alert-first-seen">{} {}</dd>"#, cell(&d["field"]), cell(&d["value"])));
    }
    body.push_str("</dl><h2>Evidence</h2><table><thead><tr><th>time</th><th>action</th><th>resource</th><th>classification</th><th>success</th></tr></thead><tbody>");
    for e in a["evidence"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            r#"<tr><td><a href="/ui/events/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            enc(e["id"].as_str().unwrap_or("")),
            cell(&e["timestamp"]),
            cell(&e["action"]),
            cell(&e["resource"]),
            cell(&e["classification"]),
            cell(&e["success"]),
        ));
    }
    body.push_str("</tbody></table><h2>Triage</h2><ul>");
    for t in a["triage"].as_array().into_iter().flatten() {
        body.push_str(&format!("<li>{} — {} by {}{}</li>", cell(&t["at"]), cell(&t["status"]), cell(&t["by"]), t["note"].as_str().map(|n| format!(": {}", esc(n))).unwrap_or_default()));
    }
    body.push_str("</ul>");
    if ctx.caller.as_ref().is_some_and(|c| c.has(Role::Analyst)) {
        let csrf = ctx.csrf.as_deref().map(|c| format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(c))).unwrap_or_default();
        body.push_str(&format!(
            r#"<form method="post" action="/ui/alerts/{id}/triage" class="filters">{csrf}<label>note<input name="note" maxlength="4000"></label><label>assignee<input name="assignee" maxlength="200" value="{assignee}"></label>
<button type="submit" name="action" value="acknowledge">Acknowledge</button><button type="submit" name="action" value="resolve">Resolve</button><button type="submit" name="action" value="reopen">Reopen</button></form>"#,
            id = enc(&id),
            assignee = cell(&a["assignee"]),
        ));
    }
    Ok(page(StatusCode::OK, nav(&ctx, "Alerts"), &format!("Alert: {}", a["ruleName"].as_str().unwrap_or("")), &body))
}

pub async fn triage_form(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>, body: Body) -> Page {
    let form = check_csrf(&ctx, body).await?;
    let mut json = serde_json::Map::new();
    for k in ["note", "assignee"] {
        if let Some(v) = form.get(k).filter(|v| !v.trim().is_empty()) {
            json.insert(k.into(), Value::String(v.clone()));
        }
    }
    let b = Body::from(Value::Object(json).to_string());
    let (s, c, p) = (State(state), Extension(ctx.clone()), Path(id.clone()));
    let done = match form.get("action").map(String::as_str) {
        Some("acknowledge") => alerts::acknowledge(s, c, p, b).await,
        Some("resolve") => alerts::resolve(s, c, p, b).await,
        Some("reopen") => alerts::reopen(s, c, p, b).await,
        _ => Err(Problem::bad_request("action: acknowledge, resolve or reopen")),
    };
    let _updated = done.map_err(fail(&ctx))?;
    Ok(Redirect::to(&format!("/ui/alerts/{}", enc(&id))).into_response())
}

pub async fn events_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> Page {
    let q = filled(q);
    let field = |name: &str, label: &str| format!(r#"<label>{label}<input name="{name}" value="{}"></label>"#, esc(q.get(name).map(String::as_str).unwrap_or("")));
    let mut body = format!(
        r#"<form class="filters" method="get" action="/ui/events">{}{}{}{}{}{}{}<label>success<select name="success"><option value="">any</option><option{}>true</option><option{}>false</option></select></label><button type="submit">Search</button></form>"#,
        field("q", "text"),
        field("user", "user"),
        field("ip", "address or network"),
        field("action", "action"),
        field("severity", "severity"),
        field("from", "from"),
        field("to", "to"),
        if q.get("success").map(String::as_str) == Some("true") { " selected" } else { "" },
        if q.get("success").map(String::as_str) == Some("false") { " selected" } else { "" },
    );
    let v = events::search(State(state.clone()), Extension(ctx.clone()), Query(q.clone())).await.map_err(fail(&ctx))?.0;
    let buckets: Vec<(String, u64)> = v["histogram"].as_array().into_iter().flatten().map(|b| (b["at"].as_str().unwrap_or("").to_string(), b["count"].as_u64().unwrap_or(0))).collect();
    body.push_str(&format!(r#"<p id="total" data-total="{}">{} event(s)</p>"#, cell(&v["total"]), cell(&v["total"])));
    body.push_str(&histogram(&buckets, |from, to| {
        let mut zoom = q.clone();
        zoom.remove("cursor");
        zoom.insert("from".into(), from.to_string());
        if !to.is_empty() {
            zoom.insert("to".into(), to.to_string());
        }
        format!("/ui/events?{}", query(&zoom))
    }));
    body.push_str("<table><thead><tr><th>time</th><th>action</th><th>resource</th><th>severity</th><th>classification</th><th>success</th><th>user (pseudonym)</th><th>error</th></tr></thead><tbody>");
    for h in v["hits"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            r#"<tr><td><a href="/ui/events/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            enc(h["id"].as_str().unwrap_or("")),
            cell(&h["timestamp"]),
            cell(&h["action"]),
            cell(&h["resource"]),
            sev(&h["severity"]),
            cell(&h["classification"]),
            cell(&h["success"]),
            cell(&h["userPseudonym"]),
            cell(&h["errorMessage"]),
        ));
    }
    body.push_str("</tbody></table>");
    body.push_str(&next_page("/ui/events", &q, &v, "Older events"));
    Ok(page(StatusCode::OK, nav(&ctx, "Events"), "Events", &body))
}

pub async fn event_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Page {
    let q = filled(q);
    let e = events::one(State(state.clone()), Extension(ctx.clone()), Path(id.clone()), Query(q.clone())).await.map_err(fail(&ctx))?.0;
    let mut body = String::from("<dl>");
    for k in [
        "id", "timestamp", "action", "resource", "resourceId", "method", "endpoint", "statusCode", "classification", "severity", "success",
        "errorMessage", "duration", "userId", "sessionId", "ipAddress", "userAgent", "location", "metadata", "subjectPseudonym",
        "userPseudonym", "personalDataErased", "compliance", "ipFacts", "enrichedAt",
    ] {
        body.push_str(&format!(r#"<dt>{k}</dt><dd id="event-{k}">{}</dd>"#, cell(&e[k])));
    }
    body.push_str(&format!(
        r#"</dl><h2>Ledger</h2><dl><dt>chain</dt><dd>{}</dd><dt>position</dt><dd>{}</dd><dt>row hash</dt><dd>{}</dd><dt>link verifies</dt><dd id="link-verifies">{}</dd></dl>"#,
        cell(&e["ledger"]["chain"]),
        cell(&e["ledger"]["seq"]),
        cell(&e["ledger"]["rowHash"]),
        cell(&e["ledger"]["linkVerifies"]),
    ));
    let alerts = e["alerts"].as_array().cloned().unwrap_or_default();
    body.push_str(&format!(r#"<h2>Alerts</h2><p id="event-alerts" data-total="{}">evidence for {} alert(s)</p><ul>"#, alerts.len(), alerts.len()));
    for a in &alerts {
        let aid = a["alertId"].as_str().unwrap_or("");
        body.push_str(&format!(
            r#"<li data-alert-id="{}"><a href="/ui/alerts/{}">{}</a> {} — <span data-field="triageStatus">{}</span>, first seen {}</li>"#,
            esc(aid), enc(aid), cell(&a["ruleName"]), sev(&a["severity"]), cell(&a["triageStatus"]), cell(&a["firstSeen"]),
        ));
    }
    body.push_str("</ul>");
    if let Some(u) = e["userPseudonym"].as_str() {
        body.push_str(&format!(r#"<p class="muted">Personal fields are shown as pseudonyms (user {}).</p>"#, esc(u)));
    }
    let may_reveal = ctx.caller.as_ref().is_some_and(|c| c.scopes.contains(super::PII_SCOPE));
    if may_reveal && e["personalFieldsShown"] != Value::Bool(true) {
        body.push_str(&format!(
            r#"<form method="get" action="/ui/events/{}" class="filters"><label>reason for revealing personal fields<input name="reason" required maxlength="500"></label><button type="submit">Reveal</button></form>"#,
            enc(&id)
        ));
    }
    Ok(page(StatusCode::OK, nav(&ctx, "Events"), "Event", &body))
}

pub async fn timeline_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> Page {
    let mut q = filled(q);
    let kind = q.remove("kind").unwrap_or_else(|| "user".into());
    let subject = q.remove("subject");
    let mut body = format!(
        r#"<form class="filters" method="get" action="/ui/timeline"><label>kind<select name="kind"><option{}>user</option><option{}>ip</option></select></label><label>user id or address<input name="subject" required value="{}"></label><button type="submit">Show</button></form>"#,
        if kind == "user" { " selected" } else { "" },
        if kind == "ip" { " selected" } else { "" },
        esc(subject.as_deref().unwrap_or("")),
    );
    if let Some(subject) = subject {
        let params: HashMap<String, String> = q.into_iter().filter(|(k, _)| ["from", "to", "cursor"].contains(&k.as_str())).collect();
        let v = events::timeline(State(state.clone()), Extension(ctx.clone()), Path((kind.clone(), subject.clone())), Query(params.clone())).await.map_err(fail(&ctx))?.0;
        let alerts = v["alerts"].as_array().cloned().unwrap_or_default();
        body.push_str(&format!(
            r#"<p id="total" data-total="{}">{} event(s), oldest first</p><p id="timeline-alerts" data-total="{}">{} alert(s) about this subject</p>"#,
            cell(&v["total"]), cell(&v["total"]), alerts.len(), alerts.len()
        ));
        // Events and alerts in one time order.
        let at = |v: &Value| v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_micros()).unwrap_or(i64::MAX);
        let mut rows: Vec<(i64, String)> = Vec::new();
        for h in v["hits"].as_array().into_iter().flatten() {
            rows.push((at(&h["timestamp"]), format!(
                r#"<tr><td><a href="/ui/events/{}">{}</a></td><td>event</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                enc(h["id"].as_str().unwrap_or("")), cell(&h["timestamp"]), cell(&h["action"]), cell(&h["resource"]), sev(&h["severity"]), cell(&h["success"]), cell(&h["errorMessage"]),
            )));
        }
        for a in &alerts {
            let id = a["alertId"].as_str().unwrap_or("");
            rows.push((at(&a["firstSeen"]), format!(
                r#"<tr class="alert-row" data-alert-id="{}"><td><a href="/ui/alerts/{}">{}</a></td><td>alert</td><td>{}</td><td>{}</td><td data-field="triageStatus">{}</td><td>{} match(es)</td></tr>"#,
                esc(id), enc(id), cell(&a["firstSeen"]), cell(&a["ruleName"]), sev(&a["severity"]), cell(&a["triageStatus"]), cell(&a["matchCount"]),
            )));
        }
        rows.sort_by_key(|r| r.0);
        body.push_str("<table><thead><tr><th>time</th><th>kind</th><th>what</th><th>severity</th><th>success / triage</th><th>detail</th></tr></thead><tbody>");
        for (_, row) in rows {
            body.push_str(&row);
        }
        body.push_str("</tbody></table>");
        let mut asked = params;
        asked.insert("kind".into(), kind);
        asked.insert("subject".into(), subject);
        body.push_str(&next_page("/ui/timeline", &asked, &v, "Later events"));
    }
    Ok(page(StatusCode::OK, nav(&ctx, "Timeline"), "Subject timeline", &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_forms_and_csrf() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; af_session=tok.en.x; b=2"));
        assert_eq!(session_token(&h).as_deref(), Some("tok.en.x"));
        assert_eq!(csrf_of("t1"), csrf_of("t1"));
        assert_ne!(csrf_of("t1"), csrf_of("t2"));
        let f = form_pairs("note=two+words%21&csrf=ab&empty=");
        assert_eq!(f["note"], "two words!");
        assert_eq!(f["empty"], "");
    }
}
