//! `audit-alert`: audit-rule-matches → alert policies → PostgreSQL audit_alerts (offsets in the
//! same transaction), plus the dispatcher that sends due alerts (e-mail, Slack, webhook,
//! security-alerts) and the operational-alert monitor.

use std::time::Duration;


use auditflow::alert::dispatch::Alerting;
use auditflow::alert::AlertMetrics;
use auditflow::runtime::{process, run_sink};
use auditflow::stages::alert::AlertStage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-alert", "auditflow alert stage: audit-rule-matches → alerts → e-mail, Slack, webhooks, security-alerts").await?;
    let pool = auditflow::db::connect(&p.config.database, 30).await?;
    sqlx::query("SELECT 1 FROM audit_alerts LIMIT 0").execute(&pool).await.map_err(|e| {
        anyhow::anyhow!("alert tables missing or unreadable ({e}); run `auditflow migrate` first")
    })?;
    if let Some(path) = &p.config.alert.policies_file {
        // A policies file that does not load is a configuration error at start.
        p.config.alert.policies_from_file(path)?;
    }
    let alert_metrics = AlertMetrics::register(&p.metrics);
    let alerting = Alerting::new(&p.config, pool.clone(), p.metrics.clone(), alert_metrics.clone())
        .map_err(|e| anyhow::anyhow!("alert channels: {e}"))?;
    let wake = alerting.wake.clone();
    let dispatcher = tokio::spawn(alerting.clone().run_dispatcher(p.shutdown.clone()));
    let ops = tokio::spawn(auditflow::alert::ops::run(alerting, p.shutdown.clone()));

    let handle = tokio::runtime::Handle::current();
    let stage = AlertStage::new(
        pool,
        p.config.topics.rule_matches.name.clone(),
        p.config.group_id("alert"),
        p.config.alert.clone(),
        alert_metrics,
        handle.clone(),
    )
    .with_dispatch_wake(wake);
    let shutdown = p.shutdown.clone();
    let result = process::run_blocking(move || run_sink(&p.config, stage, p.metrics, p.health, p.shutdown, handle)).await;
    // The sink has stopped (signal or error): stop the dispatcher too, letting it hand back
    // the alerts it holds.
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(15), dispatcher).await;
    ops.abort();
    result
}
