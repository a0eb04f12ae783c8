//! Operational alerts: an admin e-mail when this process cannot make progress or dead-letters
//! too much (the seed's `sendErrorAlert`, without its unescaped HTML and without mailing on
//! every error).
//!
//! Every `check_interval_seconds` the monitor reads the process's own counters:
//! - `sink_stalled`: the sink keeps retrying its batch (`auditflow_retries_total{cause="sink"}`
//!   grows) and has committed nothing for `stall_seconds`;
//! - `dispatcher_stalled`: the dispatcher's database polls keep failing for `stall_seconds`;
//! - `dlq_spike`: at least `dlq_spike_count` dead letters (undecodable matches or failed
//!   deliveries) within `dlq_window_seconds`;
//! - `delivery_failed`: an alert delivery failed for good since the last check.
//!
//! Each condition mails at most once per `min_interval_seconds` (plain text, no event data).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;

use super::dispatch::{sleep_or_shutdown, Alerting};
use super::settings::OpsConfig;
use crate::error::RejectionKind;
use crate::runtime::Shutdown;

const STAGE: &str = "alert";

/// Counter readings at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sink_commits: u64,
    pub sink_retries: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub dead_letters: u64,
    pub deliveries_failed: u64,
}

/// A condition worth telling an administrator about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub condition: &'static str,
    pub message: String,
}

/// Tracks progress between snapshots (pure: time is passed in).
#[derive(Debug)]
pub struct OpsState {
    cfg: OpsConfig,
    last: Option<Snapshot>,
    sink_stalled_since: Option<Instant>,
    dispatcher_stalled_since: Option<Instant>,
    dlq_samples: VecDeque<(Instant, u64)>,
    last_sent: HashMap<&'static str, Instant>,
}

impl OpsState {
    pub fn new(cfg: OpsConfig) -> OpsState {
        OpsState {
            cfg,
            last: None,
            sink_stalled_since: None,
            dispatcher_stalled_since: None,
            dlq_samples: VecDeque::new(),
            last_sent: HashMap::new(),
        }
    }

    /// Conditions that hold at `now`, before rate limiting.
    pub fn observe(&mut self, now: Instant, s: Snapshot) -> Vec<Finding> {
        let mut out = Vec::new();
        let stall = Duration::from_secs(self.cfg.stall_seconds);
        if let Some(prev) = self.last {
            // Retrying without committing is a stall; committing, or being idle, is not.
            self.sink_stalled_since = match (s.sink_retries > prev.sink_retries, s.sink_commits > prev.sink_commits) {
                (_, true) | (false, false) => None,
                (true, false) => Some(self.sink_stalled_since.unwrap_or(now)),
            };
            self.dispatcher_stalled_since = match (s.polls_failed > prev.polls_failed, s.polls_ok > prev.polls_ok) {
                (_, true) | (false, false) => None,
                (true, false) => Some(self.dispatcher_stalled_since.unwrap_or(now)),
            };
            if s.deliveries_failed > prev.deliveries_failed {
                out.push(Finding {
                    condition: "delivery_failed",
                    message: format!(
                        "{} alert deliveries failed after every retry since the last check; the alerts are on the alert dead-letter topic and in alert_deliveries.",
                        s.deliveries_failed - prev.deliveries_failed
                    ),
                });
            }
        }
        for (condition, since, what) in [
            ("sink_stalled", self.sink_stalled_since, "the alert sink has retried its batch without committing"),
            ("dispatcher_stalled", self.dispatcher_stalled_since, "the alert dispatcher cannot read due alerts"),
        ] {
            if let Some(since) = since {
                let for_ = now.saturating_duration_since(since);
                if for_ >= stall {
                    out.push(Finding {
                        condition,
                        message: format!("{what} for {} s (limit {} s). Check PostgreSQL and the logs.", for_.as_secs(), stall.as_secs()),
                    });
                }
            }
        }
        self.dlq_samples.push_back((now, s.dead_letters));
        let window = Duration::from_secs(self.cfg.dlq_window_seconds);
        while self.dlq_samples.len() > 1 && now.saturating_duration_since(self.dlq_samples[0].0) > window {
            self.dlq_samples.pop_front();
        }
        let base = self.dlq_samples.front().map(|(_, v)| *v).unwrap_or(s.dead_letters);
        let spike = s.dead_letters.saturating_sub(base);
        if spike >= self.cfg.dlq_spike_count {
            out.push(Finding {
                condition: "dlq_spike",
                message: format!(
                    "{spike} dead letters within {} s (limit {}).",
                    self.cfg.dlq_window_seconds, self.cfg.dlq_spike_count
                ),
            });
        }
        self.last = Some(s);
        out
    }

    /// May `condition` be mailed now? Records the sending if so.
    pub fn allow(&mut self, now: Instant, condition: &'static str) -> bool {
        let min = Duration::from_secs(self.cfg.min_interval_seconds);
        match self.last_sent.get(condition) {
            Some(t) if now.saturating_duration_since(*t) < min => false,
            _ => {
                self.last_sent.insert(condition, now);
                true
            }
        }
    }
}

fn snapshot(a: &Alerting) -> Snapshot {
    let m = &a.runtime_metrics;
    let dead_letters: u64 = RejectionKind::ALL
        .iter()
        .map(|k| m.dlq.with_label_values(&[STAGE, k.as_str()]).get())
        .sum::<u64>()
        + m.dlq.with_label_values(&[STAGE, "delivery_failed"]).get();
    let failed: u64 = ["email", "slack", "webhook", "kafka"]
        .iter()
        .map(|c| a.metrics.deliveries.with_label_values(&[STAGE, c, "failed"]).get())
        .sum();
    Snapshot {
        sink_commits: m.commits.with_label_values(&[STAGE, "committed"]).get(),
        sink_retries: m.retries.with_label_values(&[STAGE, "sink"]).get(),
        polls_ok: a.metrics.polls.with_label_values(&[STAGE, "ok"]).get(),
        polls_failed: a.metrics.polls.with_label_values(&[STAGE, "error"]).get(),
        dead_letters,
        deliveries_failed: failed,
    }
}

