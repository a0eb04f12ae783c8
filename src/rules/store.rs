//! Window state: the [`WindowStore`] trait the engine talks to, and [`MemoryStore`], its
//! in-process implementation (unit tests, `auditflow rules test`). [`super::redis_store`] is the
//! shared one the stage uses; both implement the same algorithms, described here once.
//!
//! Every operation is idempotent, keyed by event id, so a batch that is retried, re-delivered or
//! replayed after an offset reset changes nothing the second time:
//!
//! - **threshold**: a sorted set per (rule, group) of event ids scored by event time. An event
//!   counts the events in `[t - window, t]`. A late event (older than the group's newest) also
//!   checks the windows that end after it, up to `t + window`. Reaching the limit fires unless
//!   the same group already fired within one window length of it (a second crossing is needed);
//!   the firing is recorded under the triggering event id, so re-processing that event returns
//!   the same figures (the same match) and no other instance can fire that window again.
//! - **distinct count**: a sorted set per (rule, group) of values scored by the newest time each
//!   was seen. Exact for events in order and for the newest window; a late event is counted in
//!   its own window with the values whose newest sighting falls in it.
//! - **sequence**: one sorted set per step; a chain is the earliest unused event of each step in
//!   order, last minus first within `within`. Events of a chain that fired are used up, so
//!   `grant, export, export` fires once. Arrival order does not matter: a late first step
//!   completes the chain when it arrives.
//! - **absence**: the newest event time per group; a periodic scan reports each group silent for
//!   `window` once per silence (a later event re-arms it, a replayed older one does not).
//!
//! - **temporal** (steps in any order): the same step sets; an event completes a set when the
//!   unused events of a window of `within` that holds it cover `at_least` steps (an event
//!   matching several steps covers each). Windows ending at the event or at a later member are
//!   tried, so a late event completes a set as well.
//! - **aggregate**: per rule, periods of `period` aligned to the epoch, each a set of members
//!   (event ids, or the distinct values counted) per group; a periodic close reports once each
//!   ended period whose count lies in the rule's range, and a closed period takes nothing more.
//! - **travel**: the group's recent located events (time, coordinates, place); an event is
//!   compared with the nearest one before and after it, and a pair further apart than
//!   `min_distance_km` whose speed exceeds the limit fires, with both places in the figures.
//! - **first seen**: the values of a field each group showed, with when it last did; a value
//!   not among them (or unseen for `forget_after`) fires once the group has `learning` of history.
//!
//! Events older than the group's newest by more than `window + lateness` are ignored (`TooLate`).
//! State older than `2 × window + lateness` behind the newest event is trimmed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::TransientError;

/// Most evidence event ids kept per firing.
pub const EVIDENCE_CAP: usize = 20;

