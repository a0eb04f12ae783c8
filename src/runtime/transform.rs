//! Topic → topic stages, exactly once.
//!
//! One loop, one thread: poll a batch, run the stage on each message, then in one Kafka
//! transaction produce the outputs and dead letters and commit the consumed offsets
//! (`send_offsets_to_transaction` with the group's metadata, so a zombie from an older group
//! generation is fenced by the broker). Rebalance callbacks run inside `poll`, i.e. between
//! transactions; a batch that straddles a rebalance is dropped and re-read from the committed
//! offsets. On a failed commit the transaction is aborted and the partitions rewound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::dlq::dead_letter;
use super::kafka::{consumer_config, subscribed_consumer, StageContext};
use super::{check_invalid_ratio, Backoff, InputMessage, OutputRecord, RuntimeError, Shutdown};
use crate::config::Config;
use crate::error::{Rejection, TransientError};
use crate::telemetry::{Health, Metrics};

/// Business logic of a topic → topic stage.
pub trait TransformStage: Send + 'static {
    /// Short name: used in the consumer group, metrics, logs and DLQ headers.
    fn name(&self) -> &'static str;
    /// Topics to consume.
    fn input_topics(&self) -> Vec<String>;
    /// Turn a batch into output records. Inputs that can never be processed are reported in
    /// `out.rejected` by index and dead-lettered. A [`TransientError`] fails the whole batch:
    /// nothing is committed and the same batch is offered again after a backoff, so a stage
    /// with external side effects must make them idempotent (keyed by event id).
    fn process_batch(&mut self, batch: &[InputMessage<'_>], out: &mut BatchOutput) -> Result<(), TransientError>;

    /// Called about once a second, between batches and when idle, for time-driven output
    /// (e.g. absence rules). Records it appends are committed in a transaction of their own.
    fn on_tick(&mut self, _now: chrono::DateTime<chrono::Utc>, _out: &mut BatchOutput) -> Result<(), TransientError> {
        Ok(())
    }
}

/// What a stage produced for one batch.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub records: Vec<OutputRecord>,
    /// (index in the batch, why it was rejected)
    pub rejected: Vec<(usize, Rejection)>,
}

impl BatchOutput {
    pub fn clear(&mut self) {
        self.records.clear();
        self.rejected.clear();
    }
}

/// Logic that looks at one message at a time, with no I/O: the common case.
pub trait MessageTransform: Send + 'static {
    fn name(&self) -> &'static str;
    fn input_topics(&self) -> Vec<String>;
    /// Append the records this message produces to `out`, or reject it.
    fn process(&mut self, input: &InputMessage<'_>, out: &mut Vec<OutputRecord>) -> Result<(), Rejection>;
}

/// Runs a [`MessageTransform`] as a [`TransformStage`].
pub struct PerMessage<T>(pub T);

impl<T: MessageTransform> TransformStage for PerMessage<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn input_topics(&self) -> Vec<String> {
        self.0.input_topics()
    }
    fn process_batch(&mut self, batch: &[InputMessage<'_>], out: &mut BatchOutput) -> Result<(), TransientError> {
        for (i, input) in batch.iter().enumerate() {
            if let Err(r) = self.0.process(input, &mut out.records) {
                out.rejected.push((i, r));
            }
        }
        Ok(())
    }
}

/// Consumed-offset range of one partition within a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionRange {
    pub first: i64,
    pub last: i64,
}

/// Offsets consumed in a batch, per partition. A batch touches few partitions, so a linear
/// scan beats hashing a freshly allocated key per message.
#[derive(Debug, Default)]
pub(crate) struct BatchOffsets(Vec<(String, i32, PartitionRange)>);

impl BatchOffsets {
    pub fn clear(&mut self) {
        self.0.clear();
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, PartitionRange)> {
        self.0.iter().map(|(t, p, r)| (t.as_str(), *p, *r))
    }
}

