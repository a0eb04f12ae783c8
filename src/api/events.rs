//! Events: search (the search store), one event (PostgreSQL, with its place in the ledger), a
//! subject's timeline. Events above the caller's clearance are not there for them: left out
//! of hits, totals and histograms, and answered 404 by id.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::problem::{ApiResult, Problem};
use super::server::{bounded, AppState, Ctx};
use crate::event::Classification;
use crate::index::query::{read_result, SearchQuery};
use crate::privacy::{self, SubjectKind};

const SEARCH_PARAMS: &[&str] = &["from", "to", "user", "ip", "action", "resource", "severity", "classification", "success", "q", "limit", "interval", "cursor"];

fn time(q: &HashMap<String, String>, k: &str) -> ApiResult<Option<DateTime<Utc>>> {
    q.get(k)
        .map(|v| crate::cli::report::parse_time(v).map_err(|e| Problem::bad_request(format!("{k}: {e}"))))
        .transpose()
}

pub fn limit(q: &HashMap<String, String>, default: usize, max: usize) -> ApiResult<usize> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Problem::bad_request(format!("limit: a number from 1 to {max}"))),
        },
    }
}

fn one_of(q: &HashMap<String, String>, k: &str, allowed: &[&str]) -> ApiResult<Option<String>> {
    match q.get(k) {
        None => Ok(None),
        Some(v) if allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) => Ok(Some(v.to_ascii_uppercase())),
        Some(_) => Err(Problem::bad_request(format!("{k}: one of {}", allowed.join(", ")))),
    }
}

/// An opaque cursor: the sort values of the page's last hit.
pub fn encode_cursor(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode_cursor(text: &str) -> ApiResult<Value> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Problem::bad_request("cursor: not one this service issued"))
}

/// The question a query string asks; `clearance` bounds it.
pub fn search_query(q: &HashMap<String, String>, clearance: Classification) -> ApiResult<SearchQuery> {
    bounded(q, SEARCH_PARAMS)?;
    let interval = q.get("interval").cloned().unwrap_or_else(|| "1h".into());
    let ok_interval = interval.len() <= 6
        && interval.ends_with(['s', 'm', 'h', 'd'])
        && interval[..interval.len() - 1].parse::<u32>().is_ok_and(|n| n > 0);
    if !ok_interval {
        return Err(Problem::bad_request("interval: a number and s, m, h or d (e.g. 1h)"));
    }
    let success = match q.get("success").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Problem::bad_request("success: true or false")),
    };
    Ok(SearchQuery {
        from: time(q, "from")?,
        to: time(q, "to")?,
        user: q.get("user").cloned(),
        ip: q.get("ip").cloned(),
        action: q.get("action").cloned(),
        resource: q.get("resource").cloned(),
        severity: one_of(q, "severity", &["LOW", "MEDIUM", "HIGH", "CRITICAL"])?,
        classification: one_of(q, "classification", &["PUBLIC", "INTERNAL", "CONFIDENTIAL", "RESTRICTED"])?,
        success,
        text: q.get("q").cloned(),
        size: limit(q, 50, 1000)?,
        interval: Some(interval),
        clearance: Some(clearance),
        ascending: false,
        after: q.get("cursor").map(|c| decode_cursor(c)).transpose()?,
    })
}

/// Run a question against the search store, writing its audit event alongside.
async fn run(state: &AppState, ctx: &Ctx, query: SearchQuery, action: &'static str, resource_id: Option<String>, asked: Value) -> ApiResult<Value> {
    let client = state.search()?;
    let body = query.to_body(&state.keys.pseudonym, &state.config.privacy.personal_fields).map_err(|e| Problem::bad_request(e.0))?;
    let pattern = format!("{}-*", state.config.index.prefix);
    let (found, audited) = tokio::join!(client.search(&pattern, &body), state.audit(ctx, action, resource_id, None, 200, asked));
    audited?;
    let r = found.map_err(|e| Problem::internal("the search store", e))?;
    let result = read_result(&r);
    let next = (result.hits.len() == query.size).then(|| result.last_sort.as_ref().map(encode_cursor)).flatten();
    Ok(json!({
        "total": result.total,
        "hits": result.hits,
        "histogram": result.histogram.iter().map(|(at, n)| json!({"at": at, "count": n})).collect::<Vec<_>>(),
        "next": next,
    }))
}

