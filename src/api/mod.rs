//! `audit-api`: HTTP ingest and the query service for analysts, auditors and privacy officers.
//!
//! Who is calling is [`auth`]; what each endpoint admits is the route table in [`routes`]
//! (deny by default); every read, decryption, export, erasure, triage and refusal writes an
//! audit event of its own ([`self_audit`]). The handlers are thin: the questions themselves
//! are the same functions the CLI uses.

pub mod alerts;
pub mod auth;
pub mod compliance;
pub mod console;
pub mod dlq;
pub mod events;
pub mod ingest;
pub mod ledger;
pub mod problem;
pub mod routes;
pub mod self_audit;
pub mod server;
pub mod subjects;

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::ConfigError;

/// The scope a token needs, next to role `analyst` (or `auditor`), to see personal fields in
/// clear; the request must also give a `reason`.
pub const PII_SCOPE: &str = "pii:read";

/// `[api]`: the API's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// `[api.auth]`
    pub auth: auth::AuthSettings,
    /// `[api.oidc]`: the console's sign-in through an identity provider.
    pub oidc: console::oidc::OidcSettings,
    /// Where the API listens. `AUDITFLOW_API_LISTEN`.
    pub listen: String,
    /// Largest request body; a bigger one is answered 413. `AUDITFLOW_API_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// Most events in one ingest request. `AUDITFLOW_API_MAX_EVENTS`.
    pub max_events: usize,
    /// A request taking longer is answered 503. `AUDITFLOW_API_REQUEST_TIMEOUT_SECS`.
    pub request_timeout_secs: u64,
    /// Take the caller's address from the last `X-Forwarded-For` entry (only behind a proxy
    /// that sets it). `AUDITFLOW_API_TRUST_FORWARDED_FOR`.
    pub trust_forwarded_for: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            auth: auth::AuthSettings::default(),
            oidc: console::oidc::OidcSettings::default(),
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 16 * 1024 * 1024,
            max_events: 10_000,
            request_timeout_secs: 30,
            trust_forwarded_for: false,
        }
    }
}

impl ApiSettings {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let text = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        fn number<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, ConfigError> {
            v.parse().map_err(|_| ConfigError::new(k, format!("not a number: {v:?}")))
        }
        if let Some(v) = text("AUDITFLOW_API_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = text("AUDITFLOW_API_MAX_BODY_BYTES") {
            self.max_body_bytes = number("AUDITFLOW_API_MAX_BODY_BYTES", &v)?;
        }
        if let Some(v) = text("AUDITFLOW_API_MAX_EVENTS") {
            self.max_events = number("AUDITFLOW_API_MAX_EVENTS", &v)?;
        }
        if let Some(v) = text("AUDITFLOW_API_REQUEST_TIMEOUT_SECS") {
            self.request_timeout_secs = number("AUDITFLOW_API_REQUEST_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = text("AUDITFLOW_API_TRUST_FORWARDED_FOR") {
            self.trust_forwarded_for = match v.as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(ConfigError::new("AUDITFLOW_API_TRUST_FORWARDED_FOR", "true or false")),
            };
        }
        self.oidc.apply_env(env);
        self.auth.apply_env(env)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new("AUDITFLOW_API_LISTEN", format!("not an address:port: {:?}", self.listen)));
        }
        if !(1024..=1 << 30).contains(&self.max_body_bytes) {
            return Err(ConfigError::new("AUDITFLOW_API_MAX_BODY_BYTES", "between 1 KiB and 1 GiB"));
        }
        if !(1..=100_000).contains(&self.max_events) {
            return Err(ConfigError::new("AUDITFLOW_API_MAX_EVENTS", "between 1 and 100000"));
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err(ConfigError::new("AUDITFLOW_API_REQUEST_TIMEOUT_SECS", "between 1 and 3600"));
        }
        self.oidc.validate()?;
        self.auth.validate()
    }
}
