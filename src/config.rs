//! Typed configuration, read once at start and validated before anything connects.
//!
//! Sources, later ones winning: built-in defaults → the TOML file named by `AUDITFLOW_CONFIG`
//! (or `--config`) → `AUDITFLOW_*` environment variables. librdkafka settings pass through
//! untouched from `[kafka.librdkafka]` or `AUDITFLOW_LIBRDKAFKA_<NAME>` (dots as underscores,
//! e.g. `AUDITFLOW_LIBRDKAFKA_SECURITY_PROTOCOL=SASL_SSL`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use crate::enrich::ComplianceConfig;
use crate::error::ConfigError;

/// The whole configuration of one process. Every stage reads the same shape and uses its part.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub stage: StageConfig,
    pub enrich: EnrichSettings,
    pub privacy: PrivacySettings,
    pub ledger: LedgerSettings,
    pub alert: crate::alert::AlertSettings,
    /// `[compliance]`: the framework/control mapping of `audit-compliance` and reports.
    pub compliance: crate::compliance::ComplianceSettings,
    /// `[retention]`: how long audit data is kept, per classification and framework.
    pub retention: crate::retention::RetentionConfig,
    pub rules: crate::rules::RulesSettings,
    /// `[index]`: the OpenSearch search store of `audit-index`.
    pub index: crate::index::IndexSettings,
    /// `[api]`: the HTTP API (token verification).
    pub api: crate::api::ApiSettings,
    /// `[trace]`: OpenTelemetry traces (OTLP endpoint, sampling).
    pub trace: crate::trace::TraceSettings,
    pub log: LogConfig,
}

/// Crypto-shredding: which fields are personal and the keys protecting them.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySettings {
    /// Wraps every subject's data key (base64 or hex, 32 bytes). `AUDITFLOW_MASTER_KEY`.
    pub master_key: Option<String>,
    /// Keys the searchable pseudonyms (HMAC-SHA256). `AUDITFLOW_PSEUDONYM_KEY`.
    pub pseudonym_key: Option<String>,
    /// Fields stored only encrypted. `AUDITFLOW_PERSONAL_FIELDS=user_id,ip_address,…`.
    pub personal_fields: Vec<crate::privacy::PersonalField>,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        PrivacySettings { master_key: None, pseudonym_key: None, personal_fields: crate::privacy::PersonalField::ALL.to_vec() }
    }
}

impl fmt::Debug for PrivacySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivacySettings")
            .field("master_key", &self.master_key.as_ref().map(|_| "<redacted>"))
            .field("pseudonym_key", &self.pseudonym_key.as_ref().map(|_| "<redacted>"))
            .field("personal_fields", &self.personal_fields)
            .finish()
    }
}

impl PrivacySettings {
    /// The pseudonym key alone (stages that name subjects but never unseal them).
    pub fn pseudonym_key(&self) -> Result<crate::privacy::SecretKey, ConfigError> {
        let text = self.pseudonym_key.as_deref().ok_or_else(|| {
            ConfigError::new("AUDITFLOW_PSEUDONYM_KEY", "required (generate with `auditflow keys generate`)")
        })?;
        crate::privacy::SecretKey::parse("AUDITFLOW_PSEUDONYM_KEY", text)
    }

    /// Both keys, or a configuration error naming the missing one.
    pub fn keys(&self) -> Result<crate::privacy::PrivacyKeys, ConfigError> {
        let master = self
            .master_key
            .as_deref()
            .ok_or_else(|| ConfigError::new("AUDITFLOW_MASTER_KEY", "required (generate with `auditflow keys generate`)"))?;
        let pseudonym = self.pseudonym_key.as_deref().ok_or_else(|| {
            ConfigError::new("AUDITFLOW_PSEUDONYM_KEY", "required (generate with `auditflow keys generate`)")
        })?;
        Ok(crate::privacy::PrivacyKeys {
            master: crate::privacy::SecretKey::parse("AUDITFLOW_MASTER_KEY", master)?,
            pseudonym: crate::privacy::SecretKey::parse("AUDITFLOW_PSEUDONYM_KEY", pseudonym)?,
        })
    }
}

/// Tamper evidence: the key that signs ledger checkpoints and how often.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSettings {
    /// Ed25519 secret seed (base64 or hex, 32 bytes). `AUDITFLOW_SIGNING_KEY`.
    pub signing_key: Option<String>,
    /// Ed25519 public key for `auditflow verify` when the secret is not at hand.
    /// `AUDITFLOW_VERIFY_KEY`.
    pub verify_key: Option<String>,
    /// Every persist batch signs a checkpoint of the chains it extends; this sweep, at this
    /// interval, signs any head still unsigned (chains written before an upgrade).
    pub checkpoint_interval_secs: u64,
    /// Append-only directory (WORM storage) where every checkpoint is also written, one
    /// fsynced file each. `AUDITFLOW_CHECKPOINT_EXPORT_DIR`.
    pub checkpoint_export_dir: Option<std::path::PathBuf>,
    /// Ed25519 secret seed of `auditflow witness` (its own key, never the ledger's).
    /// `AUDITFLOW_WITNESS_KEY`.
    pub witness_key: Option<String>,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings { signing_key: None, verify_key: None, checkpoint_interval_secs: 10, checkpoint_export_dir: None, witness_key: None }
    }
}

impl fmt::Debug for LedgerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerSettings")
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<redacted>"))
            .field("verify_key", &self.verify_key)
            .field("checkpoint_interval_secs", &self.checkpoint_interval_secs)
            .field("checkpoint_export_dir", &self.checkpoint_export_dir)
            .field("witness_key", &self.witness_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    pub client_id: String,
    /// Raw librdkafka properties applied to every client (security, timeouts, tuning).
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "auditflow".into(),
            librdkafka: BTreeMap::new(),
        }
    }
}

// Secrets (SASL passwords, key passphrases) live in librdkafka properties: never print them.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted: BTreeMap<&str, &str> = self
            .librdkafka
            .iter()
            .map(|(k, v)| (k.as_str(), crate::redact::property(k, v)))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("librdkafka", &redacted)
            .finish()
    }
}

