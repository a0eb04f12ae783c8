//! The benchmark's private world on the shared stack: uniquely named topics, consumer groups
//! and databases per phase, all removed at the end (unless `--keep`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use sqlx::PgPool;

use crate::config::Config;
use crate::runtime::kafka::base_client_config;

/// The topics a stage can read or write, named like the configuration names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    Raw,
    Enriched,
    Dlq,
    RuleMatches,
    SecurityActions,
    SecurityAlerts,
    AlertDlq,
    ComplianceEvents,
    Checkpoints,
}

impl TopicRole {
    pub const ALL: [TopicRole; 9] = [
        TopicRole::Raw,
        TopicRole::Enriched,
        TopicRole::Dlq,
        TopicRole::RuleMatches,
        TopicRole::SecurityActions,
        TopicRole::SecurityAlerts,
        TopicRole::AlertDlq,
        TopicRole::ComplianceEvents,
        TopicRole::Checkpoints,
    ];

    pub fn env_var(self) -> &'static str {
        match self {
            TopicRole::Raw => "AUDITFLOW_TOPIC_RAW",
            TopicRole::Enriched => "AUDITFLOW_TOPIC_ENRICHED",
            TopicRole::Dlq => "AUDITFLOW_TOPIC_DLQ",
            TopicRole::RuleMatches => "AUDITFLOW_TOPIC_RULE_MATCHES",
            TopicRole::SecurityActions => "AUDITFLOW_TOPIC_SECURITY_ACTIONS",
            TopicRole::SecurityAlerts => "AUDITFLOW_TOPIC_SECURITY_ALERTS",
            TopicRole::AlertDlq => "AUDITFLOW_TOPIC_ALERT_DLQ",
            TopicRole::ComplianceEvents => "AUDITFLOW_TOPIC_COMPLIANCE_EVENTS",
            TopicRole::Checkpoints => "AUDITFLOW_TOPIC_CHECKPOINTS",
        }
    }

    pub fn default_name(self) -> &'static str {
        match self {
            TopicRole::Raw => "audit-raw",
            TopicRole::Enriched => "audit-enriched",
            TopicRole::Dlq => "audit-dlq",
            TopicRole::RuleMatches => "audit-rule-matches",
            TopicRole::SecurityActions => "security-actions",
            TopicRole::SecurityAlerts => "security-alerts",
            TopicRole::AlertDlq => "audit-alert-dlq",
            TopicRole::ComplianceEvents => "compliance-events",
            TopicRole::Checkpoints => "audit-checkpoints",
        }
    }
}

/// One phase's topics, consumer-group prefix and database.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub prefix: String,
    pub database: Option<String>,
    pub database_url: Option<String>,
    pub partitions: i32,
}

impl Phase {
    pub fn topic(&self, role: TopicRole) -> String {
        format!("{}.{}", self.prefix, role.default_name())
    }

    pub fn group(&self, stage: &str) -> String {
        format!("{}-{stage}", self.prefix)
    }

    /// Prefix of every Redis key the phase's stages write (window state of `audit-rules`).
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.prefix)
    }

    /// Environment of every process of this phase (stage binaries, in-process clients).
    pub fn env(&self, brokers: &str) -> Vec<(String, String)> {
        let mut v = vec![
            ("AUDITFLOW_KAFKA_BROKERS".to_string(), brokers.to_string()),
            ("AUDITFLOW_TOPIC_PARTITIONS".to_string(), self.partitions.to_string()),
            ("AUDITFLOW_REDIS_PREFIX".to_string(), self.redis_prefix()),
            // Search store indices of this phase: <prefix>-YYYY.MM.
            ("AUDITFLOW_INDEX_PREFIX".to_string(), self.prefix.clone()),
        ];
        for role in TopicRole::ALL {
            v.push((role.env_var().to_string(), self.topic(role)));
        }
        if let Some(url) = &self.database_url {
            v.push(("AUDITFLOW_DATABASE_URL".to_string(), url.clone()));
        }
        v
    }

    /// The configuration a stage of this phase sees (the benchmark's environment underneath).
    pub fn config(&self, brokers: &str) -> anyhow::Result<Config> {
        let mut env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("AUDITFLOW_")).collect();
        env.extend(self.env(brokers));
        Config::from_sources(None, &env).map_err(|e| anyhow::anyhow!("configuration: {e}"))
    }
}

