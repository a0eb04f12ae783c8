//! Tamper evidence for `audit_events`.
//!
//! Rows form hash chains, one per (source topic, source partition, event month):
//! `row_hash = SHA-256(prev_hash ‖ canonical(row))`, the first `prev_hash` being a per-chain
//! genesis value. Signed checkpoints (Ed25519) pin a chain's length and head hash at a moment;
//! they live in PostgreSQL and on the `audit-checkpoints` topic, outside the database's reach.
//!
//! [`verify_chain`] walks one chain and reports the first broken position and what kind of
//! tampering explains it. The canonical encoding covers exactly the stored column values, so
//! the verifier needs nothing but the rows (ciphertexts included: erasing a subject's key
//! does not break a chain).

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::privacy::SecretKey;

pub type Hash = [u8; 32];

/// Exactly the stored values of one `audit_events` row that the chain covers. Its JSON form
/// (camelCase names, `personal` as hex) is what proofs carry.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRow {
    pub id: String,
    pub timestamp_us: i64,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub action: String,
    pub resource: String,
    pub resource_id: Option<String>,
    pub method: Option<String>,
    pub endpoint: Option<String>,
    pub status_code: Option<i32>,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    /// Canonical JSON text (keys sorted): what `canonical_json` produces.
    pub location: Option<String>,
    pub ip_facts: Option<String>,
    pub classification: String,
    pub severity: String,
    pub metadata: Option<String>,
    pub success: bool,
    pub error_message: Option<String>,
    pub duration: Option<i64>,
    pub compliance: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub enriched_at_us: i64,
    pub subject_pseudonym: Option<String>,
    pub user_pseudonym: Option<String>,
    pub key_generation: Option<i32>,
    #[serde(default, with = "hex_opt")]
    pub personal: Option<Vec<u8>>,
    pub chain_id: String,
    pub chain_seq: i64,
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// JSON text with object keys sorted, the form both the writer and the verifier hash.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // serde_json's Map is ordered by key unless `preserve_order` is on; re-parsing through
    // Value makes the text independent of how PostgreSQL or a struct ordered its fields.
    value.to_string()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
        None => out.push(0),
    }
}

fn put_opt_i64(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_be_bytes());
        }
        None => out.push(0),
    }
}

/// Length-prefixed, tagged encoding of every covered column, in a fixed order.
pub fn canonical(row: &StoredRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"auditflow.audit_events.v1");
    put_bytes(&mut out, row.id.as_bytes());
    out.extend_from_slice(&row.timestamp_us.to_be_bytes());
    put_opt_str(&mut out, &row.user_id);
    put_opt_str(&mut out, &row.session_id);
    put_bytes(&mut out, row.action.as_bytes());
    put_bytes(&mut out, row.resource.as_bytes());
    put_opt_str(&mut out, &row.resource_id);
    put_opt_str(&mut out, &row.method);
    put_opt_str(&mut out, &row.endpoint);
    put_opt_i64(&mut out, row.status_code.map(i64::from));
    put_opt_str(&mut out, &row.user_agent);
    put_opt_str(&mut out, &row.ip_address);
    put_opt_str(&mut out, &row.location);
    put_opt_str(&mut out, &row.ip_facts);
    put_bytes(&mut out, row.classification.as_bytes());
    put_bytes(&mut out, row.severity.as_bytes());
    put_opt_str(&mut out, &row.metadata);
    out.push(u8::from(row.success));
    put_opt_str(&mut out, &row.error_message);
    put_opt_i64(&mut out, row.duration);
    put_bytes(&mut out, row.compliance.as_bytes());
    put_bytes(&mut out, row.source_topic.as_bytes());
    out.extend_from_slice(&row.source_partition.to_be_bytes());
    out.extend_from_slice(&row.source_offset.to_be_bytes());
    out.extend_from_slice(&row.enriched_at_us.to_be_bytes());
    put_opt_str(&mut out, &row.subject_pseudonym);
    put_opt_str(&mut out, &row.user_pseudonym);
    put_opt_i64(&mut out, row.key_generation.map(i64::from));
    match &row.personal {
        Some(p) => {
            out.push(1);
            put_bytes(&mut out, p);
        }
        None => out.push(0),
    }
    put_bytes(&mut out, row.chain_id.as_bytes());
    out.extend_from_slice(&row.chain_seq.to_be_bytes());
    out
}

pub fn row_hash(prev: &Hash, row: &StoredRow) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(row));
    h.finalize().into()
}

