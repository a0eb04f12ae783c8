//! The console's sign-in with an OpenID Connect identity provider: the authorization-code flow
//! with PKCE (S256), for a public or a confidential client.
//!
//! `/ui/oidc/start` sends the browser to the provider with a fresh `state`, `nonce` and PKCE
//! challenge; the three are kept in a short-lived HttpOnly cookie scoped to `/ui/oidc` (SameSite
//! Lax: it must come back on the provider's top-level redirect), never in a URL or a page.
//! `/ui/oidc/callback` checks `state` (and the RFC 9207 `iss`, against a mix-up), redeems the
//! code with the verifier, checks the ID token (signature, issuer, audience = this client,
//! nonce) and then the access token exactly as every API call checks it: issuer and audience
//! of the API, roles and clearance. The access token becomes the console session, like a pasted
//! one. The provider is the API's token issuer (`AUDITFLOW_JWT_ISSUER`); its keys are the API's
//! JWKS. With `AUDITFLOW_OIDC_RESOURCE` the requests carry an RFC 8707 resource indicator, which
//! is how many providers are asked for a JWT access token for the API.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::page::enc;
use crate::api::server::{AppState, Ctx};
use crate::error::ConfigError;

/// The cookie that carries one sign-in's state, nonce and PKCE verifier.
const FLOW_COOKIE: &str = "af_oidc";
/// How long a sign-in at the provider may take.
const FLOW_SECS: u64 = 600;

/// `[api.oidc]`: sign-in through an identity provider (off unless a client id is set).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcSettings {
    /// The console's client id at the provider. `AUDITFLOW_OIDC_CLIENT_ID`.
    pub client_id: Option<String>,
    /// For a confidential client (sent with HTTP Basic); a public client uses PKCE alone.
    /// `AUDITFLOW_OIDC_CLIENT_SECRET` (or `_FILE`).
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back: this API's `/ui/oidc/callback` as the
    /// browser reaches it. `AUDITFLOW_OIDC_REDIRECT_URL`.
    pub redirect_url: Option<String>,
    /// Scopes asked for; `openid` is always among them. `AUDITFLOW_OIDC_SCOPES`.
    pub scopes: String,
    /// RFC 8707 resource indicator for the API (e.g. `urn:auditflow:api`), sent with the
    /// authorization and token requests. `AUDITFLOW_OIDC_RESOURCE`.
    pub resource: Option<String>,
}

impl Default for OidcSettings {
    fn default() -> Self {
        OidcSettings { client_id: None, client_secret: None, redirect_url: None, scopes: "openid".into(), resource: None }
    }
}

impl fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<set>"))
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("resource", &self.resource)
            .finish()
    }
}

/// `https://`, or `http://` to a loopback address (local use and tests).
fn secure_url(u: &str) -> bool {
    u.starts_with("https://") || ["http://127.0.0.1", "http://localhost", "http://[::1]"].iter().any(|p| u.starts_with(p))
}

impl OidcSettings {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) {
        let text = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(v) = text("AUDITFLOW_OIDC_CLIENT_ID") {
            self.client_id = Some(v);
        }
        if let Some(v) = text("AUDITFLOW_OIDC_CLIENT_SECRET") {
            self.client_secret = Some(v);
        }
        if let Some(v) = text("AUDITFLOW_OIDC_REDIRECT_URL") {
            self.redirect_url = Some(v);
        }
        if let Some(v) = text("AUDITFLOW_OIDC_SCOPES") {
            self.scopes = v;
        }
        if let Some(v) = text("AUDITFLOW_OIDC_RESOURCE") {
            self.resource = Some(v);
        }
    }

    pub fn enabled(&self) -> bool {
        self.client_id.is_some()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(r) = &self.redirect_url else {
            return Err(ConfigError::new("AUDITFLOW_OIDC_REDIRECT_URL", "required with AUDITFLOW_OIDC_CLIENT_ID (this API's /ui/oidc/callback as browsers reach it)"));
        };
        if !secure_url(r) || !r.ends_with("/ui/oidc/callback") {
            return Err(ConfigError::new("AUDITFLOW_OIDC_REDIRECT_URL", "an https:// URL (http only on loopback) ending in /ui/oidc/callback"));
        }
        if self.scopes.split_whitespace().any(|s| s.chars().any(|c| c.is_control() || c == '"' || c == '\\')) {
            return Err(ConfigError::new("AUDITFLOW_OIDC_SCOPES", "scope names separated by spaces"));
        }
        Ok(())
    }

    /// The scopes sent: the configured ones, with `openid` first.
    fn scope(&self) -> String {
        let mut scopes = vec!["openid"];
        scopes.extend(self.scopes.split_whitespace().filter(|s| *s != "openid"));
        scopes.join(" ")
    }
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

/// Sign-in through the provider, ready to use (the API's state holds one when configured).
pub struct Oidc {
    pub settings: OidcSettings,
    pub provider: ProviderMetadata,
    http: reqwest::Client,
}

fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).redirect(reqwest::redirect::Policy::none()).build()
}

impl Oidc {
    /// Read the provider's discovery document (`<issuer>/.well-known/openid-configuration`) and
    /// check it: same issuer, endpoints over https (http only on loopback), S256 offered. At
    /// start, so a wrong issuer or an unreachable provider stops the API with the setting named.
    pub async fn discover(settings: &OidcSettings, issuer: &str) -> Result<Option<Oidc>, ConfigError> {
        if !settings.enabled() {
            return Ok(None);
        }
        settings.validate()?;
        let err = |m: String| ConfigError::new("AUDITFLOW_OIDC_CLIENT_ID / AUDITFLOW_JWT_ISSUER", m);
        if !secure_url(issuer) {
            return Err(err(format!("the issuer {issuer:?} must be https:// (http only on loopback) for sign-in")));
        }
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let http = client().map_err(|e| err(e.to_string()))?;
        let r = http.get(&url).send().await.map_err(|e| err(format!("discovery at {url} failed: {e}")))?;
        if !r.status().is_success() {
            return Err(err(format!("discovery at {url} answered {}", r.status())));
        }
        let body = r.bytes().await.map_err(|e| err(format!("discovery at {url}: {e}")))?;
        let provider: ProviderMetadata = serde_json::from_slice(&body).map_err(|e| err(format!("discovery at {url} is not provider metadata: {e}")))?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it was asked for.
        if provider.issuer != issuer {
            return Err(err(format!("discovery names issuer {:?}, not {issuer:?}", provider.issuer)));
        }
        if !secure_url(&provider.authorization_endpoint) || !secure_url(&provider.token_endpoint) {
            return Err(err("the provider's endpoints must be https:// (http only on loopback)".into()));
        }
        if provider.code_challenge_methods_supported.as_ref().is_some_and(|m| !m.iter().any(|x| x == "S256")) {
            return Err(err("the provider does not offer PKCE with S256".into()));
        }
        Ok(Some(Oidc { settings: settings.clone(), provider, http }))
    }

    /// The authorization request for one sign-in.
    fn authorize_url(&self, flow: &Flow) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", self.settings.client_id.clone().unwrap_or_default()),
            ("redirect_uri", self.settings.redirect_url.clone().unwrap_or_default()),
            ("scope", self.settings.scope()),
            ("state", flow.state.clone()),
            ("nonce", flow.nonce.clone()),
            ("code_challenge", flow.challenge()),
            ("code_challenge_method", "S256".into()),
        ];
        if let Some(r) = &self.settings.resource {
            pairs.push(("resource", r.clone()));
        }
        let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        let sep = if self.provider.authorization_endpoint.contains('?') { '&' } else { '?' };
        format!("{}{sep}{}", self.provider.authorization_endpoint, q.join("&"))
    }

    /// Redeem the code: the access token and the ID token.
    async fn redeem(&self, code: &str, verifier: &str) -> Result<(String, String), String> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", self.settings.redirect_url.clone().unwrap_or_default()),
            ("code_verifier", verifier.to_string()),
            ("client_id", self.settings.client_id.clone().unwrap_or_default()),
        ];
        if let Some(r) = &self.settings.resource {
            form.push(("resource", r.clone()));
        }
        let mut req = self.http.post(&self.provider.token_endpoint).form(&form);
        if let Some(secret) = &self.settings.client_secret {
            req = req.basic_auth(self.settings.client_id.clone().unwrap_or_default(), Some(secret));
        }
        let r = req.send().await.map_err(|e| format!("token endpoint: {e}"))?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| format!("token endpoint: {e}"))?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // The provider's error code only (RFC 6749 §5.2), never the body as a whole.
            let code: String = v["error"].as_str().unwrap_or("unknown").chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            return Err(format!("token endpoint answered {status} ({code})"));
        }
        let access = v["access_token"].as_str().ok_or("no access_token in the token response")?;
        let id = v["id_token"].as_str().ok_or("no id_token in the token response (is `openid` among the scopes?)")?;
        Ok((access.to_string(), id.to_string()))
    }
}

/// One sign-in's secrets, kept in the flow cookie until the provider sends the browser back.
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
}

fn random_text() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Flow {
    fn new() -> Flow {
        // 43 characters of 256 random bits each: the PKCE verifier's minimum length, and beyond
        // guessing for state and nonce.
        Flow { state: random_text(), nonce: random_text(), verifier: random_text() }
    }

    /// RFC 7636 S256: BASE64URL(SHA256(verifier)).
    fn challenge(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }

    fn cookie_value(&self) -> String {
        format!("{}.{}.{}", self.state, self.nonce, self.verifier)
    }

    fn from_cookie(headers: &HeaderMap) -> Option<Flow> {
        let v = super::cookie(headers, FLOW_COOKIE)?;
        let mut parts = v.split('.');
        let (state, nonce, verifier) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = |s: &str| s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (parts.next().is_none() && ok(state) && ok(nonce) && ok(verifier)).then(|| Flow { state: state.into(), nonce: nonce.into(), verifier: verifier.into() })
    }
}

