//! The benchmark's result: one JSON document, a readable table, and the targets it is judged by.

use std::fmt::Write;

use serde::Serialize;

use super::data::Generation;
use super::fleet::{AlertLatency, FleetRun, Latency};
use super::limits::{ConsumePerf, CopyPerf, ProducePerf};
use super::stages::StageAlone;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    /// `uptime` load averages (1, 5, 15 min) before anything ran.
    pub at_start: [f64; 3],
    pub at_end: [f64; 3],
    /// True when other work was running when the benchmark started: figures are provisional.
    pub provisional: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub events: u64,
    pub seed: u64,
    pub users: u64,
    pub partitions: i32,
    pub batch_max_messages: usize,
    pub batch_max_wait_ms: u64,
    pub geoip: bool,
    pub producer: Vec<(String, String)>,
    pub stage_env: Vec<(String, String)>,
    /// Stages run under a profiler: their figures are not the stage's own.
    pub wrapped_stages: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fill {
    pub topic: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    /// acks=all at the size of an enriched record: bounds `audit-enrich`.
    pub kafka_produce: Option<ProducePerf>,
    /// acks=all with the raw JSON events themselves (random picks from a sample file).
    pub kafka_produce_raw_events: Option<ProducePerf>,
    pub kafka_consume: Option<ConsumePerf>,
    pub postgres_copy: Option<CopyPerf>,
    /// COPY in transactions of a sink batch each: the limit with a sink's commit pattern.
    pub postgres_copy_batched: Option<CopyPerf>,
    /// Plain `_bulk` of the index stage's documents: bounds `audit-index`.
    pub opensearch_bulk: Option<super::search::BulkLimit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub runs: Vec<FleetRun>,
    pub alert_latency: AlertLatency,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Met,
    Missed,
    NotMeasured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub value: Option<f64>,
    pub status: Status,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub load_average: LoadInfo,
    pub settings: Settings,
    pub generation: Generation,
    pub fill: Option<Fill>,
    pub limits: Limits,
    pub stages: Vec<StageAlone>,
    /// Merkle frontier and per-batch checkpoint signing, against persist's CPU.
    pub ledger_evidence: Option<super::ledger::LedgerEvidence>,
    pub fleet: Fleet,
    /// The CLI's typical queries over a large index.
    pub search: Option<super::search::SearchLatency>,
    /// HTTP ingest and search through `audit-api`.
    pub api: Option<super::api::ApiBench>,
    /// The rules stage on the Sigma pack against its native form.
    pub rule_packs: Option<super::packs::PackComparison>,
    /// The fleet with tracing off, at 1% and at 100%.
    pub tracing: Option<super::traces::TracingCost>,
    pub targets: Vec<Target>,
    /// Phases that failed (the rest of the report still stands).
    pub errors: Vec<String>,
    pub cleanup_problems: Vec<String>,
}

fn target(name: &str, goal: &str, value: Option<f64>, ok: impl Fn(f64) -> bool, note: String) -> Target {
    Target {
        name: name.into(),
        target: goal.into(),
        value,
        status: match value {
            None => Status::NotMeasured,
            Some(v) if ok(v) => Status::Met,
            Some(_) => Status::Missed,
        },
        note,
    }
}

/// The rules stage on the Sigma pack: at least 0.9 of its throughput on the same rules written
/// natively, same events, same run.
pub fn packs_target(p: Option<&super::packs::PackComparison>) -> Target {
    target(
        "rules stage, Sigma pack vs native pack",
        ">= 0.9 x",
        p.map(|p| p.ratio),
        |v| v >= 0.9,
        p.map(|p| {
            let list = |v: &[f64]| v.iter().map(|x| n(*x)).collect::<Vec<_>>().join(", ");
            format!("{} events; native {} ev/s, Sigma {} ev/s (rounds, median ratio)", p.events, list(&p.native_events_per_sec), list(&p.sigma_events_per_sec))
        })
        .unwrap_or_default(),
    )
}

