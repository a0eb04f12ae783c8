//! Which compliance regimes an event concerns, decided per event from configurable criteria
//! (not a global switch per framework: an event about a payment is PCI-relevant, a login
//! without one is not).
//!
//! TOML shape (every key optional; shown with the defaults):
//! ```toml
//! [enrich.compliance.gdpr]
//! enabled = true
//! user_id = true        # an identified user is personal data
//! ip_address = true     # so is a client address
//! patterns = []         # plus any action/resource matching these
//! fields = ["action", "resource"]
//!
//! [enrich.compliance.sox]
//! enabled = true
//! min_severity = "CRITICAL"
//! patterns = ['(?i)admin|grant|role|permission|privilege|sudo|ledger|payment|invoice|journal|financial']
//! fields = ["action", "resource"]
//!
//! [enrich.compliance.hipaa]
//! enabled = false
//! patterns = ['(?i)patient|medical|health|ehr|diagnos|prescription', '(?i)(?:^|[^a-z])phi(?:[^a-z]|$)']
//! fields = ["resource"]
//! min_classification = "PUBLIC"   # e.g. "RESTRICTED" to flag only restricted health data
//!
//! [enrich.compliance.pci]
//! enabled = true
//! patterns = ['(?i)card|payment|pci|checkout', '(?i)(?:^|[^a-z])pan(?:[^a-z]|$)']
//! fields = ["resource", "endpoint"]
//! ```

use regex::RegexSet;
use serde::Deserialize;

use crate::error::ConfigError;
use crate::event::{Classification, ComplianceFlags, EnrichedEvent, Severity};

/// An event field a pattern list is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchField {
    Action,
    Resource,
    Endpoint,
}

/// Per-framework criteria; see the module docs for the TOML form.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceConfig {
    pub gdpr: GdprConfig,
    pub sox: SoxConfig,
    pub hipaa: HipaaConfig,
    pub pci: PciConfig,
}

/// GDPR: the event concerns an identified (or identifiable) person.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GdprConfig {
    pub enabled: bool,
    /// Flag events carrying a user id.
    pub user_id: bool,
    /// Flag events carrying a client IP (personal data under GDPR).
    pub ip_address: bool,
    /// Also flag events whose `fields` match any of these regexes.
    pub patterns: Vec<String>,
    pub fields: Vec<MatchField>,
}

impl Default for GdprConfig {
    fn default() -> Self {
        GdprConfig {
            enabled: true,
            user_id: true,
            ip_address: true,
            patterns: Vec::new(),
            fields: vec![MatchField::Action, MatchField::Resource],
        }
    }
}

/// SOX: severe events and anything touching privileges or financial records.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoxConfig {
    pub enabled: bool,
    /// Events at or above this severity are flagged whatever they concern.
    pub min_severity: Severity,
    pub patterns: Vec<String>,
    pub fields: Vec<MatchField>,
}

impl Default for SoxConfig {
    fn default() -> Self {
        SoxConfig {
            enabled: true,
            min_severity: Severity::Critical,
            patterns: vec![
                r"(?i)admin|grant|role|permission|privilege|sudo|ledger|payment|invoice|journal|financial"
                    .into(),
            ],
            fields: vec![MatchField::Action, MatchField::Resource],
        }
    }
}

/// HIPAA: health data. Off by default; most deployments hold none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HipaaConfig {
    pub enabled: bool,
    pub patterns: Vec<String>,
    pub fields: Vec<MatchField>,
    /// A matching event is flagged only at or above this classification.
    pub min_classification: Classification,
}

impl Default for HipaaConfig {
    fn default() -> Self {
        HipaaConfig {
            enabled: false,
            patterns: vec![
                r"(?i)patient|medical|health|ehr|diagnos|prescription".into(),
                // Bare "phi" is a substring of too many words (graphics, philosophy).
                r"(?i)(?:^|[^a-z])phi(?:[^a-z]|$)".into(),
            ],
            fields: vec![MatchField::Resource],
            min_classification: Classification::Public,
        }
    }
}

/// PCI DSS: cardholder data and payment flows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PciConfig {
    pub enabled: bool,
    pub patterns: Vec<String>,
    pub fields: Vec<MatchField>,
}

