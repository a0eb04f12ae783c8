//! Alerts: list, one with its evidence, and triage (acknowledge, resolve, reopen).
//!
//! An alert is shown only to a caller cleared for every one of its evidence events; group keys
//! and triggers carry pseudonyms exactly as on `security-alerts`. A triage decision is stored
//! with who and when (`alert_triage`), shown on the alert, and published on `security-alerts`
//! as an update record so subscribers see the state change.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::{FromRow, Row};

use super::events::{decode_cursor, encode_cursor, limit};
use super::problem::{ApiResult, Problem};
use super::server::{bounded, json_body, AppState, Ctx};
use crate::alert::store::AlertRow;
use crate::event::Classification;

const COLUMNS: &str = "a.id::text AS id, a.fingerprint, a.policy_id, a.policy_name, a.rule_id, a.rule_name,
    a.severity, a.group_key, a.compliance, a.window_start, a.window_end, a.first_seen, a.last_seen,
    a.match_count, a.suppressed_count, a.evidence_event_ids, a.trigger_match, a.created_at,
    a.dispatch_attempts, a.trace_parent, a.status, a.triage_status, a.assignee, a.triaged_by, a.triaged_at";

/// SQL: the alert's evidence is all within the clearance `$1` (the classifications allowed).
const CLEARED: &str = "NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = ANY (a.evidence_event_ids) AND NOT (e.classification = ANY ($1)))";

fn allowed(c: Classification) -> Vec<String> {
    Classification::ALL.iter().filter(|k| **k <= c).map(|k| k.as_str().to_string()).collect()
}

fn view(state: &AppState, row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let alert = AlertRow::from_row(row)?;
    let mut record = alert.to_record(alert.created_at, state.config.alert.max_field_chars);
    state.disclosure.apply(&mut record);
    let mut v = serde_json::to_value(&record).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("dispatchedAt");
        m.insert("dispatchStatus".into(), json!(row.try_get::<String, _>("status")?));
        m.insert("triageStatus".into(), json!(row.try_get::<String, _>("triage_status")?));
        m.insert("assignee".into(), json!(row.try_get::<Option<String>, _>("assignee")?));
        m.insert("triagedBy".into(), json!(row.try_get::<Option<String>, _>("triaged_by")?));
        m.insert("triagedAt".into(), json!(row.try_get::<Option<DateTime<Utc>>, _>("triaged_at")?));
    }
    Ok(v)
}

pub async fn list(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    bounded(&q, &["status", "policy", "rule", "severity", "from", "to", "limit", "cursor"])?;
    let n = limit(&q, 50, 500)?;
    if let Some(s) = q.get("status") {
        if !["open", "acknowledged", "resolved"].contains(&s.as_str()) {
            return Err(Problem::bad_request("status: open, acknowledged or resolved"));
        }
    }
    let time = |k: &str| q.get(k).map(|v| crate::cli::report::parse_time(v).map_err(|e| Problem::bad_request(format!("{k}: {e}")))).transpose();
    let (from, to) = (time("from")?, time("to")?);
    let cursor: Option<(DateTime<Utc>, String)> = match q.get("cursor") {
        None => None,
        Some(c) => {
            let v = decode_cursor(c)?;
            let at = v[0].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
            let id = v[1].as_str().map(str::to_string);
            Some(at.zip(id).ok_or_else(|| Problem::bad_request("cursor: not one this service issued"))?)
        }
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_alerts a
          WHERE {CLEARED}
            AND ($2::text IS NULL OR a.triage_status = $2)
            AND ($3::text IS NULL OR a.policy_id = $3)
            AND ($4::text IS NULL OR a.rule_id = $4)
            AND ($5::text IS NULL OR a.severity = upper($5))
            AND ($6::timestamptz IS NULL OR a.created_at >= $6)
            AND ($7::timestamptz IS NULL OR a.created_at < $7)
            AND ($8::timestamptz IS NULL OR (a.created_at, a.id::text) < ($8, $9))
          ORDER BY a.created_at DESC, a.id::text DESC
          LIMIT $10"
    );
    let rows = sqlx::query(&sql)
        .bind(allowed(ctx.clearance()))
        .bind(q.get("status"))
        .bind(q.get("policy"))
        .bind(q.get("rule"))
        .bind(q.get("severity"))
        .bind(from)
        .bind(to)
        .bind(cursor.as_ref().map(|c| c.0))
        .bind(cursor.as_ref().map(|c| c.1.clone()))
        .bind(n as i64)
        .fetch_all(&state.pool)
        .await?;
    let alerts: Vec<Value> = rows.iter().map(|r| view(&state, r)).collect::<Result<_, _>>()?;
    let next = if rows.len() == n {
        let last = rows.last().map(|r| -> Result<Value, sqlx::Error> {
            let at: DateTime<Utc> = r.try_get("created_at")?;
            let id: String = r.try_get("id")?;
            Ok(json!([at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), id]))
        });
        last.transpose()?.map(|v| encode_cursor(&v))
    } else {
        None
    };
    state.audit(&ctx, "audit.alerts", None, None, 200, json!({"filters": q, "returned": alerts.len()})).await?;
    Ok(Json(json!({"alerts": alerts, "next": next})))
}

