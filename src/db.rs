//! PostgreSQL connection and schema migrations.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connect, retrying while the database comes up (a fleet often starts before it is ready).
pub async fn connect(config: &DatabaseConfig, attempts: u32) -> Result<PgPool, sqlx::Error> {
    let mut last = None;
    for attempt in 1..=attempts.max(1) {
        match PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&config.url)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) => {
                tracing::warn!(url = %crate::redact::url(&config.url), attempt, error = %e, "database not reachable yet");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * attempt as u64).min(Duration::from_secs(5))).await;
            }
        }
    }
    Err(last.unwrap_or(sqlx::Error::PoolTimedOut))
}

/// Fail fast with a clear message when the schema has not been migrated.
pub async fn check_schema(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1 FROM audit_events LIMIT 0")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("database schema missing or unreadable ({e}); run `auditflow migrate` first"))
}
