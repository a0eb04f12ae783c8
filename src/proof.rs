//! Proofs an auditor checks offline, with no database and no Kafka: that one event is in a
//! chain's signed tree (inclusion), and that a signed tree extends an earlier one without
//! rewriting it (consistency). Both carry the signed checkpoints they lead to; only the
//! public keys come from the verifier.
//!
//! The JSON layout and every hashed byte are specified in the README ("Proof format"), so
//! other languages can verify them; `tests/vectors/` holds a worked example.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::ledger::{self, hash_from_hex, Checkpoint, Hash, StoredRow};
use crate::merkle;

pub const INCLUSION_TYPE: &str = "auditflow-inclusion-proof-v1";
pub const CONSISTENCY_TYPE: &str = "auditflow-consistency-proof-v1";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProofError {
    #[error("not a proof this version reads: {0}")]
    Format(String),
    #[error("checkpoint signature does not verify with the given keys")]
    Signature,
    #[error("checkpoint {0} signs no tree head (a v1 checkpoint): pick a newer one")]
    NoTree(i64),
    #[error("the event's fields do not hash to the proven row hash")]
    RowHash,
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Merkle(#[from] merkle::MerkleError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    #[serde(rename = "type")]
    pub kind: String,
    pub event_id: String,
    pub chain_id: String,
    /// 0-based: the row's `chain_seq` − 1.
    pub leaf_index: u64,
    pub tree_size: u64,
    pub prev_hash: String,
    pub row_hash: String,
    /// The stored row (ciphertexts included), from which `row_hash` is recomputed.
    pub row: StoredRow,
    /// Sibling hashes from the leaf up (RFC 9162 §2.1.3).
    pub audit_path: Vec<String>,
    pub checkpoint: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyProof {
    #[serde(rename = "type")]
    pub kind: String,
    pub chain_id: String,
    pub from_size: u64,
    pub to_size: u64,
    /// RFC 9162 §2.1.4 consistency path.
    pub path: Vec<String>,
    pub from_checkpoint: serde_json::Value,
    pub to_checkpoint: serde_json::Value,
}

/// What a verified proof establishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    Included { event_id: String, chain_id: String, leaf_index: u64, tree_size: u64, key_id: String },
    Consistent { chain_id: String, from_size: u64, to_size: u64, key_id: String },
}

fn hashes(field: &str, v: &[String]) -> Result<Vec<Hash>, ProofError> {
    v.iter().map(|h| hash_from_hex(field, h).map_err(|e| ProofError::Format(e.0))).collect()
}

fn signed_tree(v: &serde_json::Value, keys: &[VerifyingKey]) -> Result<(Checkpoint, Hash), ProofError> {
    let cp = Checkpoint::from_json(v).map_err(|e| ProofError::Format(e.0))?;
    if !cp.signed_by_any(keys) {
        return Err(ProofError::Signature);
    }
    let root = cp.tree_root.ok_or(ProofError::NoTree(cp.seq))?;
    Ok((cp, root))
}

/// The leaves of a chain are its row hashes: leaf `i` is the row at `chain_seq` i + 1.
pub fn build_inclusion(row: StoredRow, prev_hash: Hash, leaves: &[Hash], checkpoint: &Checkpoint, public: &VerifyingKey) -> Result<InclusionProof, ProofError> {
    let size = checkpoint.seq as u64;
    let index = (row.chain_seq - 1).max(0) as u64;
    let leaves = leaves.get(..size as usize).ok_or(merkle::MerkleError::IndexOutOfRange { index: size, size: leaves.len() as u64 })?;
    let path = merkle::inclusion_proof(leaves, index)?;
    Ok(InclusionProof {
        kind: INCLUSION_TYPE.into(),
        event_id: row.id.clone(),
        chain_id: row.chain_id.clone(),
        leaf_index: index,
        tree_size: size,
        prev_hash: hex::encode(prev_hash),
        row_hash: hex::encode(leaves[index as usize]),
        row,
        audit_path: path.iter().map(hex::encode).collect(),
        checkpoint: checkpoint.to_json(public),
    })
}

pub fn build_consistency(leaves: &[Hash], from: &Checkpoint, to: &Checkpoint, public: &VerifyingKey) -> Result<ConsistencyProof, ProofError> {
    let (m, n) = (from.seq as u64, to.seq as u64);
    let leaves = leaves.get(..n as usize).ok_or(merkle::MerkleError::BadRange { from: m, to: n })?;
    let path = merkle::consistency_proof(leaves, m)?;
    Ok(ConsistencyProof {
        kind: CONSISTENCY_TYPE.into(),
        chain_id: to.chain_id.clone(),
        from_size: m,
        to_size: n,
        path: path.iter().map(hex::encode).collect(),
        from_checkpoint: from.to_json(public),
        to_checkpoint: to.to_json(public),
    })
}

/// Check an inclusion proof. `event`: the event's stored fields from elsewhere (an export)
/// instead of the copy inside the proof.
pub fn verify_inclusion(p: &InclusionProof, keys: &[VerifyingKey], event: Option<&StoredRow>) -> Result<Verified, ProofError> {
    if p.kind != INCLUSION_TYPE {
        return Err(ProofError::Format(format!("type {:?}", p.kind)));
    }
    let (cp, root) = signed_tree(&p.checkpoint, keys)?;
    if cp.chain_id != p.chain_id || cp.seq as u64 != p.tree_size {
        return Err(ProofError::Mismatch("the checkpoint is not of this chain and tree size".into()));
    }
    let row = event.unwrap_or(&p.row);
    if row.id != p.event_id || row.chain_id != p.chain_id || row.chain_seq as u64 != p.leaf_index + 1 {
        return Err(ProofError::Mismatch("the event's id, chain or position differ from the proof's".into()));
    }
    let prev = hash_from_hex("prevHash", &p.prev_hash).map_err(|e| ProofError::Format(e.0))?;
    let stated = hash_from_hex("rowHash", &p.row_hash).map_err(|e| ProofError::Format(e.0))?;
    if ledger::row_hash(&prev, row) != stated {
        return Err(ProofError::RowHash);
    }
    if p.leaf_index + 1 == p.tree_size && cp.head_hash != stated {
        return Err(ProofError::Mismatch("the newest row is not the checkpoint's chain head".into()));
    }
    if p.leaf_index == 0 && prev != ledger::genesis(&p.chain_id) {
        return Err(ProofError::Mismatch("the first row does not follow the chain's genesis".into()));
    }
    merkle::verify_inclusion(&stated, p.leaf_index, p.tree_size, &hashes("auditPath", &p.audit_path)?, &root)?;
    Ok(Verified::Included {
        event_id: p.event_id.clone(),
        chain_id: p.chain_id.clone(),
        leaf_index: p.leaf_index,
        tree_size: p.tree_size,
        key_id: cp.key_id,
    })
}

pub fn verify_consistency(p: &ConsistencyProof, keys: &[VerifyingKey]) -> Result<Verified, ProofError> {
    if p.kind != CONSISTENCY_TYPE {
        return Err(ProofError::Format(format!("type {:?}", p.kind)));
    }
    let (from, from_root) = signed_tree(&p.from_checkpoint, keys)?;
    let (to, to_root) = signed_tree(&p.to_checkpoint, keys)?;
    if from.chain_id != p.chain_id || to.chain_id != p.chain_id || from.seq as u64 != p.from_size || to.seq as u64 != p.to_size {
        return Err(ProofError::Mismatch("the checkpoints are not of this chain and these sizes".into()));
    }
    merkle::verify_consistency(p.from_size, p.to_size, &from_root, &to_root, &hashes("path", &p.path)?)?;
    Ok(Verified::Consistent { chain_id: p.chain_id.clone(), from_size: p.from_size, to_size: p.to_size, key_id: to.key_id })
}

/// Check a proof file's JSON of either kind.
pub fn verify_json(text: &str, keys: &[VerifyingKey], event: Option<&StoredRow>) -> Result<Verified, ProofError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ProofError::Format(e.to_string()))?;
    match v.get("type").and_then(|t| t.as_str()) {
        Some(INCLUSION_TYPE) => {
            let p: InclusionProof = serde_json::from_value(v).map_err(|e| ProofError::Format(e.to_string()))?;
            verify_inclusion(&p, keys, event)
        }
        Some(CONSISTENCY_TYPE) => {
            let p: ConsistencyProof = serde_json::from_value(v).map_err(|e| ProofError::Format(e.to_string()))?;
            verify_consistency(&p, keys)
        }
        other => Err(ProofError::Format(format!("type {other:?}"))),
    }
}

