//! What this machine can do at best with the same data: Kafka's own producer and consumer
//! performance tools, and PostgreSQL `COPY` into the same table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

use super::data::{rate, CopyRows, COPY_COLUMNS};

/// `org.apache.kafka.tools.ProducerPerformance`'s summary line.
#[derive(Debug, Clone, Serialize)]
pub struct ProducePerf {
    pub tool: &'static str,
    pub description: String,
    pub records: u64,
    pub record_bytes: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub avg_latency_ms: f64,
    pub max_latency_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `org.apache.kafka.tools.ConsumerPerformance`'s result line.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumePerf {
    pub tool: &'static str,
    pub description: String,
    pub records: u64,
    /// Including the group join.
    pub records_per_sec: f64,
    /// Fetching only (the tool's `fetch.nMsg.sec`): what bounds a stage's reading.
    pub fetch_records_per_sec: f64,
    pub mb_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyPerf {
    pub description: String,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    /// CPU of the PostgreSQL backend that ran the COPY, per million rows.
    pub backend_cpu_seconds_per_million: Option<f64>,
}

/// What ProducerPerformance sends.
pub enum Payload<'a> {
    /// Fixed-size records (the tool reuses one random payload).
    Size(usize),
    /// Records drawn at random from a newline-separated file.
    File(&'a Path),
}

#[allow(clippy::too_many_arguments)]
pub fn producer_perf(
    stack: &Path,
    brokers: &str,
    topic: &str,
    records: u64,
    payload: Payload<'_>,
    record_bytes: f64,
    props: &[(&str, &str)],
    description: &str,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<ProducePerf> {
    let mut cmd = Command::new(stack);
    cmd.args(["kafka-run", "org.apache.kafka.tools.ProducerPerformance", "--topic", topic])
        .args(["--num-records", &records.to_string(), "--throughput", "-1"]);
    match payload {
        Payload::Size(n) => cmd.args(["--record-size", &n.to_string()]),
        Payload::File(p) => cmd.arg("--payload-file").arg(p),
    };
    cmd.arg("--producer-props").arg(format!("bootstrap.servers={brokers}"));
    for (k, v) in props {
        cmd.arg(format!("{k}={v}"));
    }
    let (status, stdout, stderr) = super::proc::run_tool(cmd, timeout, out)?;
    if !status.success() {
        bail!("ProducerPerformance failed ({status}):\n{stdout}\n{stderr}");
    }
    let mut perf = parse_producer_perf(&stdout).ok_or_else(|| anyhow!("no summary in ProducerPerformance output:\n{stdout}"))?;
    perf.description = description.to_string();
    perf.record_bytes = record_bytes;
    Ok(perf)
}

pub fn parse_producer_perf(stdout: &str) -> Option<ProducePerf> {
    let re = regex::Regex::new(
        r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th",
    )
    .ok()?;
    let c = stdout.lines().rev().find_map(|l| re.captures(l))?;
    let f = |i: usize| c.get(i).and_then(|m| m.as_str().parse::<f64>().ok()).unwrap_or(f64::NAN);
    Some(ProducePerf {
        tool: "org.apache.kafka.tools.ProducerPerformance",
        description: String::new(),
        records: f(1) as u64,
        record_bytes: 0.0,
        records_per_sec: f(2),
        mb_per_sec: f(3),
        avg_latency_ms: f(4),
        max_latency_ms: f(5),
        p50_ms: f(6),
        p99_ms: f(8),
    })
}

#[allow(clippy::too_many_arguments)]
pub fn consumer_perf(
    stack: &Path,
    brokers: &str,
    topic: &str,
    group: &str,
    records: u64,
    description: &str,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<ConsumePerf> {
    let mut cmd = Command::new(stack);
    cmd.args(["kafka-run", "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", brokers])
        .args(["--topic", topic, "--group", group, "--messages", &records.to_string(), "--timeout", "30000"]);
    let (status, stdout, stderr) = super::proc::run_tool(cmd, timeout, out)?;
    if !status.success() {
        bail!("ConsumerPerformance failed ({status}):\n{stdout}\n{stderr}");
    }
    let mut perf = parse_consumer_perf(&stdout).ok_or_else(|| anyhow!("no result in ConsumerPerformance output:\n{stdout}\n{stderr}"))?;
    perf.description = description.to_string();
    if perf.records < records {
        bail!("ConsumerPerformance read {} of {records} records:\n{stdout}\n{stderr}", perf.records);
    }
    Ok(perf)
}

/// A header line of names and a line of values, both separated by ", ".
pub fn parse_consumer_perf(stdout: &str) -> Option<ConsumePerf> {
    let lines: Vec<&str> = stdout.lines().collect();
    let h = lines.iter().position(|l| l.contains("nMsg.sec"))?;
    let names: Vec<&str> = lines[h].split(',').map(str::trim).collect();
    let values: Vec<&str> = lines.get(h + 1)?.split(',').map(str::trim).collect();
    let get = |name: &str| -> f64 {
        names.iter().position(|n| *n == name).and_then(|i| values.get(i)).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    Some(ConsumePerf {
        tool: "org.apache.kafka.tools.ConsumerPerformance",
        description: String::new(),
        records: get("data.consumed.in.nMsg") as u64,
        records_per_sec: get("nMsg.sec"),
        fetch_records_per_sec: get("fetch.nMsg.sec"),
        mb_per_sec: get("MB.sec"),
    })
}

/// `COPY audit_events FROM STDIN` of every row into a freshly migrated database (same table,
/// partitions, keys and indexes as the persist stage writes to): in one statement and one
/// transaction, or, with `batch`, one transaction per `batch` rows as a sink commits them.
pub async fn copy_perf(database_url: &str, rows: &CopyRows, batch: Option<usize>) -> anyhow::Result<CopyPerf> {
    let pool = PgPoolOptions::new().max_connections(1).connect(database_url).await?;
    for at in &rows.months {
        sqlx::query("SELECT audit_events_ensure_month($1)").bind(at).execute(&pool).await?;
    }
    let statement = format!("COPY audit_events ({COPY_COLUMNS}) FROM STDIN");
    let chunks: Vec<&[u8]> = match batch {
        None => vec![rows.text.as_slice()],
        Some(n) => split_rows(&rows.text, n.max(1)),
    };
    let mut conn = pool.acquire().await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    let cpu_before = super::proc::cpu_seconds(backend as u32);
    let started = Instant::now();
    let mut copied = 0u64;
    for chunk in &chunks {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut copy = tx.copy_in_raw(&statement).await.context("COPY")?;
        for part in chunk.chunks(1 << 20) {
            copy.send(part).await?;
        }
        copied += copy.finish().await?;
        tx.commit().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = super::proc::cpu_seconds(backend as u32).zip(cpu_before).map(|(b, a)| b - a);
    drop(conn);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await?;
    pool.close().await;
    if count as u64 != rows.rows || copied != rows.rows {
        bail!("COPY wrote {copied} rows, the table holds {count}, expected {}", rows.rows);
    }
    Ok(CopyPerf {
        description: match batch {
            None => "one COPY … FROM STDIN (text) of every row, one transaction, fresh audit_events".into(),
            Some(n) => format!("COPY … FROM STDIN (text), one transaction per {n} rows, fresh audit_events"),
        },
        rows: copied,
        bytes: rows.text.len() as u64,
        seconds,
        rows_per_sec: rate(copied, seconds),
        mb_per_sec: rows.text.len() as f64 / 1e6 / seconds.max(1e-9),
        backend_cpu_seconds_per_million: cpu.map(|c| c / copied.max(1) as f64 * 1e6),
    })
}

/// COPY text cut into pieces of `rows` lines each.
pub fn split_rows(text: &[u8], rows: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut lines = 0;
    for (i, b) in text.iter().enumerate() {
        if *b == b'\n' {
            lines += 1;
            if lines == rows {
                out.push(&text[start..=i]);
                start = i + 1;
                lines = 0;
            }
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_producer_performance() {
        let out = "1000 records sent, 200.0 records/sec (0.1 MB/sec), 3.0 ms avg latency, 90.0 ms max latency.\n\
            300000 records sent, 152905.198777 records/sec (60.05 MB/sec), 95.61 ms avg latency, 420.00 ms max latency, 78 ms 50th, 280 ms 95th, 350 ms 99th, 410 ms 99.9th.\n";
        let p = parse_producer_perf(out).unwrap();
        assert_eq!(p.records, 300000);
        assert!((p.records_per_sec - 152905.198777).abs() < 1e-6);
        assert_eq!(p.p99_ms, 350.0);
    }

    #[test]
    fn splits_copy_text_by_rows() {
        let parts = split_rows(b"a\nb\nc\nd\ne\n", 2);
        assert_eq!(parts, [&b"a\nb\n"[..], &b"c\nd\n"[..], &b"e\n"[..]]);
        assert_eq!(split_rows(b"", 2).len(), 0);
    }

    #[test]
    fn parses_consumer_performance() {
        let out = "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n\
            2025-01-01 10:00:00:000, 2025-01-01 10:00:04:000, 120.5, 30.1, 300000, 75000.0, 1000, 3000, 40.2, 100000.0\n";
        let c = parse_consumer_perf(out).unwrap();
        assert_eq!(c.records, 300000);
        assert_eq!(c.records_per_sec, 75000.0);
        assert_eq!(c.fetch_records_per_sec, 100000.0);
    }
}
