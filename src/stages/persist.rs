//! `audit-persist`: `audit-enriched` → PostgreSQL `audit_events`, as a tamper-evident ledger.
//!
//! Per batch, in one transaction: personal fields sealed under each subject's data key,
//! every row linked into its hash chain (one chain per source partition and event month),
//! the rows streamed in with one `COPY … FROM STDIN` (no row-by-row writes; rows are sent in
//! chunks as they are built, so PostgreSQL inserts while the next ones are sealed and
//! hashed), the chain heads and the consumed offsets advanced. Duplicates of stored events
//! are filtered out before, so the COPY never meets a conflict. Each chain's Merkle tree
//! frontier advances with its head, and every chain the batch extends gets a signed
//! checkpoint (chain head and tree head) in the same transaction, so no committed row is
//! ever unsigned. Checkpoints are published to `audit-checkpoints` after commit (an outbox:
//! unpublished ones are retried) and, when configured, exported to an append-only directory.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::codec::decode_enriched;
use crate::error::Rejection;
use crate::event::EnrichedEvent;
use crate::ledger::{self, Checkpoint, Hash, LedgerSigner, StoredRow};
use crate::merkle::Frontier;
use crate::privacy::{self, PersonalField, PersonalFields, PrivacyKeys, SecretKey, SubjectKind};
use crate::runtime::kafka::OffsetLoader;
use crate::runtime::outbox::Outbox;
use crate::runtime::offsets::{self, Advance, OffsetAdvance};
use crate::runtime::{InputMessage, SinkError, SinkStage, WriteOutcome};

/// Everything the persist stage needs besides the database.
pub struct PersistSettings {
    pub input_topic: String,
    pub group_id: String,
    pub keys: PrivacyKeys,
    pub personal_fields: Vec<PersonalField>,
    pub signer: LedgerSigner,
    pub checkpoint_interval: Duration,
    pub checkpoint_topic: String,
    /// `AUDITFLOW_CHECKPOINT_EXPORT_DIR`: one fsynced file per checkpoint.
    pub checkpoint_export_dir: Option<std::path::PathBuf>,
}

pub struct PersistStage {
    pool: PgPool,
    settings: PersistSettings,
    handle: tokio::runtime::Handle,
    outbox: Option<Outbox>,
    /// Month partitions known to exist, so the DDL check runs once per month per process.
    known_months: HashSet<(i32, u32)>,
    last_checkpoint: Instant,
    /// Batches in a row that met a data key that does not open.
    key_failures: u32,
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A data key does not open, or a subject has none: the row would lose its personal fields.
    #[error("{0}")]
    Key(String),
}

/// A key error is retried this many batches in a row (a key row being replaced), then stops
/// the stage.
const MAX_KEY_FAILURES: u32 = 3;