/// Which (rule, group) a stateful operation is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowKey {
    pub rule: Arc<str>,
    /// The encoded group key (see [`super::engine::encode_group`]).
    pub group: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WindowOp {
    Threshold { key: WindowKey, event_id: String, time_ms: i64, window_ms: i64, lateness_ms: i64, limit: u64 },
    Distinct {
        key: WindowKey,
        event_id: String,
        time_ms: i64,
        value: String,
        window_ms: i64,
        lateness_ms: i64,
        more_than: u64,
    },
    /// `steps_mask`: bit k set when the event satisfies step k+1.
    Sequence {
        key: WindowKey,
        event_id: String,
        time_ms: i64,
        steps_mask: u32,
        steps: u32,
        within_ms: i64,
        lateness_ms: i64,
        /// Newest events kept per step (see [`super::WindowLimits::sequence_keep`]).
        keep: u32,
    },
    /// `steps_mask` as for [`WindowOp::Sequence`]; fires when the window's unused events cover
    /// `at_least` steps, in any order.
    Temporal {
        key: WindowKey,
        event_id: String,
        time_ms: i64,
        steps_mask: u32,
        steps: u32,
        at_least: u32,
        within_ms: i64,
        lateness_ms: i64,
        keep: u32,
    },
    /// Count `member` (the event id, or the distinct value counted) in the period of `group`
    /// that starts at `period_start`; `event_id` is kept as its evidence.
    Aggregate { rule: Arc<str>, group: String, event_id: String, member: String, period_start: i64, period_ms: i64, ttl_ms: i64 },
    /// Close the periods of `rule` that ended at or before `cutoff_ms` (at most `limit`), and
    /// report those whose count lies in `[min, max]`; each period is closed once.
    ClosePeriods { rule: Arc<str>, cutoff_ms: i64, min: u64, max: u64, limit: usize, retention_ms: i64 },
    /// A located event of the group: compared with its neighbours in time.
    Travel {
        key: WindowKey,
        event_id: String,
        time_ms: i64,
        /// Coordinates as the text they are compared in (4 decimals), the country code and the
        /// place's name.
        latitude: String,
        longitude: String,
        country: String,
        place: String,
        within_ms: i64,
        max_speed_kmh: f64,
        min_distance_km: f64,
        keep: u32,
    },
    /// The group showed `value` (a country, an ASN).
    FirstSeen { key: WindowKey, event_id: String, time_ms: i64, value: String, learning_ms: i64, forget_ms: i64 },
    /// An absence rule saw an event of `group`.
    Seen { rule: Arc<str>, group: String, time_ms: i64, window_ms: i64 },
    /// Watch `group` from `now_ms` even if it never sends anything.
    Expect { rule: Arc<str>, group: String, now_ms: i64, window_ms: i64 },
    /// Groups of `rule` silent since before `now_ms - window_ms` (at most `limit`), each
    /// reported once per silence.
    ScanSilent { rule: Arc<str>, now_ms: i64, window_ms: i64, limit: usize },
    /// Publish a block for upstream services, unless a longer one is already in force.
    Block { subject_type: &'static str, subject: String, decision_json: String, ttl_ms: i64 },
}

/// What a window operation found.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowOutcome {
    /// Counted; `observed` is the event's window figure (events, distinct values, steps so far).
    Counted { observed: u64 },
    /// Past the limit, but this group already fired within one window length.
    Suppressed { observed: u64 },
    /// The window crossed its limit with this event (`replayed`: this event had already
    /// triggered it, and the recorded figures are returned unchanged).
    Fired { firing: Firing, replayed: bool },
    /// Too far behind the group's newest event; ignored.
    TooLate,
    /// Silent groups found by a scan: (group, last event time).
    Silent(Vec<(String, i64)>),
    /// Periods closed by a scan whose count lies in the rule's range.
    Periods(Vec<ClosedPeriod>),
    Done,
}

/// An ended period of an aggregate rule, as its close found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedPeriod {
    pub group: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub observed: u64,
    /// Event ids (at most [`EVIDENCE_CAP`], in id order).
    pub evidence: Vec<String>,
}

/// Figures of a window that fired, as recorded (so a re-processed trigger yields them again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    #[serde(rename = "s")]
    pub start_ms: i64,
    #[serde(rename = "e")]
    pub end_ms: i64,
    #[serde(rename = "o")]
    pub observed: u64,
    #[serde(rename = "l")]
    pub limit: u64,
    /// Event ids, the triggering event last.
    #[serde(rename = "ev")]
    pub evidence: Vec<String>,
    /// What else the kind records (the places and speed of a travel, the new value of a
    /// first sighting).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Where window state lives. Operations run in order; each one is atomic.
pub trait WindowStore {
    fn apply(&mut self, ops: &[WindowOp]) -> Result<Vec<WindowOutcome>, TransientError>;

    /// Start applying `ops`, after everything started before, and return their answers later
    /// (see [`Pending::wait`]). A store that talks to a server works in the background meanwhile,
    /// so the caller can prepare the next operations; this default applies them at once.
    fn start(&mut self, ops: &[WindowOp]) -> Pending {
        Pending::ready(self.apply(ops))
    }
}

/// Answers of operations passed to [`WindowStore::start`].
pub struct Pending(PendingInner);

enum PendingInner {
    Ready(Result<Vec<WindowOutcome>, TransientError>),
    Running {
        task: tokio::task::JoinHandle<Result<Vec<WindowOutcome>, TransientError>>,
        handle: tokio::runtime::Handle,
    },
}

impl Pending {
    pub fn ready(answers: Result<Vec<WindowOutcome>, TransientError>) -> Pending {
        Pending(PendingInner::Ready(answers))
    }

    /// Answers computed by a task on `handle`'s runtime.
    pub fn running(
        task: tokio::task::JoinHandle<Result<Vec<WindowOutcome>, TransientError>>,
        handle: tokio::runtime::Handle,
    ) -> Pending {
        Pending(PendingInner::Running { task, handle })
    }

    /// Give up on operations not yet answered (the batch failed anyway; they are idempotent, so
    /// whether they ran or not makes no difference to its retry).
    pub fn abort(&self) {
        if let PendingInner::Running { task, .. } = &self.0 {
            task.abort();
        }
    }

