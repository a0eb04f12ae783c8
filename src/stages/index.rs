//! `audit-index`: `audit-enriched` → OpenSearch, one document per event, exactly once.
//!
//! A sink stage on the shared runtime. Each batch is one `_bulk` of `create` operations with
//! `_id` = event id into the event month's index, so a replay or a second instance can never
//! make a second document (409 counts as done). The consumed offsets advance in PostgreSQL
//! (`stage_offsets`, fenced like every sink stage) only after every item of the batch is
//! accounted for. Items the cluster asks to retry (429, 5xx) are resent alone, with backoff;
//! a document refused for its content (a mapping error) is found by the runtime's probe and
//! dead-lettered with the cluster's reason.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec};
use sqlx::PgPool;

use crate::codec::decode_enriched;
use crate::error::Rejection;
use crate::event::EnrichedEvent;
use crate::index::client::{SearchClient, SearchError};
use crate::index::{self, BulkDoc, IndexSettings, ItemOutcome};
use crate::privacy::{PersonalField, SecretKey};
use crate::runtime::kafka::OffsetLoader;
use crate::runtime::offsets::{self, Advance, OffsetAdvance};
use crate::runtime::{InputMessage, SinkError, SinkStage, WriteOutcome};

pub struct IndexStageSettings {
    pub input_topic: String,
    pub group_id: String,
    pub index: IndexSettings,
    pub pseudonym_key: SecretKey,
    pub personal_fields: Vec<PersonalField>,
}

/// The stage's own metrics, next to the runtime's.
#[derive(Clone)]
pub struct IndexMetrics {
    /// Bulk items by outcome: created, exists, rejected, retry.
    pub items: IntCounterVec,
    /// Wall time of one `_bulk` request.
    pub bulk_seconds: HistogramVec,
}

pub struct IndexStage {
    pool: PgPool,
    client: SearchClient,
    settings: IndexStageSettings,
    handle: tokio::runtime::Handle,
    metrics: IndexMetrics,
    /// Ids of the pending batch already in the index: a retried batch does not resend them.
    indexed: HashSet<String>,
    /// Subjects of the pending batch erased, and when: an event enriched before its subject's
    /// erasure (still in this stage's lag when `erase` ran) is indexed already redacted.
    erased: HashMap<String, DateTime<Utc>>,
}

/// Item retries inside one write before the batch is handed back to the runtime's backoff.
const ITEM_ATTEMPTS: u32 = 5;

impl IndexStage {
    pub fn new(pool: PgPool, client: SearchClient, settings: IndexStageSettings, handle: tokio::runtime::Handle, metrics: IndexMetrics) -> IndexStage {
        IndexStage { pool, client, settings, handle, metrics, indexed: HashSet::new(), erased: HashMap::new() }
    }

    fn doc(&self, ev: &EnrichedEvent) -> BulkDoc {
        let mut doc = BulkDoc::of(ev, &self.settings.index, &self.settings.pseudonym_key, &self.settings.personal_fields);
        let subject = doc.source.get("subjectPseudonym").and_then(|v| v.as_str()).unwrap_or_default();
        if self.erased.get(subject).is_some_and(|at| *at >= ev.enriched_at) {
            index::redact(&mut doc.source);
        }
        doc
    }

    /// When each subject of `items` was last erased, if ever.
    async fn load_erasures(&mut self, items: &[EnrichedEvent]) -> Result<(), SinkError> {
        let subjects: Vec<String> = items
            .iter()
            .map(|e| {
                let (kind, id) = crate::privacy::subject_of(e);
                crate::privacy::pseudonym(&self.settings.pseudonym_key, kind, id)
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT subject_pseudonym, max(erased_at) FROM subject_keys
              WHERE subject_pseudonym = ANY($1) AND erased_at IS NOT NULL GROUP BY subject_pseudonym",
        )
        .bind(&subjects)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| SinkError::from_sqlx(&e))?;
        self.erased = rows.into_iter().collect();
        Ok(())
    }

