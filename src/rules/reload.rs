//! Reloading rules without a restart: the rule files' names, sizes and modification times are
//! polled every `reload_interval_secs` (or checked at once after SIGHUP). A changed set is
//! compiled whole; if any file is invalid the new set is refused with its errors logged and the
//! rules in force stay in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::compile::{rule_files, RuleErrors};
use super::engine::RulesEngine;

/// What identifies a version of the rule files: (path, size, modified).
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let files = rule_files(dir).unwrap_or_default();
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// The outcome of a reload check that found changed files.
#[derive(Debug)]
pub enum Reload {
    Loaded(RulesEngine),
    Refused(RuleErrors),
}

/// Watches a rules directory.
pub struct RuleWatcher {
    dir: PathBuf,
    interval: Option<Duration>,
    last_check: Instant,
    seen: Fingerprint,
    /// Set by SIGHUP (or a test) to check now.
    pub requested: Arc<AtomicBool>,
}

impl RuleWatcher {
    /// Load the rules in force at start. Invalid rules here are fatal: the stage refuses to
    /// start rather than run without detection.
    pub fn start(dir: &Path, interval_secs: u64) -> Result<(RuleWatcher, RulesEngine), RuleErrors> {
        let seen = fingerprint(dir);
        let engine = RulesEngine::load_dir(dir)?;
        let watcher = RuleWatcher {
            dir: dir.to_path_buf(),
            interval: (interval_secs > 0).then(|| Duration::from_secs(interval_secs)),
            last_check: Instant::now(),
            seen,
            requested: Arc::new(AtomicBool::new(false)),
        };
        Ok((watcher, engine))
    }

    /// Check the files if it is time (or a reload was requested); `Some` when they changed.
    pub fn poll(&mut self) -> Option<Reload> {
        let forced = self.requested.swap(false, Ordering::SeqCst);
        let due = self.interval.is_some_and(|i| self.last_check.elapsed() >= i);
        if !forced && !due {
            return None;
        }
        self.last_check = Instant::now();
        let now = fingerprint(&self.dir);
        if !forced && now == self.seen {
            return None;
        }
        // Remembered even when refused: the same broken files are reported once, not every poll.
        self.seen = now;
        Some(match RulesEngine::load_dir(&self.dir) {
            Ok(engine) => Reload::Loaded(engine),
            Err(errors) => Reload::Refused(errors),
        })
    }
}
