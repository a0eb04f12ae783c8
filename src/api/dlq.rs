//! Dead letters for analysts (their reasons; payloads only with scope `pii:read` and a reason,
//! as a raw event carries personal fields in clear) and replay for admins (each at most once).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::limit;
use super::problem::{ApiResult, Problem};
use super::server::{bounded, json_body, AppState, Ctx};
use crate::cli::ops::{self, DeadLetter};

fn view(d: &DeadLetter, payload: bool) -> Value {
    let headers: serde_json::Map<String, Value> = d
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
        .collect();
    let mut v = json!({"position": d.position(), "partition": d.partition, "offset": d.offset, "headers": headers, "payloadBytes": d.payload.len()});
    if payload {
        v["payload"] = json!(String::from_utf8_lossy(&d.payload));
    }
    v
}

async fn letters(state: &AppState) -> ApiResult<Vec<DeadLetter>> {
    let config = state.config.clone();
    tokio::task::spawn_blocking(move || ops::read_all(&config, &config.topics.dlq.name))
        .await
        .map_err(|e| Problem::internal("reading the dead letters", e))?
        .map_err(|e| Problem::internal("reading the dead letters", e))
}

pub async fn list(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    bounded(&q, &["stage", "kind", "limit", "reason"])?;
    let n = limit(&q, 100, 1000)?;
    let reason = q.get("reason").map(String::as_str);
    let pii = ctx.may_read_pii(reason);
    let all = letters(&state).await?;
    let chosen = ops::select(&all, q.get("stage").map(String::as_str), q.get("kind").map(String::as_str), &[]);
    let total = chosen.len();
    // Newest first.
    let shown: Vec<Value> = chosen.iter().rev().take(n).map(|d| view(d, pii)).collect();
    let action = if pii { "audit.read_pii" } else { "audit.dead_letters" };
    state.audit(&ctx, action, None, reason, 200, json!({"stage": q.get("stage"), "kind": q.get("kind"), "returned": shown.len()})).await?;
    Ok(Json(json!({"total": total, "deadLetters": shown})))
}

pub async fn one(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Path((partition, offset)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    bounded(&q, &["reason"])?;
    let reason = q.get("reason").map(String::as_str);
    let pii = ctx.may_read_pii(reason);
    let position = format!("{partition}:{offset}");
    let all = letters(&state).await?;
    let found = all.iter().find(|d| d.position() == position).ok_or_else(Problem::not_found)?;
    let action = if pii { "audit.read_pii" } else { "audit.dead_letters" };
    state.audit(&ctx, action, Some(position), reason, 200, Value::Null).await?;
    Ok(Json(view(found, pii)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReplayBody {
    positions: Vec<String>,
    stage: Option<String>,
    kind: Option<String>,
    #[serde(rename = "dryRun")]
    dry_run: bool,
}

pub async fn replay(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, body: Body) -> ApiResult<Json<Value>> {
    let b: ReplayBody = json_body(body, 256 * 1024).await?;
    if b.positions.is_empty() && b.stage.is_none() && b.kind.is_none() {
        return Err(Problem::bad_request("name positions, a stage or a kind: a replay of everything is not done by accident"));
    }
    let all = letters(&state).await?;
    let chosen = ops::select(&all, b.stage.as_deref(), b.kind.as_deref(), &b.positions);
    state.audit(&ctx, "dlq.replay", None, None, 200, json!({"positions": b.positions, "stage": b.stage, "kind": b.kind, "chosen": chosen.len(), "dryRun": b.dry_run})).await?;
    let mut refused = Vec::new();
    let outcome = ops::replay(&state.config, &state.pool, &chosen, None, b.dry_run, |d, why| refused.push(json!({"position": d.position(), "why": why.to_string()})))
        .await
        .map_err(|e| Problem::internal("the replay", e))?;
    Ok(Json(json!({
        "replayed": outcome.replayed, "alreadyReplayed": outcome.already_replayed,
        "notReplayable": outcome.not_replayable, "refused": refused,
    })))
}