/// One Kafka topic the pipeline owns: its name and how `auditflow topics create` makes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: i64,
    /// `max.message.bytes`.
    pub max_message_bytes: i64,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec { name: String::new(), partitions: 6, retention_ms: 7 * DAY_MS, max_message_bytes: 1_048_588 }
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub replication_factor: i32,
    /// Raw events from upstream services (JSON or Avro).
    pub raw: TopicSpec,
    /// Validated, normalised, enriched events (Avro).
    pub enriched: TopicSpec,
    /// Dead letters from every stage, with the reason in headers.
    pub dlq: TopicSpec,
    /// Events that matched detection rules, with window figures and evidence (JSON).
    pub rule_matches: TopicSpec,
    /// Block decisions (IP or user, TTL) for upstream services to enforce (JSON).
    pub security_actions: TopicSpec,
    /// Alerts for analysts (JSON, keyed by alert id).
    pub security_alerts: TopicSpec,
    /// Alert deliveries that still failed after every retry.
    pub alert_dlq: TopicSpec,
    /// Compliance records (framework, control, event) for downstream GRC tools (JSON).
    pub compliance_events: TopicSpec,
    /// Signed ledger checkpoints, so they can be kept outside the database (JSON).
    pub checkpoints: TopicSpec,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            replication_factor: 1,
            // Room above the 1 MiB event limit so oversized events reach audit-enrich and are
            // dead-lettered with a reason instead of being refused at produce time.
            raw: TopicSpec { name: "audit-raw".into(), max_message_bytes: 4 * 1024 * 1024, ..TopicSpec::default() },
            enriched: TopicSpec {
                name: "audit-enriched".into(),
                max_message_bytes: 2 * 1024 * 1024,
                ..TopicSpec::default()
            },
            dlq: TopicSpec {
                name: "audit-dlq".into(),
                partitions: 3,
                retention_ms: 30 * DAY_MS,
                max_message_bytes: 2 * 1024 * 1024,
            },
            // A match embeds its event, an alert its match: each topic holds the one before it.
            rule_matches: TopicSpec {
                name: "audit-rule-matches".into(),
                max_message_bytes: 4 * 1024 * 1024,
                ..TopicSpec::default()
            },
            security_actions: TopicSpec {
                name: "security-actions".into(),
                partitions: 3,
                retention_ms: 30 * DAY_MS,
                ..TopicSpec::default()
            },
            security_alerts: TopicSpec {
                name: "security-alerts".into(),
                partitions: 3,
                retention_ms: 365 * DAY_MS,
                max_message_bytes: 5 * 1024 * 1024,
            },
            alert_dlq: TopicSpec {
                name: "audit-alert-dlq".into(),
                partitions: 1,
                retention_ms: 30 * DAY_MS,
                ..TopicSpec::default()
            },
            compliance_events: TopicSpec { name: "compliance-events".into(), ..TopicSpec::default() },
            // Checkpoints are tiny and are the external anchor of the ledger: keep them forever.
            checkpoints: TopicSpec {
                name: "audit-checkpoints".into(),
                partitions: 1,
                retention_ms: -1,
                ..TopicSpec::default()
            },
        }
    }
}

impl TopicsConfig {
    /// The largest record any topic of the pipeline accepts (what producers are allowed).
    pub fn max_message_bytes(&self) -> i64 {
        self.all().iter().map(|t| t.max_message_bytes).max().unwrap_or(1_048_588)
    }

    pub fn all(&self) -> Vec<&TopicSpec> {
        vec![
            &self.raw,
            &self.enriched,
            &self.dlq,
            &self.rule_matches,
            &self.security_actions,
            &self.security_alerts,
            &self.alert_dlq,
            &self.compliance_events,
            &self.checkpoints,
        ]
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:6379/0`, or `rediss://host:6380/0` for TLS (certificate and host name are
    /// always verified). `AUDITFLOW_REDIS_URL`.
    pub url: String,
    /// PEM file with the CA certificate(s) that sign the Redis server's certificate, instead of
    /// the OS trust store; needs a `rediss://` URL. `AUDITFLOW_REDIS_CA_FILE`.
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig { url: "redis://127.0.0.1:6379/0".into(), ca_file: None }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig").field("url", &crate::redact::url(&self.url)).field("ca_file", &self.ca_file).finish()
    }
}

impl RedisConfig {
    /// Whether the URL asks for TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("redis://") || self.tls()) {
            return Err(ConfigError::new(
                "AUDITFLOW_REDIS_URL",
                format!("expected redis://… or rediss://…, got {}", crate::redact::url(&self.url)),
            ));
        }
        // redis-rs reads `#insecure` as "skip certificate verification": never accepted.
        if self.url.contains('#') {
            return Err(ConfigError::new(
                "AUDITFLOW_REDIS_URL",
                "a URL fragment (e.g. #insecure) is not accepted: the server certificate is always verified",
            ));
        }
        if let Some(path) = &self.ca_file {
            if !self.tls() {
                return Err(ConfigError::new(
                    "AUDITFLOW_REDIS_CA_FILE",
                    "set, but AUDITFLOW_REDIS_URL is redis:// (plaintext); use rediss:// for TLS",
                ));
            }
            read_ca_file("AUDITFLOW_REDIS_CA_FILE", path)?;
        }
        Ok(())
    }
}

