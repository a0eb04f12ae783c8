//! The rules engine: a compiled [`RuleSet`] evaluated over a batch of events against a
//! [`WindowStore`]. Pure apart from the store: no clock (times are event times, or `now` passed
//! in), no I/O of its own, so it is unit-tested with [`super::MemoryStore`].
//!
//! A batch costs one pattern scan per event and field, and its stateful operations go to the
//! store in event order, a few hundred at a time through [`WindowStore::start`] while the rest of
//! the batch is scanned (so a remote store works while the engine does).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::compile::{load_dir, BlockSubject, CompiledRule, RuleErrors, RuleSet, Stateful};
use super::store::{Firing, WindowKey, WindowOp, WindowOutcome, WindowStore};
use crate::error::TransientError;
use crate::event::EnrichedEvent;
use crate::rule_match::{RuleAction, RuleKind, RuleMatch, WindowFigures};

/// Namespace of match ids: UUIDv5(namespace, "<rule id>\n<triggering event id>").
pub const MATCH_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3a0c_7f1e_52b4_4d3e_9a61_c0de_a0d1_7001);

/// The deterministic id of a match: a replayed trigger yields the same id.
pub fn match_id(rule_id: &str, trigger: &str) -> String {
    let mut name = String::with_capacity(rule_id.len() + trigger.len() + 1);
    name.push_str(rule_id);
    name.push('\n');
    name.push_str(trigger);
    uuid::Uuid::new_v5(&MATCH_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// A decision for upstream services to refuse an address or a user for a while
/// (`security-actions`, and `<prefix>block:<type>:<subject>` in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDecision {
    /// UUIDv5 of the match id: a replay yields the same decision.
    pub decision_id: String,
    /// `ip` or `user`.
    pub subject_type: String,
    pub subject: String,
    pub ttl_seconds: u64,
    pub rule_id: String,
    pub match_id: String,
    pub reason: String,
    /// Event time of the match that decided it; the block lasts until `decidedAt + ttlSeconds`.
    pub decided_at: DateTime<Utc>,
}

impl BlockDecision {
    /// The store operation that publishes this block, if it is still in force at `now_ms`
    /// (a replay of old events must not block anyone today).
    pub fn store_op(&self, now_ms: i64) -> Option<WindowOp> {
        let until = self.decided_at.timestamp_millis() + self.ttl_seconds as i64 * 1000;
        let left = until - now_ms;
        if left <= 0 {
            return None;
        }
        Some(WindowOp::Block {
            subject_type: if self.subject_type == "ip" { "ip" } else { "user" },
            subject: self.subject.clone(),
            decision_json: serde_json::to_string(self).unwrap_or_default(),
            ttl_ms: left,
        })
    }
}

/// What one stateful rule did with one event (filled when tracing, for `rules test`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTrace {
    pub rule_id: Arc<str>,
    pub kind: RuleKind,
    /// Encoded group key (`user_id=alice`).
    pub group: String,
    pub outcome: TraceOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TraceOutcome {
    /// The event matched but lacks a `group_by` (or `distinct.field`) value.
    NoGroup,
    Window { outcome: WindowOutcome, window_ms: i64, limit: u64 },
    /// Absence rules only record the event's time.
    Seen,
}

/// The engine's verdict on one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventResult {
    pub matches: Vec<RuleMatch>,
    pub blocks: Vec<BlockDecision>,
    pub trace: Vec<RuleTrace>,
}

/// Bounds that keep one group's window state small and its clock honest, whatever it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// How far an event's own time may be ahead of when enrich received it (`enrichedAt`)
    /// and still be used as its window time; beyond that it is judged at its receive time, so
    /// a clock set a day ahead cannot move its group's windows a day on and blind them.
    pub max_future_skew_ms: i64,
    /// Events kept per sequence step and group (the newest ones): a flood of first steps costs
    /// bounded memory and bounded work per event.
    pub sequence_keep: u32,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits { max_future_skew_ms: 5 * 60 * 1000, sequence_keep: 1000 }
    }
}

