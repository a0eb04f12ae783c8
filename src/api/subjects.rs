//! Privacy officers: a subject's export (every stored event about them, personal fields in
//! clear) and erasure (crypto-shredding, answered with the signed receipt).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::subject_kind;
use super::problem::{ApiResult, Problem};
use super::server::{json_body, AppState, Ctx};
use crate::cli::privacy::{self as ops, EraseError};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

async fn reason(body: Body) -> ApiResult<String> {
    let b: ReasonBody = json_body(body, 16 * 1024).await?;
    let r = b.reason.trim();
    if r.is_empty() || r.chars().count() > 2000 {
        return Err(Problem::bad_request("a reason (1–2000 characters) is required"));
    }
    Ok(r.to_string())
}

pub async fn export(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path((kind, subject)): Path<(String, String)>, body: Body) -> ApiResult<Json<Value>> {
    let kind = subject_kind(&kind)?;
    let reason = reason(body).await?;
    let events = ops::export(&state.pool, &state.keys, kind, &subject).await?;
    let pseudonym = state.keys.pseudonym(kind, &subject);
    state.audit(&ctx, "audit.export", Some(pseudonym.clone()), Some(&reason), 200, json!({"events": events.len()})).await?;
    Ok(Json(json!({"subjectPseudonym": pseudonym, "events": events})))
}

pub async fn erase(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path((kind, subject)): Path<(String, String)>, body: Body) -> ApiResult<Json<Value>> {
    let kind = subject_kind(&kind)?;
    let reason = reason(body).await?;
    let signer = state.signer.as_ref().ok_or_else(|| Problem::unavailable("erasure needs the ledger's signing key on this API (AUDITFLOW_SIGNING_KEY)"))?;
    let pseudonym = state.keys.pseudonym(kind, &subject);
    // Audited before the keys go: an erasure nobody can trace is not done.
    state.audit(&ctx, "privacy.erase", Some(pseudonym.clone()), Some(&reason), 200, Value::Null).await?;
    let receipt = match ops::erase(&state.pool, &state.keys, signer, kind, &subject, &reason).await {
        Ok(r) => r,
        Err(EraseError::LegalHold(why)) => return Err(Problem::new(StatusCode::CONFLICT, format!("the subject is under legal hold ({why}); release the hold first"))),
        Err(EraseError::Database(e)) => return Err(e.into()),
    };
    let mut redacted = None;
    if let Some(client) = &state.search {
        match client.redact_subject(&state.config.index.prefix, &pseudonym).await {
            Ok(n) => redacted = Some(n),
            // The keys are gone already; erasing again finishes the search store.
            Err(e) => tracing::warn!(error = %e, "search store not redacted yet; erase again to finish"),
        }
    }
    Ok(Json(json!({
        "receipt": {
            "id": receipt.id, "subjectPseudonym": receipt.subject_pseudonym, "keysDestroyed": receipt.keys_destroyed,
            "eventsAffected": receipt.events_affected, "erasedAt": receipt.erased_at,
            "statement": receipt.statement, "signature": receipt.signature_hex, "keyId": signer.key_id,
        },
        "searchDocumentsRedacted": redacted,
    })))
}
