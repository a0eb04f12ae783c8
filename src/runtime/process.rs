//! What every stage process does around its loop: logging, metrics and health endpoints,
//! signal handling, and running the blocking loop off the async runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::telemetry::{self, Health, Metrics};

use super::{RuntimeError, Shutdown};

/// Handles a stage's loop needs, set up by [`start`].
pub struct StageProcess {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub shutdown: Shutdown,
}

/// Load config (fail fast), start logs, `/metrics` `/healthz` `/readyz`, and signal handling.
pub async fn start(stage: &str, config_file: Option<PathBuf>) -> anyhow::Result<StageProcess> {
    let config = Config::load(config_file)?;
    telemetry::init_logging(&config.log);
    let metrics = Metrics::new();
    let health = Health::new();
    telemetry::serve_http(
        &config.http.listen,
        metrics.clone(),
        health.clone(),
        Duration::from_secs(config.http.liveness_timeout_secs),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot serve http on {}: {e}", config.http.listen))?;
    tracing::info!(stage, config = ?config, "starting");
    Ok(StageProcess { config, metrics, health, shutdown: Shutdown::on_signals() })
}

/// Run a blocking stage loop on its own thread and wait for it.
pub async fn run_blocking<F>(f: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Result<(), RuntimeError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await??;
    Ok(())
}
