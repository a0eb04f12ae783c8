//! The HTTP service: state shared by the handlers, the router built from the route table, and
//! the guard every request passes (route rule, token, role and clearance, timeout, metrics).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde_json::Value;
use sqlx::PgPool;

use super::auth::{AuthError, Caller, Role, Verifier};
use super::problem::{ApiResult, Problem};
use super::routes::{self, Access, Route};
use super::self_audit::{Access as Accessed, RawProducer};
use super::{alerts, compliance, console, dlq, events, ingest, ledger, subjects, ApiSettings, PII_SCOPE};
use crate::alert::disclose::Disclosure;
use crate::config::Config;
use crate::index::client::SearchClient;
use crate::privacy::PrivacyKeys;

/// The API's own metrics, next to the runtime's.
#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: IntCounterVec,
    pub seconds: HistogramVec,
    pub denied: IntCounterVec,
}

impl ApiMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<ApiMetrics> {
        let requests = IntCounterVec::new(Opts::new("auditflow_api_requests_total", "API requests by route and status"), &["route", "status"])?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("auditflow_api_request_seconds", "API request wall time by route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )?;
        let denied = IntCounterVec::new(Opts::new("auditflow_api_denied_total", "Requests refused (401/403) by reason"), &["reason"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        Ok(ApiMetrics { requests, seconds, denied })
    }
}

/// Token verification that reloads the JWKS (file or URL) when a token names a key it does not
/// know (an identity provider rotated its keys), at most once per `JWKS_RELOAD_EVERY`, so a
/// stream of forged `kid`s cannot turn into a stream of fetches.
pub struct Tokens {
    verifier: RwLock<Arc<Verifier>>,
    settings: super::auth::AuthSettings,
    last_reload: tokio::sync::Mutex<Instant>,
}

const JWKS_RELOAD_EVERY: Duration = Duration::from_secs(30);

impl Tokens {
    pub async fn new(settings: &super::auth::AuthSettings) -> Result<Tokens, crate::error::ConfigError> {
        let verifier = Verifier::new(settings, super::auth::read_jwks(settings).await?.as_deref())?;
        // The first unknown key after start may reload at once.
        let last = Instant::now().checked_sub(JWKS_RELOAD_EVERY).unwrap_or_else(Instant::now);
        Ok(Tokens { verifier: RwLock::new(Arc::new(verifier)), settings: settings.clone(), last_reload: tokio::sync::Mutex::new(last) })
    }

    fn current(&self) -> Arc<Verifier> {
        self.verifier.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let has_jwks = self.settings.jwks_file.is_some() || self.settings.jwks_url.is_some();
        match self.current().verify(token) {
            Err(AuthError::UnknownKey(kid)) if has_jwks => {
                {
                    let mut last = self.last_reload.lock().await;
                    if last.elapsed() < JWKS_RELOAD_EVERY {
                        return Err(AuthError::UnknownKey(kid));
                    }
                    *last = Instant::now();
                    match super::auth::read_jwks(&self.settings).await.and_then(|j| Verifier::new(&self.settings, j.as_deref())) {
                        Ok(v) => {
                            tracing::info!("JWKS reloaded for an unknown key id");
                            *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
                        }
                        Err(e) => tracing::warn!(error = %e, "JWKS reload failed; keeping the keys already loaded"),
                    }
                }
                self.current().verify(token)
            }
            other => other,
        }
    }
}

impl Tokens {
    /// An identity provider's ID token (see [`Verifier::verify_id_token`]), with the same
    /// reload of the JWKS for a key id not known yet.
    pub async fn verify_id_token(&self, token: &str, client_id: &str, nonce: &str) -> Result<String, AuthError> {
        match self.current().verify_id_token(token, client_id, nonce) {
            Err(AuthError::UnknownKey(_)) => {
                // `verify` reloads (rate-limited) on an unknown key; its own answer does not matter.
                let _ = self.verify(token).await;
                self.current().verify_id_token(token, client_id, nonce)
            }
            other => other,
        }
    }
}

pub struct AppState {
    pub settings: ApiSettings,
    pub config: Config,
    pub tokens: Tokens,
    pub pool: PgPool,
    pub search: Option<SearchClient>,
    pub producer: RawProducer,
    pub keys: PrivacyKeys,
    /// Signs erasure receipts; without it erasure answers 503.
    pub signer: Option<crate::ledger::LedgerSigner>,
    pub verifying_keys: Vec<ed25519_dalek::VerifyingKey>,
    pub enrich: crate::enrich::EnrichConfig,
    pub disclosure: Disclosure,
    pub metrics: ApiMetrics,
    /// The console's live views open at once (see [`console::live`]).
    pub live_streams: Arc<tokio::sync::Semaphore>,
    /// The console's sign-in through an identity provider, when configured.
    pub oidc: Option<console::oidc::Oidc>,
}

/// What the guard learnt about a request, for the handler and its audit event.
#[derive(Clone)]
pub struct Ctx {
    pub caller: Option<Caller>,
    pub route: &'static Route,
    pub method: String,
    pub endpoint: String,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: String,
    /// The console's CSRF value, when the caller signed in with the console's cookie (forms
    /// must carry it; a bearer token is never sent by a browser on its own).
    pub csrf: Option<String>,
}

impl Ctx {
    pub fn subject(&self) -> &str {
        self.caller.as_ref().map(|c| c.subject.as_str()).unwrap_or("anonymous")
    }
    pub fn clearance(&self) -> crate::event::Classification {
        self.caller.as_ref().map(|c| c.clearance).unwrap_or(crate::event::Classification::Public)
    }
    /// Personal fields in clear: role analyst or auditor, scope `pii:read`, and a reason.
    pub fn may_read_pii(&self, reason: Option<&str>) -> bool {
        let Some(c) = &self.caller else { return false };
        (c.has(Role::Analyst) || c.has(Role::Auditor) || c.has(Role::Privacy))
            && c.scopes.contains(PII_SCOPE)
            && reason.is_some_and(|r| !r.trim().is_empty())
    }
}

impl AppState {
    /// Write the audit event of an access before its answer leaves; 503 when Kafka refuses.
    pub async fn audit(&self, ctx: &Ctx, action: &'static str, resource_id: Option<String>, reason: Option<&str>, status: u16, detail: Value) -> ApiResult<()> {
        let a = access(ctx, action, resource_id, reason, status, detail);
        self.producer.record(&a).await.map_err(|e| Problem::internal("the audit trail (audit-raw)", e))
    }

    pub fn search(&self) -> ApiResult<&SearchClient> {
        self.search.as_ref().ok_or_else(|| Problem::unavailable("event search needs the search store (AUDITFLOW_OPENSEARCH_URL)"))
    }
}

fn access(ctx: &Ctx, action: &'static str, resource_id: Option<String>, reason: Option<&str>, status: u16, detail: Value) -> Accessed {
    Accessed {
        actor: ctx.caller.as_ref().map(|c| c.subject.clone()),
        action,
        resource: ctx.route.path.to_string(),
        resource_id,
        method: ctx.method.clone(),
        endpoint: ctx.endpoint.clone(),
        status,
        ip: ctx.ip,
        user_agent: ctx.user_agent.clone(),
        reason: reason.map(|r| r.chars().take(500).collect()),
        detail,
        request_id: ctx.request_id.clone(),
    }
}

type Handler = MethodRouter<Arc<AppState>>;

/// Every handler, by the route table's method and path: the router is built from this list
/// and the tests walk it, so an endpoint without a rule cannot go unnoticed.
pub fn handlers() -> Vec<(&'static str, &'static str, Handler)> {
    vec![
        ("GET", "/openapi.json", get(openapi)),
        ("POST", "/v1/events", post(ingest::post_events)),
        ("GET", "/v1/events", get(events::search)),
        ("GET", "/v1/events/{id}", get(events::one)),
        ("GET", "/v1/subjects/{kind}/{subject}/timeline", get(events::timeline)),
        ("GET", "/v1/alerts", get(alerts::list)),
        ("GET", "/v1/alerts/{id}", get(alerts::one)),
        ("POST", "/v1/alerts/{id}/acknowledge", post(alerts::acknowledge)),
        ("POST", "/v1/alerts/{id}/resolve", post(alerts::resolve)),
        ("POST", "/v1/alerts/{id}/reopen", post(alerts::reopen)),
        ("GET", "/v1/reports/{framework}", get(compliance::report)),
        ("GET", "/v1/holds", get(compliance::holds)),
        ("POST", "/v1/holds", post(compliance::place_hold)),
        ("POST", "/v1/holds/{id}/release", post(compliance::release_hold)),
        ("GET", "/v1/ledger/checkpoints", get(ledger::checkpoints)),
        ("GET", "/v1/ledger/verifications/latest", get(ledger::latest)),
        ("POST", "/v1/ledger/verifications", post(ledger::start)),
        ("POST", "/v1/subjects/{kind}/{subject}/export", post(subjects::export)),
        ("POST", "/v1/subjects/{kind}/{subject}/erase", post(subjects::erase)),
        ("GET", "/v1/dead-letters", get(dlq::list)),
        ("GET", "/v1/dead-letters/{partition}/{offset}", get(dlq::one)),
        ("POST", "/v1/dead-letters/replay", post(dlq::replay)),
        ("GET", "/ui", get(console::root)),
        ("GET", "/ui/assets/console.css", get(console::stylesheet)),
        ("GET", "/ui/assets/console.js", get(console::script)),
        ("GET", "/ui/login", get(console::login_form)),
        ("POST", "/ui/login", post(console::login)),
        ("POST", "/ui/logout", post(console::logout)),
        ("GET", "/ui/oidc/start", get(console::oidc::start)),
        ("GET", "/ui/oidc/callback", get(console::oidc::callback)),
        ("GET", "/ui/alerts", get(console::alerts_page)),
        ("GET", "/ui/alerts/live", get(console::live::live)),
        ("GET", "/ui/alerts/{id}", get(console::alert_page)),
        ("POST", "/ui/alerts/{id}/triage", post(console::triage_form)),
        ("GET", "/ui/events", get(console::events_page)),
        ("GET", "/ui/events/{id}", get(console::event_page)),
        ("GET", "/ui/timeline", get(console::timeline_page)),
        ("GET", "/ui/compliance", get(console::auditor::compliance_page)),
        ("GET", "/ui/compliance/{framework}/{file}", get(console::auditor::report_download)),
        ("GET", "/ui/ledger", get(console::auditor::ledger_page)),
        ("POST", "/ui/ledger/verify", post(console::auditor::verify_form)),
        ("GET", "/ui/health", get(console::operations::health_page)),
    ]
}

async fn openapi() -> Response {
    let mut r = axum::Json(routes::openapi()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    r
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut by_path: HashMap<&'static str, Handler> = HashMap::new();
    for (_, path, h) in handlers() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(h),
            None => h,
        };
        by_path.insert(path, merged);
    }
    let mut app = Router::new();
    for (path, h) in by_path {
        app = app.route(path, h);
    }
    app.route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such endpoint (see /openapi.json)") })
        .method_not_allowed_fallback(|| async { Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here") })
        // Bodies are read by the handlers with their own limit (413 as problem+json).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, trust_forwarded: bool) -> Option<IpAddr> {
    if trust_forwarded {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|p| p.ip())
}

/// The browser says the form came from this origin: `Sec-Fetch-Site` when it sends one, else an
/// `Origin` naming this host (or none, as non-browser clients send).
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let named = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    !host.is_empty() && named == host
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let text = value.to_str().map_err(|_| AuthError::Malformed("not text".into()))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(AuthError::Malformed("not a bearer token".into())),
    }
}

/// Route rule, token, role and clearance; then the handler under the request timeout.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let headers = req.headers().clone();
    let endpoint = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let ip = client_ip(&headers, peer, state.settings.trust_forwarded_for);
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let request_id = uuid::Uuid::new_v4().to_string();

