//! The window store shared by every `audit-rules` instance: Redis, one Lua script per stateful
//! evaluation (atomic, so two instances cannot both decide the same crossing), a batch's scripts
//! sent as a few pipelines (one round trip per few hundred evaluations, not one per rule or
//! event).
//!
//! Keys, under the configured prefix `P` (default `auditflow:`); the `{…}` hash tag keeps a
//! window's keys in one cluster slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P w:{rule\|group}:ev` | zset | threshold: event id → event time |
//! | `P w:{rule\|group}:dv`, `:di` | zset, hash | distinct count: value → newest time, value → its event id |
//! | `P w:{rule\|group}:s1` … `:sN`, `:used` | zsets | sequence: step events, events used by a fired chain |
//! | `P w:{rule\|group}:fz`, `:fh` | zset, hash | firings: trigger id → window end, trigger id → figures |
//! | `P w:{rule\|group}:tp`, `:tl` | zset, hash | travel: located event id → time, → "lat\|lon\|country\|place" |
//! | `P w:{rule\|group}:fv`, `:fm` | hashes | first seen: value → last shown, `since` → first event time |
//! | `P a:{rule}:seen`, `:reported` | zset, hash | absence: group → newest event time, group → silence reported |
//! | `P a:{rule}:p:<group>\n<start>`, `P a:{rule}:open`, `:closed` | hash, zsets | aggregate: a period's member → event id; open and closed periods by end |
//! | `P block:<ip\|user>:<subject>` | string | block decision (JSON), expiring with the block |
//!
//! Every key expires `2 × window + lateness + 10 min` after its last write.
//!
//! [`WindowStore::start`] sends a batch's operations while the engine still prepares the rest:
//! each call becomes a task that waits for the previous one to be answered before it sends, so
//! operations reach Redis in the order they were made, and the engine's work overlaps Redis's.
//!
//! Redis unreachable, slow (past `redis_timeout_ms`) or failing → [`TransientError`]; the runtime
//! retries the whole batch, and the scripts being idempotent, a partly applied pipeline is simply
//! applied again.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, Value};

use super::store::{state_ttl_ms, ClosedPeriod, Firing, Pending, WindowKey, WindowOp, WindowOutcome, WindowStore, EVIDENCE_CAP};
use crate::error::TransientError;

const COMMON: &str = include_str!("lua/common.lua");

/// Most scripts sent in one pipeline.
const PIPELINE_MAX: usize = 2000;

/// A Lua script: its source (for SCRIPT LOAD) and SHA1 (for EVALSHA).
struct Script {
    code: String,
    sha: String,
}

impl Script {
    fn new(code: String) -> Script {
        let sha = redis::Script::new(&code).get_hash().to_string();
        Script { code, sha }
    }
    fn get_hash(&self) -> &str {
        &self.sha
    }
}

struct Scripts {
    threshold: Script,
    distinct: Script,
    sequence: Script,
    temporal: Script,
    absence: Script,
    aggregate: Script,
    travel: Script,
    first_seen: Script,
    block: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_common = |body: &str| Script::new(format!("{COMMON}\n{body}"));
        Scripts {
            threshold: with_common(include_str!("lua/threshold.lua")),
            distinct: with_common(include_str!("lua/distinct.lua")),
            sequence: with_common(include_str!("lua/sequence.lua")),
            temporal: with_common(include_str!("lua/temporal.lua")),
            absence: with_common(include_str!("lua/absence.lua")),
            aggregate: with_common(include_str!("lua/aggregate.lua")),
            travel: with_common(include_str!("lua/travel.lua")),
            first_seen: with_common(include_str!("lua/first_seen.lua")),
            block: Script::new(include_str!("lua/block.lua").to_string()),
        }
    }

    fn all(&self) -> [&Script; 9] {
        [
            &self.threshold,
            &self.distinct,
            &self.sequence,
            &self.temporal,
            &self.absence,
            &self.aggregate,
            &self.travel,
            &self.first_seen,
            &self.block,
        ]
    }
}

/// Key names, public so tests and operators can find the state of a window.
pub struct RedisKeys<'a> {
    pub prefix: &'a str,
}

