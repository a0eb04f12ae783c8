//! Child processes the benchmark runs: stage binaries (watched through their `/metrics` and
//! `/proc`) and Kafka's own tools. Every child is bounded by a deadline and killed on drop.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Set by SIGINT/SIGTERM: every wait loop gives up and the run cleans up after itself.
pub static ABORT: AtomicBool = AtomicBool::new(false);

pub fn check_abort() -> anyhow::Result<()> {
    if ABORT.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A running stage binary.
pub struct StageProc {
    pub stage: String,
    child: Option<Child>,
    pub pid: u32,
    pub log_path: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
}

impl StageProc {
    /// Start `binary` with `env` on top of the benchmark's own environment; logs (JSON) go to
    /// `log_path`.
    /// `wrapper` (e.g. `valgrind --tool=callgrind`) runs the binary when given; a wrapper
    /// that forks makes the CPU and memory figures the wrapper's.
    pub fn spawn(binary: &Path, stage: &str, env: &[(String, String)], log_path: &Path, wrapper: &[String]) -> anyhow::Result<StageProc> {
        // Truncated: an old log in a reused directory would announce a stale /metrics address.
        let log = File::create(log_path)
            .with_context(|| format!("log file {}", log_path.display()))?;
        let mut cmd = match wrapper.split_first() {
            None => Command::new(binary),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
        };
        let child = cmd
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AUDITFLOW_LOG_FORMAT", "json")
            .env("AUDITFLOW_HTTP_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(StageProc { stage: stage.to_string(), pid: child.id(), child: Some(child), log_path: log_path.to_path_buf(), metrics_addr: None })
    }

    /// Wait for the stage to log the address of its `/metrics`.
    pub fn wait_metrics_addr(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            check_abort()?;
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            for line in log.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                if v["message"].as_str().is_some_and(|m| m.starts_with("serving /metrics")) {
                    if let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                        self.metrics_addr = Some(addr);
                        return Ok(addr);
                    }
                }
            }
            if !self.is_running() {
                bail!("{} exited during start-up:\n{}", self.stage, self.log_tail(20));
            }
            if Instant::now() > deadline {
                bail!("{} did not serve /metrics within {timeout:?}:\n{}", self.stage, self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn scrape(&self) -> anyhow::Result<Scrape> {
        let addr = self.metrics_addr.ok_or_else(|| anyhow!("{}: metrics address unknown", self.stage))?;
        scrape(addr)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// user + system CPU seconds of the whole process (all threads) so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    /// Peak resident set size (VmHWM) in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        peak_rss_bytes(self.pid)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for StageProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One series of a `/metrics` page: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One `/metrics` page.
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.trim_end_matches('}');
                    let labels = body
                        .split("\",")
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
                        .collect();
                    (name.to_string(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Scrape { samples }
    }

    /// Sum of `name` over every series whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, _, v)| *v)
            .sum()
    }

    /// Values of `name` by the value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, l, v)| l.iter().find(|(k, _)| k == label).map(|(_, lv)| (lv.clone(), *v)))
            .collect()
    }
}

/// `GET /metrics` over plain HTTP/1.1.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(Scrape::parse(body))
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime from `/proc/<pid>/stat`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

/// Fields after the `(comm)`: state is field 3, utime 14, stime 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, "VmHWM:").map(|kb| kb * 1024)
}

pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Run a command in its own process group with stdout/stderr in files, killing the whole
/// group on timeout or interruption. Returns (status, stdout, stderr).
pub fn run_tool(mut cmd: Command, timeout: Duration, out_path: &Path) -> anyhow::Result<(ExitStatus, String, String)> {
    let err_path = out_path.with_extension("err");
    let out = File::create(out_path)?;
    let err = File::create(&err_path)?;
    let mut child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || ABORT.load(Ordering::Relaxed) {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            check_abort()?;
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((status, std::fs::read_to_string(out_path).unwrap_or_default(), std::fs::read_to_string(&err_path).unwrap_or_default()))
}

/// One-minute, five-minute and fifteen-minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    [it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let s = Scrape::parse(
            "# HELP x\nauditflow_consumed_total{stage=\"enrich\",topic=\"a.b\"} 12\n\
             auditflow_consumed_total{stage=\"enrich\",topic=\"c\"} 3\n\
             auditflow_rebalances_total{kind=\"assign\",stage=\"enrich\"} 1\nprocess_cpu 1.5e0\n",
        );
        assert_eq!(s.sum("auditflow_consumed_total", &[("stage", "enrich")]), 15.0);
        assert_eq!(s.sum("auditflow_consumed_total", &[("topic", "a.b")]), 12.0);
        assert_eq!(s.sum("auditflow_rebalances_total", &[("kind", "assign")]), 1.0);
        assert_eq!(s.sum("process_cpu", &[]), 1.5);
        assert_eq!(s.by_label("auditflow_consumed_total", "topic").len(), 2);
    }

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (audit-enrich (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_status_kb("Name: x\nVmHWM:\t  40960 kB\n", "VmHWM:"), Some(40960));
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
    }
}