/// The `prev_hash` of a chain's first row.
pub fn genesis(chain_id: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(b"auditflow.ledger.genesis:");
    h.update(chain_id.as_bytes());
    h.finalize().into()
}

/// `topic/partition/YYYY-MM`: one chain per source partition and event month.
pub fn chain_id(topic: &str, partition: i32, event_time: DateTime<Utc>) -> String {
    format!("{topic}/{partition}/{}", event_time.format("%Y-%m"))
}

/// The first instant of a chain's month (the epoch for an id without one).
pub fn chain_month(chain_id: &str) -> DateTime<Utc> {
    chain_id
        .rsplit('/')
        .next()
        .and_then(|m| DateTime::parse_from_rfc3339(&format!("{m}-01T00:00:00Z")).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_default()
}

/// Ed25519 signer of checkpoints and erasure receipts.
pub struct LedgerSigner {
    key: SigningKey,
    pub key_id: String,
}

impl LedgerSigner {
    pub fn new(seed: &SecretKey) -> LedgerSigner {
        let key = SigningKey::from_bytes(&seed.0);
        let key_id = key_id(&key.verifying_key());
        LedgerSigner { key, key_id }
    }
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
    pub fn sign(&self, statement: &[u8]) -> Vec<u8> {
        self.key.sign(statement).to_bytes().to_vec()
    }
}

/// Short, stable name of a public key (first 8 bytes of its SHA-256, hex).
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Public keys from `AUDITFLOW_VERIFY_KEY`: one or more (comma-separated, base64 or hex), so
/// checkpoints signed before a key rotation still verify.
pub fn verifying_keys_from_text(text: &str) -> Option<Vec<VerifyingKey>> {
    text.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let k = SecretKey::parse("AUDITFLOW_VERIFY_KEY", t).ok()?;
            VerifyingKey::from_bytes(&k.0).ok()
        })
        .collect()
}

/// What a checkpoint signs: the chain, its length and head at a moment, and (from v2 on) the
/// head of the Merkle tree over the chain's row hashes, whose size is the chain's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub chain_id: String,
    pub seq: i64,
    pub head_hash: Hash,
    /// `None` only for v1 checkpoints, signed before trees were kept.
    pub tree_root: Option<Hash>,
    pub signed_at: DateTime<Utc>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// Why a checkpoint record from outside the database cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed checkpoint: {0}")]
pub struct CheckpointFormatError(pub String);

pub fn hash_from_hex(field: &str, text: &str) -> Result<Hash, CheckpointFormatError> {
    let bytes = hex::decode(text).map_err(|_| CheckpointFormatError(format!("{field} is not hex")))?;
    bytes.try_into().map_err(|_| CheckpointFormatError(format!("{field} is not 32 bytes")))
}

