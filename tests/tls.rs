//! TLS to PostgreSQL and Redis through the pipeline's own connection code (`db::connect`,
//! `redis_conn::client`, the rules stage's window store), against the local stack's TLS
//! listeners (`scripts/stack up`: PostgreSQL with `ssl = on`, a TLS-only Redis), with the
//! server certificate verified against the stack's CA — and refused under another CA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditflow::config::Config;

fn stack_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set: run `eval \"$(scripts/stack env)\"` (scripts/test does)"))
}

fn config(pairs: &[(&str, &str)]) -> Config {
    let env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_sources(None, &env).expect("configuration valid")
}

/// A self-signed CA that signed nothing the stack serves.
fn other_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("other-ca.key"), dir.join("other-ca.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not the auditflow CA"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl could not make a CA");
    cert
}

/// `postgres://…/db?sslmode=…` of the stack, without its query.
fn pg_base_url() -> String {
    let url = stack_var("AUDITFLOW_STACK_PG_TLS_URL");
    url.split('?').next().unwrap_or(&url).to_string()
}

async fn session_uses_tls(pool: &sqlx::PgPool) -> (bool, String) {
    sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl readable")
}

#[tokio::test]
async fn postgres_verify_full_from_the_url() {
    let url = stack_var("AUDITFLOW_STACK_PG_TLS_URL");
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let c = config(&[("AUDITFLOW_DATABASE_URL", &url)]);
    let pool = auditflow::db::connect(&c.database, 1).await.expect("TLS connection verified against the stack CA");
    let (ssl, version) = session_uses_tls(&pool).await;
    assert!(ssl, "the session is not encrypted");
    assert!(version.starts_with("TLSv1."), "{version}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables").fetch_one(&pool).await.expect("query over TLS");
    assert!(n > 0);
}

#[tokio::test]
async fn postgres_verify_full_from_typed_settings() {
    let ca = stack_var("AUDITFLOW_STACK_CA");
    let c = config(&[
        ("AUDITFLOW_DATABASE_URL", &pg_base_url()),
        ("AUDITFLOW_DATABASE_SSLMODE", "verify-full"),
        ("AUDITFLOW_DATABASE_SSLROOTCERT", &ca),
    ]);
    let pool = auditflow::db::connect(&c.database, 1).await.expect("TLS connection verified against the stack CA");
    assert!(session_uses_tls(&pool).await.0, "the session is not encrypted");
}

#[tokio::test]
async fn postgres_under_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = other_ca(dir.path());
    let c = config(&[
        ("AUDITFLOW_DATABASE_URL", &pg_base_url()),
        ("AUDITFLOW_DATABASE_SSLMODE", "verify-full"),
        ("AUDITFLOW_DATABASE_SSLROOTCERT", wrong.to_str().unwrap()),
    ]);
    let started = std::time::Instant::now();
    let err = auditflow::db::connect(&c.database, 5).await.expect_err("a server certificate from another CA was accepted");
    let refused_certificate = match &err {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData && format!("{e:?}").contains("UnknownIssuer"),
        _ => false,
    };
    assert!(refused_certificate, "not a certificate refusal: {err:?}");
    // A certificate refusal is final: no retry rounds.
    assert!(started.elapsed() < Duration::from_secs(5), "retried a refused certificate");
}

#[tokio::test]
async fn postgres_verify_full_by_host_name() {
    // The stack's certificate names both 127.0.0.1 and localhost: a DNS name verifies too.
    let ca = stack_var("AUDITFLOW_STACK_CA");
    let c = config(&[
        ("AUDITFLOW_DATABASE_URL", &pg_base_url().replace("127.0.0.1", "localhost")),
        ("AUDITFLOW_DATABASE_SSLMODE", "verify-full"),
        ("AUDITFLOW_DATABASE_SSLROOTCERT", &ca),
    ]);
    let pool = auditflow::db::connect(&c.database, 1).await.expect("localhost is in the certificate");
    assert!(session_uses_tls(&pool).await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_the_ca_file() {
    let url = stack_var("AUDITFLOW_STACK_REDIS_TLS_URL");
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = stack_var("AUDITFLOW_STACK_CA");
    let c = config(&[("AUDITFLOW_REDIS_URL", &url), ("AUDITFLOW_REDIS_CA_FILE", &ca)]);
    let client = auditflow::redis_conn::client(&c.redis).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("TLS connection verified against the stack CA");
    let key = format!("tls-test:{}", uuid::Uuid::new_v4());
    let _: () = redis::cmd("SET").arg(&key).arg("over-tls").arg("EX").arg(60).query_async(&mut conn).await.unwrap();
    let got: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(got, "over-tls");
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();

    // The rules stage's window store connects through the same client.
    auditflow::rules::RedisWindowStore::connect_client(client, "tls-test", Duration::from_secs(5))
        .await
        .expect("window store over TLS");
}

#[tokio::test]
async fn redis_under_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = other_ca(dir.path());
    let c = config(&[
        ("AUDITFLOW_REDIS_URL", &stack_var("AUDITFLOW_STACK_REDIS_TLS_URL")),
        ("AUDITFLOW_REDIS_CA_FILE", wrong.to_str().unwrap()),
    ]);
    let client = auditflow::redis_conn::client(&c.redis).expect("client");
    let err = client.get_multiplexed_async_connection().await.expect_err("a server certificate from another CA was accepted");
    let text = err.to_string().to_lowercase();
    assert!(text.contains("certificate") || text.contains("unknownissuer"), "not a certificate refusal: {err}");
}

#[tokio::test]
async fn redis_plaintext_to_the_tls_port_fails() {
    // Without TLS the TLS-only port must not answer: what a `redis://` typo would meet.
    let url = stack_var("AUDITFLOW_STACK_REDIS_TLS_URL").replacen("rediss://", "redis://", 1);
    let c = config(&[("AUDITFLOW_REDIS_URL", &url)]);
    let client = auditflow::redis_conn::client(&c.redis).expect("client");
    let attempt = tokio::time::timeout(Duration::from_secs(5), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    assert!(!matches!(attempt, Ok(Ok(_))), "plaintext PING answered on the TLS-only port");
}