/// A batch closes when no message arrived for this long…
const QUIET_GAP: Duration = Duration::from_millis(5);
/// …but not before it has been open this long, so a trickle still forms batches.
const MIN_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Poll until the batch is full, `max_wait` has passed since its first message, or the input
/// went quiet. Returns
/// no start time when nothing arrived within 100 ms (the caller then checks for shutdown).
pub(crate) fn poll_batch<'c, C: rdkafka::consumer::ConsumerContext>(
    consumer: &'c BaseConsumer<C>,
    stage: &str,
    max_messages: usize,
    max_wait: Duration,
) -> (Vec<BorrowedMessage<'c>>, Option<Instant>) {
    let mut messages = Vec::with_capacity(max_messages);
    let mut started: Option<Instant> = None;
    while messages.len() < max_messages {
        let timeout = match started {
            // Once a batch has begun, a short quiet gap closes it: under light load a batch
            // does not sit out the whole window (latency), under heavy load the queue is never
            // empty and batches fill up (throughput).
            Some(t) => match max_wait.checked_sub(t.elapsed()) {
                Some(left) => left.min(QUIET_GAP),
                None => break,
            },
            None => Duration::from_millis(100),
        };
        match consumer.poll(timeout) {
            None => {
                if started.is_some_and(|t| t.elapsed() >= MIN_BATCH_WINDOW) || started.is_none() {
                    break;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(stage, error = %e, "consume error");
                if started.is_none() {
                    break;
                }
            }
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                messages.push(m);
            }
        }
    }
    (messages, started)
}

/// The stage's view of a batch, noting each partition's offset range and per-topic counts.
pub(crate) fn as_inputs<'m>(
    messages: &'m [BorrowedMessage<'_>],
    offsets: &mut BatchOffsets,
    consumed_per_topic: &mut Vec<(String, u64)>,
) -> Vec<InputMessage<'m>> {
    messages
        .iter()
        .map(|m| {
            track_offset(offsets, m.topic(), m.partition(), m.offset());
            count_topic(consumed_per_topic, m.topic());
            InputMessage {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                payload: m.payload().unwrap_or(&[]),
            }
        })
        .collect()
}

/// Per-topic message count without allocating per message (batches have one or two topics).
pub(crate) fn count_topic(counts: &mut Vec<(String, u64)>, topic: &str) {
    match counts.iter_mut().find(|(t, _)| t == topic) {
        Some((_, n)) => *n += 1,
        None => counts.push((topic.to_string(), 1)),
    }
}

pub(crate) fn track_offset(offsets: &mut BatchOffsets, topic: &str, partition: i32, offset: i64) {
    match offsets.0.iter_mut().find(|(t, p, _)| *p == partition && t == topic) {
        Some((_, _, r)) => r.last = offset,
        None => offsets.0.push((topic.to_string(), partition, PartitionRange { first: offset, last: offset })),
    }
}

