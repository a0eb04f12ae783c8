//! The `auditflow` operator command: emit events, create topics, migrate the database,
//! compliance reports, retention and legal holds.

pub mod emit;
pub mod ledger;
pub mod ops;
pub mod privacy;
pub mod report;
pub mod retention;
pub mod topics;