/// Tracing: at most 3% of the fleet's throughput at 1% of traces recorded; the cost of
/// recording every trace is reported.
pub fn tracing_targets(t: Option<&super::traces::TracingCost>) -> Vec<Target> {
    let note = |mode: &str| {
        t.map(|t| {
            let list = |m: &str| {
                t.events_per_sec.iter().find(|(x, _)| x == m).map(|(_, v)| v.iter().map(|x| n(*x)).collect::<Vec<_>>().join(", ")).unwrap_or_default()
            };
            format!("{} events per run; off {} ev/s, {mode} {} ev/s (rounds, medians compared); lost {}", t.events, list("off"), list(mode), t.lost)
        })
        .unwrap_or_else(|| "tracing phase not run (needs the stack's Jaeger)".into())
    };
    vec![
        target("fleet throughput cost of tracing at 1%", "<= 3%", t.and_then(|t| t.cost_of("1%")).map(|c| c * 100.0), |v| v <= 3.0, note("1%")),
        target("fleet throughput cost of tracing at 100%", "reported (no target)", t.and_then(|t| t.cost_of("100%")).map(|c| c * 100.0), |_| true, note("100%")),
    ]
}

/// The ledger's outside evidence (trees, per-batch signatures) against persist's CPU.
pub fn ledger_target(e: Option<&super::ledger::LedgerEvidence>) -> Target {
    target(
        "ledger trees + per-batch signing",
        "<= 5% of persist CPU per event",
        e.and_then(|e| e.share_of_persist_cpu),
        |v| v <= 0.05,
        match e {
            Some(e) => format!(
                "{:.3} CPU s per million events ({} chains, batches of {}; {} signatures) vs persist {:.1}; +{:.1}% over persist without; {:.0} checkpoint rows per million event rows",
                e.cpu_seconds_per_million,
                e.chains,
                e.batch_events,
                e.signatures,
                e.persist_cpu_seconds_per_million.unwrap_or(f64::NAN),
                e.increase_over_persist_without.unwrap_or(f64::NAN) * 100.0,
                e.checkpoint_rows_per_million
            ),
            None => "persist not measured".into(),
        },
    )
}

/// The search store's targets: the index stage against a plain `_bulk`, produce → searchable at
/// 1,000 events/s; search latency is reported, with no target.
pub fn search_targets(stages: &[StageAlone], fleet: &Fleet, limits: &Limits, search: Option<&super::search::SearchLatency>) -> Vec<Target> {
    let index = stages.iter().find(|s| s.stage == "index");
    let at_1k = fleet.runs.iter().find(|r| r.offered_per_sec == Some(1000));
    let slowest = search.and_then(|s| s.queries.iter().map(|q| q.latency.p99_ms).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))));
    vec![
        target(
            "index vs plain _bulk",
            ">= 0.7 x opensearch _bulk rate",
            index.and_then(|s| s.ratio_to_bound),
            |v| v >= 0.7,
            match (index, &limits.opensearch_bulk) {
                (Some(i), Some(b)) => format!("{:.0} ev/s vs _bulk {:.0} docs/s ({} per request)", i.events_per_sec, b.docs_per_sec, b.batch),
                _ => "index stage or _bulk limit not measured".into(),
            },
        ),
        target(
            "p99 produce -> searchable at 1000/s",
            "<= 2000 ms (refresh included)",
            at_1k.and_then(|r| r.searchable_latency.as_ref()).map(|l| l.p99_ms),
            |v| v <= 2000.0,
            match at_1k.and_then(|r| r.searchable_latency.as_ref().map(|l| (r, l))) {
                Some((r, l)) => format!("p50 {:.0} ms over {} probes; lost {} of {} in that run", l.p50_ms, l.samples, r.lost, r.produced),
                None => "no 1000/s fleet run with the index stage".into(),
            },
        ),
        target(
            "search p99, slowest typical query",
            "reported (no target)",
            slowest,
            |_| true,
            match search {
                Some(s) => format!("{} documents in {} indices", s.docs, s.indices.len()),
                None => "search phase not run".into(),
            },
        ),
    ]
}

/// The API against what it fronts: ingest rate against Kafka, search overhead at p50.
pub fn api_targets(api: Option<&super::api::ApiBench>) -> Vec<Target> {
    let ingest = api.and_then(|a| a.ingest.as_ref());
    let worst = api.and_then(|a| a.queries.iter().max_by(|x, y| x.overhead_p50_ms.total_cmp(&y.overhead_p50_ms)));
    vec![
        target(
            "HTTP bulk ingest vs Kafka produce",
            ">= 0.5 x producing the same events",
            ingest.map(|i| i.ratio),
            |v| v >= 0.5,
            match ingest {
                Some(i) => format!("{:.0} ev/s over HTTP ({} per request, {} in flight) vs {:.0} ev/s to Kafka, {} events", i.http_events_per_sec, i.per_request, i.concurrent_requests, i.kafka_events_per_sec, i.events),
                None => "api phase not run".into(),
            },
        ),
        target(
            "API search overhead at p50, worst typical query",
            "<= 10 ms over the same query sent to OpenSearch",
            worst.map(|q| q.overhead_p50_ms),
            |v| v <= 10.0,
            match (api, worst) {
                (Some(a), Some(q)) => format!("{}: API p50 {:.1} ms, OpenSearch p50 {:.1} ms, over {} documents", q.name, q.api.p50_ms, q.direct.p50_ms, a.docs),
                _ => "no search through the API (needs the search phase)".into(),
            },
        ),
    ]
}

