//! `audit-compliance`: audit-enriched → compliance_events (PostgreSQL) and compliance-events
//! (Kafka), exactly once; also enforces data retention on a schedule.



use auditflow::compliance::{Mapping, Pseudonyms};
use auditflow::runtime::{process, run_transform};
use auditflow::stages::compliance::ComplianceStage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-compliance", "auditflow compliance stage: audit-enriched → compliance_events, compliance-events").await?;
    let mapping = Mapping::from_config(&p.config)?;
    let pseudonyms = Pseudonyms::from_env()?;
    let pool = auditflow::db::connect(&p.config.database, 30).await?;
    auditflow::db::check_schema(&pool).await.map_err(anyhow::Error::msg)?;
    sqlx::query("SELECT 1 FROM compliance_events LIMIT 0")
        .execute(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("table compliance_events missing ({e}); run `auditflow migrate` first"))?;
    if p.config.retention.schedule {
        auditflow::retention::spawn_schedule(pool.clone(), p.config.retention.clone(), p.shutdown.clone());
    }
    let stage = ComplianceStage::new(
        mapping,
        pseudonyms,
        pool,
        tokio::runtime::Handle::current(),
        p.config.topics.enriched.name.clone(),
        &p.config.topics.compliance_events.name,
    );
    process::run_blocking(move || run_transform(&p.config, stage, p.metrics, p.health, p.shutdown)).await
}
