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
    /// Header values as written: bytes, not necessarily UTF-8 (anyone who can write the DLQ
    /// chooses them).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    /// A header's value, when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
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
                            .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
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
    /// Refused for their destination: an unknown stage, or a source topic that is not the
    /// stage's input (without `--to`).
    pub refused: usize,
}

/// Why a dead letter is not sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRefusal {
    #[error("no or unknown dlq.stage header {0:?} (enrich, persist, rules, alert, compliance)")]
    UnknownStage(Option<String>),
    #[error("dlq.source.topic {header:?} is not the input topic {input:?} of stage {stage}; pass --to to choose")]
    SourceMismatch { stage: String, header: String, input: String },
}

/// `--to TOPIC` is accepted only when it is one of the stages' input topics: a replay must not
/// become a way to write anywhere.
pub fn check_replay_target(config: &Config, to: &str) -> Result<(), String> {
    let inputs = stage_inputs(config);
    if inputs.iter().any(|s| s.topic == to) {
        return Ok(());
    }
    let mut names: Vec<&str> = inputs.iter().map(|s| s.topic.as_str()).collect();
    names.dedup();
    Err(format!("--to {to:?} is not a stage's input topic ({})", names.join(", ")))
}

/// Where a dead letter goes back to: its stage's input topic from the configuration, never a
/// topic named by the message itself (whoever can write the DLQ could name any topic). A
/// `dlq.source.topic` that disagrees is refused unless the operator chose `to` (already
/// checked by [`check_replay_target`]).
pub fn replay_destination(config: &Config, d: &DeadLetter, to: Option<&str>) -> Result<String, ReplayRefusal> {
    let stage = d.header(crate::runtime::dlq::H_STAGE);
    let input = stage_inputs(config)
        .into_iter()
        .find(|s| Some(s.stage) == stage)
        .ok_or_else(|| ReplayRefusal::UnknownStage(stage.map(str::to_string)))?;
    if let Some(to) = to {
        return Ok(to.to_string());
    }
    match d.header(crate::runtime::dlq::H_SOURCE_TOPIC) {
        Some(header) if header != input.topic => Err(ReplayRefusal::SourceMismatch {
            stage: input.stage.to_string(),
            header: header.to_string(),
            input: input.topic,
        }),
        _ => Ok(input.topic),
    }
}