/// The targets, judged on this report's figures.
pub fn targets(stages: &[StageAlone], fleet: &Fleet, limits: &Limits) -> Vec<Target> {
    let stage = |n: &str| stages.iter().find(|s| s.stage == n);
    let mut out = Vec::new();
    let persist = stage("persist");
    out.push(target(
        "persist vs COPY",
        ">= 0.7 x postgres COPY rate",
        persist.and_then(|s| s.ratio_to_bound),
        |v| v >= 0.7,
        match (persist, &limits.postgres_copy) {
            (Some(p), Some(c)) => format!("{:.0} ev/s vs COPY {:.0} rows/s", p.events_per_sec, c.rows_per_sec),
            _ => "persist or COPY not measured".into(),
        },
    ));
    for name in ["enrich", "rules"] {
        let st = stage(name);
        out.push(target(
            &format!("{name} throughput"),
            ">= 100000 events/s",
            st.map(|s| s.events_per_sec),
            |v| v >= 100_000.0,
            String::new(),
        ));
        out.push(target(
            &format!("{name} vs broker produce"),
            ">= 0.5 x kafka produce limit (same record size)",
            st.and_then(|s| s.ratio_to_bound),
            |v| v >= 0.5,
            match (st, &limits.kafka_produce) {
                (Some(e), Some(k)) => format!(
                    "{:.0} ev/s vs ProducerPerformance {:.0} rec/s at {:.0} B",
                    e.events_per_sec, k.records_per_sec, k.record_bytes
                ),
                _ => format!("{name} or producer limit not measured"),
            },
        ));
    }
    let saturation = fleet.runs.iter().find(|r| r.offered_per_sec.is_none());
    let lost: i64 = fleet.runs.iter().map(|r| r.lost.abs()).sum();
    let undrained: Vec<String> = fleet
        .runs
        .iter()
        .flat_map(|r| r.drained.iter().filter(|d| d.consumed < d.input_records).map(move |d| format!("{} in {}", d.stage, r.load)))
        .collect();
    out.push(target(
        "fleet sustained, zero loss",
        ">= 20000 events/s with nothing lost",
        saturation.map(|r| if lost == 0 && undrained.is_empty() { r.events_per_sec } else { 0.0 }),
        |v| v >= 20_000.0,
        match saturation {
            Some(r) => format!(
                "saturation: {:.0} ev/s first send to last row (steady {:.0}); lost over all fleet runs: {lost}; {}",
                r.events_per_sec,
                r.steady_events_per_sec.unwrap_or(f64::NAN),
                if undrained.is_empty() { "every stage drained its input".to_string() } else { format!("not drained: {}", undrained.join(", ")) }
            ),
            None => "no saturation run".into(),
        },
    ));
    let at_1k = fleet.runs.iter().find(|r| r.offered_per_sec == Some(1000));
    out.push(target(
        "p99 produce -> alert at 1000/s",
        "<= 250 ms",
        fleet.alert_latency.latency.as_ref().map(|l| l.p99_ms),
        |v| v <= 250.0,
        format!(
            "{}{}",
            fleet.alert_latency.note,
            match at_1k {
                Some(r) => format!(
                    "; for reference produce -> row p99 at 1000/s: {:.0} ms (created_at), {} (visible)",
                    r.row_latency.p99_ms,
                    r.visible_latency.as_ref().map(|l| format!("{:.0} ms", l.p99_ms)).unwrap_or_else(|| "n/a".into())
                ),
                None => String::new(),
            }
        ),
    ));
    let rss = stages
        .iter()
        .map(|s| &s.usage)
        .chain(fleet.runs.iter().flat_map(|r| r.usage.iter()))
        .map(|u| (u.stage.clone(), u.peak_rss_mb))
        .fold(None::<(String, f64)>, |acc, (s, v)| match acc {
            Some((_, m)) if m >= v => acc,
            _ => Some((s, v)),
        });
    out.push(target(
        "peak RSS per stage process",
        "<= 150 MB",
        rss.as_ref().map(|(_, v)| *v),
        |v| v <= 150.0,
        rss.map(|(s, _)| format!("largest: {s}")).unwrap_or_default(),
    ));
    out
}

