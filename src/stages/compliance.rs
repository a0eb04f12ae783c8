//! `audit-compliance`: `audit-enriched` → PostgreSQL `compliance_events` and the
//! `compliance-events` topic, exactly once.
//!
//! A transform stage: for each batch, the records of every event under the mapping are written
//! to PostgreSQL first (one `INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING`), then handed
//! to the runtime, which produces them and commits the consumed offsets in one Kafka
//! transaction. If that transaction aborts, or the process dies in between, the batch is read
//! again and writes the very same rows, which the primary key absorbs: the table ends up with
//! each record once and the topic, read committed, with each record once.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use sqlx::PgPool;

use crate::codec::decode_enriched;
use crate::compliance::{records_for, ComplianceRecord, Mapping, Pseudonyms};
use crate::error::{Rejection, RejectionKind, TransientError};
use crate::runtime::{BatchOutput, InputMessage, OutputRecord, SinkError, SinkErrorKind, TransformStage};

/// Content type header on every `compliance-events` record.
pub const COMPLIANCE_CONTENT_TYPE: &[u8] = b"application/vnd.auditflow.compliance.v1+json";

pub struct ComplianceStage {
    mapping: Mapping,
    pseudonyms: Pseudonyms,
    pool: PgPool,
    handle: tokio::runtime::Handle,
    input_topic: String,
    output_topic: Arc<str>,
    /// Month partitions known to exist, so the DDL check runs once per month per process.
    known_months: HashSet<(i32, u32)>,
}

impl ComplianceStage {
    pub fn new(
        mapping: Mapping,
        pseudonyms: Pseudonyms,
        pool: PgPool,
        handle: tokio::runtime::Handle,
        input_topic: String,
        output_topic: &str,
    ) -> ComplianceStage {
        ComplianceStage {
            mapping,
            pseudonyms,
            pool,
            handle,
            input_topic,
            output_topic: Arc::from(output_topic),
            known_months: HashSet::new(),
        }
    }

    async fn write(&mut self, records: &[ComplianceRecord]) -> Result<(), sqlx::Error> {
        if records.is_empty() {
            return Ok(());
        }
        let mut missing: Vec<DateTime<Utc>> = Vec::new();
        for r in records {
            let month = (r.event_time.year(), r.event_time.month());
            if !self.known_months.contains(&month) && !missing.iter().any(|m| (m.year(), m.month()) == month) {
                missing.push(r.event_time);
            }
        }
        for at in missing {
            sqlx::query("SELECT compliance_events_ensure_month($1)").bind(at).execute(&self.pool).await?;
            self.known_months.insert((at.year(), at.month()));
        }
        let c = Columns::from_records(records);
        let inserted = sqlx::query(INSERT_SQL)
            .bind(&c.event_id)
            .bind(&c.event_time)
            .bind(&c.framework)
            .bind(&c.control)
            .bind(&c.control_name)
            .bind(&c.privileged)
            .bind(&c.action)
            .bind(&c.resource)
            .bind(&c.success)
            .bind(&c.severity)
            .bind(&c.classification)
            .bind(&c.subject_pseudonym)
            .execute(&self.pool)
            .await;
        if inserted.is_err() {
            // Retention may have dropped a month this process saw before (a late event for an
            // expired month): check the partitions again on the retry.
            self.known_months.clear();
        }
        inserted.map(|_| ())
    }
}

const INSERT_SQL: &str = r#"
INSERT INTO compliance_events (
    event_id, event_time, framework, control, control_name, privileged, action, resource, success,
    severity, classification, subject_pseudonym)
SELECT event_id, event_time, framework, control, control_name, privileged, action, resource, success,
       severity, classification, subject_pseudonym
  FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bool[],
              $7::text[], $8::text[], $9::bool[], $10::text[], $11::text[], $12::text[])
    AS t(event_id, event_time, framework, control, control_name, privileged, action, resource,
         success, severity, classification, subject_pseudonym)
ON CONFLICT DO NOTHING
"#;

/// A batch transposed into one array per column, as UNNEST wants it.
#[derive(Default)]
struct Columns {
    event_id: Vec<String>,
    event_time: Vec<DateTime<Utc>>,
    framework: Vec<&'static str>,
    control: Vec<String>,
    control_name: Vec<String>,
    privileged: Vec<bool>,
    action: Vec<String>,
    resource: Vec<String>,
    success: Vec<bool>,
    severity: Vec<&'static str>,
    classification: Vec<&'static str>,
    subject_pseudonym: Vec<Option<String>>,
}

