//! `audit-enrich`: audit-raw → validate, normalise, enrich → audit-enriched (Avro), exactly once.

use std::path::PathBuf;

use clap::Parser;

use auditflow::enrich::Enricher;
use auditflow::runtime::{process, run_transform, PerMessage};
use auditflow::stages::enrich::EnrichStage;

#[derive(Parser)]
#[command(version, about = "auditflow enrich stage: audit-raw → audit-enriched")]
struct Args {
    /// TOML configuration file (else AUDITFLOW_CONFIG; AUDITFLOW_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = process::start("enrich", args.config).await?;
    let enricher = Enricher::new(&p.config.enrich.to_enrich_config())?;
    let stage = PerMessage(EnrichStage::new(enricher, p.config.topics.raw.name.clone(), &p.config.topics.enriched.name));
    process::run_blocking(move || run_transform(&p.config, stage, p.metrics, p.health, p.shutdown)).await
}
