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
use crate::merkle::{self, Frontier};

/// What the witness concluded about one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Extends (or, verified against the rows, starts) the chain's accepted history: co-sign
    /// it; the frontier is that of its tree.
    Accept(Frontier),
    /// The accepted checkpoint again, or an older one consistent with it: nothing to do.
    Known,
    /// v1 checkpoints sign no tree: nothing to check them with.
    NoTree,
    /// The signature does not verify with the ledger's public keys.
    Forged,
    /// The history was rewritten: the trees are not consistent.
    Inconsistent(String),
}

/// What the witness keeps per chain: the last accepted checkpoint, its tree's frontier (all
/// that extending it needs), and the tree heads of recently accepted sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainState {
    pub checkpoint: Checkpoint,
    pub frontier: Frontier,
    pub recent: BTreeMap<i64, Hash>,
}

/// Sizes whose tree heads are remembered, to judge a repeated older checkpoint cheaply.
const RECENT: usize = 256;

impl ChainState {
    pub fn accept(previous: Option<&ChainState>, cp: &Checkpoint, frontier: Frontier) -> ChainState {
        let mut recent = previous.map(|p| p.recent.clone()).unwrap_or_default();
        if let Some(root) = cp.tree_root {
            recent.insert(cp.seq, root);
        }
        while recent.len() > RECENT {
            recent.pop_first();
        }
        ChainState { checkpoint: cp.clone(), frontier, recent }
    }
}

/// The rows the witness read from the ledger's database to judge a checkpoint.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// The row hashes appended after the accepted tree, up to the checkpoint's size.
    Appended(&'a [Hash]),
    /// Every row hash of the chain up to the larger of the two sizes.
    All(&'a [Hash]),
    /// The database could not give them (rows missing).
    Unavailable,
}

/// Judge `cp` against the chain's accepted state. Extending the accepted tree's own frontier
/// with the appended rows and comparing the result with the signed tree head is the check an
/// RFC 9162 consistency proof makes: rows rewritten below the accepted size cannot change the
/// frontier the witness holds, so a rewritten history never yields the signed head.
pub fn judge(state: Option<&ChainState>, cp: &Checkpoint, keys: &[VerifyingKey], rows: Rows<'_>) -> Judgement {
    if !cp.signed_by_any(keys) {
        return Judgement::Forged;
    }
    let Some(root) = cp.tree_root else { return Judgement::NoTree };
    let size = cp.seq.max(0) as usize;
    let Some(state) = state else {
        // The first checkpoint of a chain: its tree must be the database's rows.
        return match rows {
            Rows::All(all) if all.len() >= size => {
                let f = Frontier::from_leaves(&all[..size]);
                if f.root() == root {
                    Judgement::Accept(f)
                } else {
                    Judgement::Inconsistent(format!("the ledger's first {size} rows do not hash to the signed tree head"))
                }
            }
            _ => Judgement::Inconsistent(format!("the ledger cannot show the {size} rows of the signed tree")),
        };
    };
    let last = &state.checkpoint;
    let last_root = last.tree_root.unwrap_or_else(|| state.frontier.root());
    if cp.seq == last.seq {
        return if root == last_root && cp.head_hash == last.head_hash {
            Judgement::Known
        } else {
            Judgement::Inconsistent(format!("two different trees of size {} were signed", cp.seq))
        };
    }
    if cp.seq < last.seq {
        if let Some(seen) = state.recent.get(&cp.seq) {
            return if *seen == root {
                Judgement::Known
            } else {
                Judgement::Inconsistent(format!("two different trees of size {} were signed", cp.seq))
            };
        }
        // Older than remembered: both trees must be prefixes of the database's rows.
        return match rows {
            Rows::All(all) if all.len() >= last.seq as usize => {
                if merkle::root(&all[..last.seq as usize]) != last_root {
                    Judgement::Inconsistent(format!("the ledger's rows no longer hash to the co-signed tree of size {}", last.seq))
                } else if merkle::root(&all[..size]) != root {
                    Judgement::Inconsistent(format!("checkpoint at size {} is not a prefix of the co-signed tree of size {}", cp.seq, last.seq))
                } else {
                    Judgement::Known
                }
            }
            _ => Judgement::Inconsistent(format!("the ledger cannot prove size {} consistent with size {}", cp.seq, last.seq)),
        };
    }
    let appended = match rows {
        Rows::Appended(a) => a,
        Rows::All(all) => all.get(last.seq as usize..).unwrap_or_default(),
        Rows::Unavailable => &[],
    };
    let wanted = (cp.seq - last.seq) as usize;
    if appended.len() < wanted {
        return Judgement::Inconsistent(format!("the ledger cannot show rows {} to {} of the signed tree", last.seq + 1, cp.seq));
    }
    let mut f = state.frontier.clone();
    for leaf in &appended[..wanted] {
        f.push(leaf);
    }
    if f.root() == root {
        Judgement::Accept(f)
    } else {
        Judgement::Inconsistent(format!(
            "checkpoint at size {} does not extend the co-signed checkpoint at size {}",
            cp.seq, last.seq
        ))
    }
}

/// A chain's record in the store (JSON): the co-signed checkpoint and the witness's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub checkpoint: serde_json::Value,
    pub witness_key_id: String,
    pub cosignature: String,
    pub cosigned_at: DateTime<Utc>,
    /// The accepted tree's frontier (`merkle::Frontier::to_bytes`, hex).
    pub frontier: String,
    /// Recently accepted tree heads by size (hex).
    #[serde(default)]
    pub recent: BTreeMap<i64, String>,
}