/// Alerts the caller may see whose state changed after `since` (database time), oldest change
/// first, at most `limit`; with the time of the newest change returned, for the next call. Each
/// carries `created`: whether it was opened after `since`. For the console's live view, which
/// audits the watch once rather than every poll.
pub async fn changed_since(state: &AppState, clearance: Classification, since: DateTime<Utc>, limit: i64) -> Result<(Vec<Value>, DateTime<Utc>), sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, a.updated_at, a.created_at > $2 AS created FROM audit_alerts a
          WHERE a.updated_at > $2 AND {CLEARED}
          ORDER BY a.updated_at, a.id LIMIT $3"
    ))
    .bind(allowed(clearance))
    .bind(since)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let mut newest = since;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut v = view(state, r)?;
        v["created"] = json!(r.try_get::<bool, _>("created")?);
        newest = newest.max(r.try_get::<DateTime<Utc>, _>("updated_at")?);
        out.push(v);
    }
    Ok((out, newest))
}

/// Alerts the caller may see that hold event `id` among their evidence, oldest first.
pub async fn with_evidence(state: &AppState, clearance: Classification, id: &str, limit: i64) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_alerts a WHERE a.evidence_event_ids @> ARRAY[$2] AND {CLEARED} ORDER BY a.first_seen, a.id LIMIT $3"
    ))
    .bind(allowed(clearance))
    .bind(id)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    rows.iter().map(|r| view(state, r)).collect()
}

/// Alerts the caller may see about one user or address, oldest first: those it was the group
/// of, or whose triggering event was theirs; opened within `[from, to)` when given.
pub async fn about_subject(
    state: &AppState,
    clearance: Classification,
    kind: crate::privacy::SubjectKind,
    subject: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Value>, sqlx::Error> {
    // The keys as the alert stage stores them: the rule's group_by name and the event's field.
    let (group_field, event_field) = match kind {
        crate::privacy::SubjectKind::User => ("user_id", "userId"),
        crate::privacy::SubjectKind::Ip => ("ip_address", "ipAddress"),
        crate::privacy::SubjectKind::Session => ("session_id", "sessionId"),
        crate::privacy::SubjectKind::Anonymous => return Ok(Vec::new()),
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_alerts a
          WHERE (a.group_key ->> '{group_field}' = $2 OR a.trigger_match -> 'event' ->> '{event_field}' = $2)
            AND ($3::timestamptz IS NULL OR a.first_seen >= $3)
            AND ($4::timestamptz IS NULL OR a.first_seen < $4)
            AND {CLEARED}
          ORDER BY a.first_seen, a.id LIMIT $5"
    ))
    .bind(allowed(clearance))
    .bind(subject)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    rows.iter().map(|r| view(state, r)).collect()
}

