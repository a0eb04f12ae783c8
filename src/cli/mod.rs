//! The `auditflow` operator command: emit events, create topics, migrate the database, check
//! and try detection rules.

pub mod emit;
pub mod rules;
pub mod topics;
