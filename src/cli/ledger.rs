//! `auditflow verify`: walk every hash chain of `audit_events` against the signed checkpoints
//! in the database and their copies outside it (the `audit-checkpoints` topic, exported
//! files), and report the first broken position of each broken chain, plus checkpoints and
//! chains that exist on only one side.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use sqlx::{PgPool, Row};

use crate::checkpoints::OutsideCopies;
use crate::cli::ops::printable;
use crate::config::Config;
use crate::error::ConfigError;
use crate::ledger::{self, verify_chain, Break, BreakKind, Checkpoint, LedgerRow, StoredRow};

/// Outcome of a verification run.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub chains_verified: u64,
    pub rows_verified: u64,
    pub checkpoints_checked: u64,
    /// Chains whose month was dropped by retention (recorded in `retention_drops`).
    pub chains_retired: u64,
    /// Checkpoint records read outside the database (0: not compared).
    pub outside_records: u64,
    /// Signed in the database within the publication grace and not outside yet.
    pub pending_publication: u64,
    pub breaks: Vec<Break>,
}

/// How verification treats the copies outside the database.
pub struct Outside<'a> {
    pub copies: &'a OutsideCopies,
    /// A checkpoint unpublished for longer than this is reported, not waited for.
    pub publish_grace: chrono::Duration,
    /// When reading the copies began: a checkpoint published after it cannot be among them.
    pub read_at: DateTime<Utc>,
}

/// The columns [`ledger_row`] reads, in the forms the writer hashed.
pub(crate) const ROW_COLUMNS: &str = r#"id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint,
       status_code, user_agent, host(ip_address) AS ip_address, location::text AS location,
       ip_facts::text AS ip_facts, classification, severity, metadata::text AS metadata, success,
       error_message, duration, compliance::text AS compliance, source_topic, source_partition,
       source_offset, enriched_at, subject_pseudonym, user_pseudonym, key_generation, personal,
       chain_id, chain_seq, prev_hash, row_hash"#;

fn row_sql() -> String {
    format!("SELECT {ROW_COLUMNS} FROM audit_events WHERE chain_id = $1 ORDER BY chain_seq, row_hash")
}

fn canonical_text(text: Option<String>) -> Option<String> {
    // jsonb comes back in PostgreSQL's own layout; hash it in the writer's canonical form.
    text.map(|t| match serde_json::from_str::<serde_json::Value>(&t) {
        Ok(v) => crate::ledger::canonical_json(&v),
        Err(_) => t,
    })
}

pub(crate) fn ledger_row(r: &sqlx::postgres::PgRow) -> Result<LedgerRow, sqlx::Error> {
    let ts: DateTime<Utc> = r.try_get("timestamp")?;
    let enriched: DateTime<Utc> = r.try_get("enriched_at")?;
    Ok(LedgerRow {
        row: StoredRow {
            id: r.try_get("id")?,
            timestamp_us: ts.timestamp_micros(),
            user_id: r.try_get("user_id")?,
            session_id: r.try_get("session_id")?,
            action: r.try_get("action")?,
            resource: r.try_get("resource")?,
            resource_id: r.try_get("resource_id")?,
            method: r.try_get("method")?,
            endpoint: r.try_get("endpoint")?,
            status_code: r.try_get("status_code")?,
            user_agent: r.try_get("user_agent")?,
            ip_address: r.try_get("ip_address")?,
            location: canonical_text(r.try_get("location")?),
            ip_facts: canonical_text(r.try_get("ip_facts")?),
            classification: r.try_get("classification")?,
            severity: r.try_get("severity")?,
            metadata: canonical_text(r.try_get("metadata")?),
            success: r.try_get("success")?,
            error_message: r.try_get("error_message")?,
            duration: r.try_get("duration")?,
            compliance: canonical_text(r.try_get("compliance")?).unwrap_or_default(),
            source_topic: r.try_get("source_topic")?,
            source_partition: r.try_get("source_partition")?,
            source_offset: r.try_get("source_offset")?,
            enriched_at_us: enriched.timestamp_micros(),
            subject_pseudonym: r.try_get("subject_pseudonym")?,
            user_pseudonym: r.try_get("user_pseudonym")?,
            key_generation: r.try_get("key_generation")?,
            personal: r.try_get("personal")?,
            chain_id: r.try_get::<Option<String>, _>("chain_id")?.unwrap_or_default(),
            chain_seq: r.try_get::<Option<i64>, _>("chain_seq")?.unwrap_or(0),
        },
        prev_hash: r.try_get("prev_hash")?,
        row_hash: r.try_get("row_hash")?,
    })
}

