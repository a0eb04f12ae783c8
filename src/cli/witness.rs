//! `auditflow witness`: run the witness stage (see `stages::witness`) over the shared sink
//! runtime, with its own `/metrics`, `/healthz` and `/readyz`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use prometheus::{IntCounterVec, Opts};

use crate::config::Config;
use crate::error::ConfigError;
use crate::ledger::LedgerSigner;
use crate::privacy::SecretKey;
use crate::runtime::{run_sink, Shutdown};
use crate::stages::witness::{WitnessSettings, WitnessStage};
use crate::telemetry::{self, Health, Metrics};

#[derive(clap::Args, Debug)]
pub struct WitnessArgs {
    /// The witness's own store: accepted checkpoints, co-signatures, offsets.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Print the witness's public key and exit.
    #[arg(long)]
    pub print_key: bool,
}

pub async fn run(config: &Config, args: WitnessArgs) -> anyhow::Result<()> {
    let seed = config
        .ledger
        .witness_key
        .as_deref()
        .ok_or_else(|| ConfigError::new("AUDITFLOW_WITNESS_KEY", "required: the witness's own Ed25519 seed (`auditflow keys generate`)"))?;
    let witness = LedgerSigner::new(&SecretKey::parse("AUDITFLOW_WITNESS_KEY", seed)?);
    if args.print_key {
        println!("{}", SecretKey(witness.verifying_key().to_bytes()).to_base64());
        return Ok(());
    }
    let ledger_keys = crate::cli::ledger::verifying_keys(config)?;
    if ledger_keys.iter().any(|k| *k == witness.verifying_key()) {
        return Err(ConfigError::new("AUDITFLOW_WITNESS_KEY", "is the ledger's own key: a witness must sign with a key of its own").into());
    }
    let recipients: Vec<lettre::message::Mailbox> = config.alert.ops.recipients.iter().filter_map(|r| r.parse().ok()).collect();
    let email = match (&config.alert.email.host, recipients.is_empty()) {
        (Some(_), false) => Some((
            crate::alert::channels::email::EmailChannel::new(&config.alert.email)
                .map_err(|e| ConfigError::new("AUDITFLOW_SMTP_HOST", e))?,
            recipients,
        )),
        _ => None,
    };
    let metrics = Metrics::new();
    let health = Health::new();
    telemetry::serve_http(&config.http.listen, metrics.clone(), health.clone(), Duration::from_secs(config.http.liveness_timeout_secs))
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve http on {}: {e}", config.http.listen))?;
    let outcomes = IntCounterVec::new(
        Opts::new("auditflow_witness_checkpoints_total", "Checkpoints judged by the witness, by outcome"),
        &["outcome"],
    )?;
    metrics.registry.register(Box::new(outcomes.clone()))?;
    let pool = crate::db::connect(&config.database, 2).await.context("connecting to PostgreSQL")?;
    let settings = WitnessSettings {
        checkpoint_topic: config.topics.checkpoints.name.clone(),
        store: args.store.clone(),
        ledger_keys,
        witness,
        email,
    };
    let stage = WitnessStage::new(pool, settings, outcomes).with_context(|| format!("opening the witness store {}", args.store.display()))?;
    tracing::info!(stage = "witness", store = %args.store.display(), "witness following {}", config.topics.checkpoints.name);
    let handle = tokio::runtime::Handle::current();
    let config = config.clone();
    let shutdown = Shutdown::on_signals();
    crate::runtime::process::run_blocking(move || run_sink(&config, stage, metrics, health, shutdown, handle)).await
}