pub fn hash_from_slice(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

impl Checkpoint {
    /// The exact bytes signed. v2: `auditflow-checkpoint-v2\nchain=C\nseq=N\nhead=H\ntree_size=N\ntree_root=R\nsigned_at=T`
    /// (hashes lower-case hex, T in microseconds since the epoch); v1 lacks the two tree lines.
    pub fn statement(&self) -> Vec<u8> {
        let (head, at) = (hex::encode(self.head_hash), self.signed_at.timestamp_micros());
        let (chain, seq) = (&self.chain_id, self.seq);
        match &self.tree_root {
            Some(root) => format!(
                "auditflow-checkpoint-v2\nchain={chain}\nseq={seq}\nhead={head}\ntree_size={seq}\ntree_root={}\nsigned_at={at}",
                hex::encode(root)
            ),
            None => format!("auditflow-checkpoint-v1\nchain={chain}\nseq={seq}\nhead={head}\nsigned_at={at}"),
        }
        .into_bytes()
    }

    pub fn sign(
        signer: &LedgerSigner,
        chain_id: &str,
        seq: i64,
        head_hash: Hash,
        tree_root: Hash,
        signed_at: DateTime<Utc>,
    ) -> Checkpoint {
        // Signed statements carry microseconds; so does PostgreSQL.
        let signed_at = DateTime::from_timestamp_micros(signed_at.timestamp_micros()).unwrap_or(signed_at);
        let mut cp = Checkpoint {
            chain_id: chain_id.to_string(),
            seq,
            head_hash,
            tree_root: Some(tree_root),
            signed_at,
            key_id: signer.key_id.clone(),
            signature: Vec::new(),
        };
        cp.signature = signer.sign(&cp.statement());
        cp
    }

    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let Ok(sig) = Signature::from_slice(&self.signature) else { return false };
        key.verify(&self.statement(), &sig).is_ok()
    }

    /// Whether one of `keys`, the one the checkpoint names, signed it.
    pub fn signed_by_any(&self, keys: &[VerifyingKey]) -> bool {
        keys.iter().find(|k| key_id(k) == self.key_id).is_some_and(|k| self.signature_valid(k))
    }

    /// JSON form published to `audit-checkpoints`, exported to files and embedded in proofs.
    pub fn to_json(&self, public_key: &VerifyingKey) -> serde_json::Value {
        let mut v = serde_json::json!({
            "version": if self.tree_root.is_some() { 2 } else { 1 },
            "chainId": self.chain_id,
            "seq": self.seq,
            "headHash": hex::encode(self.head_hash),
            "signedAt": self.signed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "keyId": self.key_id,
            "publicKey": hex::encode(public_key.as_bytes()),
            "signature": hex::encode(&self.signature),
        });
        if let Some(root) = &self.tree_root {
            v["treeSize"] = self.seq.into();
            v["treeRoot"] = hex::encode(root).into();
        }
        v
    }

    /// Read the JSON form back. The embedded public key is not trusted: signatures are
    /// checked against the keys the verifier was given.
    pub fn from_json(v: &serde_json::Value) -> Result<Checkpoint, CheckpointFormatError> {
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).ok_or_else(|| CheckpointFormatError(format!("{k} missing")));
        let seq = v.get("seq").and_then(|x| x.as_i64()).ok_or_else(|| CheckpointFormatError("seq missing".into()))?;
        let tree_root = match v.get("treeRoot").and_then(|x| x.as_str()) {
            Some(r) => {
                if v.get("treeSize").and_then(|x| x.as_i64()) != Some(seq) {
                    return Err(CheckpointFormatError("treeSize differs from seq".into()));
                }
                Some(hash_from_hex("treeRoot", r)?)
            }
            None => None,
        };
        let signed_at = DateTime::parse_from_rfc3339(text("signedAt")?)
            .map_err(|_| CheckpointFormatError("signedAt is not RFC 3339".into()))?
            .with_timezone(&Utc);
        Ok(Checkpoint {
            chain_id: text("chainId")?.to_string(),
            seq,
            head_hash: hash_from_hex("headHash", text("headHash")?)?,
            tree_root,
            signed_at,
            key_id: text("keyId")?.to_string(),
            signature: hex::decode(text("signature")?).map_err(|_| CheckpointFormatError("signature is not hex".into()))?,
        })
    }
}

/// A row as the verifier reads it: stored values plus the chain columns.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub row: StoredRow,
    pub prev_hash: Option<Vec<u8>>,
    pub row_hash: Option<Vec<u8>>,
}

/// The kinds of tampering the verifier names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    ModifiedRow,
    DeletedRow,
    InsertedRow,
    ReorderedRows,
    TruncatedTail,
    ForgedCheckpoint,
    /// Published checkpoints of a chain of which the database holds nothing.
    DeletedChain,
    /// A checkpoint on the topic or in the export directory is missing from the database.
    DeletedCheckpoint,
    /// A checkpoint in the database that the topic and export directory never received.
    UnpublishedCheckpoint,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::ModifiedRow => "modified row",
            BreakKind::DeletedRow => "deleted row",
            BreakKind::InsertedRow => "inserted row",
            BreakKind::ReorderedRows => "reordered rows",
            BreakKind::TruncatedTail => "truncated tail",
            BreakKind::ForgedCheckpoint => "forged checkpoint",
            BreakKind::DeletedChain => "deleted chain",
            BreakKind::DeletedCheckpoint => "deleted checkpoint",
            BreakKind::UnpublishedCheckpoint => "unpublished checkpoint",
        }
    }
}

/// The first broken position of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    pub chain_id: String,
    pub seq: i64,
    pub kind: BreakKind,
    pub event_id: Option<String>,
    pub detail: String,
}

/// Whether a row's stored hash matches its own contents and stored predecessor hash.
fn self_consistent(r: &LedgerRow) -> bool {
    match (&r.prev_hash, &r.row_hash) {
        (Some(p), Some(h)) if p.len() == 32 => {
            let mut prev = [0u8; 32];
            prev.copy_from_slice(p);
            row_hash(&prev, &r.row).as_slice() == h.as_slice()
        }
        _ => false,
    }
}

