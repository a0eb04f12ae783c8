//! Operator commands: inspect and replay dead letters, consumer lag per stage, and moving a
//! stopped stage's position to a point in time.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::config::Config;
use crate::runtime::kafka::{base_client_config, DeliveryTracker};

const TIMEOUT: Duration = Duration::from_secs(15);

/// One dead letter as read back from the DLQ topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// `partition:offset`, how operators name a dead letter.
    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

fn reader(config: &Config) -> anyhow::Result<BaseConsumer> {
    let mut c = base_client_config(config);
    c.set("group.id", format!("auditflow-cli-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    Ok(c.create()?)
}

/// Read a whole topic up to its current end (committed records only).
pub fn read_all(config: &Config, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer = reader(config)?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, TIMEOUT)?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Transaction markers take offsets too, so "done" is: position reached the end everywhere.
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(DeadLetter {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        let position = consumer.position()?;
        let done = position.elements().iter().all(|e| match (e.offset(), ends.get(&e.partition())) {
            (Offset::Offset(o), Some(end)) => o >= *end,
            (_, None) => true,
            _ => false,
        });
        if done {
            break;
        }
    }
    Ok(out)
}

/// Filter dead letters by stage, kind or explicit positions.
pub fn select<'a>(
    letters: &'a [DeadLetter],
    stage: Option<&str>,
    kind: Option<&str>,
    positions: &[String],
) -> Vec<&'a DeadLetter> {
    letters
        .iter()
        .filter(|d| stage.is_none_or(|s| d.header(crate::runtime::dlq::H_STAGE) == Some(s)))
        .filter(|d| kind.is_none_or(|k| d.header(crate::runtime::dlq::H_ERROR_KIND) == Some(k)))
        .filter(|d| positions.is_empty() || positions.contains(&d.position()))
        .collect()
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub replayed: usize,
    pub already_replayed: usize,
    pub not_replayable: usize,
}

/// Send chosen dead letters back to their source topic, each at most once: every replay is
/// recorded in `dlq_replays`, so running the same replay twice sends nothing the second time.
pub async fn replay(config: &Config, pool: &PgPool, letters: &[&DeadLetter], dry_run: bool) -> anyhow::Result<ReplayOutcome> {
    let dlq_topic = config.topics.dlq.name.clone();
    let mut outcome = ReplayOutcome::default();
    let mut todo = Vec::new();
    for d in letters {
        let Some(source) = d.header(crate::runtime::dlq::H_SOURCE_TOPIC) else {
            outcome.not_replayable += 1;
            continue;
        };
        if d.header(crate::runtime::dlq::H_TRUNCATED).is_some() {
            // The original bytes are gone; sending a cut payload would only fail again.
            outcome.not_replayable += 1;
            continue;
        }
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT dlq_offset FROM dlq_replays WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3",
        )
        .bind(&dlq_topic)
        .bind(d.partition)
        .bind(d.offset)
        .fetch_optional(pool)
        .await?;
        if done.is_some() {
            outcome.already_replayed += 1;
        } else {
            todo.push((source.to_string(), *d));
        }
    }
    if dry_run || todo.is_empty() {
        outcome.replayed = if dry_run { todo.len() } else { 0 };
        return Ok(outcome);
    }
    let mut pc = base_client_config(config);
    pc.set("enable.idempotence", "true");
    let producer: BaseProducer<DeliveryTracker> = pc.create_with_context(DeliveryTracker::default())?;
    for (source, d) in &todo {
        let origin = format!("{dlq_topic}/{}", d.position());
        let headers = OwnedHeaders::new().insert(Header { key: "dlq.replayed_from", value: Some(origin.as_bytes()) });
        let mut record = BaseRecord::to(source).payload(&d.payload).headers(headers);
        if let Some(k) = &d.key {
            record = record.key(k);
        }
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = producer.context().failed.load(std::sync::atomic::Ordering::SeqCst);
    if failed > 0 {
        anyhow::bail!("{failed} replayed record(s) were not delivered; nothing recorded, run the replay again");
    }
    for (source, d) in &todo {
        sqlx::query(
            "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, source_topic) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&dlq_topic)
        .bind(d.partition)
        .bind(d.offset)
        .bind(source)
        .execute(pool)
        .await?;
    }
    outcome.replayed = todo.len();
    Ok(outcome)
}

/// A stage's consumer group and input topic, as the operator commands know them.
#[derive(Debug, Clone)]
pub struct StageInput {
    pub stage: &'static str,
    pub group: String,
    pub topic: String,
    /// Sink stages keep their offsets in `stage_offsets`, not in Kafka.
    pub offsets_in_database: bool,
}

pub fn stage_inputs(config: &Config) -> Vec<StageInput> {
    let s = |stage: &'static str, topic: &str, db: bool| StageInput {
        stage,
        group: config.group_id(stage),
        topic: topic.to_string(),
        offsets_in_database: db,
    };
    vec![
        s("enrich", &config.topics.raw.name, false),
        s("persist", &config.topics.enriched.name, true),
        s("rules", &config.topics.enriched.name, false),
        s("alert", &config.topics.rule_matches.name, true),
        s("compliance", &config.topics.enriched.name, false),
    ]
}