impl Default for PciConfig {
    fn default() -> Self {
        PciConfig {
            enabled: true,
            patterns: vec![
                r"(?i)card|payment|pci|checkout".into(),
                // Bare "pan" is a substring of too many words (company, japan).
                r"(?i)(?:^|[^a-z])pan(?:[^a-z]|$)".into(),
            ],
            fields: vec![MatchField::Resource, MatchField::Endpoint],
        }
    }
}

/// A compiled pattern list and the fields it applies to.
#[derive(Debug)]
struct Matcher {
    set: RegexSet,
    fields: Vec<MatchField>,
}

impl Matcher {
    fn compile(
        framework: &str,
        patterns: &[String],
        fields: &[MatchField],
    ) -> Result<Matcher, ConfigError> {
        // Compiled one by one first so the error names the offending entry.
        for (i, p) in patterns.iter().enumerate() {
            if let Err(e) = regex::Regex::new(p) {
                return Err(ConfigError::new(
                    format!("enrich.compliance.{framework}.patterns[{i}]"),
                    format!("invalid regex for {framework}: {e}"),
                ));
            }
        }
        let set = RegexSet::new(patterns).map_err(|e| {
            ConfigError::new(
                format!("enrich.compliance.{framework}.patterns"),
                e.to_string(),
            )
        })?;
        Ok(Matcher {
            set,
            fields: fields.to_vec(),
        })
    }

    fn matches(&self, ev: &EnrichedEvent) -> bool {
        if self.set.is_empty() {
            return false;
        }
        self.fields.iter().any(|f| match f {
            MatchField::Action => self.set.is_match(&ev.action),
            MatchField::Resource => self.set.is_match(&ev.resource),
            MatchField::Endpoint => ev.endpoint.as_deref().is_some_and(|e| self.set.is_match(e)),
        })
    }
}

#[derive(Debug)]
struct Gdpr {
    user_id: bool,
    ip_address: bool,
    matcher: Matcher,
}

#[derive(Debug)]
struct Sox {
    min_severity: Severity,
    matcher: Matcher,
}

#[derive(Debug)]
struct Hipaa {
    min_classification: Classification,
    matcher: Matcher,
}

/// Compiled criteria; a disabled framework is `None` and always yields `false`.
#[derive(Debug)]
pub struct Compliance {
    gdpr: Option<Gdpr>,
    sox: Option<Sox>,
    hipaa: Option<Hipaa>,
    pci: Option<Matcher>,
}

impl Compliance {
    pub fn new(cfg: &ComplianceConfig) -> Result<Compliance, ConfigError> {
        let gdpr = match &cfg.gdpr {
            c if c.enabled => Some(Gdpr {
                user_id: c.user_id,
                ip_address: c.ip_address,
                matcher: Matcher::compile("gdpr", &c.patterns, &c.fields)?,
            }),
            _ => None,
        };
        let sox = match &cfg.sox {
            c if c.enabled => Some(Sox {
                min_severity: c.min_severity,
                matcher: Matcher::compile("sox", &c.patterns, &c.fields)?,
            }),
            _ => None,
        };
        let hipaa = match &cfg.hipaa {
            c if c.enabled => Some(Hipaa {
                min_classification: c.min_classification,
                matcher: Matcher::compile("hipaa", &c.patterns, &c.fields)?,
            }),
            _ => None,
        };
        let pci = match &cfg.pci {
            c if c.enabled => Some(Matcher::compile("pci", &c.patterns, &c.fields)?),
            _ => None,
        };
        Ok(Compliance {
            gdpr,
            sox,
            hipaa,
            pci,
        })
    }

    pub fn flags(&self, ev: &EnrichedEvent) -> ComplianceFlags {
        ComplianceFlags {
            gdpr: self.gdpr.as_ref().is_some_and(|g| {
                (g.user_id && ev.user_id.is_some())
                    || (g.ip_address && ev.ip_address.is_some())
                    || g.matcher.matches(ev)
            }),
            sox: self
                .sox
                .as_ref()
                .is_some_and(|s| ev.severity >= s.min_severity || s.matcher.matches(ev)),
            hipaa: self.hipaa.as_ref().is_some_and(|h| {
                ev.classification >= h.min_classification && h.matcher.matches(ev)
            }),
            pci: self.pci.as_ref().is_some_and(|p| p.matches(ev)),
        }
    }
}
