//! `auditflow index`: the search store's maintenance commands.

use std::io::IsTerminal;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::cli::report::parse_time;
use crate::config::Config;
use crate::index::client::SearchClient;
use crate::index::rebuild;

#[derive(clap::Subcommand, Debug)]
pub enum IndexCommand {
    /// Re-index a time range from PostgreSQL (a new cluster, a lost index, a changed mapping).
    /// Idempotent: one document per event, however often it runs, next to audit-index or not.
    Rebuild(RebuildArgs),
}

#[derive(clap::Args, Debug)]
pub struct RebuildArgs {
    /// Events at or after this time (YYYY-MM-DD or RFC 3339, UTC). Default: the first event.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// Events before this time. Default: now.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
    /// Events per bulk request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, command: IndexCommand) -> anyhow::Result<()> {
    let IndexCommand::Rebuild(args) = command;
    if config.index.url.is_none() {
        anyhow::bail!("AUDITFLOW_OPENSEARCH_URL is not set: there is no search store to rebuild");
    }
    let keys = config.privacy.keys()?;
    let pool = crate::db::connect(&config.database, 3).await.context("connecting to PostgreSQL")?;
    // The keys must be the ones the ledger was sealed with, or every subject would look unreadable.
    crate::stages::persist::verify_keys(&pool, &keys).await.map_err(anyhow::Error::msg)?;
    let client = SearchClient::new(&config.index)?;
    let from = args.from;
    let to = args.to.unwrap_or_else(Utc::now);
    anyhow::ensure!(from.is_none_or(|f| f < to), "--from must be before --to");
    let total = rebuild::count(&pool, from, to).await.context("counting the events to re-index")?;
    let bar = if std::io::stderr().is_terminal() { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: u64| bar.set_position(done);
    let report = rebuild::rebuild(&pool, &client, &config.index, &keys, &config.privacy.personal_fields, from, to, args.batch as usize, &progress)
        .await
        .context("rebuilding the search store (nothing is lost: run it again once the cause is fixed, it is idempotent)")?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "re-indexed {} event(s) into {} index(es), {} of erased subjects redacted",
            report.events,
            report.indices.len(),
            report.redacted
        );
        for (id, why) in &report.refused {
            println!("refused: event {}: {}", crate::cli::ops::printable(id.as_bytes(), false), crate::cli::ops::printable(why.as_bytes(), false));
        }
    }
    if !report.refused.is_empty() {
        anyhow::bail!("{} document(s) refused by the index mapping (listed above)", report.refused.len());
    }
    Ok(())
}