impl RedisKeys<'_> {
    /// `P w:{rule|group}:<suffix>`
    pub fn window(&self, rule: &str, group: &str, suffix: &str) -> String {
        format!("{}w:{{{rule}|{group}}}:{suffix}", self.prefix)
    }
    pub fn absence(&self, rule: &str, suffix: &str) -> String {
        format!("{}a:{{{rule}}}:{suffix}", self.prefix)
    }
    /// Keys of a rule as a whole (absence, aggregate periods): `P a:{rule}:<suffix>`.
    pub fn rule(&self, rule: &str, suffix: &str) -> String {
        self.absence(rule, suffix)
    }
    pub fn block(&self, subject_type: &str, subject: &str) -> String {
        format!("{}block:{subject_type}:{subject}", self.prefix)
    }
}

pub struct RedisWindowStore {
    conn: ConnectionManager,
    handle: tokio::runtime::Handle,
    scripts: Arc<Scripts>,
    prefix: String,
    timeout: Duration,
    /// Signalled when the operations started last have been answered (or given up).
    last: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// How to read a script's reply.
#[derive(Clone, Copy)]
enum Reply {
    Done,
    Silent,
    Periods,
    Window,
}

impl Reply {
    fn of(op: &WindowOp) -> Reply {
        match op {
            WindowOp::Seen { .. } | WindowOp::Expect { .. } | WindowOp::Block { .. } => Reply::Done,
            WindowOp::ScanSilent { .. } => Reply::Silent,
            WindowOp::ClosePeriods { .. } => Reply::Periods,
            _ => Reply::Window,
        }
    }
}

fn transient(e: redis::RedisError) -> TransientError {
    if refuses_for_good(&e) {
        TransientError::refused("redis", e.to_string())
    } else {
        TransientError::new("redis", e.to_string())
    }
}

/// Whether Redis refused the operation itself, so the same input fails again however often it
/// is retried: a key of another type, a script's runtime error, an argument it rejects.
/// Capacity and availability (OOM, LOADING, READONLY, BUSY, TRYAGAIN, …) stay retryable, as do
/// connection faults: they pass.
fn refuses_for_good(e: &redis::RedisError) -> bool {
    const ARGUMENT_ERRORS: [&str; 7] = [
        "user_script",
        "Error running script",
        "not an integer",
        "out of range",
        "not a valid float",
        "maximum allowed size",
        "wrong number of arguments",
    ];
    // A pipeline reports each failing command's error; all of them must be of this kind.
    let Some(errors) = e.clone().into_server_errors() else { return false };
    !errors.is_empty()
        && errors.iter().all(|(_, se)| match se.code() {
            "WRONGTYPE" => true,
            "ERR" => ARGUMENT_ERRORS.iter().any(|m| se.details().is_some_and(|d| d.contains(m))),
            _ => false,
        })
}

impl RedisWindowStore {
    /// Connect (retrying in the background if Redis is not there yet is the connection
    /// manager's job; this fails only if the URL is unusable or the first connection fails).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<RedisWindowStore, TransientError> {
        RedisWindowStore::connect_client(redis::Client::open(url).map_err(transient)?, prefix, timeout).await
    }

    /// [`RedisWindowStore::connect`] with a client already built (TLS settings, see
    /// [`crate::redis_conn::client`]).
    pub async fn connect_client(
        client: redis::Client,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisWindowStore, TransientError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = client.get_connection_manager_with_config(config).await.map_err(transient)?;
        // Loaded up front: a Redis that knows some scripts but not others (an upgrade changed
        // one) would otherwise run a pipeline's first operations before the unknown script
        // stops it, and answer them again, with later events counted, on the retry.
        let scripts = Arc::new(Scripts::new());
        load_scripts(&mut conn, &scripts).await?;
        Ok(RedisWindowStore {
            conn,
            handle: tokio::runtime::Handle::current(),
            scripts,
            prefix: prefix.to_string(),
            timeout,
            last: None,
        })
    }

