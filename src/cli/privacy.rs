//! Data-subject operations: `auditflow erase` (crypto-shredding with a signed receipt) and
//! `auditflow export` (access request: every event about a subject, decrypted).

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::ledger::LedgerSigner;
use crate::privacy::{self, PrivacyKeys, SubjectKind};

/// Why an erasure was refused.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("subject is under legal hold ({0}); release the hold before erasing")]
    LegalHold(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The signed record of one erasure.
#[derive(Debug, Clone)]
pub struct ErasureReceipt {
    pub id: uuid::Uuid,
    pub subject_pseudonym: String,
    pub keys_destroyed: i32,
    pub events_affected: i64,
    pub erased_at: DateTime<Utc>,
    pub statement: String,
    pub signature_hex: String,
}

async fn table_exists(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let t: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text").bind(name).fetch_one(pool).await?;
    Ok(t.is_some())
}

/// Destroy every data key of the subject. Refused while a legal hold names the subject.
pub async fn erase(
    pool: &PgPool,
    keys: &PrivacyKeys,
    signer: &LedgerSigner,
    kind: SubjectKind,
    subject: &str,
    reason: &str,
) -> Result<ErasureReceipt, EraseError> {
    let pseudonym = keys.pseudonym(kind, subject);
    let mut tx = pool.begin().await?;
    if table_exists(pool, "legal_holds").await? {
        // A hold naming the subject, or a range hold covering any of the subject's events (the
        // events stay, but their personal fields are part of what the range hold preserves).
        let hold: Option<String> = sqlx::query_scalar(
            r#"SELECT h.reason FROM legal_holds h
                WHERE h.released_at IS NULL
                  AND (h.subject_pseudonym = $1
                       OR (h.subject_pseudonym IS NULL AND EXISTS (
                             SELECT 1 FROM audit_events e
                              WHERE e.subject_pseudonym = $1
                                AND (h.from_ts IS NULL OR e."timestamp" >= h.from_ts)
                                AND (h.to_ts IS NULL OR e."timestamp" < h.to_ts))))
                ORDER BY h.id LIMIT 1"#,
        )
        .bind(&pseudonym)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(reason) = hold {
            return Err(EraseError::LegalHold(reason));
        }
    }
    let destroyed = sqlx::query(
        "UPDATE subject_keys SET wrapped_key = NULL, erased_at = now()
          WHERE subject_pseudonym = $1 AND wrapped_key IS NOT NULL",
    )
    .bind(&pseudonym)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i32;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE subject_pseudonym = $1")
        .bind(&pseudonym)
        .fetch_one(&mut *tx)
        .await?;
    // Alerts keep a copy of their triggering match (event and group key) in clear: redact the
    // subject there. Rows are few; redaction is done here so one function covers every copy.
    let alerts_redacted = if table_exists(pool, "audit_alerts").await? {
        let rows: Vec<(uuid::Uuid, serde_json::Value, serde_json::Value)> = sqlx::query_as(
            r#"SELECT id, group_key, trigger_match FROM audit_alerts
                WHERE trigger_match->'event'->>'userId' = $1
                   OR trigger_match->'event'->>'ipAddress' = $1
                   OR trigger_match->'event'->>'sessionId' = $1
                   OR EXISTS (SELECT 1 FROM jsonb_each_text(group_key) g WHERE g.value = $1)
                   OR (jsonb_typeof(trigger_match->'groupKey') = 'object'
                       AND EXISTS (SELECT 1 FROM jsonb_each_text(trigger_match->'groupKey') g WHERE g.value = $1))
                FOR UPDATE"#,
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        for (id, mut group_key, mut trigger) in rows.iter().cloned() {
            redact_group_key(&mut group_key, subject);
            redact_match(&mut trigger, subject);
            sqlx::query("UPDATE audit_alerts SET group_key = $2, trigger_match = $3, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(&group_key)
                .bind(&trigger)
                .execute(&mut *tx)
                .await?;
        }
        rows.len() as i64
    } else {
        0
    };
    let erased_at = Utc::now();
    let id = uuid::Uuid::new_v4();
    let statement = json!({
        "receipt": id.to_string(),
        "subjectPseudonym": pseudonym,
        "subjectKind": kind.as_str(),
        "reason": reason,
        "erasedAt": erased_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "keysDestroyed": destroyed,
        "eventsAffected": events,
        "alertsRedacted": alerts_redacted,
    })
    .to_string();
    let signature = signer.sign(statement.as_bytes());
    sqlx::query(
        "INSERT INTO erasure_receipts (id, subject_pseudonym, reason, erased_at, keys_destroyed, events_affected,
                                       statement, key_id, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(&pseudonym)
    .bind(reason)
    .bind(erased_at)
    .bind(destroyed)
    .bind(events)
    .bind(&statement)
    .bind(&signer.key_id)
    .bind(&signature)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ErasureReceipt {
        id,
        subject_pseudonym: pseudonym,
        keys_destroyed: destroyed,
        events_affected: events,
        erased_at,
        statement,
        signature_hex: hex::encode(signature),
    })
}

/// What replaces an erased identifier in stored group keys.
pub const ERASED: &str = "[erased]";

/// Fields of a stored event that are personal: removed from alert copies by erasure.
const PERSONAL_EVENT_FIELDS: [&str; 6] = ["userId", "sessionId", "ipAddress", "userAgent", "location", "metadata"];

/// Replace every group key value equal to `subject` with [`ERASED`].
pub fn redact_group_key(group_key: &mut serde_json::Value, subject: &str) {
    if let Some(map) = group_key.as_object_mut() {
        for v in map.values_mut() {
            if v.as_str() == Some(subject) {
                *v = serde_json::Value::String(ERASED.into());
            }
        }
    }
}

/// Redact a stored rule match: the subject in its group key, and the personal fields of its
/// event copy when that event is about the subject (or names it in its group key).
pub fn redact_match(m: &mut serde_json::Value, subject: &str) {
    if let Some(g) = m.get_mut("groupKey") {
        redact_group_key(g, subject);
    }
    let Some(event) = m.get_mut("event").and_then(|e| e.as_object_mut()) else { return };
    for f in PERSONAL_EVENT_FIELDS {
        event.remove(f);
    }
    event.insert("personalDataErased".into(), serde_json::Value::Bool(true));
}

/// Every stored event about the subject, personal fields decrypted where the key still exists.
pub async fn export(
    pool: &PgPool,
    keys: &PrivacyKeys,
    kind: SubjectKind,
    subject: &str,
) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    let pseudonym = keys.pseudonym(kind, subject);
    let key_rows: Vec<(i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT generation, wrapped_key FROM subject_keys WHERE subject_pseudonym = $1")
            .bind(&pseudonym)
            .fetch_all(pool)
            .await?;
    let rows = sqlx::query(
        r#"SELECT id, "timestamp", action, resource, resource_id, method, endpoint, status_code,
                  classification, severity, success, error_message, duration, compliance::text AS compliance,
                  user_id, session_id, host(ip_address) AS ip_address, user_agent, location::text AS location,
                  metadata::text AS metadata, key_generation, personal
             FROM audit_events WHERE subject_pseudonym = $1 ORDER BY "timestamp", id"#,
    )
    .bind(&pseudonym)
    .fetch_all(pool)
    .await?;
    // The rows exactly as stored (ciphertexts included), so each exported event can be
    // checked against an inclusion proof (`auditflow verify-proof --event`).
    let stored = sqlx::query(&format!("SELECT {} FROM audit_events WHERE subject_pseudonym = $1", crate::cli::ledger::ROW_COLUMNS))
        .bind(&pseudonym)
        .fetch_all(pool)
        .await?;
    let mut stored: std::collections::HashMap<String, crate::ledger::LedgerRow> = stored
        .iter()
        .map(|r| crate::cli::ledger::ledger_row(r).map(|l| (l.row.id.clone(), l)))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get("id")?;
        let ledger_row = stored.remove(&id);
        let generation: Option<i32> = r.try_get("key_generation")?;
        let sealed: Option<Vec<u8>> = r.try_get("personal")?;
        let (personal, erased) = match privacy::unseal(keys, &pseudonym, &key_rows, generation, sealed.as_deref(), &id) {
            privacy::Unsealed::Fields(p) => (Some(*p), false),
            privacy::Unsealed::Erased => (None, true),
            privacy::Unsealed::Nothing | privacy::Unsealed::Unreadable => (None, false),
        };
        let p = personal.unwrap_or_default();
        let text = |col: &str| -> Result<Option<serde_json::Value>, sqlx::Error> {
            let t: Option<String> = r.try_get(col)?;
            Ok(t.and_then(|t| serde_json::from_str(&t).ok()))
        };
        let ts: DateTime<Utc> = r.try_get("timestamp")?;
        out.push(json!({
            "id": id,
            "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "action": r.try_get::<String, _>("action")?,
            "resource": r.try_get::<String, _>("resource")?,
            "resourceId": r.try_get::<Option<String>, _>("resource_id")?,
            "method": r.try_get::<Option<String>, _>("method")?,
            "endpoint": r.try_get::<Option<String>, _>("endpoint")?,
            "statusCode": r.try_get::<Option<i32>, _>("status_code")?,
            "classification": r.try_get::<String, _>("classification")?,
            "severity": r.try_get::<String, _>("severity")?,
            "success": r.try_get::<bool, _>("success")?,
            "errorMessage": r.try_get::<Option<String>, _>("error_message")?,
            "duration": r.try_get::<Option<i64>, _>("duration")?,
            "compliance": text("compliance")?,
            "userId": p.user_id.or(r.try_get("user_id")?),
            "sessionId": p.session_id.or(r.try_get("session_id")?),
            "ipAddress": p.ip_address.or(r.try_get("ip_address")?),
            "userAgent": p.user_agent.or(r.try_get("user_agent")?),
            "location": p.location.and_then(|l| serde_json::to_value(l).ok()).or(text("location")?),
            "metadata": p.metadata.or(text("metadata")?),
            "personalDataErased": erased,
            "storedRow": ledger_row.as_ref().map(|l| serde_json::to_value(&l.row).unwrap_or_default()),
            "rowHash": ledger_row.as_ref().and_then(|l| l.row_hash.as_deref().map(hex::encode)),
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_match_loses_the_subject_everywhere() {
        let mut m = json!({
            "ruleId": "r",
            "groupKey": {"user_id": "alice", "ip": "10.0.0.1"},
            "evidenceEventIds": ["e1", "e2"],
            "event": {"id": "e2", "action": "login", "userId": "alice", "ipAddress": "10.0.0.1",
                      "sessionId": "s", "userAgent": "ua", "location": {"country": "DE"}, "metadata": {"k": 1}},
        });
        redact_match(&mut m, "alice");
        assert_eq!(m["groupKey"], json!({"user_id": ERASED, "ip": "10.0.0.1"}));
        assert_eq!(m["event"], json!({"id": "e2", "action": "login", "personalDataErased": true}));
        assert_eq!(m["evidenceEventIds"], json!(["e1", "e2"]));
        let mut g = json!({"user_id": "bob"});
        redact_group_key(&mut g, "alice");
        assert_eq!(g, json!({"user_id": "bob"}));
    }
}