    /// Block until the answers are there (call outside the runtime, like [`WindowStore::apply`]).
    pub fn wait(self) -> Result<Vec<WindowOutcome>, TransientError> {
        match self.0 {
            PendingInner::Ready(r) => r,
            PendingInner::Running { task, handle } => handle
                .block_on(task)
                .unwrap_or_else(|e| Err(TransientError::new("window_store", format!("store task failed: {e}")))),
        }
    }
}

/// Milliseconds a window key is kept after its last write.
pub(crate) fn state_ttl_ms(window_ms: i64, lateness_ms: i64) -> i64 {
    2 * window_ms + lateness_ms + 10 * 60 * 1000
}

/// A Redis-like sorted set: members ordered by (score, member), as Redis orders them.
#[derive(Debug, Default, Clone)]
struct ZSet {
    scores: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
}

impl ZSet {
    fn add(&mut self, member: &str, score: i64) {
        if let Some(old) = self.scores.insert(member.to_string(), score) {
            self.order.remove(&(old, member.to_string()));
        }
        self.order.insert((score, member.to_string()));
    }
    fn score(&self, member: &str) -> Option<i64> {
        self.scores.get(member).copied()
    }
    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.order.remove(&(old, member.to_string()));
        }
    }
    fn max_score(&self) -> Option<i64> {
        self.order.iter().next_back().map(|(s, _)| *s)
    }
    /// Members scored in `[min, max]`, in order.
    fn range(&self, min: i64, max: i64) -> impl DoubleEndedIterator<Item = &(i64, String)> {
        use std::ops::Bound;
        let lower = Bound::Included((min, String::new()));
        let upper = match max.checked_add(1) {
            _ if max < min => Bound::Excluded((min, String::new())),
            Some(next) => Bound::Excluded((next, String::new())),
            None => Bound::Unbounded,
        };
        self.order.range((lower, upper))
    }
    fn count(&self, min: i64, max: i64) -> u64 {
        if min > max {
            return 0;
        }
        self.range(min, max).count() as u64
    }
    fn len(&self) -> usize {
        self.order.len()
    }
    /// Keep only the `keep` highest-ranked members (Redis `ZREMRANGEBYRANK key 0 -(keep+1)`).
    fn keep_newest(&mut self, keep: usize) {
        while self.order.len() > keep {
            let Some((_, m)) = self.order.pop_first() else { break };
            self.scores.remove(&m);
        }
    }
    /// Remove members scored below `floor`; returns them.
    fn trim_below(&mut self, floor: i64) -> Vec<String> {
        let old: Vec<(i64, String)> = self.order.iter().take_while(|(s, _)| *s < floor).cloned().collect();
        for (s, m) in &old {
            self.order.remove(&(*s, m.clone()));
            self.scores.remove(m);
        }
        old.into_iter().map(|(_, m)| m).collect()
    }
}

/// Firings of one (rule, group): by time for the one-per-window rule, by trigger for replays.
#[derive(Debug, Default, Clone)]
struct Fired {
    by_time: ZSet,
    figures: HashMap<String, Firing>,
}

impl Fired {
    fn trim_below(&mut self, floor: i64) {
        for id in self.by_time.trim_below(floor) {
            self.figures.remove(&id);
        }
    }
    fn record(&mut self, trigger: &str, at: i64, f: &Firing) {
        self.by_time.add(trigger, at);
        self.figures.insert(trigger.to_string(), f.clone());
    }
}

#[derive(Debug, Default, Clone)]
struct GroupState {
    events: ZSet,
    /// distinct: value → event id of its newest sighting
    value_ids: HashMap<String, String>,
    steps: Vec<ZSet>,
    used: ZSet,
    fired: Fired,
    /// travel: event id → (latitude, longitude, country, place)
    points: HashMap<String, (String, String, String, String)>,
    /// first seen: value → when it was last shown; and the group's first event time
    last_seen: HashMap<String, i64>,
    since: Option<i64>,
}

/// The periods of one aggregate rule.
#[derive(Debug, Default, Clone)]
struct Periods {
    /// "group\nstart" → period end
    open: ZSet,
    /// "group\nstart" → (member → event id)
    members: HashMap<String, HashMap<String, String>>,
    /// periods already closed, by end
    closed: ZSet,
}

