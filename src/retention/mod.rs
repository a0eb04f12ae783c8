//! Data retention: whole expired month partitions of `audit_events` and `compliance_events` are
//! dropped (`DROP TABLE` of the partition, never row deletes), and every drop is logged in
//! `retention_drops`.
//!
//! - The retention of a row is the longest that applies to it: its classification's (default
//!   `default_days`, 2555 days = 7 years) and that of every framework it concerns that has one
//!   configured (its enrichment flags in `audit_events.compliance`; its `framework` in
//!   `compliance_events`).
//! - A month (both tables' partitions of it together) may be dropped only when every row in it is
//!   past its retention, the month is over, and nothing in it is under an active legal hold
//!   ([`holds`]): no rows of a held subject (within the hold's range, if any), no overlap with a
//!   held time range. While a subject hold is active, rows whose subject is not known by
//!   pseudonym (written before pseudonyms existed) keep their month too: nothing can prove they
//!   are not the held subject's.
//! - A drop re-checks everything in the transaction that drops, with new holds and writes to the
//!   month blocked, so a hold placed during a run is honoured.

pub mod holds;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::compliance::Framework;
use crate::error::ConfigError;
use crate::event::Classification;
use crate::runtime::Shutdown;

/// `[retention]` in the configuration file.
///
/// ```toml
/// [retention]
/// default_days = 2555          # AUDITFLOW_RETENTION_DAYS
/// interval_hours = 24          # AUDITFLOW_RETENTION_INTERVAL_HOURS (alias: retention_interval_hours)
/// schedule = true              # AUDITFLOW_RETENTION_SCHEDULE: run inside audit-compliance
/// [retention.classification]   # AUDITFLOW_RETENTION_DAYS_<CLASSIFICATION>
/// PUBLIC = 365
/// [retention.framework]        # AUDITFLOW_RETENTION_DAYS_<FRAMEWORK>
/// SOX = 2555
/// HIPAA = 2190
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Retention of every classification not listed in `classification`.
    pub default_days: u32,
    pub classification: BTreeMap<Classification, u32>,
    /// Frameworks with a retention of their own; a row they concern is kept at least that long.
    pub framework: BTreeMap<Framework, u32>,
    /// How often `audit-compliance` enforces retention.
    #[serde(alias = "retention_interval_hours")]
    pub interval_hours: u64,
    /// Whether `audit-compliance` enforces retention on its schedule (else only
    /// `auditflow retention run` does).
    pub schedule: bool,
}

/// Seven years, the seed design's `AUDIT_RETENTION_DAYS`.
pub const DEFAULT_RETENTION_DAYS: u32 = 2555;
const MAX_RETENTION_DAYS: u32 = 36_500;

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            default_days: DEFAULT_RETENTION_DAYS,
            classification: BTreeMap::new(),
            framework: BTreeMap::new(),
            interval_hours: 24,
            schedule: true,
        }
    }
}

