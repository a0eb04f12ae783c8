//! Alerting: rule matches → policies → deduplicated alerts in PostgreSQL → notifications.
//!
//! - [`settings`]: the `[alert]` configuration (policies, routes, channels, retries).
//! - [`policy`]: which policies select a match, group keys, fingerprints, alert ids (pure).
//! - [`store`]: folding matches into alerts inside the sink's transaction; the dispatcher's
//!   claim / record / finish queries.
//! - [`fold`]: the fold decisions of one batch, in memory (pure).
//! - [`dispatch`]: the dispatcher task (an outbox reader): sends due alerts to their channels
//!   and to `security-alerts`, with retries, rate limits and a dead-letter topic.
//! - [`channels`]: e-mail, Slack, signed webhooks.
//! - [`render`]: what a notification says, escaped for where it goes.
//! - [`disclose`]: personal fields replaced by pseudonyms before anything leaves.
//! - [`retry`]: backoff schedule and token buckets.
//! - [`ops`]: operational alerts about this process (stalls, dead-letter spikes).

pub mod channels;
pub mod disclose;
pub mod dispatch;
pub mod fold;
pub mod ops;
pub mod policy;
pub mod render;
pub mod retry;
pub mod settings;
pub mod store;

pub use settings::AlertSettings;

use prometheus::{IntCounterVec, Opts};

use crate::telemetry::Metrics;

/// Alerting's own metrics, registered next to the runtime's (same registry, `stage` label).
#[derive(Clone)]
pub struct AlertMetrics {
    /// Policy hits by outcome: opened, folded, pooled, replayed.
    pub hits: IntCounterVec,
    /// Delivery attempts by channel (email, slack, webhook, kafka) and outcome.
    pub deliveries: IntCounterVec,
    /// Alerts finished by the dispatcher: dispatched or failed.
    pub dispatched: IntCounterVec,
    /// Dispatcher polls of the database: ok or error.
    pub polls: IntCounterVec,
    /// Operational e-mails by condition and outcome (sent, rate_limited, failed).
    pub ops: IntCounterVec,
}

impl AlertMetrics {
    pub fn register(metrics: &Metrics) -> AlertMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            // Registering twice (tests) is harmless: the first registration serves /metrics.
            let _ = metrics.registry.register(Box::new(c.clone()));
            c
        };
        let m = AlertMetrics {
            hits: counter(
                "auditflow_alert_policy_hits_total",
                "Rule matches selected by an alert policy, by outcome (opened, folded, pooled, replayed)",
                &["stage", "policy", "outcome"],
            ),
            deliveries: counter(
                "auditflow_alert_deliveries_total",
                "Alert delivery attempts by channel and outcome (delivered, retrying, failed)",
                &["stage", "channel", "outcome"],
            ),
            dispatched: counter(
                "auditflow_alerts_dispatched_total",
                "Alerts the dispatcher finished, by status (dispatched, failed)",
                &["stage", "status"],
            ),
            polls: counter("auditflow_alert_dispatcher_polls_total", "Dispatcher database polls", &["stage", "outcome"]),
            ops: counter(
                "auditflow_ops_alerts_total",
                "Operational alerts by condition and outcome (sent, rate_limited, failed, no_channel)",
                &["stage", "condition", "outcome"],
            ),
        };
        // Every channel's series exists from the start (at 0), so dashboards and alert rules
        // see "nothing sent" rather than "no data".
        for channel in ["email", "slack", "webhook"] {
            for outcome in ["delivered", "retrying", "failed"] {
                let _ = m.deliveries.with_label_values(&["alert", channel, outcome]);
            }
        }
        m
    }
}
