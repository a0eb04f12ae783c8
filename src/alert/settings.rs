//! `[alert]` configuration: policies, routes, channels, retries, operational alerts.
//!
//! Everything has a default, so `audit-alert` starts with the seed's two policies plus an
//! "immediate" one; channels are off until configured (`AUDITFLOW_SMTP_HOST`,
//! `AUDITFLOW_SLACK_WEBHOOK_URL`, `AUDITFLOW_WEBHOOK_URL`). Secrets (SMTP password, Slack URL,
//! webhook secret) are [`Secret`]s: never printed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::event::Severity;

/// A value that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "<redacted>" })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// Replaces the built-in policies when given (`[[alert.policies]]`).
    pub policies: Vec<PolicyConfig>,
    /// A TOML file of `[[policies]]` that replaces the policies above and is re-read when it
    /// changes, without a restart (`AUDITFLOW_ALERT_POLICIES`; e.g. a mounted ConfigMap).
    pub policies_file: Option<std::path::PathBuf>,
    /// Replaces the built-in routes when given (`[[alert.routes]]`).
    pub routes: Vec<RouteConfig>,
    /// Default `group_wait_seconds` of policies that do not set one.
    pub group_wait_seconds: u64,
    /// How often the dispatcher looks for alerts due.
    pub poll_interval_ms: u64,
    /// Alerts one dispatcher claims per poll.
    pub dispatch_batch: i64,
    /// Evidence event ids kept per alert.
    pub max_evidence: usize,
    /// Longest text of one event field in a notification (longer ones are cut and say so).
    pub max_field_chars: usize,
    /// Replay guard and frequency state kept this long (longer than the rule-matches topic's
    /// retention, so no replay can reach past it).
    pub match_retention_hours: u64,
    /// Slack and webhook URLs must be `https://` unless this is true (a receiver on localhost
    /// or in tests): an alert carries event data, and a webhook's signature is no secret from
    /// whoever reads the wire. `AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP`.
    pub allow_insecure_http: bool,
    /// Send personal fields (the privacy settings' list) in the clear on `security-alerts` and
    /// in every notification. Off by default: they go as pseudonyms or not at all, because a
    /// copy outside auditflow is beyond the reach of `auditflow erase`.
    /// `AUDITFLOW_ALERT_INCLUDE_PERSONAL_FIELDS`.
    pub include_personal_fields: bool,
    /// Group-key fields shown in the clear even when they come from a personal field (e.g.
    /// `metadata.service`, which names a service, not a person; `country_code`, which an
    /// impossible travel or a first sighting of a country is about, coarse enough to name no
    /// one). The same rule applies to the values these detections report.
    /// `AUDITFLOW_ALERT_CLEAR_GROUP_FIELDS=metadata.service,country_code,…`.
    pub clear_group_fields: Vec<String>,
    pub retry: RetryConfig,
    pub email: EmailConfig,
    pub slack: SlackConfig,
    pub webhook: WebhookConfig,
    pub ops: OpsConfig,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            policies: default_policies(),
            policies_file: None,
            routes: default_routes(),
            group_wait_seconds: 10,
            poll_interval_ms: 500,
            dispatch_batch: 16,
            max_evidence: 100,
            max_field_chars: 2000,
            match_retention_hours: 8 * 24,
            allow_insecure_http: false,
            include_personal_fields: false,
            clear_group_fields: vec!["metadata.service".into(), "country_code".into()],
            retry: RetryConfig::default(),
            email: EmailConfig::default(),
            slack: SlackConfig::default(),
            webhook: WebhookConfig::default(),
            ops: OpsConfig::default(),
        }
    }
}

