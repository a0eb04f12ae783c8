//! The search store's figures: the limit of `audit-index` (a plain `_bulk` of the same
//! documents straight into OpenSearch, one request at a time at the stage's batch size),
//! produce → searchable in the fleet (see [`probe_searchable`]), and the latency of the CLI's
//! typical queries over a large index.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use super::data::{enrich_one, rate, Prepared};
use super::fleet::{percentiles, settle, Latency, MAX_PROBES_PER_POLL};
use super::produce::Probe;
use crate::demo::EventMix;
use crate::enrich::Enricher;
use crate::event::EnrichedEvent;
use crate::index::client::SearchClient;
use crate::index::query::{read_result, SearchQuery};
use crate::index::{self, BulkDoc, IndexSettings, ItemOutcome};
use crate::privacy::{PersonalField, SecretKey};

/// Plain `_bulk` of the stage's documents: what OpenSearch on this machine takes at best.
#[derive(Debug, Clone, Serialize)]
pub struct BulkLimit {
    pub description: String,
    pub docs: u64,
    pub batch: usize,
    pub seconds: f64,
    pub docs_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryLatency {
    pub name: String,
    /// The same question as `auditflow search` arguments.
    pub cli: String,
    pub hits: u64,
    /// Client side: request sent → response parsed (HTTP included).
    pub latency: Latency,
    /// OpenSearch's own `took`, median.
    pub took_p50_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchLatency {
    pub docs: u64,
    pub indices: Vec<String>,
    pub load_seconds: f64,
    pub load_docs_per_sec: f64,
    pub queries: Vec<QueryLatency>,
    /// The same questions as API query strings, for the API phase.
    #[serde(skip)]
    pub api_questions: Vec<(String, String)>,
}

/// Source partitions the in-process events are spread over (as in the bench's topics).
const PARTITIONS: i32 = 6;

/// The documents `audit-index` writes for `events`.
pub fn documents(enricher: &Enricher, events: &[Prepared], key: &SecretKey, personal: &[PersonalField], settings: &IndexSettings) -> Vec<BulkDoc> {
    let now = Utc::now();
    events
        .iter()
        .enumerate()
        .filter_map(|(i, p)| enrich_one(enricher, &p.json, i, "audit-raw", PARTITIONS, now))
        .map(|ev| BulkDoc::of(&ev, settings, key, personal))
        .collect()
}

/// One `_bulk` of `create`s; every item must be created (a fresh index).
async fn bulk_once(client: &SearchClient, docs: &[BulkDoc]) -> anyhow::Result<()> {
    let refs: Vec<&BulkDoc> = docs.iter().collect();
    let response = client.bulk(index::bulk_body(&refs)).await?;
    let outcomes = index::bulk_outcomes(&response, docs.len()).map_err(anyhow::Error::msg)?;
    if let Some(bad) = outcomes.iter().find(|o| !matches!(o, ItemOutcome::Created)) {
        bail!("bulk item not created: {bad:?}");
    }
    Ok(())
}

/// Send `docs` in `_bulk` requests of `batch`, one at a time (as one stage instance does).
pub async fn bulk_limit(client: &SearchClient, settings: &IndexSettings, docs: &[BulkDoc], batch: usize) -> anyhow::Result<BulkLimit> {
    client.put_template(settings).await?;
    let started = Instant::now();
    for chunk in docs.chunks(batch.max(1)) {
        super::proc::check_abort()?;
        bulk_once(client, chunk).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(BulkLimit {
        description: format!("_bulk create of the stage's documents, {batch} per request, one request at a time, refresh_interval {}", settings.refresh_interval),
        docs: docs.len() as u64,
        batch,
        seconds,
        docs_per_sec: rate(docs.len() as u64, seconds),
    })
}

/// Index `n` documents of the mix (event times spread over the last 30 days, two requests in
/// flight), then time the CLI's typical queries over them.
#[allow(clippy::too_many_arguments)]
pub async fn search_latency(
    client: &SearchClient,
    settings: &IndexSettings,
    key: &SecretKey,
    personal: &[PersonalField],
    enricher: &Enricher,
    seed: u64,
    users: u64,
    n: u64,
    repeat: usize,
) -> anyhow::Result<SearchLatency> {
    client.put_template(settings).await?;
    let now = Utc::now();
    let span_ms = 30 * 86_400_000i64;
    let mut mix = EventMix::new(seed, users);
    let mut sample: Option<EnrichedEvent> = None;
    let mut failing: Option<EnrichedEvent> = None;
    let chunk = 5_000u64;
    let mut made = 0u64;
    let mut indexed = 0u64;
    // Two requests in flight, each batch built just before it is sent: a million documents
    // are never all in memory.
    let mut inflight: std::collections::VecDeque<tokio::task::JoinHandle<anyhow::Result<()>>> = Default::default();
    let started = Instant::now();
    while made < n {
        super::proc::check_abort()?;
        let take = chunk.min(n - made);
        let mut docs = Vec::with_capacity(take as usize);
        for _ in 0..take {
            let raw = mix.next_event();
            let json = serde_json::to_vec(&raw).unwrap_or_default();
            let i = made;
            made += 1;
            let Some(mut ev) = enrich_one(enricher, &json, i as usize, "audit-raw", PARTITIONS, now) else { continue };
            ev.timestamp = now - chrono::Duration::milliseconds(span_ms * i as i64 / n as i64);
            if sample.is_none() && ev.user_id.is_some() && ev.ip_address.is_some() {
                sample = Some(ev.clone());
            }
            if failing.is_none() && ev.error_message.is_some() {
                failing = Some(ev.clone());
            }
            docs.push(BulkDoc::of(&ev, settings, key, personal));
            indexed += 1;
        }
        if inflight.len() >= 2 {
            if let Some(h) = inflight.pop_front() {
                h.await??;
            }
        }
        let c = client.clone();
        inflight.push_back(tokio::spawn(async move { bulk_once(&c, &docs).await }));
    }
    for h in inflight {
        h.await??;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let pattern = format!("{}-*", settings.prefix);
    client.refresh(&pattern).await?;
    let count = client.get(&format!("{pattern}/_count")).await?;
    let docs = count["count"].as_u64().unwrap_or(0);
    if docs != indexed {
        bail!("{docs} documents searchable of {indexed} indexed");
    }
    let indices = client.indices(&settings.prefix).await?;

    let sample = sample.context("no event with a user and an address in the mix")?;
    let failing = failing.context("no failed event in the mix")?;
    let user = sample.user_id.clone().unwrap_or_default();
    let net = index::network_of(sample.ip_address.as_deref().unwrap_or_default()).unwrap_or_default();
    let text = failing.error_message.clone().unwrap_or_default();
    let base = SearchQuery { size: 20, interval: Some("1h".into()), ..SearchQuery::default() };
    let questions: Vec<(&str, String, SearchQuery)> = vec![
        ("one user, all time", format!("--user {user}"), SearchQuery { user: Some(user.clone()), ..base.clone() }),
        ("a /24, all time", format!("--ip {net}"), SearchQuery { ip: Some(net.clone()), ..base.clone() }),
        ("failed logins, last 7 days", "--action login --success false --from <now-7d>".into(), SearchQuery {
            action: Some("login".into()),
            success: Some(false),
            from: Some(now - chrono::Duration::days(7)),
            ..base.clone()
        }),
        ("free text on error messages", format!("{text:?}"), SearchQuery { text: Some(text.clone()), ..base.clone() }),
        ("high severity, last 24 h", "--severity HIGH --from <now-24h>".into(), SearchQuery {
            severity: Some("HIGH".into()),
            from: Some(now - chrono::Duration::hours(24)),
            ..base.clone()
        }),
        ("a user's failures in a /24, last 30 days", format!("--user {user} --ip {net} --success false --from <now-30d>"), SearchQuery {
            user: Some(user.clone()),
            ip: Some(net.clone()),
            success: Some(false),
            from: Some(now - chrono::Duration::days(30)),
            ..base.clone()
        }),
    ];
    // The same questions as the API's query strings (for the API phase).
    let t = |d: chrono::Duration| (now - d).to_rfc3339();
    let api_questions: Vec<(String, String)> = vec![
        ("one user, all time".into(), super::api::query_string(&[("user", user.clone()), ("limit", "20".into())])),
        ("a /24, all time".into(), super::api::query_string(&[("ip", net.clone()), ("limit", "20".into())])),
        ("failed logins, last 7 days".into(), super::api::query_string(&[("action", "login".into()), ("success", "false".into()), ("from", t(chrono::Duration::days(7))), ("limit", "20".into())])),
        ("free text on error messages".into(), super::api::query_string(&[("q", text.clone()), ("limit", "20".into())])),
        ("high severity, last 24 h".into(), super::api::query_string(&[("severity", "HIGH".into()), ("from", t(chrono::Duration::hours(24))), ("limit", "20".into())])),
        ("a user's failures in a /24, last 30 days".into(), super::api::query_string(&[("user", user.clone()), ("ip", net.clone()), ("success", "false".into()), ("from", t(chrono::Duration::days(30))), ("limit", "20".into())])),
    ];
    let mut queries = Vec::new();
    for (name, cli, q) in questions {
        let body = q.to_body(key, personal).map_err(|e| anyhow::anyhow!("query {name}: {}", e.0))?;
        let mut ms = Vec::with_capacity(repeat);
        let mut took = Vec::with_capacity(repeat);
        let mut hits = 0;
        for i in 0..repeat + 5 {
            super::proc::check_abort()?;
            let t = Instant::now();
            let r = client.search(&pattern, &body).await?;
            let result = read_result(&r);
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            // The first few warm the caches the way a working cluster has them warm.
            if i >= 5 {
                ms.push(elapsed);
                took.push(r["took"].as_f64().unwrap_or(f64::NAN));
            }
            hits = result.total;
        }
        took.sort_by(f64::total_cmp);
        queries.push(QueryLatency {
            name: name.to_string(),
            cli,
            hits,
            latency: percentiles("client side, request → parsed response, after 5 warm-up runs", &mut ms),
            took_p50_ms: took.get(took.len() / 2).copied().unwrap_or(f64::NAN),
        });
    }
    Ok(SearchLatency { docs, indices, load_seconds, load_docs_per_sec: rate(docs, load_seconds), queries, api_questions })
}

/// Look pending probes up with a search (so a hit means searchable, after a refresh, not only
/// stored); record the latency of the ones found.
pub async fn probe_searchable(client: &SearchClient, pattern: &str, pending: &mut Vec<Probe>, visible: &mut Vec<f64>) -> anyhow::Result<()> {
    let take = pending.len().min(MAX_PROBES_PER_POLL);
    if take == 0 {
        return Ok(());
    }
    let ids: Vec<&str> = pending[..take].iter().map(|(id, _)| id.as_str()).collect();
    let body = json!({"size": take, "_source": false, "query": {"ids": {"values": ids}}});
    let r = match client.search(pattern, &body).await {
        Ok(r) => r,
        // The first document creates the index: until then there is nothing to search.
        Err(_) => return Ok(()),
    };
    let found: Vec<String> = r["hits"]["hits"].as_array().into_iter().flatten().filter_map(|h| h["_id"].as_str().map(str::to_string)).collect();
    settle(pending, &found, visible);
    Ok(())
}

/// Delete every index and the template under `prefix`.
pub async fn delete_prefix(client: &SearchClient, prefix: &str) -> anyhow::Result<()> {
    for index in client.indices(prefix).await? {
        client.delete_index(&index).await?;
    }
    client.delete_template(&format!("{prefix}-template")).await?;
    Ok(())
}

/// Wait (bounded) until the cluster answers.
pub async fn wait_ready(client: &SearchClient, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match client.health().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e).context("OpenSearch not ready"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