impl WindowLimits {
    /// The time `ev` is judged at: its own, unless that is further ahead of its receive time
    /// than allowed. Both come from the event, so a replay judges it the same.
    pub fn window_time_ms(&self, ev: &EnrichedEvent) -> i64 {
        let t = ev.timestamp.timestamp_millis();
        let received = ev.enriched_at.timestamp_millis();
        if t > received.saturating_add(self.max_future_skew_ms) {
            received
        } else {
            t
        }
    }
}

/// Compiled rules, ready to evaluate. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RulesEngine {
    set: Arc<RuleSet>,
    limits: WindowLimits,
}

/// Stateful operations handed to the store at a time: the first answer is not waited for long,
/// and a batch still goes as a few pipelines, not one per event.
const SEND_EVERY: usize = 512;

/// One match waiting for the store's answer.
struct Pending {
    event: usize,
    rule: usize,
    group: Option<(String, BTreeMap<String, String>)>,
    /// Index of the stateful operation (none for pattern rules).
    op: Option<usize>,
    /// A pattern rule's match, made while the store works on the stateful operations.
    made: Option<RuleMatch>,
}

impl RulesEngine {
    pub fn new(set: RuleSet) -> RulesEngine {
        RulesEngine { set: Arc::new(set), limits: WindowLimits::default() }
    }

    pub fn with_limits(mut self, limits: WindowLimits) -> RulesEngine {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> WindowLimits {
        self.limits
    }

    /// Read and compile every rule file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<RulesEngine, RuleErrors> {
        load_dir(dir).map(RulesEngine::new)
    }

    pub fn rule_set(&self) -> &RuleSet {
        &self.set
    }