/// Everything the run created, so it can all be removed.
pub struct BenchEnv {
    pub id: String,
    pub brokers: String,
    pub admin_database_url: String,
    pub redis_url: String,
    pub partitions: i32,
    topics: Vec<String>,
    groups: Vec<String>,
    databases: Vec<String>,
    redis_prefixes: Vec<String>,
    /// The search store, when the stack has one; indices under these prefixes are removed.
    pub search: Option<crate::index::IndexSettings>,
    index_prefixes: Vec<String>,
}

impl BenchEnv {
    pub fn new(id: &str, brokers: &str, admin_database_url: &str, redis_url: &str, partitions: i32) -> BenchEnv {
        BenchEnv {
            id: id.to_string(),
            brokers: brokers.to_string(),
            admin_database_url: admin_database_url.to_string(),
            redis_url: redis_url.to_string(),
            partitions,
            topics: Vec::new(),
            groups: Vec::new(),
            databases: Vec::new(),
            redis_prefixes: Vec::new(),
            search: None,
            index_prefixes: Vec::new(),
        }
    }

    /// A phase with fresh topics (all pipeline topics) and, if `with_database`, a fresh
    /// migrated database.
    pub async fn phase(&mut self, name: &str, with_database: bool) -> anyhow::Result<Phase> {
        let phase = self.database_phase(name, with_database).await?;
        let config = phase.config(&self.brokers)?;
        crate::cli::topics::create_topics(&config, &config.topics.all()).await.context("create topics: is Kafka up?")?;
        self.topics.extend(TopicRole::ALL.iter().map(|r| phase.topic(*r)));
        self.redis_prefixes.push(phase.redis_prefix());
        self.index_prefixes.push(phase.prefix.clone());
        Ok(phase)
    }

    /// A phase with a fresh database (if asked) and no topics.
    pub async fn database_phase(&mut self, name: &str, with_database: bool) -> anyhow::Result<Phase> {
        let prefix = format!("{}-{name}", self.id);
        let (database, database_url) = if with_database {
            let db = format!("{}_{}", self.id, name.replace('-', "_"));
            let url = replace_db_name(&self.admin_database_url, &db);
            let admin = PgPool::connect(&self.admin_database_url).await.context("PostgreSQL reachable?")?;
            sqlx::query(&format!("CREATE DATABASE \"{db}\"")).execute(&admin).await.context("create database")?;
            admin.close().await;
            self.databases.push(db.clone());
            let pool = PgPool::connect(&url).await?;
            crate::db::MIGRATOR.run(&pool).await.context("migrations")?;
            pool.close().await;
            (Some(db), Some(url))
        } else {
            (None, None)
        };
        Ok(Phase { name: name.to_string(), prefix, database, database_url, partitions: self.partitions })
    }

    /// A bare topic (for Kafka's own tools), removed at the end like the others.
    pub async fn extra_topic(&mut self, name: &str, partitions: i32) -> anyhow::Result<String> {
        let topic = format!("{}-{name}", self.id);
        let mut config = self.bare_config()?;
        config.topics.raw.name = topic.clone();
        config.topics.raw.partitions = partitions;
        crate::cli::topics::create_topics(&config, &[&config.topics.raw]).await?;
        self.topics.push(topic.clone());
        Ok(topic)
    }

    /// The benchmark's own configuration (brokers, librdkafka pass-through) for its clients.
    pub fn bare_config(&self) -> anyhow::Result<Config> {
        Phase { name: String::new(), prefix: self.id.clone(), database: None, database_url: None, partitions: self.partitions }
            .config(&self.brokers)
    }

    /// Search store settings for indices under `<run id>-<name>`, removed at the end.
    pub fn index_settings(&mut self, name: &str) -> Option<crate::index::IndexSettings> {
        let mut settings = self.search.clone()?;
        settings.prefix = format!("{}-{name}", self.id);
        self.index_prefixes.push(settings.prefix.clone());
        Some(settings)
    }

    pub fn remember_group(&mut self, group: &str) {
        self.groups.push(group.to_string());
    }