/// Run a transform stage until `shutdown` trips or a fatal error occurs.
pub fn run_transform<S: TransformStage>(
    config: &Config,
    mut stage: S,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let name = stage.name();
    let group_id = config.group_id(name);
    let dlq_topic: Arc<str> = Arc::from(config.topics.dlq.name.as_str());
    let context = StageContext::new(
        name,
        metrics.clone(),
        None,
        super::kafka::start_offset(config),
        shutdown.clone(),
        config.stage.retry_max_backoff_ms,
    );
    let inputs = stage.input_topics();
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let consumer = subscribed_consumer(&consumer_config(config, &group_id), context, &input_refs)?;

    let transactional_id = format!("{group_id}-{}", config.instance_id());
    let mut producer_config = super::kafka::base_client_config(config);
    producer_config
        .set("transactional.id", &transactional_id)
        .set("enable.idempotence", "true")
        .set("transaction.timeout.ms", config.stage.transaction_timeout_ms.to_string())
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in &config.kafka.librdkafka {
        producer_config.set(k, v);
    }
    let producer: BaseProducer<DefaultProducerContext> = producer_config.create()?;
    let mut backoff = Backoff::new(config.stage.retry_max_backoff_ms);
    loop {
        // Short attempts: librdkafka's logs and errors (e.g. a failed authentication) are only
        // delivered between calls, and shutdown is only noticed between them too.
        match producer.init_transactions(Duration::from_secs(5)) {
            Ok(()) => break,
            Err(e) if is_fatal(&e) => return Err(RuntimeError::FatalKafka(e.to_string())),
            Err(e) => {
                metrics.retries.with_label_values(&[name, "init_transactions"]).inc();
                producer.poll(Duration::ZERO);
                tracing::warn!(stage = name, error = %e, "init_transactions failed; retrying");
                if shutdown.is_triggered() {
                    return Ok(());
                }
                std::thread::sleep(backoff.next_delay());
            }
        }
    }
    backoff.reset();
    tracing::info!(stage = name, group = %group_id, %transactional_id, topics = ?inputs, "stage running");
    health.set_ready(true);

    let max_messages = config.stage.batch_max_messages;
    let max_wait = Duration::from_millis(config.stage.batch_max_wait_ms);
    let mut output = BatchOutput::default();
    let mut offsets = BatchOffsets::default();

    let mut last_tick = Instant::now();
    while !shutdown.is_triggered() {
        health.heartbeat();
        if last_tick.elapsed() >= TICK_INTERVAL {
            last_tick = Instant::now();
            tick(&mut stage, &producer, &metrics, &mut backoff)?;
        }
        output.clear();
        offsets.clear();
        let generation = consumer.context().generation();
        let (messages, started) = poll_batch(&consumer, name, max_messages, max_wait);
        let Some(started) = started else { continue };
        let consumed = messages.len();
        let mut consumed_per_topic: Vec<(String, u64)> = Vec::new();
        let inputs = as_inputs(&messages, &mut offsets, &mut consumed_per_topic);

        // Transient failures (Redis, database) retry the same batch; nothing is committed.
        let mut processed = false;
        loop {
            output.clear();
            match stage.process_batch(&inputs, &mut output) {
                Ok(()) => {
                    processed = true;
                    break;
                }
                Err(e) => {
                    metrics.retries.with_label_values(&[name, e.cause]).inc();
                    tracing::warn!(stage = name, error = %e, messages = consumed, "batch failed; retrying");
                    if shutdown.is_triggered() {
                        break;
                    }
                    health.heartbeat();
                    std::thread::sleep(backoff.next_delay());
                }
            }
        }
        if !processed {
            break; // shutting down mid-outage: nothing committed, the batch is re-read later
        }
        let invalid = output.rejected.len();
        for (index, rejection) in &output.rejected {
            let Some(input) = inputs.get(*index) else { continue };
            metrics.dlq.with_label_values(&[name, rejection.kind.as_str()]).inc();
            tracing::debug!(stage = name, partition = input.partition, offset = input.offset, %rejection, "dead-lettered");
            output.records.push(dead_letter(&dlq_topic, name, input, rejection));
        }
        let last_rejection = output.rejected.last().map(|(_, r)| r.clone());
        if consumer.context().generation() != generation {
            // Partitions moved while the batch was read: its offsets may belong to another
            // member now. Drop it; the new assignment re-reads from committed offsets.
            tracing::info!(stage = name, dropped = consumed, "batch straddled a rebalance; dropped");
            metrics.commits.with_label_values(&[name, "dropped_on_rebalance"]).inc();
            continue;
        }
        check_invalid_ratio(name, &config.stage, invalid, consumed, last_rejection.as_ref())?;

        match commit_transaction(&producer, &consumer, &output.records, &offsets, config) {
            Ok(()) => {
                backoff.reset();
                metrics.commits.with_label_values(&[name, "committed"]).inc();
                let positions: Vec<(String, i32, i64)> =
                    offsets.iter().map(|(t, p, r)| (t.to_string(), p, r.last + 1)).collect();
                super::kafka::store_committed(&consumer, &positions);
                for (topic, n) in &consumed_per_topic {
                    metrics.consumed.with_label_values(&[name, topic]).inc_by(*n);
                }
                let mut per_topic: HashMap<&str, u64> = HashMap::new();
                for o in &output.records {
                    *per_topic.entry(&o.topic).or_default() += 1;
                }
                for (topic, n) in per_topic {
                    metrics.produced.with_label_values(&[name, topic]).inc_by(n);
                }
                metrics.batch_size.with_label_values(&[name]).observe(consumed as f64);
                metrics.batch_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
                metrics.observe_end_to_end(name, inputs.iter().map(|i| i.timestamp_ms));
            }
            Err(e) if is_fatal(&e) => {
                metrics.commits.with_label_values(&[name, "fatal"]).inc();
                return Err(RuntimeError::FatalKafka(e.to_string()));
            }
            Err(e) => {
                metrics.commits.with_label_values(&[name, "aborted"]).inc();
                metrics.retries.with_label_values(&[name, "transaction"]).inc();
                tracing::warn!(stage = name, error = %e, messages = consumed, "transaction failed; aborting and re-reading the batch");
                if let Err(abort_err) = producer.abort_transaction(Duration::from_secs(30)) {
                    if is_fatal(&abort_err) {
                        return Err(RuntimeError::FatalKafka(abort_err.to_string()));
                    }
                    tracing::warn!(stage = name, error = %abort_err, "abort_transaction failed");
                }
                rewind(&consumer, &offsets);
                std::thread::sleep(backoff.next_delay());
            }
        }
    }

    tracing::info!(stage = name, "shutting down: leaving the consumer group");
    health.set_ready(false);
    consumer.unsubscribe();
    drop(consumer);
    drop(producer);
    Ok(())
}

