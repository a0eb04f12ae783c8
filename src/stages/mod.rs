//! The pipeline's stages. Each is business logic plugged into the shared runtime:
//! - [`enrich`]: `audit-raw` → validate, normalise, enrich → `audit-enriched` (Avro), exactly once.
//! - [`persist`]: `audit-enriched` → PostgreSQL `audit_events`, offsets in the same transaction.
//! - [`compliance`]: `audit-enriched` → framework/control records in PostgreSQL
//!   `compliance_events` and on `compliance-events`, exactly once.

pub mod compliance;
pub mod enrich;
pub mod persist;
