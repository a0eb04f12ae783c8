//! Topic → topic stages, exactly once.
//!
//! One loop, one thread: poll a batch, run the stage on each message, then in one Kafka
//! transaction produce the outputs and dead letters and commit the consumed offsets
//! (`send_offsets_to_transaction` with the group's metadata, so a zombie from an older group
//! generation is fenced by the broker). Rebalance callbacks run inside `poll`, i.e. between
//! transactions; a batch that straddles a rebalance is dropped and re-read from the committed
//! offsets. On a failed commit the transaction is aborted and the partitions rewound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::KeyValue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::dlq::dead_letter;
use super::kafka::{StageContext, TransactionDeliveries};
use super::{check_invalid_ratio, Backoff, InputMessage, OutputRecord, RuntimeError, Shutdown};
use crate::config::Config;
use crate::error::{Rejection, RejectionKind, TransientError};
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
    /// The input (index in the batch) each record came from, where the stage said so: a record
    /// the broker refuses is replaced by its input's dead letter, and a record carries its
    /// input's trace context.
    origins: Vec<Option<usize>>,
    /// Inputs whose trace span is recording (ascending), set by the runtime.
    recording: Vec<usize>,
    /// What the stage said about those inputs, for their spans.
    notes: Vec<(usize, &'static str, String)>,
}

impl BatchOutput {
    pub fn clear(&mut self) {
        self.records.clear();
        self.rejected.clear();
        self.origins.clear();
        self.notes.clear();
    }

    /// Whether input `index` is traced: only then is [`note`](Self::note) worth computing.
    pub fn recording(&self, index: usize) -> bool {
        !self.recording.is_empty() && self.recording.binary_search(&index).is_ok()
    }

    /// An attribute for input `index`'s trace span (e.g. the rules that matched). Ids and
    /// codes only, no personal or free-text values: they go to the trace backend.
    pub fn note(&mut self, index: usize, key: &'static str, value: impl Into<String>) {
        if self.recording(index) {
            self.notes.push((index, key, value.into()));
        }
    }