/// Walk one chain's rows (ordered by `chain_seq`) against its checkpoints.
/// `expected_len`: the chain head's `last_seq` when known. Returns the rows verified.
pub fn verify_chain(
    chain_id: &str,
    rows: &[LedgerRow],
    checkpoints: &[Checkpoint],
    expected_len: Option<i64>,
    keys: &[VerifyingKey],
) -> Result<u64, Break> {
    let brk = |seq: i64, kind: BreakKind, event_id: Option<&str>, detail: String| Break {
        chain_id: chain_id.to_string(),
        seq,
        kind,
        event_id: event_id.map(str::to_string),
        detail,
    };
    // Checkpoints first: a forged one must not be trusted to judge the rows.
    for cp in checkpoints {
        // Each checkpoint names the key that signed it, so rotated keys keep verifying.
        if !cp.signed_by_any(keys) {
            return Err(brk(cp.seq, BreakKind::ForgedCheckpoint, None, format!("signature of checkpoint at seq {} does not verify", cp.seq)));
        }
    }
    let mut prev = genesis(chain_id);
    let mut heads: Vec<Hash> = Vec::with_capacity(rows.len());
    // Tree heads at every size some checkpoint signs one for.
    let tree_sizes: std::collections::HashSet<i64> =
        checkpoints.iter().filter(|c| c.tree_root.is_some()).map(|c| c.seq).collect();
    let mut tree = crate::merkle::Frontier::new();
    let mut tree_roots: std::collections::HashMap<i64, Hash> = std::collections::HashMap::new();
    let mut expected_seq = 1i64;
    #[allow(clippy::explicit_counter_loop)] // expected_seq is the chain position, not a loop index
    for (i, r) in rows.iter().enumerate() {
        let id = Some(r.row.id.as_str());
        if let Some(next) = rows.get(i + 1) {
            if next.row.chain_seq == r.row.chain_seq && r.row.chain_seq == expected_seq {
                // Two rows claim one position: name the one whose hash is not its own.
                let forged = if self_consistent(r) { next } else { r };
                return Err(brk(r.row.chain_seq, BreakKind::InsertedRow, Some(&forged.row.id), format!("second row at seq {}", r.row.chain_seq)));
            }
        }
        if r.prev_hash.is_none() || r.row_hash.is_none() {
            return Err(brk(r.row.chain_seq, BreakKind::InsertedRow, id, "row carries no chain hashes".into()));
        }
        if r.row.chain_seq < expected_seq {
            return Err(brk(r.row.chain_seq, BreakKind::InsertedRow, id, format!("second row at seq {}", r.row.chain_seq)));
        }
        if r.row.chain_seq > expected_seq {
            return Err(brk(expected_seq, BreakKind::DeletedRow, None, format!("seq {expected_seq} is missing (next row has seq {})", r.row.chain_seq)));
        }
        let computed = row_hash(&prev, &r.row);
        let stored_hash = r.row_hash.as_deref().unwrap_or_default();
        let stored_prev = r.prev_hash.as_deref().unwrap_or_default();
        if computed.as_slice() != stored_hash {
            let (seq, kind, detail) = if stored_prev == prev.as_slice() {
                (r.row.chain_seq, BreakKind::ModifiedRow, "the row's contents no longer match its hash".to_string())
            } else if rows.iter().any(|o| o.row_hash.as_deref() == Some(stored_prev)) {
                (r.row.chain_seq, BreakKind::ReorderedRows, "the row follows a row that is not its predecessor".to_string())
            } else {
                // Its recorded predecessor hash exists nowhere: the row before it was
                // rewritten (with a recomputed hash, or this row would have failed earlier).
                (r.row.chain_seq - 1, BreakKind::ModifiedRow, format!("row {} was rewritten: its successor no longer links to it", r.row.chain_seq - 1))
            };
            return Err(brk(seq, kind, if seq == r.row.chain_seq { id } else { None }, detail));
        }
        prev = computed;
        heads.push(computed);
        tree.push(&computed);
        if tree_sizes.contains(&expected_seq) {
            tree_roots.insert(expected_seq, tree.root());
        }
        expected_seq += 1;
    }
    let len = rows.len() as i64;
    for cp in checkpoints {
        if cp.seq > len {
            return Err(brk(len + 1, BreakKind::TruncatedTail, None, format!("a signed checkpoint covers seq {} but the chain ends at {len}", cp.seq)));
        }
        if cp.seq >= 1 && heads.get((cp.seq - 1) as usize) != Some(&cp.head_hash) {
            return Err(brk(cp.seq, BreakKind::ModifiedRow, None, format!("rows up to seq {} no longer hash to the signed checkpoint", cp.seq)));
        }
        if cp.tree_root.is_some() && cp.seq >= 1 && tree_roots.get(&cp.seq) != cp.tree_root.as_ref() {
            return Err(brk(cp.seq, BreakKind::ModifiedRow, None, format!("rows up to seq {} no longer hash to the signed tree head", cp.seq)));
        }
    }
    if let Some(expected) = expected_len {
        if len > expected {
            return Err(brk(expected + 1, BreakKind::InsertedRow, None, format!("rows beyond the chain head ({expected})")));
        }
        if expected > len {
            return Err(brk(len + 1, BreakKind::TruncatedTail, None, format!("chain head says {expected} rows, {len} found")));
        }
    }
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LedgerSigner {
        LedgerSigner::new(&SecretKey([5u8; 32]))
    }

    fn chain(n: usize) -> Vec<LedgerRow> {
        let mut prev = genesis("t/0/2026-11");
        (1..=n)
            .map(|i| {
                let row = StoredRow {
                    id: format!("e{i}"),
                    action: "login".into(),
                    resource: "r".into(),
                    classification: "INTERNAL".into(),
                    severity: "LOW".into(),
                    compliance: "{}".into(),
                    source_topic: "t".into(),
                    source_offset: i as i64,
                    chain_id: "t/0/2026-11".into(),
                    chain_seq: i as i64,
                    ..StoredRow::default()
                };
                let h = row_hash(&prev, &row);
                let r = LedgerRow { row, prev_hash: Some(prev.to_vec()), row_hash: Some(h.to_vec()) };
                prev = h;
                r
            })
            .collect()
    }

    fn verify(rows: &[LedgerRow], cps: &[Checkpoint]) -> Result<u64, Break> {
        verify_chain("t/0/2026-11", rows, cps, None, &[signer().verifying_key()])
    }

    fn tree_root_at(rows: &[LedgerRow], seq: usize) -> Hash {
        let leaves: Vec<Vec<u8>> = rows[..seq].iter().map(|r| r.row_hash.clone().unwrap()).collect();
        crate::merkle::root(&leaves)
    }

    fn checkpoint_by(signer: &LedgerSigner, rows: &[LedgerRow], seq: usize) -> Checkpoint {
        let h = hash_from_slice(rows[seq - 1].row_hash.as_ref().unwrap()).unwrap();
        Checkpoint::sign(signer, "t/0/2026-11", seq as i64, h, tree_root_at(rows, seq), Utc::now())
    }

    fn checkpoint_at(rows: &[LedgerRow], seq: usize) -> Checkpoint {
        checkpoint_by(&signer(), rows, seq)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let rows = chain(10);
        let cp = checkpoint_at(&rows, 10);
        assert_eq!(verify(&rows, &[cp]), Ok(10));
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let rows = chain(10);
        let cp = checkpoint_at(&rows, 10);

        let mut modified = rows.clone();
        modified[4].row.action = "logout".into();
        let b = verify(&modified, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::ModifiedRow, 5));

        let mut deleted = rows.clone();
        deleted.remove(3);
        let b = verify(&deleted, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::DeletedRow, 4));

        let mut inserted = rows.clone();
        let mut extra = rows[5].clone();
        extra.row.id = "forged".into();
        inserted.insert(6, extra);
        let b = verify(&inserted, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::InsertedRow, 6));
        assert_eq!(b.event_id.as_deref(), Some("forged"));
        let mut inserted_first = rows.clone();
        let mut extra = rows[5].clone();
        extra.row.id = "forged".into();
        inserted_first.insert(5, extra);
        let b = verify(&inserted_first, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!((b.kind, b.seq, b.event_id.as_deref()), (BreakKind::InsertedRow, 6, Some("forged")));

        // Swap the contents of rows 3 and 4 but keep their seq numbers in place.
        let mut reordered = rows.clone();
        let (a, b2) = (reordered[2].clone(), reordered[3].clone());
        reordered[2] = LedgerRow { row: StoredRow { chain_seq: 3, ..b2.row.clone() }, ..b2.clone() };
        reordered[3] = LedgerRow { row: StoredRow { chain_seq: 4, ..a.row.clone() }, ..a.clone() };
        let b = verify(&reordered, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::ReorderedRows, 3));

        let truncated = rows[..7].to_vec();
        let b = verify(&truncated, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::TruncatedTail, 8));

        let mut forged = cp.clone();
        forged.seq = 9;
        let b = verify(&rows, &[forged]).unwrap_err();
        assert_eq!(b.kind, BreakKind::ForgedCheckpoint);
    }

    #[test]
    fn renumbered_rows_and_rewritten_hashes_are_caught() {
        let rows = chain(6);
        // Rows 3 and 4 trade seq numbers (the table re-sorts them): row 4 now comes first.
        let mut moved = rows.clone();
        moved[2].row.chain_seq = 4;
        moved[3].row.chain_seq = 3;
        moved.swap(2, 3);
        let b = verify(&moved, &[]).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::ReorderedRows, 3));

        // A row rewritten with its hash recomputed: caught at the link to its successor.
        let mut rewritten = rows.clone();
        rewritten[1].row.resource = "other".into();
        let mut p = [0u8; 32];
        p.copy_from_slice(rewritten[1].prev_hash.as_ref().unwrap());
        rewritten[1].row_hash = Some(row_hash(&p, &rewritten[1].row).to_vec());
        let b = verify(&rewritten, &[]).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::ModifiedRow, 2));

        // A row appended past the chain head.
        let b = verify_chain("t/0/2026-11", &rows, &[], Some(5), &[signer().verifying_key()]).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::InsertedRow, 6));
    }

    #[test]
    fn checkpoints_round_trip_and_detect_a_different_key() {
        let rows = chain(3);
        let cp = checkpoint_at(&rows, 3);
        assert!(cp.signature_valid(&signer().verifying_key()));
        let other = LedgerSigner::new(&SecretKey([6u8; 32]));
        assert!(!cp.signature_valid(&other.verifying_key()));
        let json = cp.to_json(&signer().verifying_key());
        assert_eq!(json["seq"], 3);
        assert_eq!(json["keyId"], signer().key_id);
        assert_eq!(json["treeSize"], 3);
        assert_eq!(Checkpoint::from_json(&json), Ok(cp.clone()));
        let mut wrong = json.clone();
        wrong["treeSize"] = 2.into();
        assert!(Checkpoint::from_json(&wrong).is_err());
    }

    #[test]
    fn v1_checkpoints_still_verify_and_a_wrong_tree_head_is_caught() {
        let rows = chain(5);
        let mut v1 = Checkpoint { tree_root: None, ..checkpoint_at(&rows, 4) };
        v1.signature = signer().sign(&v1.statement());
        assert!(String::from_utf8(v1.statement()).unwrap().starts_with("auditflow-checkpoint-v1\n"));
        assert_eq!(verify(&rows, &[v1]), Ok(5));
        // A checkpoint whose signed tree head is not the rows' (a buggy or dishonest signer).
        let good = checkpoint_at(&rows, 3);
        let bad = Checkpoint::sign(&signer(), "t/0/2026-11", 3, good.head_hash, tree_root_at(&rows, 2), Utc::now());
        let b = verify(&rows, &[bad]).unwrap_err();
        assert_eq!((b.kind, b.seq), (BreakKind::ModifiedRow, 3));
        assert!(b.detail.contains("tree head"));
    }

    #[test]
    fn checkpoints_of_a_rotated_key_verify_with_both_public_keys() {
        let rows = chain(4);
        let old = checkpoint_at(&rows, 2);
        let new_signer = LedgerSigner::new(&SecretKey([8u8; 32]));
        let new = checkpoint_by(&new_signer, &rows, 4);
        let both = [signer().verifying_key(), new_signer.verifying_key()];
        assert_eq!(verify_chain("t/0/2026-11", &rows, &[old.clone(), new.clone()], None, &both), Ok(4));
        let b = verify_chain("t/0/2026-11", &rows, &[old, new], None, &both[1..]).unwrap_err();
        assert_eq!(b.kind, BreakKind::ForgedCheckpoint, "a key not trusted is a forgery");
        let text = format!("{},{}", SecretKey(both[0].to_bytes()).to_base64(), SecretKey(both[1].to_bytes()).to_base64());
        assert_eq!(verifying_keys_from_text(&text).map(|k| k.len()), Some(2));
    }

    #[test]
    fn chain_ids_split_by_partition_and_month() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(chain_id("audit-enriched", 3, t), "audit-enriched/3/2026-11");
        assert_ne!(genesis("a/0/2026-11"), genesis("a/1/2026-11"));
    }
}