    /// Delete every topic, group and database of the run. Errors are reported, not fatal.
    pub async fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let admin = self
            .bare_config()
            .and_then(|c| base_client_config(&c).create::<AdminClient<DefaultClientContext>>().map_err(Into::into));
        match admin {
            Ok(admin) => {
                let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
                if !self.groups.is_empty() {
                    let groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
                    if let Err(e) = admin.delete_groups(&groups, &opts).await {
                        problems.push(format!("delete groups: {e}"));
                    }
                }
                if !self.topics.is_empty() {
                    let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                    match admin.delete_topics(&topics, &opts).await {
                        Ok(results) => {
                            for r in results {
                                if let Err((t, code)) = r {
                                    problems.push(format!("delete topic {t}: {code}"));
                                }
                            }
                        }
                        Err(e) => problems.push(format!("delete topics: {e}")),
                    }
                }
            }
            Err(e) => problems.push(format!("kafka admin client: {e}")),
        }
        self.topics.clear();
        self.groups.clear();
        if !self.redis_prefixes.is_empty() {
            match delete_redis_keys(&self.redis_url, &self.redis_prefixes).await {
                Ok(()) => self.redis_prefixes.clear(),
                Err(e) => problems.push(format!("redis: {e}")),
            }
        }
        if let Some(settings) = self.search.clone().filter(|_| !self.index_prefixes.is_empty()) {
            match crate::index::client::SearchClient::new(&settings) {
                Ok(client) => {
                    for prefix in self.index_prefixes.drain(..) {
                        if let Err(e) = super::search::delete_prefix(&client, &prefix).await {
                            problems.push(format!("opensearch {prefix}-*: {e}"));
                        }
                    }
                }
                Err(e) => problems.push(format!("opensearch: {e}")),
            }
        }
        if !self.databases.is_empty() {
            match PgPool::connect(&self.admin_database_url).await {
                Ok(admin) => {
                    for db in self.databases.drain(..) {
                        // FORCE cannot end an autovacuum worker busy in the database: try again.
                        let mut attempt = 0;
                        loop {
                            attempt += 1;
                            match sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).execute(&admin).await {
                                Ok(_) => break,
                                Err(_) if attempt < 10 => tokio::time::sleep(Duration::from_secs(2)).await,
                                Err(e) => {
                                    problems.push(format!("drop database {db}: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                    admin.close().await;
                }
                Err(e) => problems.push(format!("PostgreSQL: {e}")),
            }
        }
        problems
    }
}

/// Remove every Redis key under `prefixes` (window state the rules stage left behind).
async fn delete_redis_keys(url: &str, prefixes: &[String]) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    for prefix in prefixes {
        let pattern = format!("{prefix}*");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut con).await?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut con).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

pub fn replace_db_name(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[scheme_end..].find('/') {
        Some(i) => {
            let path_start = scheme_end + i;
            let query = url[path_start..].find('?').map(|q| &url[path_start + q..]).unwrap_or("");
            format!("{}/{db}{query}", &url[..path_start])
        }
        None => format!("{url}/{db}"),
    }
}

/// CPU seconds (user + system) used so far by the PostgreSQL backends connected to `database`:
/// the database's share of a sink's work. Background writers and the WAL writer are not
/// included.
pub async fn backend_cpu_seconds(admin_database_url: &str, database: &str) -> anyhow::Result<f64> {
    let admin = PgPool::connect(admin_database_url).await?;
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(database)
        .fetch_all(&admin)
        .await?;
    admin.close().await;
    Ok(pids.iter().filter_map(|p| super::proc::cpu_seconds(*p as u32)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(replace_db_name("postgres://u:p@h:5432/auditflow", "x"), "postgres://u:p@h:5432/x");
        assert_eq!(replace_db_name("postgres://u:p@h/auditflow?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
        assert_eq!(replace_db_name("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn phase_topics_and_env() {
        let p = Phase { name: "f".into(), prefix: "b1-f".into(), database: None, database_url: None, partitions: 6 };
        assert_eq!(p.topic(TopicRole::Raw), "b1-f.audit-raw");
        let env = p.env("k:1");
        assert!(env.contains(&("AUDITFLOW_TOPIC_SECURITY_ALERTS".into(), "b1-f.security-alerts".into())));
        let c = p.config("k:1").unwrap();
        assert_eq!(c.topics.enriched.name, "b1-f.audit-enriched");
    }
}
