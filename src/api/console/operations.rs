//! Pipeline health: each stage's lag per partition (committed position against the end of its
//! input), what persist stored over the last hour, and the newest dead letters with their reasons.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Extension;
use chrono::{DateTime, Utc};

use super::page::{cell, esc, histogram, page};
use super::{fail, nav, Page};
use crate::api::dlq;
use crate::api::problem::Problem;
use crate::api::server::{AppState, Ctx};
use crate::runtime::dlq::{H_ERROR_KIND, H_ERROR_MESSAGE, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC, H_STAGE};

pub async fn health_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Page {
    let lag = crate::cli::ops::lag(&state.config, Some(&state.pool)).await.map_err(|e| super::problem_page(Some(&ctx), Problem::internal("the stages' lag", e)))?;
    state.audit(&ctx, "audit.health", None, None, 200, serde_json::Value::Null).await.map_err(fail(&ctx))?;
    let mut body = String::from("<h2>Lag</h2><table><thead><tr><th>stage</th><th>input</th><th>partition</th><th>position</th><th>end</th><th>lag</th></tr></thead><tbody>");
    let mut total = 0i64;
    for l in &lag {
        total += l.lag;
        body.push_str(&format!(
            r#"<tr class="lag"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(l.stage), esc(&l.topic), l.partition, l.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into()), l.end, l.lag
        ));
    }
    body.push_str(&format!(r#"</tbody></table><p id="total-lag" data-lag="{total}">{total} message(s) behind in all</p>"#));
    // Rows persist committed per minute over the last hour (from the ledger itself).
    let per_minute: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT date_trunc('minute', created_at) AS m, count(*)::bigint FROM audit_events
          WHERE created_at > now() - interval '1 hour' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(|e| super::problem_page(Some(&ctx), e.into()))?;
    let stored: i64 = per_minute.iter().map(|(_, n)| n).sum();
    body.push_str(&format!(r#"<h2>Stored in the last hour</h2><p id="stored-hour" data-stored="{stored}">{stored} event(s)</p>"#));
    let buckets: Vec<(String, u64)> = per_minute.iter().map(|(m, n)| (m.to_rfc3339(), *n as u64)).collect();
    body.push_str(&histogram(&buckets, |from, to| {
        let to = if to.is_empty() { String::new() } else { format!("&to={}", super::page::enc(to)) };
        format!("/ui/events?from={}{to}", super::page::enc(from))
    }));
    let mut q = HashMap::new();
    q.insert("limit".to_string(), "20".to_string());
    let letters = dlq::list(State(state.clone()), Extension(ctx.clone()), Query(q)).await.map_err(fail(&ctx))?.0;
    body.push_str(&format!(r#"<h2>Dead letters</h2><p id="dead-letters" data-total="{}">{} in all; the newest:</p>"#, cell(&letters["total"]), cell(&letters["total"])));
    body.push_str("<table><thead><tr><th>position</th><th>stage</th><th>kind</th><th>reason</th><th>source</th></tr></thead><tbody>");
    for d in letters["deadLetters"].as_array().into_iter().flatten() {
        let h = &d["headers"];
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}:{}</td></tr>",
            cell(&d["position"]), cell(&h[H_STAGE]), cell(&h[H_ERROR_KIND]), cell(&h[H_ERROR_MESSAGE]),
            cell(&h[H_SOURCE_TOPIC]), cell(&h[H_SOURCE_PARTITION]), cell(&h[H_SOURCE_OFFSET]),
        ));
    }
    body.push_str("</tbody></table>");
    Ok(page(StatusCode::OK, nav(&ctx, "Health"), "Pipeline health", &body))
}
