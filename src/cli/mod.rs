//! The `auditflow` operator command: emit events, create topics, migrate the database,
//! detection rules, compliance reports, retention and legal holds, the ledger, data-subject
//! requests and fleet operations.

pub mod emit;
pub mod index;
pub mod ledger;
pub mod ops;
pub mod privacy;
pub mod proof;
pub mod report;
pub mod retention;
pub mod rules;
pub mod search;
pub mod token;
pub mod topics;
pub mod witness;
