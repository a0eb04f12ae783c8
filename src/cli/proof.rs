//! `auditflow prove`: build inclusion and consistency proofs from the ledger. Every proof is
//! verified with the given public keys before it is handed out, so a tampered database yields
//! an error, never a proof that fails later in an auditor's hands.

use ed25519_dalek::VerifyingKey;
use sqlx::PgPool;

use crate::cli::ledger::{ledger_row, load_checkpoints, ROW_COLUMNS};
use crate::ledger::{self, key_id, Checkpoint, Hash};
use crate::proof::{self, ConsistencyProof, InclusionProof, ProofError};

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("event {0} is not in the ledger")]
    NoEvent(String),
    #[error("{0}")]
    NoCheckpoint(String),
    #[error("chain {0} has rows missing below its checkpoint: run `auditflow verify`")]
    Incomplete(String),
    #[error("no given public key signed checkpoint {seq} (key id {key_id})")]
    UnknownKey { seq: i64, key_id: String },
    #[error("the ledger does not support this proof ({0}): run `auditflow verify`")]
    Invalid(#[from] ProofError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The leaves of a chain's tree of `size` rows: its row hashes in `chain_seq` order.
pub async fn chain_leaves(pool: &PgPool, chain_id: &str, size: i64) -> Result<Vec<Hash>, ProveError> {
    chain_leaves_between(pool, chain_id, 0, size).await
}

/// Row hashes of rows `after + 1 ..= upto` of a chain; every one must be there.
pub async fn chain_leaves_between(pool: &PgPool, chain_id: &str, after: i64, upto: i64) -> Result<Vec<Hash>, ProveError> {
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT row_hash FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3 ORDER BY chain_seq",
    )
    .bind(chain_id)
    .bind(after)
    .bind(upto)
    .fetch_all(pool)
    .await?;
    let leaves: Vec<Hash> = hashes.iter().filter_map(|h| ledger::hash_from_slice(h)).collect();
    if leaves.len() as i64 != (upto - after).max(0) || hashes.len() != leaves.len() {
        return Err(ProveError::Incomplete(chain_id.to_string()));
    }
    Ok(leaves)
}

fn public_for<'a>(keys: &'a [VerifyingKey], cp: &Checkpoint) -> Result<&'a VerifyingKey, ProveError> {
    keys.iter()
        .find(|k| key_id(k) == cp.key_id)
        .ok_or_else(|| ProveError::UnknownKey { seq: cp.seq, key_id: cp.key_id.clone() })
}

/// The newest v2 checkpoint of `chain_id` covering `min_seq`, or the one at exactly `seq`.
async fn pick_checkpoint(pool: &PgPool, chain_id: &str, min_seq: i64, seq: Option<i64>) -> Result<Checkpoint, ProveError> {
    let all = load_checkpoints(pool, chain_id).await?;
    let mut usable = all.into_iter().map(|(c, _)| c).filter(|c| c.tree_root.is_some() && c.seq >= min_seq);
    let found = match seq {
        Some(s) => usable.rfind(|c| c.seq == s),
        None => usable.max_by_key(|c| c.seq),
    };
    found.ok_or_else(|| {
        ProveError::NoCheckpoint(match seq {
            Some(s) => format!("chain {chain_id} has no tree-signing checkpoint at size {s} covering seq {min_seq}"),
            None => format!("chain {chain_id} has no tree-signing checkpoint covering seq {min_seq} yet"),
        })
    })
}

pub async fn prove_event(pool: &PgPool, keys: &[VerifyingKey], event_id: &str, checkpoint: Option<i64>) -> Result<InclusionProof, ProveError> {
    let rows = sqlx::query(&format!("SELECT {ROW_COLUMNS} FROM audit_events WHERE id = $1 AND chain_id IS NOT NULL"))
        .bind(event_id)
        .fetch_all(pool)
        .await?;
    let row = match rows.as_slice() {
        [r] => ledger_row(r)?,
        [] => return Err(ProveError::NoEvent(event_id.to_string())),
        _ => return Err(ProveError::Incomplete(format!("(event {event_id} is stored twice)"))),
    };
    let chain_id = row.row.chain_id.clone();
    let cp = pick_checkpoint(pool, &chain_id, row.row.chain_seq, checkpoint).await?;
    let public = public_for(keys, &cp)?;
    let leaves = chain_leaves(pool, &chain_id, cp.seq).await?;
    let prev = row.prev_hash.as_deref().and_then(ledger::hash_from_slice).unwrap_or_default();
    let p = proof::build_inclusion(row.row, prev, &leaves, &cp, public)?;
    proof::verify_inclusion(&p, keys, None)?;
    Ok(p)
}

