//! `[trace]`: where spans go and how many traces are recorded.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::ConfigError;

#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TraceSettings {
    /// OTLP/HTTP (protobuf) endpoint of a collector or trace backend: a base URL, to which
    /// `/v1/traces` is added, or the full traces URL. None: no span is made; trace context that
    /// arrives with a record is still passed on. `AUDITFLOW_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Extra request headers for the collector, `name=value,…` (e.g. an API key).
    /// `AUDITFLOW_OTLP_HEADERS`; a secret (`_FILE` works), never logged.
    pub otlp_headers: Option<String>,
    /// Share of new traces recorded, 0–1. A decision that arrives with the record (its
    /// `traceparent`'s sampled flag) is honoured, so a trace is recorded whole or not at all.
    /// `AUDITFLOW_TRACE_SAMPLE_RATIO`.
    pub sample_ratio: f64,
    /// Longest wait for one export request. `AUDITFLOW_OTLP_TIMEOUT_MS`.
    pub export_timeout_ms: u64,
    /// Ended spans waiting for export at most; beyond that new ones are dropped and counted
    /// (`auditflow_trace_spans_total{outcome="dropped"}`), so a slow or absent collector never
    /// holds up a batch. `AUDITFLOW_TRACE_QUEUE_SIZE`.
    pub queue_size: usize,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings { otlp_endpoint: None, otlp_headers: None, sample_ratio: 0.01, export_timeout_ms: 10_000, queue_size: 8192 }
    }
}