/// Verify every chain whose month overlaps `[from, to)`.
pub async fn verify(
    pool: &PgPool,
    keys: &[VerifyingKey],
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    outside: Option<Outside<'_>>,
    mut progress: impl FnMut(&str),
) -> Result<VerifyReport, sqlx::Error> {
    // PostgreSQL's timestamp range is narrower than chrono's; these bounds cover every event.
    let from = from.unwrap_or_else(|| DateTime::from_timestamp(-2_208_988_800, 0).unwrap_or_default());
    let to = to.unwrap_or_else(|| DateTime::from_timestamp(253_402_300_799, 0).unwrap_or_default());
    let mut report = VerifyReport::default();
    // One snapshot for the whole walk: persist commits rows and chain heads together, and a walk
    // reading them at different moments of a live ledger would see rows beyond a head it had
    // read before.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let db = &mut *tx;

    // Rows that belong to no chain were put there by hand.
    let unchained: Option<(String, DateTime<Utc>)> = sqlx::query_as(
        r#"SELECT id, "timestamp" FROM audit_events WHERE chain_id IS NULL AND "timestamp" >= $1 AND "timestamp" < $2 LIMIT 1"#,
    )
    .bind(from)
    .bind(to)
    .fetch_optional(&mut *db)
    .await?;
    if let Some((id, _)) = unchained {
        report.breaks.push(Break {
            chain_id: "(none)".into(),
            seq: 0,
            kind: crate::ledger::BreakKind::InsertedRow,
            event_id: Some(id),
            detail: "a row outside every chain".into(),
        });
    }

    // Every chain that exists in rows, heads or checkpoints, within the month range.
    let chains: Vec<(String, DateTime<Utc>, Option<i64>)> = sqlx::query_as(
        r#"SELECT c.chain_id, c.month_start, h.last_seq FROM (
               SELECT chain_id, month_start FROM ledger_chain_heads
               UNION SELECT chain_id, month_start FROM ledger_checkpoints
               UNION SELECT DISTINCT chain_id, date_trunc('month', "timestamp" AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                 FROM audit_events WHERE chain_id IS NOT NULL) c
           LEFT JOIN ledger_chain_heads h ON h.chain_id = c.chain_id
          WHERE c.month_start >= date_trunc('month', $1::timestamptz) AND c.month_start < $2
          ORDER BY c.chain_id"#,
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *db)
    .await?;
    let retired_months: Vec<DateTime<Utc>> = if retention_table_exists(&mut *db).await? {
        sqlx::query_scalar("SELECT month_start FROM retention_drops WHERE table_name = 'audit_events'")
            .fetch_all(&mut *db)
            .await?
    } else {
        Vec::new()
    };

    let mut seen = HashSet::new();
    let now = Utc::now();
    for (chain_id, month, head_len) in chains {
        if !seen.insert(chain_id.clone()) {
            continue;
        }
        progress(&chain_id);
        if retired_months.contains(&month) {
            // The month was dropped by retention: its rows are legitimately gone; its signed
            // checkpoints remain as the record of what existed.
            report.chains_retired += 1;
            continue;
        }
        let rows = sqlx::query(&row_sql()).bind(&chain_id).fetch_all(&mut *db).await?;
        let rows: Vec<LedgerRow> = rows.iter().map(ledger_row).collect::<Result<_, _>>()?;
        let stored = load_checkpoints(&mut *db, &chain_id).await?;
        let mut checkpoints: Vec<Checkpoint> = stored.iter().map(|(c, _)| c.clone()).collect();
        let copies = outside.as_ref().and_then(|o| o.copies.by_chain.get(&chain_id)).map(Vec::as_slice).unwrap_or_default();
        // The outside copies judge the rows too: a tail cut below a published checkpoint,
        // or rows rewritten under one, shows whatever the database's checkpoints say.
        // A checkpoint's identity: its position and its (deterministic) signature.
        let stored_ids: HashSet<(i64, &[u8])> = stored.iter().map(|(c, _)| (c.seq, c.signature.as_slice())).collect();
        let copy_ids: HashSet<(i64, &[u8])> = copies.iter().map(|c| (c.seq, c.signature.as_slice())).collect();
        let in_db = |c: &Checkpoint| stored_ids.contains(&(c.seq, c.signature.as_slice()));
        let missing: Vec<&Checkpoint> = copies.iter().filter(|c| !in_db(c)).collect();
        checkpoints.extend(missing.iter().map(|c| (*c).clone()));
        report.checkpoints_checked += checkpoints.len() as u64;
        match verify_chain(&chain_id, &rows, &checkpoints, head_len, keys) {
            Ok(n) => {
                report.chains_verified += 1;
                report.rows_verified += n;
            }
            Err(b) => report.breaks.push(b),
        }
        let Some(outside) = &outside else { continue };
        let genuine: Vec<&&Checkpoint> = missing.iter().filter(|c| c.signed_by_any(keys)).collect();
        if let (Some(first), Some(last)) = (genuine.first(), genuine.last()) {
            report.breaks.push(Break {
                chain_id: chain_id.clone(),
                seq: first.seq,
                kind: BreakKind::DeletedCheckpoint,
                event_id: None,
                detail: format!("{} published checkpoint(s) missing from the database (seq {} to {})", genuine.len(), first.seq, last.seq),
            });
        }
        let published = |c: &Checkpoint| copy_ids.contains(&(c.seq, c.signature.as_slice()));
        let mut unpublished = Vec::new();
        for (c, published_at) in &stored {
            if published(c) {
                continue;
            }
            // Not yet out, within the grace; or published after the copies were read: in flight.
            let in_flight = match published_at {
                None => now - c.signed_at < outside.publish_grace,
                Some(at) => *at > outside.read_at,
            };
            if in_flight {
                report.pending_publication += 1;
            } else {
                unpublished.push(c);
            }
        }
        if let Some(first) = unpublished.first() {
            report.breaks.push(Break {
                chain_id: chain_id.clone(),
                seq: first.seq,
                kind: BreakKind::UnpublishedCheckpoint,
                event_id: None,
                detail: format!(
                    "{} checkpoint(s) in the database were never published (first at seq {}, signed {})",
                    unpublished.len(),
                    first.seq,
                    first.signed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            });
        }
    }
    if let Some(outside) = &outside {
        report.outside_records = outside.copies.records;
        // Chains known outside of which the database holds nothing at all.
        for (chain_id, copies) in &outside.copies.by_chain {
            let month = ledger::chain_month(chain_id);
            if seen.contains(chain_id) || month < date_trunc_month(from) || month >= to || retired_months.contains(&month) {
                continue;
            }
            let genuine: Vec<&Checkpoint> = copies.iter().filter(|c| c.signed_by_any(keys)).collect();
            let Some(newest) = genuine.iter().max_by_key(|c| c.seq) else {
                report.breaks.push(Break {
                    chain_id: chain_id.clone(),
                    seq: 0,
                    kind: BreakKind::ForgedCheckpoint,
                    event_id: None,
                    detail: "checkpoints outside the database whose signatures do not verify".into(),
                });
                continue;
            };
            report.breaks.push(Break {
                chain_id: chain_id.clone(),
                seq: 1,
                kind: BreakKind::DeletedChain,
                event_id: None,
                detail: format!("published checkpoints cover {} row(s); the database holds no row, head or checkpoint of the chain", newest.seq),
            });
        }
    }
    tx.commit().await?;
    Ok(report)
}

fn date_trunc_month(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Datelike;
    chrono::NaiveDate::from_ymd_opt(t.year(), t.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .unwrap_or(t)
}

async fn retention_table_exists(db: impl sqlx::PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('retention_drops')::text").fetch_one(db).await?;
    Ok(exists.is_some())
}

/// A chain's checkpoints in the database, oldest first, with when each was published.
pub async fn load_checkpoints(db: impl sqlx::PgExecutor<'_>, chain_id: &str) -> Result<Vec<(Checkpoint, Option<DateTime<Utc>>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT chain_id, seq, head_hash, tree_root, signed_at, key_id, signature, published_at FROM ledger_checkpoints
          WHERE chain_id = $1 ORDER BY seq, id",
    )
    .bind(chain_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let cp = Checkpoint {
                chain_id: r.try_get("chain_id")?,
                seq: r.try_get("seq")?,
                // A stored hash of the wrong length is tampering: all zeros never verifies.
                head_hash: ledger::hash_from_slice(&r.try_get::<Vec<u8>, _>("head_hash")?).unwrap_or_default(),
                tree_root: r.try_get::<Option<Vec<u8>>, _>("tree_root")?.map(|t| ledger::hash_from_slice(&t).unwrap_or_default()),
                signed_at: r.try_get("signed_at")?,
                key_id: r.try_get("key_id")?,
                signature: r.try_get("signature")?,
            };
            Ok((cp, r.try_get("published_at")?))
        })
        .collect()
}