pub async fn prove_consistency(pool: &PgPool, keys: &[VerifyingKey], chain_id: &str, from: i64, to: i64) -> Result<ConsistencyProof, ProveError> {
    if from < 1 || from > to {
        return Err(ProveError::NoCheckpoint(format!("sizes must satisfy 1 <= FROM <= TO (got {from} and {to})")));
    }
    let a = pick_checkpoint(pool, chain_id, from, Some(from)).await?;
    let b = pick_checkpoint(pool, chain_id, to, Some(to)).await?;
    let public = public_for(keys, &b)?;
    public_for(keys, &a)?;
    let leaves = chain_leaves(pool, chain_id, to).await?;
    let p = proof::build_consistency(&leaves, &a, &b, public)?;
    proof::verify_consistency(&p, keys)?;
    Ok(p)
}

#[derive(clap::Args, Debug)]
pub struct ProveArgs {
    /// The event whose inclusion to prove.
    #[arg(required_unless_present = "consistency")]
    pub event_id: Option<String>,
    /// Prove against the checkpoint of this tree size (default: the chain's newest).
    #[arg(long, value_name = "SIZE", conflicts_with = "consistency")]
    pub checkpoint: Option<i64>,
    /// Prove that the chain's signed tree of TO_SIZE rows extends the one of FROM_SIZE rows.
    #[arg(long, num_args = 3, value_names = ["CHAIN", "FROM_SIZE", "TO_SIZE"], conflicts_with = "event_id")]
    pub consistency: Option<Vec<String>>,
    /// Write the proof here instead of stdout.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

pub async fn run_prove(config: &crate::config::Config, args: ProveArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let keys = crate::cli::ledger::verifying_keys(config)?;
    let pool = crate::db::connect(&config.database, 2).await.context("connecting to PostgreSQL")?;
    let value = match (&args.event_id, &args.consistency) {
        (_, Some(c)) => {
            let size = |s: &str| s.parse::<i64>().map_err(|_| crate::cli::emit::InputError(format!("{s:?} is not a tree size")));
            serde_json::to_value(prove_consistency(&pool, &keys, &c[0], size(&c[1])?, size(&c[2])?).await.map_err(input)?)?
        }
        (Some(id), None) => serde_json::to_value(prove_event(&pool, &keys, id, args.checkpoint).await.map_err(input)?)?,
        (None, None) => return Err(crate::cli::emit::InputError("give an EVENT_ID or --consistency".into()).into()),
    };
    let text = serde_json::to_string_pretty(&value)?;
    match &args.output {
        Some(path) => std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// What the operator asked for does not exist (exit 2); database trouble stays an error.
fn input(e: ProveError) -> anyhow::Error {
    match e {
        ProveError::Database(e) => anyhow::Error::new(e),
        ProveError::Invalid(_) | ProveError::Incomplete(_) => {
            anyhow::Error::new(crate::cli::ledger::LedgerBroken(1)).context(e.to_string())
        }
        other => crate::cli::emit::InputError(other.to_string()).into(),
    }
}

#[derive(clap::Args, Debug)]
pub struct VerifyProofArgs {
    /// The proof file (from `auditflow prove`).
    pub file: std::path::PathBuf,
    /// The ledger's public key(s), base64 or hex, comma-separated (default: AUDITFLOW_VERIFY_KEY).
    #[arg(long)]
    pub key: Option<String>,
    /// The event's stored fields from elsewhere: `auditflow export` output or a stored row
    /// (JSON), checked instead of the copy inside the proof.
    #[arg(long, value_name = "FILE")]
    pub event: Option<std::path::PathBuf>,
}

/// Offline: reads only the files named.
pub fn run_verify_proof(config: &crate::config::Config, args: VerifyProofArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let key_text = args.key.clone().or_else(|| config.ledger.verify_key.clone()).ok_or_else(|| {
        crate::cli::emit::InputError("--key (or AUDITFLOW_VERIFY_KEY): the ledger's public key is needed".into())
    })?;
    let keys = ledger::verifying_keys_from_text(&key_text)
        .ok_or_else(|| crate::cli::emit::InputError("--key is not a list of Ed25519 public keys".into()))?;
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let event = match &args.event {
        Some(path) => {
            let id = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("eventId").and_then(|x| x.as_str()).map(str::to_string))
                .unwrap_or_default();
            let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(proof::stored_row_from_json(&t, &id).map_err(|e| crate::cli::emit::InputError(e.to_string()))?)
        }
        None => None,
    };
    match proof::verify_json(&text, &keys, event.as_ref()) {
        Ok(proof::Verified::Included { event_id, chain_id, leaf_index, tree_size, key_id }) => {
            println!("OK: event {event_id} is row {} of {tree_size} in chain {chain_id}, signed by key {key_id}", leaf_index + 1);
            Ok(())
        }
        Ok(proof::Verified::Consistent { chain_id, from_size, to_size, key_id }) => {
            println!("OK: chain {chain_id} at {to_size} rows extends its tree of {from_size} rows, signed by key {key_id}");
            Ok(())
        }
        Err(e) => {
            println!("FAILED: {e}");
            Err(crate::cli::ledger::LedgerBroken(1).into())
        }
    }
}