    let Some(route) = routes::lookup(&method, &matched) else {
        // A handler without a rule: nobody may call it.
        tracing::error!(%method, route = %matched, "route has no access rule; refused");
        return Problem::forbidden("this endpoint admits nobody").into_response();
    };
    let console = route.path.starts_with("/ui");
    let mut ctx = Ctx { caller: None, route, method, endpoint, ip, user_agent, request_id, csrf: None };
    let refused = |ctx: &Ctx, status: StatusCode, why: String, metric: &'static str| {
        let state = state.clone();
        let ctx = ctx.clone();
        async move {
            state.metrics.denied.with_label_values(&[metric]).inc();
            tracing::warn!(route = ctx.route.path, method = %ctx.method, ip = ?ctx.ip, actor = ctx.subject(), status = status.as_u16(), "refused: {why}");
            // A refusal is audited too; when that write fails the answer stays a refusal.
            if let Err(e) = state.audit(&ctx, "auth.denied", None, None, status.as_u16(), serde_json::json!({"why": why})).await {
                tracing::warn!(detail = %e.detail, "refusal not audited");
            }
            state.metrics.requests.with_label_values(&[ctx.route.path, status.as_str()]).inc();
            if !ctx.route.path.starts_with("/ui") {
                Problem::new(status, why).into_response()
            } else if status == StatusCode::UNAUTHORIZED {
                axum::response::Redirect::to("/ui/login?why=signin").into_response()
            } else {
                super::console::problem_page(Some(&ctx), Problem::new(status, why))
            }
        }
    };
    // A console form posted from another site is refused whatever it carries (login CSRF too).
    if console && ctx.method == "POST" && !same_origin(&headers) {
        return refused(&ctx, StatusCode::FORBIDDEN, "the form was posted from another site".into(), "cross_site").await;
    }
    if let Access::Roles { .. } = route.access {
        // The console's pages also take the session cookie (only there: an API call never
        // rides on a browser's ambient credentials).
        let cookie = if console { super::console::session_token(&headers) } else { None };
        let verified = match (bearer(&headers), &cookie) {
            (Ok(t), _) => state.tokens.verify(t).await,
            (Err(AuthError::Missing), Some(t)) => {
                ctx.csrf = Some(super::console::csrf_of(t));
                state.tokens.verify(t).await
            }
            (Err(e), _) => Err(e),
        };
        let caller = match verified {
            Ok(c) => c,
            Err(e) => {
                let metric = match e {
                    AuthError::Missing => "no_token",
                    AuthError::Malformed(_) => "malformed",
                    AuthError::Algorithm(_) => "algorithm",
                    AuthError::UnknownKey(_) => "unknown_key",
                    AuthError::Invalid(_) => "invalid",
                };
                return refused(&ctx, StatusCode::UNAUTHORIZED, e.to_string(), metric).await;
            }
        };
        ctx.caller = Some(caller);
        if let Some(why) = ctx.caller.as_ref().and_then(|c| routes::refusal(route.access, c)) {
            return refused(&ctx, StatusCode::FORBIDDEN, why, "forbidden").await;
        }
    }
    let route_path = route.path;
    let mut req = req;
    req.extensions_mut().insert(ctx);
    let timeout = Duration::from_secs(state.settings.request_timeout_secs);
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Problem::unavailable(format!("the request took longer than {} s", timeout.as_secs())).into_response(),
    };
    state.metrics.requests.with_label_values(&[route_path, response.status().as_str()]).inc();
    state.metrics.seconds.with_label_values(&[route_path]).observe(started.elapsed().as_secs_f64());
    response
}

/// Read a request body up to the limit: 413 beyond it.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum reports the limit as its body error ("length limit exceeded").
        if format!("{e} {:?}", std::error::Error::source(&e)).contains("length limit") {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {limit} bytes"))
        } else {
            Problem::bad_request("the body could not be read")
        }
    })
}

/// A JSON body of type `T` (an empty body is `{}`).
pub async fn json_body<T: serde::de::DeserializeOwned>(body: Body, limit: usize) -> ApiResult<T> {
    let bytes = read_body(body, limit).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
}

/// Query strings: every value bounded, so a huge parameter is refused before it reaches a store.
pub fn bounded(q: &HashMap<String, String>, known: &[&str]) -> ApiResult<()> {
    for (k, v) in q {
        if !known.contains(&k.as_str()) {
            return Err(Problem::bad_request(format!("unknown parameter {:?}", k.chars().take(64).collect::<String>())));
        }
        if v.len() > 1024 {
            return Err(Problem::bad_request(format!("parameter {k} is longer than 1024 bytes")));
        }
    }
    Ok(())
}

/// Serve until shutdown; in-flight requests finish first.
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener, shutdown: crate::runtime::Shutdown) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !shutdown.is_triggered() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tracing::info!("draining in-flight requests");
        })
        .await
}
