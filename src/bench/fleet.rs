//! The whole fleet at once: every stage of [`STAGES`](super::stages::STAGES) running together
//! against the broker, PostgreSQL and Redis, fed at fixed offered loads and at saturation.
//! Reports sustained throughput, loss (rows at the end against events produced), whether every
//! stage drained its input, produce → row latency, produce → searchable and produce →
//! `security-alerts` latency.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;

use super::data::{rate, Prepared};
use super::env::{BenchEnv, TopicRole};
use super::produce::{produce, Offered, Probe};
use super::proc::{check_abort, load_average, StageProc};
use super::stages::{progress, ProcessUsage, RunArgs, StageSpec};
use crate::runtime::kafka::base_client_config;
use crate::telemetry::now_ms;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// How the figure was taken.
    pub basis: &'static str,
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetRun {
    pub load: String,
    pub offered_per_sec: Option<u64>,
    pub stages: Vec<String>,
    pub produced: u64,
    pub produce_failures: u64,
    /// Events per second the producer actually sent.
    pub produced_per_sec: f64,
    pub rows: u64,
    /// produced − rows (zero when nothing was lost; negative would mean duplicates).
    pub lost: i64,
    pub dead_lettered: u64,
    /// Rows per second from the first send to the last row committed.
    pub events_per_sec: f64,
    /// Rows per second between 10% and 90% of the rows committed (the steady part).
    pub steady_events_per_sec: Option<f64>,
    /// From the last send to the last row committed.
    pub drain_seconds: f64,
    /// `audit_events.created_at − timestamp` over every row. `created_at` is `now()`, the
    /// start of persist's transaction: a lower bound that misses the INSERT and COMMIT.
    pub row_latency: Latency,
    /// The row latency split at `enriched_at` (the enrich stage's clock when it processed the
    /// event): produce → enrich, then enrich → persist's transaction.
    pub hops: Vec<Latency>,
    /// One event per 20 ms of sending, polled for by id every 10 ms until visible to another
    /// session: an upper bound (by up to one poll) on produce → row visible.
    pub visible_latency: Option<Latency>,
    /// The same probes searched for in OpenSearch every 50 ms (an `ids` search, so refresh
    /// included): produce → searchable, when the fleet has the index stage.
    pub searchable_latency: Option<Latency>,
    /// Per stage: records written to its input during the run, and how many it consumed.
    pub drained: Vec<StageDrain>,
    /// Alert records read from `security-alerts` during the run.
    pub alerts: u64,
    /// Per alert policy: produce → alert record on `security-alerts`.
    pub alert_latency: Vec<PolicyLatency>,
    /// The same over the alerts of every policy without group wait.
    pub immediate_alert_latency: Option<Latency>,
    pub usage: Vec<ProcessUsage>,
    /// CPU of the PostgreSQL backends serving the fleet's database, per million events.
    pub database_cpu_seconds_per_million: Option<f64>,
    pub load_average_at_start: [f64; 3],
}