/// In-process window store with the same semantics as the Redis one.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    groups: HashMap<WindowKey, GroupState>,
    /// absence rule → (group → last event time)
    seen: HashMap<Arc<str>, ZSet>,
    /// absence rule → (group → last event time already reported silent)
    silent_fired: HashMap<Arc<str>, HashMap<String, i64>>,
    /// (subject type, subject) → (decision, ttl)
    pub blocks: HashMap<(String, String), (String, i64)>,
    /// aggregate rule → its periods
    periods: HashMap<Arc<str>, Periods>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Events currently held in the threshold window of (rule, group); for tests and `rules test`.
    pub fn threshold_members(&self, rule: &str, group: &str) -> usize {
        self.groups.get(&WindowKey { rule: Arc::from(rule), group: group.to_string() }).map_or(0, |g| g.events.scores.len())
    }

    fn apply_one(&mut self, op: &WindowOp) -> WindowOutcome {
        match op {
            WindowOp::Threshold { key, event_id, time_ms, window_ms, lateness_ms, limit } => {
                let g = self.groups.entry(key.clone()).or_default();
                threshold(g, event_id, *time_ms, *window_ms, *lateness_ms, *limit)
            }
            WindowOp::Distinct { key, event_id, time_ms, value, window_ms, lateness_ms, more_than } => {
                let g = self.groups.entry(key.clone()).or_default();
                distinct(g, event_id, *time_ms, value, *window_ms, *lateness_ms, *more_than)
            }
            WindowOp::Sequence { key, event_id, time_ms, steps_mask, steps, within_ms, lateness_ms, keep } => {
                let g = self.groups.entry(key.clone()).or_default();
                let window = SequenceWindow { steps: *steps as usize, within: *within_ms, late: *lateness_ms, keep: *keep as usize };
                sequence(g, event_id, *time_ms, *steps_mask, window)
            }
            WindowOp::Temporal { key, event_id, time_ms, steps_mask, steps, at_least, within_ms, lateness_ms, keep } => {
                let g = self.groups.entry(key.clone()).or_default();
                let window = SequenceWindow { steps: *steps as usize, within: *within_ms, late: *lateness_ms, keep: *keep as usize };
                temporal(g, event_id, *time_ms, *steps_mask, *at_least as u64, window)
            }
            WindowOp::Aggregate { rule, group, event_id, member, period_start, period_ms, .. } => {
                let p = self.periods.entry(rule.clone()).or_default();
                let key = format!("{group}\n{period_start}");
                if p.closed.score(&key).is_some() {
                    return WindowOutcome::TooLate;
                }
                let set = p.members.entry(key.clone()).or_default();
                set.entry(member.clone()).or_insert_with(|| event_id.clone());
                let observed = set.len() as u64;
                p.open.add(&key, period_start + period_ms);
                WindowOutcome::Counted { observed }
            }
            WindowOp::ClosePeriods { rule, cutoff_ms, min, max, limit, retention_ms } => {
                let Some(p) = self.periods.get_mut(rule) else { return WindowOutcome::Periods(Vec::new()) };
                let due: Vec<(i64, String)> = p.open.range(i64::MIN, *cutoff_ms).take(*limit).cloned().collect();
                let mut out = Vec::new();
                for (end, key) in due {
                    p.open.remove(&key);
                    let members = p.members.remove(&key).unwrap_or_default();
                    p.closed.add(&key, end);
                    let n = members.len() as u64;
                    if n < *min || n > *max {
                        continue;
                    }
                    let (group, start) = key.rsplit_once('\n').unwrap_or((key.as_str(), "0"));
                    let mut evidence: Vec<String> = members.into_values().collect();
                    evidence.sort();
                    evidence.truncate(EVIDENCE_CAP);
                    out.push(ClosedPeriod { group: group.to_string(), start_ms: start.parse().unwrap_or(0), end_ms: end, observed: n, evidence });
                }
                p.closed.trim_below(cutoff_ms - retention_ms);
                WindowOutcome::Periods(out)
            }
            WindowOp::Travel { key, event_id, time_ms, latitude, longitude, country, place, within_ms, max_speed_kmh, min_distance_km, keep } => {
                let g = self.groups.entry(key.clone()).or_default();
                let limits = TravelLimits { within: *within_ms, max_speed: *max_speed_kmh, min_km: *min_distance_km, keep: *keep as usize };
                let at = (latitude.clone(), longitude.clone(), country.clone(), place.clone());
                travel(g, event_id, *time_ms, at, limits)
            }
            WindowOp::FirstSeen { key, event_id, time_ms, value, learning_ms, forget_ms } => {
                let g = self.groups.entry(key.clone()).or_default();
                first_seen(g, event_id, *time_ms, value, *learning_ms, *forget_ms)
            }
            WindowOp::Seen { rule, group, time_ms, .. } => {
                if self.silent_fired.get(rule).and_then(|f| f.get(group)).is_some_and(|f| *f >= *time_ms) {
                    return WindowOutcome::Done;
                }
                let seen = self.seen.entry(rule.clone()).or_default();
                if seen.score(group).is_none_or(|s| s < *time_ms) {
                    seen.add(group, *time_ms);
                }
                WindowOutcome::Done
            }
            WindowOp::Expect { rule, group, now_ms, .. } => {
                if self.silent_fired.get(rule).is_some_and(|f| f.contains_key(group)) {
                    return WindowOutcome::Done;
                }
                let seen = self.seen.entry(rule.clone()).or_default();
                if seen.score(group).is_none() {
                    seen.add(group, *now_ms);
                }
                WindowOutcome::Done
            }
            WindowOp::ScanSilent { rule, now_ms, window_ms, limit } => {
                let Some(seen) = self.seen.get_mut(rule) else { return WindowOutcome::Silent(Vec::new()) };
                let cutoff = now_ms - window_ms;
                let found: Vec<(String, i64)> =
                    seen.range(i64::MIN, cutoff).take(*limit).map(|(s, m)| (m.clone(), *s)).collect();
                let fired = self.silent_fired.entry(rule.clone()).or_default();
                for (g, last) in &found {
                    seen.remove(g);
                    fired.insert(g.clone(), *last);
                }
                WindowOutcome::Silent(found)
            }
            WindowOp::Block { subject_type, subject, decision_json, ttl_ms } => {
                let k = (subject_type.to_string(), subject.clone());
                let longer = self.blocks.get(&k).is_some_and(|(_, ttl)| ttl >= ttl_ms);
                if !longer {
                    self.blocks.insert(k, (decision_json.clone(), *ttl_ms));
                }
                WindowOutcome::Done
            }
        }
    }
}

