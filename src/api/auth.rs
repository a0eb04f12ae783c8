//! Who is calling: bearer JWTs, verified against an HS256 secret (small installations) or the
//! public keys of a JWKS (RS256 / ES256, an OIDC identity provider), and turned into a
//! [`Caller`]: subject, roles, clearance and scopes.
//!
//! Each token is checked only against keys of its own family: an HS256 token against the
//! secret, an RS256 or ES256 token against the JWKS key its `kid` names, which must be of that
//! algorithm. So a public key can never be used as an HMAC secret (HS/RS confusion), and
//! `alg: none` is no algorithm at all. `exp`, `iss`, `aud` and `sub` are required and checked,
//! `nbf` when present (identity providers' access tokens often carry none, RFC 9068), with at
//! most 60 s of leeway. Errors say why, never echo the token. The console's OIDC sign-in also
//! checks the identity provider's ID token here ([`Verifier::verify_id_token`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::event::Classification;

/// Longest clock skew between the identity provider and the API that is forgiven.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// What a caller may do. Deny by default: an endpoint names the roles it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send events.
    Ingest,
    /// Search events and alerts, triage alerts.
    Analyst,
    /// Read only: events, alerts, reports, ledger verification, proofs.
    Auditor,
    /// Export and erase a subject.
    Privacy,
    /// Legal holds, dead-letter replay.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Ingest, Role::Analyst, Role::Auditor, Role::Privacy, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::Privacy => "privacy",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub roles: BTreeSet<Role>,
    /// The most sensitive classification the caller may see; PUBLIC when the token says none.
    pub clearance: Classification,
    /// OAuth scopes (`scope`, space-separated), e.g. `pii:read`.
    pub scopes: BTreeSet<String>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
    pub fn may_see(&self, c: Classification) -> bool {
        c <= self.clearance
    }
}

/// `[api.auth]`: how tokens are verified.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret (at least 32 bytes). `AUDITFLOW_JWT_SECRET`.
    pub jwt_secret: Option<String>,
    /// A JWKS document (RS256 / ES256 public keys). `AUDITFLOW_JWKS_FILE`.
    pub jwks_file: Option<std::path::PathBuf>,
    /// An identity provider's JWKS endpoint (https; http only to loopback).
    /// `AUDITFLOW_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// Required `iss`. `AUDITFLOW_JWT_ISSUER`.
    pub issuer: String,
    /// Required `aud`. `AUDITFLOW_JWT_AUDIENCE`.
    pub audience: String,
    /// Clock skew forgiven on `exp` / `nbf`, at most 60. `AUDITFLOW_JWT_LEEWAY_SECS`.
    pub leeway_secs: u64,
    /// The claim holding the roles (a list, or a space-separated string). `AUDITFLOW_JWT_ROLES_CLAIM`.
    pub roles_claim: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: None,
            jwks_file: None,
            jwks_url: None,
            issuer: "auditflow".into(),
            audience: "auditflow-api".into(),
            leeway_secs: 30,
            roles_claim: "roles".into(),
        }
    }
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("roles_claim", &self.roles_claim)
            .finish()
    }
}