/// One alert policy. Conditions are ANDed; within one list any entry may match; an empty list
/// does not constrain.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    /// The match's severity is one of these.
    pub severities: Vec<Severity>,
    /// The matched rule is one of these.
    pub rule_ids: Vec<String>,
    /// The rule carries one of these tags (the `compliance` tags of a `RuleMatch`), case-insensitive.
    pub tags: Vec<String>,
    /// The triggering event's action contains one of these, case-insensitive.
    pub actions: Vec<String>,
    /// The triggering event succeeded (true) or failed (false).
    pub success: Option<bool>,
    /// Event fields added to the match's own group key: frequency is counted, and alerts are
    /// opened, per distinct value (e.g. per user), never across all subjects.
    pub group_by: Vec<String>,
    pub frequency: Frequency,
    /// After an alert opens, further matches of its group fold into it for this long.
    pub suppression_window_seconds: u64,
    /// An alert waits this long before it is sent, so a burst is reported as one notification.
    pub group_wait_seconds: Option<u64>,
    /// Names of the routes this policy may use; empty: every route.
    pub routes: Vec<String>,
    /// Policies are tried in order and the first that matches takes the match, so one incident
    /// raises one alert. `continue = true` lets later policies see the match as well.
    #[serde(rename = "continue")]
    pub continue_matching: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            id: String::new(),
            name: String::new(),
            enabled: true,
            severities: Vec::new(),
            rule_ids: Vec::new(),
            tags: Vec::new(),
            actions: Vec::new(),
            success: None,
            group_by: Vec::new(),
            frequency: Frequency::default(),
            suppression_window_seconds: 300,
            group_wait_seconds: None,
            routes: Vec::new(),
            continue_matching: false,
        }
    }
}

/// `count` matches of one group within `window_seconds` open an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Frequency {
    pub count: u32,
    pub window_seconds: u64,
}

impl Default for Frequency {
    fn default() -> Self {
        Frequency { count: 1, window_seconds: 60 }
    }
}

/// Event fields a policy may group by.
pub const GROUP_BY_FIELDS: &[&str] =
    &["user_id", "session_id", "ip_address", "resource", "resource_id", "action", "endpoint", "method"];

/// The seed's two policies plus immediate alerts for privilege escalation, most specific first:
/// a brute force is one failed-authentication alert, not also a critical-events alert. The
/// grouping policies wait `group_wait_seconds` (so a burst is one notification); the immediate
/// one is sent as soon as it opens.
fn default_policies() -> Vec<PolicyConfig> {
    vec![
        PolicyConfig {
            id: "failed-authentication".into(),
            name: "Failed Authentication Attempts".into(),
            actions: vec!["login".into(), "authentication".into()],
            success: Some(false),
            group_by: vec!["user_id".into()],
            frequency: Frequency { count: 10, window_seconds: 600 },
            suppression_window_seconds: 600,
            routes: vec!["security-team".into(), "chatops".into()],
            ..PolicyConfig::default()
        },
        PolicyConfig {
            id: "immediate".into(),
            name: "Immediate Rule Alerts".into(),
            rule_ids: vec!["privilege-escalation".into()],
            group_by: vec!["user_id".into()],
            frequency: Frequency { count: 1, window_seconds: 60 },
            suppression_window_seconds: 300,
            // One match is the whole incident: there is no burst to wait for.
            group_wait_seconds: Some(0),
            ..PolicyConfig::default()
        },
        PolicyConfig {
            id: "critical-security-events".into(),
            name: "Critical Security Events".into(),
            severities: vec![Severity::Critical, Severity::High],
            group_by: vec!["user_id".into()],
            frequency: Frequency { count: 5, window_seconds: 300 },
            suppression_window_seconds: 300,
            routes: vec!["security-team".into(), "admins".into(), "chatops".into()],
            ..PolicyConfig::default()
        },
    ]
}

/// Where alerts go. A policy's alert uses every route it names (or all routes) whose own
/// conditions hold; channels and recipients are the union of those routes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// The alert's severity is one of these (empty: any).
    pub severities: Vec<Severity>,
    /// The rule carries one of these tags (empty: any).
    pub tags: Vec<String>,
    pub channels: Vec<ChannelKind>,
    /// E-mail recipients. None are built in: an e-mail route without any (here or from
    /// `AUDITFLOW_ALERT_RECIPIENTS`) stops alerting at start once e-mail is configured.
    pub recipients: Vec<String>,
}

