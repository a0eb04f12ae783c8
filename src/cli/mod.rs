//! The `auditflow` operator command: emit events, create topics, migrate the database.

pub mod emit;
pub mod ledger;
pub mod ops;
pub mod privacy;
pub mod topics;
