//! `auditflow-bench`: every stage alone and the whole fleet, measured against the limits of
//! the machine it runs on (Kafka's own producer/consumer tools, PostgreSQL `COPY`), with the
//! same data in the same run. Runs against the local stack in uniquely named topics and
//! databases, bounded in time, and removes what it created.
//!
//! Phases, in order:
//! 1. generate the [`EventMix`](crate::demo::EventMix) and serialise it (before any clock);
//! 2. fill `audit-raw` with `--events` events;
//! 3. limits: ConsumerPerformance on that topic, ProducerPerformance (enriched record size, and
//!    the raw events themselves), `COPY` of the same rows into a fresh `audit_events`;
//! 4. each stage of [`stages::STAGES`] alone, in pipeline order, on the topic the previous
//!    one filled;
//! 5. the rules stage on the Sigma pack against its native form (`--pack-rounds`);
//! 6. the fleet: all stages together at each `--paced-rates` for `--paced-secs`, then at
//!    saturation;
//! 7. tracing: the fleet at saturation with tracing off, at 1% and at 100% of traces recorded,
//!    spans to the stack's Jaeger (`--tracing-events`, `--tracing-rounds`);
//! 8. search: `--search-docs` documents in OpenSearch, the CLI's typical queries timed;
//! 9. api: HTTP bulk ingest through `audit-api` against producing the same events to Kafka,
//!    and the search phase's questions through the API against the same bodies sent
//!    straight to OpenSearch.
//!
//! The index stage and the search phase run when the stack has OpenSearch
//! (`AUDITFLOW_OPENSEARCH_URL`).

pub mod api;
pub mod data;
pub mod env;
pub mod fleet;
pub mod ledger;
pub mod limits;
pub mod packs;
pub mod proc;
pub mod produce;
pub mod report;
pub mod search;
pub mod stages;
pub mod traces;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use self::env::{BenchEnv, TopicRole};
use self::fleet::{alert_latency, run_fleet};
use self::limits::Payload;
use self::produce::{produce, Offered, PRODUCER_SETTINGS};
use self::report::{Fill, Fleet, LoadInfo, Machine, Report, Settings};
use self::stages::{RunArgs, STAGES};
use crate::config::Config;

/// What to run. Every figure is bounded: counts, durations and a per-phase timeout.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Events per stage-alone run (and for the limits measured on the same data).
    #[arg(long, default_value_t = 300_000)]
    pub events: u64,
    /// Seed of the event mix.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct users in the mix.
    #[arg(long, default_value_t = 5000)]
    pub users: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Offered loads of the fleet runs, events per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub paced_rates: Vec<u64>,
    /// Duration of each paced fleet run.
    #[arg(long, default_value_t = 30)]
    pub paced_secs: u64,
    /// Events of the saturation fleet run (0 = skip it).
    #[arg(long, default_value_t = 300_000)]
    pub saturation_events: u64,
    /// Documents indexed for the search-latency phase.
    #[arg(long, default_value_t = 1_000_000)]
    pub search_docs: u64,
    /// Timed runs of each query in the search phase (after 5 warm-up runs).
    #[arg(long, default_value_t = 50)]
    pub search_repeat: usize,
    /// Events sent over HTTP (and straight to Kafka) in the API phase.
    #[arg(long, default_value_t = 100_000)]
    pub api_events: u64,
    /// Rounds of the rule-pack comparison (the rules stage on the Sigma pack and on its native
    /// form, alternately).
    #[arg(long, default_value_t = 2)]
    pub pack_rounds: usize,
    /// Events of each fleet run of the tracing comparison (0 = skip it).
    #[arg(long, default_value_t = 100_000)]
    pub tracing_events: u64,
    /// Rounds of the tracing comparison (the fleet with tracing off, at 1% and at 100%).
    #[arg(long, default_value_t = 2)]
    pub tracing_rounds: usize,
    /// Phases to skip: limits, stages, packs, fleet, tracing, search, api.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Extra environment for every stage process, e.g. AUDITFLOW_BATCH_MAX_MESSAGES=10000.
    #[arg(long = "stage-env", value_parser = parse_key_value)]
    pub stage_env: Vec<(String, String)>,
    /// Run a stage's binary under a command, for profiling, e.g.
    /// `--wrap-stage "enrich=valgrind --tool=callgrind --callgrind-out-file=/tmp/enrich.cg"`.
    /// Its figures are then the profiler's, not the stage's.
    #[arg(long = "wrap-stage", value_parser = parse_key_value)]
    pub wrap_stage: Vec<(String, String)>,
    /// Directory of the stage binaries (default: next to this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// `scripts/stack`, for `kafka-run` (default: the one in this source tree).
    #[arg(long)]
    pub stack_script: Option<PathBuf>,
    /// Where stage and tool logs go (default: <target>/bench-logs/<run id>).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Upper bound of each phase, seconds.
    #[arg(long, default_value_t = 600)]
    pub phase_timeout_secs: u64,
    /// Keep the topics and databases (for debugging).
    #[arg(long)]
    pub keep: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            events: 300_000,
            seed: 42,
            users: 5000,
            partitions: 6,
            paced_rates: vec![1000, 10_000],
            paced_secs: 30,
            saturation_events: 300_000,
            search_docs: 1_000_000,
            search_repeat: 50,
            api_events: 100_000,
            pack_rounds: 2,
            tracing_events: 100_000,
            tracing_rounds: 2,
            skip: Vec::new(),
            stage_env: Vec::new(),
            wrap_stage: Vec::new(),
            bin_dir: None,
            stack_script: None,
            log_dir: None,
            phase_timeout_secs: 600,
            keep: false,
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Stop at the next check on SIGINT or SIGTERM, so children and topics are cleaned up.
pub fn install_signal_handlers() {
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else { return };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("bench: interrupted; stopping children and cleaning up");
        proc::ABORT.store(true, Ordering::Relaxed);
    });
}