/// The built-in routes carry no recipients: alerts must never go to an address nobody chose.
fn default_routes() -> Vec<RouteConfig> {
    vec![
        RouteConfig {
            name: "security-team".into(),
            channels: vec![ChannelKind::Email],
            ..RouteConfig::default()
        },
        RouteConfig {
            name: "admins".into(),
            severities: vec![Severity::Critical],
            channels: vec![ChannelKind::Email],
            ..RouteConfig::default()
        },
        RouteConfig {
            name: "chatops".into(),
            channels: vec![ChannelKind::Slack, ChannelKind::Webhook],
            ..RouteConfig::default()
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Email,
    Slack,
    Webhook,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 3] = [ChannelKind::Email, ChannelKind::Slack, ChannelKind::Webhook];
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exponential backoff with jitter between delivery attempts, bounded by a time budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// No new attempt starts once this much time has passed since the first.
    pub budget_seconds: u64,
    /// ± this share of each delay is random.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { initial_backoff_ms: 1000, max_backoff_ms: 30_000, budget_seconds: 300, jitter: 0.2 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on localhost or a trusted network only).
    None,
    /// Plain connection upgraded with STARTTLS, which is required.
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

impl FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::Starttls),
            "tls" | "implicit" | "smtps" => Ok(SmtpTls::Tls),
            other => Err(format!("expected none, starttls or tls, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server; no host, no e-mail channel.
    pub host: Option<String>,
    /// Default: 25 (none), 587 (starttls), 465 (tls).
    pub port: Option<u16>,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Sender mailbox, e.g. `auditflow <alerts@example.com>`.
    pub from: String,
    pub timeout_seconds: u64,
    /// Token bucket: sustained messages per minute, and the burst allowed.
    pub rate_per_minute: u32,
    pub burst: u32,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            host: None,
            port: None,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            from: "auditflow <auditflow@localhost>".into(),
            timeout_seconds: 15,
            rate_per_minute: 60,
            burst: 10,
        }
    }
}

impl EmailConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// Incoming-webhook URL (it embeds a token: a secret). None: no Slack channel.
    pub webhook_url: Option<Secret>,
    pub timeout_seconds: u64,
    pub rate_per_minute: u32,
    pub burst: u32,
}

impl Default for SlackConfig {
    fn default() -> Self {
        // Slack accepts about one message per second per incoming webhook.
        SlackConfig { webhook_url: None, timeout_seconds: 10, rate_per_minute: 60, burst: 5 }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// None: no generic webhook channel.
    pub url: Option<String>,
    /// HMAC-SHA256 key for `X-Auditflow-Signature`.
    pub secret: Option<Secret>,
    pub timeout_seconds: u64,
    pub rate_per_minute: u32,
    pub burst: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig { url: None, secret: None, timeout_seconds: 10, rate_per_minute: 600, burst: 50 }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry a token in its path or query: show scheme and host only.
        let url = self.url.as_deref().map(redact_url_path);
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("secret", &self.secret)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("rate_per_minute", &self.rate_per_minute)
            .field("burst", &self.burst)
            .finish()
    }
}

/// `https://user:pw@host:8443/path?token=x` → `https://host:8443/…`.
pub fn redact_url_path(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// Operational alerts about this process itself (an admin e-mail, rate-limited).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    pub enabled: bool,
    pub recipients: Vec<String>,
    /// The sink or the dispatcher keeps failing without progress for this long.
    pub stall_seconds: u64,
    /// This many dead letters within `dlq_window_seconds`…
    pub dlq_spike_count: u64,
    pub dlq_window_seconds: u64,
    /// At most one e-mail per condition per this long.
    pub min_interval_seconds: u64,
    pub check_interval_seconds: u64,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            enabled: true,
            recipients: Vec::new(),
            stall_seconds: 300,
            dlq_spike_count: 100,
            dlq_window_seconds: 300,
            min_interval_seconds: 900,
            check_interval_seconds: 15,
        }
    }
}

