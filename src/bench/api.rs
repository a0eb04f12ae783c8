//! The API against what it fronts, in the same run: HTTP bulk ingest (NDJSON through
//! `audit-api`, acknowledged after `acks=all`) against producing the same events to Kafka
//! directly, and the search phase's questions over its ≥ 1M documents through the API against
//! the very same query bodies sent straight to OpenSearch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::data::{rate, Prepared};
use super::env::Phase;
use super::fleet::{percentiles, Latency};
use super::produce::{produce, Offered};
use super::proc::StageProc;
use crate::api::auth::{issue, AuthSettings, Role};
use crate::event::Classification;
use crate::index::client::SearchClient;

#[derive(Debug, Clone, Serialize)]
pub struct ApiIngest {
    pub events: u64,
    pub per_request: usize,
    pub concurrent_requests: usize,
    pub http_seconds: f64,
    pub http_events_per_sec: f64,
    pub kafka_seconds: f64,
    pub kafka_events_per_sec: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiQuery {
    pub name: String,
    pub query_string: String,
    pub hits: u64,
    pub api: Latency,
    pub direct: Latency,
    pub overhead_p50_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiBench {
    pub ingest: Option<ApiIngest>,
    pub queries: Vec<ApiQuery>,
    pub docs: u64,
    pub note: &'static str,
}

/// A free port on loopback for the API to listen on.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct ApiRun<'a> {
    pub bin_dir: &'a std::path::Path,
    pub log_dir: &'a std::path::Path,
    pub phase: &'a Phase,
    pub brokers: &'a str,
    pub extra_env: &'a [(String, String)],
    /// The search phase's index prefix (its documents), and its questions as query strings.
    pub search_prefix: Option<String>,
    pub questions: Vec<(String, String)>,
    pub docs: u64,
    pub repeat: usize,
}

pub async fn run(args: ApiRun<'_>, events: &Arc<Vec<Prepared>>, ingest_events: u64) -> anyhow::Result<ApiBench> {
    let port = free_port()?;
    let secret = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let mut env = args.phase.env(args.brokers);
    if let Some(p) = &args.search_prefix {
        env.push(("AUDITFLOW_INDEX_PREFIX".into(), p.clone()));
    }
    env.push(("AUDITFLOW_API_LISTEN".into(), format!("127.0.0.1:{port}")));
    env.push(("AUDITFLOW_JWT_SECRET".into(), secret.clone()));
    env.push(("AUDITFLOW_API_MAX_EVENTS".into(), "10000".into()));
    env.push(("AUDITFLOW_LOG".into(), "info,librdkafka=warn".into()));
    env.extend(args.extra_env.iter().cloned());
    let log = args.log_dir.join(format!("{}-audit-api.log", args.phase.name));
    let mut p = StageProc::spawn(&args.bin_dir.join("audit-api"), "api", &env, &log, &[])?;
    let result = measure(&args, &mut p, port, &secret, events, ingest_events).await;
    p.terminate(Duration::from_secs(10));
    result
}

async fn measure(args: &ApiRun<'_>, p: &mut StageProc, port: u16, secret: &str, events: &Arc<Vec<Prepared>>, ingest_events: u64) -> anyhow::Result<ApiBench> {
    p.wait_metrics_addr(Duration::from_secs(60))?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).pool_max_idle_per_host(8).build()?;
    // Up when it answers (the API binds after its start-up checks).
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{base}/openapi.json")).send().await.is_err() {
        if Instant::now() > deadline || !p.is_running() {
            bail!("audit-api did not start: {}", p.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let auth = AuthSettings { jwt_secret: Some(secret.to_string()), ..AuthSettings::default() };
    let now = chrono::Utc::now().timestamp();
    let ingest_token = issue(&auth, "bench-ingest", &[Role::Ingest], Classification::Public, &[], 3600, now)?;
    let analyst = issue(&auth, "bench-analyst", &[Role::Analyst], Classification::Restricted, &[], 3600, now)?;

    // Ingest: NDJSON of 1,000 events, four requests in flight.
    let ingest = if ingest_events > 0 {
        let n = (ingest_events as usize).min(events.len());
        let per_request = 1000usize;
        let concurrent = 4usize;
        let bodies: Vec<Vec<u8>> = events[..n]
            .chunks(per_request)
            .map(|c| {
                let mut b = Vec::with_capacity(c.iter().map(|e| e.json.len() + 1).sum());
                for e in c {
                    b.extend_from_slice(&e.json);
                    b.push(b'\n');
                }
                b
            })
            .collect();
        let bodies = Arc::new(bodies);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrent {
            let (http, base, token, bodies, next) = (http.clone(), base.clone(), ingest_token.clone(), bodies.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { return Ok::<u64, anyhow::Error>(0) };
                    let r = http
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(&token)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await?;
                    if r.status().as_u16() != 202 {
                        bail!("ingest answered {}: {}", r.status(), r.text().await.unwrap_or_default());
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let http_seconds = started.elapsed().as_secs_f64();
        // The same events, straight to Kafka with the benchmark's producer.
        let config = args.phase.config(args.brokers)?;
        let topic = config.topics.raw.name.clone();
        let all = events.clone();
        // The first n of the same events (produce takes them in order).
        let produced = tokio::task::spawn_blocking(move || produce(&config, &topic, &all, Offered::AsFastAsPossible { events: n as u64 }, false, None, None)).await??;
        let kafka_seconds = produced.acked.duration_since(produced.started).as_secs_f64();
        let (h, k) = (rate(n as u64, http_seconds), rate(n as u64, kafka_seconds));
        Some(ApiIngest {
            events: n as u64,
            per_request,
            concurrent_requests: concurrent,
            http_seconds,
            http_events_per_sec: h,
            kafka_seconds,
            kafka_events_per_sec: k,
            ratio: if k > 0.0 { h / k } else { 0.0 },
        })
    } else {
        None
    };

    // Search: the API and OpenSearch, alternating, the same query each time.
    let mut queries = Vec::new();
    if let Some(prefix) = &args.search_prefix {
        let config = args.phase.config(args.brokers)?;
        let mut settings = config.index.clone();
        settings.prefix = prefix.clone();
        let client = SearchClient::new(&settings)?;
        let key = config.privacy.pseudonym_key()?;
        let pattern = format!("{prefix}-*");
        for (name, qs) in &args.questions {
            let params: std::collections::HashMap<String, String> = url_pairs(qs);
            let q = crate::api::events::search_query(&params, Classification::Restricted).map_err(|e| anyhow::anyhow!("{name}: {}", e.detail))?;
            let body = q.to_body(&key, &config.privacy.personal_fields).map_err(|e| anyhow::anyhow!("{name}: {}", e.0))?;
            let (mut api_ms, mut direct_ms) = (Vec::new(), Vec::new());
            let mut hits = 0;
            for i in 0..args.repeat + 5 {
                super::proc::check_abort()?;
                let t = Instant::now();
                let r = http.get(format!("{base}/v1/events?{qs}")).bearer_auth(&analyst).send().await?;
                if !r.status().is_success() {
                    bail!("{name}: the API answered {}: {}", r.status(), r.text().await.unwrap_or_default());
                }
                let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?).context("API answer")?;
                let a = t.elapsed().as_secs_f64() * 1000.0;
                let t = Instant::now();
                let d = client.search(&pattern, &body).await?;
                let direct = t.elapsed().as_secs_f64() * 1000.0;
                if i >= 5 {
                    api_ms.push(a);
                    direct_ms.push(direct);
                }
                hits = v["total"].as_u64().unwrap_or(0);
                let direct_total = d.pointer("/hits/total/value").and_then(serde_json::Value::as_u64).unwrap_or(0);
                if hits != direct_total {
                    bail!("{name}: the API found {hits}, OpenSearch {direct_total}");
                }
            }
            let api = percentiles("client side through audit-api (token check, self-audit event to audit-raw, query), after 5 warm-up runs", &mut api_ms);
            let direct = percentiles("client side, the same body straight to OpenSearch, after 5 warm-up runs", &mut direct_ms);
            queries.push(ApiQuery { name: name.clone(), query_string: qs.clone(), hits, overhead_p50_ms: api.p50_ms - direct.p50_ms, api, direct });
        }
    }
    Ok(ApiBench {
        ingest,
        queries,
        docs: args.docs,
        note: "one audit-api instance on the same two cores as the stack and the client",
    })
}

/// A query string from parameters (every byte but unreserved ones percent-encoded).
pub fn query_string(pairs: &[(&str, String)]) -> String {
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    };
    pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
}

fn url_pairs(qs: &str) -> std::collections::HashMap<String, String> {
    let dec = |v: &str| -> String {
        let b = v.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (b[i], b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(x)) => {
                    out.push(x);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    qs.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), dec(v))).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_strings_round_trip() {
        let qs = super::query_string(&[("from", "2026-12-01T00:00:00+00:00".into()), ("q", "Invalid credentials".into()), ("ip", "10.1.2.0/24".into())]);
        assert_eq!(qs, "from=2026-12-01T00%3A00%3A00%2B00%3A00&q=Invalid%20credentials&ip=10.1.2.0%2F24");
        let back = super::url_pairs(&qs);
        assert_eq!(back["from"], "2026-12-01T00:00:00+00:00");
        assert_eq!(back["ip"], "10.1.2.0/24");
    }
}
