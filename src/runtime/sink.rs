//! Sink stages: Kafka → external store, exactly once by keeping offsets in the store.
//!
//! Each batch is written together with the consumed offsets in the store's own transaction
//! (see [`super::offsets`]). On assignment the runtime starts every partition at the offset the
//! store holds, so Kafka's committed offsets are only informational (lag tools read them).
//! Transient store failures are retried with backoff while the batch is held; nothing is lost
//! and, because offsets commit with the rows, nothing is written twice.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::KeyValue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::dlq::dead_letter;
use super::kafka::{OffsetLoader, StageContext, TransactionDeliveries};
use super::offsets::OffsetAdvance;
use super::transform::{as_inputs, poll_batch, send_record, BatchOffsets};
use super::{check_invalid_ratio, Backoff, InputMessage, OutputRecord, RuntimeError, Shutdown};
use crate::config::Config;
use crate::error::{Rejection, RejectionKind};
use crate::telemetry::{Health, Metrics};

/// What a sink's write reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Rows and offsets are durable.
    Committed,
    /// The stored offsets were not the expected ones: another instance owns a partition now.
    /// Nothing was written.
    Fenced,
}

/// How a store failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Connection lost, database restarting, serialization failure: retry the batch.
    Transient,
    /// The store refuses some row for good (a value out of range, a constraint): find the
    /// rows, dead-letter their inputs, write the rest.
    Refused,
    /// Nothing will work until an operator acts (missing privilege, wrong key): stop.
    Fatal,
}

/// A store failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: SinkErrorKind,
    pub message: String,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError { kind: SinkErrorKind::Transient, message: message.into() }
    }
    pub fn refused(message: impl Into<String>) -> SinkError {
        SinkError { kind: SinkErrorKind::Refused, message: message.into() }
    }
    pub fn fatal(message: impl Into<String>) -> SinkError {
        SinkError { kind: SinkErrorKind::Fatal, message: message.into() }
    }

    /// Classify a PostgreSQL error by its SQLSTATE: data exceptions (class 22) and integrity
    /// violations (23) are the row's fault; missing privileges or schema (42501, 42P01, 3F000)
    /// are the deployment's; everything else (connections, 40001 serialization, 57P01 admin
    /// shutdown, …) is worth retrying.
    pub fn from_sqlx(e: &sqlx::Error) -> SinkError {
        let code = match e {
            sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
            _ => None,
        };
        let message = e.to_string();
        match code.as_deref() {
            Some(c) if c.starts_with("22") || c.starts_with("23") => SinkError::refused(format!("SQLSTATE {c}: {message}")),
            Some(c @ ("42501" | "42P01" | "42703" | "3F000")) => SinkError::fatal(format!("SQLSTATE {c}: {message}")),
            _ => SinkError::transient(message),
        }
    }
}

/// Business logic of a sink stage.
pub trait SinkStage: Send + 'static {
    type Item: Send;
    fn name(&self) -> &'static str;
    /// Label for metrics, e.g. `postgres.audit_events`.
    fn sink_name(&self) -> &'static str;
    fn input_topics(&self) -> Vec<String>;
    /// Decode one message, or reject it to the DLQ.
    fn decode(&mut self, input: &InputMessage<'_>) -> Result<Self::Item, Rejection>;
    /// Write `items` and apply `advances` in one transaction.
    fn write(
        &mut self,
        items: &[Self::Item],
        advances: &[OffsetAdvance],
    ) -> impl Future<Output = Result<WriteOutcome, SinkError>>;
    /// Write `items` as [`write`](Self::write) would, then roll back: used to find which rows
    /// of a batch the store refuses.
    fn probe(&mut self, items: &[Self::Item]) -> impl Future<Output = Result<(), SinkError>>;
    /// Attributes for the trace span of an item's event, when it is recorded (e.g. the alert
    /// policies a match hit). Ids and codes only, no personal or free-text values.
    fn describe(&self, _item: &Self::Item) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Blocking loader of stored offsets, called on partition assignment.
    fn offset_loader(&self) -> OffsetLoader;

    /// Called about once a second when no batch is pending (e.g. to sign checkpoints of a
    /// quiet stream). Errors are logged and retried at the next tick.
    fn on_tick(&mut self) -> impl Future<Output = Result<(), SinkError>> {
        async { Ok(()) }
    }

    /// Called once when the stage stops cleanly (e.g. to sign the last checkpoints).
    fn on_shutdown(&mut self) -> impl Future<Output = Result<(), SinkError>> {
        async { Ok(()) }
    }
}

