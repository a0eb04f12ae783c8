//! `[rules]` settings of the `audit-rules` stage.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesSettings {
    /// Directory of rule files (`*.yaml`, `*.yml`). `AUDITFLOW_RULES_DIR`.
    pub dir: PathBuf,
    /// How often the rule files are checked for changes; 0 reloads on SIGHUP only.
    /// `AUDITFLOW_RULES_RELOAD_SECS`.
    pub reload_interval_secs: u64,
    /// Prefix of every Redis key the stage writes (window state and block decisions).
    /// `AUDITFLOW_REDIS_PREFIX`.
    pub key_prefix: String,
    /// How often absence rules look for silent groups. `AUDITFLOW_RULES_ABSENCE_CHECK_SECS`.
    pub absence_check_secs: u64,
    /// A Redis call slower than this fails the batch, which is retried. `AUDITFLOW_REDIS_TIMEOUT_MS`.
    pub redis_timeout_ms: u64,
}

impl Default for RulesSettings {
    fn default() -> Self {
        RulesSettings {
            dir: PathBuf::from("rules"),
            reload_interval_secs: 5,
            key_prefix: "auditflow:".into(),
            absence_check_secs: 10,
            redis_timeout_ms: 2000,
        }
    }
}

impl RulesSettings {
    pub(crate) fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        fn num(env: &HashMap<String, String>, name: &str, target: &mut u64) -> Result<(), ConfigError> {
            if let Some(v) = env.get(name) {
                *target = v.trim().parse().map_err(|e| ConfigError::new(name, format!("{e} (got {v:?})")))?;
            }
            Ok(())
        }
        if let Some(v) = env.get("AUDITFLOW_RULES_DIR") {
            self.dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("AUDITFLOW_REDIS_PREFIX") {
            self.key_prefix = v.clone();
        }
        num(env, "AUDITFLOW_RULES_RELOAD_SECS", &mut self.reload_interval_secs)?;
        num(env, "AUDITFLOW_RULES_ABSENCE_CHECK_SECS", &mut self.absence_check_secs)?;
        num(env, "AUDITFLOW_REDIS_TIMEOUT_MS", &mut self.redis_timeout_ms)?;
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::new("AUDITFLOW_RULES_DIR", "must not be empty"));
        }
        if self.absence_check_secs == 0 {
            return Err(ConfigError::new("AUDITFLOW_RULES_ABSENCE_CHECK_SECS", "must be at least 1"));
        }
        if !(50..=60_000).contains(&self.redis_timeout_ms) {
            return Err(ConfigError::new("AUDITFLOW_REDIS_TIMEOUT_MS", "must be between 50 and 60000"));
        }
        if self.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new("AUDITFLOW_REDIS_PREFIX", "must not contain spaces or control characters"));
        }
        Ok(())
    }
}