impl std::fmt::Debug for TraceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSettings")
            .field("otlp_endpoint", &self.otlp_endpoint.as_deref().map(crate::redact::url))
            .field("otlp_headers", &self.otlp_headers.as_ref().map(|_| "<redacted>"))
            .field("sample_ratio", &self.sample_ratio)
            .field("export_timeout_ms", &self.export_timeout_ms)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl TraceSettings {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let text = |k: &str| env.get(k).map(|v| v.trim().to_string());
        if let Some(v) = text("AUDITFLOW_OTLP_ENDPOINT") {
            // Set but empty turns tracing off (e.g. to override a config file).
            self.otlp_endpoint = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = env.get("AUDITFLOW_OTLP_HEADERS").filter(|v| !v.trim().is_empty()) {
            self.otlp_headers = Some(v.clone());
        }
        let number = |name: &str, v: String| -> Result<f64, ConfigError> {
            v.parse().map_err(|_| ConfigError::new(name, format!("not a number: {v:?}")))
        };
        if let Some(v) = text("AUDITFLOW_TRACE_SAMPLE_RATIO").filter(|v| !v.is_empty()) {
            self.sample_ratio = number("AUDITFLOW_TRACE_SAMPLE_RATIO", v)?;
        }
        if let Some(v) = text("AUDITFLOW_OTLP_TIMEOUT_MS").filter(|v| !v.is_empty()) {
            self.export_timeout_ms =
                v.parse().map_err(|_| ConfigError::new("AUDITFLOW_OTLP_TIMEOUT_MS", format!("not a whole number: {v:?}")))?;
        }
        if let Some(v) = text("AUDITFLOW_TRACE_QUEUE_SIZE").filter(|v| !v.is_empty()) {
            self.queue_size =
                v.parse().map_err(|_| ConfigError::new("AUDITFLOW_TRACE_QUEUE_SIZE", format!("not a whole number: {v:?}")))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.otlp_endpoint {
            let ok = (url.starts_with("http://") || url.starts_with("https://")) && url.parse::<axum::http::Uri>().is_ok();
            if !ok {
                return Err(ConfigError::new("AUDITFLOW_OTLP_ENDPOINT", "must be an http:// or https:// URL (OTLP over HTTP)"));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new("AUDITFLOW_TRACE_SAMPLE_RATIO", "must be between 0 and 1"));
        }
        if !(1..=600_000).contains(&self.export_timeout_ms) {
            return Err(ConfigError::new("AUDITFLOW_OTLP_TIMEOUT_MS", "must be between 1 and 600000"));
        }
        if !(64..=1_000_000).contains(&self.queue_size) {
            return Err(ConfigError::new("AUDITFLOW_TRACE_QUEUE_SIZE", "must be between 64 and 1000000"));
        }
        self.headers()?;
        Ok(())
    }

    /// The traces URL: the endpoint as given when it already names `/v1/traces`, else with it.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        if base.trim_end_matches('/').ends_with("/v1/traces") {
            return Some(base.to_string());
        }
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// The collector headers, checked: names are HTTP tokens, values visible ASCII.
    pub fn headers(&self) -> Result<HashMap<String, String>, ConfigError> {
        let mut out = HashMap::new();
        let Some(spec) = &self.otlp_headers else { return Ok(out) };
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The value is a secret: the error names the header, never its value.
            let Some((name, value)) = pair.split_once('=') else {
                return Err(ConfigError::new("AUDITFLOW_OTLP_HEADERS", "expected name=value pairs separated by commas"));
            };
            let name = name.trim();
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new("AUDITFLOW_OTLP_HEADERS", format!("{name:?} is not a header name")));
            }
            if axum::http::HeaderValue::from_str(value.trim()).is_err() {
                return Err(ConfigError::new("AUDITFLOW_OTLP_HEADERS", format!("the value of {name} is not a valid header value")));
            }
            out.insert(name.to_string(), value.trim().to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn off_by_default_at_one_percent_when_on() {
        let s = TraceSettings::default();
        assert_eq!(s.otlp_endpoint, None);
        assert_eq!(s.sample_ratio, 0.01);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn endpoint_and_ratio_from_the_environment() {
        let mut s = TraceSettings::default();
        s.apply_env(&env(&[("AUDITFLOW_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("AUDITFLOW_TRACE_SAMPLE_RATIO", "1")])).unwrap();
        s.validate().unwrap();
        assert_eq!(s.traces_url().as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(s.sample_ratio, 1.0);
        s.apply_env(&env(&[("AUDITFLOW_OTLP_ENDPOINT", "https://otel.example/v1/traces")])).unwrap();
        assert_eq!(s.traces_url().as_deref(), Some("https://otel.example/v1/traces"), "a full traces URL is kept");
        s.apply_env(&env(&[("AUDITFLOW_OTLP_ENDPOINT", "")])).unwrap();
        assert_eq!(s.traces_url(), None, "an empty value turns tracing off");
    }

    #[test]
    fn bad_values_name_their_setting_and_never_echo_a_secret() {
        let check = |pairs: &[(&str, &str)]| {
            let mut s = TraceSettings::default();
            match s.apply_env(&env(pairs)) {
                Err(e) => e,
                Ok(()) => s.validate().unwrap_err(),
            }
        };
        assert_eq!(check(&[("AUDITFLOW_TRACE_SAMPLE_RATIO", "1.5")]).setting, "AUDITFLOW_TRACE_SAMPLE_RATIO");
        assert_eq!(check(&[("AUDITFLOW_TRACE_SAMPLE_RATIO", "often")]).setting, "AUDITFLOW_TRACE_SAMPLE_RATIO");
        assert_eq!(check(&[("AUDITFLOW_OTLP_ENDPOINT", "127.0.0.1:4317")]).setting, "AUDITFLOW_OTLP_ENDPOINT");
        assert_eq!(check(&[("AUDITFLOW_TRACE_QUEUE_SIZE", "1")]).setting, "AUDITFLOW_TRACE_QUEUE_SIZE");
        assert_eq!(check(&[("AUDITFLOW_OTLP_HEADERS", "no-equals-sign")]).setting, "AUDITFLOW_OTLP_HEADERS");
        let e = check(&[("AUDITFLOW_OTLP_HEADERS", "authorization=Bearer \u{1}s3cr3t")]);
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let mut s = TraceSettings::default();
        s.apply_env(&env(&[("AUDITFLOW_OTLP_HEADERS", "authorization=Bearer s3cr3t, x-tenant = audit")])).unwrap();
        let h = s.headers().unwrap();
        assert_eq!(h.get("x-tenant").map(String::as_str), Some("audit"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