/// Check that the master and pseudonym keys are the ones this database was written with,
/// recording their check values at first use. A database written before check values existed
/// is checked by opening its newest data key first. Fails closed with the reason.
pub async fn verify_keys(pool: &PgPool, keys: &PrivacyKeys) -> Result<(), String> {
    let (master, pseudonym) = privacy::key_check_values(keys);
    let stored: Option<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT master_check, pseudonym_check FROM privacy_key_check WHERE id = 1")
            .fetch_optional(pool)
            .await
            .map_err(|e| format!("cannot read the key check: {e}"))?;
    let stored = match stored {
        Some(s) => s,
        None => {
            let newest: Option<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT subject_pseudonym, wrapped_key FROM subject_keys
                  WHERE wrapped_key IS NOT NULL ORDER BY created_at DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await
            .map_err(|e| format!("cannot read subject keys: {e}"))?;
            if let Some((subject, wrapped)) = newest {
                keys.unwrap_data_key(&subject, &wrapped).map_err(|_| {
                    "AUDITFLOW_MASTER_KEY does not open the data keys already stored in this database; \
                     refusing to start (use the master key the database was written with)"
                        .to_string()
                })?;
            }
            sqlx::query(
                "INSERT INTO privacy_key_check (id, master_check, pseudonym_check) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&master)
            .bind(&pseudonym)
            .execute(pool)
            .await
            .map_err(|e| format!("cannot record the key check: {e}"))?;
            sqlx::query_as("SELECT master_check, pseudonym_check FROM privacy_key_check WHERE id = 1")
                .fetch_one(pool)
                .await
                .map_err(|e| format!("cannot read the key check: {e}"))?
        }
    };
    if stored.0 != master {
        return Err("AUDITFLOW_MASTER_KEY is not the key this database was written with; refusing to start".into());
    }
    if stored.1 != pseudonym {
        return Err("AUDITFLOW_PSEUDONYM_KEY is not the key this database was written with; refusing to start \
                    (pseudonyms, holds and erasure would no longer match)"
            .into());
    }
    Ok(())
}

impl PersistStage {
    pub fn new(
        pool: PgPool,
        settings: PersistSettings,
        handle: tokio::runtime::Handle,
        outbox: Option<Outbox>,
    ) -> PersistStage {
        PersistStage {
            pool,
            settings,
            handle,
            outbox,
            known_months: HashSet::new(),
            last_checkpoint: Instant::now(),
            key_failures: 0,
        }
    }

    async fn ensure_months(&mut self, items: &[&EnrichedEvent]) -> Result<(), sqlx::Error> {
        let mut missing: Vec<DateTime<Utc>> = Vec::new();
        for ev in items {
            let month = (ev.timestamp.year(), ev.timestamp.month());
            if !self.known_months.contains(&month) && !missing.iter().any(|m| (m.year(), m.month()) == month) {
                missing.push(ev.timestamp);
            }
        }
        for at in missing {
            sqlx::query("SELECT audit_events_ensure_month($1)").bind(at).execute(&self.pool).await?;
            self.known_months.insert((at.year(), at.month()));
        }
        Ok(())
    }

    /// Events of the batch not stored yet (an upstream duplicate id is stored once).
    async fn new_events<'a>(&self, items: &'a [EnrichedEvent]) -> Result<Vec<&'a EnrichedEvent>, sqlx::Error> {
        let mut seen: HashSet<(&str, DateTime<Utc>)> = HashSet::with_capacity(items.len());
        let unique: Vec<&EnrichedEvent> = items.iter().filter(|e| seen.insert((e.id.as_str(), e.timestamp))).collect();
        let ids: Vec<&str> = unique.iter().map(|e| e.id.as_str()).collect();
        let times: Vec<DateTime<Utc>> = unique.iter().map(|e| e.timestamp).collect();
        let existing: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            r#"SELECT a.id, a."timestamp" FROM audit_events a
                 JOIN UNNEST($1::text[], $2::timestamptz[]) AS b(id, ts) ON a.id = b.id AND a."timestamp" = b.ts"#,
        )
        .bind(&ids)
        .bind(&times)
        .fetch_all(&self.pool)
        .await?;
        if existing.is_empty() {
            return Ok(unique);
        }
        let existing: HashSet<(String, DateTime<Utc>)> = existing.into_iter().collect();
        Ok(unique.into_iter().filter(|e| !existing.contains(&(e.id.clone(), e.timestamp))).collect())
    }

    /// The current data key of every subject, creating keys for new (or erased) subjects.
    async fn subject_keys(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        subjects: &HashMap<String, SubjectKind>,
    ) -> Result<HashMap<String, (i32, SecretKey)>, PersistError> {
        let pseudonyms: Vec<&str> = subjects.keys().map(String::as_str).collect();
        let mut keys = self.load_keys(tx, &pseudonyms).await?;
        let missing: Vec<(&str, i32)> = pseudonyms
            .iter()
            .filter_map(|p| match keys.get(*p) {
                Some((_, Some(_))) => None,
                Some((generation, None)) => Some((*p, generation + 1)),
                None => Some((*p, 1)),
            })
            .collect();
        if !missing.is_empty() {
            let mut names = Vec::with_capacity(missing.len());
            let mut generations = Vec::with_capacity(missing.len());
            let mut kinds = Vec::with_capacity(missing.len());
            let mut wrapped = Vec::with_capacity(missing.len());
            for (p, generation) in &missing {
                let (_, w) = self.settings.keys.new_data_key(p);
                names.push(*p);
                generations.push(*generation);
                kinds.push(subjects.get(*p).map(|k| k.as_str()).unwrap_or("user"));
                wrapped.push(w);
            }
            // A concurrent instance may create the same key first; its key wins, ours is dropped.
            sqlx::query(
                "INSERT INTO subject_keys (subject_pseudonym, generation, subject_kind, wrapped_key)
                 SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::bytea[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&names)
            .bind(&generations)
            .bind(&kinds)
            .bind(&wrapped)
            .execute(&mut **tx)
            .await?;
            keys = self.load_keys(tx, &pseudonyms).await?;
        }
        let mut out = HashMap::with_capacity(keys.len());
        for (p, (generation, wrapped)) in keys {
            if let Some(w) = wrapped {
                // Never write a row without its personal fields: a key that does not open
                // stops the batch.
                let k = self.settings.keys.unwrap_data_key(&p, &w).map_err(|e| PersistError::Key(format!(
                    "the data key of subject {p} (generation {generation}) does not unwrap under AUDITFLOW_MASTER_KEY: {e}"
                )))?;
                out.insert(p, (generation, k));
            }
        }
        Ok(out)
    }

    async fn load_keys(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        pseudonyms: &[&str],
    ) -> Result<HashMap<String, (i32, Option<Vec<u8>>)>, sqlx::Error> {
        let rows: Vec<(String, i32, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT DISTINCT ON (subject_pseudonym) subject_pseudonym, generation, wrapped_key
               FROM subject_keys WHERE subject_pseudonym = ANY($1)
              ORDER BY subject_pseudonym, generation DESC",
        )
        .bind(pseudonyms)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.into_iter().map(|(p, g, w)| (p, (g, w))).collect())
    }

    /// Write the batch in one transaction; with `commit` false, roll it back instead (a probe).
    async fn write_batch(
        &mut self,
        items: &[EnrichedEvent],
        advances: &[OffsetAdvance],
        commit: bool,
    ) -> Result<WriteOutcome, PersistError> {
        let fresh = self.new_events(items).await?;
        self.ensure_months(&fresh).await?;
        let mut tx = self.pool.begin().await?;
        if !fresh.is_empty() {
            let keys = &self.settings.keys;
            // Each event's subject pseudonym (an HMAC) and chain, computed once per event.
            let placed: Vec<(String, SubjectKind, String)> = fresh
                .iter()
                .map(|e| {
                    let (kind, id) = privacy::subject_of(e);
                    (keys.pseudonym(kind, id), kind, ledger::chain_id(&e.source.topic, e.source.partition, e.timestamp))
                })
                .collect();
            let subjects: HashMap<String, SubjectKind> =
                placed.iter().map(|(pseudonym, kind, _)| (pseudonym.clone(), *kind)).collect();
            let data_keys = self.subject_keys(&mut tx, &subjects).await?;

            let mut chain_ids: Vec<String> = placed.iter().map(|(_, _, chain)| chain.clone()).collect();
            chain_ids.sort();
            chain_ids.dedup();
            // Every chain of the batch gets a head row before any is read, so that a new chain
            // is locked like an old one: two instances extending (or starting) the same chain
            // take turns instead of both writing its sequence 1. Sorted, so no two instances
            // lock the same chains in opposite orders.
            let genesis: Vec<Vec<u8>> = chain_ids.iter().map(|c| ledger::genesis(c).to_vec()).collect();
            let chain_months: Vec<DateTime<Utc>> = chain_ids.iter().map(|c| ledger::chain_month(c)).collect();
            sqlx::query(
                "INSERT INTO ledger_chain_heads (chain_id, last_seq, last_hash, month_start)
                 SELECT c, 0, g, m FROM UNNEST($1::text[], $2::bytea[], $3::timestamptz[]) AS t(c, g, m)
                 ORDER BY c
                 ON CONFLICT (chain_id) DO NOTHING",
            )
            .bind(&chain_ids)
            .bind(&genesis)
            .bind(&chain_months)
            .execute(&mut *tx)
            .await?;
            let heads: Vec<HeadRow> = sqlx::query_as(
                "SELECT chain_id, last_seq, last_hash, merkle_frontier FROM ledger_chain_heads WHERE chain_id = ANY($1)
                  ORDER BY chain_id FOR UPDATE",
            )
            .bind(&chain_ids)
            .fetch_all(&mut *tx)
            .await?;
            let mut heads_by_chain: HashMap<String, (i64, Hash, Frontier)> = HashMap::with_capacity(heads.len());
            for (c, s, h, f) in heads {
                let tree = frontier_of(&mut tx, &c, s, f.as_deref()).await?;
                heads_by_chain.insert(c, (s, ledger::hash_from_slice(&h).unwrap_or_default(), tree));
            }
            let mut heads = heads_by_chain;

            let mut copy = tx.copy_in_raw(COPY_SQL).await?;
            let mut rows = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
            for (ev, (pseudonym, _, chain)) in fresh.iter().zip(placed) {
                let key = data_keys.get(&pseudonym);
                let head = heads.entry(chain.clone()).or_insert_with(|| (0, ledger::genesis(&chain), Frontier::new()));
                let row = self.stored_row(ev, &pseudonym, key, chain, head.0 + 1)?;
                let hash = ledger::row_hash(&head.1, &row);
                push_copy_row(&mut rows, &row, &head.1, &hash);
                head.0 += 1;
                head.1 = hash;
                head.2.push(&hash);
                if rows.len() >= COPY_CHUNK_BYTES {
                    copy.send(std::mem::take(&mut rows)).await?;
                    rows.reserve(COPY_CHUNK_BYTES + 4096);
                }
            }
            if !rows.is_empty() {
                copy.send(rows).await?;
            }
            copy.finish().await?;

            // Heads, tree frontiers and one signed checkpoint per extended chain, in this
            // transaction: a committed row is never without a signature over it.
            let now = Utc::now();
            let (mut names, mut seqs, mut hashes, mut frontiers) = (vec![], vec![], vec![], vec![]);
            let (mut months, mut roots, mut signatures) = (vec![], vec![], vec![]);
            let mut signed_at = now;
            for (chain, (seq, hash, tree)) in heads.iter().filter(|(c, _)| chain_ids.binary_search(c).is_ok()) {
                let root = tree.root();
                let cp = Checkpoint::sign(&self.settings.signer, chain, *seq, *hash, root, now);
                signed_at = cp.signed_at;
                names.push(chain.clone());
                seqs.push(*seq);
                hashes.push(hash.to_vec());
                frontiers.push(tree.to_bytes());
                months.push(ledger::chain_month(chain));
                roots.push(root.to_vec());
                signatures.push(cp.signature);
            }
            sqlx::query(
                "UPDATE ledger_chain_heads h
                    SET last_seq = t.s, last_hash = t.h, merkle_frontier = t.f, checkpointed_seq = t.s, updated_at = now()
                   FROM UNNEST($1::text[], $2::bigint[], $3::bytea[], $4::bytea[]) AS t(c, s, h, f)
                  WHERE h.chain_id = t.c",
            )
            .bind(&names)
            .bind(&seqs)
            .bind(&hashes)
            .bind(&frontiers)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO ledger_checkpoints (chain_id, month_start, seq, head_hash, tree_root, signed_at, key_id, signature)
                 SELECT c, m, s, h, r, $6, $7, g
                   FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[], $4::bytea[], $5::bytea[], $8::bytea[])
                     AS t(c, m, s, h, r, g)",
            )
            .bind(&names)
            .bind(&months)
            .bind(&seqs)
            .bind(&hashes)
            .bind(&roots)
            .bind(signed_at)
            .bind(&self.settings.signer.key_id)
            .bind(&signatures)
            .execute(&mut *tx)
            .await?;
        }
        if !commit {
            tx.rollback().await?;
            return Ok(WriteOutcome::Committed);
        }
        match offsets::advance(&mut tx, &self.settings.group_id, advances).await? {
            Advance::Done => {
                tx.commit().await?;
                Ok(WriteOutcome::Committed)
            }
            Advance::Fenced => {
                tx.rollback().await?;
                Ok(WriteOutcome::Fenced)
            }
        }
    }

    /// The row exactly as stored: personal fields sealed, the rest in their columns.
    fn stored_row(
        &self,
        ev: &EnrichedEvent,
        pseudonym: &str,
        key: Option<&(i32, SecretKey)>,
        chain_id: String,
        chain_seq: i64,
    ) -> Result<StoredRow, PersistError> {
        let personal = |f: PersonalField| self.settings.personal_fields.contains(&f);
        let mut sealed = PersonalFields::default();
        let mut row = StoredRow {
            id: ev.id.clone(),
            timestamp_us: ev.timestamp.timestamp_micros(),
            action: ev.action.clone(),
            resource: ev.resource.clone(),
            resource_id: ev.resource_id.clone(),
            method: ev.method.clone(),
            endpoint: ev.endpoint.clone(),
            status_code: ev.status_code,
            ip_facts: crate::event::stored_ip_facts(ev.ip.as_ref(), ev.asn.as_ref()).map(|v| ledger::canonical_json(&v)),
            classification: ev.classification.as_str().to_string(),
            severity: ev.severity.as_str().to_string(),
            success: ev.success,
            error_message: ev.error_message.clone(),
            duration: ev.duration_ms,
            compliance: serde_json::to_value(ev.compliance).map(|v| ledger::canonical_json(&v)).unwrap_or_default(),
            source_topic: ev.source.topic.clone(),
            source_partition: ev.source.partition,
            source_offset: ev.source.offset,
            enriched_at_us: ev.enriched_at.timestamp_micros(),
            subject_pseudonym: Some(pseudonym.to_string()),
            // An event with a user id has that user as its subject (`privacy::subject_of`), so
            // the subject's pseudonym is the user's: no second HMAC.
            user_pseudonym: ev.user_id.as_ref().map(|_| pseudonym.to_string()),
            chain_id,
            chain_seq,
            ..StoredRow::default()
        };
        macro_rules! place {
            ($field:expr, $value:expr, $column:expr, $sealed:expr) => {
                if personal($field) {
                    $sealed = $value;
                } else {
                    $column = $value;
                }
            };
        }
        place!(PersonalField::UserId, ev.user_id.clone(), row.user_id, sealed.user_id);
        place!(PersonalField::SessionId, ev.session_id.clone(), row.session_id, sealed.session_id);
        place!(PersonalField::IpAddress, ev.ip_address.clone(), row.ip_address, sealed.ip_address);
        place!(PersonalField::UserAgent, ev.user_agent.clone(), row.user_agent, sealed.user_agent);
        if personal(PersonalField::Location) {
            sealed.location = ev.location.clone();
        } else {
            row.location = ev.location.as_ref().and_then(|l| serde_json::to_value(l).ok()).map(|v| ledger::canonical_json(&v));
        }
        if personal(PersonalField::Metadata) {
            sealed.metadata = ev.metadata.clone();
        } else {
            row.metadata = ev.metadata.as_ref().map(ledger::canonical_json);
        }
        if sealed != PersonalFields::default() {
            let Some((generation, key)) = key else {
                return Err(PersistError::Key(format!("no data key for subject {pseudonym}")));
            };
            let plain = serde_json::to_vec(&sealed).map_err(|e| PersistError::Key(format!("cannot encode personal fields: {e}")))?;
            row.personal = Some(privacy::seal(key, &plain, ev.id.as_bytes()));
            row.key_generation = Some(*generation);
        }
        Ok(row)
    }

    /// Sign a checkpoint for every head not signed yet, whichever instance wrote it (one that
    /// crashed leaves its heads to the others), then publish pending ones. Heads another
    /// instance is writing right now are skipped, not waited for: the next round signs them.
    async fn checkpoint(&mut self, force: bool) -> Result<(), sqlx::Error> {
        let due = force || self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval;
        if due {
            let mut tx = self.pool.begin().await?;
            // Signing is background work: it gives up on a lock held elsewhere rather than
            // hold the stage's loop (the next round signs the same heads).
            sqlx::query("SET LOCAL lock_timeout = '1s'").execute(&mut *tx).await?;
            let heads: Vec<UnsignedHeadRow> = sqlx::query_as(
                "SELECT chain_id, last_seq, last_hash, month_start, merkle_frontier FROM ledger_chain_heads
                  WHERE last_seq > checkpointed_seq ORDER BY chain_id FOR UPDATE SKIP LOCKED",
            )
            .fetch_all(&mut *tx)
            .await?;
            let now = Utc::now();
            for (chain, seq, hash, month, frontier) in &heads {
                let tree = frontier_of(&mut tx, chain, *seq, frontier.as_deref()).await?;
                let h = ledger::hash_from_slice(hash).unwrap_or_default();
                let cp = Checkpoint::sign(&self.settings.signer, chain, *seq, h, tree.root(), now);
                sqlx::query(
                    "INSERT INTO ledger_checkpoints (chain_id, month_start, seq, head_hash, tree_root, signed_at, key_id, signature)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(chain)
                .bind(month)
                .bind(seq)
                .bind(hash)
                .bind(tree.root().to_vec())
                .bind(cp.signed_at)
                .bind(&cp.key_id)
                .bind(&cp.signature)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE ledger_chain_heads SET checkpointed_seq = $2, merkle_frontier = $3 WHERE chain_id = $1")
                    .bind(chain)
                    .bind(seq)
                    .bind(tree.to_bytes())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.last_checkpoint = Instant::now();
        }
        self.publish_checkpoints().await
    }

    /// Mark what the topic acknowledged, and hand it the checkpoints not yet published (at
    /// least once; consumers key them by chain and seq). Never waits for the broker: a frozen
    /// or unreachable broker delays publication, never the batches.
    async fn publish_checkpoints(&mut self) -> Result<(), sqlx::Error> {
        let Some(outbox) = &mut self.outbox else { return Ok(()) };
        let acked = outbox.poll();
        self.mark_published(&acked).await?;
        let Some(outbox) = &mut self.outbox else { return Ok(()) };
        let rows = sqlx::query(
            "SELECT id, chain_id, seq, head_hash, tree_root, signed_at, key_id, signature FROM ledger_checkpoints
              WHERE published_at IS NULL ORDER BY id LIMIT 500",
        )
        .fetch_all(&self.pool)
        .await?;
        let public = self.settings.signer.verifying_key();
        let mut records: Vec<(i64, String, String)> = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.get("id");
            if outbox.in_flight(id) {
                continue;
            }
            let cp = Checkpoint {
                chain_id: r.get("chain_id"),
                seq: r.get("seq"),
                head_hash: ledger::hash_from_slice(&r.get::<Vec<u8>, _>("head_hash")).unwrap_or_default(),
                tree_root: r.get::<Option<Vec<u8>>, _>("tree_root").as_deref().and_then(ledger::hash_from_slice),
                signed_at: r.get("signed_at"),
                key_id: r.get("key_id"),
                signature: r.get("signature"),
            };
            // The file first: whatever reached the topic is also in the export directory.
            if let Some(dir) = &self.settings.checkpoint_export_dir {
                if let Err(e) = crate::checkpoints::export(dir, &cp, &public) {
                    tracing::error!(error = %e, dir = %dir.display(), chain = %cp.chain_id, seq = cp.seq, "cannot export checkpoint; not publishing it until it is");
                    continue;
                }
            }
            records.push((id, format!("{}#{}", cp.chain_id, cp.seq), cp.to_json(&public).to_string()));
        }
        outbox.send(records.iter().map(|(id, key, payload)| (*id, key.as_str(), payload.as_bytes())));
        Ok(())
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        if !ids.is_empty() {
            sqlx::query("UPDATE ledger_checkpoints SET published_at = now() WHERE id = ANY($1)")
                .bind(ids)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

impl PersistStage {
    /// How the runtime should treat a failed write.
    fn sink_error(&mut self, e: PersistError) -> SinkError {
        match e {
            PersistError::Key(message) => {
                self.key_failures += 1;
                if self.key_failures >= MAX_KEY_FAILURES {
                    SinkError::fatal(message)
                } else {
                    SinkError::transient(message)
                }
            }
            // Two rows at one chain position can only be a race between writers, never the
            // row's fault: retried, not dead-lettered.
            PersistError::Database(sqlx::Error::Database(db))
                if db.constraint().is_some_and(|c| c.ends_with("_chain_seq")) =>
            {
                SinkError::transient(db.to_string())
            }
            PersistError::Database(e) => SinkError::from_sqlx(&e),
        }
    }
}

/// chain_id, last_seq, last_hash, merkle_frontier.
type HeadRow = (String, i64, Vec<u8>, Option<Vec<u8>>);
/// chain_id, last_seq, last_hash, month_start, merkle_frontier.
type UnsignedHeadRow = (String, i64, Vec<u8>, DateTime<Utc>, Option<Vec<u8>>);

/// A chain's tree frontier as stored, or rebuilt from its row hashes when it was never kept
/// (a chain written before trees existed) or does not match the head.
async fn frontier_of(
    tx: &mut Transaction<'_, Postgres>,
    chain_id: &str,
    last_seq: i64,
    stored: Option<&[u8]>,
) -> Result<Frontier, sqlx::Error> {
    if let Some(f) = stored.and_then(|b| Frontier::from_bytes(b).ok()).filter(|f| f.size() == last_seq as u64) {
        return Ok(f);
    }
    if last_seq == 0 {
        return Ok(Frontier::new());
    }
    let hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT row_hash FROM audit_events WHERE chain_id = $1 AND chain_seq <= $2 ORDER BY chain_seq")
            .bind(chain_id)
            .bind(last_seq)
            .fetch_all(&mut **tx)
            .await?;
    if hashes.len() as i64 != last_seq {
        // Rows are missing under the head: the tree is built over what is there, and
        // `auditflow verify` reports the chain.
        tracing::error!(chain = chain_id, rows = hashes.len(), head = last_seq, "chain has fewer rows than its head");
    } else {
        tracing::info!(chain = chain_id, rows = hashes.len(), "rebuilt the chain's Merkle frontier from its rows");
    }
    Ok(Frontier::from_leaves(&hashes))
}

/// Every column of a stored row, in the order [`push_copy_row`] writes them.
const COPY_SQL: &str = r#"COPY audit_events (
    id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint,
    status_code, user_agent, ip_address, location, ip_facts, classification, severity, metadata,
    success, error_message, duration, compliance, source_topic, source_partition, source_offset,
    enriched_at, subject_pseudonym, user_pseudonym, key_generation, personal, chain_id, chain_seq,
    prev_hash, row_hash) FROM STDIN"#;

/// Rows are sent to the server in chunks of about this size while later rows are built.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// One row in COPY's text format: tab-separated, `\N` for NULL, text escaped, `bytea` as hex.
/// PostgreSQL parses each value as it would the same text cast to the column's type, so the
/// stored values (and the hashes verified later) are those of the row as built.
fn push_copy_row(out: &mut Vec<u8>, r: &StoredRow, prev: &Hash, hash: &Hash) {
    use std::io::Write as _;
    fn text(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(s) => escape_copy_text(s, out),
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
    }
    fn number(out: &mut Vec<u8>, v: Option<i64>) {
        match v {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
    }
    fn micros(out: &mut Vec<u8>, us: i64) {
        let t = DateTime::from_timestamp_micros(us).unwrap_or_default();
        let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f+00"));
        out.push(b'\t');
    }
    fn bytea(out: &mut Vec<u8>, v: Option<&[u8]>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        match v {
            // `\x` introduces hex; its backslash is escaped like any other in COPY text.
            Some(b) => {
                out.extend_from_slice(b"\\\\x");
                for byte in b {
                    out.push(HEX[(byte >> 4) as usize]);
                    out.push(HEX[(byte & 0xf) as usize]);
                }
            }
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
    }
    text(out, Some(&r.id));
    micros(out, r.timestamp_us);
    text(out, r.user_id.as_deref());
    text(out, r.session_id.as_deref());
    text(out, Some(&r.action));
    text(out, Some(&r.resource));
    text(out, r.resource_id.as_deref());
    text(out, r.method.as_deref());
    text(out, r.endpoint.as_deref());
    number(out, r.status_code.map(i64::from));
    text(out, r.user_agent.as_deref());
    text(out, r.ip_address.as_deref());
    text(out, r.location.as_deref());
    text(out, r.ip_facts.as_deref());
    text(out, Some(&r.classification));
    text(out, Some(&r.severity));
    text(out, r.metadata.as_deref());
    text(out, Some(if r.success { "t" } else { "f" }));
    text(out, r.error_message.as_deref());
    number(out, r.duration);
    text(out, Some(&r.compliance));
    text(out, Some(&r.source_topic));
    number(out, Some(i64::from(r.source_partition)));
    number(out, Some(r.source_offset));
    micros(out, r.enriched_at_us);
    text(out, r.subject_pseudonym.as_deref());
    text(out, r.user_pseudonym.as_deref());
    number(out, r.key_generation.map(i64::from));
    bytea(out, r.personal.as_deref());
    text(out, Some(&r.chain_id));
    number(out, Some(r.chain_seq));
    bytea(out, Some(prev));
    bytea(out, Some(hash));
    // The last column's tab becomes the row's end.
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
}

/// Escaping of COPY's text format: backslash, tab, newline and carriage return.
pub fn escape_copy_text(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

impl SinkStage for PersistStage {
    type Item = EnrichedEvent;

    fn name(&self) -> &'static str {
        "persist"
    }

    fn sink_name(&self) -> &'static str {
        "postgres.audit_events"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.settings.input_topic.clone()]
    }

    fn describe(&self, event: &EnrichedEvent) -> Vec<(&'static str, String)> {
        vec![("auditflow.event_id", event.id.clone())]
    }

    fn decode(&mut self, input: &InputMessage<'_>) -> Result<EnrichedEvent, Rejection> {
        decode_enriched(input.payload)
    }

    async fn write(&mut self, items: &[EnrichedEvent], advances: &[OffsetAdvance]) -> Result<WriteOutcome, SinkError> {
        let outcome = match self.write_batch(items, advances, true).await {
            Ok(o) => {
                self.key_failures = 0;
                o
            }
            Err(e) => {
                // A month partition may have been dropped by retention since it was cached.
                self.known_months.clear();
                return Err(self.sink_error(e));
            }
        };
        if outcome == WriteOutcome::Committed {
            // The batch's checkpoints were signed with it; publishing them (and the sweep of
            // heads left unsigned) may fail here without losing anything: the next tick retries.
            if let Err(e) = self.checkpoint(false).await {
                tracing::warn!(error = %e, "checkpoint failed; will retry");
            }
        }
        Ok(outcome)
    }

    async fn probe(&mut self, items: &[EnrichedEvent]) -> Result<(), SinkError> {
        match self.write_batch(items, &[], false).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.known_months.clear();
                Err(self.sink_error(e))
            }
        }
    }

    async fn on_tick(&mut self) -> Result<(), SinkError> {
        self.checkpoint(false).await.map_err(|e| SinkError::from_sqlx(&e))
    }

    async fn on_shutdown(&mut self) -> Result<(), SinkError> {
        self.checkpoint(true).await.map_err(|e| SinkError::from_sqlx(&e))?;
        // What is in flight gets a few seconds; the rest is published by the next instance.
        let acked = self.outbox.as_mut().map(|o| o.drain(Duration::from_secs(5))).unwrap_or_default();
        self.mark_published(&acked).await.map_err(|e| SinkError::from_sqlx(&e))
    }

    fn offset_loader(&self) -> OffsetLoader {
        offsets::loader(self.pool.clone(), self.settings.group_id.clone(), self.handle.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_row_has_every_column_escaped_with_nulls_and_hex() {
        let row = StoredRow {
            id: "e1".into(),
            timestamp_us: 1_700_000_000_123_456,
            action: "log\tin".into(),
            resource: "a\\b\nc".into(),
            status_code: Some(401),
            classification: "INTERNAL".into(),
            severity: "LOW".into(),
            compliance: "{}".into(),
            source_topic: "audit-enriched".into(),
            source_partition: 3,
            source_offset: 42,
            enriched_at_us: 1_700_000_000_000_000,
            personal: Some(vec![0x00, 0xab]),
            chain_id: "c".into(),
            chain_seq: 7,
            ..StoredRow::default()
        };
        let mut out = Vec::new();
        push_copy_row(&mut out, &row, &[1u8; 32], &[2u8; 32]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text:?}");
        let fields: Vec<&str> = text.trim_end_matches('\n').split('\t').collect();
        assert_eq!(fields.len(), 33, "{fields:?}");
        assert_eq!(fields[0], "e1");
        assert_eq!(fields[1], "2023-11-14 22:13:20.123456+00");
        assert_eq!(fields[2], "\\N");
        assert_eq!(fields[4], "log\\tin");
        assert_eq!(fields[5], "a\\\\b\\nc");
        assert_eq!(fields[9], "401");
        assert_eq!(fields[17], "f");
        assert_eq!(fields[22], "3");
        assert_eq!(fields[23], "42");
        assert_eq!(fields[28], "\\\\x00ab");
        assert_eq!(fields[30], "7");
        assert_eq!(fields[31], format!("\\\\x{}", "01".repeat(32)));
        assert_eq!(fields[32], format!("\\\\x{}", "02".repeat(32)));
    }
}
