//! Copies of the signed checkpoints outside PostgreSQL: the `audit-checkpoints` topic and an
//! optional append-only directory (`AUDITFLOW_CHECKPOINT_EXPORT_DIR`). Someone who can
//! rewrite the database cannot rewrite these, so `auditflow verify` compares the two.
//!
//! Directory layout: `DIR/<topic>/<partition>/<YYYY-MM>/<seq, 20 digits>.json`, each file
//! the checkpoint's JSON (as published), written once, fsynced, never replaced.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::ledger::Checkpoint;

/// A path component for one part of a chain id: only `[A-Za-z0-9_-]` pass, the rest is
/// percent-encoded, so no chain id can name `..` or a separator.
fn component(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

pub fn file_path(dir: &Path, chain_id: &str, seq: i64) -> PathBuf {
    let mut p = dir.to_path_buf();
    for part in chain_id.split('/') {
        p.push(component(part));
    }
    p.push(format!("{seq:020}.json"));
    p
}

/// Write one checkpoint's file unless it is there. Returns whether it was written. The file
/// appears complete or not at all (written aside, fsynced, renamed, directory fsynced).
pub fn export(dir: &Path, cp: &Checkpoint, public: &VerifyingKey) -> std::io::Result<bool> {
    let path = file_path(dir, &cp.chain_id, cp.seq);
    if path.exists() {
        return Ok(false);
    }
    let parent = path.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(cp.to_json(public).to_string().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    // A hard link never replaces an existing file (WORM stores refuse renames over files).
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    std::fs::remove_file(&tmp)?;
    std::fs::File::open(parent)?.sync_all()?;
    Ok(true)
}

/// Every checkpoint found outside the database, per chain and seq. Different checkpoints for
/// one chain and seq (two histories) are all kept.
#[derive(Debug, Default)]
pub struct OutsideCopies {
    pub by_chain: BTreeMap<String, Vec<Checkpoint>>,
    /// Records that could not be read, with where they came from.
    pub unreadable: Vec<String>,
    pub records: u64,
    seen: std::collections::HashSet<(String, i64, Vec<u8>)>,
}

impl OutsideCopies {
    pub fn add(&mut self, origin: &str, text: &[u8]) {
        self.records += 1;
        let parsed = serde_json::from_slice::<serde_json::Value>(text)
            .map_err(|e| e.to_string())
            .and_then(|v| Checkpoint::from_json(&v).map_err(|e| e.to_string()));
        match parsed {
            Ok(cp) => {
                // At-least-once publication repeats records: keep one of each.
                if self.seen.insert((cp.chain_id.clone(), cp.seq, cp.signature.clone())) {
                    self.by_chain.entry(cp.chain_id.clone()).or_default().push(cp);
                }
            }
            Err(e) => self.unreadable.push(format!("{origin}: {e}")),
        }
    }

    /// Read every `*.json` file under `dir`.
    pub fn read_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read(&path)?;
                    self.add(&path.display().to_string(), &text);
                }
            }
        }
        Ok(())
    }

    pub fn sort(&mut self) {
        for list in self.by_chain.values_mut() {
            list.sort_by_key(|c| (c.seq, c.signed_at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerSigner;
    use crate::privacy::SecretKey;

    #[test]
    fn chain_ids_cannot_escape_the_directory() {
        let p = file_path(Path::new("/x"), "../../etc/0/2026-12", 7);
        assert_eq!(p, PathBuf::from("/x/%2E%2E/%2E%2E/etc/0/2026-12/00000000000000000007.json"));
        let p = file_path(Path::new("/x"), "audit-enriched/3/2026-12", 12);
        assert_eq!(p, PathBuf::from("/x/audit-enriched/3/2026-12/00000000000000000012.json"));
    }

    #[test]
    fn exported_files_are_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LedgerSigner::new(&SecretKey([9; 32]));
        let cp = Checkpoint::sign(&signer, "t/0/2026-12", 3, [1; 32], [2; 32], chrono::Utc::now());
        assert!(export(dir.path(), &cp, &signer.verifying_key()).unwrap());
        assert!(!export(dir.path(), &cp, &signer.verifying_key()).unwrap(), "never replaced");
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let mut copies = OutsideCopies::default();
        copies.read_dir(dir.path()).unwrap();
        assert_eq!(copies.by_chain["t/0/2026-12"], vec![cp]);
        assert_eq!(copies.unreadable.len(), 1);
        assert_eq!(copies.records, 2);
    }
}
