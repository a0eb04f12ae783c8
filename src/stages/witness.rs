//! The witness as a sink stage over the shared runtime: its input is `audit-checkpoints`, its
//! sink the witness's own store (a directory), where the judged state and the consumed
//! offsets are saved together. Each round reads only the rows appended since the accepted
//! tree (with the auditor role) and extends the witness's own frontier of it. A rewritten history raises an operational alert and is
//! never co-signed; a record that is not a checkpoint goes to the DLQ.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::Utc;
use ed25519_dalek::VerifyingKey;
use lettre::message::Mailbox;
use prometheus::IntCounterVec;
use sqlx::PgPool;

use crate::alert::channels::email::EmailChannel;
use crate::cli::proof::{chain_leaves_between, ProveError};
use crate::error::{Rejection, RejectionKind};
use crate::ledger::{key_id, Checkpoint, LedgerSigner};
use crate::runtime::kafka::OffsetLoader;
use crate::runtime::{InputMessage, OffsetAdvance, SinkError, SinkStage, WriteOutcome};
use crate::witness::{self, offset_key, Judgement, Rows, Store};

pub struct WitnessSettings {
    pub checkpoint_topic: String,
    pub store: PathBuf,
    pub ledger_keys: Vec<VerifyingKey>,
    pub witness: LedgerSigner,
    /// Operational alert e-mail (channel and recipients), when configured.
    pub email: Option<(EmailChannel, Vec<Mailbox>)>,
}

pub struct WitnessStage {
    pool: PgPool,
    settings: WitnessSettings,
    store: Store,
    outcomes: IntCounterVec,
}

impl WitnessStage {
    pub fn new(pool: PgPool, settings: WitnessSettings, outcomes: IntCounterVec) -> std::io::Result<WitnessStage> {
        let store = Store::open(&settings.store)?;
        Ok(WitnessStage { pool, settings, store, outcomes })
    }

    /// Row hashes `after + 1 ..= upto` of a chain; `None` when the database lacks some.
    async fn leaves(&self, chain_id: &str, after: i64, upto: i64) -> Result<Option<Vec<crate::ledger::Hash>>, SinkError> {
        match chain_leaves_between(&self.pool, chain_id, after, upto).await {
            Ok(l) => Ok(Some(l)),
            Err(ProveError::Incomplete(_)) => Ok(None),
            Err(ProveError::Database(e)) => Err(SinkError::from_sqlx(&e)),
            Err(e) => Err(SinkError::transient(e.to_string())),
        }
    }

    async fn raise(&self, condition: &str, message: &str) {
        tracing::error!(stage = "witness", condition, "{message}");
        let Some((email, to)) = &self.settings.email else { return };
        let subject = format!("[auditflow] operational alert: witness {condition}");
        let text = format!("Condition: {condition}\r\nStage: auditflow witness\r\n\r\n{message}\r\n");
        match email.plain_message(&subject, text, to) {
            Ok(m) => {
                if let Err(e) = email.send(m).await {
                    tracing::error!(stage = "witness", error = %e, "operational alert e-mail failed");
                }
            }
            Err(e) => tracing::error!(stage = "witness", error = %e, "operational alert e-mail could not be built"),
        }
    }
}

impl SinkStage for WitnessStage {
    type Item = Checkpoint;