impl Columns {
    fn from_records(records: &[ComplianceRecord]) -> Columns {
        let mut c = Columns::default();
        for r in records {
            c.event_id.push(r.event_id.clone());
            c.event_time.push(r.event_time);
            c.framework.push(r.framework.as_str());
            c.control.push(r.control.clone());
            c.control_name.push(r.control_name.clone());
            c.privileged.push(r.privileged);
            c.action.push(r.action.clone());
            c.resource.push(r.resource.clone());
            c.success.push(r.success);
            c.severity.push(r.severity.as_str());
            c.classification.push(r.classification.as_str());
            c.subject_pseudonym.push(r.subject_pseudonym.clone());
        }
        c
    }
}

impl TransformStage for ComplianceStage {
    fn name(&self) -> &'static str {
        "compliance"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input_topic.clone()]
    }

    fn process_batch(&mut self, batch: &[InputMessage<'_>], out: &mut BatchOutput) -> Result<(), TransientError> {
        let mut records: Vec<ComplianceRecord> = Vec::new();
        // The input each record came from.
        let mut record_inputs: Vec<usize> = Vec::new();
        // An event sent twice upstream (same id) arrives twice; within a batch it yields its
        // records once. Across batches the table still holds it once (primary key).
        let mut seen: HashSet<(String, crate::compliance::Framework, String)> = HashSet::new();
        for (i, input) in batch.iter().enumerate() {
            let event = match decode_enriched(input.payload) {
                Ok(e) => e,
                Err(rejection) => {
                    out.rejected.push((i, rejection));
                    continue;
                }
            };
            let mapped = records_for(&self.mapping, &self.pseudonyms, &event);
            if out.recording(i) {
                let controls: Vec<String> = mapped.iter().map(|r| format!("{}:{}", r.framework.as_str(), r.control)).collect();
                out.note(i, "auditflow.event_id", event.id.clone());
                out.note(i, "auditflow.compliance.controls", controls.join(","));
            }
            for r in mapped {
                if seen.insert((r.event_id.clone(), r.framework, r.control.clone())) {
                    records.push(r);
                    record_inputs.push(i);
                }
            }
        }
        let handle = self.handle.clone();
        if let Err(e) = handle.block_on(self.write(&records)) {
            let e = SinkError::from_sqlx(&e);
            if e.kind != SinkErrorKind::Refused {
                return Err(TransientError::new("postgres", e.message));
            }
            // The database refuses some record for good: write them one by one (the insert is
            // idempotent) and dead-letter the events whose records it refuses.
            let mut refused: Vec<usize> = Vec::new();
            for (r, input) in records.iter().zip(&record_inputs) {
                if let Err(e) = handle.block_on(self.write(std::slice::from_ref(r))) {
                    let e = SinkError::from_sqlx(&e);
                    if e.kind != SinkErrorKind::Refused {
                        return Err(TransientError::new("postgres", e.message));
                    }
                    if !refused.contains(input) {
                        refused.push(*input);
                        out.rejected.push((*input, Rejection::new(RejectionKind::RefusedByStore, e.message)));
                    }
                }
            }
            let mut kept = Vec::with_capacity(records.len());
            let mut kept_inputs = Vec::with_capacity(records.len());
            for (r, input) in records.into_iter().zip(record_inputs) {
                if !refused.contains(&input) {
                    kept.push(r);
                    kept_inputs.push(input);
                }
            }
            records = kept;
            record_inputs = kept_inputs;
        }
        for (r, input) in records.iter().zip(&record_inputs) {
            let payload = match serde_json::to_vec(r) {
                Ok(p) => p,
                // Plain strings, numbers and timestamps: serialising cannot fail.
                Err(e) => return Err(TransientError::new("serialize", e.to_string())),
            };
            out.records.push(OutputRecord {
                topic: self.output_topic.clone(),
                key: Some(r.event_id.as_bytes().to_vec()),
                payload,
                headers: vec![("content-type", COMPLIANCE_CONTENT_TYPE.to_vec())],
                // Produce time, not event time: the topic's retention then runs from when the
                // record was written, so downstream tools get the whole retention to read it.
                timestamp_ms: None,
            });
            out.attribute(*input);
        }
        Ok(())
    }
}
