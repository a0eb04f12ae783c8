//! Compliance mapping: which controls of which framework (GDPR, SOX, HIPAA, PCI DSS) an
//! enriched event is evidence for.
//!
//! Enrichment already sets coarse per-framework flags on every event
//! ([`crate::event::ComplianceFlags`]); this layer is the detailed one on top: a configurable
//! table of controls ([`Mapping`], `config/compliance.toml`), each with a match on the event, and
//! the [`ComplianceRecord`] one (event, framework, control) yields. Everything here is pure: the
//! `audit-compliance` stage ([`crate::stages::compliance`]) does the I/O.
//!
//! Records never carry plaintext personal data: the actor is the keyed pseudonym of the event's
//! subject (the user id, else the client address), the same pseudonym `audit_events` stores.

mod mapping;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;
use crate::event::{Classification, EnrichedEvent, Severity};
use crate::privacy::{subject_of, PrivacyKeys, SecretKey, SubjectKind};

pub use mapping::{Control, Mapping, MatchedControl, DEFAULT_MAPPING, DEFAULT_MAPPING_NAME};

/// A compliance framework the pipeline maps events to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Framework {
    Gdpr,
    Sox,
    Hipaa,
    Pci,
}

impl Framework {
    pub const ALL: [Framework; 4] = [Framework::Gdpr, Framework::Sox, Framework::Hipaa, Framework::Pci];

    /// Canonical upper-case name, as stored in `compliance_events.framework`.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Gdpr => "GDPR",
            Framework::Sox => "SOX",
            Framework::Hipaa => "HIPAA",
            Framework::Pci => "PCI",
        }
    }

    /// Human-readable title, for reports.
    pub fn title(self) -> &'static str {
        match self {
            Framework::Gdpr => "GDPR",
            Framework::Sox => "SOX",
            Framework::Hipaa => "HIPAA",
            Framework::Pci => "PCI DSS",
        }
    }
}

impl fmt::Display for Framework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Framework {
    type Err = String;

    fn from_str(s: &str) -> Result<Framework, String> {
        let t = s.trim();
        for fw in Framework::ALL {
            if t.eq_ignore_ascii_case(fw.as_str()) {
                return Ok(fw);
            }
        }
        if t.eq_ignore_ascii_case("pci-dss") || t.eq_ignore_ascii_case("pci_dss") || t.eq_ignore_ascii_case("pci dss") {
            return Ok(Framework::Pci);
        }
        Err(format!("unknown framework {t:?} (allowed: GDPR, SOX, HIPAA, PCI)"))
    }
}

impl Serialize for Framework {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Framework {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Framework, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which frameworks are switched on. The same switches as the enrichment flags
/// (`AUDITFLOW_COMPLIANCE_GDPR`, `_SOX`, `_HIPAA`, `_PCI`): a framework switched off there
/// yields neither flags nor compliance records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameworkSwitches {
    pub gdpr: bool,
    pub sox: bool,
    pub hipaa: bool,
    pub pci: bool,
}

impl FrameworkSwitches {
    pub const ALL_ON: FrameworkSwitches = FrameworkSwitches { gdpr: true, sox: true, hipaa: true, pci: true };

    pub fn from_config(config: &crate::config::Config) -> FrameworkSwitches {
        let c = &config.enrich.compliance;
        FrameworkSwitches { gdpr: c.gdpr.enabled, sox: c.sox.enabled, hipaa: c.hipaa.enabled, pci: c.pci.enabled }
    }

    pub fn is_on(&self, fw: Framework) -> bool {
        match fw {
            Framework::Gdpr => self.gdpr,
            Framework::Sox => self.sox,
            Framework::Hipaa => self.hipaa,
            Framework::Pci => self.pci,
        }
    }
}

/// `[compliance]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceSettings {
    /// The framework/control mapping (TOML). Unset: the built-in copy of
    /// `config/compliance.toml`. Env `AUDITFLOW_COMPLIANCE_MAPPING`.
    pub mapping: Option<PathBuf>,
}