fn flow_cookie(value: &str, max_age: u64, headers: &HeaderMap) -> Option<HeaderValue> {
    let secure = if super::loopback(headers) { "" } else { "; Secure" };
    HeaderValue::from_str(&format!("{FLOW_COOKIE}={value}; Path=/ui/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")).ok()
}

/// Off unless configured: the same answer as a route that does not exist.
fn not_configured() -> Response {
    super::problem_page(None, crate::api::problem::Problem::not_found())
}

pub async fn start(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(oidc) = &state.oidc else { return not_configured() };
    let flow = Flow::new();
    let mut r = Redirect::to(&oidc.authorize_url(&flow)).into_response();
    if let Some(c) = flow_cookie(&flow.cookie_value(), FLOW_SECS, &headers) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

pub async fn callback(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let Some(oidc) = &state.oidc else { return not_configured() };
    let outcome = finish(&state, oidc, &headers, &q).await;
    let mut r = match outcome {
        Ok((token, caller)) => super::start_session(&state, ctx, &headers, &token, caller, "oidc").await,
        Err(why) => {
            tracing::warn!(ip = ?ctx.ip, "console sign-in through the identity provider refused: {why}");
            let _ = state.audit(&ctx, "auth.denied", None, None, 401, serde_json::json!({"why": why, "method": "oidc"})).await;
            Redirect::to("/ui/login?why=provider").into_response()
        }
    };
    // The flow is over either way: its cookie goes.
    if let Some(c) = flow_cookie("", 0, &headers) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

/// Every check of the callback; the reason of a refusal names the check, never a secret.
async fn finish(state: &AppState, oidc: &Oidc, headers: &HeaderMap, q: &CallbackQuery) -> Result<(String, crate::api::auth::Caller), String> {
    if let Some(e) = &q.error {
        let e: String = e.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        return Err(format!("the provider answered {e}"));
    }
    let flow = Flow::from_cookie(headers).ok_or("no sign-in in progress in this browser (or it took longer than 10 minutes)")?;
    let state_ok = q.state.as_deref().is_some_and(|s| crate::api::auth::constant_time_eq(s.as_bytes(), flow.state.as_bytes()));
    if !state_ok {
        return Err("the state does not match this browser's sign-in".into());
    }
    if q.iss.as_deref().is_some_and(|iss| iss != oidc.provider.issuer) {
        return Err("the response names another issuer (RFC 9207)".into());
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty() && c.len() <= 4096).ok_or("no authorization code")?;
    let (access, id) = oidc.redeem(code, &flow.verifier).await?;
    let client_id = oidc.settings.client_id.as_deref().unwrap_or_default();
    let id_subject = state.tokens.verify_id_token(&id, client_id, &flow.nonce).await.map_err(|e| format!("ID token: {e}"))?;
    let caller = state.tokens.verify(&access).await.map_err(|e| format!("access token: {e}"))?;
    if caller.subject != id_subject {
        return Err("the access token and the ID token name different subjects".into());
    }
    Ok((access, caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        let f = Flow { state: String::new(), nonce: String::new(), verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into() };
        assert_eq!(f.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let fresh = Flow::new();
        assert_eq!(fresh.verifier.len(), 43);
        assert_ne!(fresh.state, Flow::new().state);
    }

    #[test]
    fn the_flow_cookie_round_trips_and_refuses_anything_else() {
        let f = Flow::new();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("af_session=x; {FLOW_COOKIE}={}", f.cookie_value())).unwrap());
        let back = Flow::from_cookie(&h).unwrap();
        assert_eq!((back.state, back.nonce, back.verifier), (f.state, f.nonce, f.verifier));
        let mut bad = HeaderMap::new();
        bad.insert(header::COOKIE, HeaderValue::from_static("af_oidc=short.short.short"));
        assert!(Flow::from_cookie(&bad).is_none());
    }

    #[test]
    fn settings_need_a_callback_url_and_keep_the_secret_out_of_logs() {
        let mut s = OidcSettings::default();
        assert!(s.validate().is_ok(), "off by default");
        s.client_id = Some("console".into());
        assert!(s.validate().is_err(), "no redirect URL");
        s.redirect_url = Some("http://evil.example/ui/oidc/callback".into());
        assert!(s.validate().is_err(), "plain http off loopback");
        s.redirect_url = Some("https://auditflow.example/ui/oidc/callback".into());
        s.client_secret = Some("hush-hush".into());
        assert!(s.validate().is_ok());
        assert!(!format!("{s:?}").contains("hush-hush"));
        s.scopes = "profile openid email".into();
        assert_eq!(s.scope(), "openid profile email");
    }
}
