//! The stages the benchmark knows, and how one stage is measured alone on a pre-filled topic.
//!
//! Adding a stage is one entry in [`STAGES`]: its binary, the topic it reads (filled by the
//! stage before it, or by the benchmark for `audit-raw`), and the limit that bounds it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::env::{Phase, TopicRole};
use super::proc::{check_abort, StageProc};

/// The physical limit a stage is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Kafka's producer at the size of the stage's output records (acks=all).
    KafkaProduce,
    /// PostgreSQL `COPY` of the same rows into the same table.
    PostgresCopy,
    /// Kafka's consumer fetching the raw topic: a stage that writes little is bounded by
    /// how fast it can read.
    KafkaConsume,
    /// A plain `_bulk` of the same documents into OpenSearch at the same batch size.
    OpenSearchBulk,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::KafkaProduce => "kafka produce",
            Bound::PostgresCopy => "postgres COPY",
            Bound::KafkaConsume => "kafka consume",
            Bound::OpenSearchBulk => "opensearch _bulk",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    /// The stage name (metrics label, consumer group suffix).
    pub name: &'static str,
    /// The binary next to the benchmark's own.
    pub binary: &'static str,
    pub input: TopicRole,
    /// Topics it writes (records counted from its metrics).
    pub outputs: &'static [TopicRole],
    pub needs_database: bool,
    /// The table that holds one row per input event (checked against the input count, and
    /// polled for produce → row latency in the fleet).
    pub event_table: Option<&'static str>,
    pub bound: Bound,
}

/// Pipeline order: each stage's input is filled by the stages before it.
pub const STAGES: &[StageSpec] = &[
    StageSpec {
        name: "enrich",
        binary: "audit-enrich",
        input: TopicRole::Raw,
        outputs: &[TopicRole::Enriched, TopicRole::Dlq],
        needs_database: false,
        event_table: None,
        bound: Bound::KafkaProduce,
    },
    StageSpec {
        name: "persist",
        binary: "audit-persist",
        input: TopicRole::Enriched,
        outputs: &[TopicRole::Dlq, TopicRole::Checkpoints],
        needs_database: true,
        event_table: Some("audit_events"),
        bound: Bound::PostgresCopy,
    },
    StageSpec {
        name: "compliance",
        binary: "audit-compliance",
        input: TopicRole::Enriched,
        outputs: &[TopicRole::ComplianceEvents, TopicRole::Dlq],
        needs_database: true,
        event_table: None,
        bound: Bound::KafkaProduce,
    },
    StageSpec {
        name: "rules",
        binary: "audit-rules",
        input: TopicRole::Enriched,
        outputs: &[TopicRole::RuleMatches, TopicRole::SecurityActions, TopicRole::Dlq],
        needs_database: false,
        event_table: None,
        bound: Bound::KafkaProduce,
    },
    StageSpec {
        name: "alert",
        binary: "audit-alert",
        input: TopicRole::RuleMatches,
        outputs: &[TopicRole::SecurityAlerts, TopicRole::AlertDlq],
        needs_database: true,
        event_table: None,
        bound: Bound::KafkaConsume,
    },
    StageSpec {
        name: "index",
        binary: "audit-index",
        input: TopicRole::Enriched,
        outputs: &[TopicRole::Dlq],
        needs_database: true,
        event_table: None,
        bound: Bound::OpenSearchBulk,
    },
];

/// How one stage process behaved while it worked.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    pub stage: String,
    /// CPU seconds (user + system, all threads) per million input events.
    pub cpu_seconds_per_million: f64,
    /// Share of one core used while working.
    pub cpu_cores: f64,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageAlone {
    pub stage: String,
    pub binary: String,
    pub input_topic: String,
    pub events: u64,
    /// From partition assignment (start of consumption) to the commit of the last event.
    pub seconds: f64,
    pub events_per_sec: f64,
    pub usage: ProcessUsage,
    /// CPU of the PostgreSQL backends serving the stage, per million events (sink stages).
    pub database_cpu_seconds_per_million: Option<f64>,
    /// Records written per output topic role, from the stage's own metrics.
    pub produced: Vec<(String, u64)>,
    pub dead_lettered: u64,
    pub batch: BatchStats,
    pub bound: Bound,
    pub bound_per_sec: Option<f64>,
    pub ratio_to_bound: Option<f64>,
    pub load_average_at_start: [f64; 3],
}

/// The stage's committed batches, from its own histograms.
#[derive(Debug, Clone, Serialize)]
pub struct BatchStats {
    pub batches: u64,
    pub mean_messages: f64,
    /// From a batch's first message to its commit.
    pub mean_ms: f64,
}

/// Environment of a stage process in `phase`.
pub fn stage_env(phase: &Phase, brokers: &str, spec: &StageSpec, instance: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = phase.env(brokers);
    env.push(("AUDITFLOW_GROUP_ID".into(), phase.group(spec.name)));
    env.push(("AUDITFLOW_INSTANCE_ID".into(), format!("{}-{instance}", phase.prefix)));
    env.push(("AUDITFLOW_LOG".into(), "info,librdkafka=warn".into()));
    env.extend(extra.iter().cloned());
    env
}

/// Counters read from a stage's `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub assigned: bool,
    pub consumed: u64,
    pub sunk: u64,
}

