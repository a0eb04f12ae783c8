//! The auditflow API's core: who is calling and what they may see ([`auth`]). The HTTP
//! service (`audit-api`) builds on it.

pub mod auth;

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::ConfigError;

/// `[api]`: the API's own settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// `[api.auth]`
    pub auth: auth::AuthSettings,
}

impl ApiSettings {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        self.auth.apply_env(env)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate()
    }
}
