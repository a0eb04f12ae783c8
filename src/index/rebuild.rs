//! Backfill: the search store rebuilt from the ledger for a time range (`auditflow index
//! rebuild`), for a new cluster, a lost index or a changed mapping.
//!
//! PostgreSQL is the system of record, so every document is rebuilt from its row: personal
//! fields are opened with the subject's data key and become the same pseudonyms the stage
//! writes; a subject whose key is destroyed comes back already redacted, so a rebuild can
//! never bring an erased subject back. Documents are written with `index` operations
//! (`_id` = event id): running it twice, or next to `audit-index`, leaves one document per
//! event, each equal to what the ledger says.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::event::{EnrichedEvent, SourcePosition};
use crate::index::client::{SearchClient, SearchError};
use crate::index::{self, BulkDoc, BulkOp, IndexSettings, ItemOutcome};
use crate::privacy::{self, KeyRow, PersonalField, PersonalFields, PrivacyKeys, Unsealed};

/// Why a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("reading the ledger: {0}")]
    Database(#[from] sqlx::Error),
    #[error("OpenSearch: {0}")]
    Search(#[from] SearchError),
    #[error("event {id}: its personal fields do not open (a wrong AUDITFLOW_MASTER_KEY, or a damaged row); nothing of it was indexed")]
    Unreadable { id: String },
    #[error("stored event {id} does not decode: {why}")]
    Decode { id: String, why: String },
}

/// What a rebuild did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RebuildReport {
    /// Events read from PostgreSQL and written as documents.
    pub events: u64,
    /// Of those, documents of erased subjects, written redacted.
    pub redacted: u64,
    /// Documents the cluster refused for their content: `(event id, reason)`.
    pub refused: Vec<(String, String)>,
    /// The monthly indices written to.
    pub indices: BTreeSet<String>,
}

/// Stored rows, read in (timestamp, id) order one page at a time.
const COLUMNS: &str = r#"id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint,
    status_code, user_agent, host(ip_address) AS ip_address, location::text AS location, ip_facts::text AS ip_facts,
    classification, severity, metadata::text AS metadata, success, error_message, duration, compliance::text AS compliance,
    source_topic, source_partition, source_offset, enriched_at, subject_pseudonym, key_generation, personal"#;

/// Attempts of one bulk request (whole-request transient faults and items answered 429/5xx).
const ATTEMPTS: u32 = 8;

fn json_column<T: DeserializeOwned>(r: &PgRow, id: &str, col: &str) -> Result<Option<T>, RebuildError> {
    let text: Option<String> = r.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| RebuildError::Decode { id: id.to_string(), why: format!("{col}: {e}") }))
        .transpose()
}

fn enum_column<T: DeserializeOwned>(r: &PgRow, id: &str, col: &str) -> Result<T, RebuildError> {
    let text: String = r.try_get(col)?;
    serde_json::from_value(serde_json::Value::String(text)).map_err(|e| RebuildError::Decode { id: id.to_string(), why: format!("{col}: {e}") })
}

/// The event a stored row holds, with its personal fields (`p`) where they were sealed.
pub fn event_from_row(r: &PgRow, p: PersonalFields) -> Result<EnrichedEvent, RebuildError> {
    let id: String = r.try_get("id")?;
    Ok(EnrichedEvent {
        timestamp: r.try_get("timestamp")?,
        user_id: p.user_id.or(r.try_get("user_id")?),
        session_id: p.session_id.or(r.try_get("session_id")?),
        action: r.try_get("action")?,
        resource: r.try_get("resource")?,
        resource_id: r.try_get("resource_id")?,
        method: r.try_get("method")?,
        endpoint: r.try_get("endpoint")?,
        status_code: r.try_get("status_code")?,
        user_agent: p.user_agent.or(r.try_get("user_agent")?),
        ip_address: p.ip_address.or(r.try_get("ip_address")?),
        ip: json_column(r, &id, "ip_facts")?,
        asn: json_column::<serde_json::Value>(r, &id, "ip_facts")?.as_ref().and_then(crate::event::stored_asn),
        location: match p.location {
            Some(l) => Some(l),
            None => json_column(r, &id, "location")?,
        },
        classification: enum_column(r, &id, "classification")?,
        severity: enum_column(r, &id, "severity")?,
        metadata: match p.metadata {
            Some(m) => Some(m),
            None => json_column(r, &id, "metadata")?,
        },
        success: r.try_get("success")?,
        error_message: r.try_get("error_message")?,
        duration_ms: r.try_get("duration")?,
        compliance: json_column(r, &id, "compliance")?.unwrap_or_default(),
        source: SourcePosition {
            topic: r.try_get("source_topic")?,
            partition: r.try_get("source_partition")?,
            offset: r.try_get("source_offset")?,
            timestamp_ms: None,
        },
        enriched_at: r.try_get("enriched_at")?,
        id,
    })
}

