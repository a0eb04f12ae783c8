//! Kafka clients as the runtime configures them, and the consumer context that handles
//! rebalances and statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::config::Config;
use crate::telemetry::{Health, Metrics};

use super::Shutdown;

/// Base settings shared by every client: brokers, client id, then the librdkafka pass-through.
pub fn base_client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers).set("client.id", &config.kafka.client_id);
    for (k, v) in &config.kafka.librdkafka {
        c.set(k, v);
    }
    c
}

/// Base settings of every producer: records as large as the largest topic the pipeline owns
/// accepts. librdkafka refuses anything over its own 1,000,000-byte default before it reaches
/// the broker, so without this a valid 1 MiB event could never be written anywhere.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = base_client_config(config);
    c.set("message.max.bytes", config.topics.max_message_bytes().to_string());
    for (k, v) in &config.kafka.librdkafka {
        c.set(k, v);
    }
    c
}

/// A consumer that never commits by itself: the runtime decides when offsets are durable.
pub fn consumer_config(config: &Config, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("client.id", &config.kafka.client_id)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only read what upstream transactions committed: aborted output never reaches a stage.
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &config.stage.start_from)
        .set("enable.partition.eof", "false")
        // A crashed instance's partitions move on after 10 s instead of librdkafka's 45 s.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("statistics.interval.ms", "5000")
        // librdkafka prefetches up to 64 MiB per consumer by default, and holds fetch responses
        // of up to 50 MiB. 8 MiB and 4 MiB keep every stage under 150 MB resident; with the
        // quick re-fetch below a stage still reads 100k events/s.
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.max.bytes", "4194304")
        // Once that prefetch is full, librdkafka waits fetch.queue.backoff.ms (1 s by
        // default) before fetching again, so a stage that empties its queue in 0.3 s sat idle
        // for the rest of each second: fetch again soon after room is made.
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &config.kafka.librdkafka {
        c.set(k, v);
    }
    c
}

/// Wait until every record handed to `producer` is acknowledged (or failed), serving delivery
/// reports as they come.
///
/// rust-rdkafka's `flush` (which `commit_transaction` calls first) sleeps in steps of up to
/// 100 ms between checks, so every transaction paid about 100 ms however quickly the broker
/// answered; polling in 1 ms steps makes a commit wait only for the acknowledgements.
pub fn await_deliveries<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: std::time::Duration,
) -> Result<(), KafkaError> {
    use rdkafka::producer::Producer;
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// How a partition without a stored offset starts.
pub fn start_offset(config: &Config) -> Offset {
    if config.stage.start_from == "latest" {
        Offset::End
    } else {
        Offset::Beginning
    }
}

/// Loads the stored offsets of newly assigned partitions from the sink (blocking).
pub type OffsetLoader =
    Box<dyn Fn(&[(String, i32)]) -> Result<HashMap<(String, i32), i64>, String> + Send + Sync + 'static>;

/// librdkafka's log lines as `tracing` events, at the matching level.
pub(crate) fn forward_log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", fac, "{log_message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
        _ => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
    }
}

/// Consumer context: counts rebalances (so the loop can drop a batch that straddles one),
/// optionally assigns partitions at offsets kept in a sink, and turns statistics into metrics.
pub struct StageContext {
    pub stage: &'static str,
    metrics: Arc<Metrics>,
    generation: AtomicU64,
    offset_loader: Option<OffsetLoader>,
    default_offset: Offset,
    shutdown: Shutdown,
    retry_max_backoff_ms: u64,
    /// Offsets the sink holds for the current assignment: what the next commit must find there.
    pub stored_offsets: Mutex<HashMap<(String, i32), Option<i64>>>,
    /// Told when statistics show lag, so a stage that stops committing is seen as stalled.
    health: Option<Arc<Health>>,
}

impl StageContext {
    pub fn new(
        stage: &'static str,
        metrics: Arc<Metrics>,
        offset_loader: Option<OffsetLoader>,
        default_offset: Offset,
        shutdown: Shutdown,
        retry_max_backoff_ms: u64,
    ) -> StageContext {
        StageContext {
            stage,
            metrics,
            generation: AtomicU64::new(0),
            offset_loader,
            default_offset,
            shutdown,
            retry_max_backoff_ms,
            stored_offsets: Mutex::new(HashMap::new()),
            health: None,
        }
    }


    /// Changes at every assignment or revocation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn load_offsets_with_retry(
        &self,
        loader: &OffsetLoader,
        partitions: &[(String, i32)],
    ) -> Option<HashMap<(String, i32), i64>> {
        let mut backoff = super::Backoff::new(self.retry_max_backoff_ms);
        loop {
            match loader(partitions) {
                Ok(map) => return Some(map),
                Err(e) => {
                    self.metrics.retries.with_label_values(&[self.stage, "offset_load"]).inc();
                    tracing::warn!(stage = self.stage, error = %e, "cannot load stored offsets; retrying");
                    if self.shutdown.is_triggered() {
                        return None;
                    }
                    std::thread::sleep(backoff.next_delay());
                }
            }
        }
    }
}