const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Run the stage's timer hook and commit what it produced (no input offsets involved).
fn tick<S: TransformStage>(
    stage: &mut S,
    producer: &BaseProducer<DefaultProducerContext>,
    metrics: &Metrics,
    backoff: &mut Backoff,
) -> Result<(), RuntimeError> {
    let name = stage.name();
    let mut out = BatchOutput::default();
    if let Err(e) = stage.on_tick(chrono::Utc::now(), &mut out) {
        metrics.retries.with_label_values(&[name, e.cause]).inc();
        tracing::warn!(stage = name, error = %e, "tick failed; will try again");
        return Ok(());
    }
    if out.records.is_empty() {
        return Ok(());
    }
    let result = producer.begin_transaction().and_then(|()| {
        for record in &out.records {
            send_with_backpressure(producer, record)?;
        }
        super::kafka::await_deliveries(producer, Duration::from_secs(30))?;
        producer.commit_transaction(Duration::from_secs(30))
    });
    match result {
        Ok(()) => {
            for r in &out.records {
                metrics.produced.with_label_values(&[name, &r.topic]).inc();
            }
            Ok(())
        }
        Err(e) if is_fatal(&e) => Err(RuntimeError::FatalKafka(e.to_string())),
        Err(e) => {
            tracing::warn!(stage = name, error = %e, "tick transaction failed; aborting");
            let _ = producer.abort_transaction(Duration::from_secs(30));
            std::thread::sleep(backoff.next_delay());
            Ok(())
        }
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fatal) | Some(RDKafkaErrorCode::ProducerFenced) | Some(RDKafkaErrorCode::InvalidProducerEpoch)
        ),
    }
}

/// Produce `outputs` and commit `offsets` atomically.
fn commit_transaction(
    producer: &BaseProducer<DefaultProducerContext>,
    consumer: &BaseConsumer<StageContext>,
    outputs: &[OutputRecord],
    offsets: &BatchOffsets,
    config: &Config,
) -> Result<(), KafkaError> {
    let timeout = Duration::from_millis(config.stage.transaction_timeout_ms);
    producer.begin_transaction()?;
    for record in outputs {
        send_with_backpressure(producer, record)?;
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, range) in offsets.iter() {
        tpl.add_partition_offset(topic, partition, Offset::Offset(range.last + 1))?;
    }
    // Only absent before the consumer joined a group; treated as a retriable failure.
    let group = consumer.group_metadata().ok_or(KafkaError::Rebalance(RDKafkaErrorCode::State))?;
    producer.send_offsets_to_transaction(&tpl, &group, timeout)?;
    super::kafka::await_deliveries(producer, timeout)?;
    producer.commit_transaction(timeout)?;
    Ok(())
}

/// Send one record; when librdkafka's queue is full, serve deliveries and try again.
pub(crate) fn send_with_backpressure<C>(producer: &BaseProducer<C>, record: &OutputRecord) -> Result<(), KafkaError>
where
    C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>,
{
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (k, v) in &record.headers {
        headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
    }
    let mut base = BaseRecord::to(&record.topic).payload(record.payload.as_slice()).headers(headers);
    if let Some(key) = &record.key {
        base = base.key(key.as_slice());
    }
    if let Some(ts) = record.timestamp_ms {
        base = base.timestamp(ts);
    }
    loop {
        match producer.send(base) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                base = returned;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Move each partition of an aborted batch back to its first message.
fn rewind(consumer: &BaseConsumer<StageContext>, offsets: &BatchOffsets) {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, range) in offsets.iter() {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(range.first));
    }
    if let Err(e) = consumer.seek_partitions(tpl, Duration::from_secs(10)) {
        // A partition may have been revoked meanwhile; its new owner starts from the commit.
        tracing::warn!(error = %e, "rewind after abort failed");
    }
}
