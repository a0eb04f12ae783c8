//! The framework/control table (`config/compliance.toml`): parsing with file:line errors, and
//! matching an enriched event against it. See the file itself for the format.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::{Framework, FrameworkSwitches};
use crate::error::ConfigError;
use crate::event::{Classification, EnrichedEvent, Severity};

/// The built-in mapping: this repository's `config/compliance.toml`.
pub const DEFAULT_MAPPING: &str = include_str!("../../config/compliance.toml");
/// How the built-in mapping is named in error messages.
pub const DEFAULT_MAPPING_NAME: &str = "config/compliance.toml (built in)";

const SETTING: &str = "AUDITFLOW_COMPLIANCE_MAPPING";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default)]
    control: Vec<ControlFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlFile {
    framework: Spanned<Framework>,
    id: Spanned<String>,
    name: String,
    description: String,
    #[serde(default)]
    privileged: bool,
    #[serde(rename = "match")]
    matcher: MatchFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    action: Option<Spanned<String>>,
    resource: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    actor: Option<Spanned<String>>,
    success: Option<bool>,
    severity: Option<Vec<Severity>>,
    min_severity: Option<Severity>,
    classification: Option<Vec<Classification>>,
    min_classification: Option<Classification>,
    flag: Option<Framework>,
}

/// Conditions of one mapping entry; all that are set must hold.
#[derive(Debug)]
struct Conditions {
    action: Option<Regex>,
    resource: Option<Regex>,
    endpoint: Option<Regex>,
    actor: Option<Regex>,
    success: Option<bool>,
    severity: Option<Vec<Severity>>,
    min_severity: Option<Severity>,
    classification: Option<Vec<Classification>>,
    min_classification: Option<Classification>,
    flag: Option<Framework>,
}

impl Conditions {
    fn holds(&self, ev: &EnrichedEvent) -> bool {
        fn re(r: &Option<Regex>, text: Option<&str>) -> bool {
            match r {
                None => true,
                Some(r) => text.is_some_and(|t| r.is_match(t)),
            }
        }
        re(&self.action, Some(&ev.action))
            && re(&self.resource, Some(&ev.resource))
            && re(&self.endpoint, ev.endpoint.as_deref())
            && re(&self.actor, ev.user_id.as_deref())
            && self.success.is_none_or(|s| s == ev.success)
            && self.severity.as_ref().is_none_or(|l| l.contains(&ev.severity))
            && self.min_severity.is_none_or(|m| ev.severity >= m)
            && self.classification.as_ref().is_none_or(|l| l.contains(&ev.classification))
            && self.min_classification.is_none_or(|m| ev.classification >= m)
            && self.flag.is_none_or(|f| match f {
                Framework::Gdpr => ev.compliance.gdpr,
                Framework::Sox => ev.compliance.sox,
                Framework::Hipaa => ev.compliance.hipaa,
                Framework::Pci => ev.compliance.pci,
            })
    }
}

/// One control of one framework, as the mapping describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub framework: Framework,
    pub id: String,
    pub name: String,
    pub description: String,
    /// Privileged when any of its entries is (see [`Mapping::controls_for`]).
    pub privileged: bool,
}

#[derive(Debug)]
struct Entry {
    /// Index into `Mapping::controls`.
    control: usize,
    privileged: bool,
    conditions: Conditions,
}

/// The compiled mapping, restricted to the frameworks switched on.
#[derive(Debug)]
pub struct Mapping {
    /// Distinct controls in file order (of every framework in the file).
    controls: Vec<Control>,
    entries: Vec<Entry>,
    switches: FrameworkSwitches,
}

/// A control matched by an event, with the privileged marker of the entries that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedControl<'a> {
    pub framework: Framework,
    pub id: &'a String,
    pub name: &'a String,
    pub privileged: bool,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

fn located(source: &str, text: &str, span: Option<Range<usize>>, message: impl std::fmt::Display) -> ConfigError {
    let reason = match span {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{source}:{line}:{col}: {message}")
        }
        None => format!("{source}: {message}"),
    };
    ConfigError::new(SETTING, reason)
}

