//! The Redis client every Redis user of the pipeline is built from: `redis://` plaintext or
//! `rediss://` over rustls, verified against `redis.ca_file` or the OS trust store.

use crate::config::RedisConfig;

/// A client for `config` (no connection is opened yet). With a CA file, only that CA is trusted
/// for the Redis server's certificate; its host name is checked either way.
pub fn client(config: &RedisConfig) -> Result<redis::Client, redis::RedisError> {
    match &config.ca_file {
        Some(path) if config.tls() => {
            let root_cert = std::fs::read(path).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read the Redis CA file",
                    format!("{}: {e}", path.display()),
                ))
            })?;
            redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
            )
        }
        _ => redis::Client::open(config.url.as_str()),
    }
}