impl RetentionConfig {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::new(name, format!("{e} (got {v:?})")))
        }
        if let Some(v) = env.get("AUDITFLOW_RETENTION_DAYS") {
            self.default_days = parse("AUDITFLOW_RETENTION_DAYS", v)?;
        }
        if let Some(v) = env.get("AUDITFLOW_RETENTION_INTERVAL_HOURS") {
            self.interval_hours = parse("AUDITFLOW_RETENTION_INTERVAL_HOURS", v)?;
        }
        if let Some(v) = env.get("AUDITFLOW_RETENTION_SCHEDULE") {
            self.schedule = parse("AUDITFLOW_RETENTION_SCHEDULE", v)?;
        }
        for c in Classification::ALL {
            let name = format!("AUDITFLOW_RETENTION_DAYS_{}", c.as_str());
            if let Some(v) = env.get(&name) {
                self.classification.insert(*c, parse(&name, v)?);
            }
        }
        for fw in Framework::ALL {
            let name = format!("AUDITFLOW_RETENTION_DAYS_{}", fw.as_str());
            if let Some(v) = env.get(&name) {
                self.framework.insert(fw, parse(&name, v)?);
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |setting: String, days: u32| {
            if (1..=MAX_RETENTION_DAYS).contains(&days) {
                Ok(())
            } else {
                Err(ConfigError::new(setting, format!("must be between 1 and {MAX_RETENTION_DAYS} days (got {days})")))
            }
        };
        check("AUDITFLOW_RETENTION_DAYS".into(), self.default_days)?;
        for (c, d) in &self.classification {
            check(format!("AUDITFLOW_RETENTION_DAYS_{c}"), *d)?;
        }
        for (f, d) in &self.framework {
            check(format!("AUDITFLOW_RETENTION_DAYS_{f}"), *d)?;
        }
        if !(1..=24 * 366).contains(&self.interval_hours) {
            return Err(ConfigError::new("AUDITFLOW_RETENTION_INTERVAL_HOURS", "must be between 1 and 8784"));
        }
        Ok(())
    }

    pub fn classification_days(&self, c: Classification) -> u32 {
        self.classification.get(&c).copied().unwrap_or(self.default_days)
    }

    /// The shortest retention any row can have: a month younger than this needs no look inside.
    pub fn min_days(&self) -> u32 {
        Classification::ALL.iter().map(|c| self.classification_days(*c)).min().unwrap_or(self.default_days)
    }

    /// The longest retention any row can have: what an empty month waits for.
    pub fn max_days(&self) -> u32 {
        Classification::ALL
            .iter()
            .map(|c| self.classification_days(*c))
            .chain(self.framework.values().copied())
            .max()
            .unwrap_or(self.default_days)
    }

    /// SQL expression: a row's retention in days from its classification column.
    fn classification_sql(&self) -> String {
        let mut s = String::from("CASE classification");
        for c in Classification::ALL {
            let _ = write!(s, " WHEN '{}' THEN {}", c.as_str(), self.classification_days(*c));
        }
        let _ = write!(s, " ELSE {} END", self.default_days);
        s
    }

    /// SQL expression: the retention in days of an `audit_events` row.
    fn audit_events_days_sql(&self) -> String {
        let mut parts = vec![self.classification_sql()];
        for (fw, days) in &self.framework {
            parts.push(format!(
                "CASE WHEN (compliance->>'{}')::boolean THEN {days} END",
                fw.as_str().to_ascii_lowercase()
            ));
        }
        format!("GREATEST({})", parts.join(", "))
    }

    /// SQL expression: the retention in days of a `compliance_events` row.
    fn compliance_events_days_sql(&self) -> String {
        let mut parts = vec![self.classification_sql()];
        if !self.framework.is_empty() {
            let mut s = String::from("CASE framework");
            for (fw, days) in &self.framework {
                let _ = write!(s, " WHEN '{}' THEN {days}", fw.as_str());
            }
            s.push_str(" END");
            parts.push(s);
        }
        format!("GREATEST({})", parts.join(", "))
    }
}

/// The month-partitioned tables retention manages, with their time column.
const TABLES: [(&str, &str); 2] = [("audit_events", "\"timestamp\""), ("compliance_events", "event_time")];

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `audit_events_2024_03` → 2024-03-01T00:00:00Z.
fn partition_month(parent: &str, child: &str) -> Option<DateTime<Utc>> {
    let suffix = child.strip_prefix(parent)?.strip_prefix('_')?;
    let (y, m) = suffix.split_once('_')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    Utc.with_ymd_and_hms(y.parse().ok()?, m.parse().ok()?, 1, 0, 0, 0).single()
}

fn next_month(start: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if start.month() == 12 { (start.year() + 1, 1) } else { (start.year(), start.month() + 1) };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(start)
}

/// One partition of a month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStat {
    pub table: &'static str,
    pub partition: String,
    /// `None` when the month was decided without counting (too recent to have expired).
    pub rows: Option<i64>,
}

