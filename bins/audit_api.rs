//! `audit-api`: HTTP ingest and the query service (JWT, roles, clearance, every read audited).
//! Stateless: run as many replicas as the load needs behind a load balancer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use auditflow::alert::disclose::Disclosure;
use auditflow::api::self_audit::RawProducer;
use auditflow::api::server::{self, ApiMetrics, AppState, Tokens};
use auditflow::error::ConfigError;
use auditflow::index::client::SearchClient;
use auditflow::runtime::process;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let p = process::start_from_args("audit-api", "auditflow API: HTTP ingest and queries, JWT, every read audited").await?;
    let config = p.config.clone();
    let settings = config.api.clone();
    let tokens = Tokens::new(&settings.auth).await?;
    let oidc = auditflow::api::console::oidc::Oidc::discover(&settings.oidc, &settings.auth.issuer).await?;
    let keys = config.privacy.keys()?;
    let signer = config.ledger.signing_key.is_some().then(|| auditflow::cli::ledger::signer(&config)).transpose()?;
    let verifying_keys = match (&config.ledger.verify_key, &signer) {
        (Some(_), _) | (None, Some(_)) => auditflow::cli::ledger::verifying_keys(&config)?,
        (None, None) => {
            tracing::warn!("no AUDITFLOW_VERIFY_KEY or AUDITFLOW_SIGNING_KEY: ledger verification runs will report every checkpoint unsigned");
            Vec::new()
        }
    };
    if signer.is_none() {
        tracing::warn!("no AUDITFLOW_SIGNING_KEY: erasure is unavailable on this API (it signs the receipt)");
    }
    let search = match &config.index.url {
        Some(_) => Some(SearchClient::new(&config.index)?),
        None => {
            tracing::warn!("no AUDITFLOW_OPENSEARCH_URL: event search and timelines answer 503");
            None
        }
    };
    let pool = auditflow::db::connect(&config.database, 10).await.context("connecting to PostgreSQL")?;
    sqlx::query("SELECT 1 FROM api_idempotency_keys LIMIT 0")
        .execute(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("database schema missing or not readable by this login ({e}); run `auditflow migrate` first"))?;
    // The API reads what persist sealed: the same master key, or nothing opens.
    auditflow::stages::persist::verify_keys(&pool, &keys).await.map_err(|e| anyhow::anyhow!(e))?;
    let producer = RawProducer::new(&config).context("creating the Kafka producer")?;
    let metrics = ApiMetrics::register(&p.metrics.registry)?;
    let pseudonym_key = config.privacy.pseudonym_key().map_err(|e| ConfigError::new("AUDITFLOW_PSEUDONYM_KEY", e.to_string()))?;
    let disclosure = Disclosure::pseudonymous(pseudonym_key, &config.privacy.personal_fields, &config.alert.clear_group_fields);
    let state = Arc::new(AppState {
        settings: settings.clone(),
        enrich: config.enrich.to_enrich_config(),
        config,
        tokens,
        pool,
        search,
        producer,
        keys,
        signer,
        verifying_keys,
        disclosure,
        metrics,
        live_streams: Arc::new(tokio::sync::Semaphore::new(auditflow::api::console::live::MAX_STREAMS)),
        oidc,
    });
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the API");
    // Alive while the runtime turns; ready once Kafka answers too.
    let health = p.health.clone();
    let state_for_health = state.clone();
    tokio::spawn(async move {
        loop {
            health.heartbeat();
            let s = state_for_health.clone();
            let kafka_ok = tokio::task::spawn_blocking(move || s.producer.ping(Duration::from_secs(5))).await.unwrap_or(false);
            let db_ok = sqlx::query("SELECT 1").execute(&state_for_health.pool).await.is_ok();
            health.set_ready(kafka_ok && db_ok);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    // Triage decisions whose update did not reach security-alerts at once.
    let outbox = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            match auditflow::api::alerts::publish_pending(&outbox).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("published {n} triage update(s) from the outbox"),
                Err(e) => tracing::warn!(error = %e, "triage outbox: will retry"),
            }
        }
    });
    server::serve(state, listener, p.shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