    fn name(&self) -> &'static str {
        "witness"
    }

    fn sink_name(&self) -> &'static str {
        "witness.store"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.settings.checkpoint_topic.clone()]
    }

    fn decode(&mut self, input: &InputMessage<'_>) -> Result<Checkpoint, Rejection> {
        let v: serde_json::Value =
            serde_json::from_slice(input.payload).map_err(|e| Rejection::new(RejectionKind::InvalidJson, e.to_string()))?;
        Checkpoint::from_json(&v).map_err(|e| Rejection::new(RejectionKind::InvalidField, e.to_string()))
    }

    async fn write(&mut self, items: &[Checkpoint], advances: &[OffsetAdvance]) -> Result<WriteOutcome, SinkError> {
        for a in advances {
            if self.store.offsets.get(&offset_key(&a.topic, a.partition)).copied() != a.expected {
                return Ok(WriteOutcome::Fenced);
            }
        }
        let mut by_chain: BTreeMap<&str, Vec<&Checkpoint>> = BTreeMap::new();
        for cp in items {
            by_chain.entry(cp.chain_id.as_str()).or_default().push(cp);
        }
        let mut chains = self.store.chains.clone();
        let mut lines = Vec::new();
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (chain_id, mut cps) in by_chain {
            cps.sort_by_key(|c| c.seq);
            let mut state = chains.get(chain_id).and_then(witness::Accepted::state);
            // One read per chain and batch: the rows appended since the accepted tree (all
            // rows when the chain is new to the witness).
            let base = state.as_ref().map(|s| s.checkpoint.seq).unwrap_or(0);
            let max = cps.iter().map(|c| c.seq).max().unwrap_or(0);
            let appended = if max > base { self.leaves(chain_id, base, max).await? } else { Some(Vec::new()) };
            let mut full: Option<Option<Vec<crate::ledger::Hash>>> = None;
            for cp in cps {
                let current = state.as_ref().map(|s| s.checkpoint.seq).unwrap_or(0);
                let remembered = state.as_ref().is_some_and(|s| cp.seq >= current || s.recent.contains_key(&cp.seq));
                let rows = if state.is_some() && !remembered {
                    // An old checkpoint not remembered: judged against every row (rare).
                    if full.is_none() {
                        full = Some(self.leaves(chain_id, 0, current.max(cp.seq)).await?);
                    }
                    full.as_ref().and_then(|f| f.as_deref()).map(Rows::All).unwrap_or(Rows::Unavailable)
                } else {
                    match &appended {
                        Some(a) if state.is_none() => Rows::All(&a[..]),
                        Some(a) => Rows::Appended(a.get((current - base).max(0) as usize..).unwrap_or_default()),
                        None => Rows::Unavailable,
                    }
                };
                let outcome = match witness::judge(state.as_ref(), cp, &self.settings.ledger_keys, rows) {
                    Judgement::Accept(frontier) => match self.settings.ledger_keys.iter().find(|k| key_id(k) == cp.key_id) {
                        Some(key) => {
                            let next = witness::ChainState::accept(state.as_ref(), cp, frontier);
                            let acc = witness::cosign(&self.settings.witness, &next, key, Utc::now());
                            lines.push(serde_json::json!({"event": "cosigned", "chainId": chain_id, "seq": cp.seq, "treeRoot": cp.tree_root.map(hex::encode), "cosignature": acc.cosignature, "at": acc.cosigned_at}));
                            chains.insert(chain_id.to_string(), acc);
                            state = Some(next);
                            "cosigned"
                        }
                        None => "forged",
                    },
                    Judgement::Known => "known",
                    Judgement::NoTree => "no_tree",
                    Judgement::Forged => {
                        let msg = format!("checkpoint at seq {} of chain {chain_id} is not signed by the ledger's key", cp.seq);
                        lines.push(serde_json::json!({"event": "forged", "chainId": chain_id, "seq": cp.seq, "detail": msg}));
                        self.raise("forged_checkpoint", &msg).await;
                        "forged"
                    }
                    Judgement::Inconsistent(why) => {
                        let msg = format!("rewritten history on chain {chain_id}: {why}");
                        lines.push(serde_json::json!({"event": "inconsistent", "chainId": chain_id, "seq": cp.seq, "treeRoot": cp.tree_root.map(hex::encode), "detail": msg}));
                        self.raise("inconsistent_history", &msg).await;
                        "inconsistent"
                    }
                };
                *counts.entry(outcome).or_default() += 1;
            }
        }
        let mut offsets = self.store.offsets.clone();
        for a in advances {
            offsets.insert(offset_key(&a.topic, a.partition), a.next);
        }
        let (old_chains, old_offsets) = (std::mem::replace(&mut self.store.chains, chains), std::mem::replace(&mut self.store.offsets, offsets));
        let saved = self.store.log(&lines).and_then(|()| self.store.save());
        if let Err(e) = saved {
            // Not durable: judge the batch again after the store recovers (disk full, …).
            self.store.chains = old_chains;
            self.store.offsets = old_offsets;
            return Err(SinkError::transient(format!("witness store {}: {e}", self.settings.store.display())));
        }
        for (outcome, n) in counts {
            self.outcomes.with_label_values(&[outcome]).inc_by(n);
        }
        Ok(WriteOutcome::Committed)
    }

    async fn probe(&mut self, _items: &[Checkpoint]) -> Result<(), SinkError> {
        Ok(())
    }

    fn offset_loader(&self) -> OffsetLoader {
        let dir = self.settings.store.clone();
        Box::new(move |partitions: &[(String, i32)]| {
            let store = Store::open(&dir).map_err(|e| e.to_string())?;
            Ok(partitions
                .iter()
                .filter_map(|(t, p)| store.offsets.get(&offset_key(t, *p)).map(|o| ((t.clone(), *p), *o)))
                .collect())
        })
    }
}
