//! `POST /v1/events`: events from services that cannot speak Kafka.
//!
//! The body is one JSON object, a JSON array, or NDJSON. Each event is validated exactly like
//! `auditflow emit` and `audit-enrich`; the bad ones are reported by index and never sent. The
//! good ones go to `audit-raw` with the idempotent producer and the answer waits for every
//! acknowledgement (`acks=all`). Retries are harmless when the events carry their own ids and
//! times, or when the request carries an `Idempotency-Key`: the key fixes the ids (UUIDv5 of
//! caller, key and index) and the receive time given to events without one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::problem::{ApiResult, Problem};
use super::server::{read_body, AppState, Ctx};
use crate::enrich::{validate_raw, EnrichConfig};
use crate::event::{RawEvent, RawTimestamp};

/// Namespace of the ids an Idempotency-Key derives.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d1c_0a57_8b1e_4c8e_9a0e_6f3b_2b7d_1c44);

#[derive(Debug, Default, PartialEq)]
pub struct Prepared {
    /// Index in the request and the event, id and time filled in.
    pub accepted: Vec<(usize, RawEvent)>,
    pub errors: Vec<(usize, String)>,
}

/// The events of a body, before validation. `None`: a body that is neither JSON nor NDJSON.
pub fn split(body: &[u8], ndjson: bool) -> Result<Vec<Result<RawEvent, String>>, String> {
    let one = |v: Value| serde_json::from_value::<RawEvent>(v).map_err(|e| format!("not an event: {e}"));
    if ndjson {
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
        return Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<Value>(l).map_err(|e| format!("invalid JSON: {e}")).and_then(one))
            .collect());
    }
    match serde_json::from_slice::<Value>(body).map_err(|e| format!("invalid JSON: {e}"))? {
        Value::Array(items) => Ok(items.into_iter().map(one).collect()),
        v @ Value::Object(_) => Ok(vec![one(v)]),
        _ => Err("the body is neither an event object nor an array of events".into()),
    }
}

/// Give each event an id and (when missing) the receive time, then validate it.
pub fn prepare(items: Vec<Result<RawEvent, String>>, enrich: &EnrichConfig, id_base: Option<&str>, received: DateTime<Utc>) -> Prepared {
    let mut out = Prepared::default();
    let at = received.to_rfc3339_opts(SecondsFormat::Micros, true);
    for (i, item) in items.into_iter().enumerate() {
        let mut raw = match item {
            Ok(r) => r,
            Err(e) => {
                out.errors.push((i, e));
                continue;
            }
        };
        if raw.id.is_none() {
            raw.id = Some(match id_base {
                Some(base) => uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, format!("{base}\u{0}{i}").as_bytes()).to_string(),
                None => uuid::Uuid::new_v4().to_string(),
            });
        }
        if raw.timestamp.is_none() {
            raw.timestamp = Some(RawTimestamp::Rfc3339(at.clone()));
        }
        match validate_raw(&raw, enrich) {
            Ok(()) => out.accepted.push((i, raw)),
            Err(r) => out.errors.push((i, r.to_string())),
        }
    }
    out
}

/// The receive time an Idempotency-Key stands for: its first attempt's. 422 when the key was
/// used before with another body.
async fn first_attempt(state: &AppState, caller: &str, key: &str, digest: &[u8]) -> ApiResult<DateTime<Utc>> {
    // Keys are kept for a day; expired ones go as new ones arrive.
    sqlx::query("DELETE FROM api_idempotency_keys WHERE received_at < now() - interval '24 hours'").execute(&state.pool).await?;
    let row: (Vec<u8>, DateTime<Utc>) = sqlx::query_as(
        "WITH ins AS (INSERT INTO api_idempotency_keys (caller, key, body_sha256, received_at) VALUES ($1, $2, $3, now())
                      ON CONFLICT (caller, key) DO NOTHING RETURNING body_sha256, received_at)
         SELECT body_sha256, received_at FROM ins
         UNION ALL SELECT body_sha256, received_at FROM api_idempotency_keys WHERE caller = $1 AND key = $2
         LIMIT 1",
    )
    .bind(caller)
    .bind(key)
    .bind(digest)
    .fetch_one(&state.pool)
    .await?;
    if row.0 != digest {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "this Idempotency-Key was used with another body"));
    }
    Ok(row.1)
}

