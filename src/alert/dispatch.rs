//! The dispatcher: reads due alerts from PostgreSQL (the outbox the sink writes) and delivers
//! them.
//!
//! It claims pending alerts whose group wait is over with `FOR UPDATE SKIP LOCKED` and a lease,
//! so any number of instances share the work and an alert held by a crashed instance is taken
//! over when its lease ends. It claims as soon as the sink of the same process commits an alert
//! that is already due ([`DispatchWake`]), again at once while claims come back full (a
//! backlog), and otherwise every `poll_interval_ms`, which covers other instances' alerts, group
//! waits running out, expired leases and released alerts. For each alert:
//! 1. the alert record goes to `security-alerts` (key = alert id, idempotent producer);
//! 2. each routed, configured channel is tried with exponential backoff and jitter within the
//!    retry budget, behind the channel's rate limit; every attempt lands in `alert_deliveries`;
//! 3. a channel that still fails gets a record on the alert dead-letter topic with the reason,
//!    and the alert ends `failed`; otherwise `dispatched`.
//!
//! Delivery is at least once: a crash between a send and its bookkeeping sends again after the
//! lease. Consumers deduplicate by alert id (the e-mail's Message-ID and the webhook's
//! `X-Auditflow-Alert-Id` carry it too). Channels that already delivered are not retried.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::channels::{Channels, Delivery, DeliveryError};
use super::disclose::Disclosure;
use super::render::{truncate_chars, truncate_json, AlertRecord, Notice, RECORD_MAX_STRING};
use super::retry::RetryPolicy;
use super::settings::{AlertSettings, ChannelKind};
use super::store::{self, AlertRow};
use super::AlertMetrics;
use crate::config::Config;
use crate::event::Severity;
use crate::runtime::Shutdown;
use crate::telemetry::Metrics;

const STAGE: &str = "alert";
/// Most alerts in flight per instance.
const MAX_IN_FLIGHT: usize = 64;

/// Wakes the dispatcher of this process before its next poll. The sink calls it after
/// committing an alert that is already due, so that alert is not held back by the poll interval.
/// A wake-up while the dispatcher is busy is kept (one permit) and acted on when it next waits.
#[derive(Clone, Default)]
pub struct DispatchWake(Arc<Notify>);

impl DispatchWake {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await
    }
}

/// Everything the dispatcher (and operational alerts) need, shared by their tasks.
pub struct Alerting {
    pub settings: AlertSettings,
    pub pool: PgPool,
    pub channels: Channels,
    producer: FutureProducer,
    alerts_topic: String,
    dlq_topic: String,
    retry: RetryPolicy,
    disclosure: Disclosure,
    pub metrics: AlertMetrics,
    pub runtime_metrics: Arc<Metrics>,
    /// Hand a clone to the sink (`AlertStage::with_dispatch_wake`).
    pub wake: DispatchWake,
}

/// How one channel's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed(String),
    /// Shutdown came first; the alert is given back.
    Aborted,
}

impl Alerting {
    pub fn new(config: &Config, pool: PgPool, metrics: Arc<Metrics>, alert_metrics: AlertMetrics) -> Result<Arc<Alerting>, String> {
        let channels = Channels::from_settings(&config.alert)?;
        let disclosure = if config.alert.include_personal_fields {
            Disclosure::Plain
        } else {
            let key = config.privacy.pseudonym_key().map_err(|e| e.to_string())?;
            Disclosure::pseudonymous(key, &config.privacy.personal_fields, &config.alert.clear_group_fields)
        };
        let mut pc = crate::runtime::kafka::base_client_config(config);
        pc.set("enable.idempotence", "true")
            .set("acks", "all")
            // Each alert is awaited on its own and they are few: waiting to fill a batch would
            // only delay every alert (librdkafka still batches what queues up meanwhile).
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = pc.create().map_err(|e| format!("Kafka producer: {e}"))?;
        for kind in ChannelKind::ALL {
            if !channels.configured(kind) && config.alert.routes.iter().any(|r| r.channels.contains(&kind)) {
                tracing::info!(channel = %kind, "routes name a channel that is not configured; it is skipped");
            }
        }
        Ok(Arc::new(Alerting {
            settings: config.alert.clone(),
            pool,
            channels,
            producer,
            alerts_topic: config.topics.security_alerts.name.clone(),
            dlq_topic: config.topics.alert_dlq.name.clone(),
            retry: RetryPolicy::from(&config.alert.retry),
            disclosure,
            metrics: alert_metrics,
            runtime_metrics: metrics,
            wake: DispatchWake::default(),
        }))
    }

