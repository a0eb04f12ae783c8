//! Compliance: the reports of `auditflow report`, and legal holds.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::subject_kind;
use super::problem::{ApiResult, Problem};
use super::server::{bounded, json_body, AppState, Ctx};
use crate::cli::report::{self, ReportFormat};
use crate::compliance::{Framework, FrameworkSwitches, Mapping};
use crate::retention::holds::{self, NewHold};

pub async fn report(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Path(framework): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    bounded(&q, &["from", "to", "format"])?;
    let framework: Framework = framework.parse().map_err(|_| Problem::not_found())?;
    let format: ReportFormat = q.get("format").map(String::as_str).unwrap_or("json").parse().map_err(Problem::bad_request)?;
    let time = |k: &str| q.get(k).map(|v| report::parse_time(v).map_err(|e| Problem::bad_request(format!("{k}: {e}")))).transpose();
    let to = time("to")?.unwrap_or_else(chrono::Utc::now);
    let from = time("from")?.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(Problem::bad_request("from must be before to"));
    }
    let mapping = Mapping::load(state.config.compliance.mapping.as_deref(), FrameworkSwitches::ALL_ON)
        .map_err(|e| Problem::internal("the compliance mapping", e))?;
    let data = report::gather(&state.pool, framework, from, to, Some(&mapping)).await?;
    state.audit(&ctx, "audit.report", Some(framework.as_str().to_string()), None, 200, json!({"from": from, "to": to})).await?;
    let text = report::render(&data, format);
    let media = match format {
        ReportFormat::Json => "application/json",
        ReportFormat::Csv => "text/csv; charset=utf-8",
        ReportFormat::Html => "text/html; charset=utf-8",
    };
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(media));
    if matches!(format, ReportFormat::Html) {
        // The report escapes every value; the policy makes sure nothing in it runs anyway.
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"));
    }
    Ok(r)
}

pub async fn holds(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    bounded(&q, &["all"])?;
    let all = q.get("all").is_some_and(|v| v == "true");
    let list = holds::list(&state.pool, all).await?;
    state.audit(&ctx, "audit.holds", None, None, 200, json!({"all": all, "returned": list.len()})).await?;
    Ok(Json(json!({"holds": list})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct HoldBody {
    reason: String,
    /// A subject id (turned into its pseudonym; never stored in clear).
    subject: Option<String>,
    /// user (default), ip or session.
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn place_hold(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, body: Body) -> ApiResult<Response> {
    let b: HoldBody = json_body(body, 64 * 1024).await?;
    let time = |v: &Option<String>, k: &str| v.as_deref().map(|t| report::parse_time(t).map_err(|e| Problem::bad_request(format!("{k}: {e}")))).transpose();
    let pseudonym = match &b.subject {
        Some(s) => Some(state.keys.pseudonym(subject_kind(b.kind.as_deref().unwrap_or("user"))?, s)),
        None => None,
    };
    let hold = NewHold {
        subject_pseudonym: pseudonym.clone(),
        from_ts: time(&b.from, "from")?,
        to_ts: time(&b.to, "to")?,
        reason: b.reason.chars().take(2000).collect(),
        created_by: ctx.subject().to_string(),
    };
    hold.validate().map_err(Problem::bad_request)?;
    let placed = holds::add(&state.pool, &hold).await?;
    state.audit(&ctx, "hold.place", Some(placed.id.to_string()), Some(&hold.reason), 201, json!({"subjectPseudonym": pseudonym})).await?;
    Ok((StatusCode::CREATED, Json(json!(placed))).into_response())
}

pub async fn release_hold(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id: i64 = id.parse().map_err(|_| Problem::not_found())?;
    let released = holds::release(&state.pool, id, ctx.subject()).await?.ok_or_else(Problem::not_found)?;
    state.audit(&ctx, "hold.release", Some(id.to_string()), None, 200, Value::Null).await?;
    Ok(Json(json!(released)))
}
