//! `audit-enrich`: audit-raw → validate, normalise, enrich → audit-enriched (Avro), exactly once.



use auditflow::enrich::Enricher;
use auditflow::runtime::{process, run_transform, PerMessage};
use auditflow::stages::enrich::{report_data_dates, EnrichStage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-enrich", "auditflow enrich stage: audit-raw → audit-enriched").await?;
    let enricher = Enricher::new(&p.config.enrich.to_enrich_config())?;
    report_data_dates(&enricher, &p.metrics.registry, chrono::Utc::now())?;
    let stage = PerMessage(EnrichStage::new(enricher, p.config.topics.raw.name.clone(), &p.config.topics.enriched.name));
    process::run_blocking(move || run_transform(&p.config, stage, p.metrics, p.health, p.shutdown)).await
}