/// The stored row of event `id` from `auditflow export` output (an array of events, each
/// with its `storedRow`) or from a bare stored row.
pub fn stored_row_from_json(text: &str, id: &str) -> Result<StoredRow, ProofError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ProofError::Format(e.to_string()))?;
    let found = match &v {
        serde_json::Value::Array(events) => events
            .iter()
            .find(|e| e.get("id").and_then(|x| x.as_str()) == Some(id))
            .and_then(|e| e.get("storedRow"))
            .cloned(),
        obj if obj.get("storedRow").is_some() => obj.get("storedRow").cloned(),
        obj => Some(obj.clone()),
    };
    let found = found.ok_or_else(|| ProofError::Format(format!("event {id} is not in the file")))?;
    serde_json::from_value(found).map_err(|e| ProofError::Format(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerSigner;
    use crate::privacy::SecretKey;
    use chrono::Utc;

    const CHAIN: &str = "audit-enriched/0/2026-12";

    fn rows(n: usize) -> (Vec<StoredRow>, Vec<Hash>, Vec<Hash>) {
        let mut prev = ledger::genesis(CHAIN);
        let (mut rs, mut prevs, mut hs) = (vec![], vec![], vec![]);
        for i in 1..=n {
            let row = StoredRow {
                id: format!("e{i}"),
                action: "login".into(),
                resource: "auth".into(),
                classification: "INTERNAL".into(),
                severity: "LOW".into(),
                compliance: "{}".into(),
                source_topic: "audit-enriched".into(),
                source_offset: i as i64,
                personal: Some(vec![1, 2, i as u8]),
                chain_id: CHAIN.into(),
                chain_seq: i as i64,
                ..StoredRow::default()
            };
            let h = ledger::row_hash(&prev, &row);
            prevs.push(prev);
            hs.push(h);
            rs.push(row);
            prev = h;
        }
        (rs, prevs, hs)
    }

    fn pointer<'a>(v: &'a serde_json::Value, path: &[serde_json::Value]) -> &'a serde_json::Value {
        path.iter().fold(v, |v, k| match k {
            serde_json::Value::String(k) => &v[k.as_str()],
            k => &v[k.as_u64().unwrap() as usize],
        })
    }

    fn pointer_mut<'a>(v: &'a mut serde_json::Value, path: &[serde_json::Value]) -> &'a mut serde_json::Value {
        path.iter().fold(v, |v, k| match k {
            serde_json::Value::String(k) => &mut v[k.as_str()],
            k => &mut v[k.as_u64().unwrap() as usize],
        })
    }

    fn checkpoint(s: &LedgerSigner, hs: &[Hash], n: usize) -> Checkpoint {
        Checkpoint::sign(s, CHAIN, n as i64, hs[n - 1], merkle::root(&hs[..n]), Utc::now())
    }

    #[test]
    fn inclusion_proofs_verify_and_any_flipped_byte_fails() {
        let signer = LedgerSigner::new(&SecretKey([3; 32]));
        let keys = [signer.verifying_key()];
        let (rs, prevs, hs) = rows(11);
        let cp = checkpoint(&signer, &hs, 11);
        for i in [0usize, 4, 10] {
            let p = build_inclusion(rs[i].clone(), prevs[i], &hs, &cp, &keys[0]).unwrap();
            let text = serde_json::to_string(&p).unwrap();
            assert!(matches!(verify_json(&text, &keys, None), Ok(Verified::Included { leaf_index, .. }) if leaf_index == i as u64));
            // Every hex digit of every hash, of the ciphertext and of the signature matters,
            // and so do the position and size.
            let v = serde_json::to_value(&p).unwrap();
            let mut targets: Vec<Vec<serde_json::Value>> = vec![];
            let field = |path: &[&str]| path.iter().map(|k| serde_json::Value::from(*k)).collect::<Vec<_>>();
            for f in [&["rowHash"][..], &["prevHash"], &["row", "personal"], &["checkpoint", "signature"], &["checkpoint", "treeRoot"], &["checkpoint", "headHash"]] {
                targets.push(field(f));
            }
            for k in 0..p.audit_path.len() {
                targets.push(vec!["auditPath".into(), k.into()]);
            }
            let mut flipped = 0;
            for t in &targets {
                let text = pointer(&v, t).as_str().unwrap().to_string();
                for pos in 0..text.len() {
                    let mut bad = v.clone();
                    let mut chars: Vec<char> = text.chars().collect();
                    chars[pos] = if chars[pos] == '0' { '1' } else { '0' };
                    *pointer_mut(&mut bad, t) = chars.into_iter().collect::<String>().into();
                    assert!(verify_json(&bad.to_string(), &keys, None).is_err(), "{t:?} digit {pos}");
                    flipped += 1;
                }
            }
            assert!(flipped > 300, "{flipped} digits tried");
            for (k, delta) in [("leafIndex", 1i64), ("treeSize", 1), ("treeSize", -1)] {
                let mut bad = v.clone();
                bad[k] = (bad[k].as_i64().unwrap() + delta).into();
                assert!(verify_json(&bad.to_string(), &keys, None).is_err(), "{k} {delta}");
            }
            let mut bad = v.clone();
            bad["row"]["resource"] = "billing".into();
            assert_eq!(verify_json(&bad.to_string(), &keys, None), Err(ProofError::RowHash));
            // The event's fields changed, given from outside the proof.
            let mut other = rs[i].clone();
            other.action = "logout".into();
            assert_eq!(verify_inclusion(&p, &keys, Some(&other)), Err(ProofError::RowHash));
            // Another key.
            let stranger = LedgerSigner::new(&SecretKey([4; 32])).verifying_key();
            assert_eq!(verify_inclusion(&p, &[stranger], None), Err(ProofError::Signature));
        }
    }

    #[test]
    fn consistency_proofs_verify_between_checkpoints_and_not_across_a_rewrite() {
        let signer = LedgerSigner::new(&SecretKey([3; 32]));
        let keys = [signer.verifying_key()];
        let (_, _, hs) = rows(13);
        let (a, b) = (checkpoint(&signer, &hs, 5), checkpoint(&signer, &hs, 13));
        let p = build_consistency(&hs, &a, &b, &keys[0]).unwrap();
        assert!(matches!(verify_consistency(&p, &keys), Ok(Verified::Consistent { from_size: 5, to_size: 13, .. })));
        // A signer that rewrote row 3 and re-signed: its new tree does not extend the old one.
        let mut rewritten = hs.clone();
        rewritten[2][0] ^= 1;
        let forged = checkpoint(&signer, &rewritten, 13);
        let p = build_consistency(&rewritten, &a, &forged, &keys[0]).unwrap();
        assert!(verify_consistency(&p, &keys).is_err());
    }

    #[test]
    fn export_entries_and_bare_rows_both_give_the_stored_row() {
        let (rs, _, _) = rows(2);
        let export = serde_json::json!([{ "id": "e1", "storedRow": rs[0] }, { "id": "e2", "storedRow": rs[1] }]).to_string();
        assert_eq!(stored_row_from_json(&export, "e2").unwrap(), rs[1]);
        assert_eq!(stored_row_from_json(&serde_json::to_string(&rs[0]).unwrap(), "e1").unwrap(), rs[0]);
        assert!(stored_row_from_json(&export, "e3").is_err());
    }
}