impl AlertSettings {
    /// `AUDITFLOW_SMTP_*`, `AUDITFLOW_SLACK_WEBHOOK_URL`, `AUDITFLOW_WEBHOOK_*`, `AUDITFLOW_ALERT_*`.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        fn parse<T: FromStr>(env: &HashMap<String, String>, name: &str) -> Result<Option<T>, ConfigError>
        where
            T::Err: fmt::Display,
        {
            match env.get(name) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|e: T::Err| ConfigError::new(name, format!("{e} (got {v:?})"))),
                None => Ok(None),
            }
        }
        fn text(env: &HashMap<String, String>, name: &str) -> Option<Option<String>> {
            env.get(name).map(|v| if v.trim().is_empty() { None } else { Some(v.trim().to_string()) })
        }
        if let Some(v) = text(env, "AUDITFLOW_ALERT_POLICIES") {
            self.policies_file = v.map(std::path::PathBuf::from);
        }
        if let Some(v) = text(env, "AUDITFLOW_SMTP_HOST") {
            self.email.host = v;
        }
        if let Some(v) = parse::<u16>(env, "AUDITFLOW_SMTP_PORT")? {
            self.email.port = Some(v);
        }
        if let Some(v) = parse::<SmtpTls>(env, "AUDITFLOW_SMTP_TLS")? {
            self.email.tls = v;
        }
        if let Some(v) = text(env, "AUDITFLOW_SMTP_USERNAME") {
            self.email.username = v;
        }
        if let Some(v) = env.get("AUDITFLOW_SMTP_PASSWORD") {
            self.email.password = if v.is_empty() { None } else { Some(Secret(v.clone())) };
        }
        if let Some(Some(v)) = text(env, "AUDITFLOW_SMTP_FROM") {
            self.email.from = v;
        }
        if let Some(v) = parse(env, "AUDITFLOW_SMTP_TIMEOUT_SECONDS")? {
            self.email.timeout_seconds = v;
        }
        if let Some(v) = text(env, "AUDITFLOW_SLACK_WEBHOOK_URL") {
            self.slack.webhook_url = v.map(Secret);
        }
        if let Some(v) = text(env, "AUDITFLOW_WEBHOOK_URL") {
            self.webhook.url = v;
        }
        if let Some(v) = env.get("AUDITFLOW_WEBHOOK_SECRET") {
            self.webhook.secret = if v.is_empty() { None } else { Some(Secret(v.clone())) };
        }
        if let Some(v) = parse(env, "AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP")? {
            self.allow_insecure_http = v;
        }
        if let Some(v) = parse(env, "AUDITFLOW_ALERT_INCLUDE_PERSONAL_FIELDS")? {
            self.include_personal_fields = v;
        }
        if let Some(v) = env.get("AUDITFLOW_ALERT_CLEAR_GROUP_FIELDS") {
            self.clear_group_fields = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        }
        if let Some(v) = parse(env, "AUDITFLOW_ALERT_GROUP_WAIT_SECONDS")? {
            self.group_wait_seconds = v;
        }
        if let Some(v) = parse(env, "AUDITFLOW_ALERT_POLL_INTERVAL_MS")? {
            self.poll_interval_ms = v;
        }
        if let Some(v) = parse(env, "AUDITFLOW_ALERT_RETRY_BUDGET_SECONDS")? {
            self.retry.budget_seconds = v;
        }
        if let Some(v) = parse(env, "AUDITFLOW_ALERT_RETRY_MAX_BACKOFF_MS")? {
            self.retry.max_backoff_ms = v;
        }
        let list = |v: Option<String>| -> Vec<String> {
            v.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        };
        if let Some(v) = text(env, "AUDITFLOW_ALERT_RECIPIENTS") {
            // Fills the e-mail routes that name no recipients (the built-in ones, typically);
            // a route with its own list keeps it.
            let to = list(v);
            for r in self.routes.iter_mut().filter(|r| r.channels.contains(&ChannelKind::Email) && r.recipients.is_empty()) {
                r.recipients = to.clone();
            }
        }
        if let Some(v) = text(env, "AUDITFLOW_OPS_RECIPIENTS") {
            self.ops.recipients = list(v);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let route_names: HashSet<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        for (i, p) in self.policies.iter().enumerate() {
            let at = |field: &str| format!("alert.policies[{i}].{field}");
            if p.id.trim().is_empty() || p.id.len() > 128 {
                return Err(ConfigError::new(at("id"), "must be 1 to 128 characters"));
            }
            if !ids.insert(p.id.as_str()) {
                return Err(ConfigError::new(at("id"), format!("duplicate policy id {:?}", p.id)));
            }
            if p.frequency.count == 0 {
                return Err(ConfigError::new(at("frequency.count"), "must be at least 1"));
            }
            if p.frequency.window_seconds == 0 {
                return Err(ConfigError::new(at("frequency.window_seconds"), "must be at least 1"));
            }
            if p.suppression_window_seconds == 0 {
                return Err(ConfigError::new(at("suppression_window_seconds"), "must be at least 1"));
            }
            for f in &p.group_by {
                if !GROUP_BY_FIELDS.contains(&f.as_str()) {
                    return Err(ConfigError::new(
                        at("group_by"),
                        format!("unknown field {f:?} (allowed: {})", GROUP_BY_FIELDS.join(", ")),
                    ));
                }
            }
            for r in &p.routes {
                if !route_names.contains(r.as_str()) {
                    return Err(ConfigError::new(at("routes"), format!("no route named {r:?}")));
                }
            }
        }
        let mut names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.name.trim().is_empty() || !names.insert(r.name.as_str()) {
                return Err(ConfigError::new(format!("alert.routes[{i}].name"), "must be non-empty and unique"));
            }
            for to in &r.recipients {
                to.parse::<lettre::message::Mailbox>().map_err(|e| {
                    ConfigError::new(format!("alert.routes[{i}].recipients"), format!("{to:?}: {e}"))
                })?;
            }
        }
        for to in &self.ops.recipients {
            to.parse::<lettre::message::Mailbox>()
                .map_err(|e| ConfigError::new("alert.ops.recipients", format!("{to:?}: {e}")))?;
        }
        if self.email.host.is_some() {
            self.email
                .from
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| ConfigError::new("AUDITFLOW_SMTP_FROM", format!("{:?}: {e}", self.email.from)))?;
            if self.email.password.is_some() && self.email.username.is_none() {
                return Err(ConfigError::new("AUDITFLOW_SMTP_USERNAME", "a password is set but no user name"));
            }
            // With e-mail on, a route or ops alert without recipients would drop its alerts
            // silently: refuse to start instead.
            for (i, r) in self.routes.iter().enumerate() {
                if r.channels.contains(&ChannelKind::Email) && r.recipients.is_empty() {
                    return Err(ConfigError::new(
                        format!("alert.routes[{i}].recipients"),
                        format!(
                            "route {:?} sends e-mail but has no recipients; list them in the route or set AUDITFLOW_ALERT_RECIPIENTS",
                            r.name
                        ),
                    ));
                }
            }
            if self.ops.enabled && self.ops.recipients.is_empty() {
                return Err(ConfigError::new(
                    "AUDITFLOW_OPS_RECIPIENTS",
                    "operational alerts are on but have no recipients; set it (or alert.ops.recipients), or alert.ops.enabled = false",
                ));
            }
        }
        if let Some(url) = &self.slack.webhook_url {
            check_http_url(url.expose(), self.allow_insecure_http)
                .map_err(|e| ConfigError::new("AUDITFLOW_SLACK_WEBHOOK_URL", e))?;
        }
        if let Some(url) = &self.webhook.url {
            check_http_url(url, self.allow_insecure_http).map_err(|e| ConfigError::new("AUDITFLOW_WEBHOOK_URL", e))?;
            if self.webhook.secret.is_none() {
                return Err(ConfigError::new("AUDITFLOW_WEBHOOK_SECRET", "a webhook needs a signing secret"));
            }
        }
        if self.retry.initial_backoff_ms == 0 || self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return Err(ConfigError::new("alert.retry", "need 0 < initial_backoff_ms <= max_backoff_ms"));
        }
        if !(0.0..1.0).contains(&self.retry.jitter) {
            return Err(ConfigError::new("alert.retry.jitter", "must be in [0, 1)"));
        }
        if self.poll_interval_ms == 0 || self.dispatch_batch < 1 {
            return Err(ConfigError::new("alert.poll_interval_ms / dispatch_batch", "must be positive"));
        }
        for (name, rate) in [
            ("alert.email.rate_per_minute", self.email.rate_per_minute),
            ("alert.slack.rate_per_minute", self.slack.rate_per_minute),
            ("alert.webhook.rate_per_minute", self.webhook.rate_per_minute),
        ] {
            if rate == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The policies of `policies_file`, validated against these settings' routes. A file that
    /// defines no `[[policies]]` keeps the current ones.
    pub fn policies_from_file(&self, path: &std::path::Path) -> Result<Vec<PolicyConfig>, ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PoliciesFile {
            #[serde(default)]
            policies: Vec<PolicyConfig>,
        }
        let setting = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(&setting, format!("cannot read: {e}")))?;
        let file: PoliciesFile = toml::from_str(&text).map_err(|e| ConfigError::new(&setting, e.to_string()))?;
        if file.policies.is_empty() {
            return Ok(self.policies.clone());
        }
        let candidate = AlertSettings { policies: file.policies, ..self.clone() };
        candidate.validate().map_err(|e| ConfigError::new(format!("{setting}: {}", e.setting), e.reason))?;
        Ok(candidate.policies)
    }

    pub fn policy(&self, id: &str) -> Option<&PolicyConfig> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// Is a channel configured (and so deliverable)?
    pub fn channel_configured(&self, kind: ChannelKind) -> bool {
        match kind {
            ChannelKind::Email => self.email.host.is_some(),
            ChannelKind::Slack => self.slack.webhook_url.is_some(),
            ChannelKind::Webhook => self.webhook.url.is_some(),
        }
    }
}