/// PostgreSQL `sslmode`, with libpq's names and meanings (sqlx's default is `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, else plaintext; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, the certificate must chain to a trusted CA (`sslrootcert` or the OS store).
    VerifyCa,
    /// `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 6] =
        [SslMode::Disable, SslMode::Allow, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    fn to_sqlx(self) -> sqlx::postgres::PgSslMode {
        use sqlx::postgres::PgSslMode as M;
        match self {
            SslMode::Disable => M::Disable,
            SslMode::Allow => M::Allow,
            SslMode::Prefer => M::Prefer,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        }
    }
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            format!("unknown sslmode {s:?}; one of disable, allow, prefer, require, verify-ca, verify-full")
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:5432/db`; may carry `?sslmode=…&sslrootcert=…` itself.
    pub url: String,
    pub max_connections: u32,
    /// Longest a single statement may run before PostgreSQL cancels it (0 = no limit). A write
    /// blocked behind a lock then fails and is retried with backoff, counted and visible,
    /// instead of hanging the stage. `AUDITFLOW_DATABASE_STATEMENT_TIMEOUT_MS`.
    pub statement_timeout_ms: u64,
    /// Overrides the URL's `sslmode`. `AUDITFLOW_DATABASE_SSLMODE`.
    pub sslmode: Option<SslMode>,
    /// PEM file with the CA certificate(s) of the server, instead of the OS trust store;
    /// overrides the URL's `sslrootcert`. `AUDITFLOW_DATABASE_SSLROOTCERT`.
    pub sslrootcert: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://auditflow:auditflow@127.0.0.1:5432/auditflow".into(),
            max_connections: 8,
            statement_timeout_ms: 30_000,
            sslmode: None,
            sslrootcert: None,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish()
    }
}

impl DatabaseConfig {
    /// The URL's `sslmode` / `sslrootcert` (libpq and sqlx spellings), percent-decoded.
    fn url_tls_params(&self) -> (Option<String>, Option<String>) {
        let (mut mode, mut root) = (None, None);
        let query = self.url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q)).unwrap_or("");
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" | "ssl-mode" => mode = Some(percent_decode(v)),
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => root = Some(percent_decode(v)),
                _ => {}
            }
        }
        (mode, root)
    }

    /// The `sslmode` in effect: the setting, else the URL's, else sqlx's default `prefer`.
    pub fn effective_sslmode(&self) -> Result<SslMode, ConfigError> {
        if let Some(m) = self.sslmode {
            return Ok(m);
        }
        match self.url_tls_params().0 {
            Some(m) => m.parse().map_err(|e| ConfigError::new("AUDITFLOW_DATABASE_URL", e)),
            None => Ok(SslMode::Prefer),
        }
    }

    /// The CA file in effect: the setting, else the URL's `sslrootcert`.
    pub fn effective_sslrootcert(&self) -> Option<PathBuf> {
        self.sslrootcert.clone().or_else(|| self.url_tls_params().1.map(PathBuf::from))
    }

    /// Connection options: the URL with the typed TLS settings applied on top.
    pub fn connect_options(&self) -> Result<sqlx::postgres::PgConnectOptions, ConfigError> {
        let mut options = sqlx::postgres::PgConnectOptions::from_str(&self.url).map_err(|e| {
            ConfigError::new("AUDITFLOW_DATABASE_URL", format!("{e} (in {})", crate::redact::url(&self.url)))
        })?;
        options = options.ssl_mode(self.effective_sslmode()?.to_sqlx());
        if let Some(root) = &self.sslrootcert {
            options = options.ssl_root_cert(root);
        }
        if self.statement_timeout_ms > 0 {
            options = options.options([("statement_timeout", format!("{}ms", self.statement_timeout_ms))]);
        }
        Ok(options)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "AUDITFLOW_DATABASE_URL",
                format!("expected postgres://…, got {}", crate::redact::url(&self.url)),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("AUDITFLOW_DATABASE_MAX_CONNECTIONS", "must be at least 1"));
        }
        self.connect_options()?;
        let mode = self.effective_sslmode()?;
        if let Some(root) = self.effective_sslrootcert() {
            let setting = if self.sslrootcert.is_some() { "AUDITFLOW_DATABASE_SSLROOTCERT" } else { "AUDITFLOW_DATABASE_URL" };
            // Unlike libpq, sqlx checks no certificate below verify-ca: a CA file would give a
            // false sense of protection.
            if !mode.verifies() {
                return Err(ConfigError::new(
                    setting,
                    format!("sslrootcert is only used with sslmode=verify-ca or verify-full (sslmode is {mode})"),
                ));
            }
            read_ca_file(setting, &root)?;
        }
        Ok(())
    }
}

/// A readable PEM file holding at least one certificate, or an error naming the setting.
fn read_ca_file(setting: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::new(setting, format!("cannot read CA file {}: {e}", path.display())))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        cert.map_err(|e| ConfigError::new(setting, format!("{}: not a PEM certificate file: {e}", path.display())))?;
        count += 1;
    }
    if count == 0 {
        return Err(ConfigError::new(setting, format!("{}: no PEM certificate in the file", path.display())));
    }
    Ok(())
}

/// `%2F` → `/` (URL query values); malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served. Port 0 picks a free port.
    pub listen: String,
    /// `/healthz` fails when the processing loop has not made a turn for this long.
    pub liveness_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "127.0.0.1:0".into(), liveness_timeout_secs: 120 }
    }
}

/// Settings of the shared stage runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageConfig {
    /// Consumer group of this process; defaults to `<group_prefix>-<stage>`.
    pub group_id: Option<String>,
    /// Prefix of every stage's consumer group (operator commands use it to find them all).
    pub group_prefix: String,
    /// Distinguishes instances of one stage (transactional ids, logs). Defaults to host name + pid.
    pub instance_id: Option<String>,
    /// A batch closes at this many messages…
    pub batch_max_messages: usize,
    /// …or after this long since its first message, whichever comes first.
    pub batch_max_wait_ms: u64,
    /// Where a partition with no stored offset starts: `earliest` or `latest`.
    pub start_from: String,
    /// Upper bound of the retry backoff for transient failures (broker, database).
    pub retry_max_backoff_ms: u64,
    /// A stage crashes instead of dead-lettering everything when more than this share of a
    /// full batch is invalid: a bad deploy upstream should page someone, not drain into the DLQ.
    pub max_invalid_ratio: f64,
    /// Only judged on batches of at least this many messages.
    pub invalid_ratio_min_batch: usize,
    /// Kafka transaction timeout for topic→topic stages.
    pub transaction_timeout_ms: u64,
    /// `/healthz` fails when input has been waiting this long without a commit: a stage that
    /// cannot make progress is restarted by its orchestrator and shows up as stalled.
    pub stall_timeout_secs: u64,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            group_id: None,
            group_prefix: "auditflow".into(),
            instance_id: None,
            batch_max_messages: 5000,
            batch_max_wait_ms: 100,
            start_from: "earliest".into(),
            retry_max_backoff_ms: 5000,
            max_invalid_ratio: 1.0,
            invalid_ratio_min_batch: 100,
            transaction_timeout_ms: 60_000,
            stall_timeout_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichSettings {
    pub max_message_bytes: usize,
    pub max_metadata_depth: usize,
    /// MaxMind-format City databases (a file or a directory of them). None, no geolocation.
    pub geoip_db: Option<PathBuf>,
    /// ASN data (`.mmdb` or `.csv`, a file or a directory). None, no autonomous systems.
    pub asn_db: Option<PathBuf>,
    pub compliance: ComplianceConfig,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        let d = crate::enrich::EnrichConfig::default();
        EnrichSettings {
            max_message_bytes: d.max_message_bytes,
            max_metadata_depth: d.max_metadata_depth,
            geoip_db: d.geoip_db,
            asn_db: d.asn_db,
            compliance: d.compliance,
        }
    }
}

impl EnrichSettings {
    pub fn to_enrich_config(&self) -> crate::enrich::EnrichConfig {
        crate::enrich::EnrichConfig {
            max_message_bytes: self.max_message_bytes,
            max_metadata_depth: self.max_metadata_depth,
            geoip_db: self.geoip_db.clone(),
            asn_db: self.asn_db.clone(),
            compliance: self.compliance.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// tracing filter directive, e.g. `info,auditflow=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), filter: "info".into() }
    }
}