    /// A claim outlives the longest dispatch: Kafka plus every channel's retry budget.
    fn lease_seconds(&self) -> u64 {
        2 * self.retry.budget.as_secs() + 120
    }

    /// Poll, claim and dispatch until `shutdown` trips; then give unfinished alerts back.
    pub async fn run_dispatcher(self: Arc<Self>, shutdown: Shutdown) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        let mut last_housekeeping: Option<Instant> = None;
        // The last claim came back full: more alerts are probably due.
        let mut backlog = false;
        tracing::info!(stage = STAGE, topic = %self.alerts_topic, "alert dispatcher running");
        while !shutdown.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let free = MAX_IN_FLIGHT.saturating_sub(tasks.len()) as i64;
            if free > 0 {
                let limit = free.min(self.settings.dispatch_batch);
                match store::claim_due(&self.pool, self.lease_seconds(), limit).await {
                    Ok(rows) => {
                        failures = 0;
                        backlog = rows.len() as i64 >= limit;
                        self.metrics.polls.with_label_values(&[STAGE, "ok"]).inc();
                        for row in rows {
                            let me = self.clone();
                            let sd = shutdown.clone();
                            tasks.spawn(async move { me.dispatch_one(row, &sd).await });
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        backlog = false; // back off instead
                        self.metrics.polls.with_label_values(&[STAGE, "error"]).inc();
                        self.runtime_metrics.retries.with_label_values(&[STAGE, "dispatch"]).inc();
                        tracing::warn!(stage = STAGE, error = %e, "cannot poll for due alerts; retrying");
                    }
                }
            }
            if last_housekeeping.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                match store::expire_matches(&self.pool, self.settings.match_retention_hours).await {
                    Ok(n) => {
                        last_housekeeping = Some(Instant::now());
                        if n > 0 {
                            tracing::info!(stage = STAGE, expired = n, "forgot rule matches past the retention");
                        }
                    }
                    Err(e) => tracing::debug!(stage = STAGE, error = %e, "match expiry postponed"),
                }
            }
            if failures == 0 && backlog && tasks.len() < MAX_IN_FLIGHT {
                continue; // drain a backlog now, not one batch per poll interval
            }
            let wait = if failures == 0 { poll } else { (poll * 2u32.pow(failures.min(5))).min(Duration::from_secs(10)) };
            tokio::select! {
                _ = self.wake.woken() => {}
                _ = sleep_or_shutdown(wait, &shutdown) => {}
                // Every slot is taken while alerts wait: claim again as soon as one frees up.
                Some(_) = tasks.join_next(), if backlog && !tasks.is_empty() => {}
            }
        }
        // In-flight alerts see the shutdown, give their lease back and end.
        let drain = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        });
        if drain.await.is_err() {
            tracing::warn!(stage = STAGE, "dispatcher tasks did not stop in time; their leases expire on their own");
        }
        tracing::info!(stage = STAGE, "alert dispatcher stopped");
    }

    /// Channels and e-mail recipients of an alert: the union over the routes its policy names
    /// (or all routes) whose own severity/tag conditions hold. Unconfigured channels drop out.
    pub fn route(&self, policy_id: &str, severity: Severity, tags: &[String]) -> (Vec<ChannelKind>, Vec<Mailbox>) {
        let names: &[String] = self.settings.policy(policy_id).map(|p| p.routes.as_slice()).unwrap_or(&[]);
        route(&self.settings, names, severity, tags, |k| self.channels.configured(k))
    }

    /// The alert as it may leave auditflow (see [`Disclosure`]).
    fn record(&self, row: &AlertRow, now: DateTime<Utc>, max_string: usize) -> AlertRecord {
        // Pseudonyms of whole values (as persist stores them), cut afterwards.
        let mut record = row.to_record(now, usize::MAX);
        self.disclosure.apply(&mut record);
        if max_string < usize::MAX {
            record.trigger = truncate_json(&record.trigger, max_string);
            for v in record.group_key.values_mut() {
                *v = truncate_chars(v, max_string).into_owned();
            }
        }
        record
    }

    /// Dispatch one alert inside its span: a child of the span of the match that opened it, so
    /// the deliveries join the triggering event's trace.
    async fn dispatch_one(&self, row: AlertRow, shutdown: &Shutdown) {
        let span = tracing::info_span!(
            "alert dispatch",
            otel.kind = "internal",
            alert.id = %row.id,
            alert.policy = %row.policy_id,
            alert.rule = %row.rule_id,
            alert.match_count = row.match_count,
            auditflow.outcome = tracing::field::Empty,
        );
        if let Some(parent) = row.trace() {
            crate::trace::set_parent(&span, &parent);
        }
        self.dispatch_alert(row, shutdown).instrument(span).await
    }

    async fn dispatch_alert(&self, row: AlertRow, shutdown: &Shutdown) {
        let id = row.id.clone();
        // What the alert's records carry: this dispatch's span, else the context it came with.
        let trace = crate::trace::current().or_else(|| row.trace());
        let now = Utc::now();
        let record_json = match serde_json::to_vec(&self.record(&row, now, RECORD_MAX_STRING)) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(stage = STAGE, alert = %id, error = %e, "alert record does not serialise");
                let _ = store::finish(&self.pool, &id, "failed", row.suppressed_count).await;
                return;
            }
        };
        let done = match store::delivered_channels(&self.pool, &id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(stage = STAGE, alert = %id, error = %e, "cannot read earlier deliveries; retrying later");
                let _ = store::release(&self.pool, &id, 5.0).await;
                return;
            }
        };
        let notice = Notice::new(self.record(&row, now, usize::MAX), self.settings.max_field_chars);
        let (kinds, recipients) = self.route(&row.policy_id, notice.record.severity, &row.compliance);

        let mut failed: Vec<(String, String)> = Vec::new();
        // 1. security-alerts: analysts' feed, and the only channel every alert has.
        if !done.iter().any(|c| c == "kafka") {
            let target = self.alerts_topic.clone();
            match self
                .with_retries(&id, "kafka", Some(&target), shutdown, || self.publish(&id, &record_json, trace))
                .await
            {
                Outcome::Delivered => {}
                Outcome::Failed(reason) => failed.push(("kafka".into(), reason)),
                Outcome::Aborted => return self.give_back(&id).await,
            }
        }
        // 2. the routed channels, concurrently.
        let delivery = Delivery { notice: &notice, record_json: &record_json, recipients: &recipients };
        let recipients_text =
            recipients.iter().map(|m| m.email.to_string()).collect::<Vec<_>>().join(", ");
        let pending: Vec<ChannelKind> =
            kinds.into_iter().filter(|k| !done.iter().any(|c| c == k.as_str())).collect();
        let results = futures::future::join_all(pending.iter().map(|&kind| {
            let target = match kind {
                ChannelKind::Email => Some(recipients_text.as_str()),
                _ => None,
            };
            let delivery = &delivery;
            let id = id.as_str();
            async move {
                (kind, self.with_retries(id, kind.as_str(), target, shutdown, || self.channels.attempt(kind, delivery)).await)
            }
        }))
        .await;
        let mut aborted = false;
        for (kind, outcome) in results {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Failed(reason) => failed.push((kind.as_str().into(), reason)),
                Outcome::Aborted => aborted = true,
            }
        }
        for (channel, reason) in &failed {
            self.dead_letter(&id, channel, reason, &record_json, trace).await;
        }
        if aborted && failed.is_empty() {
            return self.give_back(&id).await;
        }
        let status = if failed.is_empty() { "dispatched" } else { "failed" };
        let mut backoff = crate::runtime::Backoff::new(5000);
        loop {
            match store::finish(&self.pool, &id, status, row.suppressed_count).await {
                Ok(()) => break,
                Err(e) if !shutdown.is_triggered() => {
                    tracing::warn!(stage = STAGE, alert = %id, error = %e, "cannot record the dispatch; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(_) => return, // the lease runs out; another dispatch skips the delivered channels
            }
        }
        self.metrics.dispatched.with_label_values(&[STAGE, status]).inc();
        tracing::Span::current().record("auditflow.outcome", status);
        tracing::info!(
            stage = STAGE,
            alert = %id,
            policy = %row.policy_id,
            rule = %row.rule_id,
            matches = row.match_count,
            suppressed = row.suppressed_count,
            status,
            "alert dispatched"
        );
    }

    async fn give_back(&self, id: &str) {
        if let Err(e) = store::release(&self.pool, id, 0.0).await {
            tracing::debug!(stage = STAGE, alert = %id, error = %e, "lease not released; it expires on its own");
        }
    }

    /// Attempts until delivered, a permanent error, the retry budget, or shutdown.
    async fn with_retries<F, Fut>(
        &self,
        alert_id: &str,
        channel: &str,
        target: Option<&str>,
        shutdown: &Shutdown,
        mut attempt_once: F,
    ) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), DeliveryError>>,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // One span per attempt, so retries and their waits show in the trace.
            let span = tracing::info_span!(
                "deliver",
                otel.name = format!("deliver {channel}"),
                otel.kind = "client",
                auditflow.channel = channel,
                auditflow.attempt = i64::from(attempt),
                auditflow.outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            );
            let result = attempt_once().instrument(span.clone()).await;
            let (outcome, detail, wait) = match &result {
                Ok(()) => ("delivered", None, None),
                Err(e) => {
                    let next =
                        if e.permanent { None } else { self.retry.next(attempt, start.elapsed(), fastrand::f64()) };
                    (if next.is_some() { "retrying" } else { "failed" }, Some(e.message.as_str()), next)
                }
            };
            span.record("auditflow.outcome", outcome);
            if let Some(detail) = detail {
                span.record("otel.status_code", "error");
                span.record("otel.status_description", detail);
            }
            drop(span);
            self.metrics.deliveries.with_label_values(&[STAGE, channel, outcome]).inc();
            if let Err(e) = store::record_delivery(&self.pool, alert_id, channel, target, attempt, outcome, detail).await {
                tracing::warn!(stage = STAGE, alert = %alert_id, channel, error = %e, "delivery attempt not recorded");
            }
            match (result, wait) {
                (Ok(()), _) => return Outcome::Delivered,
                (Err(e), Some(wait)) => {
                    tracing::warn!(stage = STAGE, alert = %alert_id, channel, attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "delivery failed; retrying");
                    if sleep_or_shutdown(wait, shutdown).await {
                        return Outcome::Aborted;
                    }
                }
                (Err(e), None) => {
                    tracing::error!(stage = STAGE, alert = %alert_id, channel, attempt, error = %e, "delivery failed for good");
                    return Outcome::Failed(format!("{channel}: {} (after {attempt} attempts)", e.message));
                }
            }
        }
    }

    async fn publish(&self, alert_id: &str, json: &[u8], trace: Option<crate::trace::TraceParent>) -> Result<(), DeliveryError> {
        let record = FutureRecord::to(&self.alerts_topic).key(alert_id).payload(json).headers(trace_headers(trace));
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => {
                self.runtime_metrics.produced.with_label_values(&[STAGE, &self.alerts_topic]).inc();
                Ok(())
            }
            Err((e, _)) => Err(DeliveryError::transient(format!("Kafka: {e}"))),
        }
    }

    /// The alert, with the reason, on the alert dead-letter topic (at least once, bounded).
    async fn dead_letter(&self, alert_id: &str, channel: &str, reason: &str, json: &[u8], trace: Option<crate::trace::TraceParent>) {
        let reason = super::render::clean_line(reason, 2000);
        for attempt in 1..=5u32 {
            let headers = trace_headers(trace)
                .insert(Header { key: crate::runtime::dlq::H_STAGE, value: Some(STAGE) })
                .insert(Header { key: crate::runtime::dlq::H_ERROR_KIND, value: Some("delivery_failed") })
                .insert(Header { key: crate::runtime::dlq::H_ERROR_MESSAGE, value: Some(reason.as_str()) })
                .insert(Header { key: "dlq.alert.id", value: Some(alert_id) })
                .insert(Header { key: "dlq.alert.channel", value: Some(channel) });
            let record = FutureRecord::to(&self.dlq_topic).key(alert_id).payload(json).headers(headers);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    self.runtime_metrics.produced.with_label_values(&[STAGE, &self.dlq_topic]).inc();
                    self.runtime_metrics.dlq.with_label_values(&[STAGE, "delivery_failed"]).inc();
                    return;
                }
                Err((e, _)) => {
                    tracing::warn!(stage = STAGE, alert = %alert_id, attempt, error = %e, "alert dead letter not delivered yet");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
            }
        }
        tracing::error!(stage = STAGE, alert = %alert_id, channel, "alert dead letter lost; alert_deliveries keeps the failure");
    }
}