/// How many stored events a rebuild of `[from, to)` covers (for progress); no `from`: from the
/// first event.
pub async fn count(pool: &PgPool, from: Option<DateTime<Utc>>, to: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM audit_events WHERE ($1::timestamptz IS NULL OR "timestamp" >= $1) AND "timestamp" < $2"#)
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

/// The documents of one page of rows; `redacted` counts the erased subjects' documents.
async fn documents(
    pool: &PgPool,
    rows: &[PgRow],
    keys: &PrivacyKeys,
    settings: &IndexSettings,
    personal: &[PersonalField],
    redacted: &mut u64,
) -> Result<Vec<BulkDoc>, RebuildError> {
    let subjects: Vec<String> = rows.iter().map(|r| r.try_get("subject_pseudonym")).collect::<Result<BTreeSet<String>, _>>()?.into_iter().collect();
    let key_rows: Vec<(String, i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT subject_pseudonym, generation, wrapped_key FROM subject_keys WHERE subject_pseudonym = ANY($1)")
            .bind(&subjects)
            .fetch_all(pool)
            .await?;
    let mut by_subject: HashMap<String, Vec<KeyRow>> = HashMap::new();
    for (s, g, w) in key_rows {
        by_subject.entry(s).or_default().push((g, w));
    }
    let mut docs = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get("id")?;
        let subject: String = r.try_get("subject_pseudonym")?;
        let sealed: Option<Vec<u8>> = r.try_get("personal")?;
        let generation: Option<i32> = r.try_get("key_generation")?;
        let subject_keys = by_subject.get(&subject).map(Vec::as_slice).unwrap_or_default();
        let (fields, erased) = match privacy::unseal(keys, &subject, subject_keys, generation, sealed.as_deref(), &id) {
            Unsealed::Nothing => (PersonalFields::default(), false),
            Unsealed::Fields(f) => (*f, false),
            Unsealed::Erased => (PersonalFields::default(), true),
            // Fail closed: indexing it without its personal fields would hide who it was about.
            Unsealed::Unreadable => return Err(RebuildError::Unreadable { id }),
        };
        let ev = event_from_row(r, fields)?;
        let mut doc = BulkDoc::of(&ev, settings, &keys.pseudonym, personal);
        if erased {
            index::redact(&mut doc.source);
            *redacted += 1;
        }
        docs.push(doc);
    }
    Ok(docs)
}

/// Write one page, resending only the items the cluster asks to retry. Returns the refusals.
async fn write(client: &SearchClient, docs: Vec<BulkDoc>) -> Result<Vec<(String, String)>, RebuildError> {
    let mut pending = docs;
    let mut refused = Vec::new();
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        let refs: Vec<&BulkDoc> = pending.iter().collect();
        let outcomes = match client.bulk(index::bulk_body_op(BulkOp::Index, &refs)).await {
            Ok(response) => index::bulk_outcomes(&response, pending.len()).map_err(|e| SearchError::Transient(e.to_string())),
            Err(e) => Err(e),
        };
        match outcomes {
            Ok(outcomes) => {
                let mut again = Vec::new();
                for (doc, outcome) in pending.into_iter().zip(outcomes) {
                    match outcome {
                        ItemOutcome::Created | ItemOutcome::Exists => {}
                        ItemOutcome::Rejected(why) => refused.push((doc.id, why)),
                        ItemOutcome::Retry(_) => again.push(doc),
                    }
                }
                pending = again;
                if pending.is_empty() {
                    return Ok(refused);
                }
                if attempt == ATTEMPTS {
                    return Err(SearchError::Transient(format!("{} document(s) still refused for now (429/5xx)", pending.len())).into());
                }
            }
            Err(e) if e.is_transient() && attempt < ATTEMPTS => tracing::warn!(attempt, error = %e, "bulk request failed; retrying"),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    Ok(refused)
}

/// Re-index every stored event with `from <= timestamp < to` (no `from`: from the first),
/// `page` rows per bulk request.
/// `progress` is called with the number of events done so far after each page.
#[allow(clippy::too_many_arguments)]
pub async fn rebuild(
    pool: &PgPool,
    client: &SearchClient,
    settings: &IndexSettings,
    keys: &PrivacyKeys,
    personal: &[PersonalField],
    from: Option<DateTime<Utc>>,
    to: DateTime<Utc>,
    page: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RebuildReport, RebuildError> {
    client.put_template(settings).await?;
    let mut report = RebuildReport::default();
    let mut after: Option<(DateTime<Utc>, String)> = None;
    loop {
        let (after_ts, after_id) = match &after {
            Some((t, i)) => (Some(*t), Some(i.clone())),
            None => (None, None),
        };
        // Keyset pagination on the primary key's columns: each page starts where the last ended.
        let rows = sqlx::query(&format!(
            r#"SELECT {COLUMNS} FROM audit_events
                WHERE ($1::timestamptz IS NULL OR "timestamp" >= $1) AND "timestamp" < $2
                  AND ($3::timestamptz IS NULL OR ("timestamp", id) > ($3, $4))
                ORDER BY "timestamp", id LIMIT $5"#
        ))
        .bind(from)
        .bind(to)
        .bind(after_ts)
        .bind(after_id)
        .bind(page as i64)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = Some((last.try_get("timestamp")?, last.try_get("id")?));
        let docs = documents(pool, &rows, keys, settings, personal, &mut report.redacted).await?;
        report.events += docs.len() as u64;
        report.indices.extend(docs.iter().map(|d| d.index.clone()));
        report.refused.extend(write(client, docs).await?);
        progress(report.events);
        if rows.len() < page {
            break;
        }
    }
    Ok(report)
}
