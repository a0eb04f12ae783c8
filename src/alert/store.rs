//! Alert state in PostgreSQL: folding matches into alerts (inside the sink's transaction) and
//! the dispatcher's claim / record / finish queries (the outbox).
//!
//! Folding, per (match, policy) in consumption order:
//! 1. insert `(policy, match id)` into `alert_matches`; a conflict means the match was already
//!    counted (a replay): nothing else happens;
//! 2. an alert of the group whose window `[start, end)` holds the match's time exists: the
//!    match folds into it (`match_count`/`suppressed_count` + 1, evidence appended);
//! 3. otherwise, if the group's matches not yet in any alert within `(t − window, t]` reach the
//!    policy's count, an alert opens with window `[t, t + suppression)` and takes every such
//!    match in `(t − window, t + suppression)`.
//!
//! A batch does this with a fixed number of statements, not a few per hit: it reads the
//! unassigned matches and the alerts its decisions can reach, inserts its matches at once
//! (the conflicts are the replays), takes the decisions in memory in consumption order
//! ([`super::fold`], so a later match sees what an earlier one opened), and writes back the
//! new alerts, the changed counters and the matches' alert ids, each in one statement.
//!
//! Groups are serialised with transaction-scoped advisory locks taken in a fixed order, so two
//! instances whose partitions carry the same group cannot both miss (or both open) an alert,
//! and what a batch read of its groups stays true until it commits.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::fold::{AlertState, Fold, Limits, PoolRow};
use super::policy::{fingerprint, lock_key, PolicyHit};
use super::render::{truncate_json, AlertRecord, RECORD_SCHEMA_VERSION};
use crate::rule_match::RuleMatch;

/// A decoded rule match and the policies that selected it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub m: RuleMatch,
    pub hits: Vec<PolicyHit>,
    /// The triggering event (or the last evidence id).
    pub event_id: Option<String>,
    /// The trace context of the match's record (its span in this stage, when recorded).
    pub trace: Option<crate::trace::TraceParent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitOutcome {
    /// Seen before for this policy: nothing changes.
    Replayed,
    /// Counted toward the group's frequency; no alert (yet).
    Pooled,
    Opened(Uuid),
    Folded(Uuid),
}

/// Lock every group of the batch, in ascending key order (no deadlock between instances).
pub async fn lock_groups(tx: &mut Transaction<'_, Postgres>, items: &[Candidate]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = items.iter().flat_map(|c| c.hits.iter().map(|h| lock_key(&h.group_hash))).collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k)
           FROM (SELECT k FROM UNNEST($1::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY i) AS ordered",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Apply every policy hit of a batch, in consumption order (see the module docs), with a fixed
/// number of statements whatever the batch's size. `policy_name` names the policy of a hit
/// for the alerts it opens. Returns one outcome per hit, in the batch's order.
pub async fn apply_batch(
    tx: &mut Transaction<'_, Postgres>,
    items: &[Candidate],
    policy_name: &dyn Fn(&PolicyHit) -> String,
    max_evidence: usize,
) -> Result<Vec<HitOutcome>, sqlx::Error> {
    let hits: Vec<(&Candidate, &PolicyHit)> = items.iter().flat_map(|c| c.hits.iter().map(move |h| (c, h))).collect();
    if hits.is_empty() {
        return Ok(Vec::new());
    }
    let pooled = load_pool(tx, &hits).await?;
    let fresh = insert_matches(tx, &hits).await?;
    if fresh.iter().all(|f| !f) {
        return Ok(vec![HitOutcome::Replayed; hits.len()]);
    }
    let fresh_hits: Vec<(&Candidate, &PolicyHit)> =
        hits.iter().zip(&fresh).filter(|(_, f)| **f).map(|(h, _)| *h).collect();
    let alerts = load_alerts(tx, &fresh_hits).await?;

    let mut fold = Fold::new(max_evidence, alerts, pooled);
    let outcomes: Vec<HitOutcome> = hits
        .iter()
        .zip(&fresh)
        .enumerate()
        .map(|(i, ((c, h), fresh))| {
            if !fresh {
                return HitOutcome::Replayed;
            }
            let row = PoolRow {
                policy_id: h.policy_id.clone(),
                match_id: c.m.match_id.clone(),
                matched_at: c.m.matched_at,
                event_id: c.event_id.clone(),
            };
            let limits =
                Limits { count: h.count, window_seconds: h.window_seconds, suppression_seconds: h.suppression_seconds };
            fold.apply(i, &h.group_hash, row, limits)
        })
        .collect();
    let result = fold.finish();
    insert_alerts(tx, &result.opened, &hits, policy_name).await?;
    update_alerts(tx, &result.updated).await?;
    assign_matches(tx, &result.assigned).await?;
    Ok(outcomes)
}

/// Per group of `hits`: the earliest and latest of a time computed from each hit.
fn group_bounds<'a>(
    hits: &[(&'a Candidate, &'a PolicyHit)],
    low: impl Fn(&Candidate, &PolicyHit) -> DateTime<Utc>,
    high: impl Fn(&Candidate, &PolicyHit) -> DateTime<Utc>,
) -> (Vec<&'a str>, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let mut bounds: HashMap<&str, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    for (c, h) in hits {
        let (lo, hi) = (low(c, h), high(c, h));
        let b = bounds.entry(h.group_hash.as_str()).or_insert((lo, hi));
        b.0 = b.0.min(lo);
        b.1 = b.1.max(hi);
    }
    let mut cols = (Vec::new(), Vec::new(), Vec::new());
    for (g, (lo, hi)) in bounds {
        cols.0.push(g);
        cols.1.push(lo);
        cols.2.push(hi);
    }
    cols
}