impl Mapping {
    /// Parse and compile mapping text; `source` names it in errors (`file:line:col: …`).
    pub fn parse(text: &str, source: &str, switches: FrameworkSwitches) -> Result<Mapping, ConfigError> {
        let file: MappingFile = toml::from_str(text).map_err(|e| located(source, text, e.span(), e.message().trim()))?;
        let mut controls: Vec<Control> = Vec::new();
        let mut index: HashMap<(Framework, String), usize> = HashMap::new();
        let mut entries = Vec::with_capacity(file.control.len());
        for c in file.control {
            let framework = *c.framework.get_ref();
            let at = c.framework.span();
            let id = c.id.get_ref().trim().to_string();
            if id.is_empty() {
                return Err(located(source, text, Some(c.id.span()), "control id is empty"));
            }
            if c.name.trim().is_empty() {
                return Err(located(source, text, Some(at), format!("control {framework} {id}: name is empty")));
            }
            let compile = |field: &str, pattern: &Option<Spanned<String>>| -> Result<Option<Regex>, ConfigError> {
                match pattern {
                    None => Ok(None),
                    Some(p) => Regex::new(p.get_ref()).map(Some).map_err(|e| {
                        located(source, text, Some(p.span()), format!("invalid regex in match.{field}: {e}"))
                    }),
                }
            };
            let m = &c.matcher;
            let conditions = Conditions {
                action: compile("action", &m.action)?,
                resource: compile("resource", &m.resource)?,
                endpoint: compile("endpoint", &m.endpoint)?,
                actor: compile("actor", &m.actor)?,
                success: m.success,
                severity: m.severity.clone(),
                min_severity: m.min_severity,
                classification: m.classification.clone(),
                min_classification: m.min_classification,
                flag: m.flag,
            };
            let empty = m.action.is_none()
                && m.resource.is_none()
                && m.endpoint.is_none()
                && m.actor.is_none()
                && m.success.is_none()
                && m.severity.is_none()
                && m.min_severity.is_none()
                && m.classification.is_none()
                && m.min_classification.is_none()
                && m.flag.is_none();
            if empty {
                return Err(located(
                    source,
                    text,
                    Some(at),
                    format!("control {framework} {id}: [control.match] needs at least one condition (it would match every event)"),
                ));
            }
            let control = match index.get(&(framework, id.clone())) {
                Some(&i) => {
                    if controls[i].name != c.name {
                        return Err(located(
                            source,
                            text,
                            Some(at),
                            format!(
                                "control {framework} {id} is named {:?} here but {:?} in an earlier entry",
                                c.name, controls[i].name
                            ),
                        ));
                    }
                    controls[i].privileged |= c.privileged;
                    i
                }
                None => {
                    controls.push(Control {
                        framework,
                        id: id.clone(),
                        name: c.name.clone(),
                        description: c.description.clone(),
                        privileged: c.privileged,
                    });
                    index.insert((framework, id), controls.len() - 1);
                    controls.len() - 1
                }
            };
            entries.push(Entry { control, privileged: c.privileged, conditions });
        }
        Ok(Mapping { controls, entries, switches })
    }

    /// The built-in default mapping.
    pub fn builtin(switches: FrameworkSwitches) -> Mapping {
        match Mapping::parse(DEFAULT_MAPPING, DEFAULT_MAPPING_NAME, switches) {
            Ok(m) => m,
            // Covered by the unit tests: a failure is a build defect, not an operator error.
            Err(e) => panic!("built-in compliance mapping is invalid: {e}"),
        }
    }

