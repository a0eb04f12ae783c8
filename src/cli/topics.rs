//! `auditflow topics create`: make the pipeline's topics with the configured partition counts,
//! retention and message size. Existing topics are left alone and reported.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{Config, TopicSpec};
use crate::runtime::kafka::base_client_config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

pub async fn create_topics(config: &Config, specs: &[&TopicSpec]) -> anyhow::Result<Vec<(String, TopicOutcome)>> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(config).create()?;
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
    let max_bytes: Vec<String> = specs.iter().map(|s| s.max_message_bytes.to_string()).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(config.topics.replication_factor))
                .set("retention.ms", &retention[i])
                .set("max.message.bytes", &max_bytes[i])
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new_topics.iter(), &opts).await?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, TopicOutcome::AlreadyExists)),
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(out)
}