impl WindowStore for MemoryStore {
    fn apply(&mut self, ops: &[WindowOp]) -> Result<Vec<WindowOutcome>, TransientError> {
        Ok(ops.iter().map(|op| self.apply_one(op)).collect())
    }
}

/// Newest event time of the group and whether `t` is too late for it.
fn too_late(newest: Option<i64>, t: i64, window: i64, lateness: i64) -> (i64, bool) {
    let newest = newest.map_or(t, |n| n.max(t));
    (newest, t < newest - window - lateness)
}

fn threshold(g: &mut GroupState, id: &str, t: i64, w: i64, late: i64, limit: u64) -> WindowOutcome {
    if let Some(f) = g.fired.figures.get(id) {
        return WindowOutcome::Fired { firing: f.clone(), replayed: true };
    }
    let (newest, is_late) = too_late(g.events.max_score(), t, w, late);
    if is_late {
        return WindowOutcome::TooLate;
    }
    g.events.add(id, t);
    let floor = newest - 2 * w - late;
    g.events.trim_below(floor);
    g.fired.trim_below(floor);

    let mut n = g.events.count(t - w, t);
    let (mut start, mut end) = (t - w, t);
    if n < limit && t < newest && g.events.count(t - w, t + w) >= limit {
        // A late event: a window ending after it may have reached the limit with it.
        let xs: Vec<i64> = g.events.range(t - w, t + w).map(|(s, _)| *s).collect();
        let mut lo = 0;
        for (j, &ej) in xs.iter().enumerate() {
            if ej < t {
                continue;
            }
            while xs[lo] < ej - w {
                lo += 1;
            }
            let c = (j - lo + 1) as u64;
            if c >= limit {
                n = c;
                start = ej - w;
                end = ej;
                break;
            }
        }
    }
    if n < limit {
        return WindowOutcome::Counted { observed: n };
    }
    if g.fired.by_time.range(end - w + 1, end + w - 1).next().is_some() {
        return WindowOutcome::Suppressed { observed: n };
    }
    let recent: Vec<&String> = g.events.range(start, end).rev().take(EVIDENCE_CAP).map(|(_, m)| m).collect();
    let mut evidence: Vec<String> = recent.into_iter().rev().filter(|m| *m != id).cloned().collect();
    if evidence.len() >= EVIDENCE_CAP {
        evidence.remove(0);
    }
    evidence.push(id.to_string());
    let firing = Firing { start_ms: start, end_ms: end, observed: n, limit, evidence, detail: None };
    g.fired.record(id, end, &firing);
    WindowOutcome::Fired { firing, replayed: false }
}

