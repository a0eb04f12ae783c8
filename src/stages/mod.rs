//! The pipeline's stages. Each is business logic plugged into the shared runtime:
//! - [`enrich`]: `audit-raw` → validate, normalise, enrich → `audit-enriched` (Avro), exactly once.
//! - [`persist`]: `audit-enriched` → PostgreSQL `audit_events` (hash-chained ledger), offsets in
//!   the same transaction.
//! - [`alert`]: `audit-rule-matches` → alert policies → PostgreSQL `audit_alerts` (the
//!   dispatcher in the same process sends them).
//! - [`compliance`]: `audit-enriched` → framework/control records in PostgreSQL
//!   `compliance_events` and on `compliance-events`, exactly once.
//! - [`rules`]: `audit-enriched` → detection rules (window state in Redis) → `audit-rule-matches`
//!   and `security-actions`, exactly once.

pub mod alert;
pub mod compliance;
pub mod enrich;
pub mod index;
pub mod persist;
pub mod rules;
pub mod witness;
