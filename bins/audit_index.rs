//! `audit-index`: audit-enriched → OpenSearch, one document per event (personal identifiers as
//! keyed pseudonyms only), exactly once; offsets in PostgreSQL.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use auditflow::error::ConfigError;
use auditflow::index::client::SearchClient;
use auditflow::privacy::SecretKey;
use auditflow::runtime::{process, run_sink};
use auditflow::stages::index::{IndexMetrics, IndexStage, IndexStageSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-index", "auditflow index stage: audit-enriched → OpenSearch").await?;
    let index = p.config.index.clone();
    if index.url.is_none() {
        return Err(ConfigError::new("AUDITFLOW_OPENSEARCH_URL", "required: the OpenSearch the events are indexed in").into());
    }
    let key = p
        .config
        .privacy
        .pseudonym_key
        .as_deref()
        .ok_or_else(|| ConfigError::new("AUDITFLOW_PSEUDONYM_KEY", "required: documents carry pseudonyms, never identifiers"))?;
    let pseudonym_key = SecretKey::parse("AUDITFLOW_PSEUDONYM_KEY", key)?;
    let client = SearchClient::new(&index)?;
    // Not ready until OpenSearch answers; the template goes in before the first document.
    let mut delay = Duration::from_millis(500);
    loop {
        match client.health().await {
            Ok(()) => break,
            Err(e) if p.shutdown.is_triggered() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(stage = "index", error = %e, "waiting for OpenSearch");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    client.put_template(&index).await.map_err(|e| anyhow::anyhow!("cannot install the index template: {e}"))?;
    let items = IntCounterVec::new(Opts::new("auditflow_index_items_total", "Bulk items by outcome (created, exists, rejected, retry)"), &["stage", "outcome"])?;
    let bulk_seconds = HistogramVec::new(
        HistogramOpts::new("auditflow_index_bulk_seconds", "Wall time of one _bulk request")
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        &["stage"],
    )?;
    p.metrics.registry.register(Box::new(items.clone()))?;
    p.metrics.registry.register(Box::new(bulk_seconds.clone()))?;
    let pool = auditflow::db::connect(&p.config.database, 4).await?;
    // Its role reads and moves its own offsets, nothing else.
    sqlx::query("SELECT 1 FROM stage_offsets LIMIT 0")
        .execute(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("database schema missing or stage_offsets unreadable ({e}); run `auditflow migrate` first"))?;
    let settings = IndexStageSettings {
        input_topic: p.config.topics.enriched.name.clone(),
        group_id: p.config.group_id("index"),
        index,
        pseudonym_key,
        personal_fields: p.config.privacy.personal_fields.clone(),
    };
    let handle = tokio::runtime::Handle::current();
    let stage = IndexStage::new(pool, client, settings, handle.clone(), IndexMetrics { items, bulk_seconds });
    process::run_blocking(move || run_sink(&p.config, stage, p.metrics, p.health, p.shutdown, handle)).await
}
