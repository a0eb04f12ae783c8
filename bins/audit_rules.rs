//! `audit-rules`: audit-enriched → detection rules (window state in Redis) → audit-rule-matches
//! and security-actions, exactly once.

use std::sync::atomic::Ordering;
use std::time::Duration;


use auditflow::rules::reload::RuleWatcher;
use auditflow::rules::RedisWindowStore;
use auditflow::runtime::{process, run_transform, Backoff};
use auditflow::stages::rules::RulesStage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-rules", "auditflow rules stage: audit-enriched → audit-rule-matches, security-actions").await?;
    let settings = p.config.rules.clone();
    let (watcher, engine) = RuleWatcher::start(&settings.dir, settings.reload_interval_secs)
        .map_err(|e| anyhow::anyhow!("invalid rules in {}:\n{e}", settings.dir.display()))?;
    tracing::info!(
        dir = %settings.dir.display(),
        rules = engine.rule_set().rule_count(),
        disabled = engine.rule_set().disabled.len(),
        "rules loaded"
    );

    // SIGHUP: reload the rule files now.
    let reload = watcher.requested.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading rules");
            reload.store(true, Ordering::SeqCst);
        }
    });

    // Redis may come up after the stage: wait for it rather than exit.
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    let mut backoff = Backoff::new(p.config.stage.retry_max_backoff_ms);
    let client = auditflow::redis_conn::client(&p.config.redis)?;
    let store = loop {
        match RedisWindowStore::connect_client(client.clone(), &settings.key_prefix, timeout).await {
            Ok(s) => break s,
            Err(e) => {
                if p.shutdown.is_triggered() {
                    return Ok(());
                }
                tracing::warn!(error = %e, "Redis not reachable yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let stage = RulesStage::new(engine, Some(watcher), store, &p.config, &p.metrics);
    process::run_blocking(move || run_transform(&p.config, stage, p.metrics, p.health, p.shutdown)).await
}
