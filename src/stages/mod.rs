//! The pipeline's stages. Each is business logic plugged into the shared runtime:
//! - [`enrich`]: `audit-raw` → validate, normalise, enrich → `audit-enriched` (Avro), exactly once.
//! - [`persist`]: `audit-enriched` → PostgreSQL `audit_events`, offsets in the same transaction.
//! - [`rules`]: `audit-enriched` → detection rules (window state in Redis) → `audit-rule-matches`
//!   and `security-actions`, exactly once.

pub mod enrich;
pub mod persist;
pub mod rules;
