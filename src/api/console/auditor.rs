//! The auditor's pages: compliance figures per framework (with the report downloads) and the
//! ledger (latest verification, checkpoints, a new run).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde_json::Value;

use super::page::{bars, cell, enc, esc, histogram, page};
use super::{fail, filled, nav, query, Page};
use crate::api::problem::Problem;
use crate::api::server::{AppState, Ctx};
use crate::api::{compliance, ledger};

const FRAMEWORKS: [&str; 4] = ["sox", "gdpr", "hipaa", "pci"];

/// The report as the API answers it, in `format`.
async fn report(state: &Arc<AppState>, ctx: &Ctx, framework: &str, q: &HashMap<String, String>, format: &str) -> Result<axum::body::Bytes, Response> {
    let mut q = q.clone();
    q.insert("format".into(), format.into());
    let r = compliance::report(State(state.clone()), Extension(ctx.clone()), Path(framework.to_string()), Query(q)).await.map_err(fail(ctx))?;
    axum::body::to_bytes(r.into_body(), 64 * 1024 * 1024).await.map_err(|e| super::problem_page(Some(ctx), Problem::internal("the report", e)))
}

pub async fn compliance_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Query(q): Query<HashMap<String, String>>) -> Page {
    let mut q = filled(q);
    let framework = q.remove("framework").unwrap_or_else(|| "sox".into());
    if !FRAMEWORKS.contains(&framework.as_str()) {
        return Err(super::problem_page(Some(&ctx), Problem::bad_request("framework: sox, gdpr, hipaa or pci")));
    }
    let params: HashMap<String, String> = q.into_iter().filter(|(k, _)| k == "from" || k == "to").collect();
    let bytes = report(&state, &ctx, &framework, &params, "json").await?;
    let r: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut body = String::from(r#"<form class="filters" method="get" action="/ui/compliance"><label>framework<select name="framework">"#);
    for f in FRAMEWORKS {
        let sel = if f == framework { " selected" } else { "" };
        body.push_str(&format!("<option{sel}>{f}</option>"));
    }
    body.push_str(&format!(
        r#"</select></label><label>from<input name="from" value="{}"></label><label>to<input name="to" value="{}"></label><button type="submit">Show</button></form>"#,
        esc(params.get("from").map(String::as_str).unwrap_or("")),
        esc(params.get("to").map(String::as_str).unwrap_or("")),
    ));
    let t = &r["totals"];
    body.push_str(&format!(
        r#"<p class="muted">{} from {} to {}</p><dl><dt>records</dt><dd id="records">{}</dd><dt>events</dt><dd id="events">{}</dd><dt>failures</dt><dd id="failures">{}</dd><dt>privileged actions</dt><dd id="privileged">{}</dd><dt>alerts</dt><dd id="alerts">{}</dd></dl>"#,
        cell(&r["frameworkTitle"]), cell(&r["from"]), cell(&r["to"]),
        cell(&t["records"]), cell(&t["events"]), cell(&t["failures"]), cell(&t["privilegedActions"]), cell(&t["alerts"]),
    ));
    let days: Vec<(String, u64)> = r["perDay"].as_array().into_iter().flatten().map(|d| (d["day"].as_str().unwrap_or("").to_string(), d["events"].as_u64().unwrap_or(0))).collect();
    body.push_str("<h2>Events per day</h2>");
    body.push_str(&histogram(&days, |day, _| format!("/ui/compliance?framework={}&from={}", enc(&framework), enc(day))));
    let controls: Vec<(String, u64)> = r["controls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (format!("{} {}", c["control"].as_str().unwrap_or(""), c["name"].as_str().unwrap_or("")), c["events"].as_u64().unwrap_or(0)))
        .collect();
    body.push_str("<h2>By control</h2>");
    body.push_str(&bars(&controls, "events per control"));
    body.push_str("<table><thead><tr><th>control</th><th>name</th><th>events</th><th>failures</th><th>privileged</th></tr></thead><tbody>");
    for c in r["controls"].as_array().into_iter().flatten() {
        body.push_str(&format!("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", cell(&c["control"]), cell(&c["name"]), cell(&c["events"]), cell(&c["failures"]), cell(&c["privileged"])));
    }
    body.push_str("</tbody></table><h2>Download the report</h2><p>");
    let qs = query(&params);
    for f in ["html", "csv", "json"] {
        body.push_str(&format!(r#"<a href="/ui/compliance/{}/report.{f}?{}">{}</a> "#, enc(&framework), esc(&qs), f.to_uppercase()));
    }
    body.push_str("</p>");
    Ok(page(StatusCode::OK, nav(&ctx, "Compliance"), "Compliance", &body))
}

pub async fn report_download(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, Path((framework, file)): Path<(String, String)>, Query(q): Query<HashMap<String, String>>) -> Page {
    let (format, media) = match file.as_str() {
        "report.html" => ("html", "text/html; charset=utf-8"),
        "report.csv" => ("csv", "text/csv; charset=utf-8"),
        "report.json" => ("json", "application/json"),
        _ => return Err(super::problem_page(Some(&ctx), Problem::not_found())),
    };
    let params: HashMap<String, String> = filled(q).into_iter().filter(|(k, _)| k == "from" || k == "to").collect();
    let bytes = report(&state, &ctx, &framework, &params, format).await?;
    let mut r = (StatusCode::OK, bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    // A download, never rendered as a console page.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}-report.{format}\"", framework.replace(|c: char| !c.is_ascii_alphanumeric(), ""))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"));
    Ok(r)
}

pub async fn ledger_page(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Page {
    let latest = ledger::latest(State(state.clone()), Extension(ctx.clone())).await;
    let mut body = String::from("<h2>Latest verification</h2>");
    match latest {
        Ok(v) => {
            let v = v.0;
            let result = match v["ok"].as_bool() {
                Some(true) => "verified: no break".to_string(),
                Some(false) => format!("BROKEN: {} finding(s)", v["report"]["breaks"].as_array().map(Vec::len).unwrap_or(0)),
                None if v["finishedAt"].is_null() => "running".to_string(),
                None => "could not run".to_string(),
            };
            body.push_str(&format!(
                r#"<dl><dt>result</dt><dd id="verification">{}</dd><dt>started</dt><dd>{} by {}</dd><dt>finished</dt><dd>{}</dd><dt>chains</dt><dd>{}</dd><dt>rows</dt><dd id="rows">{}</dd><dt>checkpoints</dt><dd>{}</dd><dt>compared with</dt><dd>{}</dd></dl>"#,
                esc(&result), cell(&v["startedAt"]), cell(&v["startedBy"]), cell(&v["finishedAt"]),
                cell(&v["report"]["chains"]), cell(&v["report"]["rows"]), cell(&v["report"]["checkpoints"]), cell(&v["report"]["comparedWith"]),
            ));
            for b in v["report"]["breaks"].as_array().into_iter().flatten().take(50) {
                body.push_str(&format!("<p class=\"error\">{} at {}: {} ({})</p>", cell(&b["chain"]), cell(&b["seq"]), cell(&b["kind"]), cell(&b["detail"])));
            }
        }
        Err(p) if p.status == StatusCode::NOT_FOUND => body.push_str(r#"<p id="verification">none has run yet</p>"#),
        Err(p) => return Err(super::problem_page(Some(&ctx), p)),
    }
    let csrf = ctx.csrf.as_deref().map(|c| format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(c))).unwrap_or_default();
    body.push_str(&format!(r#"<form method="post" action="/ui/ledger/verify">{csrf}<button type="submit">Run a verification</button></form><h2>Newest checkpoints</h2>"#));
    let mut q = HashMap::new();
    q.insert("limit".to_string(), "20".to_string());
    let cps = ledger::checkpoints(State(state.clone()), Extension(ctx.clone()), Query(q)).await.map_err(fail(&ctx))?.0;
    body.push_str("<table><thead><tr><th>signed</th><th>chain</th><th>seq</th><th>tree root</th><th>key</th><th>published</th></tr></thead><tbody>");
    for c in cps["checkpoints"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&c["signedAt"]), cell(&c["chain"]), cell(&c["seq"]),
            esc(c["treeRoot"].as_str().map(|r| &r[..r.len().min(16)]).unwrap_or("")), cell(&c["keyId"]), cell(&c["publishedAt"]),
        ));
    }
    body.push_str("</tbody></table>");
    Ok(page(StatusCode::OK, nav(&ctx, "Ledger"), "Ledger", &body))
}

pub async fn verify_form(State(state): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>, body: axum::body::Body) -> Page {
    super::check_csrf(&ctx, body).await?;
    ledger::start(State(state), Extension(ctx.clone())).await.map_err(fail(&ctx))?;
    Ok(Redirect::to("/ui/ledger").into_response())
}