fn distinct(g: &mut GroupState, id: &str, t: i64, value: &str, w: i64, late: i64, more_than: u64) -> WindowOutcome {
    if let Some(f) = g.fired.figures.get(id) {
        return WindowOutcome::Fired { firing: f.clone(), replayed: true };
    }
    let (newest, is_late) = too_late(g.events.max_score(), t, w, late);
    if is_late {
        return WindowOutcome::TooLate;
    }
    // `events` holds values here, scored by their newest sighting.
    if g.events.score(value).is_none_or(|cur| cur < t) {
        g.events.add(value, t);
        g.value_ids.insert(value.to_string(), id.to_string());
    }
    let floor = newest - 2 * w - late;
    for v in g.events.trim_below(floor) {
        g.value_ids.remove(&v);
    }
    g.fired.trim_below(floor);

    let mut n = g.events.count(t - w, t);
    if g.events.score(value).is_some_and(|s| s > t) {
        n += 1; // seen again later, but it occurred at t too
    }
    let (mut start, mut end) = (t - w, t);
    if n <= more_than && newest > t && t >= newest - w {
        let n2 = g.events.count(newest - w, newest);
        if n2 > n {
            n = n2;
            start = newest - w;
            end = newest;
        }
    }
    if n <= more_than {
        return WindowOutcome::Counted { observed: n };
    }
    if g.fired.by_time.range(end - w + 1, end + w - 1).next().is_some() {
        return WindowOutcome::Suppressed { observed: n };
    }
    let recent: Vec<&String> = g.events.range(start, end).rev().take(EVIDENCE_CAP).map(|(_, m)| m).collect();
    let mut evidence: Vec<String> = recent
        .into_iter()
        .rev()
        .filter(|v| v.as_str() != value)
        .filter_map(|v| g.value_ids.get(v).cloned())
        .collect();
    if evidence.len() >= EVIDENCE_CAP {
        evidence.remove(0);
    }
    evidence.push(id.to_string());
    let firing = Firing { start_ms: start, end_ms: end, observed: n, limit: more_than + 1, evidence, detail: None };
    g.fired.record(id, end, &firing);
    WindowOutcome::Fired { firing, replayed: false }
}

/// Shape of a sequence rule's window, as its operation carries it.
struct SequenceWindow {
    steps: usize,
    within: i64,
    late: i64,
    keep: usize,
}

fn sequence(g: &mut GroupState, id: &str, t: i64, mask: u32, w: SequenceWindow) -> WindowOutcome {
    let SequenceWindow { steps: n, within, late, keep } = w;
    if let Some(f) = g.fired.figures.get(id) {
        return WindowOutcome::Fired { firing: f.clone(), replayed: true };
    }
    if g.steps.len() < n {
        g.steps.resize_with(n, ZSet::default);
    }
    let newest_before = g.steps.iter().filter_map(ZSet::max_score).max();
    let (newest, is_late) = too_late(newest_before, t, within, late);
    if is_late {
        return WindowOutcome::TooLate;
    }
    for (k, step) in g.steps.iter_mut().enumerate().take(n) {
        if mask & (1 << k) != 0 {
            step.add(id, t);
        }
    }
    let floor = newest - 2 * within - late;
    for step in g.steps.iter_mut() {
        step.trim_below(floor);
        if step.len() > keep {
            step.keep_newest(keep);
        }
    }
    g.used.trim_below(floor);
    g.fired.trim_below(floor);

    // A chain that completes now holds this event, so it starts within `within` before it.
    // Members of fired chains leave the step sets, so the scans below skip almost nothing:
    // per event, about (first steps in range) × (steps) range lookups.
    let mut best = 0u64;
    let firsts: Vec<(i64, String)> = g.steps[0].range(t - within, t).cloned().collect();
    for (t1, a1) in firsts {
        if g.used.score(&a1).is_some() {
            continue;
        }
        let mut chain: Vec<(String, i64)> = vec![(a1.clone(), t1)];
        let mut cur = t1;
        let mut complete = true;
        for step in g.steps.iter().take(n).skip(1) {
            let next = step
                .range(cur, t1 + within)
                .find(|(_, c)| g.used.score(c).is_none() && !chain.iter().any(|(x, _)| x == c))
                .map(|(s, c)| (c.clone(), *s));
            match next {
                Some((c, s)) => {
                    cur = s;
                    chain.push((c, s));
                }
                None => {
                    complete = false;
                    break;
                }
            }
        }
        best = best.max(chain.len() as u64);
        if complete {
            for (c, s) in &chain {
                g.used.add(c, *s);
                for step in g.steps.iter_mut() {
                    step.remove(c);
                }
            }
            let mut evidence: Vec<String> = chain.iter().map(|(c, _)| c.clone()).filter(|c| c != id).collect();
            evidence.push(id.to_string());
            let firing = Firing { start_ms: t1, end_ms: cur, observed: n as u64, limit: n as u64, evidence, detail: None };
            g.fired.record(id, t, &firing);
            return WindowOutcome::Fired { firing, replayed: false };
        }
    }
    WindowOutcome::Counted { observed: best }
}

