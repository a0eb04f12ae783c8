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
//! Groups are serialised with transaction-scoped advisory locks taken in a fixed order, so two
//! instances whose partitions carry the same group cannot both miss (or both open) an alert.

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::policy::{alert_id, fingerprint, lock_key, PolicyHit};
use super::render::{truncate_json, AlertRecord, RECORD_SCHEMA_VERSION};
use crate::rule_match::RuleMatch;

/// A decoded rule match and the policies that selected it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub m: RuleMatch,
    pub hits: Vec<PolicyHit>,
    /// The triggering event (or the last evidence id).
    pub event_id: Option<String>,
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

/// Apply one policy hit of one match (see the module docs).
pub async fn apply_hit(
    tx: &mut Transaction<'_, Postgres>,
    c: &Candidate,
    hit: &PolicyHit,
    policy_name: &str,
    max_evidence: i32,
) -> Result<HitOutcome, sqlx::Error> {
    let m = &c.m;
    let t = m.matched_at;
    let inserted = sqlx::query(
        "INSERT INTO alert_matches (policy_id, match_id, group_hash, rule_id, matched_at, event_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&hit.policy_id)
    .bind(&m.match_id)
    .bind(&hit.group_hash)
    .bind(&m.rule_id)
    .bind(t)
    .bind(&c.event_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(HitOutcome::Replayed);
    }

    let covering: Option<String> = sqlx::query_scalar(
        "SELECT id::text FROM audit_alerts
          WHERE group_hash = $1 AND window_start <= $2 AND $2 < window_end
          ORDER BY window_start DESC LIMIT 1",
    )
    .bind(&hit.group_hash)
    .bind(t)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = covering {
        sqlx::query(
            "WITH linked AS (
                 UPDATE alert_matches SET alert_id = $1::uuid WHERE policy_id = $2 AND match_id = $3)
             UPDATE audit_alerts
                SET match_count = match_count + 1,
                    suppressed_count = match_count,
                    first_seen = LEAST(first_seen, $4),
                    last_seen = GREATEST(last_seen, $4),
                    evidence_event_ids = CASE
                        WHEN $5::text IS NOT NULL AND cardinality(evidence_event_ids) < $6
                        THEN array_append(evidence_event_ids, $5::text)
                        ELSE evidence_event_ids END,
                    updated_at = now()
              WHERE id = $1::uuid",
        )
        .bind(&id)
        .bind(&hit.policy_id)
        .bind(&m.match_id)
        .bind(t)
        .bind(&c.event_id)
        .bind(max_evidence)
        .execute(&mut **tx)
        .await?;
        return Ok(HitOutcome::Folded(Uuid::parse_str(&id).unwrap_or_default()));
    }

    let window_from = t - Duration::seconds(hit.window_seconds as i64);
    let pooled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alert_matches
          WHERE group_hash = $1 AND alert_id IS NULL AND matched_at > $2 AND matched_at <= $3",
    )
    .bind(&hit.group_hash)
    .bind(window_from)
    .bind(t)
    .fetch_one(&mut **tx)
    .await?;
    if pooled < i64::from(hit.count) {
        return Ok(HitOutcome::Pooled);
    }

    let window_end = t + Duration::seconds(hit.suppression_seconds as i64);
    let fp = fingerprint(&hit.group_hash, t);
    let id = alert_id(&fp);
    let trigger = serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
    let group_key = serde_json::to_value(&hit.group_key).unwrap_or(serde_json::Value::Null);
    sqlx::query(
        "INSERT INTO audit_alerts (
             id, fingerprint, policy_id, policy_name, rule_id, rule_name, severity, group_key,
             group_hash, compliance, window_start, window_end, first_seen, last_seen, match_count,
             suppressed_count, trigger_match, dispatch_after)
         VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $11, $11, 0, 0, $13,
                 now() + make_interval(secs => $14))
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(&fp)
    .bind(&hit.policy_id)
    .bind(policy_name)
    .bind(&m.rule_id)
    .bind(&m.rule_name)
    .bind(m.severity.as_str())
    .bind(sqlx::types::Json(&group_key))
    .bind(&hit.group_hash)
    .bind(&m.compliance)
    .bind(t)
    .bind(window_end)
    .bind(sqlx::types::Json(&trigger))
    .bind(hit.group_wait_seconds as f64)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "WITH attached AS (
             UPDATE alert_matches SET alert_id = $1::uuid
              WHERE group_hash = $2 AND alert_id IS NULL AND matched_at > $3 AND matched_at < $4
             RETURNING matched_at, match_id, event_id)
         UPDATE audit_alerts a
            SET match_count = a.match_count + s.n,
                suppressed_count = a.match_count + s.n - 1,
                first_seen = LEAST(a.first_seen, s.first),
                last_seen = GREATEST(a.last_seen, s.last),
                evidence_event_ids = (a.evidence_event_ids || s.ev)[1:$5],
                updated_at = now()
           FROM (SELECT count(*)::int AS n, min(matched_at) AS first, max(matched_at) AS last,
                        COALESCE(array_agg(event_id ORDER BY matched_at, match_id)
                                 FILTER (WHERE event_id IS NOT NULL), '{}') AS ev
                   FROM attached) s
          WHERE a.id = $1::uuid",
    )
    .bind(id.to_string())
    .bind(&hit.group_hash)
    .bind(window_from)
    .bind(window_end)
    .bind(max_evidence)
    .execute(&mut **tx)
    .await?;
    Ok(HitOutcome::Opened(id))
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
        }
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
                   a.trigger_match, a.created_at, a.dispatch_attempts",
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