/// What retention decided for a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Every row is past its retention and nothing is held: dropped (or would be, on a dry run).
    Drop,
    /// Dropped by this run.
    Dropped,
    /// The month is not over yet.
    KeepCurrent,
    /// Some row is still within its retention.
    KeepRetention,
    /// Something in the month is under legal hold.
    KeepHeld,
    /// Could not take the locks in time (a long query on the table); tried again next run.
    SkippedBusy,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Drop => "drop",
            Decision::Dropped => "dropped",
            Decision::KeepCurrent => "keep (current month)",
            Decision::KeepRetention => "keep (within retention)",
            Decision::KeepHeld => "keep (legal hold)",
            Decision::SkippedBusy => "skipped (tables busy)",
        }
    }
}

/// One month of both tables, and what retention makes of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MonthPlan {
    pub month_start: DateTime<Utc>,
    pub month_end: DateTime<Utc>,
    pub partitions: Vec<PartitionStat>,
    /// The longest retention of any row in the month (the maximum retention for an empty one);
    /// `None` when the month was decided without looking inside.
    pub retention_days: Option<i64>,
    /// When the last row's retention ends (same `None` case).
    pub expires_at: Option<DateTime<Utc>>,
    /// Active legal holds that keep the month.
    pub held_by: Vec<i64>,
    /// Rows whose subject is unknown while a subject hold is active (they keep the month).
    pub rows_without_subject: i64,
    pub decision: Decision,
}

impl MonthPlan {
    /// Rows in the month, when counted.
    pub fn rows(&self) -> Option<i64> {
        self.partitions.iter().map(|p| p.rows).sum()
    }
}

/// The result of one retention run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionOutcome {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub months: Vec<MonthPlan>,
}

impl RetentionOutcome {
    pub fn dropped(&self) -> impl Iterator<Item = &MonthPlan> {
        self.months.iter().filter(|m| m.decision == Decision::Dropped)
    }
}

