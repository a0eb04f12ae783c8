//! `audit-persist`: `audit-enriched` → PostgreSQL `audit_events`.
//!
//! One multi-row `INSERT … SELECT FROM UNNEST(arrays)` per batch (a single round trip, no row
//! by row), `ON CONFLICT DO NOTHING` on the event id, and the consumed offsets advanced in the
//! same transaction.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use sqlx::PgPool;

use crate::codec::decode_enriched;
use crate::error::Rejection;
use crate::event::EnrichedEvent;
use crate::runtime::kafka::OffsetLoader;
use crate::runtime::offsets::{self, Advance, OffsetAdvance};
use crate::runtime::{InputMessage, SinkError, SinkStage, WriteOutcome};

pub struct PersistStage {
    pool: PgPool,
    input_topic: String,
    group_id: String,
    handle: tokio::runtime::Handle,
    /// Month partitions known to exist, so the DDL check runs once per month per process.
    known_months: HashSet<(i32, u32)>,
}

impl PersistStage {
    pub fn new(pool: PgPool, input_topic: String, group_id: String, handle: tokio::runtime::Handle) -> PersistStage {
        PersistStage { pool, input_topic, group_id, handle, known_months: HashSet::new() }
    }

    async fn ensure_months(&mut self, items: &[EnrichedEvent]) -> Result<(), sqlx::Error> {
        let mut missing: Vec<DateTime<Utc>> = Vec::new();
        for ev in items {
            let month = (ev.timestamp.year(), ev.timestamp.month());
            if !self.known_months.contains(&month) && !missing.iter().any(|m| (m.year(), m.month()) == month) {
                missing.push(ev.timestamp);
            }
        }
        for at in missing {
            sqlx::query("SELECT audit_events_ensure_month($1)").bind(at).execute(&self.pool).await?;
            self.known_months.insert((at.year(), at.month()));
        }
        Ok(())
    }

    async fn write_batch(&mut self, items: &[EnrichedEvent], advances: &[OffsetAdvance]) -> Result<WriteOutcome, sqlx::Error> {
        self.ensure_months(items).await?;
        let mut tx = self.pool.begin().await?;
        if !items.is_empty() {
            let cols = Columns::from_events(items);
            sqlx::query(INSERT_SQL)
                .bind(&cols.id)
                .bind(&cols.timestamp)
                .bind(&cols.user_id)
                .bind(&cols.session_id)
                .bind(&cols.action)
                .bind(&cols.resource)
                .bind(&cols.resource_id)
                .bind(&cols.method)
                .bind(&cols.endpoint)
                .bind(&cols.status_code)
                .bind(&cols.user_agent)
                .bind(&cols.ip_address)
                .bind(&cols.location)
                .bind(&cols.ip_facts)
                .bind(&cols.classification)
                .bind(&cols.severity)
                .bind(&cols.metadata)
                .bind(&cols.success)
                .bind(&cols.error_message)
                .bind(&cols.duration)
                .bind(&cols.compliance)
                .bind(&cols.source_topic)
                .bind(&cols.source_partition)
                .bind(&cols.source_offset)
                .bind(&cols.enriched_at)
                .execute(&mut *tx)
                .await?;
        }
        match offsets::advance(&mut tx, &self.group_id, advances).await? {
            Advance::Done => {
                tx.commit().await?;
                Ok(WriteOutcome::Committed)
            }
            Advance::Fenced => {
                tx.rollback().await?;
                Ok(WriteOutcome::Fenced)
            }
        }
    }
}

const INSERT_SQL: &str = r#"
INSERT INTO audit_events (
    id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint,
    status_code, user_agent, ip_address, location, ip_facts, classification, severity, metadata,
    success, error_message, duration, compliance, source_topic, source_partition, source_offset,
    enriched_at)
SELECT id, ts, user_id, session_id, action, resource, resource_id, method, endpoint,
       status_code, user_agent, ip_address::inet, location::jsonb, ip_facts::jsonb, classification,
       severity, metadata::jsonb, success, error_message, duration, compliance::jsonb, source_topic,
       source_partition, source_offset, enriched_at
  FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[], $9::text[], $10::int[], $11::text[], $12::text[], $13::text[],
              $14::text[], $15::text[], $16::text[], $17::text[], $18::bool[], $19::text[],
              $20::bigint[], $21::text[], $22::text[], $23::int[], $24::bigint[], $25::timestamptz[])
    AS t(id, ts, user_id, session_id, action, resource, resource_id, method, endpoint,
         status_code, user_agent, ip_address, location, ip_facts, classification, severity,
         metadata, success, error_message, duration, compliance, source_topic, source_partition,
         source_offset, enriched_at)
ON CONFLICT DO NOTHING
"#;