impl AuthSettings {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let text = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(v) = env.get("AUDITFLOW_JWT_SECRET").filter(|v| !v.is_empty()) {
            self.jwt_secret = Some(v.clone());
        }
        if let Some(v) = text("AUDITFLOW_JWKS_FILE") {
            self.jwks_file = Some(v.into());
        }
        if let Some(v) = text("AUDITFLOW_JWKS_URL") {
            self.jwks_url = Some(v);
        }
        if let Some(v) = text("AUDITFLOW_JWT_ISSUER") {
            self.issuer = v;
        }
        if let Some(v) = text("AUDITFLOW_JWT_AUDIENCE") {
            self.audience = v;
        }
        if let Some(v) = text("AUDITFLOW_JWT_LEEWAY_SECS") {
            self.leeway_secs = v.parse().map_err(|_| ConfigError::new("AUDITFLOW_JWT_LEEWAY_SECS", format!("not a number: {v:?}")))?;
        }
        if let Some(v) = text("AUDITFLOW_JWT_ROLES_CLAIM") {
            self.roles_claim = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError::new("AUDITFLOW_JWT_SECRET", "at least 32 bytes (e.g. `openssl rand -base64 48`)"));
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err(ConfigError::new("AUDITFLOW_JWKS_FILE / AUDITFLOW_JWKS_URL", "one or the other"));
        }
        if let Some(u) = &self.jwks_url {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"].iter().any(|p| u.starts_with(p));
            if !u.starts_with("https://") && !loopback {
                return Err(ConfigError::new("AUDITFLOW_JWKS_URL", "https:// (plain http only to a loopback address): the keys decide who gets in"));
            }
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::new("AUDITFLOW_JWT_LEEWAY_SECS", format!("at most {MAX_LEEWAY_SECS}")));
        }
        if self.issuer.trim().is_empty() || self.audience.trim().is_empty() {
            return Err(ConfigError::new("AUDITFLOW_JWT_ISSUER / AUDITFLOW_JWT_AUDIENCE", "must not be empty"));
        }
        if self.roles_claim.trim().is_empty() {
            return Err(ConfigError::new("AUDITFLOW_JWT_ROLES_CLAIM", "must not be empty"));
        }
        Ok(())
    }
}

/// Why a request's token was refused (answered 401; logged without the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted here")]
    Algorithm(String),
    #[error("no key for this token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token refused: {0}")]
    Invalid(String),
}

/// `aud`: one audience, or several (identity providers send either).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(s: &str) -> Audience {
        Audience::One(s.to_string())
    }
}

/// The claims auditflow reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: Audience,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Everything else (the roles claim, whatever its name).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    settings: AuthSettings,
    secret: Option<DecodingKey>,
    /// `kid` → key and the one algorithm it verifies.
    jwks: HashMap<String, (DecodingKey, Algorithm)>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("hs256", &self.secret.is_some()).field("jwks_kids", &self.jwks.keys().collect::<Vec<_>>()).finish()
    }
}