/// The ledger failed verification: exit code 3, distinct from input (2) and other errors (1).
#[derive(Debug, thiserror::Error)]
#[error("{0} finding(s): the ledger failed verification")]
pub struct LedgerBroken(pub usize);

/// The ledger's public keys: `AUDITFLOW_VERIFY_KEY`, else the signing key's.
pub fn verifying_keys(config: &Config) -> anyhow::Result<Vec<VerifyingKey>> {
    match &config.ledger.verify_key {
        Some(text) => Ok(ledger::verifying_keys_from_text(text)
            .ok_or_else(|| ConfigError::new("AUDITFLOW_VERIFY_KEY", "not a list of Ed25519 public keys"))?),
        None => Ok(vec![signer(config)?.verifying_key()]),
    }
}

pub fn signer(config: &Config) -> anyhow::Result<ledger::LedgerSigner> {
    let seed = config
        .ledger
        .signing_key
        .as_deref()
        .ok_or_else(|| ConfigError::new("AUDITFLOW_SIGNING_KEY", "required (generate with `auditflow keys generate`)"))?;
    Ok(ledger::LedgerSigner::new(&crate::privacy::SecretKey::parse("AUDITFLOW_SIGNING_KEY", seed)?))
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Only chains of months from this time on (RFC 3339).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Only chains of months before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also compare with the checkpoint files in this directory (AUDITFLOW_CHECKPOINT_EXPORT_DIR
    /// of persist, or a copy of it). Repeatable.
    #[arg(long, value_name = "DIR")]
    pub offline_checkpoints: Vec<PathBuf>,
    /// Do not read audit-checkpoints (air-gapped verification; use --offline-checkpoints).
    #[arg(long)]
    pub no_topic: bool,
    /// A checkpoint signed this long ago and still not outside the database is reported as
    /// never published (publication normally takes seconds).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub publish_grace: u64,
}

pub async fn run_verify(config: &Config, args: VerifyArgs) -> anyhow::Result<()> {
    let keys = verifying_keys(config)?;
    let pool = crate::db::connect(&config.database, 3).await.context("connecting to PostgreSQL")?;
    let read_at = Utc::now();
    let mut copies = OutsideCopies::default();
    let mut sources = Vec::new();
    if !args.no_topic {
        let topic = &config.topics.checkpoints.name;
        let records = crate::cli::ops::read_all(config, topic).with_context(|| format!("reading {topic} (--no-topic to skip)"))?;
        for r in &records {
            copies.add(&format!("{topic}[{}]@{}", r.partition, r.offset), &r.payload);
        }
        sources.push(format!("{} record(s) on {topic}", records.len()));
    }
    for dir in &args.offline_checkpoints {
        let before = copies.records;
        copies.read_dir(dir).with_context(|| format!("reading checkpoint files under {}", dir.display()))?;
        sources.push(format!("{} file(s) under {}", copies.records - before, dir.display()));
    }
    copies.sort();
    let outside = (!sources.is_empty()).then(|| Outside {
        copies: &copies,
        publish_grace: chrono::Duration::seconds(args.publish_grace as i64),
        read_at,
    });
    let bar = (!args.json && std::io::stderr().is_terminal()).then(indicatif::ProgressBar::new_spinner);
    let report = verify(&pool, &keys, args.from, args.to, outside, |chain| {
        if let Some(b) = &bar {
            b.set_message(format!("verifying {chain}"));
            b.tick();
        }
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for u in &copies.unreadable {
        tracing::warn!("unreadable checkpoint copy: {u}");
    }
    if args.json {
        let breaks: Vec<serde_json::Value> = report
            .breaks
            .iter()
            .map(|b| serde_json::json!({"chain": b.chain_id, "seq": b.seq, "kind": b.kind.as_str(), "eventId": b.event_id, "detail": b.detail}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "ok": report.breaks.is_empty(), "chains": report.chains_verified, "rows": report.rows_verified,
                "checkpoints": report.checkpoints_checked, "retiredChains": report.chains_retired,
                "outsideRecords": report.outside_records, "unreadableOutside": copies.unreadable.len(),
                "pendingPublication": report.pending_publication, "comparedWith": sources, "breaks": breaks
            })
        );
    } else {
        println!(
            "{} chain(s), {} row(s), {} checkpoint(s) verified; {} chain(s) retired by retention",
            report.chains_verified, report.rows_verified, report.checkpoints_checked, report.chains_retired
        );
        if sources.is_empty() {
            println!("compared with the database's own checkpoints only (no topic, no checkpoint files)");
        } else {
            println!(
                "compared with {}; {} checkpoint(s) still being published; {} unreadable",
                sources.join(" and "),
                report.pending_publication,
                copies.unreadable.len()
            );
        }
        for b in &report.breaks {
            println!(
                "BROKEN {} at seq {}: {} ({}){}",
                printable(b.chain_id.as_bytes(), false),
                b.seq,
                b.kind.as_str(),
                b.detail,
                b.event_id.as_deref().map(|e| format!(", event {}", printable(e.as_bytes(), false))).unwrap_or_default()
            );
        }
    }
    if report.breaks.is_empty() {
        Ok(())
    } else {
        Err(LedgerBroken(report.breaks.len()).into())
    }
}
