//! `audit-alert`: `audit-rule-matches` → alert policies → PostgreSQL `audit_alerts`.
//!
//! A sink stage: per batch, one transaction folds every ALERT/BLOCK match into the alert state
//! ([`crate::alert::store`]) and advances the consumed offsets. LOG matches are skipped (their
//! offsets still advance). Nothing is sent from here: the dispatcher running in the same process
//! reads due alerts from the table (outbox), so a notification never depends on a transaction
//! that might still roll back. After a commit that opened an alert with no group wait, the
//! sink wakes that dispatcher, so the alert goes out now rather than at its next poll.


use sqlx::PgPool;

use crate::alert::dispatch::DispatchWake;
use crate::alert::policy::{evaluate, truncate_ms, PolicyHit};
use crate::alert::settings::AlertSettings;
use crate::alert::store::{self, Candidate, HitOutcome};
use crate::alert::AlertMetrics;
use crate::error::{Rejection, RejectionKind};
use crate::rule_match::RuleMatch;
use crate::runtime::kafka::OffsetLoader;
use crate::runtime::offsets::{self, Advance, OffsetAdvance};
use crate::runtime::{InputMessage, SinkError, SinkStage, WriteOutcome};

/// Longest id (match, rule) accepted: ids are keys, not documents.
const MAX_ID_LEN: usize = 256;

pub struct AlertStage {
    pool: PgPool,
    input_topic: String,
    group_id: String,
    handle: tokio::runtime::Handle,
    settings: AlertSettings,
    metrics: AlertMetrics,
    /// Modification time of the policies file as last read.
    policies_seen: Option<std::time::SystemTime>,
    /// The dispatcher to wake when a commit made an alert due.
    wake: DispatchWake,
}

impl AlertStage {
    pub fn new(
        pool: PgPool,
        input_topic: String,
        group_id: String,
        settings: AlertSettings,
        metrics: AlertMetrics,
        handle: tokio::runtime::Handle,
    ) -> AlertStage {
        let mut stage = AlertStage {
            pool,
            input_topic,
            group_id,
            handle,
            settings,
            metrics,
            policies_seen: None,
            wake: DispatchWake::default(),
        };
        stage.reload_policies();
        stage
    }

    /// Wake this dispatcher after commits that open an alert due at once.
    pub fn with_dispatch_wake(mut self, wake: DispatchWake) -> AlertStage {
        self.wake = wake;
        self
    }

    /// Re-read the policies file if it changed since it was last read. A file that does not
    /// parse or validate is logged and the policies in force are kept.
    pub fn reload_policies(&mut self) -> bool {
        let Some(path) = self.settings.policies_file.clone() else { return false };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == self.policies_seen {
            return false;
        }
        self.policies_seen = modified;
        match self.settings.policies_from_file(&path) {
            Ok(policies) => {
                tracing::info!(file = %path.display(), policies = policies.len(), "alert policies loaded");
                self.settings.policies = policies;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "alert policies file refused; the policies in force are kept");
                false
            }
        }
    }

    pub fn policy_ids(&self) -> Vec<String> {
        self.settings.policies.iter().map(|p| p.id.clone()).collect()
    }

    async fn write_batch(
        &mut self,
        items: &[Candidate],
        advances: &[OffsetAdvance],
        commit: bool,
    ) -> Result<(WriteOutcome, Vec<(String, HitOutcome)>, bool), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::new();
        // An alert opened with no group wait is due as soon as this commits.
        let mut due_now = false;
        store::lock_groups(&mut tx, items).await?;
        let settings = &self.settings;
        let policy_name =
            |hit: &PolicyHit| settings.policy(&hit.policy_id).map_or_else(|| hit.policy_id.clone(), |p| p.name.clone());
        let max_evidence = settings.max_evidence.min(i32::MAX as usize);
        let results = store::apply_batch(&mut tx, items, &policy_name, max_evidence).await?;
        for (hit, outcome) in items.iter().flat_map(|c| &c.hits).zip(results) {
            due_now |= matches!(outcome, HitOutcome::Opened(_)) && hit.group_wait_seconds == 0;
            outcomes.push((hit.policy_id.clone(), outcome));
        }
        if !commit {
            tx.rollback().await?;
            return Ok((WriteOutcome::Committed, Vec::new(), false));
        }
        match offsets::advance(&mut tx, &self.group_id, advances).await? {
            Advance::Done => {
                tx.commit().await?;
                Ok((WriteOutcome::Committed, outcomes, due_now))
            }
            Advance::Fenced => {
                tx.rollback().await?;
                Ok((WriteOutcome::Fenced, Vec::new(), false))
            }
        }
    }
}

/// Decode and check one `RuleMatch` (JSON). Ids are bounded; times cut to milliseconds.
pub fn decode_match(payload: &[u8]) -> Result<RuleMatch, Rejection> {
    let mut m: RuleMatch = serde_json::from_slice(payload).map_err(|e| {
        let kind = if e.is_data() { RejectionKind::InvalidField } else { RejectionKind::InvalidJson };
        Rejection::new(kind, format!("not a rule match: {e}"))
    })?;
    for (name, v) in [("matchId", &m.match_id), ("ruleId", &m.rule_id)] {
        if v.trim().is_empty() {
            return Err(Rejection::new(RejectionKind::MissingField, format!("{name} is empty")));
        }
        if v.len() > MAX_ID_LEN {
            return Err(Rejection::new(RejectionKind::InvalidField, format!("{name} longer than {MAX_ID_LEN} bytes")));
        }
    }
    // Window arithmetic (± the policy's window and suppression) and PostgreSQL's timestamptz
    // both need a sane time: a match from year 200000 is refused, never a panic.
    let year = chrono::Datelike::year(&m.matched_at);
    if !(1970..=9999).contains(&year) {
        return Err(Rejection::new(RejectionKind::InvalidTimestamp, format!("matchedAt in year {year} is outside 1970–9999")));
    }
    m.matched_at = truncate_ms(m.matched_at);
    Ok(m)
}

