//! `audit-persist`: audit-enriched → PostgreSQL audit_events, offsets in the same transaction.

use std::path::PathBuf;

use clap::Parser;

use auditflow::runtime::{process, run_sink};
use auditflow::stages::persist::PersistStage;

#[derive(Parser)]
#[command(version, about = "auditflow persist stage: audit-enriched → PostgreSQL")]
struct Args {
    /// TOML configuration file (else AUDITFLOW_CONFIG; AUDITFLOW_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = process::start("persist", args.config).await?;
    let pool = auditflow::db::connect(&p.config.database, 30).await?;
    auditflow::db::check_schema(&pool).await.map_err(anyhow::Error::msg)?;
    let handle = tokio::runtime::Handle::current();
    let stage = PersistStage::new(
        pool,
        p.config.topics.enriched.name.clone(),
        p.config.group_id("persist"),
        handle.clone(),
    );
    process::run_blocking(move || run_sink(&p.config, stage, p.metrics, p.health, p.shutdown, handle)).await
}
