//! A real SMTP server for tests: aiosmtpd (`scripts/smtp-sink.py`) on 127.0.0.1, storing every
//! message it receives so tests can read exactly what was sent.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::repo_root;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// aiosmtpd on 127.0.0.1:`port`, storing every message in a temp dir.
pub struct SmtpSink {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// One received message: the raw bytes and Python's parse of them.
#[derive(Debug)]
pub struct Mail {
    pub raw: String,
    pub meta: serde_json::Value,
}

impl Mail {
    /// Header names of the raw message, continuation lines unfolded, lower-case.
    pub fn header_names(&self) -> Vec<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or("");
        head.split("\r\n")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('\t') && !l.is_empty())
            .map(|l| l.split(':').next().unwrap_or("").trim().to_ascii_lowercase())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.meta["headers"]
            .as_array()?
            .iter()
            .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|h| h[1].as_str().map(String::from))
    }
    pub fn part(&self, content_type: &str) -> String {
        self.meta["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["content_type"] == content_type)
            .and_then(|p| p["body"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("no {content_type} part in {}", self.meta))
    }
}

impl SmtpSink {
    pub fn start(port: u16) -> SmtpSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = repo_root().join("scripts/smtp-sink.py");
        let child = Command::new("python3")
            .arg(&script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 scripts/smtp-sink.py (aiosmtpd: run scripts/stack up)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "SMTP sink did not listen on {port}; is aiosmtpd installed?");
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpSink { child: Some(child), dir }
    }

    pub fn mails(&self) -> Vec<Mail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| Mail {
                raw: String::from_utf8_lossy(&std::fs::read(&p).expect("read eml")).into_owned(),
                meta: serde_json::from_slice(&std::fs::read(p.with_extension("json")).expect("read json"))
                    .expect("json"),
            })
            .collect()
    }

    pub async fn wait_for_mails(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let start = Instant::now();
        loop {
            let mails = self.mails();
            if mails.len() >= n || start.elapsed() > timeout {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

