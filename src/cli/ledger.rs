//! `auditflow verify`: walk every hash chain of `audit_events` against the signed checkpoints
//! and report the first broken position of each broken chain.

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use sqlx::{PgPool, Row};

use crate::ledger::{verify_chain, Break, Checkpoint, LedgerRow, StoredRow};

/// Outcome of a verification run.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub chains_verified: u64,
    pub rows_verified: u64,
    pub checkpoints_checked: u64,
    /// Chains whose month was dropped by retention (recorded in `retention_drops`).
    pub chains_retired: u64,
    pub breaks: Vec<Break>,
}

const ROW_SQL: &str = r#"
SELECT id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint,
       status_code, user_agent, host(ip_address) AS ip_address, location::text AS location,
       ip_facts::text AS ip_facts, classification, severity, metadata::text AS metadata, success,
       error_message, duration, compliance::text AS compliance, source_topic, source_partition,
       source_offset, enriched_at, subject_pseudonym, user_pseudonym, key_generation, personal,
       chain_id, chain_seq, prev_hash, row_hash
  FROM audit_events WHERE chain_id = $1 ORDER BY chain_seq, row_hash
"#;

fn canonical_text(text: Option<String>) -> Option<String> {
    // jsonb comes back in PostgreSQL's own layout; hash it in the writer's canonical form.
    text.map(|t| match serde_json::from_str::<serde_json::Value>(&t) {
        Ok(v) => crate::ledger::canonical_json(&v),
        Err(_) => t,
    })
}

fn ledger_row(r: &sqlx::postgres::PgRow) -> Result<LedgerRow, sqlx::Error> {
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
    mut progress: impl FnMut(&str),
) -> Result<VerifyReport, sqlx::Error> {
    // PostgreSQL's timestamp range is narrower than chrono's; these bounds cover every event.
    let from = from.unwrap_or_else(|| DateTime::from_timestamp(-2_208_988_800, 0).unwrap_or_default());
    let to = to.unwrap_or_else(|| DateTime::from_timestamp(253_402_300_799, 0).unwrap_or_default());
    let mut report = VerifyReport::default();

    // Rows that belong to no chain were put there by hand.
    let unchained: Option<(String, DateTime<Utc>)> = sqlx::query_as(
        r#"SELECT id, "timestamp" FROM audit_events WHERE chain_id IS NULL AND "timestamp" >= $1 AND "timestamp" < $2 LIMIT 1"#,
    )
    .bind(from)
    .bind(to)
    .fetch_optional(pool)
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
    .fetch_all(pool)
    .await?;
    let retired_months: Vec<DateTime<Utc>> = if retention_table_exists(pool).await? {
        sqlx::query_scalar("SELECT month_start FROM retention_drops WHERE table_name = 'audit_events'")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };

    let mut seen = std::collections::HashSet::new();
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
        let rows = sqlx::query(ROW_SQL).bind(&chain_id).fetch_all(pool).await?;
        let rows: Vec<LedgerRow> = rows.iter().map(ledger_row).collect::<Result<_, _>>()?;
        let checkpoints = load_checkpoints(pool, &chain_id).await?;
        report.checkpoints_checked += checkpoints.len() as u64;
        match verify_chain(&chain_id, &rows, &checkpoints, head_len, keys) {
            Ok(n) => {
                report.chains_verified += 1;
                report.rows_verified += n;
            }
            Err(b) => report.breaks.push(b),
        }
    }
    Ok(report)
}

async fn retention_table_exists(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('retention_drops')::text").fetch_one(pool).await?;
    Ok(exists.is_some())
}

async fn load_checkpoints(pool: &PgPool, chain_id: &str) -> Result<Vec<Checkpoint>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT chain_id, seq, head_hash, signed_at, key_id, signature FROM ledger_checkpoints
          WHERE chain_id = $1 ORDER BY seq",
    )
    .bind(chain_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let hash: Vec<u8> = r.try_get("head_hash")?;
            let mut head_hash = [0u8; 32];
            if hash.len() == 32 {
                head_hash.copy_from_slice(&hash);
            }
            Ok(Checkpoint {
                chain_id: r.try_get("chain_id")?,
                seq: r.try_get("seq")?,
                head_hash,
                signed_at: r.try_get("signed_at")?,
                key_id: r.try_get("key_id")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}
