//! Sigma front end: Sigma rule files (YAML, one or several documents) parsed into typed,
//! validated documents, with each `condition` resolved into a boolean expression over detection
//! items. Mapping Sigma fields onto our events and compiling onto the windows is the engine's
//! job; this module only promises that what it accepts means to us what it means to pySigma.
//!
//! - `model`: documents, metadata and the checks of the top-level keys.
//! - `detection`: search identifiers, values and modifiers → [`Expr`] leaves.
//! - `condition`: the condition language (precedence, `1 of`/`all of`/`them`) and expansion.
//! - `correlation`: correlation documents.
//! - `canon`: a canonical printer equal to the pySigma dumper, for parity tests.
//! - `yaml`: the YAML reader that keeps positions, order, duplicates and unquoted text.
//!
//! Semantics the engine must honour (the spec leaves them to the backend):
//! - [`Expr::Keyword`]: some value of the event (or its message text) passes the test.
//! - [`Test::Str`]: the whole value matches the glob, case-insensitively unless `cased`.
//! - [`Test::Null`]: the field is absent or null; `Exists(true)`: present, whatever its value.
//! - [`Test::Number`]: numeric equality, also against a string value that parses as a number.
//! - [`Test::Regex`]: an unanchored search with the given flags (what SigmaHQ rules assume;
//!   `re|contains` and friends already add `.*`, so anchoring would not break those).
//!
//! Refused on purpose, each with its own message: encoding and placeholder modifiers (windash,
//! base64, base64offset, utf16*, wide, expand, fieldref, timestamp parts), unquoted scalars that
//! YAML 1.1 (pySigma) reads differently from YAML 1.2 (us: `yes`, `010`, `1e3`), duplicate
//! keys, legacy `action:` documents and Sigma filters.

mod canon;
mod condition;
mod correlation;
mod detection;
mod model;
pub mod native;
mod yaml;

pub use canon::canon;
pub use correlation::{CondOp, CorrelationCondition, CorrelationKind, SigmaCorrelation};
pub use detection::{CmpOp, Expr, SigmaStr, StrPart, Test};
pub use model::{looks_like_sigma, parse_documents, Level, LogSource, Meta, SigmaDoc, SigmaRule};

/// A problem in a Sigma file, with its place and the document it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", place(self), .message)]
pub struct SigmaError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Title, else id, else name of the document, when known.
    pub rule: Option<String>,
    pub message: String,
}

fn place(e: &SigmaError) -> String {
    let at = match (e.line, e.column) {
        (Some(l), Some(c)) => format!("line {l}:{c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    };
    match &e.rule {
        Some(r) => format!("{at}rule {r:?}: "),
        None => at,
    }
}

/// Check references between documents (possibly from several files): `id`s and `name`s are
/// unique, and every rule a correlation names exists. Sigma resolves references across all
/// loaded files, so this runs once over everything [`parse_documents`] returned.
pub fn check_references(docs: &[SigmaDoc]) -> Vec<SigmaError> {
    let err = |m: &Meta, message: String| SigmaError {
        line: Some(m.line),
        column: None,
        rule: Some(m.title.clone()),
        message,
    };
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for d in docs {
        let m = d.meta();
        for key in [&m.id, &m.name].into_iter().flatten() {
            if let Some(first) = seen.insert(key.as_str(), m.line) {
                errors.push(err(m, format!("`{key}` is already the id or name of the document at line {first}")));
            }
        }
    }
    for d in docs {
        if let SigmaDoc::Correlation(c) = d {
            for r in c.rules.iter().filter(|r| !seen.contains_key(r.as_str())) {
                errors.push(err(&c.meta, format!("correlation refers to rule `{r}`, which is not loaded")));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod engine_tests;
