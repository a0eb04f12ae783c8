//! Publishing rows of a database outbox (e.g. signed ledger checkpoints) to a topic, at least
//! once, without ever blocking the batch loop.
//!
//! Each record carries its row id; [`Outbox::poll`] returns the ids the broker acknowledged so
//! the caller can mark them published. A record that fails (timeout, broker down) is simply no
//! longer in flight and is sent again on a later round. A producer in a fatal state (an
//! idempotent producer after a long broker freeze) is replaced: waiting cannot cure it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

/// Delivery reports by row id.
#[derive(Default)]
pub struct OutboxReports {
    acked: Mutex<Vec<i64>>,
    failed: Mutex<Vec<(i64, String)>>,
}

impl ClientContext for OutboxReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::kafka::forward_log(level, fac, log_message);
    }
}

impl ProducerContext for OutboxReports {
    type DeliveryOpaque = Box<i64>;
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, id: Box<i64>) {
        match result {
            Ok(_) => self.acked.lock().unwrap_or_else(|p| p.into_inner()).push(*id),
            Err((e, _)) => self.failed.lock().unwrap_or_else(|p| p.into_inner()).push((*id, e.to_string())),
        }
    }
}

/// Failed rounds (each one `message.timeout.ms` long) before the producer is replaced.
const FAILING_ROUNDS_BEFORE_RENEWAL: u32 = 2;

pub struct Outbox {
    config: ClientConfig,
    producer: BaseProducer<OutboxReports>,
    topic: String,
    in_flight: HashSet<i64>,
    /// Rounds in a row that saw failures and no acknowledgement.
    failing: u32,
}

impl Outbox {
    /// `config`: the producer settings (idempotence is turned on here; a bounded
    /// `message.timeout.ms` makes a lost record come back as a failure to send again).
    pub fn new(mut config: ClientConfig, topic: &str) -> Result<Outbox, rdkafka::error::KafkaError> {
        config.set("enable.idempotence", "true");
        if config.get("message.timeout.ms").is_none() {
            config.set("message.timeout.ms", "30000");
        }
        let producer = config.create_with_context(OutboxReports::default())?;
        Ok(Outbox { config, producer, topic: topic.to_string(), in_flight: HashSet::new(), failing: 0 })
    }

    /// Whether row `id` was sent and not yet answered.
    pub fn in_flight(&self, id: i64) -> bool {
        self.in_flight.contains(&id)
    }

    /// Hand records to the producer (no waiting). Rows already in flight are skipped; a full
    /// queue leaves the rest for a later round.
    pub fn send<'a>(&mut self, records: impl IntoIterator<Item = (i64, &'a str, &'a [u8])>) {
        for (id, key, payload) in records {
            if self.in_flight.contains(&id) {
                continue;
            }
            let record = BaseRecord::with_opaque_to(&self.topic, Box::new(id)).key(key).payload(payload);
            if self.producer.send(record).is_err() {
                break;
            }
            self.in_flight.insert(id);
        }
        self.producer.poll(Duration::ZERO);
    }

    /// Ids acknowledged since the last call (serving delivery reports, without waiting). Failed
    /// ones leave the in-flight set, to be sent again.
    pub fn poll(&mut self) -> Vec<i64> {
        self.producer.poll(Duration::ZERO);
        if let Some(e) = self.producer.client().fatal_error() {
            tracing::warn!(error = ?e, topic = %self.topic, "outbox producer in a fatal state; replacing it");
            self.renew();
        }
        let acked: Vec<i64> = std::mem::take(&mut *self.producer.context().acked.lock().unwrap_or_else(|p| p.into_inner()));
        let failed: Vec<(i64, String)> =
            std::mem::take(&mut *self.producer.context().failed.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some((_, e)) = failed.first() {
            tracing::warn!(topic = %self.topic, records = failed.len(), error = %e, "not delivered; will send again");
        }
        for id in acked.iter().chain(failed.iter().map(|(id, _)| id)) {
            self.in_flight.remove(id);
        }
        if !acked.is_empty() {
            self.failing = 0;
        } else if !failed.is_empty() {
            self.failing += 1;
            // librdkafka can keep a partition without a leader after the broker was fenced
            // for a moment, timing out every record for ever; a new client asks afresh.
            if self.failing >= FAILING_ROUNDS_BEFORE_RENEWAL {
                tracing::warn!(topic = %self.topic, rounds = self.failing, "every record timed out; replacing the producer");
                self.renew();
            }
        }
        acked
    }

    /// Wait up to `timeout` for what is in flight (at shutdown), then return the acknowledged ids.
    pub fn drain(&mut self, timeout: Duration) -> Vec<i64> {
        let deadline = std::time::Instant::now() + timeout;
        let mut acked = Vec::new();
        while !self.in_flight.is_empty() && std::time::Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(10));
            acked.extend(self.poll());
        }
        acked.extend(self.poll());
        acked
    }

    fn renew(&mut self) {
        match self.config.create_with_context(OutboxReports::default()) {
            Ok(p) => {
                self.producer = p;
                self.in_flight.clear();
                self.failing = 0;
            }
            Err(e) => tracing::warn!(error = %e, topic = %self.topic, "cannot create a new outbox producer; keeping the old one"),
        }
    }
}