async fn fetch(state: &AppState, ctx: &Ctx, id: &str) -> ApiResult<sqlx::postgres::PgRow> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else { return Err(Problem::not_found()) };
    sqlx::query(&format!("SELECT {COLUMNS} FROM audit_alerts a WHERE a.id = $2 AND {CLEARED}"))
        .bind(allowed(ctx.clearance()))
        .bind(uuid)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(Problem::not_found)
}

pub async fn one(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = match fetch(&state, &ctx, &id).await {
        Ok(r) => r,
        Err(p) => {
            state.audit(&ctx, "audit.alert", Some(id.chars().take(64).collect()), None, p.status.as_u16(), Value::Null).await?;
            return Err(p);
        }
    };
    let mut alert = view(&state, &row)?;
    let evidence: Vec<String> = row.try_get("evidence_event_ids")?;
    let events = sqlx::query(
        r#"SELECT id, "timestamp", action, resource, severity, classification, success, subject_pseudonym, user_pseudonym
             FROM audit_events WHERE id = ANY ($1) ORDER BY "timestamp", id"#,
    )
    .bind(&evidence)
    .fetch_all(&state.pool)
    .await?
    .iter()
    .map(|r| -> Result<Value, sqlx::Error> {
        Ok(json!({
            "id": r.try_get::<String, _>("id")?,
            "timestamp": r.try_get::<DateTime<Utc>, _>("timestamp")?,
            "action": r.try_get::<String, _>("action")?,
            "resource": r.try_get::<String, _>("resource")?,
            "severity": r.try_get::<String, _>("severity")?,
            "classification": r.try_get::<String, _>("classification")?,
            "success": r.try_get::<bool, _>("success")?,
            "subjectPseudonym": r.try_get::<Option<String>, _>("subject_pseudonym")?,
            "userPseudonym": r.try_get::<Option<String>, _>("user_pseudonym")?,
        }))
    })
    .collect::<Result<Vec<_>, _>>()?;
    let history: Vec<TriageRow> =
        sqlx::query_as("SELECT status, assignee, note, actor, at FROM alert_triage WHERE alert_id = $1 ORDER BY at, id")
            .bind(uuid::Uuid::parse_str(&id).unwrap_or_default())
            .fetch_all(&state.pool)
            .await?;
    alert["evidence"] = json!(events);
    alert["triage"] = json!(history
        .iter()
        .map(|(s, a, n, by, at)| json!({"status": s, "assignee": a, "note": n, "by": by, "at": at}))
        .collect::<Vec<_>>());
    state.audit(&ctx, "audit.alert", Some(id), None, 200, json!({"evidence": events.len()})).await?;
    Ok(Json(alert))
}

/// One decision of `alert_triage`: status, assignee, note, actor, when.
type TriageRow = (String, Option<String>, Option<String>, String, DateTime<Utc>);

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TriageBody {
    note: Option<String>,
    assignee: Option<String>,
}

