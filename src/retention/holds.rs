//! Legal holds (`legal_holds`): data retention must never remove while a hold is active.
//!
//! A hold names a subject (by keyed pseudonym only; the plaintext id is never stored), a time
//! range, or both (that subject's events within the range). Holds are released, never deleted,
//! so the record of what was held, by whom and why stays.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct LegalHold {
    pub id: i64,
    pub subject_pseudonym: Option<String>,
    pub from_ts: Option<DateTime<Utc>>,
    pub to_ts: Option<DateTime<Utc>>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
}

impl LegalHold {
    pub fn is_active(&self) -> bool {
        self.released_at.is_none()
    }

    /// Whether the hold's time range (if any) overlaps `[start, end)`.
    pub fn range_overlaps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.from_ts.is_none_or(|f| f < end) && self.to_ts.is_none_or(|t| t > start)
    }
}

/// A hold to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    pub subject_pseudonym: Option<String>,
    pub from_ts: Option<DateTime<Utc>>,
    pub to_ts: Option<DateTime<Utc>>,
    pub reason: String,
    pub created_by: String,
}

impl NewHold {
    /// What the table's constraints also enforce, with messages for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.reason.trim().is_empty() {
            return Err("a legal hold needs a --reason".into());
        }
        if self.created_by.trim().is_empty() {
            return Err("a legal hold needs its author (--created-by)".into());
        }
        match (self.subject_pseudonym.is_some(), self.from_ts, self.to_ts) {
            (false, None, _) | (false, _, None) => {
                return Err("a legal hold needs a subject, or a time range (--from and --to), or both".into())
            }
            _ => {}
        }
        if let (Some(f), Some(t)) = (self.from_ts, self.to_ts) {
            if f >= t {
                return Err(format!("--from ({f}) must be before --to ({t})"));
            }
        }
        Ok(())
    }
}

const COLUMNS: &str =
    "id, subject_pseudonym, from_ts, to_ts, reason, created_by, created_at, released_at, released_by";

pub async fn add(pool: &PgPool, hold: &NewHold) -> Result<LegalHold, sqlx::Error> {
    sqlx::query_as::<_, LegalHold>(&format!(
        "INSERT INTO legal_holds (subject_pseudonym, from_ts, to_ts, reason, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(&hold.subject_pseudonym)
    .bind(hold.from_ts)
    .bind(hold.to_ts)
    .bind(hold.reason.trim())
    .bind(hold.created_by.trim())
    .fetch_one(pool)
    .await
}

/// Active holds, or every hold ever placed.
pub async fn list(pool: &PgPool, include_released: bool) -> Result<Vec<LegalHold>, sqlx::Error> {
    sqlx::query_as::<_, LegalHold>(&format!(
        "SELECT {COLUMNS} FROM legal_holds WHERE $1 OR released_at IS NULL ORDER BY id"
    ))
    .bind(include_released)
    .fetch_all(pool)
    .await
}

/// Release an active hold. `None` when no active hold has that id.
pub async fn release(pool: &PgPool, id: i64, released_by: &str) -> Result<Option<LegalHold>, sqlx::Error> {
    sqlx::query_as::<_, LegalHold>(&format!(
        "UPDATE legal_holds SET released_at = now(), released_by = $2
          WHERE id = $1 AND released_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(released_by)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(y: i32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_hold_needs_a_subject_or_a_full_range_and_a_reason() {
        let base = NewHold { subject_pseudonym: None, from_ts: None, to_ts: None, reason: "case 1".into(), created_by: "me".into() };
        assert!(base.validate().is_err());
        assert!(NewHold { subject_pseudonym: Some("p".into()), ..base.clone() }.validate().is_ok());
        assert!(NewHold { from_ts: Some(t(2020, 1)), ..base.clone() }.validate().is_err());
        assert!(NewHold { from_ts: Some(t(2020, 1)), to_ts: Some(t(2020, 2)), ..base.clone() }.validate().is_ok());
        assert!(NewHold { from_ts: Some(t(2020, 2)), to_ts: Some(t(2020, 1)), ..base.clone() }.validate().is_err());
        assert!(NewHold { subject_pseudonym: Some("p".into()), reason: " ".into(), ..base }.validate().is_err());
    }

    #[test]
    fn range_overlap_is_half_open() {
        let h = LegalHold {
            id: 1,
            subject_pseudonym: None,
            from_ts: Some(t(2020, 2)),
            to_ts: Some(t(2020, 3)),
            reason: "r".into(),
            created_by: "me".into(),
            created_at: t(2021, 1),
            released_at: None,
            released_by: None,
        };
        assert!(h.range_overlaps(t(2020, 2), t(2020, 3)));
        assert!(!h.range_overlaps(t(2020, 1), t(2020, 2)));
        assert!(!h.range_overlaps(t(2020, 3), t(2020, 4)));
        let open = LegalHold { from_ts: None, to_ts: None, ..h };
        assert!(open.range_overlaps(t(1999, 1), t(1999, 2)));
    }
}
