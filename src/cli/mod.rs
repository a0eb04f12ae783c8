//! The `auditflow` operator command: emit events, create topics, migrate the database.

pub mod emit;
pub mod topics;
