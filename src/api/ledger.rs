//! The ledger for auditors: signed checkpoints, and verification runs (every chain against its
//! checkpoints in the database and their copies on `audit-checkpoints`), kept with their
//! reports in `ledger_verifications`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::Row;

use super::events::limit;
use super::problem::{ApiResult, Problem};
use super::server::{bounded, AppState, Ctx};
use crate::checkpoints::OutsideCopies;
use crate::cli::ledger::{verify, Outside};

pub async fn checkpoints(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    bounded(&q, &["chain", "limit"])?;
    let n = limit(&q, 100, 1000)?;
    let rows = sqlx::query(
        "SELECT chain_id, seq, head_hash, tree_root, signed_at, key_id, signature, published_at FROM ledger_checkpoints
          WHERE ($1::text IS NULL OR chain_id = $1) ORDER BY signed_at DESC, id DESC LIMIT $2",
    )
    .bind(q.get("chain"))
    .bind(n as i64)
    .fetch_all(&state.pool)
    .await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| -> Result<Value, sqlx::Error> {
            Ok(json!({
                "chain": r.try_get::<String, _>("chain_id")?,
                "seq": r.try_get::<i64, _>("seq")?,
                "headHash": hex::encode(r.try_get::<Vec<u8>, _>("head_hash")?),
                "treeRoot": r.try_get::<Option<Vec<u8>>, _>("tree_root")?.map(hex::encode),
                "signedAt": r.try_get::<DateTime<Utc>, _>("signed_at")?,
                "keyId": r.try_get::<String, _>("key_id")?,
                "signature": hex::encode(r.try_get::<Vec<u8>, _>("signature")?),
                "publishedAt": r.try_get::<Option<DateTime<Utc>>, _>("published_at")?,
            }))
        })
        .collect::<Result<_, _>>()?;
    state.audit(&ctx, "audit.ledger", None, None, 200, json!({"chain": q.get("chain"), "returned": list.len()})).await?;
    Ok(Json(json!({"checkpoints": list})))
}

/// id, started by, started at, finished at, ok, report.
type VerificationRow = (uuid::Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<bool>, Option<Value>);

pub async fn latest(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> ApiResult<Json<Value>> {
    let row: Option<VerificationRow> = sqlx::query_as(
        "SELECT id, started_by, started_at, finished_at, ok, report FROM ledger_verifications ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_optional(&state.pool)
    .await?;
    state.audit(&ctx, "audit.ledger", None, None, 200, Value::Null).await?;
    let (id, by, started, finished, ok, report) = row.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "no verification has run yet"))?;
    Ok(Json(json!({"id": id, "startedBy": by, "startedAt": started, "finishedAt": finished, "ok": ok, "report": report})))
}

/// Verify in the background; the run's row says when it is done.
pub async fn start(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> ApiResult<Response> {
    let running: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM ledger_verifications WHERE finished_at IS NULL AND started_at > now() - interval '1 hour' LIMIT 1",
    )
    .fetch_optional(&state.pool)
    .await?;
    if let Some(id) = running {
        return Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "running": true}))).into_response());
    }
    let id = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO ledger_verifications (id, started_by) VALUES ($1, $2)").bind(id).bind(ctx.subject()).execute(&state.pool).await?;
    state.audit(&ctx, "ledger.verify", Some(id.to_string()), None, 202, Value::Null).await?;
    let s = state.clone();
    tokio::spawn(async move {
        let report = run(&s).await;
        let (ok, report) = match report {
            Ok((ok, r)) => (Some(ok), r),
            Err(e) => {
                tracing::error!(error = %e, "ledger verification could not run");
                (None, json!({"error": "the verification could not run; see the API's log"}))
            }
        };
        if let Err(e) = sqlx::query("UPDATE ledger_verifications SET finished_at = now(), ok = $2, report = $3 WHERE id = $1")
            .bind(id)
            .bind(ok)
            .bind(&report)
            .execute(&s.pool)
            .await
        {
            tracing::error!(error = %e, "ledger verification result not stored");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "running": true}))).into_response())
}

async fn run(state: &AppState) -> anyhow::Result<(bool, Value)> {
    let config = state.config.clone();
    let topic = config.topics.checkpoints.name.clone();
    let read_at = chrono::Utc::now();
    let records = tokio::task::spawn_blocking(move || crate::cli::ops::read_all(&config, &config.topics.checkpoints.name)).await??;
    let mut copies = OutsideCopies::default();
    for r in &records {
        copies.add(&format!("{topic}[{}]@{}", r.partition, r.offset), &r.payload);
    }
    copies.sort();
    let outside = Outside { copies: &copies, publish_grace: chrono::Duration::seconds(600), read_at };
    let report = verify(&state.pool, &state.verifying_keys, None, None, Some(outside), |_| {}).await?;
    let breaks: Vec<Value> = report
        .breaks
        .iter()
        .map(|b| json!({"chain": b.chain_id, "seq": b.seq, "kind": b.kind.as_str(), "eventId": b.event_id, "detail": b.detail}))
        .collect();
    let ok = breaks.is_empty();
    Ok((ok, json!({
        "ok": ok, "chains": report.chains_verified, "rows": report.rows_verified, "checkpoints": report.checkpoints_checked,
        "retiredChains": report.chains_retired, "outsideRecords": report.outside_records,
        "pendingPublication": report.pending_publication, "comparedWith": format!("{} record(s) on {topic}", records.len()),
        "breaks": breaks,
    })))
}