/// Run the benchmark. Phases that fail are reported in `errors`; the rest still run.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<Report> {
    let load_start = proc::load_average();
    let started_at = Utc::now();
    let run_id = format!("bench_{}_{}", started_at.format("%Y%m%d%H%M%S"), &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let bin_dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("program directory")?.to_path_buf(),
    };
    let stack = opts.stack_script.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack"));
    let log_dir = opts.log_dir.clone().unwrap_or_else(|| {
        bin_dir.parent().map(|p| p.join("bench-logs")).unwrap_or_else(|| PathBuf::from("bench-logs")).join(&run_id)
    });
    std::fs::create_dir_all(&log_dir)?;
    let timeout = Duration::from_secs(opts.phase_timeout_secs);
    let skip = |phase: &str| opts.skip.iter().any(|s| s == phase);

    let mut stage_config_env: HashMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("AUDITFLOW_")).collect();
    // The rule pack of this source tree, wherever the benchmark is started from.
    let mut stage_env = opts.stage_env.clone();
    if !stage_config_env.contains_key("AUDITFLOW_RULES_DIR") && !stage_env.iter().any(|(k, _)| k == "AUDITFLOW_RULES_DIR") {
        let rules = stack.parent().and_then(|p| p.parent()).map(|root| root.join("rules")).filter(|d| d.is_dir());
        if let Some(dir) = rules {
            stage_env.push(("AUDITFLOW_RULES_DIR".into(), dir.display().to_string()));
        }
    }
    stage_config_env.extend(stage_env.iter().cloned());
    let stage_config = Config::from_sources(None, &stage_config_env).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let brokers = stage_config.kafka.brokers.clone();
    let mut env = BenchEnv::new(&run_id, &brokers, &stage_config.database.url, &stage_config.redis.url, opts.partitions);
    env.search = stage_config.index.url.is_some().then(|| stage_config.index.clone());
    // Without a search store the index stage has nowhere to write: leave it out.
    let stages_run: Vec<stages::StageSpec> =
        STAGES.iter().filter(|s| env.search.is_some() || s.bound != stages::Bound::OpenSearchBulk).copied().collect();
    let pseudonym_key = match &stage_config.privacy.pseudonym_key {
        Some(k) => Some(crate::privacy::SecretKey::parse("AUDITFLOW_PSEUDONYM_KEY", k)?),
        None => None,
    };
    let run_args = RunArgs {
        bin_dir: &bin_dir,
        log_dir: &log_dir,
        extra_env: &stage_env,
        wrappers: &opts.wrap_stage,
        timeout,
        admin_database_url: &stage_config.database.url,
    };
    let enricher = crate::enrich::Enricher::new(&stage_config.enrich.to_enrich_config())?;
    // Alerts of these policies are sent at once; the others group a burst on purpose.
    let immediate_policies: Vec<String> = stage_config
        .alert
        .policies
        .iter()
        .filter(|p| p.enabled && p.group_wait_seconds.unwrap_or(stage_config.alert.group_wait_seconds) == 0)
        .map(|p| p.id.clone())
        .collect();

    let needed = [opts.events, opts.saturation_events]
        .into_iter()
        .chain(opts.paced_rates.iter().map(|r| r * opts.paced_secs))
        .max()
        .unwrap_or(0)
        .max(1);
    let (events, generation) = data::generate(opts.seed, opts.users, needed);
    let events = Arc::new(events);

    let mut errors: Vec<String> = Vec::new();
    let mut limits = report::Limits::default();
    let mut stage_results = Vec::new();
    let mut ledger_evidence = None;
    let mut fill = None;
    let mut runs = Vec::new();
    let mut search_latency = None;
    let mut api_bench = None;
    let mut rule_packs = None;
    let mut tracing_cost = None;

    let outcome: anyhow::Result<()> = async {
        // Stage-alone phase: audit-raw filled once; each stage then reads what the previous wrote.
        let stages_phase = env.phase("stages", true).await?;
        for s in &stages_run {
            env.remember_group(&stages_phase.group(s.name));
        }
        let raw_topic = stages_phase.topic(TopicRole::Raw);
        {
            let config = stages_phase.config(&brokers)?;
            let ev = events.clone();
            let topic = raw_topic.clone();
            let n = opts.events;
            let out = tokio::task::spawn_blocking(move || {
                produce(&config, &topic, &ev, Offered::AsFastAsPossible { events: n }, false, None, None)
            })
            .await??;
            anyhow::ensure!(out.failed == 0, "fill: {} events not delivered", out.failed);
            let seconds = (out.acked - out.started).as_secs_f64();
            fill = Some(Fill { topic: raw_topic.clone(), events: out.events, seconds, events_per_sec: data::rate(out.events, seconds) });
        }

        // The same rows persist would write, for COPY and for the enriched record size.
        let copy_rows = data::copy_rows(&enricher, &events[..opts.events.min(events.len() as u64) as usize], &raw_topic, opts.partitions);

        if !skip("limits") {
            let group = format!("{run_id}-consumer-perf");
            env.remember_group(&group);
            let r = tokio::task::block_in_place(|| {
                limits::consumer_perf(&stack, &brokers, &raw_topic, &group, opts.events,
                    "ConsumerPerformance on the filled audit-raw (read_uncommitted, default fetch settings)",
                    &log_dir.join("consumer-perf.out"), timeout)
            });
            match r {
                Ok(c) => limits.kafka_consume = Some(c),
                Err(e) => errors.push(format!("limit kafka consume: {e:#}")),
            }

            let topic = env.extra_topic("limit-produce", opts.partitions).await?;
            let size = copy_rows.enriched_avro_bytes_mean.round().max(1.0) as usize;
            let r = tokio::task::block_in_place(|| {
                limits::producer_perf(&stack, &brokers, &topic, opts.events, Payload::Size(size), size as f64,
                    &[("acks", "all"), ("enable.idempotence", "true"), ("linger.ms", "5")],
                    "ProducerPerformance, enriched-record size, acks=all, idempotent, linger.ms=5, no compression",
                    &log_dir.join("producer-perf.out"), timeout)
            });
            match r {
                Ok(p) => limits.kafka_produce = Some(p),
                Err(e) => errors.push(format!("limit kafka produce: {e:#}")),
            }

            let topic = env.extra_topic("limit-produce-raw", opts.partitions).await?;
            let sample = log_dir.join("raw-events.jsonl");
            {
                let mut text = Vec::new();
                for p in events.iter().take(20_000) {
                    text.extend_from_slice(&p.json);
                    text.push(b'\n');
                }
                std::fs::write(&sample, text)?;
            }
            let props: Vec<(&str, &str)> = PRODUCER_SETTINGS.to_vec();
            let r = tokio::task::block_in_place(|| {
                limits::producer_perf(&stack, &brokers, &topic, opts.events, Payload::File(&sample), generation.raw_json_bytes_mean,
                    &props,
                    "ProducerPerformance, raw JSON events (random picks of 20k), the fill's producer settings",
                    &log_dir.join("producer-perf-raw.out"), timeout)
            });
            match r {
                Ok(p) => limits.kafka_produce_raw_events = Some(p),
                Err(e) => errors.push(format!("limit kafka produce (raw events): {e:#}")),
            }

            for (name, batch) in [("copy", None), ("copy-batched", Some(stage_config.stage.batch_max_messages))] {
                let copy_phase = env.database_phase(name, true).await?;
                let Some(url) = copy_phase.database_url.as_deref() else { continue };
                match limits::copy_perf(url, &copy_rows, batch).await {
                    Ok(c) if batch.is_none() => limits.postgres_copy = Some(c),
                    Ok(c) => limits.postgres_copy_batched = Some(c),
                    Err(e) => errors.push(format!("limit postgres {name}: {e:#}")),
                }
            }

            if let (Some(settings), Some(key)) = (env.index_settings("limit-bulk"), &pseudonym_key) {
                let n = opts.events.min(events.len() as u64) as usize;
                let docs = search::documents(&enricher, &events[..n], key, &stage_config.privacy.personal_fields, &settings);
                let r = async {
                    let client = crate::index::client::SearchClient::new(&settings)?;
                    search::wait_ready(&client, Duration::from_secs(60)).await?;
                    search::bulk_limit(&client, &settings, &docs, stage_config.stage.batch_max_messages).await
                }
                .await;
                match r {
                    Ok(b) => limits.opensearch_bulk = Some(b),
                    Err(e) => errors.push(format!("limit opensearch _bulk: {e:#}")),
                }
            }
        }
        drop(copy_rows);

        if !skip("stages") {
            let mut records: HashMap<String, u64> = HashMap::new();
            records.insert(raw_topic.clone(), opts.events);
            for spec in &stages_run {
                let input = stages_phase.topic(spec.input);
                let Some(&n) = records.get(&input) else {
                    errors.push(format!("stage {}: nothing filled its input {input}", spec.name));
                    continue;
                };
                let r = tokio::task::block_in_place(|| stages::run_alone(&run_args, &stages_phase, &brokers, spec, n));
                match r {
                    Ok(mut s) => {
                        for (topic, count) in &s.produced {
                            *records.entry(topic.clone()).or_default() += count;
                        }
                        s.bound_per_sec = match spec.bound {
                            stages::Bound::KafkaProduce => limits.kafka_produce.as_ref().map(|p| p.records_per_sec),
                            stages::Bound::PostgresCopy => limits.postgres_copy.as_ref().map(|c| c.rows_per_sec),
                            stages::Bound::KafkaConsume => limits.kafka_consume.as_ref().map(|c| c.fetch_records_per_sec),
                            stages::Bound::OpenSearchBulk => limits.opensearch_bulk.as_ref().map(|b| b.docs_per_sec),
                        };
                        s.ratio_to_bound = s.bound_per_sec.map(|b| s.events_per_sec / b);
                        if let (Some(table), Some(url)) = (spec.event_table, &stages_phase.database_url) {
                            let pool = sqlx::PgPool::connect(url).await?;
                            let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await?;
                            pool.close().await;
                            if rows as u64 != n - s.dead_lettered {
                                errors.push(format!("stage {}: {rows} rows in {table} for {n} events", spec.name));
                            }
                        }
                        stage_results.push(s);
                    }
                    Err(e) => errors.push(format!("stage {}: {e:#}", spec.name)),
                }
            }
        }

        // The rules stage on the Sigma pack and on the same rules written natively, reading the
        // audit-enriched the enrich stage filled above.
        let enriched = stage_results.iter().find(|s| s.stage == "enrich").map(|s| s.events - s.dead_lettered);
        let rules_dir = stage_env.iter().rev().find(|(k, _)| k == "AUDITFLOW_RULES_DIR").map(|(_, v)| PathBuf::from(v));
        if let (false, Some(n), Some(dir), Some(spec)) = (skip("packs"), enriched, rules_dir, stages_run.iter().find(|s| s.name == "rules")) {
            let r = tokio::task::block_in_place(|| packs::compare(&run_args, &stages_phase, &brokers, spec, &dir, n, opts.pack_rounds, &run_id));
            match r {
                Ok(c) => rule_packs = Some(c),
                Err(e) => errors.push(format!("rule packs: {e:#}")),
            }
        }

        if let Some(p) = stage_results.iter().find(|s| s.stage == "persist") {
            let batch = p.batch.mean_messages.round().max(1.0) as usize;
            let cpu = Some(p.usage.cpu_seconds_per_million);
            let (events, chains) = (p.events, opts.partitions as usize);
            ledger_evidence = Some(tokio::task::block_in_place(|| ledger::measure(events, chains, batch, cpu)));
        }

        if !skip("fleet") {
            let mut loads: Vec<(String, Offered)> = opts
                .paced_rates
                .iter()
                .map(|&r| (format!("fleet-{r}"), Offered::Paced { per_sec: r, seconds: opts.paced_secs }))
                .collect();
            if opts.saturation_events > 0 {
                loads.push(("fleet-max".into(), Offered::AsFastAsPossible { events: opts.saturation_events }));
            }
            for (name, offered) in loads {
                proc::check_abort()?;
                match run_fleet(&mut env, &run_args, &stages_run, &name, &events, offered, &immediate_policies).await {
                    Ok(r) => runs.push(r),
                    Err(e) => errors.push(format!("{name}: {e:#}")),
                }
            }
        }

        // What tracing costs the fleet, spans going to the stack's Jaeger.
        let otlp = std::env::var("AUDITFLOW_STACK_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
        match (skip("tracing") || opts.tracing_events == 0, otlp) {
            (true, _) => {}
            (false, None) => errors.push("tracing: AUDITFLOW_STACK_OTLP_ENDPOINT is not set (scripts/stack env)".into()),
            (false, Some(endpoint)) => {
                let r = traces::compare(&mut env, &run_args, &stages_run, &events, opts.tracing_events, opts.tracing_rounds.max(1), &endpoint, &immediate_policies).await;
                match r {
                    Ok(c) => tracing_cost = Some(c),
                    Err(e) => errors.push(format!("tracing: {e:#}")),
                }
            }
        }

        if !skip("search") && opts.search_docs > 0 {
            if let (Some(settings), Some(key)) = (env.index_settings("search"), &pseudonym_key) {
                let r = async {
                    let client = crate::index::client::SearchClient::new(&settings)?;
                    search::wait_ready(&client, Duration::from_secs(60)).await?;
                    search::search_latency(&client, &settings, key, &stage_config.privacy.personal_fields, &enricher,
                        opts.seed + 1, opts.users, opts.search_docs, opts.search_repeat).await
                }
                .await;
                match r {
                    Ok(l) => search_latency = Some(l),
                    Err(e) => errors.push(format!("search latency: {e:#}")),
                }
            }
        }

        if !skip("api") {
            let phase = env.phase("api", true).await?;
            let search = search_latency.as_ref();
            let args = api::ApiRun {
                bin_dir: &bin_dir,
                log_dir: &log_dir,
                phase: &phase,
                brokers: &brokers,
                extra_env: &stage_env,
                search_prefix: search.and_then(|_| env.index_settings("search")).map(|s| s.prefix),
                questions: search.map(|s| s.api_questions.clone()).unwrap_or_default(),
                docs: search.map(|s| s.docs).unwrap_or(0),
                repeat: opts.search_repeat,
            };
            match api::run(args, &events, opts.api_events).await {
                Ok(b) => api_bench = Some(b),
                Err(e) => errors.push(format!("api: {e:#}")),
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        errors.push(format!("{e:#}"));
    }

    let cleanup_problems = if opts.keep { Vec::new() } else { env.cleanup().await };
    let alert_latency = alert_latency(&runs, &immediate_policies, 1000);
    let fleet = Fleet { runs, alert_latency };
    let mut targets = report::targets(&stage_results, &fleet, &limits);
    targets.extend(report::search_targets(&stage_results, &fleet, &limits, search_latency.as_ref()));
    targets.push(report::ledger_target(ledger_evidence.as_ref()));
    targets.extend(report::api_targets(api_bench.as_ref()));
    targets.push(report::packs_target(rule_packs.as_ref()));
    targets.extend(report::tracing_targets(tracing_cost.as_ref()));
    let machine = machine();
    let provisional = load_start[0] > 0.5;
    Ok(Report {
        schema: "auditflow-bench/1",
        run_id,
        started_at: started_at.to_rfc3339(),
        finished_at: Utc::now().to_rfc3339(),
        git_commit: git_commit(),
        load_average: LoadInfo {
            at_start: load_start,
            at_end: proc::load_average(),
            provisional,
            note: if provisional {
                format!("1-minute load {:.2} on {} cores before the run: other work was competing; figures are provisional", load_start[0], machine.nproc)
            } else {
                "machine idle at start".into()
            },
        },
        machine,
        settings: Settings {
            events: opts.events,
            seed: opts.seed,
            users: opts.users,
            partitions: opts.partitions,
            batch_max_messages: stage_config.stage.batch_max_messages,
            batch_max_wait_ms: stage_config.stage.batch_max_wait_ms,
            geoip: enricher.has_geoip(),
            producer: PRODUCER_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            stage_env: opts.stage_env.clone(),
            wrapped_stages: opts.wrap_stage.clone(),
        },
        generation,
        fill,
        limits,
        stages: stage_results,
        ledger_evidence,
        fleet,
        search: search_latency,
        api: api_bench,
        rule_packs,
        tracing: tracing_cost,
        targets,
        errors,
        cleanup_problems,
    })
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_total_gib: proc::parse_status_kb(&meminfo, "MemTotal:").unwrap_or(0) as f64 / 1_048_576.0,
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        os: std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default(),
    }
}

fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git").args(["-C", dir, "rev-parse", "--short", "HEAD"]).output().ok()?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if commit.is_empty() {
        return None;
    }
    let dirty = std::process::Command::new("git")
        .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{commit}+dirty") } else { commit })
}