    fn keys(&self) -> RedisKeys<'_> {
        RedisKeys { prefix: &self.prefix }
    }

    fn build(&self, ops: &[WindowOp]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let k = self.keys();
        for op in ops {
            match op {
                WindowOp::Threshold { key, event_id, time_ms, window_ms, lateness_ms, limit } => {
                    let WindowKey { rule, group } = key;
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.threshold.get_hash())
                        .arg(3)
                        .arg(k.window(rule, group, "ev"))
                        .arg(k.window(rule, group, "fz"))
                        .arg(k.window(rule, group, "fh"))
                        .arg(event_id)
                        .arg(time_ms)
                        .arg(window_ms)
                        .arg(lateness_ms)
                        .arg(limit)
                        .arg(EVIDENCE_CAP)
                        .arg(state_ttl_ms(*window_ms, *lateness_ms));
                }
                WindowOp::Distinct { key, event_id, time_ms, value, window_ms, lateness_ms, more_than } => {
                    let WindowKey { rule, group } = key;
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.distinct.get_hash())
                        .arg(4)
                        .arg(k.window(rule, group, "dv"))
                        .arg(k.window(rule, group, "di"))
                        .arg(k.window(rule, group, "fz"))
                        .arg(k.window(rule, group, "fh"))
                        .arg(event_id)
                        .arg(time_ms)
                        .arg(value)
                        .arg(window_ms)
                        .arg(lateness_ms)
                        .arg(more_than)
                        .arg(EVIDENCE_CAP)
                        .arg(state_ttl_ms(*window_ms, *lateness_ms));
                }
                WindowOp::Sequence { key, event_id, time_ms, steps_mask, steps, within_ms, lateness_ms, keep } => {
                    let WindowKey { rule, group } = key;
                    let c = pipe.cmd("EVALSHA").arg(self.scripts.sequence.get_hash()).arg(steps + 3);
                    for s in 1..=*steps {
                        c.arg(k.window(rule, group, &format!("s{s}")));
                    }
                    c.arg(k.window(rule, group, "used"))
                        .arg(k.window(rule, group, "fz"))
                        .arg(k.window(rule, group, "fh"))
                        .arg(event_id)
                        .arg(time_ms)
                        .arg(steps_mask)
                        .arg(steps)
                        .arg(within_ms)
                        .arg(lateness_ms)
                        .arg(state_ttl_ms(*within_ms, *lateness_ms))
                        .arg(keep);
                }
                WindowOp::Temporal { key, event_id, time_ms, steps_mask, steps, at_least, within_ms, lateness_ms, keep } => {
                    let WindowKey { rule, group } = key;
                    let c = pipe.cmd("EVALSHA").arg(self.scripts.temporal.get_hash()).arg(steps + 3);
                    for s in 1..=*steps {
                        c.arg(k.window(rule, group, &format!("s{s}")));
                    }
                    c.arg(k.window(rule, group, "used"))
                        .arg(k.window(rule, group, "fz"))
                        .arg(k.window(rule, group, "fh"))
                        .arg(event_id)
                        .arg(time_ms)
                        .arg(steps_mask)
                        .arg(steps)
                        .arg(at_least)
                        .arg(within_ms)
                        .arg(lateness_ms)
                        .arg(state_ttl_ms(*within_ms, *lateness_ms))
                        .arg(keep);
                }
                WindowOp::Aggregate { rule, group, event_id, member, period_start, period_ms, ttl_ms } => {
                    let period = format!("{group}\n{period_start}");
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.aggregate.get_hash())
                        .arg(3)
                        .arg(format!("{}{period}", k.rule(rule, "p:")))
                        .arg(k.rule(rule, "open"))
                        .arg(k.rule(rule, "closed"))
                        .arg("add")
                        .arg(member)
                        .arg(event_id)
                        .arg(&period)
                        .arg(period_start + period_ms)
                        .arg(ttl_ms);
                }
                WindowOp::ClosePeriods { rule, cutoff_ms, min, max, limit, retention_ms } => {
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.aggregate.get_hash())
                        .arg(2)
                        .arg(k.rule(rule, "open"))
                        .arg(k.rule(rule, "closed"))
                        .arg("close")
                        .arg(cutoff_ms)
                        .arg(min)
                        .arg(max.to_string())
                        .arg(limit)
                        .arg(retention_ms)
                        .arg(k.rule(rule, "p:"))
                        .arg(EVIDENCE_CAP);
                }
                WindowOp::Travel { key, event_id, time_ms, latitude, longitude, country, place, within_ms, max_speed_kmh, min_distance_km, keep } => {
                    let WindowKey { rule, group } = key;
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.travel.get_hash())
                        .arg(4)
                        .arg(k.window(rule, group, "tp"))
                        .arg(k.window(rule, group, "tl"))
                        .arg(k.window(rule, group, "fz"))
                        .arg(k.window(rule, group, "fh"))
                        .arg(event_id)
                        .arg(time_ms)
                        .arg(latitude)
                        .arg(longitude)
                        .arg(country)
                        .arg(place)
                        .arg(within_ms)
                        .arg(max_speed_kmh.to_string())
                        .arg(min_distance_km.to_string())
                        .arg(keep)
                        .arg(state_ttl_ms(*within_ms, *within_ms));
                }
                WindowOp::FirstSeen { key, event_id, time_ms, value, learning_ms, forget_ms } => {
                    let WindowKey { rule, group } = key;
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.first_seen.get_hash())
                        .arg(4)
                        .arg(k.window(rule, group, "fv"))
                        .arg(k.window(rule, group, "fm"))
                        .arg(k.window(rule, group, "fz"))
                        .arg(k.window(rule, group, "fh"))
                        .arg(event_id)
                        .arg(time_ms)
                        .arg(value)
                        .arg(learning_ms)
                        .arg(forget_ms);
                }
                WindowOp::Seen { rule, group, time_ms, window_ms } => {
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.absence.get_hash())
                        .arg(2)
                        .arg(k.absence(rule, "seen"))
                        .arg(k.absence(rule, "reported"))
                        .arg("seen")
                        .arg(group)
                        .arg(time_ms)
                        .arg(state_ttl_ms(*window_ms, *window_ms));
                }
                WindowOp::Expect { rule, group, now_ms, window_ms } => {
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.absence.get_hash())
                        .arg(2)
                        .arg(k.absence(rule, "seen"))
                        .arg(k.absence(rule, "reported"))
                        .arg("expect")
                        .arg(group)
                        .arg(now_ms)
                        .arg(state_ttl_ms(*window_ms, *window_ms));
                }
                WindowOp::ScanSilent { rule, now_ms, window_ms, limit } => {
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.absence.get_hash())
                        .arg(2)
                        .arg(k.absence(rule, "seen"))
                        .arg(k.absence(rule, "reported"))
                        .arg("scan")
                        .arg(now_ms - window_ms)
                        .arg(limit);
                }
                WindowOp::Block { subject_type, subject, decision_json, ttl_ms } => {
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.block.get_hash())
                        .arg(1)
                        .arg(k.block(subject_type, subject))
                        .arg(decision_json)
                        .arg(ttl_ms);
                }
            }
        }
        pipe
    }
}