/// Run a sink stage until `shutdown` trips. Call from a blocking thread; `handle` runs the
/// sink's async I/O.
pub fn run_sink<S: SinkStage>(
    config: &Config,
    mut sink: S,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
    handle: tokio::runtime::Handle,
) -> Result<(), RuntimeError> {
    let name = sink.name();
    let sink_name = sink.sink_name();
    let group_id = config.group_id(name);
    let dlq_topic: Arc<str> = Arc::from(config.topics.dlq.name.as_str());
    let inputs = sink.input_topics();
    let consumer = super::kafka::stage_consumer(
        config,
        name,
        &inputs,
        Some(sink.offset_loader()),
        &metrics,
        &health,
        &shutdown,
    )?;

    // Dead letters of a sink stage are delivered (at least once) before the batch's offsets
    // commit. message.timeout.ms=0: librdkafka retries delivery until the broker is back.
    let mut dlq_config = super::kafka::producer_config(config);
    dlq_config.set("enable.idempotence", "true").set("message.timeout.ms", "0");
    for (k, v) in &config.kafka.librdkafka {
        dlq_config.set(k, v);
    }
    let dlq_producer: BaseProducer<TransactionDeliveries> = dlq_config.create_with_context(TransactionDeliveries::default())?;

    tracing::info!(stage = name, group = %group_id, sink = sink_name, topics = ?inputs, "stage running");
    health.set_ready(true);

    let max_messages = config.stage.batch_max_messages;
    let max_wait = Duration::from_millis(config.stage.batch_max_wait_ms);
    let mut backoff = Backoff::new(config.stage.retry_max_backoff_ms);
    let mut items: Vec<S::Item> = Vec::with_capacity(max_messages);
    // The input (index in the batch) of each item.
    let mut item_inputs: Vec<usize> = Vec::with_capacity(max_messages);
    let mut dead: Vec<OutputRecord> = Vec::new();
    let mut offsets = BatchOffsets::default();

    let mut last_tick = Instant::now();
    while !shutdown.is_triggered() {
        health.heartbeat();
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            match handle.block_on(sink.on_tick()) {
                Ok(()) => {}
                Err(e) if e.kind == SinkErrorKind::Fatal => return Err(RuntimeError::Sink(e.message)),
                Err(e) => {
                    metrics.retries.with_label_values(&[name, "tick"]).inc();
                    tracing::warn!(stage = name, error = %e, "sink tick failed; will try again");
                }
            }
        }
        items.clear();
        item_inputs.clear();
        dead.clear();
        offsets.clear();
        let generation = consumer.context().generation();
        let mut last_rejection: Option<Rejection> = None;
        let mut consumed_per_topic: Vec<(String, u64)> = Vec::new();
        let (messages, started) = poll_batch(&consumer, name, max_messages, max_wait);
        let consumed = messages.len();
        let timestamps: Vec<Option<i64>> = messages.iter().map(|m| m.timestamp().to_millis()).collect();
        let mut inputs = as_inputs(&messages, &mut offsets, &mut consumed_per_topic);
        let mut traces = started.and_then(|s| super::traces::begin(name, &group_id, s, &mut inputs));
        // Inputs dead-lettered, with the rejection kind (for their trace spans).
        let mut dead_inputs: Vec<(usize, &'static str)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match sink.decode(input) {
                Ok(item) => {
                    if let Some(t) = traces.as_mut().filter(|t| t.is_recording(i)) {
                        for (key, value) in sink.describe(&item) {
                            t.note(i, key, value);
                        }
                    }
                    items.push(item);
                    item_inputs.push(i);
                }
                Err(rejection) => {
                    metrics.dlq.with_label_values(&[name, rejection.kind.as_str()]).inc();
                    dead.push(dead_letter(&dlq_topic, name, input, &rejection));
                    if traces.is_some() {
                        dead_inputs.push((i, rejection.kind.as_str()));
                    }
                    last_rejection = Some(rejection);
                }
            }
        }
        let Some(started) = started else { continue };
        if let Some(t) = &mut traces {
            t.phase_until("process", SystemTime::now(), vec![KeyValue::new("auditflow.rows", items.len() as i64)]);
        }
        health.input_waiting();
        let invalid = dead.len();
        if consumer.context().generation() != generation {
            tracing::info!(stage = name, dropped = consumed, "batch straddled a rebalance; dropped");
            metrics.commits.with_label_values(&[name, "dropped_on_rebalance"]).inc();
            continue;
        }

        if !dead.is_empty() && !deliver_dead_letters(&dlq_producer, &mut dead, &shutdown, &health, name, &metrics)? {
            break; // shutting down before the DLQ was reachable: nothing committed, re-read later
        }
        let mut dead_letters = dead.len();
        if let Some(t) = traces.as_mut().filter(|_| dead_letters > 0) {
            t.phase_until("produce", SystemTime::now(), vec![KeyValue::new("auditflow.dead_letters", dead_letters as i64)]);
        }

        // The batch is written as spans of messages, each with its rows and its offsets in one
        // store transaction. Normally one span is the whole batch; rows the store refuses are
        // dead-lettered and their span written again without them, and a span refused as a
        // whole though no row is refused alone is split in two.
        let mut spans: std::collections::VecDeque<(usize, usize)> = std::collections::VecDeque::from([(0, consumed)]);
        let mut written = 0usize;
        let mut fenced = false;
        let mut stopped = false;
        while let Some(&(m0, m1)) = spans.front() {
            let k = item_inputs.partition_point(|&i| i < m0);
            let l = item_inputs.partition_point(|&i| i < m1);
            let advances = span_advances(&consumer, &inputs[m0..m1]);
            match handle.block_on(sink.write(&items[k..l], &advances)) {
                Ok(WriteOutcome::Committed) => {
                    record_committed(&consumer, &advances, name, generation);
                    written += l - k;
                    spans.pop_front();
                }
                Ok(WriteOutcome::Fenced) => {
                    fenced = true;
                    break;
                }
                Err(e) if e.kind == SinkErrorKind::Fatal => {
                    tracing::error!(stage = name, sink = sink_name, error = %e, "sink cannot go on; stopping");
                    return Err(RuntimeError::Sink(e.message));
                }
                Err(e) if e.kind == SinkErrorKind::Refused => {
                    metrics.retries.with_label_values(&[name, "sink_refused"]).inc();
                    tracing::warn!(stage = name, sink = sink_name, error = %e, rows = l - k, "sink refused the batch; finding the rows it refuses");
                    let Some(refused) = find_refused(&mut sink, &items[k..l], &handle, &health, &shutdown, &mut backoff)? else {
                        stopped = true;
                        break;
                    };
                    if refused.is_empty() {
                        if l - k < 2 {
                            // One row, refused with its offsets but accepted alone: retry.
                            std::thread::sleep(backoff.next_delay());
                        } else {
                            // Accepted in parts but not as a whole: write the parts apart.
                            let split = item_inputs[k + (l - k) / 2];
                            tracing::warn!(stage = name, rows = l - k, "no single row is refused; writing the batch in two parts");
                            spans.pop_front();
                            spans.push_front((split, m1));
                            spans.push_front((m0, split));
                        }
                        continue;
                    }
                    let mut letters: Vec<OutputRecord> = Vec::with_capacity(refused.len());
                    for (item, reason) in &refused {
                        let Some(input) = item_inputs.get(k + item).and_then(|i| inputs.get(*i)) else { continue };
                        let rejection = Rejection::new(RejectionKind::RefusedByStore, reason.clone());
                        metrics.dlq.with_label_values(&[name, rejection.kind.as_str()]).inc();
                        if traces.is_some() {
                            dead_inputs.push((item_inputs[k + item], rejection.kind.as_str()));
                        }
                        tracing::warn!(stage = name, partition = input.partition, offset = input.offset, %rejection, "row refused by the store; dead-lettered");
                        letters.push(dead_letter(&dlq_topic, name, input, &rejection));
                    }
                    if !deliver_dead_letters(&dlq_producer, &mut letters, &shutdown, &health, name, &metrics)? {
                        stopped = true;
                        break;
                    }
                    dead_letters += letters.len();
                    let refused: HashSet<usize> = refused.iter().map(|(i, _)| k + i).collect();
                    let mut index = 0;
                    items.retain(|_| {
                        index += 1;
                        !refused.contains(&(index - 1))
                    });
                    let mut index = 0;
                    item_inputs.retain(|_| {
                        index += 1;
                        !refused.contains(&(index - 1))
                    });
                }
                Err(e) => {
                    metrics.retries.with_label_values(&[name, "sink"]).inc();
                    tracing::warn!(stage = name, sink = sink_name, error = %e, rows = l - k, "sink write failed; retrying");
                    if shutdown.is_triggered() {
                        stopped = true;
                        break;
                    }
                    health.heartbeat();
                    std::thread::sleep(backoff.next_delay());
                }
            }
        }
        if stopped {
            break; // shutting down mid-outage: what is not committed is re-read later
        }
        if fenced {
            metrics.commits.with_label_values(&[name, "fenced"]).inc();
            tracing::warn!(stage = name, "stored offsets moved under us; reloading them");
            resync_offsets(&consumer, &sink.offset_loader());
            continue;
        }
        if let Some(mut t) = traces.take() {
            // Rows and offsets commit together in the store's transaction: that is the commit.
            t.phase_until(
                "sink",
                SystemTime::now(),
                vec![KeyValue::new("auditflow.sink", sink_name), KeyValue::new("auditflow.rows", written as i64)],
            );
            let mut fates = vec![(1usize, None); consumed];
            for (i, kind) in &dead_inputs {
                if let Some(f) = fates.get_mut(*i) {
                    *f = (0, Some(*kind));
                }
            }
            t.finish(&fates, vec![KeyValue::new("auditflow.rows", written as i64), KeyValue::new("auditflow.dead_letters", dead_letters as i64)]);
        }
        backoff.reset();
        health.progressed();
        metrics.last_commit.with_label_values(&[name]).set(crate::telemetry::now_ms() / 1000);
        metrics.commits.with_label_values(&[name, "committed"]).inc();
        for (topic, n) in &consumed_per_topic {
            metrics.consumed.with_label_values(&[name, topic]).inc_by(*n);
        }
        metrics.sunk.with_label_values(&[name, sink_name]).inc_by(written as u64);
        metrics.produced.with_label_values(&[name, &dlq_topic]).inc_by(dead_letters as u64);
        metrics.batch_size.with_label_values(&[name]).observe(consumed as f64);
        metrics.batch_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        metrics.observe_end_to_end(name, timestamps.iter().copied());
        // Judged after the commit, so a restart does not fail on the same batch again.
        check_invalid_ratio(name, &config.stage, invalid, consumed, last_rejection.as_ref())?;
    }

    tracing::info!(stage = name, "shutting down: leaving the consumer group");
    health.set_ready(false);
    if let Err(e) = handle.block_on(sink.on_shutdown()) {
        tracing::warn!(stage = name, error = %e, "final sink work failed; the next instance does it");
    }
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