pub async fn search(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    let query = search_query(&q, ctx.clearance())?;
    let asked = json!(q);
    Ok(Json(run(&state, &ctx, query, "audit.search", None, asked).await?))
}

pub fn subject_kind(kind: &str) -> ApiResult<SubjectKind> {
    match kind {
        "user" => Ok(SubjectKind::User),
        "ip" => Ok(SubjectKind::Ip),
        "session" => Ok(SubjectKind::Session),
        _ => Err(Problem::bad_request("kind: user, ip or session")),
    }
}

/// Most alerts an event's answer lists.
const EVENT_ALERTS: i64 = 50;

/// Most alerts a timeline answer carries.
const TIMELINE_ALERTS: i64 = 200;

pub async fn timeline(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Path((kind, subject)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    bounded(&q, &["from", "to", "limit", "cursor"])?;
    if subject.len() > 1024 {
        return Err(Problem::bad_request("subject is longer than 1024 bytes"));
    }
    let kind = subject_kind(&kind)?;
    let mut query = SearchQuery {
        from: time(&q, "from")?,
        to: time(&q, "to")?,
        size: limit(&q, 100, 1000)?,
        interval: Some("1d".into()),
        clearance: Some(ctx.clearance()),
        ascending: true,
        after: q.get("cursor").map(|c| decode_cursor(c)).transpose()?,
        ..SearchQuery::default()
    };
    match kind {
        SubjectKind::User => query.user = Some(subject.clone()),
        SubjectKind::Ip => query.ip = Some(subject.clone()),
        _ => return Err(Problem::bad_request("timelines are searchable by user or ip (sessions are not indexed by pseudonym)")),
    }
    let pseudonym = state.keys.pseudonym(kind, &subject);
    // The subject's alerts over the same period (the first page only: they are few beside the
    // events), so a timeline shows what was detected next to what happened.
    let alerts = if query.after.is_none() {
        super::alerts::about_subject(&state, ctx.clearance(), kind, &subject, query.from, query.to, TIMELINE_ALERTS).await?
    } else {
        Vec::new()
    };
    let mut answer = run(&state, &ctx, query, "audit.timeline", Some(pseudonym), json!({"kind": kind.as_str(), "alerts": alerts.len()})).await?;
    answer["alerts"] = Value::Array(alerts);
    Ok(Json(answer))
}

pub async fn one(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    bounded(&q, &["reason"])?;
    if id.len() > 256 {
        return Err(Problem::not_found());
    }
    let rows = sqlx::query(&format!("SELECT {} FROM audit_events WHERE id = $1 ORDER BY \"timestamp\"", crate::cli::ledger::ROW_COLUMNS))
        .bind(&id)
        .fetch_all(&state.pool)
        .await?;
    let rows: Vec<crate::ledger::LedgerRow> = rows.iter().map(crate::cli::ledger::ledger_row).collect::<Result<_, _>>()?;
    let visible: Vec<&crate::ledger::LedgerRow> = rows
        .iter()
        .filter(|r| r.row.classification.parse::<Classification>().is_ok_and(|c| c <= ctx.clearance()))
        .collect();
    let Some(l) = visible.first() else {
        // Missing and above clearance look the same; the attempt is audited either way.
        state.audit(&ctx, "audit.read", Some(id), None, 404, Value::Null).await?;
        return Err(Problem::not_found());
    };
    let reason = q.get("reason").map(String::as_str).filter(|r| !r.trim().is_empty());
    let pii = ctx.may_read_pii(reason);
    let r = &l.row;
    let mut personal = None;
    let mut erased = false;
    if pii {
        if let Some(subject) = &r.subject_pseudonym {
            let key_rows: Vec<privacy::KeyRow> = sqlx::query_as("SELECT generation, wrapped_key FROM subject_keys WHERE subject_pseudonym = $1")
                .bind(subject)
                .fetch_all(&state.pool)
                .await?;
            match privacy::unseal(&state.keys, subject, &key_rows, r.key_generation, r.personal.as_deref(), &r.id) {
                privacy::Unsealed::Fields(p) => personal = Some(*p),
                privacy::Unsealed::Erased => erased = true,
                privacy::Unsealed::Nothing => {}
                privacy::Unsealed::Unreadable => return Err(Problem::internal("the event's sealed fields", "they do not open with this API's master key")),
            }
        }
    }
    let link_verifies = match (&l.prev_hash, &l.row_hash) {
        (Some(prev), Some(stored)) => crate::ledger::hash_from_slice(prev).map(|p| crate::ledger::row_hash(&p, r).as_slice() == stored.as_slice()),
        _ => None,
    };
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
    let p = personal.unwrap_or_default();
    let ts = DateTime::from_timestamp_micros(r.timestamp_us).unwrap_or_default();
    let enriched = DateTime::from_timestamp_micros(r.enriched_at_us).unwrap_or_default();
    let event = json!({
        "id": r.id,
        "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "action": r.action, "resource": r.resource, "resourceId": r.resource_id,
        "method": r.method, "endpoint": r.endpoint, "statusCode": r.status_code,
        "classification": r.classification, "severity": r.severity, "success": r.success,
        "errorMessage": r.error_message, "duration": r.duration,
        "compliance": serde_json::from_str::<Value>(&r.compliance).unwrap_or(Value::Null),
        "ipFacts": parse(&r.ip_facts),
        // Sealed fields are null unless opened; a field not configured as personal is stored
        // (and shown) in clear.
        "userId": p.user_id.or(r.user_id.clone()),
        "sessionId": p.session_id.or(r.session_id.clone()),
        "ipAddress": p.ip_address.or(r.ip_address.clone()),
        "userAgent": p.user_agent.or(r.user_agent.clone()),
        "location": p.location.and_then(|x| serde_json::to_value(x).ok()).or(parse(&r.location)),
        "metadata": p.metadata.or(parse(&r.metadata)),
        "subjectPseudonym": r.subject_pseudonym, "userPseudonym": r.user_pseudonym,
        "personalFieldsShown": pii && !erased && r.personal.is_some(),
        "personalDataErased": erased,
        "enrichedAt": enriched.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "source": {"topic": r.source_topic, "partition": r.source_partition, "offset": r.source_offset},
        "ledger": {
            "chain": r.chain_id, "seq": r.chain_seq,
            "prevHash": l.prev_hash.as_deref().map(hex::encode), "rowHash": l.row_hash.as_deref().map(hex::encode),
            "linkVerifies": link_verifies,
        },
    });
    // The alerts this event is evidence for (an alert with evidence above the caller's
    // clearance stays hidden, as everywhere).
    let mut event = event;
    event["alerts"] = Value::Array(super::alerts::with_evidence(&state, ctx.clearance(), &r.id, EVENT_ALERTS).await?);
    let action = if pii { "audit.read_pii" } else { "audit.read" };
    state.audit(&ctx, action, Some(r.id.clone()), reason, 200, json!({"personalFields": pii})).await?;
    Ok(Json(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn query_strings_are_data_and_bounded() {
        let s = search_query(&q(&[("action", "login\" OR 1=1 --"), ("q", "a AND classification:RESTRICTED")]), Classification::Internal).unwrap();
        assert_eq!(s.action.as_deref(), Some("login\" OR 1=1 --"));
        assert_eq!(s.clearance, Some(Classification::Internal));
        assert!(search_query(&q(&[("limit", "100000")]), Classification::Public).is_err());
        assert!(search_query(&q(&[("interval", "1h\"}}")]), Classification::Public).is_err());
        assert!(search_query(&q(&[("severity", "*")]), Classification::Public).is_err());
        assert!(search_query(&q(&[("user", &"x".repeat(5000))]), Classification::Public).is_err());
        assert!(search_query(&q(&[("size", "5")]), Classification::Public).is_err(), "unknown parameters are refused");
        assert!(search_query(&q(&[("cursor", "e30")]), Classification::Public).unwrap().to_body(&crate::privacy::SecretKey([1; 32]), &[]).is_err(), "a forged cursor is refused");
        let c = encode_cursor(&json!([1700000000000i64, "id-1"]));
        let s = search_query(&q(&[("cursor", &c)]), Classification::Public).unwrap();
        assert_eq!(s.to_body(&crate::privacy::SecretKey([1; 32]), &[]).unwrap()["search_after"], json!([1700000000000i64, "id-1"]));
    }
}