impl ComplianceSettings {
    pub fn apply_env(&mut self, env: &std::collections::HashMap<String, String>) {
        if let Some(v) = env.get("AUDITFLOW_COMPLIANCE_MAPPING") {
            self.mapping = if v.trim().is_empty() { None } else { Some(PathBuf::from(v)) };
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.mapping {
            if !path.is_file() {
                return Err(ConfigError::new("AUDITFLOW_COMPLIANCE_MAPPING", format!("no such file: {}", path.display())));
            }
        }
        Ok(())
    }
}

/// The environment variable holding the pseudonym (HMAC) key: 32 bytes, base64 or hex.
pub const PSEUDONYM_KEY_ENV: &str = "AUDITFLOW_PSEUDONYM_KEY";

/// Computes subject pseudonyms exactly as `audit_events.subject_pseudonym` does
/// ([`PrivacyKeys::pseudonym`]). Holds the pseudonym key only; nothing here encrypts.
#[derive(Clone, Debug)]
pub struct Pseudonyms {
    // `PrivacyKeys` is the one implementation of the pseudonym; its master half is unused here
    // (this type never seals or unwraps anything), so it is filled with the pseudonym key.
    keys: PrivacyKeys,
}

impl Pseudonyms {
    pub fn new(pseudonym_key: SecretKey) -> Pseudonyms {
        Pseudonyms { keys: PrivacyKeys { master: pseudonym_key.clone(), pseudonym: pseudonym_key } }
    }

    /// From `AUDITFLOW_PSEUDONYM_KEY`; a missing or malformed key is a configuration error.
    pub fn from_env() -> Result<Pseudonyms, ConfigError> {
        match std::env::var(PSEUDONYM_KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => Ok(Pseudonyms::new(SecretKey::parse(PSEUDONYM_KEY_ENV, &text)?)),
            _ => Err(ConfigError::new(
                PSEUDONYM_KEY_ENV,
                "not set: compliance records and legal holds identify subjects only by keyed pseudonym \
                 (32 bytes, base64 or hex; the same key audit-persist uses)",
            )),
        }
    }

    /// Pseudonym of the event's subject (its user, else its address or session), the same
    /// one `audit-persist` stores in `audit_events.subject_pseudonym`.
    pub fn of_event(&self, event: &EnrichedEvent) -> Option<String> {
        let (kind, id) = subject_of(event);
        Some(self.keys.pseudonym(kind, id))
    }

    pub fn of(&self, kind: SubjectKind, id: &str) -> String {
        self.keys.pseudonym(kind, id)
    }
}

/// One (event, framework, control): a row of `compliance_events` and a record of the
/// `compliance-events` topic (JSON, camelCase, keyed by event id). Deterministic for a given
/// event and mapping, so a replay writes the very same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceRecord {
    pub event_id: String,
    pub event_time: DateTime<Utc>,
    pub framework: Framework,
    pub control: String,
    pub control_name: String,
    /// The control concerns a privileged (administrative) action.
    pub privileged: bool,
    pub action: String,
    pub resource: String,
    pub success: bool,
    pub severity: Severity,
    pub classification: Classification,
    /// Keyed pseudonym of the subject (never the plaintext user id or address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pseudonym: Option<String>,
}

/// The records an event yields under `mapping` (switched-off frameworks yield none).
pub fn records_for(mapping: &Mapping, pseudonyms: &Pseudonyms, event: &EnrichedEvent) -> Vec<ComplianceRecord> {
    let controls = mapping.controls_for(event);
    if controls.is_empty() {
        return Vec::new();
    }
    let subject = pseudonyms.of_event(event);
    controls
        .into_iter()
        .map(|c| ComplianceRecord {
            event_id: event.id.clone(),
            event_time: event.timestamp,
            framework: c.framework,
            control: c.id.clone(),
            control_name: c.name.clone(),
            privileged: c.privileged,
            action: event.action.clone(),
            resource: event.resource.clone(),
            success: event.success,
            severity: event.severity,
            classification: event.classification,
            subject_pseudonym: subject.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_names_round_trip() {
        for fw in Framework::ALL {
            assert_eq!(fw.as_str().to_lowercase().parse::<Framework>().unwrap(), fw);
            assert_eq!(serde_json::to_string(&fw).unwrap(), format!("\"{}\"", fw.as_str()));
        }
        assert_eq!("PCI-DSS".parse::<Framework>().unwrap(), Framework::Pci);
        assert!("iso27001".parse::<Framework>().unwrap_err().contains("allowed"));
    }

    #[test]
    fn pseudonyms_match_the_privacy_module() {
        let key = SecretKey([5u8; 32]);
        let p = Pseudonyms::new(key.clone());
        let reference = PrivacyKeys { master: SecretKey([1u8; 32]), pseudonym: key };
        assert_eq!(p.of(SubjectKind::User, "alice"), reference.pseudonym(SubjectKind::User, "alice"));
        assert_eq!(p.of(SubjectKind::Ip, "10.0.0.1"), reference.pseudonym(SubjectKind::Ip, "10.0.0.1"));
    }
}
