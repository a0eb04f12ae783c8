//! Detection rules: YAML rule files compiled into a [`RulesEngine`] that evaluates enriched
//! events against a [`WindowStore`] and produces [`crate::rule_match::RuleMatch`]es and
//! [`BlockDecision`]s.
//!
//! - [`model`]: the file format (what operators write), checked field by field as it is read.
//! - [`compile`]: rule files → compiled rules; one `RegexSet` per matched field.
//! - [`engine`]: evaluation of a batch, match ids, block decisions, absence checks.
//! - [`store`]: the window store trait and its in-memory implementation; the algorithms.
//! - [`redis_store`]: the shared Redis implementation (Lua scripts, pipelined).
//! - [`reload`]: picking up changed rule files without a restart.
//! - [`sigma`]: Sigma rules and correlations, read and compiled into the native form.
//!
//! Kinds of rule: **pattern** (each matching event), **threshold** (N matching events in T per
//! group), **distinct count** (more than K distinct values of a field in T per group),
//! **sequence** (steps in order by the same group within T) and **absence** (a group that sent
//! events goes quiet for T).

pub mod compile;
pub mod engine;
pub mod fields;
pub mod model;
pub mod redis_store;
pub mod reload;
mod settings;
pub mod sigma;
pub mod store;

pub use compile::{load_dir, RuleError, RuleErrors, RuleSet};
pub use engine::{match_id, BlockDecision, EventResult, RuleTrace, RulesEngine, TraceOutcome, WindowLimits};
pub use redis_store::{RedisKeys, RedisWindowStore};
pub use settings::RulesSettings;
pub use store::{Firing, MemoryStore, Pending, WindowKey, WindowOp, WindowOutcome, WindowStore};

#[cfg(test)]
pub(crate) mod tests;