/// Settings that may instead be read from a file named by `<NAME>_FILE` (Kubernetes and Docker
/// secrets mounted as files, so the value is in no process environment listing).
pub const SECRET_SETTINGS: &[&str] = &[
    "AUDITFLOW_MASTER_KEY",
    "AUDITFLOW_PSEUDONYM_KEY",
    "AUDITFLOW_SIGNING_KEY",
    "AUDITFLOW_WITNESS_KEY",
    "AUDITFLOW_JWT_SECRET",
    "AUDITFLOW_OIDC_CLIENT_SECRET",
    "AUDITFLOW_DATABASE_URL",
    "AUDITFLOW_REDIS_URL",
    "AUDITFLOW_SMTP_USERNAME",
    "AUDITFLOW_SMTP_PASSWORD",
    "AUDITFLOW_OPENSEARCH_USERNAME",
    "AUDITFLOW_OPENSEARCH_PASSWORD",
    "AUDITFLOW_OTLP_HEADERS",
    "AUDITFLOW_WEBHOOK_URL",
    "AUDITFLOW_WEBHOOK_SECRET",
    "AUDITFLOW_SLACK_WEBHOOK_URL",
    "AUDITFLOW_LIBRDKAFKA_SASL_USERNAME",
    "AUDITFLOW_LIBRDKAFKA_SASL_PASSWORD",
    "AUDITFLOW_LIBRDKAFKA_SSL_KEY_PASSWORD",
];

/// Replace every `<SECRET>_FILE` of [`SECRET_SETTINGS`] by `<SECRET>` = the file's content
/// (one trailing newline dropped). Both set, an unreadable or an empty file: refused, naming
/// the variable and never the value.
pub fn resolve_secret_files(
    env: &mut HashMap<String, String>,
    read: impl Fn(&std::path::Path) -> std::io::Result<String>,
) -> Result<(), ConfigError> {
    for name in SECRET_SETTINGS {
        let file_var = format!("{name}_FILE");
        let Some(path) = env.remove(&file_var) else { continue };
        if env.contains_key(*name) {
            return Err(ConfigError::new(file_var, format!("set {name} or {name}_FILE, not both")));
        }
        let text = read(std::path::Path::new(path.trim()))
            .map_err(|e| ConfigError::new(file_var.clone(), format!("cannot read {}: {e}", path.trim())))?;
        let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if value.trim().is_empty() {
            return Err(ConfigError::new(file_var, format!("{} is empty", path.trim())));
        }
        env.insert((*name).to_string(), value.to_string());
    }
    Ok(())
}

impl Config {
    /// Load from the process environment (and the file it names).
    pub fn load(config_file: Option<PathBuf>) -> Result<Config, ConfigError> {
        let mut env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("AUDITFLOW_")).collect();
        resolve_secret_files(&mut env, |p| std::fs::read_to_string(p))?;
        let file = config_file.or_else(|| env.get("AUDITFLOW_CONFIG").map(PathBuf::from));
        let text = match &file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("AUDITFLOW_CONFIG", format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        Config::from_sources(text.as_deref(), &env)
    }

