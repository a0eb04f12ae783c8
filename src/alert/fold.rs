//! The fold decisions of one batch, in memory: which alert a match folds into, when a group's
//! pooled matches open an alert and which matches that alert takes. Pure: the sink loads the
//! state these decisions read ([`Fold::new`]), applies the batch's fresh hits in consumption
//! order ([`Fold::apply`]) and writes back what changed ([`Fold::finish`]).
//!
//! The rules are those of [`crate::alert::store`]; every decision sees the effects of the
//! earlier ones, as if each hit had been written before the next was read.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::policy::{alert_id, fingerprint};
use super::store::HitOutcome;

/// A row of `alert_matches` not (yet) in any alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub policy_id: String,
    pub match_id: String,
    pub matched_at: DateTime<Utc>,
    pub event_id: Option<String>,
}

/// An alert's folding state: what a fold or an opening reads and changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertState {
    pub id: Uuid,
    pub group_hash: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub match_count: i32,
    pub suppressed_count: i32,
    pub evidence: Vec<String>,
    /// The hit (as numbered by the caller) that opened it in this batch; `None` when it was
    /// already in the table.
    pub opened_by: Option<usize>,
    /// Changed by this batch (always true for an alert opened by it).
    pub changed: bool,
}

/// A policy's frequency and suppression, as one hit carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub count: u32,
    pub window_seconds: u64,
    pub suppression_seconds: u64,
}

/// What a batch changed.
#[derive(Debug, Default)]
pub struct FoldResult {
    /// Alerts opened by the batch (to insert), in the order they opened.
    pub opened: Vec<AlertState>,
    /// Alerts already in the table whose counters changed (to update).
    pub updated: Vec<AlertState>,
    /// `(policy id, match id, alert id)` of every match that joined an alert.
    pub assigned: Vec<(String, String, Uuid)>,
}

#[derive(Debug, Default)]
struct Group {
    /// Indexes into `Fold::alerts`.
    alerts: Vec<usize>,
    /// Unassigned matches by (time, arrival): time ranges are what every decision asks for.
    pool: BTreeMap<(DateTime<Utc>, u64), PoolRow>,
}

#[derive(Debug)]
pub struct Fold {
    groups: HashMap<String, Group>,
    alerts: Vec<AlertState>,
    by_id: HashMap<Uuid, usize>,
    assigned: Vec<(String, String, Uuid)>,
    arrival: u64,
    max_evidence: usize,
}

impl Fold {
    /// Start from the alerts and unassigned matches of the batch's groups that the batch's
    /// decisions can reach (see `store::apply_batch` for which ones those are).
    pub fn new(
        max_evidence: usize,
        alerts: impl IntoIterator<Item = AlertState>,
        pooled: impl IntoIterator<Item = (String, PoolRow)>,
    ) -> Fold {
        let mut fold = Fold {
            groups: HashMap::new(),
            alerts: Vec::new(),
            by_id: HashMap::new(),
            assigned: Vec::new(),
            arrival: 0,
            max_evidence,
        };
        for a in alerts {
            fold.add_alert(a);
        }
        for (group, row) in pooled {
            fold.pool(&group, row);
        }
        fold
    }

    fn add_alert(&mut self, a: AlertState) -> usize {
        let i = self.alerts.len();
        self.by_id.insert(a.id, i);
        self.groups.entry(a.group_hash.clone()).or_default().alerts.push(i);
        self.alerts.push(a);
        i
    }

    fn pool(&mut self, group: &str, row: PoolRow) {
        self.arrival += 1;
        let key = (row.matched_at, self.arrival);
        self.groups.entry(group.to_string()).or_default().pool.insert(key, row);
    }