/// The unassigned matches the batch's decisions can count or take: those of its groups within
/// `(t − window, t + suppression)` of some hit. Read before the batch's own rows are inserted.
async fn load_pool(
    tx: &mut Transaction<'_, Postgres>,
    hits: &[(&Candidate, &PolicyHit)],
) -> Result<Vec<(String, PoolRow)>, sqlx::Error> {
    let (groups, after, before) = group_bounds(
        hits,
        |c, h| c.m.matched_at - Duration::seconds(h.window_seconds as i64),
        |c, h| c.m.matched_at + Duration::seconds(h.suppression_seconds as i64),
    );
    type Row = (String, String, String, DateTime<Utc>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.group_hash, m.policy_id, m.match_id, m.matched_at, m.event_id
           FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS g(hash, after, before)
           JOIN alert_matches m ON m.group_hash = g.hash AND m.alert_id IS NULL
                               AND m.matched_at > g.after AND m.matched_at < g.before",
    )
    .bind(&groups)
    .bind(&after)
    .bind(&before)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(g, policy_id, match_id, matched_at, event_id)| (g, PoolRow { policy_id, match_id, matched_at, event_id }))
        .collect())
}

/// Insert every hit's `(policy, match id)` (the replay guard). Returns, per hit, whether it is
/// new: not in the table before and not an earlier hit of the same batch.
async fn insert_matches(
    tx: &mut Transaction<'_, Postgres>,
    hits: &[(&Candidate, &PolicyHit)],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut seen = HashSet::new();
    let first: Vec<bool> = hits.iter().map(|(c, h)| seen.insert((h.policy_id.as_str(), c.m.match_id.as_str()))).collect();
    let (mut policy, mut match_id, mut group, mut rule, mut at, mut event) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (c, h) in hits.iter().zip(&first).filter(|(_, f)| **f).map(|(h, _)| h) {
        policy.push(h.policy_id.as_str());
        match_id.push(c.m.match_id.as_str());
        group.push(h.group_hash.as_str());
        rule.push(c.m.rule_id.as_str());
        at.push(c.m.matched_at);
        event.push(c.event_id.as_deref());
    }
    let inserted: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO alert_matches (policy_id, match_id, group_hash, rule_id, matched_at, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
         ON CONFLICT DO NOTHING
         RETURNING policy_id, match_id",
    )
    .bind(&policy)
    .bind(&match_id)
    .bind(&group)
    .bind(&rule)
    .bind(&at)
    .bind(&event)
    .fetch_all(&mut **tx)
    .await?;
    let inserted: HashSet<(&str, &str)> = inserted.iter().map(|(p, m)| (p.as_str(), m.as_str())).collect();
    Ok(hits
        .iter()
        .zip(first)
        .map(|((c, h), first)| first && inserted.contains(&(h.policy_id.as_str(), c.m.match_id.as_str())))
        .collect())
}