/// Steps in any order: the first window (ending at this event or at a later member, so a late
/// event completes a set too) whose unused events cover `at_least` steps fires; each step takes
/// its newest unused member in the window, this event the steps it matches.
fn temporal(g: &mut GroupState, id: &str, t: i64, mask: u32, at_least: u64, w: SequenceWindow) -> WindowOutcome {
    let SequenceWindow { steps: n, within, late, keep } = w;
    if let Some(f) = g.fired.figures.get(id) {
        return WindowOutcome::Fired { firing: f.clone(), replayed: true };
    }
    if g.steps.len() < n {
        g.steps.resize_with(n, ZSet::default);
    }
    let newest_before = g.steps.iter().filter_map(ZSet::max_score).max();
    let (newest, is_late) = too_late(newest_before, t, within, late);
    if is_late {
        return WindowOutcome::TooLate;
    }
    for (k, step) in g.steps.iter_mut().enumerate().take(n) {
        if mask & (1 << k) != 0 {
            step.add(id, t);
        }
    }
    let floor = newest - 2 * within - late;
    for step in g.steps.iter_mut() {
        step.trim_below(floor);
        if step.len() > keep {
            step.keep_newest(keep);
        }
    }
    g.used.trim_below(floor);
    g.fired.trim_below(floor);

    let mut ends: Vec<i64> = vec![t];
    for step in g.steps.iter().take(n) {
        ends.extend(step.range(t + 1, t + within).map(|(s, _)| *s));
    }
    ends.sort_unstable();
    ends.dedup();
    let mut best = 0u64;
    for end in ends {
        let mut covered = 0u64;
        let mut picked: Vec<(i64, String)> = Vec::new();
        for (k, step) in g.steps.iter().enumerate().take(n) {
            if mask & (1 << k) != 0 {
                covered += 1;
                continue;
            }
            if let Some((s, m)) = step.range(end - within, end).rev().find(|(_, m)| m != id && g.used.score(m).is_none()) {
                covered += 1;
                if !picked.iter().any(|(_, x)| x == m) {
                    picked.push((*s, m.clone()));
                }
            }
        }
        best = best.max(covered);
        if covered < at_least {
            continue;
        }
        picked.sort();
        let start = picked.first().map_or(t, |(s, _)| (*s).min(t));
        let last = picked.last().map_or(t, |(s, _)| (*s).max(t));
        let mut evidence: Vec<String> = picked.iter().map(|(_, m)| m.clone()).collect();
        evidence.push(id.to_string());
        for (s, m) in picked.iter().chain(std::iter::once(&(t, id.to_string()))) {
            g.used.add(m, *s);
            for step in g.steps.iter_mut() {
                step.remove(m);
            }
        }
        let firing = Firing { start_ms: start, end_ms: last, observed: covered, limit: at_least, evidence, detail: None };
        g.fired.record(id, t, &firing);
        return WindowOutcome::Fired { firing, replayed: false };
    }
    WindowOutcome::Counted { observed: best }
}

/// Mean Earth radius (km) of the great-circle distance.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance in km (haversine), as the Redis script computes it.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// Bounds of a travel rule, as its operation carries them.
struct TravelLimits {
    within: i64,
    max_speed: f64,
    min_km: f64,
    keep: usize,
}

/// A located event: latitude, longitude (as compared), country code, place.
type Point = (String, String, String, String);

/// One end of a journey, for the figures.
fn travel_end(id: &str, t: i64, p: &Point) -> serde_json::Value {
    let num = |s: &str| s.parse::<f64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null);
    serde_json::json!({"eventId": id, "time": t, "countryCode": p.2, "place": p.3, "latitude": num(&p.0), "longitude": num(&p.1)})
}