async fn load_scripts(conn: &mut ConnectionManager, scripts: &Scripts) -> Result<(), TransientError> {
    let mut pipe = redis::pipe();
    for s in scripts.all() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(&s.code);
    }
    pipe.query_async::<Vec<String>>(conn).await.map_err(transient)?;
    Ok(())
}

async fn run(
    conn: &mut ConnectionManager,
    scripts: &Scripts,
    pipe: &redis::Pipeline,
    replies: &[Reply],
) -> Result<Vec<WindowOutcome>, TransientError> {
    let mut loaded = false;
    loop {
        let values: Vec<Value> = match pipe.query_async(conn).await {
            Ok(v) => v,
            // A restarted (or flushed) Redis has forgotten the scripts: load them, go again.
            // The scripts are idempotent, so what did run is harmless to run twice.
            Err(e) if !loaded && is_noscript(&e) => {
                load_scripts(conn, scripts).await?;
                loaded = true;
                continue;
            }
            Err(e) => return Err(transient(e)),
        };
        if values.len() != replies.len() {
            return Err(TransientError::new("redis", format!("{} replies to {} scripts", values.len(), replies.len())));
        }
        return replies.iter().zip(values).map(|(r, v)| parse_outcome(*r, v)).collect();
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) {
        return true;
    }
    // Pipelines report the failing commands' errors together.
    e.to_string().contains("NOSCRIPT")
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bad_reply(v: &Value) -> TransientError {
    TransientError::new("redis", format!("unexpected script reply {v:?}"))
}

fn parse_outcome(reply: Reply, v: Value) -> Result<WindowOutcome, TransientError> {
    match reply {
        Reply::Done => Ok(WindowOutcome::Done),
        Reply::Silent => {
            let Value::Array(items) = &v else { return Err(bad_reply(&v)) };
            let mut out = Vec::with_capacity(items.len() / 2);
            for pair in items.chunks(2) {
                let (Some(g), Some(t)) = (pair.first().and_then(text), pair.get(1).and_then(text)) else {
                    return Err(bad_reply(&v));
                };
                let t: f64 = t.parse().map_err(|_| bad_reply(&v))?;
                out.push((g, t as i64));
            }
            Ok(WindowOutcome::Silent(out))
        }
        Reply::Periods => {
            let Value::Array(items) = &v else { return Err(bad_reply(&v)) };
            let mut out = Vec::with_capacity(items.len() / 4);
            for q in items.chunks(4) {
                let texts: Vec<String> = q.iter().filter_map(text).collect();
                let [period, end, count, evidence] = texts.as_slice() else { return Err(bad_reply(&v)) };
                let (group, start) = period.rsplit_once('\n').ok_or_else(|| bad_reply(&v))?;
                out.push(ClosedPeriod {
                    group: group.to_string(),
                    start_ms: start.parse().map_err(|_| bad_reply(&v))?,
                    end_ms: end.parse::<f64>().map_err(|_| bad_reply(&v))? as i64,
                    observed: count.parse().map_err(|_| bad_reply(&v))?,
                    evidence: evidence.split('\n').filter(|e| !e.is_empty()).map(str::to_string).collect(),
                });
            }
            Ok(WindowOutcome::Periods(out))
        }
        Reply::Window => {
            let Value::Array(items) = &v else { return Err(bad_reply(&v)) };
            let (Some(tag), Some(body)) = (items.first().and_then(text), items.get(1).and_then(text)) else {
                return Err(bad_reply(&v));
            };
            let number = || body.parse::<u64>().map_err(|_| bad_reply(&v));
            match tag.as_str() {
                "fired" | "replay" => {
                    let firing: Firing = serde_json::from_str(&body)
                        .map_err(|e| TransientError::new("redis", format!("bad firing record {body:?}: {e}")))?;
                    Ok(WindowOutcome::Fired { firing, replayed: tag == "replay" })
                }
                "count" => Ok(WindowOutcome::Counted { observed: number()? }),
                "suppressed" => Ok(WindowOutcome::Suppressed { observed: number()? }),
                "late" => Ok(WindowOutcome::TooLate),
                _ => Err(bad_reply(&v)),
            }
        }
    }
}

impl WindowStore for RedisWindowStore {
    fn apply(&mut self, ops: &[WindowOp]) -> Result<Vec<WindowOutcome>, TransientError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.start(ops).wait()
    }

    /// Needs a multi-threaded runtime (the one given at connect time) to make progress while the
    /// caller works; [`Pending::wait`] then only collects the answers.
    fn start(&mut self, ops: &[WindowOp]) -> Pending {
        // A big batch goes as a few pipelines, so each answer fits within the timeout.
        let parts: Vec<(redis::Pipeline, Vec<Reply>)> =
            ops.chunks(PIPELINE_MAX).map(|c| (self.build(c), c.iter().map(Reply::of).collect())).collect();
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        let previous = self.last.replace(done_rx);
        let mut conn = self.conn.clone();
        let scripts = self.scripts.clone();
        // Bounded even if the connection manager keeps reconnecting: a batch never hangs.
        let deadline = self.timeout * 3;
        let task = self.handle.spawn(async move {
            if let Some(previous) = previous {
                // Sent or dropped: either way it no longer competes for the connection.
                let _ = previous.await;
            }
            let mut outcomes = Vec::with_capacity(parts.iter().map(|(_, r)| r.len()).sum());
            let mut result = Ok(());
            for (pipe, replies) in &parts {
                match tokio::time::timeout(deadline, run(&mut conn, &scripts, pipe, replies)).await {
                    Ok(Ok(part)) => outcomes.extend(part),
                    Ok(Err(e)) => {
                        result = Err(e);
                        break;
                    }
                    Err(_) => {
                        result = Err(TransientError::new("redis", format!("no answer within {deadline:?}")));
                        break;
                    }
                }
            }
            let _ = done.send(());
            result.map(|()| outcomes)
        });
        Pending::running(task, self.handle.clone())
    }
}