/// The `traceparent` header of an alert's records, when it has a trace.
fn trace_headers(trace: Option<crate::trace::TraceParent>) -> OwnedHeaders {
    let headers = OwnedHeaders::new_with_capacity(6);
    match trace {
        Some(t) => headers.insert(Header { key: crate::trace::TRACEPARENT, value: Some(&t.encode()[..]) }),
        None => headers,
    }
}

/// Route resolution (pure): see [`Alerting::route`].
pub fn route(
    settings: &AlertSettings,
    names: &[String],
    severity: Severity,
    tags: &[String],
    configured: impl Fn(ChannelKind) -> bool,
) -> (Vec<ChannelKind>, Vec<Mailbox>) {
    let mut kinds: Vec<ChannelKind> = Vec::new();
    let mut recipients: Vec<Mailbox> = Vec::new();
    for r in &settings.routes {
        if !names.is_empty() && !names.contains(&r.name) {
            continue;
        }
        if !r.severities.is_empty() && !r.severities.contains(&severity) {
            continue;
        }
        if !r.tags.is_empty() && !r.tags.iter().any(|t| tags.iter().any(|x| x.eq_ignore_ascii_case(t))) {
            continue;
        }
        for k in &r.channels {
            if configured(*k) && !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        for to in &r.recipients {
            if let Ok(m) = to.parse::<Mailbox>() {
                if !recipients.iter().any(|x| x.email == m.email) {
                    recipients.push(m);
                }
            }
        }
    }
    kinds.sort();
    if !kinds.contains(&ChannelKind::Email) {
        recipients.clear();
    }
    (kinds, recipients)
}

/// Sleep, waking early on shutdown. True if shutdown came first.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &Shutdown) -> bool {
    let end = Instant::now() + d;
    loop {
        if shutdown.is_triggered() {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::settings::RouteConfig;

    #[tokio::test]
    async fn a_wake_up_given_while_the_dispatcher_is_busy_is_kept_once() {
        let wake = DispatchWake::default();
        wake.clone().wake();
        wake.wake();
        tokio::time::timeout(Duration::from_secs(5), wake.woken()).await.expect("kept until the dispatcher waits");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wake.woken()).await.is_err(),
            "wake-ups do not pile up: one extra claim covers them all"
        );
    }

    #[test]
    fn routes_union_by_severity_and_tags() {
        let s = AlertSettings {
            routes: vec![
                RouteConfig {
                    name: "sec".into(),
                    channels: vec![ChannelKind::Email],
                    recipients: vec!["security@example.com".into()],
                    ..RouteConfig::default()
                },
                RouteConfig {
                    name: "crit".into(),
                    severities: vec![Severity::Critical],
                    channels: vec![ChannelKind::Email, ChannelKind::Slack],
                    recipients: vec!["admin@example.com".into(), "security@example.com".into()],
                    ..RouteConfig::default()
                },
                RouteConfig {
                    name: "hipaa".into(),
                    tags: vec!["hipaa".into()],
                    channels: vec![ChannelKind::Webhook],
                    ..RouteConfig::default()
                },
            ],
            ..AlertSettings::default()
        };
        let all = |_| true;
        let (k, r) = route(&s, &[], Severity::High, &["SOX".into()], all);
        assert_eq!(k, vec![ChannelKind::Email]);
        assert_eq!(r.len(), 1);
        let (k, r) = route(&s, &[], Severity::Critical, &["HIPAA".into()], all);
        assert_eq!(k, vec![ChannelKind::Email, ChannelKind::Slack, ChannelKind::Webhook]);
        assert_eq!(r.len(), 2, "recipients deduplicated");
        let (k, _) = route(&s, &["hipaa".to_string()], Severity::Critical, &["HIPAA".into()], all);
        assert_eq!(k, vec![ChannelKind::Webhook], "a policy's route list limits the routes");
        let (k, r) = route(&s, &[], Severity::Critical, &[], |k| k != ChannelKind::Email);
        assert_eq!(k, vec![ChannelKind::Slack], "unconfigured channels drop out");
        assert!(r.is_empty());
    }
}