fn travel(g: &mut GroupState, id: &str, t: i64, at: Point, l: TravelLimits) -> WindowOutcome {
    if let Some(f) = g.fired.figures.get(id) {
        return WindowOutcome::Fired { firing: f.clone(), replayed: true };
    }
    g.events.add(id, t);
    g.points.insert(id.to_string(), at);
    let newest = g.events.max_score().unwrap_or(t);
    let floor = newest - 2 * l.within;
    let mut gone = g.events.trim_below(floor);
    if g.events.len() > l.keep {
        let before: Vec<String> = g.events.order.iter().map(|(_, m)| m.clone()).collect();
        g.events.keep_newest(l.keep);
        gone.extend(before.into_iter().filter(|m| g.events.score(m).is_none()));
    }
    for m in gone {
        g.points.remove(&m);
    }
    g.fired.trim_below(floor);
    let Some(here) = g.points.get(id).cloned() else { return WindowOutcome::Counted { observed: 0 } };
    let before = g.events.range(t - l.within, t).rev().find(|(_, m)| m != id).cloned();
    let after = g.events.range(t, t + l.within).find(|(_, m)| m != id).cloned();
    let mut fastest = 0u64;
    for (s, other) in [before, after].into_iter().flatten() {
        let Some(there) = g.points.get(&other).cloned() else { continue };
        let coords = |p: &Point| (p.0.parse::<f64>().unwrap_or(0.0), p.1.parse::<f64>().unwrap_or(0.0));
        let ((la1, lo1), (la2, lo2)) = (coords(&there), coords(&here));
        let km = distance_km(la1, lo1, la2, lo2);
        let ms = (t - s).abs();
        // A minute at least: two logins in the same second are not infinitely fast.
        let hours = ms.max(60_000) as f64 / 3_600_000.0;
        let speed = km / hours;
        fastest = fastest.max(speed.round() as u64);
        // A pair fires once: seen again from its other end (a replay, or a late event), it is
        // the journey already reported.
        let reported = g.fired.figures.get(&other).is_some_and(|f| f.evidence.iter().any(|e| e == id));
        if km < l.min_km || speed <= l.max_speed || reported {
            continue;
        }
        let (from, to) = if s <= t { (travel_end(&other, s, &there), travel_end(id, t, &here)) } else { (travel_end(id, t, &here), travel_end(&other, s, &there)) };
        let detail = serde_json::json!({
            "from": from, "to": to,
            "distanceKm": km.round() as u64, "minutes": (ms as f64 / 60_000.0).round() as u64, "speedKmh": speed.round() as u64,
        });
        let firing = Firing {
            start_ms: s.min(t),
            end_ms: s.max(t),
            observed: speed.round() as u64,
            limit: l.max_speed.round() as u64,
            evidence: vec![other, id.to_string()],
            detail: Some(detail),
        };
        g.fired.record(id, t, &firing);
        return WindowOutcome::Fired { firing, replayed: false };
    }
    WindowOutcome::Counted { observed: fastest }
}

fn first_seen(g: &mut GroupState, id: &str, t: i64, value: &str, learning: i64, forget: i64) -> WindowOutcome {
    if let Some(f) = g.fired.figures.get(id) {
        return WindowOutcome::Fired { firing: f.clone(), replayed: true };
    }
    let since = g.since.map_or(t, |s| s.min(t));
    g.since = Some(since);
    if let Some(last) = g.last_seen.get_mut(value) {
        if *last >= t - forget {
            *last = (*last).max(t);
            return WindowOutcome::Counted { observed: g.last_seen.len() as u64 };
        }
    }
    // New, or forgotten: the group's other values still remembered are its baseline.
    g.last_seen.retain(|v, last| v != value && *last >= t - forget);
    let known = g.last_seen.len() as u64;
    g.last_seen.insert(value.to_string(), t);
    g.fired.trim_below(t - forget);
    if known == 0 || t - since < learning {
        return WindowOutcome::Counted { observed: known + 1 };
    }
    let detail = serde_json::json!({"value": value, "knownValues": known, "learningSince": since});
    let firing = Firing { start_ms: since, end_ms: t, observed: known + 1, limit: known, evidence: vec![id.to_string()], detail: Some(detail) };
    g.fired.record(id, t, &firing);
    WindowOutcome::Fired { firing, replayed: false }
}
