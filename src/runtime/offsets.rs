//! Consumed offsets kept in PostgreSQL, next to the data they describe.
//!
//! A sink stage advances `stage_offsets` in the same transaction as its rows. The advance is
//! conditional on the offset the stage last saw there, so an instance that lost its partition
//! (a zombie after a rebalance it has not noticed yet) cannot commit: its transaction finds a
//! different offset, reports [`Advance::Fenced`] and rolls back.

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Transaction};

/// Move one partition's stored offset from `expected` (None: no row yet) to `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub topic: String,
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    Done,
    /// Someone else moved the offset: this instance no longer owns the partition.
    Fenced,
}

/// Stored next offsets of `partitions` for `group`; partitions never stored are absent.
pub async fn load(
    pool: &PgPool,
    group: &str,
    partitions: &[(String, i32)],
) -> Result<HashMap<(String, i32), i64>, sqlx::Error> {
    let topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
    let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT o.topic, o.partition, o.next_offset
           FROM stage_offsets o
           JOIN UNNEST($2::text[], $3::int[]) AS want(topic, partition)
             ON want.topic = o.topic AND want.partition = o.partition
          WHERE o.consumer_group = $1",
    )
    .bind(group)
    .bind(&topics)
    .bind(&parts)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// The runtime's [`OffsetLoader`](super::kafka::OffsetLoader) for offsets kept in
/// `stage_offsets`: called (blocking) on partition assignment.
pub fn loader(pool: PgPool, group: String, handle: tokio::runtime::Handle) -> super::kafka::OffsetLoader {
    Box::new(move |partitions: &[(String, i32)]| handle.block_on(load(&pool, &group, partitions)).map_err(|e| e.to_string()))
}

/// Advance offsets inside the caller's transaction.
pub async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    advances: &[OffsetAdvance],
) -> Result<Advance, sqlx::Error> {
    for a in advances {
        let affected = match a.expected {
            Some(expected) => sqlx::query(
                "UPDATE stage_offsets SET next_offset = $5, updated_at = now()
                  WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
            )
            .bind(group)
            .bind(&a.topic)
            .bind(a.partition)
            .bind(expected)
            .bind(a.next)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            None => sqlx::query(
                "INSERT INTO stage_offsets (consumer_group, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(&a.topic)
            .bind(a.partition)
            .bind(a.next)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        };
        if affected != 1 {
            return Ok(Advance::Fenced);
        }
    }
    Ok(Advance::Done)
}
