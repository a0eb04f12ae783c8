//! The witness: an independent party that follows `audit-checkpoints`, accepts a chain's new
//! checkpoint only when a consistency proof shows its tree extends the last one it accepted,
//! and co-signs what it accepts with its own key into its own store. A signer that rewrites
//! history (even with the real key) cannot get the rewritten tree co-signed, and is reported.
//!
//! This module is the pure part: judging a checkpoint against the accepted state, and the
//! store's file format. `cli::witness` feeds it from Kafka and PostgreSQL.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ledger::{Checkpoint, Hash, LedgerSigner};
use crate::merkle;

/// What the witness concluded about one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Extends (or starts) the chain's accepted history: co-sign and remember it.
    Accept,
    /// The accepted checkpoint again, or an older one consistent with it: nothing to do.
    Known,
    /// v1 checkpoints sign no tree: nothing to check them with.
    NoTree,
    /// The signature does not verify with the ledger's public keys.
    Forged,
    /// The history was rewritten: the trees are not consistent.
    Inconsistent(String),
}

/// A chain's last accepted checkpoint and the witness's signature over it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub checkpoint: serde_json::Value,
    pub witness_key_id: String,
    pub cosignature: String,
    pub cosigned_at: DateTime<Utc>,
}

/// The bytes a witness signs: its own key id, then the checkpoint's signed statement.
pub fn cosignature_statement(witness_key_id: &str, cp: &Checkpoint) -> Vec<u8> {
    let mut out = format!("auditflow-cosignature-v1\nwitness={witness_key_id}\n").into_bytes();
    out.extend_from_slice(&cp.statement());
    out
}

pub fn cosign(witness: &LedgerSigner, cp: &Checkpoint, ledger_public: &VerifyingKey, at: DateTime<Utc>) -> Accepted {
    Accepted {
        checkpoint: cp.to_json(ledger_public),
        witness_key_id: witness.key_id.clone(),
        cosignature: hex::encode(witness.sign(&cosignature_statement(&witness.key_id, cp))),
        cosigned_at: at,
    }
}

/// Whether `witness` co-signed `accepted`.
pub fn cosignature_valid(accepted: &Accepted, witness: &VerifyingKey) -> bool {
    let Ok(cp) = Checkpoint::from_json(&accepted.checkpoint) else { return false };
    let Ok(sig) = hex::decode(&accepted.cosignature).map_err(|_| ()).and_then(|s| Signature::from_slice(&s).map_err(|_| ())) else {
        return false;
    };
    witness.verify(&cosignature_statement(&accepted.witness_key_id, &cp), &sig).is_ok()
}

/// Judge `cp` against the chain's last accepted checkpoint. `proof` is the consistency proof
/// between the smaller and the larger of the two tree sizes (from the ledger's database);
/// `None` when it could not be obtained, which counts as inconsistent: an honest ledger can
/// always prove a checkpoint it published.
pub fn judge(accepted: Option<&Checkpoint>, cp: &Checkpoint, keys: &[VerifyingKey], proof: Option<&[Hash]>) -> Judgement {
    if !cp.signed_by_any(keys) {
        return Judgement::Forged;
    }
    let Some(root) = cp.tree_root else { return Judgement::NoTree };
    let Some(last) = accepted else { return Judgement::Accept };
    let Some(last_root) = last.tree_root else { return Judgement::Accept };
    if cp.seq == last.seq {
        return if root == last_root && cp.head_hash == last.head_hash {
            Judgement::Known
        } else {
            Judgement::Inconsistent(format!("two different trees of size {} were signed", cp.seq))
        };
    }
    let ((m, m_root), (n, n_root)) =
        if cp.seq < last.seq { ((cp.seq, root), (last.seq, last_root)) } else { ((last.seq, last_root), (cp.seq, root)) };
    let Some(proof) = proof else {
        return Judgement::Inconsistent(format!("the ledger cannot prove size {m} consistent with size {n}"));
    };
    match merkle::verify_consistency(m as u64, n as u64, &m_root, &n_root, proof) {
        Ok(()) if cp.seq > last.seq => Judgement::Accept,
        Ok(()) => Judgement::Known,
        Err(e) => Judgement::Inconsistent(format!(
            "checkpoint at size {} is not consistent with the co-signed checkpoint at size {}: {e}",
            cp.seq, last.seq
        )),
    }
}

