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
    Absence,
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
    /// `group_by` field → value, e.g. {"user_id": "user123"}; empty for pattern rules.
    pub group_key: std::collections::BTreeMap<String, String>,
    pub window: Option<WindowFigures>,
    /// Ids of the events that made the match (capped), the triggering event last.
    pub evidence_event_ids: Vec<String>,
    /// The event that triggered the match (absent for absence rules).
    pub event: Option<EnrichedEvent>,
    /// Event time of the trigger (or the time the absence was noticed).
    pub matched_at: DateTime<Utc>,
}