/// Month partitions of the managed tables: month start → [(table, partition)].
async fn list_partitions(conn: &mut PgConnection) -> Result<BTreeMap<DateTime<Utc>, Vec<(&'static str, String)>>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.relname::text, c.relname::text
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           JOIN pg_namespace n ON n.oid = p.relnamespace
          WHERE n.nspname = current_schema() AND p.relname = ANY($1)
          ORDER BY 2",
    )
    .bind(TABLES.iter().map(|(t, _)| *t).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut months: BTreeMap<DateTime<Utc>, Vec<(&'static str, String)>> = BTreeMap::new();
    for (parent, child) in rows {
        let Some((table, _)) = TABLES.iter().find(|(t, _)| *t == parent) else { continue };
        match partition_month(table, &child) {
            Some(month) => months.entry(month).or_default().push((table, child)),
            None => tracing::warn!(partition = %child, "not a month partition (<table>_YYYY_MM); retention leaves it alone"),
        }
    }
    Ok(months)
}

/// Evaluate one month from the partitions given (all of the month's partitions that exist).
async fn evaluate(
    conn: &mut PgConnection,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    month_start: DateTime<Utc>,
    partitions: &[(&'static str, String)],
    active: &[holds::LegalHold],
) -> Result<MonthPlan, sqlx::Error> {
    let month_end = next_month(month_start);
    // Every row of the month is at or after its start, and keeps at least the shortest
    // retention: a month that young cannot have expired, and is decided without a scan.
    let undecided = |decision| MonthPlan {
        month_start,
        month_end,
        partitions: partitions.iter().map(|(table, p)| PartitionStat { table, partition: p.clone(), rows: None }).collect(),
        retention_days: None,
        expires_at: None,
        held_by: Vec::new(),
        rows_without_subject: 0,
        decision,
    };
    if month_end > now {
        return Ok(undecided(Decision::KeepCurrent));
    }
    if month_start + chrono::Duration::days(i64::from(cfg.min_days())) > now {
        return Ok(undecided(Decision::KeepRetention));
    }
    let mut stats = Vec::new();
    let mut expires_at: Option<DateTime<Utc>> = None;
    let mut retention_days: Option<i64> = None;
    let mut held_by: Vec<i64> = Vec::new();
    let mut rows_without_subject = 0i64;
    let subject_holds = active.iter().any(|h| h.subject_pseudonym.is_some());

    for (table, partition) in partitions {
        let (ts, days) = match *table {
            "audit_events" => ("\"timestamp\"", cfg.audit_events_days_sql()),
            _ => ("event_time", cfg.compliance_events_days_sql()),
        };
        let p = quote_ident(partition);
        let (rows, expiry, max_days): (i64, Option<DateTime<Utc>>, Option<i64>) = sqlx::query_as(&format!(
            "SELECT count(*)::bigint, max(ts + make_interval(days => d)), max(d)::bigint
               FROM (SELECT {ts} AS ts, ({days})::int AS d FROM {p}) r"
        ))
        .fetch_one(&mut *conn)
        .await?;
        stats.push(PartitionStat { table, partition: partition.clone(), rows: Some(rows) });
        expires_at = expires_at.max(expiry);
        retention_days = retention_days.max(max_days);

        if subject_holds && rows > 0 {
            let ids: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT h.id FROM legal_holds h
                  WHERE h.released_at IS NULL AND h.subject_pseudonym IS NOT NULL
                    AND EXISTS (SELECT 1 FROM {p} e
                                 WHERE e.subject_pseudonym = h.subject_pseudonym
                                   AND (h.from_ts IS NULL OR e.{ts} >= h.from_ts)
                                   AND (h.to_ts IS NULL OR e.{ts} < h.to_ts))"
            ))
            .fetch_all(&mut *conn)
            .await?;
            held_by.extend(ids);
            if *table == "audit_events" {
                let unknown: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*)::bigint FROM {p} e
                      WHERE e.subject_pseudonym IS NULL
                        AND (e.user_id IS NOT NULL OR e.ip_address IS NOT NULL)
                        AND EXISTS (SELECT 1 FROM legal_holds h
                                     WHERE h.released_at IS NULL AND h.subject_pseudonym IS NOT NULL
                                       AND (h.from_ts IS NULL OR e.{ts} >= h.from_ts)
                                       AND (h.to_ts IS NULL OR e.{ts} < h.to_ts))"
                ))
                .fetch_one(&mut *conn)
                .await?;
                rows_without_subject += unknown;
            }
        }
    }
    for h in active {
        if h.subject_pseudonym.is_none() && h.range_overlaps(month_start, month_end) {
            held_by.push(h.id);
        }
    }
    held_by.sort_unstable();
    held_by.dedup();

    let retention_days = retention_days.unwrap_or(i64::from(cfg.max_days()));
    let expires_at = expires_at.unwrap_or(month_end + chrono::Duration::days(retention_days));
    let decision = if !held_by.is_empty() || rows_without_subject > 0 {
        Decision::KeepHeld
    } else if expires_at > now {
        Decision::KeepRetention
    } else {
        Decision::Drop
    };
    Ok(MonthPlan {
        month_start,
        month_end,
        partitions: stats,
        retention_days: Some(retention_days),
        expires_at: Some(expires_at),
        held_by,
        rows_without_subject,
        decision,
    })
}

async fn active_holds(conn: &mut PgConnection) -> Result<Vec<holds::LegalHold>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, subject_pseudonym, from_ts, to_ts, reason, created_by, created_at, released_at, released_by
           FROM legal_holds WHERE released_at IS NULL ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Serialises retention runs across processes (the CLI and every `audit-compliance` instance).
const ADVISORY_LOCK_KEY: i64 = 0x6175_6469_7472_6574; // "auditret"

/// How long a drop waits for its locks before giving up until the next run: waiting longer
/// would queue the pipeline's writes behind it.
const LOCK_TIMEOUT: &str = "5s";