    /// Pure form of [`Config::load`], for tests: file text (if any) plus environment variables.
    pub fn from_sources(file_text: Option<&str>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut config: Config = match file_text {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::new("config file", e.to_string()))?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        fn set<T: FromStr>(env: &HashMap<String, String>, name: &str, target: &mut T) -> Result<(), ConfigError>
        where
            T::Err: fmt::Display,
        {
            if let Some(v) = env.get(name) {
                *target = v.trim().parse().map_err(|e: T::Err| ConfigError::new(name, format!("{e} (got {v:?})")))?;
            }
            Ok(())
        }
        set(env, "AUDITFLOW_KAFKA_BROKERS", &mut self.kafka.brokers)?;
        set(env, "AUDITFLOW_KAFKA_CLIENT_ID", &mut self.kafka.client_id)?;
        for (k, v) in env {
            if let Some(prop) = k.strip_prefix("AUDITFLOW_LIBRDKAFKA_") {
                self.kafka.librdkafka.insert(prop.to_ascii_lowercase().replace('_', "."), v.clone());
            }
        }
        set(env, "AUDITFLOW_TOPIC_RAW", &mut self.topics.raw.name)?;
        set(env, "AUDITFLOW_TOPIC_ENRICHED", &mut self.topics.enriched.name)?;
        set(env, "AUDITFLOW_TOPIC_DLQ", &mut self.topics.dlq.name)?;
        set(env, "AUDITFLOW_TOPIC_RULE_MATCHES", &mut self.topics.rule_matches.name)?;
        set(env, "AUDITFLOW_TOPIC_SECURITY_ACTIONS", &mut self.topics.security_actions.name)?;
        set(env, "AUDITFLOW_TOPIC_SECURITY_ALERTS", &mut self.topics.security_alerts.name)?;
        set(env, "AUDITFLOW_TOPIC_ALERT_DLQ", &mut self.topics.alert_dlq.name)?;
        set(env, "AUDITFLOW_TOPIC_COMPLIANCE_EVENTS", &mut self.topics.compliance_events.name)?;
        set(env, "AUDITFLOW_TOPIC_CHECKPOINTS", &mut self.topics.checkpoints.name)?;
        set(env, "AUDITFLOW_REDIS_URL", &mut self.redis.url)?;
        if let Some(v) = env.get("AUDITFLOW_REDIS_CA_FILE") {
            self.redis.ca_file = if v.trim().is_empty() { None } else { Some(PathBuf::from(v.trim())) };
        }
        if env.contains_key("AUDITFLOW_TOPIC_PARTITIONS") {
            let mut n = 0i32;
            set(env, "AUDITFLOW_TOPIC_PARTITIONS", &mut n)?;
            self.topics.raw.partitions = n;
            self.topics.enriched.partitions = n;
            self.topics.rule_matches.partitions = n;
        }
        set(env, "AUDITFLOW_TOPIC_REPLICATION_FACTOR", &mut self.topics.replication_factor)?;
        set(env, "AUDITFLOW_DATABASE_URL", &mut self.database.url)?;
        set(env, "AUDITFLOW_DATABASE_MAX_CONNECTIONS", &mut self.database.max_connections)?;
        set(env, "AUDITFLOW_DATABASE_STATEMENT_TIMEOUT_MS", &mut self.database.statement_timeout_ms)?;
        if let Some(v) = env.get("AUDITFLOW_DATABASE_SSLMODE") {
            self.database.sslmode = if v.trim().is_empty() {
                None
            } else {
                Some(v.trim().parse().map_err(|e: String| ConfigError::new("AUDITFLOW_DATABASE_SSLMODE", e))?)
            };
        }
        if let Some(v) = env.get("AUDITFLOW_DATABASE_SSLROOTCERT") {
            self.database.sslrootcert = if v.trim().is_empty() { None } else { Some(PathBuf::from(v.trim())) };
        }
        set(env, "AUDITFLOW_HTTP_LISTEN", &mut self.http.listen)?;
        set(env, "AUDITFLOW_HTTP_LIVENESS_TIMEOUT_SECS", &mut self.http.liveness_timeout_secs)?;
        set(env, "AUDITFLOW_GROUP_PREFIX", &mut self.stage.group_prefix)?;
        if let Some(v) = env.get("AUDITFLOW_GROUP_ID") {
            self.stage.group_id = Some(v.clone());
        }
        if let Some(v) = env.get("AUDITFLOW_INSTANCE_ID") {
            self.stage.instance_id = Some(v.clone());
        }
        set(env, "AUDITFLOW_BATCH_MAX_MESSAGES", &mut self.stage.batch_max_messages)?;
        set(env, "AUDITFLOW_BATCH_MAX_WAIT_MS", &mut self.stage.batch_max_wait_ms)?;
        set(env, "AUDITFLOW_START_FROM", &mut self.stage.start_from)?;
        set(env, "AUDITFLOW_RETRY_MAX_BACKOFF_MS", &mut self.stage.retry_max_backoff_ms)?;
        set(env, "AUDITFLOW_MAX_INVALID_RATIO", &mut self.stage.max_invalid_ratio)?;
        set(env, "AUDITFLOW_INVALID_RATIO_MIN_BATCH", &mut self.stage.invalid_ratio_min_batch)?;
        set(env, "AUDITFLOW_TRANSACTION_TIMEOUT_MS", &mut self.stage.transaction_timeout_ms)?;
        set(env, "AUDITFLOW_STALL_TIMEOUT_SECS", &mut self.stage.stall_timeout_secs)?;
        set(env, "AUDITFLOW_MAX_MESSAGE_BYTES", &mut self.enrich.max_message_bytes)?;
        set(env, "AUDITFLOW_MAX_METADATA_DEPTH", &mut self.enrich.max_metadata_depth)?;
        if let Some(v) = env.get("AUDITFLOW_GEOIP_DB") {
            self.enrich.geoip_db = if v.trim().is_empty() { None } else { Some(PathBuf::from(v)) };
        }
        if let Some(v) = env.get("AUDITFLOW_ASN_DB") {
            self.enrich.asn_db = if v.trim().is_empty() { None } else { Some(PathBuf::from(v)) };
        }
        set(env, "AUDITFLOW_COMPLIANCE_GDPR", &mut self.enrich.compliance.gdpr.enabled)?;
        set(env, "AUDITFLOW_COMPLIANCE_SOX", &mut self.enrich.compliance.sox.enabled)?;
        set(env, "AUDITFLOW_COMPLIANCE_HIPAA", &mut self.enrich.compliance.hipaa.enabled)?;
        set(env, "AUDITFLOW_COMPLIANCE_PCI", &mut self.enrich.compliance.pci.enabled)?;
        if let Some(v) = env.get("AUDITFLOW_MASTER_KEY") {
            self.privacy.master_key = Some(v.clone());
        }
        if let Some(v) = env.get("AUDITFLOW_PSEUDONYM_KEY") {
            self.privacy.pseudonym_key = Some(v.clone());
        }
        if let Some(v) = env.get("AUDITFLOW_PERSONAL_FIELDS") {
            self.privacy.personal_fields = v
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(|f| {
                    serde_json::from_value(serde_json::Value::String(f.to_string()))
                        .map_err(|_| ConfigError::new("AUDITFLOW_PERSONAL_FIELDS", format!("unknown field {f:?}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = env.get("AUDITFLOW_SIGNING_KEY") {
            self.ledger.signing_key = Some(v.clone());
        }
        if let Some(v) = env.get("AUDITFLOW_VERIFY_KEY") {
            self.ledger.verify_key = Some(v.clone());
        }
        set(env, "AUDITFLOW_CHECKPOINT_INTERVAL_SECS", &mut self.ledger.checkpoint_interval_secs)?;
        if let Some(v) = env.get("AUDITFLOW_WITNESS_KEY") {
            self.ledger.witness_key = Some(v.clone());
        }
        if let Some(v) = env.get("AUDITFLOW_CHECKPOINT_EXPORT_DIR").filter(|v| !v.is_empty()) {
            self.ledger.checkpoint_export_dir = Some(v.into());
        }
        set(env, "AUDITFLOW_LOG_FORMAT", &mut self.log.format)?;
        set(env, "AUDITFLOW_LOG", &mut self.log.filter)?;
        self.alert.apply_env(env)?;
        self.compliance.apply_env(env);
        self.retention.apply_env(env)?;
        self.rules.apply_env(env)?;
        self.index.apply_env(env)?;
        self.api.apply_env(env)?;
        self.trace.apply_env(env)?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err(ConfigError::new("AUDITFLOW_KAFKA_BROKERS", "no bootstrap server given"));
        }
        for spec in self.topics.all() {
            if spec.name.trim().is_empty() {
                return Err(ConfigError::new("topics.*.name", "a topic name is empty"));
            }
            if spec.partitions < 1 {
                return Err(ConfigError::new(format!("topics.{}.partitions", spec.name), "must be at least 1"));
            }
        }
        if self.topics.replication_factor < 1 {
            return Err(ConfigError::new("AUDITFLOW_TOPIC_REPLICATION_FACTOR", "must be at least 1"));
        }
        self.database.validate()?;
        self.redis.validate()?;
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::new("AUDITFLOW_HTTP_LISTEN", format!("{e} (got {:?})", self.http.listen)))?;
        if !(1..=100_000).contains(&self.stage.batch_max_messages) {
            return Err(ConfigError::new("AUDITFLOW_BATCH_MAX_MESSAGES", "must be between 1 and 100000"));
        }
        if self.stage.batch_max_wait_ms == 0 || self.stage.batch_max_wait_ms > 60_000 {
            return Err(ConfigError::new("AUDITFLOW_BATCH_MAX_WAIT_MS", "must be between 1 and 60000"));
        }
        if !matches!(self.stage.start_from.as_str(), "earliest" | "latest") {
            return Err(ConfigError::new("AUDITFLOW_START_FROM", "must be `earliest` or `latest`"));
        }
        if !(0.0..=1.0).contains(&self.stage.max_invalid_ratio) {
            return Err(ConfigError::new("AUDITFLOW_MAX_INVALID_RATIO", "must be between 0 and 1"));
        }
        if self.stage.transaction_timeout_ms < 1000 {
            return Err(ConfigError::new("AUDITFLOW_TRANSACTION_TIMEOUT_MS", "must be at least 1000"));
        }
        if self.stage.stall_timeout_secs < 10 {
            return Err(ConfigError::new("AUDITFLOW_STALL_TIMEOUT_SECS", "must be at least 10"));
        }
        self.check_size_limits()?;
        if let Some(strategy) = self.kafka.librdkafka.get("partition.assignment.strategy") {
            // The runtime relies on eager rebalancing: every assignment restarts from stored offsets.
            if strategy.contains("cooperative") {
                return Err(ConfigError::new(
                    "AUDITFLOW_LIBRDKAFKA_PARTITION_ASSIGNMENT_STRATEGY",
                    "cooperative-sticky is not supported; use range or roundrobin",
                ));
            }
        }
        if self.enrich.max_message_bytes == 0 {
            return Err(ConfigError::new("AUDITFLOW_MAX_MESSAGE_BYTES", "must be positive"));
        }
        if self.enrich.max_metadata_depth == 0 {
            return Err(ConfigError::new("AUDITFLOW_MAX_METADATA_DEPTH", "must be at least 1"));
        }
        for (setting, path) in [("AUDITFLOW_GEOIP_DB", &self.enrich.geoip_db), ("AUDITFLOW_ASN_DB", &self.enrich.asn_db)] {
            if let Some(path) = path {
                if !path.exists() {
                    return Err(ConfigError::new(setting, format!("no such file or directory: {}", path.display())));
                }
            }
        }
        if let Some(k) = &self.privacy.master_key {
            crate::privacy::SecretKey::parse("AUDITFLOW_MASTER_KEY", k)?;
        }
        if let Some(k) = &self.privacy.pseudonym_key {
            crate::privacy::SecretKey::parse("AUDITFLOW_PSEUDONYM_KEY", k)?;
        }
        if let Some(k) = &self.ledger.signing_key {
            crate::privacy::SecretKey::parse("AUDITFLOW_SIGNING_KEY", k)?;
        }
        if self.ledger.checkpoint_interval_secs == 0 {
            return Err(ConfigError::new("AUDITFLOW_CHECKPOINT_INTERVAL_SECS", "must be at least 1"));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::new("AUDITFLOW_LOG_FORMAT", "must be `text` or `json`"));
        }
        self.alert.validate()?;
        self.compliance.validate()?;
        self.retention.validate()?;
        self.rules.validate()?;
        self.index.validate()?;
        self.api.validate()?;
        self.trace.validate()?;
        Ok(())
    }

    /// Every size limit consistent end to end: an event enrich accepts can always be written
    /// to `audit-enriched`, and a rule match or alert embedding it to its own topic. Otherwise a
    /// valid event would only ever reach the dead-letter topic.
    fn check_size_limits(&self) -> Result<(), ConfigError> {
        // Room for what a stage adds to an event: enrichment facts, window figures, group key.
        const ROOM: i64 = 64 * 1024;
        let event = self.enrich.max_message_bytes as i64;
        let t = &self.topics;
        let needs = [
            (&t.raw, event, "AUDITFLOW_MAX_MESSAGE_BYTES"),
            (&t.enriched, event + ROOM, "AUDITFLOW_MAX_MESSAGE_BYTES"),
            (&t.rule_matches, t.enriched.max_message_bytes + ROOM, "topics.enriched.max_message_bytes"),
            (&t.security_alerts, t.rule_matches.max_message_bytes + ROOM, "topics.rule_matches.max_message_bytes"),
            (&t.dlq, (crate::runtime::dlq::MAX_DLQ_PAYLOAD as i64) + ROOM, "topics.dlq.max_message_bytes"),
        ];
        for (spec, need, because) in needs {
            if spec.max_message_bytes < need {
                return Err(ConfigError::new(
                    format!("topics.{}.max_message_bytes", spec.name),
                    format!("is {}, but must be at least {need} to hold what {because} allows", spec.max_message_bytes),
                ));
            }
        }
        Ok(())
    }

    /// The topics a stage reads and writes: `(input, outputs)`; `None` for an unknown stage.
    pub fn stage_topics(&self, stage: &str) -> Option<(&str, Vec<&str>)> {
        let t = &self.topics;
        let (input, outputs) = match stage {
            "enrich" => (&t.raw, vec![&t.enriched, &t.dlq]),
            "persist" => (&t.enriched, vec![&t.checkpoints, &t.dlq]),
            "rules" => (&t.enriched, vec![&t.rule_matches, &t.security_actions, &t.dlq]),
            "alert" => (&t.rule_matches, vec![&t.security_alerts, &t.alert_dlq, &t.dlq]),
            "compliance" => (&t.enriched, vec![&t.compliance_events, &t.dlq]),
            "index" => (&t.enriched, vec![&t.dlq]),
            "witness" => (&t.checkpoints, vec![&t.dlq]),
            _ => return None,
        };
        Some((input.name.as_str(), outputs.into_iter().map(|s| s.name.as_str()).collect()))
    }

    /// What a stage's start-up log says, as `(key, value)` lines: enough to tell which process
    /// talks to what, with no secret (hosts and database names only, never URLs).
    pub fn summary(&self, stage: &str) -> Vec<(&'static str, String)> {
        let mut lines = vec![
            ("stage", format!("{stage} (auditflow {}), instance {}", env!("CARGO_PKG_VERSION"), self.instance_id())),
            ("kafka", format!("brokers {}, group {}", self.kafka.brokers, self.group_id(stage))),
        ];
        if let Some((input, outputs)) = self.stage_topics(stage) {
            lines.push(("topics", format!("{input} → {}", outputs.join(", "))));
        }
        if stage == "api" {
            lines.push(("api", format!("listening on {}, bodies up to {} bytes, {} events per request", self.api.listen, self.api.max_body_bytes, self.api.max_events)));
        }
        if stage == "index" || (stage == "api" && self.index.url.is_some()) {
            let host = self.index.url.as_deref().and_then(crate::redact::url_host).unwrap_or("?");
            lines.push(("opensearch", format!("{host}, indices {}-YYYY.MM", self.index.prefix)));
        }
        if matches!(stage, "persist" | "alert" | "compliance" | "index" | "api") {
            let host = crate::redact::url_host(&self.database.url).unwrap_or("?");
            let db = crate::redact::url_path(&self.database.url).unwrap_or("?");
            lines.push(("database", format!("{host}/{db}, {} connection(s) at most", self.database.max_connections)));
        }
        if stage == "rules" {
            lines.push(("redis", crate::redact::url_host(&self.redis.url).unwrap_or("?").to_string()));
        }
        match self.trace.otlp_endpoint.as_deref() {
            Some(url) => lines.push(("traces", format!("to {}, {}% of new traces recorded", crate::redact::url(url), self.trace.sample_ratio * 100.0))),
            None => lines.push(("traces", "off (no AUDITFLOW_OTLP_ENDPOINT); incoming trace context is passed on".into())),
        }
        if stage != "api" {
            lines.push((
                "batches",
                format!("up to {} messages or {} ms", self.stage.batch_max_messages, self.stage.batch_max_wait_ms),
            ));
        }
        lines
    }

    /// The consumer group of a stage: configured, or `<group_prefix>-<stage>`.
    pub fn group_id(&self, stage: &str) -> String {
        self.stage.group_id.clone().unwrap_or_else(|| format!("{}-{stage}", self.stage.group_prefix))
    }

    /// A name unique to this process among the instances of one stage.
    pub fn instance_id(&self) -> String {
        self.stage.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            format!("{}-{}", if host.is_empty() { "host" } else { &host }, std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn secrets_are_read_from_files_named_by_file_variables() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master-key");
        std::fs::write(&key, "c2VjcmV0LWtleS1ieXRlcy0zMi1sb25nLi4uLi4uLi4=\n").unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p);
        let mut e = env(&[("AUDITFLOW_MASTER_KEY_FILE", key.to_str().unwrap()), ("AUDITFLOW_REDIS_CA_FILE", "/ca.pem")]);
        resolve_secret_files(&mut e, read).unwrap();
        assert_eq!(e["AUDITFLOW_MASTER_KEY"], "c2VjcmV0LWtleS1ieXRlcy0zMi1sb25nLi4uLi4uLi4=", "one trailing newline dropped");
        assert!(!e.contains_key("AUDITFLOW_MASTER_KEY_FILE"), "not passed on (librdkafka would refuse *_FILE properties)");
        assert_eq!(e["AUDITFLOW_REDIS_CA_FILE"], "/ca.pem", "a file setting that is not a secret is left alone");

        let mut both = env(&[("AUDITFLOW_MASTER_KEY_FILE", key.to_str().unwrap()), ("AUDITFLOW_MASTER_KEY", "x")]);
        let err = resolve_secret_files(&mut both, read).unwrap_err().to_string();
        assert!(err.contains("AUDITFLOW_MASTER_KEY_FILE") && err.contains("not both"), "{err}");
        let mut missing = env(&[("AUDITFLOW_SMTP_PASSWORD_FILE", "/nonexistent/secret")]);
        let err = resolve_secret_files(&mut missing, read).unwrap_err().to_string();
        assert!(err.contains("AUDITFLOW_SMTP_PASSWORD_FILE") && err.contains("/nonexistent/secret"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let mut e = env(&[("AUDITFLOW_DATABASE_URL_FILE", empty.to_str().unwrap())]);
        assert!(resolve_secret_files(&mut e, read).unwrap_err().to_string().contains("empty"));
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_sources(None, &HashMap::new()).unwrap();
        assert_eq!(c.topics.raw.name, "audit-raw");
        assert_eq!(c.topics.enriched.name, "audit-enriched");
        assert_eq!(c.topics.dlq.name, "audit-dlq");
        assert_eq!(c.group_id("enrich"), "auditflow-enrich");
    }

    #[test]
    fn env_overrides_file() {
        let file = "[kafka]\nbrokers = \"a:1\"\n[stage]\nbatch_max_messages = 10\n";
        let c = Config::from_sources(Some(file), &env(&[("AUDITFLOW_KAFKA_BROKERS", "b:2")])).unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.stage.batch_max_messages, 10);
    }

    #[test]
    fn librdkafka_settings_pass_through() {
        let file = "[kafka.librdkafka]\n\"socket.timeout.ms\" = \"5000\"\n";
        let c = Config::from_sources(Some(file), &env(&[("AUDITFLOW_LIBRDKAFKA_SECURITY_PROTOCOL", "SASL_SSL")]))
            .unwrap();
        assert_eq!(c.kafka.librdkafka.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(c.kafka.librdkafka.get("socket.timeout.ms").map(String::as_str), Some("5000"));
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_BATCH_MAX_MESSAGES", "lots")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_BATCH_MAX_MESSAGES");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_BATCH_MAX_MESSAGES", "0")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_BATCH_MAX_MESSAGES");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_DATABASE_URL");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_GEOIP_DB", "/nonexistent.mmdb")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_GEOIP_DB");
        let e = Config::from_sources(Some("[kafka]\nbrokerz = \"x\"\n"), &HashMap::new()).unwrap_err();
        assert_eq!(e.setting, "config file");
        let e = Config::from_sources(
            None,
            &env(&[("AUDITFLOW_LIBRDKAFKA_PARTITION_ASSIGNMENT_STRATEGY", "cooperative-sticky")]),
        )
        .unwrap_err();
        assert!(e.reason.contains("cooperative"));
    }

    #[test]
    fn the_summary_names_what_matters_and_no_secret() {
        let c = Config::from_sources(
            None,
            &env(&[
                ("AUDITFLOW_DATABASE_URL", "postgres://u:pw-secret@db.internal:5433/audit?password=q-secret"),
                ("AUDITFLOW_REDIS_URL", "redis://:redis-secret@cache:6380/2"),
                ("AUDITFLOW_LIBRDKAFKA_SASL_PASSWORD", "hunter2"),
                ("AUDITFLOW_INSTANCE_ID", "i-7"),
                ("AUDITFLOW_BATCH_MAX_MESSAGES", "250"),
            ]),
        )
        .unwrap();
        let text = |stage: &str| {
            c.summary(stage).iter().map(|(k, v)| format!("{k}: {v}\n")).collect::<String>()
        };
        let persist = text("persist");
        for needed in ["persist", "i-7", "127.0.0.1:9092", "auditflow-persist", "audit-enriched →", "db.internal:5433/audit", "250 messages"] {
            assert!(persist.contains(needed), "{needed} missing: {persist}");
        }
        assert!(!persist.contains("redis"), "persist does not use Redis: {persist}");
        let rules = text("rules");
        assert!(rules.contains("redis: cache:6380") && rules.contains("audit-rule-matches"), "{rules}");
        assert!(text("enrich").contains("topics: audit-raw → audit-enriched, audit-dlq"));
        for stage in ["enrich", "persist", "rules", "alert", "compliance"] {
            let t = text(stage);
            assert!(t.lines().count() <= 6, "a few lines: {t}");
            for secret in ["pw-secret", "q-secret", "redis-secret", "hunter2"] {
                assert!(!t.contains(secret), "{secret} leaked for {stage}: {t}");
            }
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = Config::from_sources(
            None,
            &env(&[
                ("AUDITFLOW_LIBRDKAFKA_SASL_PASSWORD", "hunter2"),
                ("AUDITFLOW_LIBRDKAFKA_SSL_KEY_PASSWORD", "key-pw"),
                ("AUDITFLOW_DATABASE_URL", "postgres://u:pw-secret@h/db?password=query-secret"),
                ("AUDITFLOW_REDIS_URL", "redis://:redis-secret@h:6379/0"),
            ]),
        )
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        for secret in ["pw-secret", "query-secret", "redis-secret", "key-pw"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
    }

    #[test]
    fn database_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // Any well-formed certificate will do for the parse check: make a minimal PEM block.
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").unwrap();
        let ca_s = ca.to_str().unwrap();

        // Typed settings win over the URL's.
        let c = Config::from_sources(
            None,
            &env(&[
                ("AUDITFLOW_DATABASE_URL", "postgres://u:p@h/db?sslmode=require"),
                ("AUDITFLOW_DATABASE_SSLMODE", "verify-full"),
                ("AUDITFLOW_DATABASE_SSLROOTCERT", ca_s),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.effective_sslmode().unwrap(), SslMode::VerifyFull);
        assert_eq!(c.database.effective_sslrootcert().as_deref(), Some(ca.as_path()));
        assert!(matches!(c.database.connect_options().unwrap().get_ssl_mode(), sqlx::postgres::PgSslMode::VerifyFull));

        // In the URL alone, percent-encoded.
        let url = format!("postgres://u:p@h/db?sslmode=verify-ca&sslrootcert={}", ca_s.replace('/', "%2F"));
        let c = Config::from_sources(None, &env(&[("AUDITFLOW_DATABASE_URL", &url)])).unwrap();
        assert_eq!(c.database.effective_sslmode().unwrap(), SslMode::VerifyCa);
        assert_eq!(c.database.effective_sslrootcert().as_deref(), Some(ca.as_path()));

        // Default: sqlx's prefer.
        let c = Config::from_sources(None, &HashMap::new()).unwrap();
        assert_eq!(c.database.effective_sslmode().unwrap(), SslMode::Prefer);

        let e = Config::from_sources(None, &env(&[("AUDITFLOW_DATABASE_SSLMODE", "verify")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_DATABASE_SSLMODE");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_DATABASE_URL", "postgres://h/db?sslmode=strict")]))
            .unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_DATABASE_URL");
        // A CA file is refused where sqlx would not check the certificate with it.
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_DATABASE_SSLROOTCERT", ca_s)])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_DATABASE_SSLROOTCERT");
        assert!(e.reason.contains("verify-ca"), "{}", e.reason);
        // Unreadable and non-PEM CA files fail at start, naming the setting.
        let missing = dir.path().join("missing.pem");
        let e = Config::from_sources(
            None,
            &env(&[("AUDITFLOW_DATABASE_SSLMODE", "verify-full"), ("AUDITFLOW_DATABASE_SSLROOTCERT", missing.to_str().unwrap())]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_DATABASE_SSLROOTCERT");
        assert!(e.reason.contains("cannot read CA file"), "{}", e.reason);
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let url = format!("postgres://h/db?sslmode=verify-full&sslrootcert={}", junk.display());
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_DATABASE_URL", &url)])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_DATABASE_URL");
        assert!(e.reason.contains("no PEM certificate"), "{}", e.reason);
    }

    #[test]
    fn redis_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").unwrap();
        let ca_s = ca.to_str().unwrap();
        let c = Config::from_sources(
            None,
            &env(&[("AUDITFLOW_REDIS_URL", "rediss://127.0.0.1:6380/0"), ("AUDITFLOW_REDIS_CA_FILE", ca_s)]),
        )
        .unwrap();
        assert!(c.redis.tls());
        assert_eq!(c.redis.ca_file.as_deref(), Some(ca.as_path()));

        let e = Config::from_sources(None, &env(&[("AUDITFLOW_REDIS_CA_FILE", ca_s)])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_REDIS_CA_FILE");
        assert!(e.reason.contains("rediss://"), "{}", e.reason);
        let e = Config::from_sources(
            None,
            &env(&[("AUDITFLOW_REDIS_URL", "rediss://h:6380/0"), ("AUDITFLOW_REDIS_CA_FILE", "/nonexistent/ca.pem")]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_REDIS_CA_FILE");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_REDIS_URL", "rediss://h:6380/0#insecure")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_REDIS_URL");
        let e = Config::from_sources(None, &env(&[("AUDITFLOW_REDIS_URL", "http://h")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_REDIS_URL");
    }
}