    /// Put each input's trace context on the records made from it (unless a record has its own).
    fn stamp_trace_context(&mut self, inputs: &[InputMessage<'_>]) {
        for (record, origin) in self.records.iter_mut().zip(&self.origins) {
            let Some(input) = origin.and_then(|o| inputs.get(o)) else { continue };
            if input.trace.is_some() && !record.headers.iter().any(|(k, _)| *k == crate::trace::TRACEPARENT) {
                record.headers.extend(input.trace_headers());
            }
        }
    }

    /// Per input: records made from it, and the rejection kind if it was dead-lettered.
    fn fates(&self, inputs: usize, dlq_topic: &str) -> Vec<(usize, Option<&'static str>)> {
        let mut fates = vec![(0usize, None); inputs];
        for (record, origin) in self.records.iter().zip(&self.origins) {
            let Some(fate) = origin.and_then(|o| fates.get_mut(o)) else { continue };
            if *record.topic == *dlq_topic {
                let kind = record.headers.iter().find(|(k, _)| *k == super::dlq::H_ERROR_KIND).map(|(_, v)| v.as_slice());
                fate.1 = Some(kind.and_then(crate::error::RejectionKind::from_bytes).map_or("rejected", |k| k.as_str()));
            } else {
                fate.0 += 1;
            }
        }
        fates
    }

    /// The records appended since the last call came from input `index` of the batch.
    pub fn attribute(&mut self, index: usize) {
        self.origins.resize(self.records.len(), Some(index));
    }

    /// Records appended since the last [`attribute`](Self::attribute) came from no one input.
    pub fn close_attribution(&mut self) {
        self.origins.resize(self.records.len(), None);
    }

    /// Append a record that came from input `index`.
    pub fn push_attributed(&mut self, index: usize, record: OutputRecord) {
        self.close_attribution();
        self.records.push(record);
        self.origins.push(Some(index));
    }

    /// The input record `record` came from, if known.
    pub fn origin(&self, record: usize) -> Option<usize> {
        self.origins.get(record).copied().flatten()
    }
}

/// Logic that looks at one message at a time, with no I/O: the common case.
pub trait MessageTransform: Send + 'static {
    fn name(&self) -> &'static str;
    fn input_topics(&self) -> Vec<String>;
    /// Append the records this message produces to `out`, or reject it.
    fn process(&mut self, input: &InputMessage<'_>, out: &mut Vec<OutputRecord>) -> Result<(), Rejection>;
    /// Attributes for the trace span of a recorded message, given the records it produced.
    fn describe(&self, _input: &InputMessage<'_>, _records: &[OutputRecord]) -> Vec<(&'static str, String)> {
        Vec::new()
    }
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
            let before = out.records.len();
            if let Err(r) = self.0.process(input, &mut out.records) {
                out.rejected.push((i, r));
            }
            if out.recording(i) {
                for (key, value) in self.0.describe(input, out.records.get(before..).unwrap_or_default()) {
                    out.note(i, key, value);
                }
            }
            out.attribute(i);
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
            let (trace, tracestate) = super::traces::incoming(m);
            track_offset(offsets, m.topic(), m.partition(), m.offset());
            count_topic(consumed_per_topic, m.topic());
            InputMessage {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                payload: m.payload().unwrap_or(&[]),
                trace,
                tracestate,
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

/// A transactional producer that remembers which records the broker refused.
type TxnProducer = BaseProducer<TransactionDeliveries>;

/// The settings of the stage's transactional producer.
fn transactional_config(config: &Config, transactional_id: &str) -> rdkafka::ClientConfig {
    let mut producer_config = super::kafka::producer_config(config);
    producer_config
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("transaction.timeout.ms", config.stage.transaction_timeout_ms.to_string())
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in &config.kafka.librdkafka {
        producer_config.set(k, v);
    }
    producer_config
}

/// Create a transactional producer and register its transactional id (which fences any
/// earlier producer with the same id), retrying while the broker is unreachable. `None` when
/// shutdown came first.
fn transactional_producer(
    producer_config: &rdkafka::ClientConfig,
    name: &'static str,
    retry_max_backoff_ms: u64,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<Option<TxnProducer>, RuntimeError> {
    let producer: TxnProducer = producer_config.create_with_context(TransactionDeliveries::default())?;
    let mut backoff = Backoff::new(retry_max_backoff_ms);
    loop {
        // Short attempts: librdkafka's logs and errors (e.g. a failed authentication) are only
        // delivered between calls, and shutdown is only noticed between them too.
        match producer.init_transactions(Duration::from_secs(5)) {
            Ok(()) => return Ok(Some(producer)),
            Err(e) if is_fatal(&e) => return Err(RuntimeError::FatalKafka(e.to_string())),
            Err(e) => {
                metrics.retries.with_label_values(&[name, "init_transactions"]).inc();
                producer.poll(Duration::ZERO);
                tracing::warn!(stage = name, error = %e, "init_transactions failed; retrying");
                if shutdown.is_triggered() {
                    return Ok(None);
                }
                std::thread::sleep(backoff.next_delay());
            }
        }
    }
}

/// A producer that hit a fatal error is replaced this many times in a row (without a commit
/// in between) before the stage gives up and exits for its supervisor.
const MAX_PRODUCER_RESTARTS: u32 = 5;

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
    let inputs = stage.input_topics();
    let consumer = super::kafka::stage_consumer(config, name, &inputs, None, &metrics, &health, &shutdown)?;

    let transactional_id = format!("{group_id}-{}", config.instance_id());
    let producer_config = transactional_config(config, &transactional_id);
    let retry_max_backoff_ms = config.stage.retry_max_backoff_ms;
    let Some(producer) = transactional_producer(&producer_config, name, retry_max_backoff_ms, &metrics, &shutdown)? else {
        return Ok(());
    };
    let mut txns = Transactions {
        producer,
        producer_config,
        retry_max_backoff_ms,
        stage: name,
        dlq_topic: dlq_topic.clone(),
        timeout: Duration::from_millis(config.stage.transaction_timeout_ms),
        health: health.clone(),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        produced_at: std::cell::Cell::new(None),
    };
    let mut backoff = Backoff::new(config.stage.retry_max_backoff_ms);
    tracing::info!(stage = name, group = %group_id, %transactional_id, topics = ?inputs, "stage running");
    health.set_ready(true);

    let max_messages = config.stage.batch_max_messages;
    let max_wait = Duration::from_millis(config.stage.batch_max_wait_ms);
    let mut output = BatchOutput::default();
    let mut offsets = BatchOffsets::default();
    let mut producer_restarts = 0u32;

    let mut last_tick = Instant::now();
    while !shutdown.is_triggered() {
        health.heartbeat();
        if last_tick.elapsed() >= TICK_INTERVAL {
            last_tick = Instant::now();
            tick(&mut stage, &mut txns, &mut backoff)?;
        }
        output.clear();
        offsets.clear();
        let generation = consumer.context().generation();
        let (messages, started) = poll_batch(&consumer, name, max_messages, max_wait);
        let Some(started) = started else { continue };
        health.input_waiting();
        let consumed = messages.len();
        let mut consumed_per_topic: Vec<(String, u64)> = Vec::new();
        let mut inputs = as_inputs(&messages, &mut offsets, &mut consumed_per_topic);
        let mut traces = super::traces::begin(name, &group_id, started, &mut inputs);
        output.recording = traces.as_ref().map(|t| t.recording()).unwrap_or_default();

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
        output.close_attribution();
        output.stamp_trace_context(&inputs);
        if let Some(t) = &mut traces {
            for (index, key, value) in std::mem::take(&mut output.notes) {
                t.note(index, key, value);
            }
            t.phase_until("process", SystemTime::now(), vec![KeyValue::new("auditflow.records", output.records.len() as i64)]);
        }
        let invalid = output.rejected.len();
        let rejected = std::mem::take(&mut output.rejected);
        for (index, rejection) in &rejected {
            let Some(input) = inputs.get(*index) else { continue };
            metrics.dlq.with_label_values(&[name, rejection.kind.as_str()]).inc();
            tracing::debug!(stage = name, partition = input.partition, offset = input.offset, %rejection, "dead-lettered");
            output.push_attributed(*index, dead_letter(&dlq_topic, name, input, rejection));
        }
        let last_rejection = rejected.last().map(|(_, r)| r.clone());
        if consumer.context().generation() != generation {
            // Partitions moved while the batch was read: its offsets may belong to another
            // member now. Drop it; the new assignment re-reads from committed offsets.
            tracing::info!(stage = name, dropped = consumed, "batch straddled a rebalance; dropped");
            metrics.commits.with_label_values(&[name, "dropped_on_rebalance"]).inc();
            continue;
        }

        match txns.commit(Some(&consumer), &mut output, Some(&offsets), &inputs) {
            TxnOutcome::Committed => {
                if let Some(mut t) = traces.take() {
                    let records = KeyValue::new("auditflow.records", output.records.len() as i64);
                    let produced = txns.produced_at.take().unwrap_or_else(SystemTime::now);
                    t.phase_until("produce", produced, vec![records.clone()]);
                    t.phase_until("commit", SystemTime::now(), vec![KeyValue::new("auditflow.partitions", offsets.len() as i64)]);
                    let fates = output.fates(inputs.len(), &dlq_topic);
                    let dead = fates.iter().filter(|f| f.1.is_some()).count() as i64;
                    t.finish(&fates, vec![records, KeyValue::new("auditflow.dead_letters", dead)]);
                }
                backoff.reset();
                producer_restarts = 0;
                health.progressed();
                metrics.last_commit.with_label_values(&[name]).set(crate::telemetry::now_ms() / 1000);
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
                // Judged after the commit: the batch that trips the guard is dead-lettered and
                // committed, so a restart moves on instead of failing on it again for ever.
                check_invalid_ratio(name, &config.stage, invalid, consumed, last_rejection.as_ref())?;
            }
            TxnOutcome::Fatal(e) => {
                metrics.commits.with_label_values(&[name, "fatal"]).inc();
                rewind(&consumer, &offsets);
                if !is_recoverable_fatal(&e) || producer_restarts >= MAX_PRODUCER_RESTARTS {
                    return Err(RuntimeError::FatalKafka(e.to_string()));
                }
                producer_restarts += 1;
                tracing::error!(stage = name, error = %e, attempt = producer_restarts, "producer hit a fatal error; replacing it");
                std::thread::sleep(backoff.next_delay());
                if !txns.renew()? {
                    break;
                }
            }
            TxnOutcome::Retry(e) => {
                metrics.retries.with_label_values(&[name, "transaction"]).inc();
                tracing::warn!(stage = name, error = %e, messages = consumed, "transaction failed; re-reading the batch");
                rewind(&consumer, &offsets);
                std::thread::sleep(backoff.next_delay());
            }
            TxnOutcome::Refused { .. } => unreachable!("Transactions::commit resolves refusals"),
        }
    }

    tracing::info!(stage = name, "shutting down: leaving the consumer group");
    health.set_ready(false);
    consumer.unsubscribe();
    drop(consumer);
    drop(txns);
    Ok(())
}

const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Run the stage's timer hook and commit what it produced (no input offsets involved).
fn tick<S: TransformStage>(stage: &mut S, txns: &mut Transactions, backoff: &mut Backoff) -> Result<(), RuntimeError> {
    let name = stage.name();
    let mut out = BatchOutput::default();
    if let Err(e) = stage.on_tick(chrono::Utc::now(), &mut out) {
        txns.metrics.retries.with_label_values(&[name, e.cause]).inc();
        tracing::warn!(stage = name, error = %e, "tick failed; will try again");
        return Ok(());
    }
    out.close_attribution();
    if out.records.is_empty() {
        return Ok(());
    }
    match txns.commit::<StageContext>(None, &mut out, None, &[]) {
        TxnOutcome::Committed => {
            for r in &out.records {
                txns.metrics.produced.with_label_values(&[name, &r.topic]).inc();
            }
            Ok(())
        }
        TxnOutcome::Fatal(e) => Err(RuntimeError::FatalKafka(e.to_string())),
        TxnOutcome::Retry(e) => {
            tracing::warn!(stage = name, error = %e, "tick transaction failed; will try again");
            std::thread::sleep(backoff.next_delay());
            Ok(())
        }
        TxnOutcome::Refused { .. } => unreachable!("Transactions::commit resolves refusals"),
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

/// A fatal producer error that a fresh producer (same transactional id) gets past: anything
/// but being fenced by another live instance, or not being allowed to write at all.
fn is_recoverable_fatal(e: &KafkaError) -> bool {
    let fenced = matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::ProducerFenced));
    !fenced && !super::kafka::is_authorization_failure(e)
}

/// A transaction error caused by the broker refusing a record for good: that record, when
/// `culprit` names it, or some record to be found (`certain: false`).
fn refusal(e: &KafkaError, culprit: Option<usize>) -> Option<TxnOutcome> {
    if !super::kafka::is_record_refusal(e) {
        return None;
    }
    Some(match culprit {
        Some(i) => TxnOutcome::Refused { records: vec![(i, e.clone())], certain: true, by_broker: true },
        None => TxnOutcome::Refused { records: Vec::new(), certain: false, by_broker: true },
    })
}

fn is_retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(rd) => rd.is_retriable(),
        _ => false,
    }
}

/// How a transaction ended. Every outcome but `Committed` left it aborted (or the producer
/// unusable, for `Fatal`).
#[derive(Debug)]
enum TxnOutcome {
    Committed,
    /// These records (index in the transaction) were refused for good: by librdkafka before
    /// sending, or `by_broker`. Not `certain` when the broker refused a whole message set for
    /// one bad record in it, not known yet.
    /// Only [`Transactions::attempt`] reports this; [`Transactions::commit`] resolves it.
    Refused { records: Vec<(usize, KafkaError)>, certain: bool, by_broker: bool },
    /// Transient: re-read and try again after a backoff.
    Retry(String),
    /// The producer cannot go on.
    Fatal(KafkaError),
}

/// A stage's transactional producer and what each of its transactions needs.
struct Transactions {
    producer: TxnProducer,
    producer_config: rdkafka::ClientConfig,
    retry_max_backoff_ms: u64,
    stage: &'static str,
    dlq_topic: Arc<str>,
    timeout: Duration,
    health: Arc<Health>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    /// When the last attempt had every record delivered and was about to commit (the end of
    /// a batch's produce phase in its trace).
    produced_at: std::cell::Cell<Option<SystemTime>>,
}

impl Transactions {
    /// Replace the producer by a fresh one with the same transactional id: its init fences
    /// the old one and starts a new producer epoch. False when shutdown came first.
    fn renew(&mut self) -> Result<bool, RuntimeError> {
        match transactional_producer(&self.producer_config, self.stage, self.retry_max_backoff_ms, &self.metrics, &self.shutdown)? {
            Some(p) => {
                self.producer = p;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Commit `output` (and `offsets`) atomically. A record the broker refuses for good is
    /// replaced by its input's dead letter (or its own, for timer output) and the transaction
    /// is tried again at once, so one bad record never holds up its batch.
    fn commit<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        consumer: Option<&BaseConsumer<C>>,
        output: &mut BatchOutput,
        offsets: Option<&BatchOffsets>,
        inputs: &[InputMessage<'_>],
    ) -> TxnOutcome {
        let mut one_by_one = false;
        loop {
            match self.attempt(consumer, &output.records, offsets, one_by_one) {
                TxnOutcome::Refused { records, certain, by_broker } => {
                    self.metrics.commits.with_label_values(&[self.stage, "aborted"]).inc();
                    if certain {
                        output.dead_letter_refused(&records, inputs, self);
                        one_by_one = false;
                    } else if one_by_one {
                        return TxnOutcome::Retry("the broker refused records sent one by one, none alone".into());
                    } else {
                        // The broker refused a message set: find the record by sending them
                        // one message set each.
                        tracing::warn!(stage = self.stage, records = output.records.len(), "broker refused a record; finding it");
                        one_by_one = true;
                    }
                    // After the broker refuses a record, librdkafka's sequence numbers stay
                    // broken into the next transaction: go on with a fresh producer.
                    if by_broker {
                        match self.renew() {
                            Ok(true) => {}
                            Ok(false) => return TxnOutcome::Retry("shutting down".into()),
                            Err(e) => return TxnOutcome::Retry(e.to_string()),
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// One attempt at a transaction. With `one_by_one`, each record waits for the one before
    /// it to be acknowledged, so a refusal can only be the last record sent.
    ///
    /// librdkafka's rules: a retriable error from a transactional call means "call it again" (an
    /// abort then would conflict with the commit still in progress); an abortable one means
    /// "abort, then start over"; a fatal one means the producer is finished.
    fn attempt<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: Option<&BaseConsumer<C>>,
        outputs: &[OutputRecord],
        offsets: Option<&BatchOffsets>,
        one_by_one: bool,
    ) -> TxnOutcome {
        let producer = &self.producer;
        // Calls block for at most this long, so shutdown and liveness are seen between them.
        let step = self.timeout.min(Duration::from_secs(10));
        let _ = producer.context().take_failures();
        if let Err(e) = producer.begin_transaction() {
            return if is_fatal(&e) { TxnOutcome::Fatal(e) } else { TxnOutcome::Retry(e.to_string()) };
        }
        let mut refused: Vec<(usize, KafkaError)> = Vec::new();
        for (i, record) in outputs.iter().enumerate() {
            match send_record(producer, record, i) {
                // librdkafka checks the size itself, before anything is sent.
                Err(e) if super::kafka::is_record_refusal(&e) => refused.push((i, e)),
                // The transaction failed on an earlier record: its cause says whether one was
                // refused, and one by one, which.
                Err(e) => return self.failed(i.checked_sub(1).filter(|_| one_by_one), format!("produce: {e}")),
                Ok(()) if one_by_one => {
                    if let Err(e) = self.await_deliveries(step) {
                        return self.abort(TxnOutcome::Retry(e));
                    }
                }
                Ok(()) => {}
            }
        }
        if !refused.is_empty() {
            return self.abort(TxnOutcome::Refused { records: refused, certain: true, by_broker: false });
        }
        if let (Some(consumer), Some(offsets)) = (consumer, offsets) {
            let mut tpl = TopicPartitionList::with_capacity(offsets.len());
            for (topic, partition, range) in offsets.iter() {
                if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(range.last + 1)) {
                    return self.abort(TxnOutcome::Retry(e.to_string()));
                }
            }
            // Only absent before the consumer joined a group.
            let Some(group) = consumer.group_metadata() else {
                return self.abort(TxnOutcome::Retry("no group metadata yet".into()));
            };
            loop {
                match producer.send_offsets_to_transaction(&tpl, &group, step) {
                    Ok(()) => break,
                    Err(e) if is_fatal(&e) => return TxnOutcome::Fatal(e),
                    Err(e) if is_retriable(&e) && !self.shutdown.is_triggered() => self.health.heartbeat(),
                    Err(e) => return self.failed(outputs.len().checked_sub(1).filter(|_| one_by_one), format!("send offsets: {e}")),
                }
            }
        }
        if let Err(e) = self.await_deliveries(step) {
            return self.abort(TxnOutcome::Retry(e));
        }
        if let Some(outcome) = self.delivery_failures() {
            return self.abort(outcome);
        }
        self.produced_at.set(Some(std::time::SystemTime::now()));
        loop {
            match producer.commit_transaction(step) {
                Ok(()) => return TxnOutcome::Committed,
                Err(e) if is_fatal(&e) => return TxnOutcome::Fatal(e),
                // The commit is still under way (slow or failing-over coordinator): call it again.
                Err(e) if is_retriable(&e) && !self.shutdown.is_triggered() => {
                    tracing::warn!(stage = self.stage, error = %e, "commit not confirmed yet; retrying the commit");
                    self.health.heartbeat();
                }
                Err(e) => {
                    let last = outputs.len().checked_sub(1).filter(|_| one_by_one);
                    return self.abort(refusal(&e, last).unwrap_or_else(|| TxnOutcome::Retry(format!("commit: {e}"))));
                }
            }
        }
    }

    /// The transaction failed while records were still being sent: ask librdkafka for the
    /// cause (a commit of a failed transaction reports it), abort, and tell a refused record
    /// (`culprit`, when known) from a transient failure.
    fn failed(&self, culprit: Option<usize>, context: String) -> TxnOutcome {
        let step = self.timeout.min(Duration::from_secs(10));
        let _ = super::kafka::await_deliveries(&self.producer, step);
        let outcome = match self.producer.commit_transaction(step) {
            Err(e) if is_fatal(&e) => return TxnOutcome::Fatal(e),
            Err(e) => refusal(&e, culprit).unwrap_or_else(|| TxnOutcome::Retry(format!("{context}: {e}"))),
            // Cannot happen after a failed send; a commit that went through is still a commit.
            Ok(()) => return TxnOutcome::Retry(format!("{context}; committed without it")),
        };
        self.abort(outcome)
    }

    /// Serve delivery reports until every record sent is acknowledged or failed, for at most
    /// the transaction timeout.
    fn await_deliveries(&self, step: Duration) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match super::kafka::await_deliveries(&self.producer, step) {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline && !self.shutdown.is_triggered() => self.health.heartbeat(),
                Err(e) => return Err(format!("deliveries: {e}")),
            }
        }
    }

    /// What the failed deliveries of this transaction mean, if any failed. A record refused
    /// alone (librdkafka reports it so outside a failed message set) is certain.
    fn delivery_failures(&self) -> Option<TxnOutcome> {
        let failures = self.producer.context().take_failures();
        failures.first()?;
        if let Some((_, e)) = failures.iter().find(|(_, e)| super::kafka::is_authorization_failure(e)) {
            return Some(TxnOutcome::Fatal(e.clone()));
        }
        let refusals: Vec<(usize, KafkaError)> =
            failures.iter().filter(|(_, e)| super::kafka::is_record_refusal(e)).cloned().collect();
        Some(match refusals.len() {
            0 => {
                let mut kinds: Vec<String> = failures.iter().map(|(_, e)| e.to_string()).collect();
                kinds.sort();
                kinds.dedup();
                TxnOutcome::Retry(format!("{} deliveries failed: {}", failures.len(), kinds.join("; ")))
            }
            1 => TxnOutcome::Refused { records: refusals, certain: true, by_broker: true },
            _ => TxnOutcome::Refused { records: refusals, certain: false, by_broker: true },
        })
    }

    /// Abort the open transaction (retrying while librdkafka says so), then report `outcome`.
    fn abort(&self, outcome: TxnOutcome) -> TxnOutcome {
        loop {
            // An abort waits for every record still in flight; with a BaseProducer their
            // delivery reports are only served by polling, so serve them first.
            let _ = super::kafka::await_deliveries(&self.producer, Duration::from_secs(10));
            match self.producer.abort_transaction(Duration::from_secs(10)) {
                Ok(()) => {
                    let _ = super::kafka::await_deliveries(&self.producer, Duration::from_secs(10));
                    return outcome;
                }
                Err(e) if is_fatal(&e) => return TxnOutcome::Fatal(e),
                Err(e) if is_retriable(&e) && !self.shutdown.is_triggered() => {
                    tracing::warn!(stage = self.stage, error = %e, "abort not confirmed yet; retrying the abort");
                    self.health.heartbeat();
                }
                Err(e) => {
                    tracing::warn!(stage = self.stage, error = %e, "abort_transaction failed");
                    return outcome;
                }
            }
        }
    }
}

impl BatchOutput {
    /// Replace the refused records by dead letters: of the inputs they came from, or of the
    /// record itself when it came from no input (timer output).
    fn dead_letter_refused(&mut self, refused: &[(usize, KafkaError)], inputs: &[InputMessage<'_>], txns: &Transactions) {
        let mut culprit_inputs: HashSet<usize> = HashSet::new();
        let mut refused_records: HashSet<usize> = HashSet::new();
        let mut letters: Vec<(Option<usize>, OutputRecord)> = Vec::new();
        for (index, e) in refused {
            let Some(r) = self.records.get(*index) else { continue };
            let origin = self.origin(*index);
            refused_records.insert(*index);
            if origin.is_some_and(|o| !culprit_inputs.insert(o)) {
                continue; // this input is dead-lettered already
            }
            let rejection = Rejection::new(
                RejectionKind::RefusedByBroker,
                format!("{} refused a {}-byte record: {e}", r.topic, r.payload.len()),
            );
            let own = InputMessage {
                topic: &r.topic,
                partition: -1,
                offset: -1,
                timestamp_ms: None,
                key: r.key.as_deref(),
                payload: &r.payload,
                trace: None,
                tracestate: None,
            };
            let input = origin.and_then(|o| inputs.get(o)).unwrap_or(&own);
            txns.metrics.dlq.with_label_values(&[txns.stage, rejection.kind.as_str()]).inc();
            tracing::warn!(stage = txns.stage, partition = input.partition, offset = input.offset, %rejection, "output refused; dead-lettered");
            let mut letter = dead_letter(&txns.dlq_topic, txns.stage, input, &rejection);
            if *r.topic == *txns.dlq_topic {
                // Even the dead letter was refused: keep where it came from and why, not the bytes.
                letter.payload.clear();
                letter.headers.push((super::dlq::H_TRUNCATED, b"true".to_vec()));
            }
            letters.push((origin, letter));
        }
        let records = std::mem::take(&mut self.records);
        let origins = std::mem::take(&mut self.origins);
        for (index, (r, o)) in records.into_iter().zip(origins).enumerate() {
            let dropped = refused_records.contains(&index) || o.is_some_and(|o| culprit_inputs.contains(&o));
            if !dropped {
                self.records.push(r);
                self.origins.push(o);
            }
        }
        for (origin, letter) in letters {
            match origin {
                Some(o) => self.push_attributed(o, letter),
                None => {
                    self.records.push(letter);
                    self.origins.push(None);
                }
            }
        }
    }
}

/// Send one record; when librdkafka's queue is full, serve deliveries and try again.
pub(crate) fn send_record<C>(producer: &BaseProducer<C>, record: &OutputRecord, opaque: C::DeliveryOpaque) -> Result<(), KafkaError>
where
    C: rdkafka::producer::ProducerContext,
{
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (k, v) in &record.headers {
        headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
    }
    let mut base = BaseRecord::with_opaque_to(&record.topic, opaque).payload(record.payload.as_slice()).headers(headers);
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