/// The offset advance of each partition in `inputs`: from what the store holds now to just
/// past the span's last message.
fn span_advances(consumer: &BaseConsumer<StageContext>, inputs: &[InputMessage<'_>]) -> Vec<OffsetAdvance> {
    let mut offsets = BatchOffsets::default();
    for i in inputs {
        super::transform::track_offset(&mut offsets, i.topic, i.partition, i.offset);
    }
    let stored = consumer.context().stored_offsets.lock().unwrap_or_else(|p| p.into_inner());
    offsets
        .iter()
        .map(|(topic, partition, range)| OffsetAdvance {
            topic: topic.to_string(),
            partition,
            expected: stored.get(&(topic.to_string(), partition)).copied().flatten(),
            next: range.last + 1,
        })
        .collect()
}

/// After a span committed: what the store now holds becomes what the next write expects, and
/// the consumer's informational offsets and lag follow.
fn record_committed(consumer: &BaseConsumer<StageContext>, advances: &[OffsetAdvance], stage: &str, generation: u64) {
    if consumer.context().generation() != generation {
        // The partitions were revoked while the batch was written (a session lost to a broker
        // restart): the store has the offsets, and a commit now would land in the middle of
        // librdkafka's unassign, which then waits on it instead of rejoining the group.
        return;
    }
    {
        let mut stored = consumer.context().stored_offsets.lock().unwrap_or_else(|p| p.into_inner());
        for a in advances {
            stored.insert((a.topic.clone(), a.partition), Some(a.next));
        }
    }
    // Informational copy for lag tooling; the store's offsets are authoritative.
    let mut tpl = TopicPartitionList::with_capacity(advances.len());
    for a in advances {
        let _ = tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(a.next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(stage, error = %e, "informational offset commit failed");
    }
    let positions: Vec<(String, i32, i64)> = advances.iter().map(|a| (a.topic.clone(), a.partition, a.next)).collect();
    super::kafka::store_committed(consumer, &positions);
}

/// Bisect `items` with [`SinkStage::probe`] to find the ones the store refuses, with its
/// reason. `None` when shutdown came first.
fn find_refused<S: SinkStage>(
    sink: &mut S,
    items: &[S::Item],
    handle: &tokio::runtime::Handle,
    health: &Health,
    shutdown: &Shutdown,
    backoff: &mut Backoff,
) -> Result<Option<Vec<(usize, String)>>, RuntimeError> {
    let mut refused = Vec::new();
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(16);
    ranges.push(0..items.len());
    while let Some(range) = ranges.pop() {
        if range.is_empty() {
            continue;
        }
        health.heartbeat();
        match handle.block_on(sink.probe(&items[range.clone()])) {
            Ok(()) => {}
            Err(e) if e.kind == SinkErrorKind::Refused => {
                if range.len() == 1 {
                    refused.push((range.start, e.message));
                } else {
                    let mid = range.start + range.len() / 2;
                    ranges.push(mid..range.end);
                    ranges.push(range.start..mid);
                }
            }
            Err(e) if e.kind == SinkErrorKind::Fatal => return Err(RuntimeError::Sink(e.message)),
            Err(e) => {
                tracing::warn!(error = %e, "probe failed; retrying");
                if shutdown.is_triggered() {
                    return Ok(None);
                }
                std::thread::sleep(backoff.next_delay());
                ranges.push(range);
            }
        }
    }
    refused.sort_by_key(|(i, _)| *i);
    Ok(Some(refused))
}

/// Produce dead letters and wait until the broker has every one. False if shutdown came
/// first; an error when the deployment forbids writing them.
fn deliver_dead_letters(
    producer: &BaseProducer<TransactionDeliveries>,
    dead: &mut [OutputRecord],
    shutdown: &Shutdown,
    health: &Health,
    stage: &'static str,
    metrics: &Metrics,
) -> Result<bool, RuntimeError> {
    let _ = producer.context().take_failures();
    let mut pending: Vec<usize> = (0..dead.len()).collect();
    let mut backoff = Backoff::new(5000);
    while !pending.is_empty() {
        for &i in &pending {
            if let Err(e) = send_record(producer, &dead[i], i) {
                tracing::error!(stage, error = %e, "cannot enqueue dead letter");
                producer.context().record_failure(i, e);
            }
        }
        loop {
            health.heartbeat();
            match super::kafka::await_deliveries(producer, Duration::from_secs(5)) {
                Ok(()) => break,
                Err(e) => {
                    metrics.retries.with_label_values(&[stage, "dlq"]).inc();
                    tracing::warn!(stage, error = %e, "dead letters not delivered yet");
                    if shutdown.is_triggered() {
                        return Ok(false);
                    }
                }
            }
        }
        // Failed deliveries are sent again: a dead letter is never lost.
        pending.clear();
        for (i, e) in producer.context().take_failures() {
            if super::kafka::is_authorization_failure(&e) {
                return Err(RuntimeError::FatalKafka(format!("cannot write dead letters: {e}")));
            }
            metrics.retries.with_label_values(&[stage, "dlq"]).inc();
            tracing::warn!(stage, error = %e, "dead letter not delivered; sending it again");
            if super::kafka::is_record_refusal(&e) {
                if let Some(r) = dead.get_mut(i) {
                    // Keep where it came from and why, without the bytes the broker refuses.
                    r.payload.clear();
                    r.headers.push((super::dlq::H_TRUNCATED, b"true".to_vec()));
                }
            }
            pending.push(i);
        }
        if !pending.is_empty() {
            if shutdown.is_triggered() {
                return Ok(false);
            }
            std::thread::sleep(backoff.next_delay());
        }
    }
    Ok(true)
}

/// After a fence: read the store's offsets for the current assignment and seek there.
fn resync_offsets(consumer: &BaseConsumer<StageContext>, loader: &OffsetLoader) {
    let Ok(assignment) = consumer.assignment() else { return };
    let partitions: Vec<(String, i32)> =
        assignment.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
    match loader(&partitions) {
        Ok(stored) => {
            let mut tpl = TopicPartitionList::new();
            let mut expected = consumer.context().stored_offsets.lock().unwrap_or_else(|p| p.into_inner());
            for (topic, partition) in &partitions {
                let key = (topic.clone(), *partition);
                let o = stored.get(&key).copied();
                expected.insert(key, o);
                let _ = tpl.add_partition_offset(topic, *partition, o.map(Offset::Offset).unwrap_or(Offset::Beginning));
            }
            drop(expected);
            if let Err(e) = consumer.seek_partitions(tpl, Duration::from_secs(10)) {
                tracing::warn!(error = %e, "seek after fence failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot reload offsets after fence"),
    }
}
