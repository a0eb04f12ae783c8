//! `audit-rules`: the runtime adapter around [`crate::rules::RulesEngine`].
//!
//! Reads `audit-enriched` (Avro; undecodable → DLQ), evaluates each batch against the rules with
//! window state in Redis, and writes, in the batch's Kafka transaction, one [`RuleMatch`] JSON per
//! match to `audit-rule-matches` and one [`BlockDecision`] JSON per BLOCK match to
//! `security-actions` (also set in Redis for upstream services). Redis trouble fails the batch
//! with a [`TransientError`]: nothing is committed and the same batch is evaluated again, which
//! the idempotent window scripts make safe. When Redis refuses an operation for good (a key of
//! the wrong type, a script error), the batch is evaluated again one event at a time and the
//! event Redis refuses is dead-lettered (`refused_by_store`), so one event cannot pin the stage.
//!
//! [`RuleMatch`]: crate::rule_match::RuleMatch

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGauge, Opts};

use crate::codec::decode_enriched;
use crate::error::{Rejection, RejectionKind, TransientError};
use crate::event::EnrichedEvent;
use crate::rule_match::RuleMatch;
use crate::rules::engine::match_key;
use crate::rules::reload::{Reload, RuleWatcher};
use crate::rules::{BlockDecision, RulesEngine, WindowLimits, WindowStore};
use crate::runtime::{BatchOutput, InputMessage, OutputRecord, TransformStage};
use crate::telemetry::Metrics;

/// Content type header of `audit-rule-matches` and `security-actions` records.
pub const JSON_CONTENT_TYPE: &[u8] = b"application/json";

const STAGE: &str = "rules";

/// The stage's own metrics, registered in the runtime's registry.
struct RuleMetrics {
    matches: IntCounterVec,
    reloads: IntCounterVec,
    loaded: IntGauge,
    future_dated: prometheus::IntCounter,
}

impl RuleMetrics {
    fn new(metrics: &Metrics) -> RuleMetrics {
        let matches = IntCounterVec::new(
            Opts::new("auditflow_rule_matches_total", "Rule matches produced, by rule"),
            &["stage", "rule"],
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new("auditflow_rules_reloads_total", "Rule set reloads, by outcome (loaded, refused)"),
            &["stage", "outcome"],
        )
        .expect("static metric definition");
        let loaded = IntGauge::with_opts(
            Opts::new("auditflow_rules_loaded", "Enabled rules in force").const_label("stage", STAGE),
        )
        .expect("static metric definition");
        let future_dated = prometheus::IntCounter::with_opts(
            Opts::new(
                "auditflow_rules_future_events_total",
                "Events whose time was too far ahead of their receive time, judged at receive time",
            )
            .const_label("stage", STAGE),
        )
        .expect("static metric definition");
        // Registering twice only happens in tests that build several stages in one process.
        let _ = metrics.registry.register(Box::new(matches.clone()));
        let _ = metrics.registry.register(Box::new(reloads.clone()));
        let _ = metrics.registry.register(Box::new(loaded.clone()));
        let _ = metrics.registry.register(Box::new(future_dated.clone()));
        RuleMetrics { matches, reloads, loaded, future_dated }
    }
}

pub struct RulesStage<S: WindowStore> {
    engine: RulesEngine,
    limits: WindowLimits,
    watcher: Option<RuleWatcher>,
    store: S,
    input_topic: String,
    matches_topic: Arc<str>,
    actions_topic: Arc<str>,
    absence_every: Duration,
    last_absence: Option<Instant>,
    metrics: RuleMetrics,
}