fn check_http_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    // The parse error alone: the URL may embed a token.
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if u.host_str().is_none() {
        return Err("expected an https:// URL with a host".into());
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http => Ok(()),
        "http" => Err("must be https:// (plain http:// only with alert.allow_insecure_http = true, \
                       AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP=true)"
            .into()),
        _ => Err("expected an https:// URL".into()),
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
    fn a_policies_file_replaces_the_policies_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alert-policies.toml");
        let base = AlertSettings::default();
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert_eq!(base.policies_from_file(&path).unwrap().len(), base.policies.len(), "empty file keeps the policies");
        std::fs::write(
            &path,
            "[[policies]]\nid = \"exports\"\nname = \"Exports\"\nactions = [\"export\"]\n[policies.frequency]\ncount = 2\nwindow_seconds = 60\n",
        )
        .unwrap();
        let ps = base.policies_from_file(&path).unwrap();
        assert_eq!(ps.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["exports"]);
        std::fs::write(&path, "[[policies]]\nid = \"x\"\nroutes = [\"nowhere\"]\n").unwrap();
        let e = base.policies_from_file(&path).unwrap_err();
        assert!(e.setting.contains("alert-policies.toml") && e.reason.contains("nowhere"), "{e}");
        std::fs::write(&path, "[[policies]]\nidd = \"x\"\n").unwrap();
        assert!(base.policies_from_file(&path).is_err(), "unknown keys are refused");
    }

    #[test]
    fn defaults_hold_the_seed_policies_and_are_valid() {
        let c = Config::from_sources(None, &HashMap::new()).unwrap();
        let ids: Vec<&str> = c.alert.policies.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["failed-authentication", "immediate", "critical-security-events"]);
        let fa = c.alert.policy("failed-authentication").unwrap();
        assert_eq!(fa.frequency, Frequency { count: 10, window_seconds: 600 });
        assert_eq!(fa.success, Some(false));
        assert_eq!(fa.group_wait_seconds, None, "grouping policies wait the default");
        assert_eq!(c.alert.policy("immediate").unwrap().group_wait_seconds, Some(0), "immediate alerts do not wait");
        assert_eq!(c.alert.group_wait_seconds, 10);
        assert!(!c.alert.channel_configured(ChannelKind::Email));
    }

    #[test]
    fn policies_from_the_config_file_replace_the_defaults() {
        let file = r#"
[alert]
group_wait_seconds = 2
[[alert.policies]]
id = "exports"
name = "Data exports"
severities = ["HIGH", "critical"]
tags = ["GDPR"]
group_by = ["user_id", "ip_address"]
frequency = { count = 3, window_seconds = 60 }
routes = ["soc"]
[[alert.routes]]
name = "soc"
channels = ["email", "webhook"]
recipients = ["soc@example.com"]
"#;
        let c = Config::from_sources(Some(file), &HashMap::new()).unwrap();
        assert_eq!(c.alert.policies.len(), 1);
        let p = &c.alert.policies[0];
        assert_eq!(p.severities, vec![Severity::High, Severity::Critical]);
        assert_eq!(p.frequency.count, 3);
        assert_eq!(c.alert.routes[0].channels, vec![ChannelKind::Email, ChannelKind::Webhook]);
        assert_eq!(c.alert.group_wait_seconds, 2);
    }

    #[test]
    fn invalid_policies_name_the_setting() {
        let bad = |file: &str| Config::from_sources(Some(file), &HashMap::new()).unwrap_err().setting;
        assert_eq!(bad("[[alert.policies]]\nid = \"x\"\ngroup_by = [\"password\"]\n"), "alert.policies[0].group_by");
        assert_eq!(bad("[[alert.policies]]\nid = \"x\"\nroutes = [\"nowhere\"]\n"), "alert.policies[0].routes");
        assert_eq!(
            bad("[[alert.policies]]\nid = \"x\"\nfrequency = { count = 0, window_seconds = 5 }\n"),
            "alert.policies[0].frequency.count"
        );
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_SMTP_TLS", "ssl3")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_SMTP_TLS");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_WEBHOOK_URL", "https://h/x")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_WEBHOOK_SECRET");
    }

    #[test]
    fn http_targets_must_be_https_unless_plain_http_is_allowed() {
        let with = |pairs: &[(&str, &str)]| Config::from_sources(None, &env(pairs));
        let hook = [("AUDITFLOW_WEBHOOK_URL", "http://127.0.0.1:8080/hook"), ("AUDITFLOW_WEBHOOK_SECRET", "s")];
        let e = with(&hook).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_WEBHOOK_URL");
        assert!(e.reason.contains("https://") && e.reason.contains("allow_insecure_http"), "{e}");
        let e = with(&[("AUDITFLOW_SLACK_WEBHOOK_URL", "http://hooks.example.com/services/T/B/token-xyz")]).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_SLACK_WEBHOOK_URL");
        assert!(!e.reason.contains("token-xyz"), "{e}");
        let e = with(&[("AUDITFLOW_WEBHOOK_URL", "ftp://h/x"), ("AUDITFLOW_WEBHOOK_SECRET", "s")]).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_WEBHOOK_URL");
        assert!(with(&[("AUDITFLOW_WEBHOOK_URL", "https://siem.example.com/hook"), ("AUDITFLOW_WEBHOOK_SECRET", "s")]).is_ok());
        let allowed = with(&[hook[0], hook[1], ("AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP", "true")]).unwrap();
        assert!(allowed.alert.allow_insecure_http);
        let file = "[alert]\nallow_insecure_http = true\n[alert.slack]\nwebhook_url = \"http://127.0.0.1:9/slack\"\n";
        assert!(Config::from_sources(Some(file), &HashMap::new()).is_ok());
        let e = with(&[("AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP", "sure")]).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_ALERT_ALLOW_INSECURE_HTTP");
    }

    #[test]
    fn no_recipient_is_built_in_and_e_mail_without_recipients_refuses_to_start() {
        let d = AlertSettings::default();
        assert!(d.routes.iter().all(|r| r.recipients.is_empty()), "{:?}", d.routes);
        assert!(d.ops.recipients.is_empty());
        // No e-mail channel: nothing could be sent, so nothing is missing.
        assert!(Config::from_sources(None, &HashMap::new()).is_ok());
        let smtp = [("AUDITFLOW_SMTP_HOST", "mail.example.com")];
        let e = Config::from_sources(None, &env(&smtp)).unwrap_err();
        assert_eq!(e.setting, "alert.routes[0].recipients");
        assert!(e.reason.contains("security-team") && e.reason.contains("AUDITFLOW_ALERT_RECIPIENTS"), "{e}");
        let e = Config::from_sources(None, &env(&[smtp[0], ("AUDITFLOW_ALERT_RECIPIENTS", "soc@example.com")]))
            .unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_OPS_RECIPIENTS");
        let c = Config::from_sources(
            None,
            &env(&[
                smtp[0],
                ("AUDITFLOW_ALERT_RECIPIENTS", "soc@example.com, cso@example.com"),
                ("AUDITFLOW_OPS_RECIPIENTS", "sre@example.org"),
            ]),
        )
        .unwrap();
        let team = c.alert.routes.iter().find(|r| r.name == "security-team").unwrap();
        assert_eq!(team.recipients, ["soc@example.com", "cso@example.com"]);
        assert!(c.alert.routes.iter().find(|r| r.name == "chatops").unwrap().recipients.is_empty(), "no e-mail there");
        // A route's own list wins over the fallback; ops alerts can be turned off instead.
        let file = "[alert.ops]\nenabled = false\n[[alert.routes]]\nname = \"security-team\"\nchannels = [\"email\"]\nrecipients = [\"own@example.com\"]\n[[alert.routes]]\nname = \"admins\"\n[[alert.routes]]\nname = \"chatops\"\n";
        let c = Config::from_sources(Some(file), &env(&[smtp[0], ("AUDITFLOW_ALERT_RECIPIENTS", "x@example.com")]))
            .unwrap();
        assert_eq!(c.alert.routes[0].recipients, ["own@example.com"]);
    }

    #[test]
    fn channel_secrets_are_redacted_in_debug_output() {
        let c = Config::from_sources(
            None,
            &env(&[
                ("AUDITFLOW_SMTP_HOST", "mail.example.com"),
                ("AUDITFLOW_SMTP_USERNAME", "alerts"),
                ("AUDITFLOW_SMTP_PASSWORD", "smtp-hunter2"),
                ("AUDITFLOW_ALERT_RECIPIENTS", "soc@example.com"),
                ("AUDITFLOW_OPS_RECIPIENTS", "sre@example.com"),
                ("AUDITFLOW_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/slack-token-xyz"),
                ("AUDITFLOW_WEBHOOK_URL", "https://siem.example.com/hook?token=url-token-abc"),
                ("AUDITFLOW_WEBHOOK_SECRET", "hmac-key-123"),
            ]),
        )
        .unwrap();
        let printed = format!("{c:?}");
        for secret in ["smtp-hunter2", "slack-token-xyz", "url-token-abc", "hmac-key-123"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(printed.contains("mail.example.com"));
        assert_eq!(c.alert.email.port(), 587);
        assert_eq!(c.alert.email.password.as_ref().unwrap().expose(), "smtp-hunter2");
    }
}