/// Lag of one partition of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub stage: &'static str,
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub end: i64,
    pub lag: i64,
}

/// (partition, committed offset in Kafka, low watermark, high watermark)
type Watermarked = (i32, Option<i64>, i64, i64);

/// Consumer lag per stage and partition; sink stages are measured against their stored offsets.
pub async fn lag(config: &Config, pool: Option<&PgPool>) -> anyhow::Result<Vec<PartitionLag>> {
    let mut out = Vec::new();
    for input in stage_inputs(config) {
        let stored: HashMap<i32, i64> = match (input.offsets_in_database, pool) {
            (true, Some(pool)) => {
                let rows: Vec<(i32, i64)> = sqlx::query_as(
                    "SELECT partition, next_offset FROM stage_offsets WHERE consumer_group = $1 AND topic = $2",
                )
                .bind(&input.group)
                .bind(&input.topic)
                .fetch_all(pool)
                .await
                .unwrap_or_default();
                rows.into_iter().collect()
            }
            _ => HashMap::new(),
        };
        let cfg = config.clone();
        let input2 = input.clone();
        let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Watermarked>> {
            let mut c = base_client_config(&cfg);
            c.set("group.id", &input2.group).set("enable.auto.commit", "false");
            let consumer: BaseConsumer = c.create()?;
            let metadata = consumer.fetch_metadata(Some(&input2.topic), TIMEOUT)?;
            let mut tpl = TopicPartitionList::new();
            for t in metadata.topics() {
                if t.error().is_some() {
                    continue;
                }
                for p in t.partitions() {
                    tpl.add_partition(&input2.topic, p.id());
                }
            }
            let committed = consumer.committed_offsets(tpl.clone(), TIMEOUT)?;
            let mut rows = Vec::new();
            for e in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(&input2.topic, e.partition(), TIMEOUT)?;
                let c = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                rows.push((e.partition(), c, low, high));
            }
            Ok(rows)
        })
        .await??;
        for (partition, kafka_committed, low, high) in rows {
            let committed = if input.offsets_in_database { stored.get(&partition).copied() } else { kafka_committed };
            let lag = high - committed.unwrap_or(low).max(low);
            out.push(PartitionLag { stage: input.stage, topic: input.topic.clone(), partition, committed, end: high, lag });
        }
    }
    Ok(out)
}

/// Move a stopped stage to the first offsets at or after `from`. Refuses while the group has
/// members: a running stage would overwrite the new position with its own commits.
pub async fn rewind_stage(
    config: &Config,
    pool: &PgPool,
    stage: &str,
    from: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let input = stage_inputs(config)
        .into_iter()
        .find(|s| s.stage == stage)
        .ok_or_else(|| anyhow::anyhow!("unknown stage {stage:?} (enrich, persist, rules, alert, compliance)"))?;
    let cfg = config.clone();
    let input2 = input.clone();
    let offsets = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
        let mut c = base_client_config(&cfg);
        c.set("group.id", &input2.group).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = c.create()?;
        let groups = consumer.fetch_group_list(Some(&input2.group), TIMEOUT)?;
        if let Some(g) = groups.groups().iter().find(|g| g.name() == input2.group) {
            if !g.members().is_empty() {
                anyhow::bail!(
                    "stage {} is running ({} member(s) in group {}); stop it before moving its position",
                    input2.stage,
                    g.members().len(),
                    input2.group
                );
            }
        }
        let metadata = consumer.fetch_metadata(Some(&input2.topic), TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&input2.topic, p.id(), Offset::Offset(from.timestamp_millis()))?;
            }
        }
        let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
        let mut out = Vec::new();
        let mut commit = TopicPartitionList::new();
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                // No message at or after `from`: start at the end.
                _ => consumer.fetch_watermarks(&input2.topic, e.partition(), TIMEOUT)?.1,
            };
            out.push((e.partition(), offset));
            commit.add_partition_offset(&input2.topic, e.partition(), Offset::Offset(offset))?;
        }
        if !input2.offsets_in_database {
            consumer.commit(&commit, rdkafka::consumer::CommitMode::Sync)?;
        }
        Ok(out)
    })
    .await??;
    if input.offsets_in_database {
        let mut tx = pool.begin().await?;
        for (partition, offset) in &offsets {
            sqlx::query(
                "INSERT INTO stage_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            )
            .bind(&input.group)
            .bind(&input.topic)
            .bind(partition)
            .bind(offset)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(offsets)
}