/// A batch transposed into one array per column, as UNNEST wants it. Text columns borrow from
/// the batch (binding `&str` arrays costs no copy); only JSON columns are rendered.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<&'a str>,
    timestamp: Vec<DateTime<Utc>>,
    user_id: Vec<Option<&'a str>>,
    session_id: Vec<Option<&'a str>>,
    action: Vec<&'a str>,
    resource: Vec<&'a str>,
    resource_id: Vec<Option<&'a str>>,
    method: Vec<Option<&'a str>>,
    endpoint: Vec<Option<&'a str>>,
    status_code: Vec<Option<i32>>,
    user_agent: Vec<Option<&'a str>>,
    ip_address: Vec<Option<&'a str>>,
    location: Vec<Option<String>>,
    ip_facts: Vec<Option<String>>,
    classification: Vec<&'static str>,
    severity: Vec<&'static str>,
    metadata: Vec<Option<String>>,
    success: Vec<bool>,
    error_message: Vec<Option<&'a str>>,
    duration: Vec<Option<i64>>,
    compliance: Vec<String>,
    source_topic: Vec<&'a str>,
    source_partition: Vec<i32>,
    source_offset: Vec<i64>,
    enriched_at: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn from_events(items: &'a [EnrichedEvent]) -> Columns<'a> {
        let n = items.len();
        let mut c = Columns {
            id: Vec::with_capacity(n),
            timestamp: Vec::with_capacity(n),
            user_id: Vec::with_capacity(n),
            session_id: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            resource: Vec::with_capacity(n),
            resource_id: Vec::with_capacity(n),
            method: Vec::with_capacity(n),
            endpoint: Vec::with_capacity(n),
            status_code: Vec::with_capacity(n),
            user_agent: Vec::with_capacity(n),
            ip_address: Vec::with_capacity(n),
            location: Vec::with_capacity(n),
            ip_facts: Vec::with_capacity(n),
            classification: Vec::with_capacity(n),
            severity: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            success: Vec::with_capacity(n),
            error_message: Vec::with_capacity(n),
            duration: Vec::with_capacity(n),
            compliance: Vec::with_capacity(n),
            source_topic: Vec::with_capacity(n),
            source_partition: Vec::with_capacity(n),
            source_offset: Vec::with_capacity(n),
            enriched_at: Vec::with_capacity(n),
        };
        for ev in items {
            c.id.push(&ev.id);
            c.timestamp.push(ev.timestamp);
            c.user_id.push(ev.user_id.as_deref());
            c.session_id.push(ev.session_id.as_deref());
            c.action.push(&ev.action);
            c.resource.push(&ev.resource);
            c.resource_id.push(ev.resource_id.as_deref());
            c.method.push(ev.method.as_deref());
            c.endpoint.push(ev.endpoint.as_deref());
            c.status_code.push(ev.status_code);
            c.user_agent.push(ev.user_agent.as_deref());
            c.ip_address.push(ev.ip_address.as_deref());
            c.location.push(ev.location.as_ref().and_then(|l| serde_json::to_string(l).ok()));
            c.ip_facts.push(ev.ip.as_ref().and_then(|f| serde_json::to_string(f).ok()));
            c.classification.push(ev.classification.as_str());
            c.severity.push(ev.severity.as_str());
            c.metadata.push(ev.metadata.as_ref().map(|m| m.to_string()));
            c.success.push(ev.success);
            c.error_message.push(ev.error_message.as_deref());
            c.duration.push(ev.duration_ms);
            c.compliance.push(serde_json::to_string(&ev.compliance).unwrap_or_else(|_| "{}".into()));
            c.source_topic.push(&ev.source.topic);
            c.source_partition.push(ev.source.partition);
            c.source_offset.push(ev.source.offset);
            c.enriched_at.push(ev.enriched_at);
        }
        c
    }
}

impl SinkStage for PersistStage {
    type Item = EnrichedEvent;

    fn name(&self) -> &'static str {
        "persist"
    }

    fn sink_name(&self) -> &'static str {
        "postgres.audit_events"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input_topic.clone()]
    }

    fn decode(&mut self, input: &InputMessage<'_>) -> Result<EnrichedEvent, Rejection> {
        decode_enriched(input.payload)
    }

    async fn write(&mut self, items: &[EnrichedEvent], advances: &[OffsetAdvance]) -> Result<WriteOutcome, SinkError> {
        self.write_batch(items, advances).await.map_err(|e| SinkError(e.to_string()))
    }

    fn offset_loader(&self) -> OffsetLoader {
        let pool = self.pool.clone();
        let group = self.group_id.clone();
        let handle = self.handle.clone();
        let loader = Arc::new(move |partitions: &[(String, i32)]| {
            handle.block_on(offsets::load(&pool, &group, partitions)).map_err(|e| e.to_string())
        });
        Box::new(move |p| loader(p))
    }
}