    /// Apply one fresh (not replayed) hit: `row` is its new `alert_matches` row, `hit` the
    /// caller's number for it (kept on an alert it opens).
    pub fn apply(&mut self, hit: usize, group: &str, row: PoolRow, limits: Limits) -> HitOutcome {
        let t = row.matched_at;
        let covering = self.groups.get(group).and_then(|g| {
            g.alerts
                .iter()
                .copied()
                .filter(|&i| self.alerts[i].window_start <= t && t < self.alerts[i].window_end)
                .max_by_key(|&i| self.alerts[i].window_start)
        });
        if let Some(i) = covering {
            let max_evidence = self.max_evidence;
            let a = &mut self.alerts[i];
            a.suppressed_count = a.match_count;
            a.match_count += 1;
            a.first_seen = a.first_seen.min(t);
            a.last_seen = a.last_seen.max(t);
            if let Some(ev) = &row.event_id {
                if a.evidence.len() < max_evidence {
                    a.evidence.push(ev.clone());
                }
            }
            a.changed = true;
            let id = a.id;
            self.assigned.push((row.policy_id, row.match_id, id));
            return HitOutcome::Folded(id);
        }

        self.pool(group, row);
        let window_from = t - Duration::seconds(limits.window_seconds as i64);
        let g = self.groups.get_mut(group).expect("pooled just now");
        let pooled = g.pool.range((Excluded((window_from, u64::MAX)), Included((t, u64::MAX)))).count();
        if (pooled as u64) < u64::from(limits.count) {
            return HitOutcome::Pooled;
        }

        let window_end = t + Duration::seconds(limits.suppression_seconds as i64);
        let id = alert_id(&fingerprint(group, t));
        // In the alert's range: they leave the pool whichever alert takes them.
        let keys: Vec<_> =
            g.pool.range((Excluded((window_from, u64::MAX)), Excluded((window_end, 0)))).map(|(k, _)| *k).collect();
        let mut taken: Vec<PoolRow> = keys.iter().filter_map(|k| g.pool.remove(k)).collect();
        // An alert with this id already exists (its window cannot hold t, or t would have
        // folded): it stays as it is and takes the matches, as an insert that conflicts would.
        let i = match self.by_id.get(&id) {
            Some(&i) => i,
            None => self.add_alert(AlertState {
                id,
                group_hash: group.to_string(),
                window_start: t,
                window_end,
                first_seen: t,
                last_seen: t,
                match_count: 0,
                suppressed_count: 0,
                evidence: Vec::new(),
                opened_by: Some(hit),
                changed: true,
            }),
        };
        taken.sort_by(|a, b| (a.matched_at, &a.match_id).cmp(&(b.matched_at, &b.match_id)));
        let a = &mut self.alerts[i];
        a.match_count += taken.len() as i32;
        a.suppressed_count = a.match_count - 1;
        if let (Some(first), Some(last)) = (taken.first(), taken.last()) {
            a.first_seen = a.first_seen.min(first.matched_at);
            a.last_seen = a.last_seen.max(last.matched_at);
        }
        a.evidence.extend(taken.iter().filter_map(|r| r.event_id.clone()));
        a.evidence.truncate(self.max_evidence);
        a.changed = true;
        self.assigned.extend(taken.into_iter().map(|r| (r.policy_id, r.match_id, id)));
        HitOutcome::Opened(id)
    }