/// The alerts of the fresh hits' groups that a decision can reach: every alert whose window
/// holds one of their times, and every alert one of them would open (same window start, hence
/// same id).
async fn load_alerts(
    tx: &mut Transaction<'_, Postgres>,
    hits: &[(&Candidate, &PolicyHit)],
) -> Result<Vec<AlertState>, sqlx::Error> {
    let (groups, first, last) = group_bounds(hits, |c, _| c.m.matched_at, |c, _| c.m.matched_at);
    type Row = (Uuid, String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, i32, i32, Vec<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.id, a.group_hash, a.window_start, a.window_end, a.first_seen, a.last_seen,
                a.match_count, a.suppressed_count, a.evidence_event_ids
           FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS g(hash, first_t, last_t)
           JOIN audit_alerts a ON a.group_hash = g.hash AND a.window_start <= g.last_t
                              AND a.window_end >= g.first_t",
    )
    .bind(&groups)
    .bind(&first)
    .bind(&last)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, group_hash, window_start, window_end, first_seen, last_seen, match_count, suppressed_count, evidence)| {
            AlertState {
                id,
                group_hash,
                window_start,
                window_end,
                first_seen,
                last_seen,
                match_count,
                suppressed_count,
                evidence,
                opened_by: None,
                changed: false,
            }
        })
        .collect())
}

