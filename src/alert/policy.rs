//! Policy evaluation, group keys and fingerprints: pure functions, no I/O.
//!
//! A rule match that a policy selects belongs to a **group**: the policy, the rule, and the
//! group key (the match's own `group_key` plus the event fields the policy groups by). Frequency
//! is counted per group, and an alert is opened per group and **window**: the suppression
//! window that the alert's triggering match opens, `[t₀, t₀ + suppression)`. The alert's
//! fingerprint is `policy + rule + group key + window start`; its id is the UUIDv5 of the
//! fingerprint, so reprocessing the same matches can never open a second alert.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::settings::PolicyConfig;
use crate::event::EnrichedEvent;
use crate::rule_match::{RuleAction, RuleMatch};

/// Namespace of alert ids (UUIDv5 of the URL `urn:auditflow:alert`).
pub fn alert_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:auditflow:alert")
}

/// Does `policy` select `m`? Only ALERT and BLOCK matches are ever considered.
pub fn policy_matches(policy: &PolicyConfig, m: &RuleMatch) -> bool {
    if !policy.enabled || m.action == RuleAction::Log {
        return false;
    }
    if !policy.severities.is_empty() && !policy.severities.contains(&m.severity) {
        return false;
    }
    if !policy.rule_ids.is_empty() && !policy.rule_ids.iter().any(|r| r == &m.rule_id) {
        return false;
    }
    if !policy.tags.is_empty() && !policy.tags.iter().any(|t| m.compliance.iter().any(|c| c.eq_ignore_ascii_case(t))) {
        return false;
    }
    if !policy.actions.is_empty() {
        let Some(ev) = &m.event else { return false };
        let action = ev.action.to_lowercase();
        if !policy.actions.iter().any(|a| action.contains(&a.to_lowercase())) {
            return false;
        }
    }
    if let Some(success) = policy.success {
        match &m.event {
            Some(ev) if ev.success == success => {}
            _ => return false,
        }
    }
    true
}

/// The value of a groupable event field ("" when the event lacks it).
fn event_field(ev: Option<&EnrichedEvent>, field: &str) -> String {
    let Some(ev) = ev else { return String::new() };
    let v = match field {
        "user_id" => ev.user_id.as_deref(),
        "session_id" => ev.session_id.as_deref(),
        "ip_address" => ev.ip_address.as_deref(),
        "resource" => Some(ev.resource.as_str()),
        "resource_id" => ev.resource_id.as_deref(),
        "action" => Some(ev.action.as_str()),
        "endpoint" => ev.endpoint.as_deref(),
        "method" => ev.method.as_deref(),
        _ => None,
    };
    v.unwrap_or_default().to_string()
}

/// The match's group key extended with the policy's `group_by` fields.
pub fn group_key(policy: &PolicyConfig, m: &RuleMatch) -> BTreeMap<String, String> {
    let mut key = m.group_key.clone();
    for field in &policy.group_by {
        key.entry(field.clone()).or_insert_with(|| event_field(m.event.as_ref(), field));
    }
    key
}

/// Hex SHA-256 of the group: policy, rule and group key. Group keys hold event data of any
/// length, so the database indexes this digest, not the key.
pub fn group_hash(policy_id: &str, rule_id: &str, key: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(policy_id.as_bytes());
    h.update([0x1f]);
    h.update(rule_id.as_bytes());
    h.update([0x1f]);
    // BTreeMap serialises in key order: one canonical form per key.
    h.update(serde_json::to_vec(key).unwrap_or_default());
    hex(&h.finalize())
}

/// Fingerprint of the alert of a group whose window starts at `window_start`.
pub fn fingerprint(group_hash: &str, window_start: DateTime<Utc>) -> String {
    format!("{group_hash}:{}", window_start.timestamp_millis())
}

/// The deterministic alert id of a fingerprint.
pub fn alert_id(fingerprint: &str) -> Uuid {
    Uuid::new_v5(&alert_namespace(), fingerprint.as_bytes())
}

/// Event time cut to whole milliseconds: what PostgreSQL stores and what fingerprints use, so
/// the value read back equals the value hashed.
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis()).single().unwrap_or(t)
}

