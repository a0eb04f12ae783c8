//! The whole fleet at once: every stage of [`STAGES`] running together against the broker and
//! PostgreSQL, fed at fixed offered loads and at saturation. Reports sustained throughput, loss
//! (rows at the end against events produced) and produce → row latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::data::{rate, Prepared};
use super::env::{BenchEnv, TopicRole};
use super::produce::{produce, Offered, Probe};
use super::proc::{check_abort, load_average, StageProc};
use super::stages::{progress, ProcessUsage, RunArgs, StageSpec};
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
    pub usage: Vec<ProcessUsage>,
    /// CPU of the PostgreSQL backends serving the fleet's database, per million events.
    pub database_cpu_seconds_per_million: Option<f64>,
    pub load_average_at_start: [f64; 3],
}

/// Produce → `security-alerts` latency: the design point for when an alerting stage is part of
/// the fleet. It is measured from the alert records on `security-alerts`; with no stage in
/// [`STAGES`](super::stages::STAGES) writing that topic, it reports why it was not measured.
#[derive(Debug, Clone, Serialize)]
pub struct AlertLatency {
    pub measured: bool,
    pub note: String,
    pub latency: Option<Latency>,
}

pub fn alert_latency(fleet: &[StageSpec]) -> AlertLatency {
    match fleet.iter().find(|s| s.outputs.contains(&TopicRole::SecurityAlerts)) {
        None => AlertLatency {
            measured: false,
            note: format!(
                "not measured yet: no stage of this build writes security-alerts (fleet: {})",
                fleet.iter().map(|s| s.binary).collect::<Vec<_>>().join(", ")
            ),
            latency: None,
        },
        Some(s) => AlertLatency {
            measured: false,
            note: format!("not measured yet: {} writes security-alerts, but no alert reader is registered", s.binary),
            latency: None,
        },
    }
}

/// Where the row latency goes, split at the enrich stage's processing time.
const HOPS: [(&str, &str); 2] = [
    ("enriched_at - timestamp: send -> processed by enrich (producer linger, fetch, enrich batch wait)", "enriched_at - \"timestamp\""),
    ("created_at - enriched_at: enrich -> persist's transaction (enrich commit, fetch, persist batch wait)", "created_at - enriched_at"),
];

/// Probes looked up per poll (one indexed lookup each).
const MAX_PROBES_PER_POLL: usize = 256;

/// One event in this many milliseconds of sending is followed until its row is visible.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// No new row for this long after the last send ends a run (and counts the missing rows lost).
const STALL: Duration = Duration::from_secs(30);


/// One fleet run in a fresh phase (topics, groups, database).
pub async fn run_fleet(
    env: &mut BenchEnv,
    args: &RunArgs<'_>,
    fleet: &[StageSpec],
    name: &str,
    events: &Arc<Vec<Prepared>>,
    offered: Offered,
) -> anyhow::Result<FleetRun> {
    let load = load_average();
    let phase = env.phase(name, true).await?;
    let brokers = env.brokers.clone();
    for s in fleet {
        env.remember_group(&phase.group(s.name));
    }
    let Some(db_url) = phase.database_url.clone() else { bail!("fleet phase without database") };
    let sink = fleet.iter().rev().find(|s| s.needs_database).context("a fleet needs a stage that writes rows")?;

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
            pending.push(p);
        }
        if !pending.is_empty() {
            probe(&probe_pool, &mut pending, &mut visible).await?;
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
        probe(&probe_pool, &mut pending, &mut visible).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probe_pool.close().await;

    let db_cpu_end = args.database_cpu(&phase, sink);
    let mut usage = Vec::new();
    let mut dead = 0u64;
    let cpu_window = (finished_at - out.started).as_secs_f64();
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
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await?;
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
async fn probe(pool: &PgPool, pending: &mut Vec<Probe>, visible: &mut Vec<f64>) -> anyhow::Result<()> {
    let take = pending.len().min(MAX_PROBES_PER_POLL);
    let ids: Vec<String> = pending[..take].iter().map(|(id, _)| id.clone()).collect();
    let found: Vec<String> = sqlx::query_scalar("SELECT id FROM audit_events WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(pool)
        .await?;
    if found.is_empty() {
        return Ok(());
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
    Ok(())
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
