//! Retention of the search store: a monthly index goes when retention dropped that month from
//! PostgreSQL (recorded in `retention_drops`), never otherwise, so legal holds keep a month in
//! the index exactly as they keep it in the ledger. Each index dropped is recorded in
//! `retention_drops` too (`table_name` = `opensearch`). ISM is not part of this OpenSearch
//! build: the run deletes whole indices itself.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::client::{SearchClient, SearchError};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexDrop {
    pub index: String,
    pub month_start: DateTime<Utc>,
    pub documents: u64,
    pub dropped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexRetentionError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The month of `<prefix>-YYYY.MM`.
pub fn index_month(prefix: &str, index: &str) -> Option<DateTime<Utc>> {
    let rest = index.strip_prefix(prefix)?.strip_prefix('-')?;
    let (y, m) = rest.split_once('.')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)?.and_hms_opt(0, 0, 0).map(|d| d.and_utc())
}

/// Drop every index of a month PostgreSQL retention dropped (`dry_run`: only say which).
pub async fn drop_expired(pool: &PgPool, client: &SearchClient, prefix: &str, dry_run: bool) -> Result<Vec<IndexDrop>, IndexRetentionError> {
    let dropped: Vec<(DateTime<Utc>, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT month_start, max(month_end), max(retention_days) FROM retention_drops
          WHERE table_name = 'audit_events' GROUP BY month_start",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for index in client.indices(prefix).await? {
        let Some(month) = index_month(prefix, &index) else { continue };
        let Some((_, month_end, days)) = dropped.iter().find(|(m, _, _)| *m == month) else { continue };
        let count = client.get(&format!("{index}/_count")).await?;
        let documents = count.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
        if !dry_run {
            client.delete_index(&index).await?;
            sqlx::query(
                "INSERT INTO retention_drops (table_name, partition_name, month_start, month_end, rows_dropped, retention_days)
                 VALUES ('opensearch', $1, $2, $3, $4, $5)",
            )
            .bind(&index)
            .bind(month)
            .bind(month_end)
            .bind(documents as i64)
            .bind(days)
            .execute(pool)
            .await?;
            tracing::info!(index, documents, "retention dropped an expired index");
        }
        out.push(IndexDrop { index, month_start: month, documents, dropped: !dry_run });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_give_their_month() {
        let m = index_month("audit-events", "audit-events-2012.03").unwrap();
        assert_eq!(m.to_rfc3339(), "2012-03-01T00:00:00+00:00");
        assert!(index_month("audit-events", "audit-events-template").is_none());
        assert!(index_month("audit-events", "other-2012.03").is_none());
        assert!(index_month("audit-events", "audit-events-2012.13").is_none());
    }
}