/// Watch the counters and mail the administrators, until `shutdown`.
pub async fn run(alerting: Arc<Alerting>, shutdown: Shutdown) {
    let cfg = alerting.settings.ops.clone();
    if !cfg.enabled {
        return;
    }
    let recipients: Vec<Mailbox> = cfg.recipients.iter().filter_map(|r| r.parse().ok()).collect();
    let interval = Duration::from_secs(cfg.check_interval_seconds.max(1));
    let mut state = OpsState::new(cfg);
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    while !sleep_or_shutdown(interval, &shutdown).await {
        for f in state.observe(Instant::now(), snapshot(&alerting)) {
            tracing::error!(stage = STAGE, condition = f.condition, "{}", f.message);
            if !state.allow(Instant::now(), f.condition) {
                alerting.metrics.ops.with_label_values(&[STAGE, f.condition, "rate_limited"]).inc();
                continue;
            }
            // Each operational alert is a trace of its own, always recorded, named in the e-mail.
            let mut span = crate::trace::start_recorded(
                "ops alert",
                vec![opentelemetry::KeyValue::new("auditflow.condition", f.condition), opentelemetry::KeyValue::new("auditflow.stage", STAGE)],
            );
            let trace_line = span
                .as_ref()
                .and_then(crate::trace::span_trace_parent)
                .map(|t| format!("Trace: {}\r\n", t.trace_id_hex()))
                .unwrap_or_default();
            let outcome = match (&alerting.channels.email, recipients.is_empty()) {
                (Some((email, limit)), false) => {
                    let subject = format!("[auditflow] operational alert: audit-alert {}", f.condition);
                    let text = format!(
                        "Condition: {}\r\nStage: audit-alert\r\nHost: {host}\r\n\r\n{}\r\n\r\nThis e-mail is sent at most once per {} s per condition.\r\n{trace_line}",
                        f.condition,
                        f.message,
                        alerting.settings.ops.min_interval_seconds
                    );
                    limit.acquire().await;
                    match email.plain_message(&subject, text, &recipients) {
                        Ok(msg) => match email.send(msg).await {
                            Ok(()) => "sent",
                            Err(e) => {
                                tracing::error!(stage = STAGE, error = %e, "operational alert e-mail failed");
                                "failed"
                            }
                        },
                        Err(_) => "failed",
                    }
                }
                _ => "no_channel",
            };
            alerting.metrics.ops.with_label_values(&[STAGE, f.condition, outcome]).inc();
            if let Some(span) = &mut span {
                use opentelemetry::trace::Span as _;
                span.set_attribute(opentelemetry::KeyValue::new("auditflow.outcome", outcome));
                span.end();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OpsConfig {
        OpsConfig { stall_seconds: 60, dlq_spike_count: 10, dlq_window_seconds: 60, min_interval_seconds: 900, ..OpsConfig::default() }
    }

    #[test]
    fn a_sink_that_retries_without_committing_is_reported_after_the_stall_time() {
        let t0 = Instant::now();
        let mut s = OpsState::new(cfg());
        let mut snap = Snapshot { sink_commits: 5, ..Snapshot::default() };
        assert!(s.observe(t0, snap).is_empty());
        // idle: nothing moves, nothing to say
        assert!(s.observe(t0 + Duration::from_secs(100), snap).is_empty());
        // retrying for 30 s: not yet
        for i in 1..=3 {
            snap.sink_retries += 3;
            let f = s.observe(t0 + Duration::from_secs(100 + 15 * i), snap);
            assert!(f.is_empty(), "{f:?}");
        }
        for i in 4..=6 {
            snap.sink_retries += 3;
            let f = s.observe(t0 + Duration::from_secs(100 + 15 * i), snap);
            if i < 5 {
                assert!(f.is_empty());
            } else {
                assert_eq!(f[0].condition, "sink_stalled", "{f:?}");
            }
        }
        // a commit ends the stall
        snap.sink_commits += 1;
        snap.sink_retries += 1;
        assert!(s.observe(t0 + Duration::from_secs(300), snap).is_empty());
    }

    #[test]
    fn dead_letter_spikes_and_failed_deliveries() {
        let t0 = Instant::now();
        let mut s = OpsState::new(cfg());
        let mut snap = Snapshot::default();
        s.observe(t0, snap);
        snap.dead_letters = 5;
        assert!(s.observe(t0 + Duration::from_secs(15), snap).is_empty());
        snap.dead_letters = 12;
        let f = s.observe(t0 + Duration::from_secs(30), snap);
        assert_eq!(f.iter().map(|f| f.condition).collect::<Vec<_>>(), ["dlq_spike"]);
        // the old samples leave the window
        let f = s.observe(t0 + Duration::from_secs(200), snap);
        assert!(f.is_empty(), "{f:?}");
        snap.deliveries_failed = 1;
        let f = s.observe(t0 + Duration::from_secs(215), snap);
        assert_eq!(f[0].condition, "delivery_failed");
    }

    #[test]
    fn each_condition_mails_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut s = OpsState::new(cfg());
        assert!(s.allow(t0, "sink_stalled"));
        assert!(!s.allow(t0 + Duration::from_secs(60), "sink_stalled"));
        assert!(s.allow(t0 + Duration::from_secs(60), "dlq_spike"), "conditions are limited separately");
        assert!(s.allow(t0 + Duration::from_secs(901), "sink_stalled"));
    }
}