    pub fn finish(self) -> FoldResult {
        let mut result = FoldResult { assigned: self.assigned, ..FoldResult::default() };
        for a in self.alerts.into_iter().filter(|a| a.changed) {
            if a.opened_by.is_some() {
                result.opened.push(a);
            } else {
                result.updated.push(a);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn row(id: &str, s: i64) -> PoolRow {
        PoolRow { policy_id: "p".into(), match_id: id.into(), matched_at: at(s), event_id: Some(format!("ev-{id}")) }
    }

    const TEN_IN_600: Limits = Limits { count: 10, window_seconds: 600, suppression_seconds: 300 };

    fn outcome_kind(o: HitOutcome) -> &'static str {
        match o {
            HitOutcome::Replayed => "replayed",
            HitOutcome::Pooled => "pooled",
            HitOutcome::Opened(_) => "opened",
            HitOutcome::Folded(_) => "folded",
        }
    }

    #[test]
    fn the_tenth_match_opens_and_later_ones_of_the_same_batch_fold_in() {
        let mut fold = Fold::new(5, [], []);
        let kinds: Vec<_> =
            (0..12).map(|i| outcome_kind(fold.apply(i, "g", row(&format!("m{i:02}"), i as i64), TEN_IN_600))).collect();
        assert_eq!(kinds[..9], ["pooled"; 9]);
        assert_eq!(kinds[9..], ["opened", "folded", "folded"]);
        let r = fold.finish();
        assert!(r.updated.is_empty());
        let [a] = &r.opened[..] else { panic!("{:?}", r.opened) };
        assert_eq!(a.id, alert_id(&fingerprint("g", at(9))));
        assert_eq!((a.window_start, a.window_end), (at(9), at(309)));
        assert_eq!((a.match_count, a.suppressed_count), (12, 11));
        assert_eq!((a.first_seen, a.last_seen), (at(0), at(11)));
        assert_eq!(a.evidence, ["ev-m00", "ev-m01", "ev-m02", "ev-m03", "ev-m04"], "capped, in time order");
        assert_eq!(a.opened_by, Some(9));
        assert_eq!(r.assigned.len(), 12);
    }

    #[test]
    fn loaded_state_counts_and_existing_alerts_are_updated_not_opened() {
        let existing = AlertState {
            id: Uuid::from_u128(7),
            group_hash: "g".into(),
            window_start: at(0),
            window_end: at(300),
            first_seen: at(0),
            last_seen: at(5),
            match_count: 3,
            suppressed_count: 2,
            evidence: vec!["a".into(), "b".into()],
            opened_by: None,
            changed: false,
        };
        let limits = Limits { count: 2, window_seconds: 60, suppression_seconds: 300 };
        let mut fold = Fold::new(3, [existing], [("h".to_string(), row("old", 400))]);
        assert_eq!(fold.apply(0, "g", row("x", 10), limits), HitOutcome::Folded(Uuid::from_u128(7)));
        assert_eq!(fold.apply(1, "g", row("y", 20), limits), HitOutcome::Folded(Uuid::from_u128(7)));
        // Group h: one pooled match in the table, one fresh: together they reach the count.
        assert_eq!(outcome_kind(fold.apply(2, "h", row("z", 430), limits)), "opened");
        // Outside every window and alone in its own: pooled.
        assert_eq!(fold.apply(3, "g", row("w", 1000), limits), HitOutcome::Pooled);
        let r = fold.finish();
        let [u] = &r.updated[..] else { panic!("{:?}", r.updated) };
        assert_eq!((u.match_count, u.suppressed_count, u.last_seen), (5, 4, at(20)));
        assert_eq!(u.evidence, ["a", "b", "ev-x"], "appended while below the cap");
        let [o] = &r.opened[..] else { panic!("{:?}", r.opened) };
        assert_eq!((o.match_count, o.first_seen, o.last_seen), (2, at(400), at(430)));
        let mut assigned: Vec<_> = r.assigned.iter().map(|(_, m, _)| m.as_str()).collect();
        assigned.sort_unstable();
        assert_eq!(assigned, ["old", "x", "y", "z"]);
    }

    #[test]
    fn an_opening_takes_pooled_matches_up_to_the_window_end_but_not_later_ones() {
        // Out of order: matches at 0..3 and one at 400 (past the window the opening at 3 sets).
        let limits = Limits { count: 3, window_seconds: 60, suppression_seconds: 100 };
        let mut fold = Fold::new(10, [], []);
        assert_eq!(fold.apply(0, "g", row("late", 400), limits), HitOutcome::Pooled);
        assert_eq!(fold.apply(1, "g", row("b", 50), limits), HitOutcome::Pooled);
        assert_eq!(fold.apply(2, "g", row("a", 0), limits), HitOutcome::Pooled);
        // c at 30: only a and c lie in (−30, 30] (b is later): still below the count.
        assert_eq!(fold.apply(3, "g", row("c", 30), limits), HitOutcome::Pooled);
        // d at 55: (−5, 55] holds a, b, c, d: opens [55, 155) and takes a, b, c, d, not "late".
        assert_eq!(outcome_kind(fold.apply(4, "g", row("d", 55), limits)), "opened");
        // An earlier time than the window start is not covered: it pools, alone.
        assert_eq!(fold.apply(5, "g", row("e", 1), limits), HitOutcome::Pooled);
        let r = fold.finish();
        let [o] = &r.opened[..] else { panic!() };
        assert_eq!((o.match_count, o.suppressed_count, o.first_seen, o.last_seen), (4, 3, at(0), at(55)));
        assert_eq!(o.evidence, ["ev-a", "ev-c", "ev-b", "ev-d"]);
        assert_eq!(r.assigned.len(), 4);
    }

    #[test]
    fn the_latest_covering_window_wins_and_an_existing_id_is_reused() {
        let alert = |id: u128, start: i64, end: i64| AlertState {
            id: Uuid::from_u128(id),
            group_hash: "g".into(),
            window_start: at(start),
            window_end: at(end),
            first_seen: at(start),
            last_seen: at(start),
            match_count: 1,
            suppressed_count: 0,
            evidence: Vec::new(),
            opened_by: None,
            changed: false,
        };
        let once = Limits { count: 1, window_seconds: 60, suppression_seconds: 300 };
        let mut fold = Fold::new(10, [alert(1, 0, 300), alert(2, 100, 400)], []);
        assert_eq!(fold.apply(0, "g", row("x", 150), once), HitOutcome::Folded(Uuid::from_u128(2)));
        // Same fingerprint as an alert in the table whose window no longer holds its start
        // (suppression shortened since): no new alert, the old one takes the match.
        let id = alert_id(&fingerprint("g", at(1000)));
        let mut stale = alert(0, 1000, 1000);
        stale.id = id;
        let mut fold = Fold::new(10, [stale], []);
        assert_eq!(fold.apply(0, "g", row("y", 1000), once), HitOutcome::Opened(id));
        let r = fold.finish();
        assert!(r.opened.is_empty());
        assert_eq!((r.updated[0].match_count, r.updated[0].window_end), (2, at(1000)));
    }
}