impl Verifier {
    /// `jwks`: the JWKS document's text, when one is configured.
    pub fn new(settings: &AuthSettings, jwks: Option<&str>) -> Result<Verifier, ConfigError> {
        settings.validate()?;
        let secret = settings.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes()));
        let mut keys = HashMap::new();
        if let Some(text) = jwks {
            let set: JwkSet = serde_json::from_str(text).map_err(|e| ConfigError::new("AUDITFLOW_JWKS_FILE", format!("not a JWKS document: {e}")))?;
            for jwk in &set.keys {
                let Some(kid) = jwk.common.key_id.clone() else { continue };
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    // Symmetric or other keys in a JWKS are never accepted.
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| ConfigError::new("AUDITFLOW_JWKS_FILE", format!("key {kid}: {e}")))?;
                keys.insert(kid, (key, alg));
            }
        }
        if secret.is_none() && keys.is_empty() {
            return Err(ConfigError::new("AUDITFLOW_JWT_SECRET / AUDITFLOW_JWKS_FILE / AUDITFLOW_JWKS_URL", "one is required: the API admits no caller without a way to verify tokens"));
        }
        Ok(Verifier { settings: settings.clone(), secret, jwks: keys })
    }

    /// The caller a token proves, or why not.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (self.secret.as_ref().ok_or_else(|| AuthError::Algorithm("HS256".into()))?, Algorithm::HS256),
            Algorithm::RS256 | Algorithm::ES256 => {
                let (key, alg) = header
                    .kid
                    .as_ref()
                    .and_then(|k| self.jwks.get(k))
                    .ok_or_else(|| AuthError::UnknownKey(header.kid.clone()))?;
                if *alg != header.alg {
                    return Err(AuthError::Algorithm(format!("{:?} with a {:?} key", header.alg, alg)));
                }
                (key, *alg)
            }
            other => return Err(AuthError::Algorithm(format!("{other:?}"))),
        };
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway_secs.min(MAX_LEEWAY_SECS);
        v.validate_nbf = true;
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.set_audience(&[self.settings.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.caller(data.claims)
    }

    /// An OpenID Connect ID token from the identity provider: signed by a JWKS key (never the
    /// HS256 secret), issued by the configured issuer for `client_id`, unexpired, carrying the
    /// `nonce` of this sign-in. Returns its subject.
    pub fn verify_id_token(&self, token: &str, client_id: &str, nonce: &str) -> Result<String, AuthError> {
        #[derive(Deserialize)]
        struct IdClaims {
            sub: String,
            #[serde(default)]
            nonce: Option<String>,
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let (key, alg) = header.kid.as_ref().and_then(|k| self.jwks.get(k)).ok_or_else(|| AuthError::UnknownKey(header.kid.clone()))?;
        if *alg != header.alg {
            return Err(AuthError::Algorithm(format!("{:?} with a {:?} key", header.alg, alg)));
        }
        let mut v = Validation::new(*alg);
        v.leeway = self.settings.leeway_secs.min(MAX_LEEWAY_SECS);
        v.validate_nbf = true;
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.set_audience(&[client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<IdClaims>(token, key, &v).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let nonce_ok = data.claims.nonce.as_deref().is_some_and(|n| constant_time_eq(n.as_bytes(), nonce.as_bytes()));
        if !nonce_ok {
            return Err(AuthError::Invalid("the ID token's nonce is not this sign-in's".into()));
        }
        Ok(data.claims.sub)
    }

    fn caller(&self, c: Claims) -> Result<Caller, AuthError> {
        if c.sub.trim().is_empty() {
            return Err(AuthError::Invalid("empty subject".into()));
        }
        let roles = match c.other.get(&self.settings.roles_claim) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).filter_map(Role::parse).collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().filter_map(Role::parse).collect(),
            _ => BTreeSet::new(),
        };
        let clearance = match c.clearance.as_deref() {
            None => Classification::Public,
            Some(s) => serde_json::from_value(serde_json::Value::String(s.to_string()))
                .map_err(|_| AuthError::Invalid(format!("unknown clearance {:?}", s.chars().take(32).collect::<String>())))?,
        };
        let scopes = c.scope.as_deref().unwrap_or_default().split_whitespace().map(str::to_string).collect();
        Ok(Caller { subject: c.sub, roles, clearance, scopes })
    }
}

/// Equal byte strings, compared in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The JWKS document's text: read from `AUDITFLOW_JWKS_FILE` or fetched from
/// `AUDITFLOW_JWKS_URL` (10 s timeout, no redirects), when one is set.
pub async fn read_jwks(settings: &AuthSettings) -> Result<Option<String>, ConfigError> {
    if let Some(p) = &settings.jwks_file {
        return tokio::fs::read_to_string(p)
            .await
            .map(Some)
            .map_err(|e| ConfigError::new("AUDITFLOW_JWKS_FILE", format!("cannot read {}: {e}", p.display())));
    }
    let Some(url) = &settings.jwks_url else { return Ok(None) };
    let err = |e: String| ConfigError::new("AUDITFLOW_JWKS_URL", e);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let r = client.get(url).send().await.map_err(|e| err(format!("cannot fetch the JWKS: {e}")))?;
    if !r.status().is_success() {
        return Err(err(format!("the JWKS endpoint answered {}", r.status())));
    }
    r.text().await.map(Some).map_err(|e| err(format!("cannot read the JWKS: {e}")))
}

/// Mint an HS256 token (`auditflow token issue`): for local use and tests.
pub fn issue(settings: &AuthSettings, subject: &str, roles: &[Role], clearance: Classification, scopes: &[String], ttl_secs: i64, now: i64) -> Result<String, ConfigError> {
    let secret = settings
        .jwt_secret
        .as_ref()
        .ok_or_else(|| ConfigError::new("AUDITFLOW_JWT_SECRET", "required to issue tokens (HS256)"))?;
    settings.validate()?;
    let mut other = serde_json::Map::new();
    other.insert(settings.roles_claim.clone(), serde_json::json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()));
    let claims = Claims {
        sub: subject.to_string(),
        iss: settings.issuer.clone(),
        aud: Audience::One(settings.audience.clone()),
        exp: now + ttl_secs,
        nbf: Some(now),
        iat: now,
        clearance: Some(clearance.as_str().to_string()),
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        other,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| ConfigError::new("AUDITFLOW_JWT_SECRET", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn vector(name: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/jwt").join(name)).expect("test key")
    }

    fn settings() -> AuthSettings {
        AuthSettings { jwt_secret: Some(SECRET.into()), ..AuthSettings::default() }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims(exp_in: i64) -> Claims {
        let mut other = serde_json::Map::new();
        other.insert("roles".into(), serde_json::json!(["analyst", "unknown-role"]));
        Claims {
            sub: "alice".into(),
            iss: "auditflow".into(),
            aud: "auditflow-api".into(),
            exp: now() + exp_in,
            nbf: Some(now() - 5),
            iat: now() - 5,
            clearance: Some("CONFIDENTIAL".into()),
            scope: Some("pii:read other".into()),
            other,
        }
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, c: &Claims) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, c, key).expect("sign")
    }

    fn verifier() -> Verifier {
        Verifier::new(&settings(), Some(&vector("jwks.json"))).expect("verifier")
    }

    #[test]
    fn issued_tokens_verify_into_the_caller_they_name() {
        let t = issue(&settings(), "bob", &[Role::Auditor, Role::Privacy], Classification::Restricted, &["pii:read".into()], 3600, now()).unwrap();
        let c = verifier().verify(&t).unwrap();
        assert_eq!(c.subject, "bob");
        assert_eq!(c.roles, [Role::Auditor, Role::Privacy].into_iter().collect());
        assert_eq!(c.clearance, Classification::Restricted);
        assert!(c.scopes.contains("pii:read"));
        assert!(c.may_see(Classification::Confidential) && !c.has(Role::Admin));
    }

    #[test]
    fn rs256_and_es256_tokens_verify_against_the_jwks() {
        let rsa = EncodingKey::from_rsa_pem(vector("rsa-private.pem").as_bytes()).unwrap();
        let ec = EncodingKey::from_ec_pem(vector("ec-private.pem").as_bytes()).unwrap();
        let v = verifier();
        let c = v.verify(&sign(Algorithm::RS256, Some("test-rsa-1"), &rsa, &claims(600))).unwrap();
        assert_eq!((c.subject.as_str(), c.clearance), ("alice", Classification::Confidential));
        assert_eq!(c.roles, [Role::Analyst].into_iter().collect(), "unknown roles are ignored");
        assert!(v.verify(&sign(Algorithm::ES256, Some("test-ec-1"), &ec, &claims(600))).is_ok());
    }

    #[test]
    fn every_kind_of_bad_token_is_refused() {
        let v = verifier();
        let hs = EncodingKey::from_secret(SECRET.as_bytes());
        let rsa = EncodingKey::from_rsa_pem(vector("rsa-private.pem").as_bytes()).unwrap();
        let other = EncodingKey::from_rsa_pem(vector("other-rsa-private.pem").as_bytes()).unwrap();

        // Expired beyond the leeway.
        assert!(matches!(v.verify(&sign(Algorithm::HS256, None, &hs, &claims(-120))), Err(AuthError::Invalid(_))));
        // Not yet valid.
        let mut early = claims(600);
        early.nbf = Some(now() + 300);
        assert!(matches!(v.verify(&sign(Algorithm::HS256, None, &hs, &early)), Err(AuthError::Invalid(_))));
        // Wrong audience, wrong issuer.
        let mut aud = claims(600);
        aud.aud = "someone-else".into();
        assert!(matches!(v.verify(&sign(Algorithm::HS256, None, &hs, &aud)), Err(AuthError::Invalid(_))));
        let mut iss = claims(600);
        iss.iss = "evil".into();
        assert!(matches!(v.verify(&sign(Algorithm::HS256, None, &hs, &iss)), Err(AuthError::Invalid(_))));
        // Signed with another key (known kid, wrong signer), another secret, an unknown kid.
        assert!(matches!(v.verify(&sign(Algorithm::RS256, Some("test-rsa-1"), &other, &claims(600))), Err(AuthError::Invalid(_))));
        let wrong_secret = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!");
        assert!(matches!(v.verify(&sign(Algorithm::HS256, None, &wrong_secret, &claims(600))), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify(&sign(Algorithm::RS256, Some("nope"), &rsa, &claims(600))), Err(AuthError::UnknownKey(_))));
        // An RS256 key id used with ES256.
        let ec = EncodingKey::from_ec_pem(vector("ec-private.pem").as_bytes()).unwrap();
        assert!(matches!(v.verify(&sign(Algorithm::ES256, Some("test-rsa-1"), &ec, &claims(600))), Err(AuthError::Algorithm(_))));
        // HS/RS confusion: HS256 signed with the RSA public key's JWKS text as the secret.
        let public_as_secret = EncodingKey::from_secret(vector("jwks.json").as_bytes());
        assert!(matches!(v.verify(&sign(Algorithm::HS256, Some("test-rsa-1"), &public_as_secret, &claims(600))), Err(AuthError::Invalid(_))));
        // alg: none, and garbage.
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&serde_json::to_string(&claims(600)).unwrap()));
        assert!(matches!(v.verify(&none), Err(AuthError::Malformed(_))));
        assert!(matches!(v.verify("not-a-token"), Err(AuthError::Malformed(_))));
        // An HS256 token when only a JWKS is configured.
        let jwks_only = Verifier::new(&AuthSettings::default(), Some(&vector("jwks.json"))).unwrap();
        assert!(matches!(jwks_only.verify(&sign(Algorithm::HS256, None, &hs, &claims(600))), Err(AuthError::Algorithm(_))));
        // No error message repeats the token.
        let t = sign(Algorithm::HS256, None, &wrong_secret, &claims(600));
        assert!(!v.verify(&t).unwrap_err().to_string().contains(&t[..20]));
    }

    #[test]
    fn provider_tokens_without_nbf_and_with_several_audiences_verify() {
        let rsa = EncodingKey::from_rsa_pem(vector("rsa-private.pem").as_bytes()).unwrap();
        let v = verifier();
        let mut c = claims(600);
        c.nbf = None;
        c.aud = Audience::Many(vec!["https://idp.example/userinfo".into(), "auditflow-api".into()]);
        assert_eq!(v.verify(&sign(Algorithm::RS256, Some("test-rsa-1"), &rsa, &c)).unwrap().subject, "alice");
        c.aud = Audience::Many(vec!["someone-else".into()]);
        assert!(matches!(v.verify(&sign(Algorithm::RS256, Some("test-rsa-1"), &rsa, &c)), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn id_tokens_need_the_client_audience_the_nonce_and_a_jwks_key() {
        let rsa = EncodingKey::from_rsa_pem(vector("rsa-private.pem").as_bytes()).unwrap();
        let hs = EncodingKey::from_secret(SECRET.as_bytes());
        let v = verifier();
        let mut c = claims(600);
        c.aud = "console-client".into();
        c.other.insert("nonce".into(), serde_json::json!("n-123"));
        let t = sign(Algorithm::RS256, Some("test-rsa-1"), &rsa, &c);
        assert_eq!(v.verify_id_token(&t, "console-client", "n-123").unwrap(), "alice");
        assert!(v.verify_id_token(&t, "console-client", "n-456").is_err(), "another sign-in's nonce");
        assert!(v.verify_id_token(&t, "other-client", "n-123").is_err(), "another client's token");
        assert!(v.verify_id_token(&sign(Algorithm::HS256, None, &hs, &c), "console-client", "n-123").is_err(), "HS256 is not an ID token signer here");
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"ab", b"abc"));
    }

    #[test]
    fn settings_refuse_weak_or_missing_keys() {
        assert!(Verifier::new(&AuthSettings::default(), None).is_err(), "no way to verify: refused");
        let short = AuthSettings { jwt_secret: Some("short".into()), ..AuthSettings::default() };
        assert!(short.validate().is_err());
        let lax = AuthSettings { leeway_secs: 300, ..settings() };
        assert!(lax.validate().is_err());
        assert!(!format!("{:?}", settings()).contains(SECRET), "the secret never prints");
    }
}