    /// Read `path`, or use the built-in mapping when none is given.
    pub fn load(path: Option<&Path>, switches: FrameworkSwitches) -> Result<Mapping, ConfigError> {
        match path {
            None => Ok(Mapping::builtin(switches)),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::new(SETTING, format!("cannot read {}: {e}", p.display())))?;
                Mapping::parse(&text, &p.display().to_string(), switches)
            }
        }
    }

    /// From the process configuration: its mapping file and framework switches.
    pub fn from_config(config: &crate::config::Config) -> Result<Mapping, ConfigError> {
        Mapping::load(config.compliance.mapping.as_deref(), FrameworkSwitches::from_config(config))
    }

    /// Every control of `framework` in the mapping (whether switched on or not), in file order.
    pub fn controls(&self, framework: Framework) -> impl Iterator<Item = &Control> {
        self.controls.iter().filter(move |c| c.framework == framework)
    }

    pub fn switches(&self) -> FrameworkSwitches {
        self.switches
    }

    /// The controls `event` is evidence for, once each, in file order; a control is privileged
    /// when any of its matching entries is. Frameworks switched off yield nothing.
    pub fn controls_for(&self, event: &EnrichedEvent) -> Vec<MatchedControl<'_>> {
        let mut out: Vec<(usize, bool)> = Vec::new();
        for entry in &self.entries {
            let control = &self.controls[entry.control];
            if !self.switches.is_on(control.framework) || !entry.conditions.holds(event) {
                continue;
            }
            match out.iter_mut().find(|(i, _)| *i == entry.control) {
                Some((_, p)) => *p |= entry.privileged,
                None => out.push((entry.control, entry.privileged)),
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter()
            .map(|(i, privileged)| {
                let c = &self.controls[i];
                MatchedControl { framework: c.framework, id: &c.id, name: &c.name, privileged }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{EnrichConfig, Enricher};
    use crate::event::SourcePosition;
    use chrono::Utc;

    /// Enrich a raw JSON event the way audit-enrich does, every framework's flags switched on.
    fn enriched(raw: serde_json::Value) -> EnrichedEvent {
        let mut cfg = EnrichConfig::default();
        cfg.compliance.hipaa.enabled = true;
        let enricher = Enricher::new(&cfg).unwrap();
        let source = SourcePosition { topic: "t".into(), partition: 0, offset: 1, timestamp_ms: None };
        enricher.enrich(raw.to_string().as_bytes(), &source, Utc::now()).unwrap()
    }

    fn ids(m: &Mapping, ev: &EnrichedEvent, fw: Framework) -> Vec<String> {
        m.controls_for(ev).into_iter().filter(|c| c.framework == fw).map(|c| c.id.clone()).collect()
    }

    fn unrelated() -> EnrichedEvent {
        enriched(serde_json::json!({
            "action": "view_dashboard", "resource": "reports", "userId": "u1", "ipAddress": "10.1.2.3"
        }))
    }

    /// (framework, control, representative event)
    fn representatives() -> Vec<(Framework, &'static str, serde_json::Value)> {
        use serde_json::json;
        vec![
            (Framework::Gdpr, "Art. 15", json!({"action": "subject_access_request", "resource": "user_data", "userId": "u1"})),
            (Framework::Gdpr, "Art. 16", json!({"action": "rectify_personal_data", "resource": "user_profile", "userId": "u1"})),
            (Framework::Gdpr, "Art. 17", json!({"action": "delete_user", "resource": "user_management", "userId": "admin1", "classification": "CONFIDENTIAL"})),
            (Framework::Gdpr, "Art. 20", json!({"action": "data_export", "resource": "customer_data", "userId": "u1", "classification": "RESTRICTED"})),
            (Framework::Gdpr, "Art. 30", json!({"action": "read", "resource": "customer_records", "userId": "u1", "classification": "CONFIDENTIAL"})),
            (Framework::Sox, "ITGC-AC-01", json!({"action": "create_user", "resource": "iam", "userId": "u1"})),
            (Framework::Sox, "ITGC-AC-02", json!({"action": "grant_role", "resource": "iam_roles", "userId": "u1"})),
            (Framework::Sox, "ITGC-AC-03", json!({"action": "login", "resource": "authentication", "userId": "u1", "success": false})),
            (Framework::Sox, "ITGC-CM-01", json!({"action": "update_entry", "resource": "general_ledger", "userId": "u1"})),
            (Framework::Sox, "ITGC-OP-01", json!({"action": "restart", "resource": "cluster", "severity": "CRITICAL"})),
            (Framework::Hipaa, "164.312(b)", json!({"action": "view", "resource": "patient_record", "userId": "u1"})),
            (Framework::Hipaa, "164.308(a)(1)(ii)(D)", json!({"action": "view", "resource": "patient_record", "userId": "u1", "success": false})),
            (Framework::Hipaa, "164.308(a)(4)(ii)(C)", json!({"action": "revoke_permission", "resource": "ehr_access", "userId": "u1"})),
            (Framework::Hipaa, "164.308(a)(5)(ii)(C)", json!({"action": "login", "resource": "portal", "userId": "u1", "success": false})),
            (Framework::Pci, "10.2.1.1", json!({"action": "view", "resource": "card_vault", "userId": "u1"})),
            (Framework::Pci, "10.2.1.2", json!({"action": "update_settings", "resource": "store", "userId": "root"})),
            (Framework::Pci, "10.2.1.3", json!({"action": "read", "resource": "audit_logs", "userId": "u1"})),
            (Framework::Pci, "10.2.1.4", json!({"action": "login", "resource": "authentication", "userId": "u1", "success": false})),
            (Framework::Pci, "10.2.1.5", json!({"action": "reset_password", "resource": "accounts", "userId": "u1"})),
            (Framework::Pci, "10.2.1.6", json!({"action": "stop_audit_logging", "resource": "syslog", "userId": "u1"})),
            (Framework::Pci, "10.2.1.7", json!({"action": "drop_table", "resource": "db_payments_archive", "userId": "u1"})),
        ]
    }

    #[test]
    fn builtin_mapping_parses_and_covers_every_framework() {
        let m = Mapping::builtin(FrameworkSwitches::ALL_ON);
        for fw in Framework::ALL {
            assert!(m.controls(fw).count() >= 4, "{fw}: {:?}", m.controls(fw).collect::<Vec<_>>());
        }
        // Every built-in control has a representative event below.
        let reps = representatives();
        for c in &m.controls {
            assert!(reps.iter().any(|(f, id, _)| *f == c.framework && *id == c.id), "no test event for {} {}", c.framework, c.id);
        }
    }

    #[test]
    fn each_default_control_fires_on_its_event_and_not_on_an_unrelated_one() {
        let m = Mapping::builtin(FrameworkSwitches::ALL_ON);
        let other = unrelated();
        assert!(m.controls_for(&other).is_empty(), "{:?}", m.controls_for(&other));
        for (fw, control, raw) in representatives() {
            let ev = enriched(raw.clone());
            assert!(ids(&m, &ev, fw).contains(&control.to_string()), "{fw} {control} did not fire on {raw}: {:?}", ids(&m, &ev, fw));
        }
    }

    #[test]
    fn demo_mix_examples_map_as_expected() {
        let m = Mapping::builtin(FrameworkSwitches::ALL_ON);
        let delete = enriched(serde_json::json!({"action": "delete_user", "resource": "user_management", "userId": "admin123",
            "classification": "CONFIDENTIAL", "severity": "MEDIUM"}));
        assert_eq!(ids(&m, &delete, Framework::Gdpr), ["Art. 17", "Art. 30"]);
        assert_eq!(ids(&m, &delete, Framework::Sox), ["ITGC-AC-01"]);
        assert_eq!(ids(&m, &delete, Framework::Pci), ["10.2.1.2", "10.2.1.5"]);
        let login = enriched(serde_json::json!({"action": "login", "resource": "user_account", "userId": "user1"}));
        assert_eq!(ids(&m, &login, Framework::Pci), ["10.2.1.5"]);
        assert!(ids(&m, &login, Framework::Sox).is_empty());
        // The privileged marker: a login is a use of authentication, not a privileged action;
        // a role grant matches the privileged entry of the same control.
        let p = |ev: &EnrichedEvent, id: &str| m.controls_for(ev).iter().find(|c| c.id == id).map(|c| c.privileged);
        assert_eq!(p(&login, "10.2.1.5"), Some(false));
        let grant = enriched(serde_json::json!({"action": "grant_role", "resource": "iam_roles", "userId": "user1"}));
        assert_eq!(p(&grant, "10.2.1.5"), Some(true));
        assert_eq!(p(&grant, "ITGC-AC-02"), Some(true));
    }

    #[test]
    fn a_switched_off_framework_yields_nothing() {
        for fw in Framework::ALL {
            let mut switches = FrameworkSwitches::ALL_ON;
            match fw {
                Framework::Gdpr => switches.gdpr = false,
                Framework::Sox => switches.sox = false,
                Framework::Hipaa => switches.hipaa = false,
                Framework::Pci => switches.pci = false,
            }
            let m = Mapping::builtin(switches);
            for (_, _, raw) in representatives() {
                let ev = enriched(raw);
                assert!(ids(&m, &ev, fw).is_empty(), "{fw} is off");
            }
        }
        // HIPAA is off by default in the enrichment settings, so by default it yields nothing.
        let defaults = FrameworkSwitches::from_config(&crate::config::Config::default());
        assert!(!defaults.hipaa && defaults.gdpr && defaults.sox && defaults.pci);
    }

    #[test]
    fn invalid_mapping_is_reported_with_file_and_line() {
        let bad_regex = "[[control]]\nframework = \"SOX\"\nid = \"X\"\nname = \"n\"\ndescription = \"d\"\n[control.match]\naction = '(unclosed'\n";
        let e = Mapping::parse(bad_regex, "m.toml", FrameworkSwitches::ALL_ON).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_COMPLIANCE_MAPPING");
        assert!(e.reason.starts_with("m.toml:7:"), "{}", e.reason);
        assert!(e.reason.contains("match.action"), "{}", e.reason);

        let bad_framework = "[[control]]\nframework = \"ISO\"\nid = \"X\"\nname = \"n\"\ndescription = \"d\"\n[control.match]\nsuccess = false\n";
        let e = Mapping::parse(bad_framework, "m.toml", FrameworkSwitches::ALL_ON).unwrap_err();
        assert!(e.reason.starts_with("m.toml:2:"), "{}", e.reason);
        assert!(e.reason.contains("unknown framework"), "{}", e.reason);

        let unknown_key = "[[control]]\nframework = \"SOX\"\nid = \"X\"\nname = \"n\"\ndescription = \"d\"\n[control.match]\nverb = 'x'\n";
        let e = Mapping::parse(unknown_key, "m.toml", FrameworkSwitches::ALL_ON).unwrap_err();
        assert!(e.reason.starts_with("m.toml:7:"), "{}", e.reason);

        let bad_severity = "[[control]]\nframework = \"SOX\"\nid = \"X\"\nname = \"n\"\ndescription = \"d\"\n[control.match]\nmin_severity = 'URGENT'\n";
        let e = Mapping::parse(bad_severity, "m.toml", FrameworkSwitches::ALL_ON).unwrap_err();
        assert!(e.reason.starts_with("m.toml:7:") && e.reason.contains("URGENT"), "{}", e.reason);

        let no_condition = "\n[[control]]\nframework = \"SOX\"\nid = \"X\"\nname = \"n\"\ndescription = \"d\"\n[control.match]\n";
        let e = Mapping::parse(no_condition, "m.toml", FrameworkSwitches::ALL_ON).unwrap_err();
        assert!(e.reason.starts_with("m.toml:3:") && e.reason.contains("at least one condition"), "{}", e.reason);

        let syntax = "[[control]\n";
        let e = Mapping::parse(syntax, "m.toml", FrameworkSwitches::ALL_ON).unwrap_err();
        assert!(e.reason.starts_with("m.toml:1:"), "{}", e.reason);

        let e = Mapping::load(Some(Path::new("/nonexistent/compliance.toml")), FrameworkSwitches::ALL_ON).unwrap_err();
        assert!(e.reason.contains("/nonexistent/compliance.toml"), "{}", e.reason);
    }

    #[test]
    fn conditions_combine_and_entries_are_alternatives() {
        let text = r#"
[[control]]
framework = "PCI"
id = "A"
name = "a"
description = "d"
[control.match]
action = '^x$'
success = false
severity = ["HIGH"]
classification = ["RESTRICTED", "CONFIDENTIAL"]

[[control]]
framework = "PCI"
id = "A"
name = "a"
description = "d"
privileged = true
[control.match]
endpoint = '^/admin'
"#;
        let m = Mapping::parse(text, "t", FrameworkSwitches::ALL_ON).unwrap();
        let hit = enriched(serde_json::json!({"action": "x", "resource": "r", "success": false, "severity": "HIGH", "classification": "RESTRICTED"}));
        let c = m.controls_for(&hit);
        assert_eq!(c.len(), 1);
        assert!(!c[0].privileged);
        let miss = enriched(serde_json::json!({"action": "x", "resource": "r", "success": false, "severity": "LOW", "classification": "RESTRICTED"}));
        assert!(m.controls_for(&miss).is_empty());
        let admin = enriched(serde_json::json!({"action": "x", "resource": "r", "success": false, "severity": "HIGH",
            "classification": "RESTRICTED", "endpoint": "/admin/x"}));
        let c = m.controls_for(&admin);
        assert_eq!(c.len(), 1, "one record per control");
        assert!(c[0].privileged, "privileged when any matching entry is");
    }
}