async fn triage(state: Arc<AppState>, ctx: Ctx, id: String, body: Body, status: &'static str, action: &'static str) -> ApiResult<Json<Value>> {
    let b: TriageBody = json_body(body, 64 * 1024).await?;
    if b.note.as_ref().is_some_and(|n| n.chars().count() > 4000) || b.assignee.as_ref().is_some_and(|a| a.chars().count() > 200) {
        return Err(Problem::bad_request("note: at most 4000 characters; assignee: at most 200"));
    }
    fetch(&state, &ctx, &id).await?;
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| Problem::not_found())?;
    let mut tx = state.pool.begin().await?;
    let at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE audit_alerts SET triage_status = $2, assignee = COALESCE($3, assignee), triaged_by = $4, triaged_at = now(), updated_at = now()
          WHERE id = $1 RETURNING triaged_at",
    )
    .bind(uuid)
    .bind(status)
    .bind(&b.assignee)
    .bind(ctx.subject())
    .fetch_one(&mut *tx)
    .await?;
    let triage_id: i64 = sqlx::query_scalar("INSERT INTO alert_triage (alert_id, status, assignee, note, actor, at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
        .bind(uuid)
        .bind(status)
        .bind(&b.assignee)
        .bind(&b.note)
        .bind(ctx.subject())
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
    // The audit event first: a decision nobody can trace is not taken.
    state.audit(&ctx, action, Some(id.clone()), b.note.as_deref(), 200, json!({"status": status, "assignee": b.assignee})).await?;
    tx.commit().await?;
    let decision = Decision { id: triage_id, alert_id: uuid, status: status.to_string(), assignee: b.assignee.clone(), note: b.note.clone(), actor: ctx.subject().to_string(), at };
    if let Err(e) = publish(&state, &decision).await {
        // Stored and audited; the outbox sweep sends it again (publish_pending).
        tracing::warn!(error = %e, alert = %id, "triage update not published yet; the outbox will send it");
    }
    let row = fetch(&state, &ctx, &id).await?;
    Ok(Json(view(&state, &row)?))
}

/// One decision of `alert_triage`, as published on `security-alerts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Decision {
    pub id: i64,
    pub alert_id: uuid::Uuid,
    pub status: String,
    pub assignee: Option<String>,
    pub note: Option<String>,
    pub actor: String,
    pub at: DateTime<Utc>,
}

impl Decision {
    /// The update record (key = alert id, like the alert's own records).
    pub fn record(&self) -> Value {
        json!({
            "schemaVersion": crate::alert::render::RECORD_SCHEMA_VERSION,
            "type": "alert.triage",
            "alertId": self.alert_id.to_string(),
            "triageStatus": self.status,
            "assignee": self.assignee,
            "note": self.note,
            "by": self.actor,
            "at": self.at,
        })
    }
}

/// Send one decision and mark it published.
async fn publish(state: &AppState, d: &Decision) -> anyhow::Result<()> {
    let topic = &state.config.topics.security_alerts.name;
    state.producer.send_to(topic, &d.alert_id.to_string(), d.record().to_string().as_bytes()).await?;
    sqlx::query("UPDATE alert_triage SET published_at = now() WHERE id = $1").bind(d.id).execute(&state.pool).await?;
    Ok(())
}

/// The outbox sweep: decisions older than a few seconds and still unpublished (Kafka was away
/// when they were taken, or the process stopped in between) are sent, oldest first. Rows another
/// replica is sending are skipped; a record sent twice carries the same decision (`at`, `by`).
pub async fn publish_pending(state: &AppState) -> anyhow::Result<usize> {
    let mut tx = state.pool.begin().await?;
    let pending: Vec<Decision> = sqlx::query_as(
        "SELECT id, alert_id, status, assignee, note, actor, at FROM alert_triage
          WHERE published_at IS NULL AND at < now() - interval '5 seconds'
          ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    let topic = &state.config.topics.security_alerts.name;
    for d in &pending {
        state.producer.send_to(topic, &d.alert_id.to_string(), d.record().to_string().as_bytes()).await?;
        sqlx::query("UPDATE alert_triage SET published_at = now() WHERE id = $1").bind(d.id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(pending.len())
}

pub async fn acknowledge(State(s): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>, body: Body) -> ApiResult<Json<Value>> {
    triage(s, ctx, id, body, "acknowledged", "alert.acknowledge").await
}
pub async fn resolve(State(s): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>, body: Body) -> ApiResult<Json<Value>> {
    triage(s, ctx, id, body, "resolved", "alert.resolve").await
}
pub async fn reopen(State(s): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>, body: Body) -> ApiResult<Json<Value>> {
    triage(s, ctx, id, body, "open", "alert.reopen").await
}
