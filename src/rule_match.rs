//! `RuleMatch`: what `audit-rules` writes to `audit-rule-matches` and `audit-alert` reads.
//! JSON, camelCase, one record per (rule, triggering event); keyed by the group key so one
//! subject's matches stay in order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{EnrichedEvent, Severity};

/// What a matched rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuleAction {
    /// Record the match only.
    Log,
    /// Hand it to the alert stage.
    Alert,
    /// Also publish a block decision to `security-actions`.
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Pattern,
    Threshold,
    DistinctCount,
    Sequence,
    /// Steps in any order (Sigma `temporal`).
    Temporal,
    Absence,
    /// A count over an ended period (Sigma `event_count` / `value_count` with `lt`, `lte`, `eq`
    /// or a range).
    Aggregate,
    ImpossibleTravel,
    FirstSeen,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Pattern => "pattern",
            RuleKind::Threshold => "threshold",
            RuleKind::DistinctCount => "distinct_count",
            RuleKind::Sequence => "sequence",
            RuleKind::Temporal => "temporal",
            RuleKind::Absence => "absence",
            RuleKind::Aggregate => "aggregate",
            RuleKind::ImpossibleTravel => "impossible_travel",
            RuleKind::FirstSeen => "first_seen",
        }
    }
}

/// Window figures of a stateful match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowFigures {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub seconds: u64,
    /// Events (threshold), distinct values (distinct count) or steps (sequence) seen.
    pub observed: u64,
    /// The rule's limit that `observed` reached.
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatch {
    /// Deterministic (UUIDv5 of rule id + triggering event id): a replay yields the same id.
    pub match_id: String,
    pub rule_id: String,
    pub rule_name: String,
    pub kind: RuleKind,
    pub severity: Severity,
    pub action: RuleAction,
    /// Compliance tags of the rule (SOX, GDPR, …).
    pub compliance: Vec<String>,
    /// The rule's other tags: MITRE ATT&CK tactics and techniques (`attack.t1110`), …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `group_by` field → value, e.g. {"user_id": "user123"}; empty for pattern rules.
    pub group_key: std::collections::BTreeMap<String, String>,
    pub window: Option<WindowFigures>,
    /// Ids of the events that made the match (capped), the triggering event last.
    pub evidence_event_ids: Vec<String>,
    /// The event that triggered the match (absent for absence rules).
    pub event: Option<EnrichedEvent>,
    /// Event time of the trigger (or the time the absence was noticed).
    pub matched_at: DateTime<Utc>,
    /// What the kind found besides its window figures: both places and times of an impossible
    /// travel, the new value of a first sighting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// MITRE ATT&CK technique ids among a rule's tags (`attack.t1110.001` → `T1110.001`), for
/// showing on an alert.
pub fn attack_techniques(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter_map(|t| t.strip_prefix("attack."))
        .filter(|t| t.len() >= 5 && t.as_bytes()[0].eq_ignore_ascii_case(&b't') && t[1..5].bytes().all(|b| b.is_ascii_digit()))
        .map(|t| t.to_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn attack_technique_ids_come_from_the_tags() {
        let tags = ["attack.credential_access", "attack.t1110", "attack.t1110.003", "cve.2021-44228", "attack.g0016"].map(String::from);
        assert_eq!(super::attack_techniques(&tags), ["T1110", "T1110.003"]);
    }
}