#[derive(Debug, Clone, Serialize)]
pub struct StageDrain {
    pub stage: String,
    pub input_records: u64,
    pub consumed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyLatency {
    pub policy_id: String,
    pub latency: Latency,
}

/// Produce → `security-alerts` latency at 1,000 events/s, for the alerts meant to be sent
/// at once: those of policies with no group wait. Policies that group a burst into one
/// notification wait `group_wait_seconds` on purpose; their figures are in each run's
/// `alert_latency`.
#[derive(Debug, Clone, Serialize)]
pub struct AlertLatency {
    pub measured: bool,
    pub note: String,
    pub latency: Option<Latency>,
}

/// What an alert record on `security-alerts` was measured against.
const ALERT_BASIS: &str = "alert record read from security-alerts - send time of the event that opened the alert (its trigger's matchedAt)";

/// The alert-latency figure the target is judged on: policies in `immediate` (no group wait),
/// in the run offered `per_sec`.
pub fn alert_latency(runs: &[FleetRun], immediate: &[String], per_sec: u64) -> AlertLatency {
    let Some(run) = runs.iter().find(|r| r.offered_per_sec == Some(per_sec)) else {
        return AlertLatency { measured: false, note: format!("no fleet run at {per_sec}/s"), latency: None };
    };
    if !run.stages.iter().any(|s| s == "alert") {
        return AlertLatency { measured: false, note: "the fleet has no alert stage".into(), latency: None };
    }
    let Some(latency) = run.immediate_alert_latency.clone() else {
        return AlertLatency {
            measured: false,
            note: format!("no alert of the policies without group wait ({}) in the {per_sec}/s run", immediate.join(", ")),
            latency: None,
        };
    };
    let others: Vec<String> = run
        .alert_latency
        .iter()
        .filter(|p| !immediate.contains(&p.policy_id))
        .map(|p| format!("{} p99 {:.0} ms", p.policy_id, p.latency.p99_ms))
        .collect();
    AlertLatency {
        measured: true,
        note: format!(
            "{} alerts of policies without group wait ({}); grouping policies wait on purpose: {}",
            latency.samples,
            immediate.join(", "),
            if others.is_empty() { "none fired".to_string() } else { others.join(", ") }
        ),
        latency: Some(latency),
    }
}

/// Where the row latency goes, split at the enrich stage's processing time.
const HOPS: [(&str, &str); 2] = [
    ("enriched_at - timestamp: send -> processed by enrich (producer linger, fetch, enrich batch wait)", "enriched_at - \"timestamp\""),
    ("created_at - enriched_at: enrich -> persist's transaction (enrich commit, fetch, persist batch wait)", "created_at - enriched_at"),
];

/// Probes looked up per poll (one indexed lookup each).
pub(super) const MAX_PROBES_PER_POLL: usize = 256;

/// One event in this many milliseconds of sending is followed until its row is visible.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// No new row for this long after the last send ends a run (and counts the missing rows lost).
const STALL: Duration = Duration::from_secs(30);

/// Longest wait, once every row is in, for the other stages to drain and pending alerts
/// (whose group wait is 10 s by default) to be sent.
const DRAIN: Duration = Duration::from_secs(60);


/// One fleet run in a fresh phase (topics, groups, database).
pub async fn run_fleet(
    env: &mut BenchEnv,
    args: &RunArgs<'_>,
    fleet: &[StageSpec],
    name: &str,
    events: &Arc<Vec<Prepared>>,
    offered: Offered,
    immediate_policies: &[String],
) -> anyhow::Result<FleetRun> {
    let load = load_average();
    let phase = env.phase(name, true).await?;
    let brokers = env.brokers.clone();
    for s in fleet {
        env.remember_group(&phase.group(s.name));
    }
    let Some(db_url) = phase.database_url.clone() else { bail!("fleet phase without database") };
    let sink = fleet.iter().find(|s| s.event_table.is_some()).context("a fleet needs a stage that writes one row per event")?;
    let event_table = sink.event_table.unwrap_or("audit_events");
    let alerting = fleet.iter().any(|s| s.outputs.contains(&TopicRole::SecurityAlerts));

    let mut procs: Vec<StageProc> = Vec::new();
    for s in fleet {
        procs.push(args.spawn(&phase, &brokers, s)?);
    }
    // Start producing only once every stage owns its partitions.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        check_abort()?;
        let mut all = true;
        for p in procs.iter_mut() {
            if !p.is_running() {
                bail!("{} exited during start-up:\n{}", p.stage, p.log_tail(20));
            }
            all &= progress(p)?.assigned;
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("fleet stages not assigned within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sink_index = fleet.iter().position(|s| s.name == sink.name).unwrap_or(0);
    let cpu_start: Vec<f64> = procs.iter().map(|p| p.cpu_seconds().unwrap_or(f64::NAN)).collect();
    let db_cpu_start = args.database_cpu(&phase, sink);

    let config = phase.config(&brokers)?;
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = if alerting {
        let config = config.clone();
        let topic = phase.topic(TopicRole::SecurityAlerts);
        let stop = stop_reader.clone();
        // The topic's own count (topics other than the raw and enriched ones have their own).
        let partitions = config.topics.security_alerts.partitions;
        Some(tokio::task::spawn_blocking(move || read_alerts(&config, &topic, partitions, &stop)))
    } else {
        None
    };
    let topic = phase.topic(TopicRole::Raw);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Probe>();
    let probing = matches!(offered, Offered::Paced { .. });
    let mut producer = Some({
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            produce(&config, &topic, &events, offered, true, probing.then_some(PROBE_EVERY), probing.then_some(tx))
        })
    });

    let probe_pool = PgPoolOptions::new().max_connections(1).connect(&db_url).await?;
    let search = if fleet.iter().any(|s| s.bound == super::stages::Bound::OpenSearchBulk) {
        let settings = phase.config(&brokers)?.index;
        let pattern = format!("{}-*", settings.prefix);
        Some((crate::index::client::SearchClient::new(&settings)?, pattern))
    } else {
        None
    };
    let mut pending_search: Vec<Probe> = Vec::new();
    let mut searchable: Vec<f64> = Vec::new();
    let mut pending: Vec<Probe> = Vec::new();
    let mut visible: Vec<f64> = Vec::new();
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let first = Instant::now();
    let mut produced = None;
    let mut tick = 0u64;
    let mut last_change = Instant::now();
    let finished_at = loop {
        check_abort()?;
        while let Ok(p) = rx.try_recv() {
            if search.is_some() {
                pending_search.push(p.clone());
            }
            pending.push(p);
        }
        if !pending.is_empty() {
            probe(&probe_pool, &mut pending, &mut visible, event_table).await?;
        }
        if let Some((client, pattern)) = search.as_ref().filter(|_| tick.is_multiple_of(5) && !pending_search.is_empty()) {
            super::search::probe_searchable(client, pattern, &mut pending_search, &mut searchable).await?;
        }
        if tick.is_multiple_of(5) {
            let p = progress(&procs[sink_index])?;
            let now = Instant::now();
            samples.push((now, p.sunk));
            if let Some(handle) = producer.take_if(|h| h.is_finished()) {
                let out = handle.await.context("producer thread")??;
                if out.failed > 0 {
                    bail!("{} events not delivered: {}", out.failed, out.first_error.unwrap_or_default());
                }
                produced = Some(out);
            }
            if samples.len() < 2 || samples[samples.len() - 2].1 != p.sunk {
                last_change = now;
            }
            if let Some(out) = &produced {
                if p.sunk >= out.events {
                    break now;
                }
                // Stalled short of the goal: report the loss instead of waiting forever.
                if now - last_change > STALL {
                    break last_change;
                }
            }
            for p in procs.iter_mut() {
                if !p.is_running() {
                    bail!("{} exited during the run:\n{}", p.stage, p.log_tail(20));
                }
            }
            if first.elapsed() > args.timeout {
                bail!("fleet run {name}: {} rows after {:?}", p.sunk, args.timeout);
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let Some(out) = produced else { bail!("producer result missing") };
    // Probes still pending were not visible before the last row committed; take them now.
    while let Ok(p) = rx.try_recv() {
        pending.push(p);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pending.is_empty() && Instant::now() < deadline {
        probe(&probe_pool, &mut pending, &mut visible, event_table).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The index stage may still be behind persist: wait for its probes too (bounded).
    if let Some((client, pattern)) = &search {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pending_search.is_empty() && Instant::now() < deadline {
            super::search::probe_searchable(client, pattern, &mut pending_search, &mut searchable).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Every other stage drains its input, and alerts still in their group wait are sent.
    let drain_deadline = Instant::now() + DRAIN;
    let drained = loop {
        check_abort()?;
        let drained = drain_state(&procs, fleet, &phase, out.events)?;
        let pending_alerts: i64 = if alerting {
            sqlx::query_scalar("SELECT count(*) FROM audit_alerts WHERE status = 'pending'").fetch_one(&probe_pool).await?
        } else {
            0
        };
        if (drained.iter().all(|d| d.consumed >= d.input_records) && pending_alerts == 0) || Instant::now() > drain_deadline {
            break drained;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let drained_at = Instant::now();
    probe_pool.close().await;
    // Records the dispatcher sent just now are still on their way to the reader.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_reader.store(true, Ordering::Relaxed);
    let alert_samples = match reader {
        Some(h) => h.await.context("alert reader")??,
        None => Vec::new(),
    };

    let db_cpu_end = args.database_cpu(&phase, sink);
    let mut usage = Vec::new();
    let mut dead = 0u64;
    let cpu_window = (drained_at - out.started).as_secs_f64();
    for (i, p) in procs.iter_mut().enumerate() {
        let cpu = p.cpu_seconds().unwrap_or(f64::NAN) - cpu_start[i];
        if let Ok(s) = p.scrape() {
            dead += s.sum("auditflow_dlq_total", &[]) as u64;
        }
        usage.push(ProcessUsage {
            stage: p.stage.clone(),
            cpu_seconds_per_million: cpu / out.events.max(1) as f64 * 1e6,
            cpu_cores: cpu / cpu_window.max(1e-9),
            peak_rss_mb: p.peak_rss_bytes().unwrap_or(0) as f64 / 1_048_576.0,
        });
    }
    for p in procs.iter_mut() {
        p.terminate(Duration::from_secs(30));
    }

    let pool = PgPool::connect(&db_url).await?;
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {event_table}")).fetch_one(&pool).await?;
    let (n, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        r#"SELECT count(*),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                  max(ms)
             FROM (SELECT (extract(epoch FROM created_at - "timestamp") * 1000)::float8 AS ms FROM audit_events) t"#,
    )
    .fetch_one(&pool)
    .await?;
    let mut hops = Vec::new();
    for (basis, expr) in HOPS {
        let (n, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(&format!(
            r#"SELECT count(*),
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                      max(ms)
                 FROM (SELECT (extract(epoch FROM {expr}) * 1000)::float8 AS ms FROM audit_events) t"#
        ))
        .fetch_one(&pool)
        .await?;
        hops.push(Latency {
            basis,
            samples: n.max(0) as u64,
            p50_ms: p50.unwrap_or(f64::NAN),
            p99_ms: p99.unwrap_or(f64::NAN),
            max_ms: max.unwrap_or(f64::NAN),
        });
    }
    pool.close().await;

    let steady = steady_rate(&samples, rows.max(0) as u64);
    let elapsed = (finished_at - out.started).as_secs_f64();
    Ok(FleetRun {
        load: match offered {
            Offered::Paced { per_sec, seconds } => format!("{per_sec}/s for {seconds} s"),
            Offered::AsFastAsPossible { events } => format!("saturation ({events} events)"),
        },
        offered_per_sec: match offered {
            Offered::Paced { per_sec, .. } => Some(per_sec),
            Offered::AsFastAsPossible { .. } => None,
        },
        stages: fleet.iter().map(|s| s.name.to_string()).collect(),
        produced: out.events,
        produce_failures: out.failed,
        produced_per_sec: rate(out.events, (out.last_send - out.started).as_secs_f64()),
        rows: rows.max(0) as u64,
        lost: out.events as i64 - rows,
        dead_lettered: dead,
        events_per_sec: rate(rows.max(0) as u64, elapsed),
        steady_events_per_sec: steady,
        drain_seconds: finished_at.saturating_duration_since(out.last_send).as_secs_f64(),
        row_latency: Latency {
            basis: "created_at (now() = start of persist's transaction) - timestamp (send time), every row",
            samples: n.max(0) as u64,
            p50_ms: p50.unwrap_or(f64::NAN),
            p99_ms: p99.unwrap_or(f64::NAN),
            max_ms: max.unwrap_or(f64::NAN),
        },
        hops,
        visible_latency: if visible.is_empty() {
            None
        } else {
            Some(percentiles("first seen by a 10 ms poll for one event per 20 ms - send time", &mut visible))
        },
        searchable_latency: if searchable.is_empty() {
            None
        } else {
            Some(percentiles("first found by a 50 ms ids search for one event per 20 ms - send time (refresh included)", &mut searchable))
        },
        drained,
        alerts: alert_samples.len() as u64,
        immediate_alert_latency: {
            let mut v: Vec<f64> =
                alert_samples.iter().filter(|(p, _)| immediate_policies.contains(p)).map(|(_, ms)| *ms).collect();
            (!v.is_empty()).then(|| percentiles(ALERT_BASIS, &mut v))
        },
        alert_latency: by_policy(alert_samples),
        usage,
        database_cpu_seconds_per_million: match (db_cpu_start, db_cpu_end) {
            (Some(a), Some(b)) => Some((b - a) / out.events.max(1) as f64 * 1e6),
            _ => None,
        },
        load_average_at_start: load,
    })
}

/// Look pending probes up by id; record the ones now visible. Rows of different partitions
/// become visible out of send order, so every pending probe is looked at (up to a bound).
async fn probe(pool: &PgPool, pending: &mut Vec<Probe>, visible: &mut Vec<f64>, table: &str) -> anyhow::Result<()> {
    let take = pending.len().min(MAX_PROBES_PER_POLL);
    let ids: Vec<String> = pending[..take].iter().map(|(id, _)| id.clone()).collect();
    let found: Vec<String> = sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE id = ANY($1)"))
        .bind(&ids)
        .fetch_all(pool)
        .await?;
    settle(pending, &found, visible);
    Ok(())
}

/// Take the probes among `found` out of `pending`, recording how long after sending each was seen.
pub(super) fn settle(pending: &mut Vec<Probe>, found: &[String], visible: &mut Vec<f64>) {
    if found.is_empty() {
        return;
    }
    let now = now_ms();
    pending.retain(|(id, sent)| {
        if found.contains(id) {
            visible.push((now - sent) as f64);
            false
        } else {
            true
        }
    });
}

/// Records written to each stage's input (by the producer or the other stages, from their
/// metrics) against what the stage consumed.
fn drain_state(procs: &[StageProc], fleet: &[StageSpec], phase: &super::env::Phase, raw_events: u64) -> anyhow::Result<Vec<StageDrain>> {
    let mut written: HashMap<String, u64> = HashMap::new();
    written.insert(phase.topic(TopicRole::Raw), raw_events);
    let mut consumed = Vec::new();
    for p in procs {
        let s = p.scrape()?;
        for (topic, v) in s.by_label("auditflow_produced_total", "topic") {
            *written.entry(topic).or_default() += v as u64;
        }
        consumed.push(s.sum("auditflow_consumed_total", &[]) as u64);
    }
    Ok(fleet
        .iter()
        .zip(consumed)
        .map(|(spec, consumed)| StageDrain {
            stage: spec.name.to_string(),
            input_records: written.get(&phase.topic(spec.input)).copied().unwrap_or(0),
            consumed,
        })
        .collect())
}

/// Read `security-alerts` from the start until `stop`: per record, its policy and the time
/// from the send of the event that opened the alert to now.
fn read_alerts(config: &crate::config::Config, topic: &str, partitions: i32, stop: &AtomicBool) -> anyhow::Result<Vec<(String, f64)>> {
    let consumer: BaseConsumer = base_client_config(config)
        .set("group.id", format!("{topic}-latency-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(msg) = consumer.poll(Duration::from_millis(50)) else { continue };
        let received = now_ms();
        // Partition errors just after the topic was created are passed on and retried by
        // librdkafka itself; the records still arrive.
        let Ok(msg) = msg else { continue };
        let Some(record) = msg.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) else { continue };
        let policy = record["policyId"].as_str().unwrap_or("?").to_string();
        let opened = record["trigger"]["matchedAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        if let Some(opened) = opened {
            samples.push((policy, (received - opened) as f64));
        }
    }
    Ok(samples)
}

fn by_policy(samples: Vec<(String, f64)>) -> Vec<PolicyLatency> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (policy, ms) in samples {
        groups.entry(policy).or_default().push(ms);
    }
    groups
        .into_iter()
        .map(|(policy_id, mut values)| PolicyLatency { policy_id, latency: percentiles(ALERT_BASIS, &mut values) })
        .collect()
}

pub fn percentiles(basis: &'static str, values: &mut [f64]) -> Latency {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        values[i.min(values.len() - 1)]
    };
    Latency { basis, samples: values.len() as u64, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
}

/// Rate between the samples where 10% and 90% of `total` had been committed.
pub fn steady_rate(samples: &[(Instant, u64)], total: u64) -> Option<f64> {
    let lo = samples.iter().find(|(_, n)| *n as f64 >= total as f64 * 0.1)?;
    let hi = samples.iter().find(|(_, n)| *n as f64 >= total as f64 * 0.9)?;
    let dt = (hi.0 - lo.0).as_secs_f64();
    (dt > 0.0).then(|| (hi.1 - lo.1) as f64 / dt)
}