/// The witness's own store: one state file (the last accepted checkpoint per chain and the
/// consumed offsets, rewritten atomically together: exactly-once judging) and an append-only
/// log of every co-signature and every inconsistency found.
pub struct Store {
    dir: PathBuf,
    pub chains: BTreeMap<String, Accepted>,
    /// Next offset per `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    chains: BTreeMap<String, Accepted>,
    offsets: BTreeMap<String, i64>,
}

pub fn offset_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl Store {
    pub fn open(dir: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let state = dir.join("state.json");
        let st: State = match std::fs::read(&state) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", state.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        Ok(Store { dir: dir.to_path_buf(), chains: st.chains, offsets: st.offsets })
    }

    pub fn accepted(&self, chain_id: &str) -> Option<Checkpoint> {
        self.chains.get(chain_id).and_then(|a| Checkpoint::from_json(&a.checkpoint).ok())
    }

    /// Append lines to the log, fsynced.
    pub fn log(&self, lines: &[serde_json::Value]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("witness.log.jsonl"))?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        f.sync_all()
    }

    /// Write the state durably (aside, fsynced, renamed, directory fsynced).
    pub fn save(&self) -> std::io::Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            let st = State { chains: self.chains.clone(), offsets: self.offsets.clone() };
            f.write_all(&serde_json::to_vec_pretty(&st)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join("state.json"))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::SecretKey;
    use sha2::{Digest, Sha256};

    fn leaves(n: usize, salt: u8) -> Vec<Hash> {
        (0..n).map(|i| Sha256::digest([i as u8, if i == 4 { salt } else { 0 }]).into()).collect()
    }

    fn cp(s: &LedgerSigner, l: &[Hash], n: usize) -> Checkpoint {
        Checkpoint::sign(s, "t/0/2026-12", n as i64, l[n - 1], merkle::root(&l[..n]), Utc::now())
    }

    #[test]
    fn extensions_are_accepted_and_a_rewritten_history_is_not() {
        let s = LedgerSigner::new(&SecretKey([1; 32]));
        let keys = [s.verifying_key()];
        let honest = leaves(12, 0);
        let a = cp(&s, &honest, 6);
        let b = cp(&s, &honest, 12);
        assert_eq!(judge(None, &a, &keys, None), Judgement::Accept);
        let p = merkle::consistency_proof(&honest[..12], 6).unwrap();
        assert_eq!(judge(Some(&a), &b, &keys, Some(&p)), Judgement::Accept);
        assert_eq!(judge(Some(&b), &a, &keys, Some(&p)), Judgement::Known, "an older checkpoint seen again");
        assert_eq!(judge(Some(&b), &b, &keys, None), Judgement::Known);
        // The real key re-signs a history with row 5 changed.
        let rewritten = leaves(12, 9);
        let forged = cp(&s, &rewritten, 12);
        let p = merkle::consistency_proof(&rewritten[..12], 6).unwrap();
        assert!(matches!(judge(Some(&a), &forged, &keys, Some(&p)), Judgement::Inconsistent(_)));
        assert!(matches!(judge(Some(&b), &forged, &keys, None), Judgement::Inconsistent(_)), "same size, other tree");
        assert!(matches!(judge(Some(&a), &forged, &keys, None), Judgement::Inconsistent(_)), "no proof");
        let stranger = LedgerSigner::new(&SecretKey([2; 32]));
        assert_eq!(judge(Some(&a), &cp(&stranger, &honest, 12), &keys, None), Judgement::Forged);
    }

    #[test]
    fn cosignatures_verify_with_the_witness_key_only() {
        let s = LedgerSigner::new(&SecretKey([1; 32]));
        let w = LedgerSigner::new(&SecretKey([7; 32]));
        let c = cp(&s, &leaves(3, 0), 3);
        let acc = cosign(&w, &c, &s.verifying_key(), Utc::now());
        assert!(cosignature_valid(&acc, &w.verifying_key()));
        assert!(!cosignature_valid(&acc, &s.verifying_key()));
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.chains.insert(c.chain_id.clone(), acc.clone());
        store.offsets.insert(offset_key("audit-checkpoints", 0), 12);
        store.save().unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.offsets["audit-checkpoints/0"], 12);
        assert_eq!(again.accepted("t/0/2026-12"), Some(c));
        assert!(cosignature_valid(&again.chains["t/0/2026-12"], &w.verifying_key()));
    }
}