impl SinkStage for AlertStage {
    type Item = Candidate;

    async fn on_tick(&mut self) -> Result<(), SinkError> {
        self.reload_policies();
        Ok(())
    }

    fn name(&self) -> &'static str {
        "alert"
    }

    fn sink_name(&self) -> &'static str {
        "postgres.audit_alerts"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input_topic.clone()]
    }

    fn decode(&mut self, input: &InputMessage<'_>) -> Result<Candidate, Rejection> {
        let m = decode_match(input.payload)?;
        let hits = evaluate(&self.settings.policies, self.settings.group_wait_seconds, &m);
        let event_id = m.event.as_ref().map(|e| e.id.clone()).or_else(|| m.evidence_event_ids.last().cloned());
        Ok(Candidate { m, hits, event_id, trace: input.trace })
    }

    fn describe(&self, item: &Candidate) -> Vec<(&'static str, String)> {
        // The policy decision: which policies the match hit (none: logged only, or no policy).
        let policies: Vec<&str> = item.hits.iter().map(|h| h.policy_id.as_str()).collect();
        vec![
            ("auditflow.rule", item.m.rule_id.clone()),
            ("auditflow.rule.action", format!("{:?}", item.m.action).to_lowercase()),
            ("auditflow.alert.policies", if policies.is_empty() { "none".into() } else { policies.join(",") }),
        ]
    }

    async fn write(&mut self, items: &[Candidate], advances: &[OffsetAdvance]) -> Result<WriteOutcome, SinkError> {
        let (outcome, hits, due_now) =
            self.write_batch(items, advances, true).await.map_err(|e| SinkError::from_sqlx(&e))?;
        if due_now {
            // Only after the commit: the dispatcher must find the alert when it looks.
            self.wake.wake();
        }
        for (policy, o) in hits {
            let label = match o {
                HitOutcome::Replayed => "replayed",
                HitOutcome::Pooled => "pooled",
                HitOutcome::Opened(id) => {
                    tracing::info!(stage = "alert", alert = %id, policy = %policy, "alert opened");
                    "opened"
                }
                HitOutcome::Folded(_) => "folded",
            };
            self.metrics.hits.with_label_values(&["alert", &policy, label]).inc();
        }
        Ok(outcome)
    }

    async fn probe(&mut self, items: &[Candidate]) -> Result<(), SinkError> {
        self.write_batch(items, &[], false).await.map(|_| ()).map_err(|e| SinkError::from_sqlx(&e))
    }

    fn offset_loader(&self) -> OffsetLoader {
        offsets::loader(self.pool.clone(), self.group_id.clone(), self.handle.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::policy::tests::{event, rule_match};
    use crate::event::Severity;
    use crate::rule_match::RuleAction;

    #[tokio::test]
    async fn policies_are_reloaded_when_their_file_changes_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alert-policies.toml");
        let write = |text: &str, secs: u64| {
            std::fs::write(&path, text).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
        };
        write("[[policies]]\nid = \"first\"\n", 1_000);
        let settings = AlertSettings { policies_file: Some(path.clone()), ..AlertSettings::default() };
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://unused@127.0.0.1/unused").unwrap();
        let metrics = AlertMetrics::register(&crate::telemetry::Metrics::new());
        let mut stage = AlertStage::new(pool, "t".into(), "g".into(), settings, metrics, tokio::runtime::Handle::current());
        assert_eq!(stage.policy_ids(), ["first"], "read at start");
        assert!(!stage.reload_policies(), "unchanged file: nothing to do");
        write("[[policies]]\nid = \"second\"\n[[policies]]\nid = \"third\"\n", 2_000);
        assert!(stage.reload_policies());
        assert_eq!(stage.policy_ids(), ["second", "third"], "picked up without a restart");
        write("[[policies]]\nid = \"broken\"\n[policies.frequency]\ncount = 0\n", 3_000);
        assert!(!stage.reload_policies());
        assert_eq!(stage.policy_ids(), ["second", "third"], "a bad file leaves the policies in force");
    }

    #[test]
    fn decode_accepts_rule_matches_and_rejects_the_rest() {
        let m = rule_match("r", Severity::High, RuleAction::Alert, event("u", "login", false));
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(decode_match(&json).unwrap().match_id, m.match_id);
        assert_eq!(decode_match(b"{nope").unwrap_err().kind, RejectionKind::InvalidJson);
        assert_eq!(decode_match(b"{\"matchId\": 1}").unwrap_err().kind, RejectionKind::InvalidField);
        let mut long = m.clone();
        long.match_id = "x".repeat(300);
        assert_eq!(decode_match(&serde_json::to_vec(&long).unwrap()).unwrap_err().kind, RejectionKind::InvalidField);
        let mut empty = m.clone();
        empty.rule_id = " ".into();
        assert_eq!(decode_match(&serde_json::to_vec(&empty).unwrap()).unwrap_err().kind, RejectionKind::MissingField);
        for extreme in [chrono::DateTime::<chrono::Utc>::MAX_UTC, chrono::DateTime::<chrono::Utc>::MIN_UTC] {
            let mut far = m.clone();
            far.matched_at = extreme;
            let json = serde_json::to_vec(&far).unwrap();
            assert_eq!(decode_match(&json).unwrap_err().kind, RejectionKind::InvalidTimestamp, "{extreme}");
        }
    }
}
