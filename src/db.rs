//! PostgreSQL connection and schema migrations.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connect, retrying while the database comes up (a fleet often starts before it is ready).
///
/// TLS follows `sslmode` / `sslrootcert` (URL or `[database]`): with `verify-full` the server
/// must present a certificate for the URL's host signed by the CA file (or the OS trust store).
/// A refused certificate is not retried: no amount of waiting makes it valid.
pub async fn connect(config: &DatabaseConfig, attempts: u32) -> Result<PgPool, sqlx::Error> {
    let options = config.connect_options().map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
    let mut last = None;
    for attempt in 1..=attempts.max(1) {
        match PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) if is_final(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(url = %crate::redact::url(&config.url), attempt, error = %e, "database not reachable yet");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * attempt as u64).min(Duration::from_secs(5))).await;
            }
        }
    }
    Err(last.unwrap_or(sqlx::Error::PoolTimedOut))
}

/// Errors no retry can cure: bad settings, or a TLS handshake that refused the server's
/// certificate (rustls reports that as invalid data on the socket).
fn is_final(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// Fail fast with a clear message when the schema has not been migrated.
pub async fn check_schema(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1 FROM audit_events LIMIT 0")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("database schema missing or unreadable ({e}); run `auditflow migrate` first"))
}
