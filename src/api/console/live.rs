//! The console's live view: `/ui/alerts/live` streams the alerts whose state changed (triage,
//! new matches folded in, delivery) as server-sent events, so an open page follows them without
//! a reload. The stream is the API's own query under the caller's clearance; opening it is
//! audited once (`audit.alerts.watch`) instead of every poll. A stream lasts a few minutes and
//! the browser opens the next one itself, so each is authenticated again with the session
//! cookie; a session that ended gets no more updates.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use futures::stream::{self, Stream, StreamExt};
use serde_json::Value;

use super::{fail, problem_page};
use crate::api::alerts;
use crate::api::problem::Problem;
use crate::api::server::{AppState, Ctx};

/// How often the stream looks for changes.
const POLL: Duration = Duration::from_secs(2);
/// How long one stream lasts before the browser reconnects (and is authenticated again).
const LIFETIME: Duration = Duration::from_secs(300);
/// Changes sent per look at most; more wait for the next look.
const BATCH: i64 = 200;
/// Streams one API process serves at once; more are answered 503.
pub const MAX_STREAMS: usize = 256;

/// The fields of an alert a page may show and the stream keeps current.
const FIELDS: [&str; 8] = ["alertId", "triageStatus", "assignee", "triagedBy", "matchCount", "suppressedCount", "lastSeen", "dispatchStatus"];

struct Watch {
    state: Arc<AppState>,
    ctx: Ctx,
    since: DateTime<Utc>,
    until: Instant,
    first: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

pub async fn live(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Result<Response, Response> {
    let permit = state
        .live_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| problem_page(Some(&ctx), Problem::unavailable("too many live views are open on this API; the page still works with reloads")))?;
    // Database time, like `updated_at`: no clock skew between API replicas and PostgreSQL.
    let since: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&state.pool).await.map_err(|e| problem_page(Some(&ctx), e.into()))?;
    state.audit(&ctx, "audit.alerts.watch", None, None, 200, Value::Null).await.map_err(fail(&ctx))?;
    let watch = Watch { state, ctx, since, until: Instant::now() + LIFETIME, first: true, _permit: permit };
    let mut r = Sse::new(changes(watch)).keep_alive(KeepAlive::default()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn changes(watch: Watch) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(watch), |w| async move {
        let mut w = w?;
        if w.first {
            // Tell the browser to come back soon after the stream ends.
            w.first = false;
            return Some((vec![Event::default().retry(Duration::from_secs(3)).comment("live")], Some(w)));
        }
        if Instant::now() >= w.until {
            return None;
        }
        tokio::time::sleep(POLL).await;
        match alerts::changed_since(&w.state, w.ctx.clearance(), w.since, BATCH).await {
            Ok((changed, newest)) => {
                w.since = newest;
                let events = changed.iter().map(|a| Event::default().event("alert").data(summary(a).to_string())).collect();
                Some((events, Some(w)))
            }
            Err(e) => {
                // The browser reconnects; the page keeps what it shows.
                tracing::warn!(error = %e, "live view: alerts not read; ending the stream");
                None
            }
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

/// What the page needs of a changed alert: the fields it shows, and whether it is new.
fn summary(a: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for f in FIELDS {
        m.insert(f.to_string(), a[f].clone());
    }
    m.insert("created".into(), a["created"].clone());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_carries_the_shown_fields_only() {
        let a = serde_json::json!({"alertId": "x", "triageStatus": "open", "groupKey": {"user_id": "pseudonym:1"}, "created": true});
        let s = summary(&a);
        assert_eq!(s["triageStatus"], "open");
        assert_eq!(s["created"], true);
        assert!(s.get("groupKey").is_none());
    }
}