pub async fn post_events(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ndjson = match media.as_str() {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => true,
        _ => return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json or application/x-ndjson")),
    };
    let key = headers.get("idempotency-key").map(|v| v.to_str().map(str::to_string)).transpose().map_err(|_| Problem::bad_request("Idempotency-Key is not text"))?;
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(Problem::bad_request("Idempotency-Key must be 1–200 characters"));
    }
    let bytes = read_body(body, state.settings.max_body_bytes).await?;
    let items = split(&bytes, ndjson).map_err(Problem::bad_request)?;
    if items.len() > state.settings.max_events {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{} events in one request; the limit is {}", items.len(), state.settings.max_events)));
    }
    if items.is_empty() {
        return Err(Problem::bad_request("no event in the body"));
    }
    let caller = ctx.subject().to_string();
    let (id_base, received) = match &key {
        Some(k) => {
            let digest = Sha256::digest(&bytes);
            let at = first_attempt(&state, &caller, k, &digest).await?;
            (Some(format!("{caller}\u{0}{k}")), at)
        }
        None => (None, Utc::now()),
    };
    let prepared = prepare(items, &state.enrich, id_base.as_deref(), received);
    let mut errors: Vec<(usize, String)> = prepared.errors;
    if prepared.accepted.is_empty() {
        return Err(Problem::bad_request("no event in the request is valid; nothing was sent").with(json!({"errors": error_list(&errors)})));
    }
    let events: Vec<RawEvent> = prepared.accepted.iter().map(|(_, e)| e.clone()).collect();
    // The caller's trace, if it sent one (W3C Trace Context over HTTP): the events join it.
    let parent = headers.get(crate::trace::TRACEPARENT).and_then(|v| crate::trace::TraceParent::parse(v.as_bytes()));
    let refused = state.producer.send_all(&events, parent).await.map_err(|e| Problem::internal("Kafka (audit-raw)", e))?;
    // An event the broker refuses for good is reported like an invalid one; the rest stand.
    let refused_at: std::collections::HashSet<usize> = refused.iter().map(|(i, _)| *i).collect();
    errors.extend(refused.into_iter().map(|(i, why)| (prepared.accepted[i].0, why)));
    errors.sort_by_key(|(i, _)| *i);
    let ids: Vec<Value> = prepared
        .accepted
        .iter()
        .enumerate()
        .filter(|(n, _)| !refused_at.contains(n))
        .map(|(_, (i, e))| json!({"index": i, "id": e.id}))
        .collect();
    if ids.is_empty() {
        return Err(Problem::bad_request("the broker refused every event; nothing was stored").with(json!({"errors": error_list(&errors)})));
    }
    let body = json!({"accepted": ids.len(), "rejected": errors.len(), "ids": ids, "errors": error_list(&errors)});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn error_list(errors: &[(usize, String)]) -> Vec<Value> {
    errors.iter().map(|(i, e)| json!({"index": i, "error": e})).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_and_bad_events_are_reported_by_index() {
        let good = r#"{"action":"login","resource":"auth","userId":"u1"}"#;
        let nd = format!("{good}\n\nnot json\n{{\"action\":\"\"}}\n{good}\n");
        let items = split(nd.as_bytes(), true).unwrap();
        assert_eq!(items.len(), 4);
        let now = Utc::now();
        let p = prepare(items, &EnrichConfig::default(), Some("alice\u{0}k1"), now);
        assert_eq!(p.accepted.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(p.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2]);
        // The same key and body give the same ids and times; another key other ids.
        let again = prepare(split(nd.as_bytes(), true).unwrap(), &EnrichConfig::default(), Some("alice\u{0}k1"), now);
        assert_eq!(p, again);
        let other = prepare(split(nd.as_bytes(), true).unwrap(), &EnrichConfig::default(), Some("alice\u{0}k2"), now);
        assert_ne!(p.accepted[0].1.id, other.accepted[0].1.id);
        // An array and a single object.
        assert_eq!(split(format!("[{good},{good}]").as_bytes(), false).unwrap().len(), 2);
        assert_eq!(split(good.as_bytes(), false).unwrap().len(), 1);
        assert!(split(b"42", false).is_err());
        // Ids the client chose are kept.
        let mine = prepare(split(br#"{"id":"my-1","action":"a","resource":"r"}"#, false).unwrap(), &EnrichConfig::default(), None, now);
        assert_eq!(mine.accepted[0].1.id.as_deref(), Some("my-1"));
    }
}