impl<S: WindowStore + Send + 'static> RulesStage<S> {
    pub fn new(
        engine: RulesEngine,
        watcher: Option<RuleWatcher>,
        store: S,
        config: &crate::config::Config,
        metrics: &Metrics,
    ) -> RulesStage<S> {
        let m = RuleMetrics::new(metrics);
        m.loaded.set(engine.rule_set().rule_count() as i64);
        let limits = config.rules.window_limits();
        RulesStage {
            engine: engine.with_limits(limits),
            limits,
            watcher,
            store,
            input_topic: config.topics.enriched.name.clone(),
            matches_topic: Arc::from(config.topics.rule_matches.name.as_str()),
            actions_topic: Arc::from(config.topics.security_actions.name.as_str()),
            absence_every: Duration::from_secs(config.rules.absence_check_secs),
            last_absence: None,
            metrics: m,
        }
    }

    fn check_reload(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        match watcher.poll() {
            None => {}
            Some(Reload::Loaded(engine)) => {
                let set = engine.rule_set();
                tracing::info!(
                    stage = STAGE,
                    rules = set.rule_count(),
                    disabled = set.disabled.len(),
                    files = set.files.len(),
                    "rules reloaded"
                );
                self.metrics.reloads.with_label_values(&[STAGE, "loaded"]).inc();
                self.metrics.loaded.set(set.rule_count() as i64);
                self.engine = engine.with_limits(self.limits);
            }
            Some(Reload::Refused(errors)) => {
                self.metrics.reloads.with_label_values(&[STAGE, "refused"]).inc();
                for e in &errors.0 {
                    tracing::error!(stage = STAGE, error = %e, "invalid rule file");
                }
                tracing::error!(
                    stage = STAGE,
                    errors = errors.0.len(),
                    "new rule set refused; the previous rules stay in force"
                );
            }
        }
    }

    fn emit_match(&self, m: &RuleMatch, out: &mut BatchOutput) {
        let payload = match serde_json::to_vec(m) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(stage = STAGE, rule = %m.rule_id, error = %e, "cannot encode a match");
                return;
            }
        };
        self.metrics.matches.with_label_values(&[STAGE, &m.rule_id]).inc();
        out.records.push(OutputRecord {
            topic: self.matches_topic.clone(),
            key: Some(match_key(m).into_bytes()),
            payload,
            headers: vec![("content-type", JSON_CONTENT_TYPE.to_vec())],
            timestamp_ms: None, // produce time: see `EnrichStage`
        });
    }

    fn emit_block(&self, b: &BlockDecision, out: &mut BatchOutput) {
        let Ok(payload) = serde_json::to_vec(b) else { return };
        out.records.push(OutputRecord {
            topic: self.actions_topic.clone(),
            key: Some(b.subject.clone().into_bytes()),
            payload,
            headers: vec![("content-type", JSON_CONTENT_TYPE.to_vec())],
            timestamp_ms: None,
        });
    }
}

impl<S: WindowStore + Send + 'static> TransformStage for RulesStage<S> {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input_topic.clone()]
    }

    fn process_batch(&mut self, batch: &[InputMessage<'_>], out: &mut BatchOutput) -> Result<(), TransientError> {
        self.check_reload();
        let mut events: Vec<EnrichedEvent> = Vec::with_capacity(batch.len());
        // The input of each event: a match the broker refuses dead-letters its event.
        let mut event_inputs: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, input) in batch.iter().enumerate() {
            match decode_enriched(input.payload) {
                Ok(ev) => {
                    if self.limits.window_time_ms(&ev) != ev.timestamp.timestamp_millis() {
                        self.metrics.future_dated.inc();
                    }
                    events.push(ev);
                    event_inputs.push(i);
                }
                Err(r) => out.rejected.push((i, r)),
            }
        }
        let results = match self.engine.evaluate(&events, &mut self.store, false) {
            Ok(r) => r,
            Err(e) if e.refused => {
                tracing::warn!(stage = STAGE, error = %e, "Redis refused an operation of the batch; finding the event");
                let mut results = Vec::with_capacity(events.len());
                let mut kept = Vec::with_capacity(event_inputs.len());
                for (ev, input) in events.iter().zip(&event_inputs) {
                    match self.engine.evaluate(std::slice::from_ref(ev), &mut self.store, false) {
                        Ok(mut r) => {
                            results.append(&mut r);
                            kept.push(*input);
                        }
                        Err(e) if e.refused => {
                            out.rejected.push((*input, Rejection::new(RejectionKind::RefusedByStore, format!("redis refused the rule windows' update: {}", e.detail))));
                        }
                        Err(e) => return Err(e),
                    }
                }
                event_inputs = kept;
                results
            }
            Err(e) => return Err(e),
        };
        let now_ms = Utc::now().timestamp_millis();
        let block_ops: Vec<_> = results.iter().flat_map(|r| &r.blocks).filter_map(|b| b.store_op(now_ms)).collect();
        if !block_ops.is_empty() {
            // Before the transaction commits: a block is never announced before it is enforceable.
            self.store.apply(&block_ops)?;
        }
        for (r, input) in results.iter().zip(&event_inputs) {
            if out.recording(*input) {
                let matched: Vec<&str> = r.matches.iter().map(|m| m.rule_id.as_str()).collect();
                out.note(*input, "auditflow.rules.matched", matched.join(","));
                out.note(*input, "auditflow.rules.match_count", matched.len().to_string());
            }
            for m in &r.matches {
                self.emit_match(m, out);
            }
            for b in &r.blocks {
                tracing::info!(stage = STAGE, rule = %b.rule_id, subject_type = %b.subject_type, subject = %b.subject, ttl_s = b.ttl_seconds, "block decided");
                self.emit_block(b, out);
            }
            out.attribute(*input);
        }
        Ok(())
    }

    fn on_tick(&mut self, now: DateTime<Utc>, out: &mut BatchOutput) -> Result<(), TransientError> {
        self.check_reload();
        if self.last_absence.is_some_and(|t| t.elapsed() < self.absence_every) {
            return Ok(());
        }
        self.last_absence = Some(Instant::now());
        for m in self.engine.check_clock(now, &mut self.store)? {
            tracing::info!(stage = STAGE, rule = %m.rule_id, group = ?m.group_key, "silence detected");
            self.emit_match(&m, out);
        }
        Ok(())
    }
}
