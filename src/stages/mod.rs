//! The pipeline's stages. Each is business logic plugged into the shared runtime:
//! - [`enrich`]: `audit-raw` → validate, normalise, enrich → `audit-enriched` (Avro), exactly once.
//! - [`persist`]: `audit-enriched` → PostgreSQL `audit_events`, offsets in the same transaction.
//! - [`alert`]: `audit-rule-matches` → alert policies → PostgreSQL `audit_alerts` (the
//!   dispatcher in the same process sends them).

pub mod alert;
pub mod enrich;
pub mod persist;