/// A PostgreSQL array literal of `values` (UNNEST cannot take an array of arrays, so a column
/// of arrays travels as text and is cast back).
fn text_array_literal(values: &[String]) -> String {
    let quoted: Vec<String> =
        values.iter().map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

async fn insert_alerts(
    tx: &mut Transaction<'_, Postgres>,
    opened: &[AlertState],
    hits: &[(&Candidate, &PolicyHit)],
    policy_name: &dyn Fn(&PolicyHit) -> String,
) -> Result<(), sqlx::Error> {
    if opened.is_empty() {
        return Ok(());
    }
    #[derive(Default)]
    struct Columns {
        id: Vec<Uuid>,
        fingerprint: Vec<String>,
        policy_id: Vec<String>,
        policy_name: Vec<String>,
        rule_id: Vec<String>,
        rule_name: Vec<String>,
        severity: Vec<&'static str>,
        group_key: Vec<String>,
        group_hash: Vec<String>,
        compliance: Vec<String>,
        window_start: Vec<DateTime<Utc>>,
        window_end: Vec<DateTime<Utc>>,
        first_seen: Vec<DateTime<Utc>>,
        last_seen: Vec<DateTime<Utc>>,
        match_count: Vec<i32>,
        suppressed_count: Vec<i32>,
        evidence: Vec<String>,
        trigger: Vec<String>,
        group_wait: Vec<f64>,
        trace_parent: Vec<Option<String>>,
    }
    let mut c = Columns::default();
    for a in opened {
        let Some(&(cand, hit)) = a.opened_by.and_then(|i| hits.get(i)) else { continue };
        let m = &cand.m;
        c.id.push(a.id);
        c.fingerprint.push(fingerprint(&a.group_hash, a.window_start));
        c.policy_id.push(hit.policy_id.clone());
        c.policy_name.push(policy_name(hit));
        c.rule_id.push(m.rule_id.clone());
        c.rule_name.push(m.rule_name.clone());
        c.severity.push(m.severity.as_str());
        c.group_key.push(serde_json::to_string(&hit.group_key).unwrap_or_else(|_| "null".into()));
        c.group_hash.push(a.group_hash.clone());
        c.compliance.push(text_array_literal(&m.compliance));
        c.window_start.push(a.window_start);
        c.window_end.push(a.window_end);
        c.first_seen.push(a.first_seen);
        c.last_seen.push(a.last_seen);
        c.match_count.push(a.match_count);
        c.suppressed_count.push(a.suppressed_count);
        c.evidence.push(text_array_literal(&a.evidence));
        c.trigger.push(serde_json::to_string(m).unwrap_or_else(|_| "null".into()));
        c.group_wait.push(hit.group_wait_seconds as f64);
        c.trace_parent.push(cand.trace.map(|t| t.to_string()));
    }
    // No ON CONFLICT: an alert with the same id was loaded, so the fold reused it instead.
    sqlx::query(
        "INSERT INTO audit_alerts (
             id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key,
             group_hash, compliance, window_start, window_end, first_seen, last_seen, match_count,
             suppressed_count, evidence_event_ids, trigger_match, dispatch_after, trace_parent)
         SELECT id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key::jsonb,
                group_hash, compliance::text[], window_start, window_end, first_seen, last_seen,
                match_count, suppressed_count, evidence::text[], trigger_match::jsonb,
                now() + make_interval(secs => group_wait), trace_parent
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[],
                       $13::timestamptz[], $14::timestamptz[], $15::int[], $16::int[], $17::text[],
                       $18::text[], $19::float8[], $20::text[])
             AS u(id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key,
                  group_hash, compliance, window_start, window_end, first_seen, last_seen,
                  match_count, suppressed_count, evidence, trigger_match, group_wait, trace_parent)",
    )
    .bind(&c.id)
    .bind(&c.fingerprint)
    .bind(&c.policy_id)
    .bind(&c.policy_name)
    .bind(&c.rule_id)
    .bind(&c.rule_name)
    .bind(&c.severity)
    .bind(&c.group_key)
    .bind(&c.group_hash)
    .bind(&c.compliance)
    .bind(&c.window_start)
    .bind(&c.window_end)
    .bind(&c.first_seen)
    .bind(&c.last_seen)
    .bind(&c.match_count)
    .bind(&c.suppressed_count)
    .bind(&c.evidence)
    .bind(&c.trigger)
    .bind(&c.group_wait)
    .bind(&c.trace_parent)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Write the new counters of alerts that were already in the table (their groups are locked,
/// so the values read are still current).
async fn update_alerts(tx: &mut Transaction<'_, Postgres>, updated: &[AlertState]) -> Result<(), sqlx::Error> {
    if updated.is_empty() {
        return Ok(());
    }
    let id: Vec<Uuid> = updated.iter().map(|a| a.id).collect();
    let match_count: Vec<i32> = updated.iter().map(|a| a.match_count).collect();
    let suppressed_count: Vec<i32> = updated.iter().map(|a| a.suppressed_count).collect();
    let first_seen: Vec<DateTime<Utc>> = updated.iter().map(|a| a.first_seen).collect();
    let last_seen: Vec<DateTime<Utc>> = updated.iter().map(|a| a.last_seen).collect();
    let evidence: Vec<String> = updated.iter().map(|a| text_array_literal(&a.evidence)).collect();
    sqlx::query(
        "UPDATE audit_alerts a
            SET match_count = u.match_count, suppressed_count = u.suppressed_count,
                first_seen = u.first_seen, last_seen = u.last_seen,
                evidence_event_ids = u.evidence::text[], updated_at = now()
           FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::timestamptz[], $6::text[])
             AS u(id, match_count, suppressed_count, first_seen, last_seen, evidence)
          WHERE a.id = u.id",
    )
    .bind(&id)
    .bind(&match_count)
    .bind(&suppressed_count)
    .bind(&first_seen)
    .bind(&last_seen)
    .bind(&evidence)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn assign_matches(tx: &mut Transaction<'_, Postgres>, assigned: &[(String, String, Uuid)]) -> Result<(), sqlx::Error> {
    if assigned.is_empty() {
        return Ok(());
    }
    let policy: Vec<&str> = assigned.iter().map(|(p, _, _)| p.as_str()).collect();
    let match_id: Vec<&str> = assigned.iter().map(|(_, m, _)| m.as_str()).collect();
    let alert: Vec<Uuid> = assigned.iter().map(|(_, _, a)| *a).collect();
    sqlx::query(
        "UPDATE alert_matches m SET alert_id = u.alert_id
           FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS u(policy_id, match_id, alert_id)
          WHERE m.policy_id = u.policy_id AND m.match_id = u.match_id",
    )
    .bind(&policy)
    .bind(&match_id)
    .bind(&alert)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An alert as the dispatcher claims it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub id: String,
    pub fingerprint: String,
    pub policy_id: String,
    pub policy_name: String,
    pub rule_id: String,
    pub rule_name: String,
    pub severity: String,
    pub group_key: sqlx::types::Json<serde_json::Value>,
    pub compliance: Vec<String>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub match_count: i32,
    pub suppressed_count: i32,
    pub evidence_event_ids: Vec<String>,
    pub trigger_match: sqlx::types::Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub dispatch_attempts: i32,
    /// W3C `traceparent` of the match that opened the alert.
    #[sqlx(default)]
    pub trace_parent: Option<String>,
}

impl AlertRow {
    /// The record as of `now`. `max_string` cuts long strings of the group key and trigger
    /// (for records that are published); notifications render from the uncut record and cut
    /// each field themselves, so they can say how long it was.
    pub fn to_record(&self, now: DateTime<Utc>, max_string: usize) -> AlertRecord {
        AlertRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            alert_id: Uuid::parse_str(&self.id).unwrap_or_default(),
            fingerprint: self.fingerprint.clone(),
            policy_id: self.policy_id.clone(),
            policy_name: self.policy_name.clone(),
            rule_id: self.rule_id.clone(),
            rule_name: self.rule_name.clone(),
            severity: self.severity.parse().unwrap_or_default(),
            group_key: serde_json::from_value(truncate_json(&self.group_key.0, max_string)).unwrap_or_default(),
            window_start: self.window_start,
            window_end: self.window_end,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            match_count: i64::from(self.match_count),
            suppressed_count: i64::from(self.suppressed_count),
            evidence_event_ids: self.evidence_event_ids.clone(),
            compliance: self.compliance.clone(),
            trigger: truncate_json(&self.trigger_match.0, max_string),
            created_at: self.created_at,
            dispatched_at: now,
            trace_id: self.trace().map(|t| t.trace_id_hex()),
        }
    }

    /// The trace of the event behind the alert, if it came with one.
    pub fn trace(&self) -> Option<crate::trace::TraceParent> {
        self.trace_parent.as_deref().and_then(|t| t.parse().ok())
    }
}

