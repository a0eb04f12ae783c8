//! `audit-persist`: audit-enriched → PostgreSQL audit_events as a tamper-evident ledger, with
//! personal fields sealed per subject and offsets in the same transaction.

use std::time::Duration;


use auditflow::ledger::LedgerSigner;
use auditflow::privacy::SecretKey;
use auditflow::runtime::kafka::producer_config;
use auditflow::runtime::outbox::Outbox;
use auditflow::runtime::{process, run_sink};
use auditflow::stages::persist::{PersistSettings, PersistStage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-persist", "auditflow persist stage: audit-enriched → PostgreSQL").await?;
    let keys = p.config.privacy.keys()?;
    let seed = p.config.ledger.signing_key.as_deref().ok_or_else(|| {
        auditflow::error::ConfigError::new("AUDITFLOW_SIGNING_KEY", "required (generate with `auditflow keys generate`)")
    })?;
    let signer = LedgerSigner::new(&SecretKey::parse("AUDITFLOW_SIGNING_KEY", seed)?);
    let pool = auditflow::db::connect(&p.config.database, 30).await?;
    auditflow::db::check_schema(&pool).await.map_err(anyhow::Error::msg)?;
    auditflow::stages::persist::verify_keys(&pool, &keys).await.map_err(anyhow::Error::msg)?;
    let outbox = Outbox::new(producer_config(&p.config), &p.config.topics.checkpoints.name)?;
    let handle = tokio::runtime::Handle::current();
    let settings = PersistSettings {
        input_topic: p.config.topics.enriched.name.clone(),
        group_id: p.config.group_id("persist"),
        keys,
        personal_fields: p.config.privacy.personal_fields.clone(),
        signer,
        checkpoint_interval: Duration::from_secs(p.config.ledger.checkpoint_interval_secs),
        checkpoint_topic: p.config.topics.checkpoints.name.clone(),
        checkpoint_export_dir: p.config.ledger.checkpoint_export_dir.clone(),
    };
    let stage = PersistStage::new(pool, settings, handle.clone(), Some(outbox));
    process::run_blocking(move || run_sink(&p.config, stage, p.metrics, p.health, p.shutdown, handle)).await
}