pub fn progress(p: &StageProc) -> anyhow::Result<Progress> {
    let s = p.scrape()?;
    Ok(Progress {
        assigned: s.sum("auditflow_rebalances_total", &[("kind", "assign")]) > 0.0,
        consumed: s.sum("auditflow_consumed_total", &[]) as u64,
        sunk: s.sum("auditflow_sunk_total", &[]) as u64,
    })
}

/// Where stage binaries are, where their logs go, what extra environment they get, and how
/// long a phase may take.
pub struct RunArgs<'a> {
    pub bin_dir: &'a Path,
    pub log_dir: &'a Path,
    pub extra_env: &'a [(String, String)],
    /// Per stage name, a command line the binary runs under (profilers).
    pub wrappers: &'a [(String, String)],
    pub timeout: Duration,
    pub admin_database_url: &'a str,
}

impl RunArgs<'_> {
    pub fn spawn(&self, phase: &Phase, brokers: &str, spec: &StageSpec) -> anyhow::Result<StageProc> {
        let env = stage_env(phase, brokers, spec, spec.name, self.extra_env);
        let wrapper: Vec<String> = self
            .wrappers
            .iter()
            .filter(|(s, _)| s == spec.name)
            .flat_map(|(_, w)| w.split_whitespace().map(str::to_string))
            .collect();
        let log = self.log_dir.join(format!("{}-{}.log", phase.name, spec.binary));
        let mut p = StageProc::spawn(&self.bin_dir.join(spec.binary), spec.name, &env, &log, &wrapper)?;
        let startup = if wrapper.is_empty() { Duration::from_secs(60) } else { Duration::from_secs(600) };
        p.wait_metrics_addr(startup)?;
        Ok(p)
    }

    /// CPU seconds of the PostgreSQL backends serving `phase`'s database, if it has one.
    pub fn database_cpu(&self, phase: &Phase, spec: &StageSpec) -> Option<f64> {
        if !spec.needs_database {
            return None;
        }
        let db = phase.database.as_deref()?;
        let handle = tokio::runtime::Handle::try_current().ok()?;
        tokio::task::block_in_place(|| handle.block_on(super::env::backend_cpu_seconds(self.admin_database_url, db))).ok()
    }
}

/// Run `spec` alone until it has committed `events` input records.
pub fn run_alone(args: &RunArgs<'_>, phase: &Phase, brokers: &str, spec: &StageSpec, events: u64) -> anyhow::Result<StageAlone> {
    let load = super::proc::load_average();
    let timeout = args.timeout;
    let mut proc = args.spawn(phase, brokers, spec)?;
    let deadline = Instant::now() + timeout;
    let mut start: Option<(Instant, f64)> = None;
    let mut db_start = None;
    let (end, cpu_end, db_end) = loop {
        check_abort()?;
        let now = Instant::now();
        let p = progress(&proc)?;
        if p.assigned && start.is_none() {
            start = Some((now, proc.cpu_seconds().unwrap_or(f64::NAN)));
            db_start = args.database_cpu(phase, spec);
        }
        if start.is_some() && p.consumed >= events {
            break (now, proc.cpu_seconds().unwrap_or(f64::NAN), args.database_cpu(phase, spec));
        }
        if !proc.is_running() {
            bail!("{} exited before it finished:\n{}", spec.binary, proc.log_tail(20));
        }
        if now > deadline {
            bail!("{} consumed {} of {events} events within {timeout:?}", spec.binary, p.consumed);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some((started, cpu_start)) = start else { bail!("never assigned") };
    let scrape = proc.scrape()?;
    let produced: Vec<(String, u64)> = scrape
        .by_label("auditflow_produced_total", "topic")
        .into_iter()
        .map(|(t, v)| (t, v as u64))
        .collect();
    let dead_lettered = scrape.sum("auditflow_dlq_total", &[]) as u64;
    let batches = scrape.sum("auditflow_batch_size_count", &[]);
    let batch = BatchStats {
        batches: batches as u64,
        mean_messages: scrape.sum("auditflow_batch_size_sum", &[]) / batches.max(1.0),
        mean_ms: scrape.sum("auditflow_batch_processing_seconds_sum", &[]) * 1000.0 / batches.max(1.0),
    };
    let peak = proc.peak_rss_bytes().unwrap_or(0);
    proc.terminate(Duration::from_secs(30));
    let seconds = (end - started).as_secs_f64();
    let cpu = cpu_end - cpu_start;
    Ok(StageAlone {
        stage: spec.name.to_string(),
        binary: spec.binary.to_string(),
        input_topic: phase.topic(spec.input),
        events,
        seconds,
        events_per_sec: super::data::rate(events, seconds),
        usage: ProcessUsage {
            stage: spec.name.to_string(),
            cpu_seconds_per_million: cpu / events.max(1) as f64 * 1e6,
            cpu_cores: cpu / seconds.max(1e-9),
            peak_rss_mb: peak as f64 / 1_048_576.0,
        },
        database_cpu_seconds_per_million: match (db_start, db_end) {
            (Some(a), Some(b)) => Some((b - a) / events.max(1) as f64 * 1e6),
            _ => None,
        },
        produced,
        dead_lettered,
        batch,
        bound: spec.bound,
        bound_per_sec: None,
        ratio_to_bound: None,
        load_average_at_start: load,
    })
}