/// Claim up to `limit` alerts whose group wait is over and that no live dispatcher holds.
/// Rows another transaction has locked are skipped, so instances share the work.
pub async fn claim_due(pool: &PgPool, lease_seconds: u64, limit: i64) -> Result<Vec<AlertRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE audit_alerts a
            SET lease_until = now() + make_interval(secs => $1),
                dispatch_attempts = a.dispatch_attempts + 1,
                updated_at = now()
          WHERE a.id IN (SELECT id FROM audit_alerts
                          WHERE status = 'pending' AND dispatch_after <= now()
                            AND (lease_until IS NULL OR lease_until < now())
                          ORDER BY dispatch_after
                          LIMIT $2
                          FOR UPDATE SKIP LOCKED)
         RETURNING a.id::text AS id, a.fingerprint, a.policy_id, a.policy_name, a.rule_id, a.rule_name,
                   a.severity, a.group_key, a.compliance, a.window_start, a.window_end, a.first_seen,
                   a.last_seen, a.match_count, a.suppressed_count, a.evidence_event_ids,
                   a.trigger_match, a.created_at, a.dispatch_attempts, a.trace_parent",
    )
    .bind(lease_seconds as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Channels that already delivered this alert (an earlier dispatch that crashed before
/// finishing): not sent again.
pub async fn delivered_channels(pool: &PgPool, alert_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT channel FROM alert_deliveries WHERE alert_id = $1::uuid AND outcome = 'delivered'",
    )
    .bind(alert_id)
    .fetch_all(pool)
    .await
}

pub async fn record_delivery(
    pool: &PgPool,
    alert_id: &str,
    channel: &str,
    target: Option<&str>,
    attempt: u32,
    outcome: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alert_deliveries (alert_id, channel, target, attempt, outcome, detail)
         VALUES ($1::uuid, $2, $3, $4, $5, $6)",
    )
    .bind(alert_id)
    .bind(channel)
    .bind(target)
    .bind(attempt as i32)
    .bind(outcome)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// Close a dispatch: `dispatched` or `failed`, with the suppressed count that was sent.
pub async fn finish(pool: &PgPool, alert_id: &str, status: &str, sent_suppressed: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_alerts
            SET status = $2, dispatched_at = now(), dispatched_suppressed_count = $3, lease_until = NULL,
                updated_at = now()
          WHERE id = $1::uuid",
    )
    .bind(alert_id)
    .bind(status)
    .bind(sent_suppressed)
    .execute(pool)
    .await?;
    Ok(())
}

/// Give a claimed alert back (shutdown, or Kafka not reachable): retried after `delay_seconds`.
pub async fn release(pool: &PgPool, alert_id: &str, delay_seconds: f64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_alerts SET lease_until = now() + make_interval(secs => $2), updated_at = now()
          WHERE id = $1::uuid AND status = 'pending'",
    )
    .bind(alert_id)
    .bind(delay_seconds)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forget matches older than the retention (bounded per call). Alerts keep their counts.
pub async fn expire_matches(pool: &PgPool, retention_hours: u64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM alert_matches WHERE ctid IN (
             SELECT ctid FROM alert_matches
              WHERE created_at < now() - make_interval(hours => $1) LIMIT 10000)",
    )
    .bind(retention_hours.min(i32::MAX as u64) as i32)
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_what_postgres_would_split_or_unescape() {
        assert_eq!(text_array_literal(&[]), "{}");
        let values = ["a".to_string(), "b,c".into(), "q\"\\".into(), "NULL".into(), "{}".into()];
        assert_eq!(text_array_literal(&values), r#"{"a","b,c","q\"\\","NULL","{}"}"#);
    }
}
