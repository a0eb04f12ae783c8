//! Sink stages: Kafka → external store, exactly once by keeping offsets in the store.
//!
//! Each batch is written together with the consumed offsets in the store's own transaction
//! (see [`super::offsets`]). On assignment the runtime starts every partition at the offset the
//! store holds, so Kafka's committed offsets are only informational (lag tools read them).
//! Transient store failures are retried with backoff while the batch is held; nothing is lost
//! and, because offsets commit with the rows, nothing is written twice.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DefaultProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::dlq::dead_letter;
use super::kafka::{consumer_config, subscribed_consumer, OffsetLoader, StageContext};
use super::offsets::OffsetAdvance;
use super::transform::{as_inputs, poll_batch, send_with_backpressure, BatchOffsets};
use super::{check_invalid_ratio, Backoff, InputMessage, OutputRecord, RuntimeError, Shutdown};
use crate::config::Config;
use crate::error::Rejection;
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

/// A store failure worth retrying (connection lost, database restarting, serialization).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

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
    /// Blocking loader of stored offsets, called on partition assignment.
    fn offset_loader(&self) -> OffsetLoader;

    /// Called about once a second when no batch is pending (e.g. to sign checkpoints of a
    /// quiet stream). Errors are logged and retried at the next tick.
    fn on_tick(&mut self) -> impl Future<Output = Result<(), SinkError>> {
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
    let context = StageContext::new(
        name,
        metrics.clone(),
        Some(sink.offset_loader()),
        super::kafka::start_offset(config),
        shutdown.clone(),
        config.stage.retry_max_backoff_ms,
    );
    let inputs = sink.input_topics();
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let consumer = subscribed_consumer(&consumer_config(config, &group_id), context, &input_refs)?;

    // Dead letters of a sink stage are delivered (at least once) before the batch's offsets
    // commit. message.timeout.ms=0: librdkafka retries delivery until the broker is back.
    let mut dlq_config = super::kafka::base_client_config(config);
    dlq_config.set("enable.idempotence", "true").set("message.timeout.ms", "0");
    for (k, v) in &config.kafka.librdkafka {
        dlq_config.set(k, v);
    }
    let dlq_producer: BaseProducer<DefaultProducerContext> = dlq_config.create()?;

    tracing::info!(stage = name, group = %group_id, sink = sink_name, topics = ?inputs, "stage running");
    health.set_ready(true);

    let max_messages = config.stage.batch_max_messages;
    let max_wait = Duration::from_millis(config.stage.batch_max_wait_ms);
    let mut backoff = Backoff::new(config.stage.retry_max_backoff_ms);
    let mut items: Vec<S::Item> = Vec::with_capacity(max_messages);
    let mut dead: Vec<OutputRecord> = Vec::new();
    let mut offsets = BatchOffsets::default();

    let mut last_tick = Instant::now();
    while !shutdown.is_triggered() {
        health.heartbeat();
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            if let Err(e) = handle.block_on(sink.on_tick()) {
                metrics.retries.with_label_values(&[name, "tick"]).inc();
                tracing::warn!(stage = name, error = %e, "sink tick failed; will try again");
            }
        }
        items.clear();
        dead.clear();
        offsets.clear();
        let generation = consumer.context().generation();
        let mut last_rejection: Option<Rejection> = None;
        let mut consumed_per_topic: Vec<(String, u64)> = Vec::new();
        let (messages, started) = poll_batch(&consumer, name, max_messages, max_wait);
        let consumed = messages.len();
        let timestamps: Vec<Option<i64>> = messages.iter().map(|m| m.timestamp().to_millis()).collect();
        for input in as_inputs(&messages, &mut offsets, &mut consumed_per_topic) {
            match sink.decode(&input) {
                Ok(item) => items.push(item),
                Err(rejection) => {
                    metrics.dlq.with_label_values(&[name, rejection.kind.as_str()]).inc();
                    dead.push(dead_letter(&dlq_topic, name, &input, &rejection));
                    last_rejection = Some(rejection);
                }
            }
        }
        let Some(started) = started else { continue };
        if consumer.context().generation() != generation {
            tracing::info!(stage = name, dropped = consumed, "batch straddled a rebalance; dropped");
            metrics.commits.with_label_values(&[name, "dropped_on_rebalance"]).inc();
            continue;
        }
        check_invalid_ratio(name, &config.stage, dead.len(), consumed, last_rejection.as_ref())?;

        if !dead.is_empty() && !deliver_dead_letters(&dlq_producer, &dead, &shutdown, name, &metrics) {
            break; // shutting down before the DLQ was reachable: nothing committed, re-read later
        }

        let advances: Vec<OffsetAdvance> = {
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
        };

        let outcome = loop {
            match handle.block_on(sink.write(&items, &advances)) {
                Ok(outcome) => break Some(outcome),
                Err(e) => {
                    metrics.retries.with_label_values(&[name, "sink"]).inc();
                    tracing::warn!(stage = name, sink = sink_name, error = %e, rows = items.len(), "sink write failed; retrying");
                    if shutdown.is_triggered() {
                        break None;
                    }
                    health.heartbeat();
                    std::thread::sleep(backoff.next_delay());
                }
            }
        };
        match outcome {
            None => break,
            Some(WriteOutcome::Committed) => {
                backoff.reset();
                {
                    let mut stored = consumer.context().stored_offsets.lock().unwrap_or_else(|p| p.into_inner());
                    for a in &advances {
                        stored.insert((a.topic.clone(), a.partition), Some(a.next));
                    }
                }
                // Informational copy for lag tooling; the store's offsets are authoritative.
                let mut tpl = TopicPartitionList::with_capacity(advances.len());
                for a in &advances {
                    let _ = tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(a.next));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!(stage = name, error = %e, "informational offset commit failed");
                }
                metrics.commits.with_label_values(&[name, "committed"]).inc();
                let positions: Vec<(String, i32, i64)> =
                    advances.iter().map(|a| (a.topic.clone(), a.partition, a.next)).collect();
                super::kafka::store_committed(&consumer, &positions);
                for (topic, n) in &consumed_per_topic {
                    metrics.consumed.with_label_values(&[name, topic]).inc_by(*n);
                }
                metrics.sunk.with_label_values(&[name, sink_name]).inc_by(items.len() as u64);
                metrics.produced.with_label_values(&[name, &dlq_topic]).inc_by(dead.len() as u64);
                metrics.batch_size.with_label_values(&[name]).observe(consumed as f64);
                metrics.batch_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
                metrics.observe_end_to_end(name, timestamps.iter().copied());
            }
            Some(WriteOutcome::Fenced) => {
                metrics.commits.with_label_values(&[name, "fenced"]).inc();
                tracing::warn!(stage = name, "stored offsets moved under us; reloading them");
                resync_offsets(&consumer, &sink.offset_loader());
            }
        }
    }

    tracing::info!(stage = name, "shutting down: leaving the consumer group");
    health.set_ready(false);
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

/// Produce dead letters and wait until the broker has them all. False if shutdown came first.
fn deliver_dead_letters(
    producer: &BaseProducer<DefaultProducerContext>,
    dead: &[OutputRecord],
    shutdown: &Shutdown,
    stage: &'static str,
    metrics: &Metrics,
) -> bool {
    for record in dead {
        if let Err(e) = send_with_backpressure(producer, record) {
            tracing::error!(stage, error = %e, "cannot enqueue dead letter");
        }
    }
    loop {
        match super::kafka::await_deliveries(producer, Duration::from_secs(5)) {
            Ok(()) => return true,
            Err(e) => {
                metrics.retries.with_label_values(&[stage, "dlq"]).inc();
                tracing::warn!(stage, error = %e, "dead letters not delivered yet");
                if shutdown.is_triggered() {
                    return false;
                }
            }
        }
    }
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
