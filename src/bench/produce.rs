//! The benchmark's producer: pre-serialised events to `audit-raw`, as fast as possible or paced
//! at a fixed rate, optionally stamping each event's `timestamp` with its send time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::data::{stamp, Prepared};
use super::proc::ABORT;
use crate::config::Config;
use crate::runtime::kafka::{base_client_config, DeliveryTracker};
use crate::telemetry::now_ms;

/// Producer settings of the benchmark's upstream (and of the limit it is compared with).
pub const PRODUCER_SETTINGS: &[(&str, &str)] =
    &[("enable.idempotence", "true"), ("acks", "all"), ("linger.ms", "5"), ("compression.type", "lz4")];

#[derive(Debug, Clone, Copy)]
pub enum Offered {
    /// `per_sec` events per second for `seconds`.
    Paced { per_sec: u64, seconds: u64 },
    /// `events` events, as fast as the producer goes.
    AsFastAsPossible { events: u64 },
}

impl Offered {
    pub fn events(self) -> u64 {
        match self {
            Offered::Paced { per_sec, seconds } => per_sec * seconds,
            Offered::AsFastAsPossible { events } => events,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Produced {
    pub events: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// First send and last acknowledgement.
    pub started: Instant,
    pub acked: Instant,
    pub last_send: Instant,
}

/// A sampled event: its id and send time (epoch millis), for visibility probes.
pub type Probe = (String, i64);

/// Send `offered` events from `events` (cycled if fewer) to `topic`; wait for every ack.
/// With `stamp_time`, each event carries its send time; a probe is reported about every
/// `probe_every` (never if None).
pub fn produce(
    config: &Config,
    topic: &str,
    events: &Arc<Vec<Prepared>>,
    offered: Offered,
    stamp_time: bool,
    probe_every: Option<Duration>,
    probes: Option<tokio::sync::mpsc::UnboundedSender<Probe>>,
) -> anyhow::Result<Produced> {
    if events.is_empty() {
        bail!("no events to send");
    }
    let mut cc = base_client_config(config);
    for (k, v) in PRODUCER_SETTINGS {
        cc.set(*k, *v);
    }
    cc.set("queue.buffering.max.messages", "1000000").set("message.timeout.ms", "120000");
    let producer: BaseProducer<DeliveryTracker> = cc.create_with_context(DeliveryTracker::default())?;
    let total = offered.events();
    let mut buf = Vec::with_capacity(1024);
    let mut last_probe: Option<Instant> = None;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut send = |i: u64, producer: &BaseProducer<DeliveryTracker>| -> anyhow::Result<()> {
        let p = &events[(i % events.len() as u64) as usize];
        let payload: &[u8] = if stamp_time {
            let ms = now_ms();
            stamp(&p.json, ms, &mut buf);
            if let (Some(every), Some(tx)) = (probe_every, &probes) {
                if last_probe.is_none_or(|t| t.elapsed() >= every) {
                    last_probe = Some(Instant::now());
                    let _ = tx.send((p.id.clone(), ms));
                }
            }
            &buf
        } else {
            &p.json
        };
        let mut record = BaseRecord::to(topic).payload(payload).key(p.key.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    };
    match offered {
        Offered::AsFastAsPossible { .. } => {
            while sent < total {
                send(sent, &producer)?;
                sent += 1;
                if sent.is_multiple_of(1000) {
                    producer.poll(Duration::ZERO);
                    if ABORT.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                }
            }
        }
        Offered::Paced { per_sec, .. } => {
            while sent < total {
                let due = ((started.elapsed().as_secs_f64() * per_sec as f64) as u64 + 1).min(total);
                while sent < due {
                    send(sent, &producer)?;
                    sent += 1;
                }
                producer.poll(Duration::ZERO);
                if ABORT.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    let last_send = Instant::now();
    producer.flush(Duration::from_secs(120))?;
    let acked = Instant::now();
    let failed = producer.context().failed.load(Ordering::SeqCst);
    let first_error = producer.context().first_error.lock().ok().and_then(|g| g.clone());
    Ok(Produced { events: sent, failed, first_error, started, acked, last_send })
}