    /// Create every document not yet indexed. `Ok` when all are in; `Refused` when the cluster
    /// refuses one for its content (the others are in); `Transient` when some still wait.
    async fn index(&mut self, items: &[EnrichedEvent]) -> Result<(), SinkError> {
        let mut pending: Vec<BulkDoc> = items.iter().filter(|e| !self.indexed.contains(&e.id)).map(|e| self.doc(e)).collect();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ITEM_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            let refs: Vec<&BulkDoc> = pending.iter().collect();
            let started = std::time::Instant::now();
            let response = self.client.bulk(index::bulk_body(&refs)).await;
            self.metrics.bulk_seconds.with_label_values(&["index"]).observe(started.elapsed().as_secs_f64());
            let response = match response {
                Ok(r) => r,
                Err(SearchError::Transient(why)) => return Err(SinkError::transient(why)),
                // The whole request refused (too large, malformed): retrying alone cannot help,
                // but one document may be the cause; let the runtime find it.
                Err(SearchError::Permanent(why)) => return Err(SinkError::refused(why)),
                // Every document would be refused alike: stop with the reason, dead-letter none.
                Err(e @ SearchError::Unauthorized(_)) => return Err(SinkError::fatal(e.to_string())),
            };
            let outcomes = index::bulk_outcomes(&response, pending.len()).map_err(SinkError::transient)?;
            let mut again = Vec::new();
            let mut refused: Option<String> = None;
            for (doc, outcome) in pending.into_iter().zip(outcomes) {
                let label = match &outcome {
                    ItemOutcome::Created => "created",
                    ItemOutcome::Exists => "exists",
                    ItemOutcome::Rejected(_) => "rejected",
                    ItemOutcome::Retry(_) => "retry",
                };
                self.metrics.items.with_label_values(&["index", label]).inc();
                match outcome {
                    ItemOutcome::Created | ItemOutcome::Exists => {
                        self.indexed.insert(doc.id);
                    }
                    ItemOutcome::Rejected(why) => {
                        refused.get_or_insert(format!("document {}: {why}", doc.id));
                    }
                    ItemOutcome::Retry(_) => again.push(doc),
                }
            }
            if let Some(why) = refused {
                return Err(SinkError::refused(why));
            }
            pending = again;
            if !pending.is_empty() && attempt < ITEM_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(SinkError::transient(format!("{} document(s) still refused for now by OpenSearch (429/5xx)", pending.len())))
        }
    }
}

impl SinkStage for IndexStage {
    type Item = EnrichedEvent;

    fn name(&self) -> &'static str {
        "index"
    }

    fn sink_name(&self) -> &'static str {
        "opensearch.audit-events"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.settings.input_topic.clone()]
    }

    fn describe(&self, event: &EnrichedEvent) -> Vec<(&'static str, String)> {
        vec![("auditflow.event_id", event.id.clone())]
    }

    fn decode(&mut self, input: &InputMessage<'_>) -> Result<EnrichedEvent, Rejection> {
        decode_enriched(input.payload)
    }

    async fn write(&mut self, items: &[EnrichedEvent], advances: &[OffsetAdvance]) -> Result<WriteOutcome, SinkError> {
        self.load_erasures(items).await?;
        self.index(items).await?;
        let mut tx = self.pool.begin().await.map_err(|e| SinkError::from_sqlx(&e))?;
        let outcome = offsets::advance(&mut tx, &self.settings.group_id, advances).await.map_err(|e| SinkError::from_sqlx(&e))?;
        match outcome {
            Advance::Done => tx.commit().await.map_err(|e| SinkError::from_sqlx(&e))?,
            Advance::Fenced => tx.rollback().await.map_err(|e| SinkError::from_sqlx(&e))?,
        }
        self.indexed.clear();
        Ok(match outcome {
            Advance::Done => WriteOutcome::Committed,
            Advance::Fenced => WriteOutcome::Fenced,
        })
    }

    /// Creating is idempotent, so probing writes for real: what goes in stays in (a later
    /// write finds it there), and a refused document is named by the cluster itself.
    async fn probe(&mut self, items: &[EnrichedEvent]) -> Result<(), SinkError> {
        let saved = std::mem::take(&mut self.indexed);
        self.load_erasures(items).await?;
        let r = self.index(items).await;
        self.indexed = saved;
        r
    }

    fn offset_loader(&self) -> OffsetLoader {
        offsets::loader(self.pool.clone(), self.settings.group_id.clone(), self.handle.clone())
    }
}
