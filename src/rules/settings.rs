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
    /// An event more than this ahead of its receive time is judged at its receive time by the
    /// stateful rules (see [`super::WindowLimits`]). `AUDITFLOW_RULES_MAX_FUTURE_SKEW_SECS`.
    pub max_future_skew_secs: u64,
    /// Newest events kept per sequence step and group. `AUDITFLOW_RULES_SEQUENCE_KEEP`.
    pub sequence_keep: u32,
}

impl Default for RulesSettings {
    fn default() -> Self {
        RulesSettings {
            dir: PathBuf::from("rules"),
            reload_interval_secs: 5,
            key_prefix: "auditflow:".into(),
            absence_check_secs: 10,
            redis_timeout_ms: 2000,
            max_future_skew_secs: 300,
            sequence_keep: 1000,
        }
    }
}

impl RulesSettings {
    pub fn window_limits(&self) -> super::WindowLimits {
        super::WindowLimits {
            max_future_skew_ms: (self.max_future_skew_secs * 1000) as i64,
            sequence_keep: self.sequence_keep,
        }
    }

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
        num(env, "AUDITFLOW_RULES_MAX_FUTURE_SKEW_SECS", &mut self.max_future_skew_secs)?;
        if let Some(v) = env.get("AUDITFLOW_RULES_SEQUENCE_KEEP") {
            self.sequence_keep = v
                .trim()
                .parse()
                .map_err(|e| ConfigError::new("AUDITFLOW_RULES_SEQUENCE_KEEP", format!("{e} (got {v:?})")))?;
        }
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
        // Within a day: the enrich stage already refuses events further ahead than that.
        if self.max_future_skew_secs > 86_400 {
            return Err(ConfigError::new("AUDITFLOW_RULES_MAX_FUTURE_SKEW_SECS", "must be at most 86400"));
        }
        if !(1..=100_000).contains(&self.sequence_keep) {
            return Err(ConfigError::new("AUDITFLOW_RULES_SEQUENCE_KEEP", "must be between 1 and 100000"));
        }
        if self.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new("AUDITFLOW_REDIS_PREFIX", "must not contain spaces or control characters"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_file_and_environment() {
        let c = Config::from_sources(None, &HashMap::new()).unwrap();
        assert_eq!(c.rules, RulesSettings::default());
        assert_eq!(c.rules.dir, PathBuf::from("rules"));
        let file = "[rules]\ndir = \"/etc/auditflow/rules\"\nreload_interval_secs = 30\n";
        let c = Config::from_sources(
            Some(file),
            &env(&[("AUDITFLOW_REDIS_PREFIX", "t1:"), ("AUDITFLOW_RULES_RELOAD_SECS", "0")]),
        )
        .unwrap();
        assert_eq!(c.rules.dir, PathBuf::from("/etc/auditflow/rules"));
        assert_eq!(c.rules.reload_interval_secs, 0);
        assert_eq!(c.rules.key_prefix, "t1:");
        let c = Config::from_sources(None, &env(&[("AUDITFLOW_RULES_DIR", "/srv/rules")])).unwrap();
        assert_eq!(c.rules.dir, PathBuf::from("/srv/rules"));
    }

    #[test]
    fn invalid_settings_name_the_variable() {
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_RULES_RELOAD_SECS", "soon")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_RULES_RELOAD_SECS");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_REDIS_TIMEOUT_MS", "1")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_REDIS_TIMEOUT_MS");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_RULES_SEQUENCE_KEEP", "0")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_RULES_SEQUENCE_KEEP");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_RULES_MAX_FUTURE_SKEW_SECS", "172800")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_RULES_MAX_FUTURE_SKEW_SECS");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_REDIS_PREFIX", "a b")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_REDIS_PREFIX");
        let e = Config::from_sources(Some("[rules]\ndirectory = \"x\"\n"), &HashMap::new()).unwrap_err();
        assert!(e.reason.contains("unknown field"), "{e}");
    }
}