/// Send chosen dead letters back to their stage's input topic (see [`replay_destination`]),
/// each at most once: every replay is recorded in `dlq_replays`, so running the same replay
/// twice sends nothing the second time. Refusals are reported through `on_refused`.
pub async fn replay(
    config: &Config,
    pool: &PgPool,
    letters: &[&DeadLetter],
    to: Option<&str>,
    dry_run: bool,
    mut on_refused: impl FnMut(&DeadLetter, &ReplayRefusal),
) -> anyhow::Result<ReplayOutcome> {
    if let Some(to) = to {
        check_replay_target(config, to).map_err(|e| anyhow::Error::new(crate::cli::emit::InputError(e)))?;
    }
    let dlq_topic = config.topics.dlq.name.clone();
    let mut outcome = ReplayOutcome::default();
    let mut todo = Vec::new();
    for d in letters {
        if d.header(crate::runtime::dlq::H_TRUNCATED).is_some() {
            // The original bytes are gone; sending a cut payload would only fail again.
            outcome.not_replayable += 1;
            continue;
        }
        let destination = match replay_destination(config, d, to) {
            Ok(t) => t,
            Err(refusal) => {
                on_refused(d, &refusal);
                outcome.refused += 1;
                continue;
            }
        };
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
            todo.push((destination, *d));
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

/// Bytes from the DLQ made safe for a terminal: anyone who can write the topic chooses them,
/// and an escape sequence could rewrite the screen or the operator's clipboard. Invalid UTF-8
/// becomes `\xNN`; control characters (ESC, CR, DEL, C1) and bidirectional overrides become
/// `\u{..}`. `multiline` keeps line feeds and tabs (payloads); header lines escape them too.
pub fn printable(bytes: &[u8], multiline: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let keep = multiline && matches!(c, '\n' | '\t');
            if !keep && (c.is_control() || is_bidi_control(c)) {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Characters that reorder how text is displayed (the "Trojan Source" ones).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::dlq::{H_SOURCE_TOPIC, H_STAGE};
    use std::collections::HashMap;

    fn letter(headers: &[(&str, &[u8])]) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset: 7,
            key: None,
            payload: b"{}".to_vec(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
        }
    }

    #[test]
    fn terminal_escapes_and_invalid_utf8_are_shown_escaped() {
        let ansi = b"\x1b[2J\x1b]52;c;ZXZpbA==\x07{\"ok\":1}\r\nnext\tline";
        let shown = printable(ansi, true);
        assert!(!shown.chars().any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\r'), "{shown:?}");
        assert_eq!(shown, "\\u{1b}[2J\\u{1b}]52;c;ZXZpbA==\\u{7}{\"ok\":1}\\u{d}\nnext\tline");
        assert_eq!(printable(b"a\nb\tc", false), "a\\u{a}b\\u{9}c", "header lines stay one line");
        assert_eq!(printable(b"caf\xc3\xa9 \xff\xfe end", true), "café \\xff\\xfe end");
        assert_eq!(printable("x\u{202e}gnp.exe\u{9b}".as_bytes(), true), "x\\u{202e}gnp.exe\\u{9b}");
        assert_eq!(printable(b"plain {\"json\": true}", true), "plain {\"json\": true}");
    }

    #[test]
    fn replay_goes_to_the_stage_input_never_to_a_topic_the_message_names() {
        let c = Config::from_sources(None, &HashMap::new()).unwrap();
        let to = |headers: &[(&str, &[u8])], to: Option<&str>| replay_destination(&c, &letter(headers), to);
        for (stage, input) in [
            ("enrich", "audit-raw"),
            ("persist", "audit-enriched"),
            ("rules", "audit-enriched"),
            ("compliance", "audit-enriched"),
            ("alert", "audit-rule-matches"),
        ] {
            assert_eq!(to(&[(H_STAGE, stage.as_bytes()), (H_SOURCE_TOPIC, input.as_bytes())], None).as_deref(), Ok(input));
            assert_eq!(to(&[(H_STAGE, stage.as_bytes())], None).as_deref(), Ok(input), "no source header: the stage decides");
        }
        // An injected source topic is refused, whatever the stage.
        let forged = [(H_STAGE, b"enrich".as_slice()), (H_SOURCE_TOPIC, b"security-actions".as_slice())];
        assert!(matches!(to(&forged, None), Err(ReplayRefusal::SourceMismatch { .. })));
        // Unknown or missing stages are refused, even with --to.
        assert_eq!(to(&[(H_STAGE, b"evil")], None), Err(ReplayRefusal::UnknownStage(Some("evil".into()))));
        assert_eq!(to(&[(H_SOURCE_TOPIC, b"audit-raw")], Some("audit-raw")), Err(ReplayRefusal::UnknownStage(None)));
        assert!(to(&[(H_STAGE, b"enr\xffich")], None).is_err(), "a non-UTF-8 stage is unknown");
        // The operator may choose, but only among the stages' input topics.
        assert_eq!(to(&forged, Some("audit-raw")).as_deref(), Ok("audit-raw"));
        assert!(check_replay_target(&c, "audit-raw").is_ok());
        assert!(check_replay_target(&c, "audit-rule-matches").is_ok());
        let e = check_replay_target(&c, "security-actions").unwrap_err();
        assert!(e.contains("audit-raw") && e.contains("audit-enriched"), "{e}");
        assert!(check_replay_target(&c, "audit-dlq").is_err());
    }
}