/// Enforce retention as of `now`: evaluate every month; unless `dry_run`, drop those that may go.
pub async fn run(pool: &PgPool, cfg: &RetentionConfig, now: DateTime<Utc>, dry_run: bool) -> Result<RetentionOutcome, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let months = list_partitions(&mut conn).await?;
    let active = active_holds(&mut conn).await?;
    let mut plans = Vec::with_capacity(months.len());
    for (month, partitions) in &months {
        plans.push(evaluate(&mut conn, cfg, now, *month, partitions, &active).await?);
    }
    drop(conn);
    if !dry_run {
        for plan in plans.iter_mut().filter(|p| p.decision == Decision::Drop) {
            *plan = drop_month(pool, cfg, now, plan.month_start).await?;
        }
    }
    Ok(RetentionOutcome { dry_run, now, months: plans })
}

fn is_lock_failure(e: &sqlx::Error) -> bool {
    // lock_not_available (lock_timeout), deadlock_detected
    matches!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("55P03") | Some("40P01"))
}

/// Re-check and drop one month in one transaction, holds and the month's partitions locked.
async fn drop_month(pool: &PgPool, cfg: &RetentionConfig, now: DateTime<Utc>, month_start: DateTime<Utc>) -> Result<MonthPlan, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let result: Result<MonthPlan, sqlx::Error> = async {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(ADVISORY_LOCK_KEY).execute(&mut *tx).await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")).execute(&mut *tx).await?;
        // No hold can be placed, and nothing written to the month, until this commits.
        sqlx::query("LOCK TABLE legal_holds IN SHARE MODE").execute(&mut *tx).await?;
        let partitions = list_partitions(&mut tx).await?.remove(&month_start).unwrap_or_default();
        for (_, p) in &partitions {
            sqlx::query(&format!("LOCK TABLE {} IN SHARE MODE", quote_ident(p))).execute(&mut *tx).await?;
        }
        let active = active_holds(&mut tx).await?;
        let mut plan = evaluate(&mut tx, cfg, now, month_start, &partitions, &active).await?;
        if plan.decision != Decision::Drop || partitions.is_empty() {
            return Ok(plan);
        }
        let names: Vec<String> = partitions.iter().map(|(_, p)| quote_ident(p)).collect();
        sqlx::query(&format!("DROP TABLE {}", names.join(", "))).execute(&mut *tx).await?;
        for stat in &plan.partitions {
            sqlx::query(
                "INSERT INTO retention_drops (table_name, partition_name, month_start, month_end, rows_dropped, retention_days)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(stat.table)
            .bind(&stat.partition)
            .bind(plan.month_start)
            .bind(plan.month_end)
            .bind(stat.rows.unwrap_or(0))
            .bind(plan.retention_days.and_then(|d| i32::try_from(d).ok()).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        }
        plan.decision = Decision::Dropped;
        Ok(plan)
    }
    .await;
    match result {
        Ok(plan) if plan.decision == Decision::Dropped => {
            tx.commit().await?;
            tracing::info!(month = %plan.month_start.format("%Y-%m"), rows = ?plan.rows(), retention_days = ?plan.retention_days,
                partitions = ?plan.partitions.iter().map(|p| &p.partition).collect::<Vec<_>>(), "retention dropped an expired month");
            Ok(plan)
        }
        Ok(plan) => {
            tx.rollback().await?;
            Ok(plan)
        }
        Err(e) if is_lock_failure(&e) => {
            let _ = tx.rollback().await;
            tracing::warn!(month = %month_start.format("%Y-%m"), error = %e, "retention could not lock the month; next run tries again");
            Ok(MonthPlan {
                month_start,
                month_end: next_month(month_start),
                partitions: Vec::new(),
                retention_days: None,
                expires_at: None,
                held_by: Vec::new(),
                rows_without_subject: 0,
                decision: Decision::SkippedBusy,
            })
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Enforce retention now and every `interval_hours` until `shutdown`, logging each outcome.
pub fn spawn_schedule(pool: PgPool, cfg: RetentionConfig, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_secs(cfg.interval_hours.saturating_mul(3600));
        loop {
            match run(&pool, &cfg, Utc::now(), false).await {
                Ok(outcome) => {
                    let dropped: Vec<String> = outcome.dropped().map(|m| m.month_start.format("%Y-%m").to_string()).collect();
                    let held = outcome.months.iter().filter(|m| m.decision == Decision::KeepHeld).count();
                    tracing::info!(months = outcome.months.len(), ?dropped, held, "retention run finished");
                }
                Err(e) => tracing::warn!(error = %e, "retention run failed; trying again at the next interval"),
            }
            let deadline = tokio::time::Instant::now() + interval;
            while tokio::time::Instant::now() < deadline {
                if shutdown.is_triggered() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_keep_everything_seven_years() {
        let c = RetentionConfig::default();
        assert_eq!(c.default_days, 2555);
        assert_eq!(c.max_days(), 2555);
        assert_eq!(c.min_days(), 2555);
        for cl in Classification::ALL {
            assert_eq!(c.classification_days(*cl), 2555);
        }
        assert_eq!(c.interval_hours, 24);
        c.validate().unwrap();
    }

    #[test]
    fn env_and_file_settings() {
        let file = "[retention]\ndefault_days = 100\nretention_interval_hours = 6\n[retention.classification]\nPUBLIC = 30\n[retention.framework]\nSOX = 3000\n";
        #[derive(Deserialize)]
        struct W {
            retention: RetentionConfig,
        }
        let mut c = toml::from_str::<W>(file).unwrap().retention;
        assert_eq!((c.default_days, c.interval_hours), (100, 6));
        assert_eq!(c.classification_days(Classification::Public), 30);
        assert_eq!(c.classification_days(Classification::Restricted), 100);
        c.apply_env(&env(&[("AUDITFLOW_RETENTION_DAYS", "200"), ("AUDITFLOW_RETENTION_DAYS_HIPAA", "2190"),
            ("AUDITFLOW_RETENTION_DAYS_RESTRICTED", "4000")])).unwrap();
        assert_eq!(c.default_days, 200);
        assert_eq!(c.framework.get(&Framework::Hipaa), Some(&2190));
        assert_eq!(c.max_days(), 4000);
        assert_eq!(c.min_days(), 30);
        c.validate().unwrap();
        let e = RetentionConfig::default().apply_env(&env(&[("AUDITFLOW_RETENTION_DAYS", "forever")])).unwrap_err();
        assert_eq!(e.setting, "AUDITFLOW_RETENTION_DAYS");
        let mut zero = RetentionConfig::default();
        zero.framework.insert(Framework::Sox, 0);
        assert_eq!(zero.validate().unwrap_err().setting, "AUDITFLOW_RETENTION_DAYS_SOX");
    }

    #[test]
    fn sql_expressions_take_the_longest_retention() {
        let mut c = RetentionConfig { default_days: 10, ..Default::default() };
        c.classification.insert(Classification::Public, 5);
        assert_eq!(c.compliance_events_days_sql(), "GREATEST(CASE classification WHEN 'PUBLIC' THEN 5 WHEN 'INTERNAL' THEN 10 WHEN 'CONFIDENTIAL' THEN 10 WHEN 'RESTRICTED' THEN 10 ELSE 10 END)");
        c.framework.insert(Framework::Sox, 30);
        assert!(c.audit_events_days_sql().ends_with(", CASE WHEN (compliance->>'sox')::boolean THEN 30 END)"), "{}", c.audit_events_days_sql());
        assert!(c.compliance_events_days_sql().ends_with(", CASE framework WHEN 'SOX' THEN 30 END)"));
    }

    #[test]
    fn partition_names_map_to_months() {
        assert_eq!(partition_month("audit_events", "audit_events_2024_03"), Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).single());
        assert_eq!(partition_month("audit_events", "audit_events_default"), None);
        assert_eq!(partition_month("audit_events", "compliance_events_2024_03"), None);
        assert_eq!(next_month(Utc.with_ymd_and_hms(2024, 12, 1, 0, 0, 0).unwrap()), Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