impl Accepted {
    pub fn state(&self) -> Option<ChainState> {
        let checkpoint = Checkpoint::from_json(&self.checkpoint).ok()?;
        let frontier = Frontier::from_bytes(&hex::decode(&self.frontier).ok()?).ok()?;
        let recent = self.recent.iter().filter_map(|(k, v)| Some((*k, crate::ledger::hash_from_hex("recent", v).ok()?))).collect();
        Some(ChainState { checkpoint, frontier, recent })
    }
}

/// The bytes a witness signs: its own key id, then the checkpoint's signed statement.
pub fn cosignature_statement(witness_key_id: &str, cp: &Checkpoint) -> Vec<u8> {
    let mut out = format!("auditflow-cosignature-v1\nwitness={witness_key_id}\n").into_bytes();
    out.extend_from_slice(&cp.statement());
    out
}

pub fn cosign(witness: &LedgerSigner, state: &ChainState, ledger_public: &VerifyingKey, at: DateTime<Utc>) -> Accepted {
    let cp = &state.checkpoint;
    Accepted {
        checkpoint: cp.to_json(ledger_public),
        witness_key_id: witness.key_id.clone(),
        cosignature: hex::encode(witness.sign(&cosignature_statement(&witness.key_id, cp))),
        cosigned_at: at,
        frontier: hex::encode(state.frontier.to_bytes()),
        recent: state.recent.iter().map(|(k, v)| (*k, hex::encode(v))).collect(),
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

    pub fn accepted(&self, chain_id: &str) -> Option<ChainState> {
        self.chains.get(chain_id).and_then(Accepted::state)
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

    fn accepted(j: Judgement, prev: Option<&ChainState>, c: &Checkpoint) -> ChainState {
        match j {
            Judgement::Accept(f) => ChainState::accept(prev, c, f),
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn extensions_are_accepted_and_a_rewritten_history_is_not() {
        let s = LedgerSigner::new(&SecretKey([1; 32]));
        let keys = [s.verifying_key()];
        let honest = leaves(12, 0);
        let (a, b) = (cp(&s, &honest, 6), cp(&s, &honest, 12));
        assert!(matches!(judge(None, &a, &keys, Rows::Unavailable), Judgement::Inconsistent(_)), "first sight needs the rows");
        let sa = accepted(judge(None, &a, &keys, Rows::All(&honest)), None, &a);
        let sb = accepted(judge(Some(&sa), &b, &keys, Rows::Appended(&honest[6..])), Some(&sa), &b);
        assert_eq!(sb.frontier, Frontier::from_leaves(&honest));
        assert_eq!(judge(Some(&sb), &a, &keys, Rows::Unavailable), Judgement::Known, "an older checkpoint seen again");
        assert_eq!(judge(Some(&sb), &b, &keys, Rows::Unavailable), Judgement::Known);
        // The real key signs a history with row 5 changed: whatever rows the database shows
        // now, the witness's own frontier of the first 6 does not lead to the new head.
        let rewritten = leaves(12, 9);
        let forged = cp(&s, &rewritten, 12);
        assert!(matches!(judge(Some(&sa), &forged, &keys, Rows::Appended(&rewritten[6..])), Judgement::Inconsistent(_)));
        assert!(matches!(judge(Some(&sa), &forged, &keys, Rows::All(&rewritten)), Judgement::Inconsistent(_)));
        assert!(matches!(judge(Some(&sb), &forged, &keys, Rows::Unavailable), Judgement::Inconsistent(_)), "same size, other tree");
        let old_forged = cp(&s, &rewritten, 5);
        assert!(matches!(judge(Some(&sb), &old_forged, &keys, Rows::All(&honest)), Judgement::Inconsistent(_)), "older, other tree");
        assert!(matches!(judge(Some(&sa), &b, &keys, Rows::Appended(&honest[6..9])), Judgement::Inconsistent(_)), "rows missing");
        let stranger = LedgerSigner::new(&SecretKey([2; 32]));
        assert_eq!(judge(Some(&sa), &cp(&stranger, &honest, 12), &keys, Rows::Unavailable), Judgement::Forged);
    }

    #[test]
    fn cosignatures_verify_with_the_witness_key_only_and_the_state_round_trips() {
        let s = LedgerSigner::new(&SecretKey([1; 32]));
        let w = LedgerSigner::new(&SecretKey([7; 32]));
        let l = leaves(3, 0);
        let c = cp(&s, &l, 3);
        let state = ChainState::accept(None, &c, Frontier::from_leaves(&l));
        let acc = cosign(&w, &state, &s.verifying_key(), Utc::now());
        assert!(cosignature_valid(&acc, &w.verifying_key()));
        assert!(!cosignature_valid(&acc, &s.verifying_key()));
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.chains.insert(c.chain_id.clone(), acc.clone());
        store.offsets.insert(offset_key("audit-checkpoints", 0), 12);
        store.save().unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.offsets["audit-checkpoints/0"], 12);
        assert_eq!(again.accepted("t/0/2026-12"), Some(state));
        assert!(cosignature_valid(&again.chains["t/0/2026-12"], &w.verifying_key()));
    }
}