impl ClientContext for StageContext {
    fn stats(&self, statistics: Statistics) {
        let mut lagging = false;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Offsets are committed through producer transactions or stored in a sink, which
                // the consumer's "committed" view never sees; the runtime stores each committed
                // position locally, so lag is measured against that.
                if *partition < 0 || p.consumer_lag_stored < 0 {
                    continue;
                }
                lagging |= p.consumer_lag_stored > 0;
                self.metrics
                    .consumer_lag
                    .with_label_values(&[self.stage, topic, &partition.to_string()])
                    .set(p.consumer_lag_stored);
            }
        }
        if let (true, Some(health)) = (lagging, &self.health) {
            health.input_waiting();
        }
        if let (Some(cgrp), Some(health)) = (&statistics.cgrp, &self.health) {
            health.group_joined(cgrp.state == "up");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker down/restarting shows up here; librdkafka reconnects by itself.
        tracing::warn!(target: "librdkafka", stage = self.stage, error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for StageContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                self.metrics.rebalances.with_label_values(&[self.stage, "assign"]).inc();
                tracing::info!(stage = self.stage, ?partitions, "partitions assigned");
                let mut assignment = tpl.clone();
                if let Some(loader) = &self.offset_loader {
                    // The sink is the source of truth: start each partition right after the last
                    // offset it made durable.
                    let Some(stored) = self.load_offsets_with_retry(loader, &partitions) else {
                        let _ = consumer.assign(&TopicPartitionList::new());
                        return;
                    };
                    let mut expected = self.stored_offsets.lock().unwrap_or_else(|p| p.into_inner());
                    expected.clear();
                    for (topic, partition) in &partitions {
                        let key = (topic.clone(), *partition);
                        let offset = match stored.get(&key) {
                            Some(o) => Offset::Offset(*o),
                            None => self.default_offset,
                        };
                        expected.insert(key, stored.get(&(topic.clone(), *partition)).copied());
                        let _ = assignment.set_partition_offset(topic, *partition, offset);
                    }
                    tracing::info!(stage = self.stage, stored = ?stored, "seeking to offsets stored in the sink");
                }
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(stage = self.stage, error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&[self.stage, "revoke"]).inc();
                tracing::info!(stage = self.stage, partitions = tpl.count(), "partitions revoked");
                for e in tpl.elements() {
                    let _ = self.metrics.consumer_lag.remove_label_values(&[
                        self.stage,
                        e.topic(),
                        &e.partition().to_string(),
                    ]);
                }
                self.stored_offsets.lock().unwrap_or_else(|p| p.into_inner()).clear();
                if let Err(e) = consumer.unassign() {
                    tracing::error!(stage = self.stage, error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(stage = self.stage, error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The consumer of a stage, subscribed to its input topics: rebalances, statistics and lag
/// reach `metrics` and `health` (which also learns the stage's name and stall timeout), and a
/// sink's `offset_loader` places newly assigned partitions.
pub fn stage_consumer(
    config: &Config,
    stage: &'static str,
    topics: &[String],
    offset_loader: Option<OffsetLoader>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &Shutdown,
) -> Result<BaseConsumer<StageContext>, KafkaError> {
    health.configure(stage, std::time::Duration::from_secs(config.stage.stall_timeout_secs));
    let mut context = StageContext::new(
        stage,
        metrics.clone(),
        offset_loader,
        start_offset(config),
        shutdown.clone(),
        config.stage.retry_max_backoff_ms,
    );
    context.health = Some(health.clone());
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    subscribed_consumer(&consumer_config(config, &config.group_id(stage)), context, &topics)
}

/// Build a consumer subscribed to `topics`.
pub fn subscribed_consumer(
    client_config: &ClientConfig,
    context: StageContext,
    topics: &[&str],
) -> Result<BaseConsumer<StageContext>, KafkaError> {
    let consumer: BaseConsumer<StageContext> = client_config.create_with_context(context)?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// Producer context that remembers failed deliveries, so `flush` success can be trusted.
#[derive(Default)]
pub struct DeliveryTracker {
    pub failed: std::sync::atomic::AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl rdkafka::producer::ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(e.to_string());
            }
        }
    }
}

/// Producer context of a transaction: remembers which records (by index in the transaction)
/// the broker refused, so the runtime can dead-letter the inputs that produced them.
#[derive(Default)]
pub struct TransactionDeliveries {
    refused: Mutex<Vec<(usize, KafkaError)>>,
}

impl TransactionDeliveries {
    /// Note a record that failed before it reached librdkafka's queue.
    pub fn record_failure(&self, index: usize, e: KafkaError) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).push((index, e));
    }

    /// Delivery failures since the last call, in the order they were reported.
    pub fn take_failures(&self) -> Vec<(usize, KafkaError)> {
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for TransactionDeliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }
}

impl rdkafka::producer::ProducerContext for TransactionDeliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, index: usize) {
        if let Err((e, _)) = result {
            self.refused.lock().unwrap_or_else(|p| p.into_inner()).push((index, e.clone()));
        }
    }
}

/// A per-record refusal that no retry can fix: the record itself is the problem.
pub fn is_record_refusal(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidTimestamp | C::MessageBatchTooLarge | C::InvalidRecord)
    )
}

/// Refusals that mean the deployment is wrong (ACLs), not the record: stop, loudly.
pub fn is_authorization_failure(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed | C::TransactionalIdAuthorizationFailed)
    )
}

/// Record committed positions in the consumer's local offset store (feeds the lag metric).
pub fn store_committed(consumer: &BaseConsumer<StageContext>, positions: &[(String, i32, i64)]) {
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for (topic, partition, next) in positions {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    // A partition revoked meanwhile cannot be stored; its new owner reports it.
    let _ = consumer.store_offsets(&tpl);
}