    /// Evaluate a batch in order. `trace` also reports the window state of stateful rules.
    ///
    /// Rules that name others with `fired:` are evaluated in later passes over the batch, once
    /// the rules they name have answered; each pass sends its operations in event order, so a
    /// rule's window sees the same order whatever pass it is in.
    pub fn evaluate<S: WindowStore + ?Sized>(
        &self,
        events: &[EnrichedEvent],
        store: &mut S,
        trace: bool,
    ) -> Result<Vec<EventResult>, TransientError> {
        let passes = self.set.rules.iter().map(|r| r.depth).max().unwrap_or(0) + 1;
        let mut results: Vec<EventResult> = vec![EventResult::default(); events.len()];
        let mut fired: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
        // Later passes reuse the first pass's pattern scans.
        let mut scans: Vec<Vec<bool>> = Vec::new();
        for depth in 0..passes {
            self.evaluate_pass(events, store, trace, depth, passes > 1, &mut scans, &mut fired, &mut results)?;
        }
        Ok(results)
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate_pass<S: WindowStore + ?Sized>(
        &self,
        events: &[EnrichedEvent],
        store: &mut S,
        trace: bool,
        depth: usize,
        keep_scans: bool,
        scans: &mut Vec<Vec<bool>>,
        fired: &mut [Vec<usize>],
        results: &mut [EventResult],
    ) -> Result<(), TransientError> {
        let rules = &self.set.rules;
        let mut ops: Vec<WindowOp> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut traces: Vec<(usize, usize, String, Option<usize>)> = Vec::new();
        let mut hits: Vec<bool> = Vec::with_capacity(self.set.patterns.len());
        let mut sent = 0;
        let mut started: Vec<super::store::Pending> = Vec::new();
        // Absence rules: the newest time of each group in the batch.
        let mut last_seen: std::collections::HashMap<(usize, String), (i64, i64)> = std::collections::HashMap::new();
        for (ei, ev) in events.iter().enumerate() {
            if ops.len() - sent >= SEND_EVERY {
                started.push(store.start(&ops[sent..]));
                sent = ops.len();
            }
            let hits: &[bool] = if depth == 0 {
                self.set.patterns.scan(ev, &mut hits);
                if keep_scans {
                    scans.push(hits.clone());
                }
                &hits
            } else {
                scans.get(ei).map(Vec::as_slice).unwrap_or(&[])
            };
            let ip: Option<IpAddr> = ev.ip_address.as_deref().and_then(|s| s.parse().ok());
            let t = self.limits.window_time_ms(ev);
            let done = &fired[ei];
            for (ri, rule) in rules.iter().enumerate().filter(|(_, r)| r.depth == depth) {
                if !rule.cond.eval(ev, ip, hits, done) {
                    continue;
                }
                if let Stateful::Pattern = rule.state {
                    pending.push(Pending { event: ei, rule: ri, group: None, op: None, made: Some(pattern_match(rule, ev, t)) });
                    continue;
                }
                let steps_mask = match &rule.state {
                    Stateful::Sequence { steps, .. } => steps
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.eval(ev, ip, hits, done))
                        .fold(0u32, |m, (k, _)| m | (1 << k)),
                    _ => 0,
                };
                if matches!(rule.state, Stateful::Sequence { .. }) && steps_mask == 0 {
                    continue;
                }
                // The value a kind needs besides the group (an event without it is not counted).
                let value: Option<String> = match &rule.state {
                    Stateful::Distinct { field, .. } | Stateful::FirstSeen { field, .. } => field.1.get(ev).map(|v| v.into_owned()),
                    Stateful::Aggregate { distinct: Some(field), .. } => field.1.get(ev).map(|v| v.into_owned()),
                    Stateful::Aggregate { distinct: None, .. } => Some(ev.id.clone()),
                    Stateful::Travel { ignore, .. } => located(ev, ip, ignore),
                    _ => Some(String::new()),
                };
                let group = value.as_ref().and_then(|_| group_key(rule.state.group_by(), ev));
                let (Some((g, map)), Some(value)) = (group, value) else {
                    if trace {
                        traces.push((ei, ri, String::new(), None));
                    }
                    continue;
                };
                let key = WindowKey { rule: rule.meta.id.clone(), group: g.clone() };
                let event_id = ev.id.clone();
                let op = match &rule.state {
                    Stateful::Pattern => continue,
                    Stateful::Threshold { count, window_ms, lateness_ms, .. } => WindowOp::Threshold {
                        key,
                        event_id,
                        time_ms: t,
                        window_ms: *window_ms,
                        lateness_ms: *lateness_ms,
                        limit: *count,
                    },
                    Stateful::Distinct { more_than, window_ms, lateness_ms, .. } => WindowOp::Distinct {
                        key,
                        event_id,
                        time_ms: t,
                        value,
                        window_ms: *window_ms,
                        lateness_ms: *lateness_ms,
                        more_than: *more_than,
                    },
                    Stateful::Sequence { steps, within_ms, lateness_ms, ordered: true, .. } => WindowOp::Sequence {
                        key,
                        event_id,
                        time_ms: t,
                        steps_mask,
                        steps: steps.len() as u32,
                        within_ms: *within_ms,
                        lateness_ms: *lateness_ms,
                        keep: self.limits.sequence_keep,
                    },
                    Stateful::Sequence { steps, within_ms, lateness_ms, ordered: false, at_least, .. } => WindowOp::Temporal {
                        key,
                        event_id,
                        time_ms: t,
                        steps_mask,
                        steps: steps.len() as u32,
                        at_least: *at_least,
                        within_ms: *within_ms,
                        lateness_ms: *lateness_ms,
                        keep: self.limits.sequence_keep,
                    },
                    Stateful::Aggregate { period_ms, lateness_ms, .. } => {
                        // Counted now, judged when the period is over (`check_clock`).
                        ops.push(WindowOp::Aggregate {
                            rule: key.rule,
                            group: g.clone(),
                            event_id,
                            member: value,
                            period_start: t.div_euclid(*period_ms) * period_ms,
                            period_ms: *period_ms,
                            ttl_ms: aggregate_retention_ms(*period_ms, *lateness_ms),
                        });
                        if trace {
                            traces.push((ei, ri, g, Some(ops.len() - 1)));
                        }
                        continue;
                    }
                    Stateful::Travel { max_speed_kmh, within_ms, min_distance_km, .. } => {
                        let mut parts = value.splitn(4, '|');
                        let mut next = || parts.next().unwrap_or_default().to_string();
                        let (latitude, longitude, country, place) = (next(), next(), next(), next());
                        WindowOp::Travel {
                            key,
                            event_id,
                            time_ms: t,
                            latitude,
                            longitude,
                            country,
                            place,
                            within_ms: *within_ms,
                            max_speed_kmh: *max_speed_kmh,
                            min_distance_km: *min_distance_km,
                            keep: TRAVEL_KEEP,
                        }
                    }
                    Stateful::FirstSeen { learning_ms, forget_ms, .. } => {
                        WindowOp::FirstSeen { key, event_id, time_ms: t, value, learning_ms: *learning_ms, forget_ms: *forget_ms }
                    }
                    Stateful::Absence { window_ms, .. } => {
                        // Absence rules only record when the group was last seen: the store keeps
                        // the newest time, so one record per group and batch says the same as
                        // one per event (a busy source would otherwise cost a call per event).
                        if trace {
                            ops.push(WindowOp::Seen { rule: key.rule, group: g.clone(), time_ms: t, window_ms: *window_ms });
                            traces.push((ei, ri, g, None));
                        } else {
                            let newest = last_seen.entry((ri, g)).or_insert((t, *window_ms));
                            newest.0 = newest.0.max(t);
                        }
                        continue;
                    }
                };
                ops.push(op);
                let op_index = ops.len() - 1;
                if trace {
                    traces.push((ei, ri, g.clone(), Some(op_index)));
                }
                pending.push(Pending { event: ei, rule: ri, group: Some((g, map)), op: Some(op_index), made: None });
            }
        }

        for ((ri, group), (time_ms, window_ms)) in last_seen {
            ops.push(WindowOp::Seen { rule: rules[ri].meta.id.clone(), group, time_ms, window_ms });
        }
        if sent < ops.len() {
            started.push(store.start(&ops[sent..]));
        }
        // After a failure the later parts are abandoned rather than each waiting out its own
        // timeout, but every part is waited for, so nothing of this batch is still running when
        // the caller retries it.
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut failed = None;
        let mut parts = started.into_iter();
        while let Some(part) = parts.next() {
            match part.wait() {
                Ok(o) => outcomes.extend(o),
                Err(e) => {
                    failed = Some(e);
                    let rest: Vec<_> = parts.by_ref().collect();
                    rest.iter().for_each(super::store::Pending::abort);
                    rest.into_iter().for_each(|p| drop(p.wait()));
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if outcomes.len() != ops.len() {
            return Err(TransientError::new("window_store", format!("{} answers to {} operations", outcomes.len(), ops.len())));
        }

        for p in pending {
            let ev = &events[p.event];
            let rule = &rules[p.rule];
            let m = match p.op {
                None => p.made,
                Some(op) => match &outcomes[op] {
                    WindowOutcome::Fired { firing, .. } => {
                        let (_, map) = p.group.unwrap_or_default();
                        Some(stateful_match(rule, ev, self.limits.window_time_ms(ev), map, firing))
                    }
                    _ => None,
                },
            };
            if let Some(m) = m {
                fired[p.event].push(p.rule);
                // A rule that only feeds others (`generate: false`) is not reported itself.
                if !rule.meta.generate {
                    continue;
                }
                if let Some(b) = block_decision(rule, &m) {
                    results[p.event].blocks.push(b);
                }
                results[p.event].matches.push(m);
            }
        }
        fired.iter_mut().for_each(|f| f.sort_unstable());
        if trace {
            for (ei, ri, group, op) in traces {
                let rule = &rules[ri];
                let outcome = match (op, &rule.state) {
                    (None, Stateful::Absence { .. }) if !group.is_empty() => TraceOutcome::Seen,
                    (None, _) => TraceOutcome::NoGroup,
                    (Some(op), state) => {
                        let (window_ms, limit) = match state {
                            Stateful::Threshold { window_ms, count, .. } => (*window_ms, *count),
                            Stateful::Distinct { window_ms, more_than, .. } => (*window_ms, more_than + 1),
                            Stateful::Sequence { within_ms, at_least, .. } => (*within_ms, u64::from(*at_least)),
                            Stateful::Aggregate { period_ms, min, .. } => (*period_ms, *min),
                            Stateful::Travel { within_ms, max_speed_kmh, .. } => (*within_ms, max_speed_kmh.round() as u64),
                            Stateful::FirstSeen { learning_ms, .. } => (*learning_ms, 1),
                            _ => (0, 0),
                        };
                        TraceOutcome::Window { outcome: outcomes[op].clone(), window_ms, limit }
                    }
                };
                results[ei].trace.push(RuleTrace { rule_id: rule.meta.id.clone(), kind: rule.state.kind(), group, outcome });
            }
        }
        Ok(())
    }

    /// What depends on time passing rather than on an event, as of `now` (wall-clock time in
    /// the stage, a clock following the events in `rules test`): absence rules report groups
    /// silent for their window, aggregate rules close the periods that ended `lateness` ago and
    /// report those whose count is in range. Each is reported once, by one instance.
    pub fn check_clock<S: WindowStore + ?Sized>(
        &self,
        now: DateTime<Utc>,
        store: &mut S,
    ) -> Result<Vec<RuleMatch>, TransientError> {
        let now_ms = now.timestamp_millis();
        let mut ops = Vec::new();
        let mut scans: Vec<(usize, usize)> = Vec::new();
        for (ri, rule) in self.set.rules.iter().enumerate() {
            match &rule.state {
                Stateful::Absence { window_ms, group_by, expected } => {
                    for value in expected {
                        let name = group_by.first().map(|(n, _)| n.as_str()).unwrap_or_default();
                        ops.push(WindowOp::Expect {
                            rule: rule.meta.id.clone(),
                            group: encode_group(&[(name, value)]),
                            now_ms,
                            window_ms: *window_ms,
                        });
                    }
                    ops.push(WindowOp::ScanSilent { rule: rule.meta.id.clone(), now_ms, window_ms: *window_ms, limit: 1000 });
                }
                Stateful::Aggregate { period_ms, lateness_ms, min, max, .. } => ops.push(WindowOp::ClosePeriods {
                    rule: rule.meta.id.clone(),
                    cutoff_ms: now_ms - lateness_ms,
                    min: *min,
                    max: *max,
                    limit: 1000,
                    retention_ms: aggregate_retention_ms(*period_ms, *lateness_ms),
                }),
                _ => continue,
            }
            scans.push((ri, ops.len() - 1));
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = store.apply(&ops)?;
        let mut out = Vec::new();
        for (ri, op) in scans {
            let rule = &self.set.rules[ri];
            match (&rule.state, outcomes.get(op)) {
                (Stateful::Absence { window_ms, .. }, Some(WindowOutcome::Silent(groups))) => {
                    for (group, last_ms) in groups {
                        out.push(absence_match(rule, group, *last_ms, *window_ms));
                    }
                }
                (Stateful::Aggregate { min, .. }, Some(WindowOutcome::Periods(periods))) if rule.meta.generate => {
                    for p in periods {
                        out.push(period_match(rule, p, *min));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Located events a travel rule keeps per group.
const TRAVEL_KEEP: u32 = 50;

/// How long an aggregate rule's periods (and the record of closed ones) are kept.
fn aggregate_retention_ms(period_ms: i64, lateness_ms: i64) -> i64 {
    2 * period_ms + lateness_ms + 24 * 3_600_000
}

/// `lat|lon|country|place` of an event a travel rule can place: a global address with a city-level
/// location (a country-level one is the country's centre, no place at all), outside the rule's
/// ignored networks.
fn located(ev: &EnrichedEvent, ip: Option<IpAddr>, ignore: &[super::fields::Cidr]) -> Option<String> {
    let ip = ip?;
    if ignore.iter().any(|n| n.contains(ip)) || ev.ip.is_some_and(|f| !f.global) {
        return None;
    }
    let l = ev.location.as_ref()?;
    let (lat, lon) = (l.latitude?, l.longitude?);
    let city = l.city.as_deref().filter(|c| !c.is_empty())?;
    let place: Vec<&str> = [Some(city), l.region.as_deref(), l.country_code.as_deref()].into_iter().flatten().filter(|p| !p.is_empty()).collect();
    let country: String = l.country_code.as_deref().unwrap_or("").chars().filter(|c| *c != '|').collect();
    Some(format!("{lat:.4}|{lon:.4}|{country}|{}", place.join(", ")))
}

/// `field=value` pairs joined by `&`, values escaped, in `group_by` order: the group's name in
/// window keys and absence state.
pub fn encode_group(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.push_str(name);
        s.push('=');
        for c in value.chars() {
            match c {
                '%' => s.push_str("%25"),
                '&' => s.push_str("%26"),
                '=' => s.push_str("%3D"),
                c => s.push(c),
            }
        }
    }
    s
}

/// Inverse of [`encode_group`].
pub fn decode_group(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%26", "&").replace("%25", "%")))
        .collect()
}

/// The group key of `ev`, or `None` when a `group_by` field has no value.
fn group_key(group_by: &[(String, super::fields::FieldRef)], ev: &EnrichedEvent) -> Option<(String, BTreeMap<String, String>)> {
    let mut pairs: Vec<(&str, std::borrow::Cow<'_, str>)> = Vec::with_capacity(group_by.len());
    for (name, field) in group_by {
        pairs.push((name.as_str(), field.get(ev)?));
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let encoded = encode_group(&refs);
    Some((encoded, pairs.into_iter().map(|(n, v)| (n.to_string(), v.into_owned())).collect()))
}

fn base_match(rule: &CompiledRule, trigger: &str, matched_at: DateTime<Utc>) -> RuleMatch {
    RuleMatch {
        match_id: match_id(&rule.meta.id, trigger),
        rule_id: rule.meta.id.to_string(),
        rule_name: rule.meta.name.clone(),
        kind: rule.state.kind(),
        severity: rule.meta.severity,
        action: rule.meta.action,
        compliance: rule.meta.compliance.clone(),
        tags: rule.meta.tags.clone(),
        group_key: BTreeMap::new(),
        window: None,
        evidence_event_ids: Vec::new(),
        event: None,
        matched_at,
        detail: None,
    }
}

fn pattern_match(rule: &CompiledRule, ev: &EnrichedEvent, at: i64) -> RuleMatch {
    let mut m = base_match(rule, &ev.id, millis(at));
    m.evidence_event_ids = vec![ev.id.clone()];
    m.event = Some(ev.clone());
    m
}

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// `at`: the event's window time (its own time, or its receive time when that is far ahead).
fn stateful_match(rule: &CompiledRule, ev: &EnrichedEvent, at: i64, map: BTreeMap<String, String>, f: &Firing) -> RuleMatch {
    let window_ms = match &rule.state {
        Stateful::Threshold { window_ms, .. } | Stateful::Distinct { window_ms, .. } => *window_ms,
        Stateful::Sequence { within_ms, .. } => *within_ms,
        _ => f.end_ms - f.start_ms,
    };
    let mut detail = f.detail.clone();
    if let (Stateful::FirstSeen { field, .. }, Some(serde_json::Value::Object(d))) = (&rule.state, detail.as_mut()) {
        d.insert("field".into(), serde_json::Value::String(field.0.clone()));
    }
    let mut m = base_match(rule, &ev.id, millis(at));
    m.group_key = map;
    m.window = Some(WindowFigures {
        start: millis(f.start_ms),
        end: millis(f.end_ms),
        seconds: (window_ms / 1000).max(0) as u64,
        observed: f.observed,
        limit: f.limit,
    });
    m.evidence_event_ids = f.evidence.clone();
    m.event = Some(ev.clone());
    m.detail = detail;
    m
}

/// An ended period whose count was in the rule's range (no triggering event: the id derives
/// from the group and the period).
fn period_match(rule: &CompiledRule, p: &super::store::ClosedPeriod, min: u64) -> RuleMatch {
    let mut m = base_match(rule, &format!("period:{}@{}", p.group, p.start_ms), millis(p.end_ms));
    m.group_key = decode_group(&p.group);
    m.window = Some(WindowFigures {
        start: millis(p.start_ms),
        end: millis(p.end_ms),
        seconds: ((p.end_ms - p.start_ms) / 1000).max(0) as u64,
        observed: p.observed,
        limit: min,
    });
    m.evidence_event_ids = p.evidence.clone();
    m
}

fn absence_match(rule: &CompiledRule, group: &str, last_ms: i64, window_ms: i64) -> RuleMatch {
    let silent_since = last_ms + window_ms;
    let mut m = base_match(rule, &format!("absence:{group}@{last_ms}"), millis(silent_since));
    m.group_key = decode_group(group);
    m.window = Some(WindowFigures {
        start: millis(last_ms),
        end: millis(silent_since),
        seconds: (window_ms / 1000) as u64,
        observed: 0,
        limit: 1,
    });
    m
}

/// Kafka key of a match: the group key values, else who did it, else the event id.
pub fn match_key(m: &RuleMatch) -> String {
    if !m.group_key.is_empty() {
        return m.group_key.values().cloned().collect::<Vec<_>>().join("|");
    }
    m.event
        .as_ref()
        .and_then(|e| e.user_id.clone().or_else(|| e.ip_address.clone()).or_else(|| Some(e.id.clone())))
        .unwrap_or_else(|| m.match_id.clone())
}

fn block_decision(rule: &CompiledRule, m: &RuleMatch) -> Option<BlockDecision> {
    if rule.meta.action != RuleAction::Block {
        return None;
    }
    let spec = rule.meta.block?;
    let ev = m.event.as_ref()?;
    let subject = match spec.subject {
        BlockSubject::Ip => ev.ip_address.clone()?,
        BlockSubject::User => ev.user_id.clone()?,
    };
    let summary = match &m.window {
        Some(w) => match m.kind {
            RuleKind::DistinctCount => format!("{} distinct values in {} s (limit {})", w.observed, w.seconds, w.limit),
            RuleKind::Sequence | RuleKind::Temporal => format!("sequence of {} steps within {} s", w.observed, w.seconds),
            RuleKind::ImpossibleTravel => format!("travel at {} km/h (limit {})", w.observed, w.limit),
            RuleKind::FirstSeen => "first sighting".to_string(),
            _ => format!("{} events in {} s (limit {})", w.observed, w.seconds, w.limit),
        },
        None => format!("{} on {}", ev.action, ev.resource),
    };
    Some(BlockDecision {
        decision_id: uuid::Uuid::new_v5(&MATCH_ID_NAMESPACE, format!("block\n{}", m.match_id).as_bytes()).to_string(),
        subject_type: spec.subject.as_str().to_string(),
        subject,
        ttl_seconds: (spec.ttl_ms / 1000).max(1) as u64,
        rule_id: rule.meta.id.to_string(),
        match_id: m.match_id.clone(),
        reason: format!("{}: {summary}", rule.meta.name),
        decided_at: m.matched_at,
    })
}