/// 64-bit advisory-lock key of a group (the first 8 bytes of its digest).
pub fn lock_key(group_hash: &str) -> i64 {
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(group_hash.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    i64::from_be_bytes(bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One policy that selected one match.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyHit {
    pub policy_id: String,
    pub group_key: BTreeMap<String, String>,
    pub group_hash: String,
    pub count: u32,
    pub window_seconds: u64,
    pub suppression_seconds: u64,
    pub group_wait_seconds: u64,
}

/// The policy hits of `m`: the first matching policy, and later ones only while the matching
/// policies say `continue`.
pub fn evaluate(policies: &[PolicyConfig], default_group_wait: u64, m: &RuleMatch) -> Vec<PolicyHit> {
    let mut stop = false;
    policies
        .iter()
        .filter(|p| policy_matches(p, m))
        .take_while(|p| {
            let take = !stop;
            stop = !p.continue_matching;
            take
        })
        .map(|p| {
            let key = group_key(p, m);
            let hash = group_hash(&p.id, &m.rule_id, &key);
            PolicyHit {
                policy_id: p.id.clone(),
                group_key: key,
                group_hash: hash,
                count: p.frequency.count,
                window_seconds: p.frequency.window_seconds,
                suppression_seconds: p.suppression_window_seconds,
                group_wait_seconds: p.group_wait_seconds.unwrap_or(default_group_wait),
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alert::settings::{AlertSettings, Frequency};
    use crate::event::{Classification, ComplianceFlags, Severity, SourcePosition};
    use crate::rule_match::RuleKind;

    pub fn event(user: &str, action: &str, success: bool) -> EnrichedEvent {
        EnrichedEvent {
            id: format!("ev-{user}-{action}"),
            timestamp: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            user_id: Some(user.into()),
            session_id: None,
            action: action.into(),
            resource: "authentication".into(),
            resource_id: None,
            method: None,
            endpoint: None,
            status_code: None,
            user_agent: None,
            ip_address: Some("10.0.0.50".into()),
            ip: None,
            location: None,
            classification: Classification::Internal,
            severity: Severity::High,
            metadata: None,
            success,
            error_message: Some("Invalid credentials".into()),
            duration_ms: None,
            compliance: ComplianceFlags::default(),
            source: SourcePosition { topic: "t".into(), partition: 0, offset: 1, timestamp_ms: None },
            enriched_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 6).unwrap(),
            asn: None,
        }
    }

    pub fn rule_match(rule: &str, severity: Severity, action: RuleAction, ev: EnrichedEvent) -> RuleMatch {
        RuleMatch {
            match_id: format!("m-{rule}-{}", ev.id),
            rule_id: rule.into(),
            rule_name: format!("Rule {rule}"),
            kind: RuleKind::Pattern,
            severity,
            action,
            compliance: vec!["SOX".into(), "GDPR".into()],
            tags: vec!["attack.credential_access".into(), "attack.t1110".into()],
            group_key: BTreeMap::new(),
            window: None,
            evidence_event_ids: vec![ev.id.clone()],
            matched_at: ev.timestamp,
            event: Some(ev),
            detail: None,
        }
    }

    fn policies() -> Vec<PolicyConfig> {
        AlertSettings::default().policies
    }

    #[test]
    fn seed_policies_select_what_they_say() {
        let ps = policies();
        let failed = rule_match("failed-login-attempts", Severity::High, RuleAction::Alert, event("u1", "login", false));
        let hits: Vec<String> = evaluate(&ps, 10, &failed).into_iter().map(|h| h.policy_id).collect();
        assert_eq!(hits, ["failed-authentication"], "the most specific policy takes it, once");
        let mut both = ps.clone();
        both[0].continue_matching = true;
        let hits: Vec<String> = evaluate(&both, 10, &failed).into_iter().map(|h| h.policy_id).collect();
        assert_eq!(hits, ["failed-authentication", "critical-security-events"], "continue lets later policies see it");
        let critical = rule_match("data-export", Severity::High, RuleAction::Alert, event("u1", "data_export", true));
        let hits: Vec<String> = evaluate(&ps, 10, &critical).into_iter().map(|h| h.policy_id).collect();
        assert_eq!(hits, ["critical-security-events"]);

        let ok_login = rule_match("failed-login-attempts", Severity::Medium, RuleAction::Alert, event("u1", "login", true));
        assert!(evaluate(&ps, 10, &ok_login).is_empty(), "a successful medium login is not for any policy");

        let log_only = rule_match("admin-actions", Severity::Critical, RuleAction::Log, event("u1", "delete", true));
        assert!(evaluate(&ps, 10, &log_only).is_empty(), "LOG matches never alert");

        let esc = rule_match("privilege-escalation", Severity::Medium, RuleAction::Block, event("u2", "grant", true));
        let hits = evaluate(&ps, 10, &esc);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].policy_id, "immediate");
        assert_eq!(hits[0].count, 1);
        assert_eq!(hits[0].group_wait_seconds, 0, "immediate means no group wait, whatever the default");
        assert_eq!(evaluate(&ps, 10, &failed)[0].group_wait_seconds, 10, "grouping policies wait the default");
    }

    #[test]
    fn conditions_tags_actions_and_success() {
        let mut p = PolicyConfig { id: "p".into(), ..PolicyConfig::default() };
        let m = rule_match("r", Severity::Low, RuleAction::Alert, event("u", "User.LOGIN.failed", false));
        assert!(policy_matches(&p, &m), "no condition: everything ALERT/BLOCK");
        p.tags = vec!["gdpr".into()];
        assert!(policy_matches(&p, &m), "tags compare case-insensitively");
        p.tags = vec!["HIPAA".into()];
        assert!(!policy_matches(&p, &m));
        p.tags.clear();
        p.actions = vec!["login".into()];
        assert!(policy_matches(&p, &m), "action substring, case-insensitive");
        p.success = Some(true);
        assert!(!policy_matches(&p, &m));
        let mut absence = m.clone();
        absence.event = None;
        p.success = None;
        assert!(!policy_matches(&p, &absence), "action conditions need an event");
        p.enabled = false;
        assert!(!policy_matches(&p, &m));
    }

    #[test]
    fn groups_are_per_subject_not_shared() {
        let p = PolicyConfig {
            id: "failed-authentication".into(),
            group_by: vec!["user_id".into()],
            frequency: Frequency { count: 10, window_seconds: 600 },
            ..PolicyConfig::default()
        };
        let a = rule_match("r", Severity::High, RuleAction::Alert, event("alice", "login", false));
        let b = rule_match("r", Severity::High, RuleAction::Alert, event("bob", "login", false));
        let ka = group_key(&p, &a);
        assert_eq!(ka.get("user_id").map(String::as_str), Some("alice"));
        assert_ne!(group_hash(&p.id, "r", &ka), group_hash(&p.id, "r", &group_key(&p, &b)));
        assert_ne!(group_hash("other", "r", &ka), group_hash(&p.id, "r", &ka), "policy is part of the group");
        assert_ne!(group_hash(&p.id, "r2", &ka), group_hash(&p.id, "r", &ka), "rule is part of the group");

        // The rule's own group key is kept; policy fields only add to it.
        let mut c = a.clone();
        c.group_key.insert("ip_address".into(), "10.9.9.9".into());
        let kc = group_key(&p, &c);
        assert_eq!(kc.len(), 2);
        // A missing field is an empty value, not a shared wildcard between fields.
        let mut anon = a.clone();
        anon.event.as_mut().unwrap().user_id = None;
        assert_eq!(group_key(&p, &anon).get("user_id").map(String::as_str), Some(""));
    }

    #[test]
    fn fingerprints_and_ids_are_deterministic_per_window() {
        let key: BTreeMap<String, String> = [("user_id".to_string(), "alice".to_string())].into();
        let g = group_hash("p", "r", &key);
        assert_eq!(g.len(), 64);
        let t0 = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
        let f0 = fingerprint(&g, t0);
        assert_eq!(alert_id(&f0), alert_id(&fingerprint(&g, t0)), "same window, same id");
        let t1 = t0 + chrono::Duration::seconds(600);
        assert_ne!(alert_id(&f0), alert_id(&fingerprint(&g, t1)), "a new window is a new alert");
        assert_eq!(alert_id(&f0).get_version_num(), 5);
        // sub-millisecond noise does not change the window
        let noisy = t0 + chrono::Duration::nanoseconds(123_456);
        assert_eq!(fingerprint(&g, truncate_ms(noisy)), f0);
        assert_eq!(lock_key("00000000000000ff"), 255);
        assert_eq!(lock_key(&g), lock_key(&g));
    }
}