fn n(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) && c != '-' && !out.ends_with('-') {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn lat(l: &Latency) -> String {
    format!("{:>6} {:>6} {:>6}", n(l.p50_ms), n(l.p99_ms), n(l.max_ms))
}

/// The report as a table for people.
pub fn render_table(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "auditflow benchmark {}  ({} → {})", r.run_id, r.started_at, r.finished_at);
    let _ = writeln!(
        t,
        "machine: {} cores {}, {:.1} GiB, kernel {}; load avg at start {:.2} {:.2} {:.2}, at end {:.2} {:.2} {:.2}{}",
        r.machine.nproc,
        r.machine.cpu_model,
        r.machine.mem_total_gib,
        r.machine.kernel,
        r.load_average.at_start[0],
        r.load_average.at_start[1],
        r.load_average.at_start[2],
        r.load_average.at_end[0],
        r.load_average.at_end[1],
        r.load_average.at_end[2],
        if r.load_average.provisional { "  [PROVISIONAL: machine busy]" } else { "" }
    );
    let _ = writeln!(
        t,
        "data: {} events (EventMix seed {}), raw JSON {:.0} B, generated at {} ev/s; {} partitions; batch {} msgs / {} ms; geoip {}",
        n(r.settings.events as f64),
        r.settings.seed,
        r.generation.raw_json_bytes_mean,
        n(r.generation.events_per_sec),
        r.settings.partitions,
        r.settings.batch_max_messages,
        r.settings.batch_max_wait_ms,
        if r.settings.geoip { "on" } else { "off" }
    );
    if let Some(f) = &r.fill {
        let _ = writeln!(t, "fill: {} events to audit-raw at {} ev/s", n(f.events as f64), n(f.events_per_sec));
    }
    let _ = writeln!(t, "\nLIMITS (same data, same run)                                  records/s");
    if let Some(p) = &r.limits.kafka_produce {
        let _ = writeln!(t, "  kafka produce, acks=all, {:>4.0} B records (enriched size)   {:>10}", p.record_bytes, n(p.records_per_sec));
    }
    if let Some(p) = &r.limits.kafka_produce_raw_events {
        let _ = writeln!(t, "  kafka produce, acks=all, raw JSON events, lz4              {:>10}", n(p.records_per_sec));
    }
    if let Some(c) = &r.limits.kafka_consume {
        let _ = writeln!(t, "  kafka consume (fetch), raw topic                           {:>10}", n(c.fetch_records_per_sec));
    }
    if let Some(c) = &r.limits.postgres_copy {
        let _ = writeln!(
            t,
            "  postgres COPY into audit_events                            {:>10}   (backend {:.1} CPU s/M rows)",
            n(c.rows_per_sec),
            c.backend_cpu_seconds_per_million.unwrap_or(f64::NAN)
        );
    }
    if let Some(c) = &r.limits.postgres_copy_batched {
        let _ = writeln!(
            t,
            "  postgres COPY, one transaction per {:>5} rows              {:>10}   (backend {:.1} CPU s/M rows)",
            r.settings.batch_max_messages,
            n(c.rows_per_sec),
            c.backend_cpu_seconds_per_million.unwrap_or(f64::NAN)
        );
    }
    if let Some(b) = &r.limits.opensearch_bulk {
        let _ = writeln!(t, "  opensearch _bulk, {:>5} documents per request              {:>10}", b.batch, n(b.docs_per_sec));
    }
    let _ = writeln!(t, "\nSTAGES ALONE on a pre-filled topic");
    let _ = writeln!(
        t,
        "  {:<9} {:>9} {:>10} {:<14} {:>6} {:>11} {:>6} {:>9} {:>14}",
        "stage", "events", "events/s", "bound", "ratio", "CPU s/M ev", "cores", "peak RSS", "DB CPU s/M ev"
    );
    for s in &r.stages {
        let _ = writeln!(
            t,
            "  {:<9} {:>9} {:>10} {:<14} {:>6} {:>11.1} {:>6.2} {:>6.0} MB {:>14}",
            s.stage,
            n(s.events as f64),
            n(s.events_per_sec),
            s.bound.as_str(),
            s.ratio_to_bound.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            s.usage.cpu_seconds_per_million,
            s.usage.cpu_cores,
            s.usage.peak_rss_mb,
            s.database_cpu_seconds_per_million.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
        );
        let _ = writeln!(
            t,
            "      {} batches of {:.0} messages, {:.0} ms each from first message to commit",
            s.batch.batches, s.batch.mean_messages, s.batch.mean_ms
        );
    }
    let _ = writeln!(
        t,
        "\nFLEET ({}) — latency ms: p50 p99 max",
        r.fleet.runs.first().map(|f| f.stages.join(" + ")).unwrap_or_else(|| "not run".into())
    );
    let _ = writeln!(
        t,
        "  {:<26} {:>9} {:>9} {:>5} {:>9} {:>9} {:>22} {:>22}",
        "offered", "produced", "rows", "lost", "events/s", "steady/s", "row created_at", "visible (sampled)"
    );
    for f in &r.fleet.runs {
        let _ = writeln!(
            t,
            "  {:<26} {:>9} {:>9} {:>5} {:>9} {:>9} {:>22} {:>22}",
            f.load,
            n(f.produced as f64),
            n(f.rows as f64),
            f.lost,
            n(f.events_per_sec),
            f.steady_events_per_sec.map(n).unwrap_or_else(|| "-".into()),
            lat(&f.row_latency),
            f.visible_latency.as_ref().map(lat).unwrap_or_else(|| "-".into())
        );
        for h in &f.hops {
            let what = h.basis.split(':').next().unwrap_or(h.basis);
            let _ = writeln!(t, "      {:<46} {}", what, lat(h));
        }
        if let Some(l) = &f.searchable_latency {
            let _ = writeln!(t, "      {:<46} {}   ({} probes)", "produce -> searchable in OpenSearch", lat(l), l.samples);
        }
        let drained: Vec<String> = f.drained.iter().map(|d| format!("{} {}/{}", d.stage, n(d.consumed as f64), n(d.input_records as f64))).collect();
        let _ = writeln!(t, "      consumed/input: {}", drained.join(", "));
        let _ = writeln!(t, "      {} alerts on security-alerts; produce -> alert record, per policy:", n(f.alerts as f64));
        for p in &f.alert_latency {
            let _ = writeln!(t, "        {:<44} {}   ({} alerts)", p.policy_id, lat(&p.latency), n(p.latency.samples as f64));
        }
        if let Some(db) = f.database_cpu_seconds_per_million {
            let _ = writeln!(t, "      {:<9} {:>6.1} CPU s/M ev (backends of the fleet's database)", "postgres", db);
        }
        for u in &f.usage {
            let _ = writeln!(
                t,
                "      {:<9} {:>6.1} CPU s/M ev, {:.2} cores, peak RSS {:.0} MB",
                u.stage, u.cpu_seconds_per_million, u.cpu_cores, u.peak_rss_mb
            );
        }
    }
    let _ = writeln!(
        t,
        "  produce -> security-alerts at 1000/s, no-group-wait policies: {}{}",
        r.fleet.alert_latency.latency.as_ref().map(|l| format!("{} ms (p50 p99 max); ", lat(l))).unwrap_or_default(),
        r.fleet.alert_latency.note
    );
    if let Some(s) = &r.search {
        let _ = writeln!(
            t,
            "\nSEARCH over {} documents ({} indices, loaded at {} docs/s) — ms: p50 p99 max, OpenSearch took p50",
            n(s.docs as f64),
            s.indices.len(),
            n(s.load_docs_per_sec)
        );
        for q in &s.queries {
            let _ = writeln!(t, "  {:<42} {}  {:>5.0}   {:>9} hits   auditflow search {}", q.name, lat(&q.latency), q.took_p50_ms, n(q.hits as f64), q.cli);
        }
    }
    let _ = writeln!(t, "\nTARGETS");
    for g in &r.targets {
        let status = match g.status {
            Status::Met => "MET",
            Status::Missed => "MISSED",
            Status::NotMeasured => "NOT MEASURED",
        };
        let value = g.value.map(|v| if v < 10.0 { format!("{v:.2}") } else { n(v) }).unwrap_or_else(|| "-".into());
        let _ = writeln!(t, "  {:<32} {:<48} {:>10}  {:<12} {}", g.name, g.target, value, status, g.note);
    }
    for e in &r.errors {
        let _ = writeln!(t, "ERROR: {e}");
    }
    for p in &r.cleanup_problems {
        let _ = writeln!(t, "cleanup: {p}");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::n;

    #[test]
    fn thousands_separators() {
        assert_eq!(n(1234567.4), "1,234,567");
        assert_eq!(n(999.0), "999");
        assert_eq!(n(-1234.0), "-1,234");
        assert_eq!(n(f64::NAN), "-");
    }
}
