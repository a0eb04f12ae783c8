//! Sigma documents → native rules (the form `auditflow rules convert` prints), so a Sigma rule
//! runs on exactly the machinery a native one does.
//!
//! - A detection rule becomes a pattern rule; its condition becomes `match` blocks (`all_of`,
//!   `any_of`, `not`) over field tests, each Sigma field named through the field mapping
//!   ([`SigmaFields`]); keywords search every text field.
//! - A correlation becomes a stateful rule over the conditions of the rules it names:
//!   `event_count` → threshold (a lower bound) or aggregate (other bounds, judged per ended
//!   period), `value_count` → distinct count or aggregate of distinct values, `temporal_ordered` →
//!   sequence, `temporal` → unordered sequence with `at_least`. A correlation naming another
//!   correlation takes that one's firings (`fired:`), which therefore runs as a rule of its own.
//! - `generate`: a rule that a correlation names is not a rule of its own when any such
//!   correlation has `generate: false` (the default), as pySigma has it.
//! - `level` → severity (`informational` → LOW and action LOG); `tags`, `references`,
//!   `falsepositives` carry over; an `auditflow:` map may set `action`, `block`, `compliance`,
//!   `enabled` and a correlation's `lateness`, which Sigma cannot say.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{CondOp, CorrelationKind, Expr, Level, LogSource, Meta, SigmaCorrelation, SigmaDoc, SigmaRule, SigmaStr, StrPart, Test};
use crate::event::Severity;
use crate::rule_match::RuleAction;
use crate::rules::compile::{PlacedDef, RuleError};
use crate::rules::fields::FieldRef;
use crate::rules::model::{
    AggregateDef, BlockDef, CmpOp, CountDef, DistinctDef, DurationDef, FieldCondDef, FieldSpec, FieldTestDef, MatchDef, PatternDef,
    PatternKind, RawRuleDef, SequenceDef, ThresholdDef, MAX_RULE_ID_CHARS,
};

/// The mapping built into the binary (`config/sigma-fields.yaml`).
pub const BUILTIN_FIELDS: &str = include_str!("../../../config/sigma-fields.yaml");
/// The file in a rules directory that adds to the built-in mapping.
pub const FIELDS_FILE: &str = "sigma-fields.yaml";

/// Which logsources auditflow serves and how Sigma field names map onto its events.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigmaFields {
    pub logsources: Vec<LogSourceDef>,
    /// Sigma field name → auditflow field name.
    pub fields: BTreeMap<String, String>,
    /// Sigma field name → why auditflow's events cannot have it.
    pub refused: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSourceDef {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
}

impl SigmaFields {
    pub fn builtin() -> SigmaFields {
        // Checked by a unit test; a broken built-in file is a build defect.
        serde_norway::from_str(BUILTIN_FIELDS).unwrap_or_default()
    }

    /// The built-in mapping with `extra` (a `sigma-fields.yaml`) laid over it.
    pub fn with_file(path: &Path, text: &str) -> Result<SigmaFields, RuleError> {
        let extra: SigmaFields = serde_norway::from_str(text).map_err(|e| RuleError {
            file: path.to_path_buf(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            message: format!("Sigma field mapping: {e}"),
        })?;
        let mut m = SigmaFields::builtin();
        for (k, v) in extra.fields {
            if let Err(e) = FieldRef::parse(&v) {
                return Err(RuleError { file: path.to_path_buf(), line: None, column: None, message: format!("Sigma field `{k}`: {e}") });
            }
            m.refused.remove(&k);
            m.fields.insert(k, v);
        }
        for (k, v) in extra.refused {
            m.fields.remove(&k);
            m.refused.insert(k, v);
        }
        m.logsources.extend(extra.logsources);
        Ok(m)
    }

    /// The auditflow field a Sigma field name means, or why there is none.
    fn field(&self, name: &str) -> Result<FieldSpec, String> {
        if let Some(why) = self.refused.get(name) {
            return Err(format!("field `{name}` is not on auditflow's events: {why}"));
        }
        let native = self.fields.get(name).map(String::as_str).unwrap_or(name);
        match FieldRef::parse(native) {
            Ok(field) => Ok(FieldSpec { name: native.to_string(), field }),
            Err(_) => Err(format!(
                "unknown field `{name}`: name one of auditflow's fields (user_id, ip_address, action, resource, …, metadata.<path>) or map it in {FIELDS_FILE}"
            )),
        }
    }

    fn serves(&self, l: &LogSource) -> bool {
        self.logsources.iter().any(|s| {
            let eq = |want: &Option<String>, have: &Option<String>| match want {
                None => have.is_none(),
                Some(w) => have.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(w)),
            };
            // A served logsource without a category serves any category of its product.
            eq(&s.product, &l.product) && (s.category.is_none() || eq(&s.category, &l.category)) && eq(&s.service, &l.service)
        })
    }
}

/// What Sigma cannot say: set under an `auditflow:` key of a rule or correlation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Extras {
    action: Option<RuleAction>,
    block: Option<BlockDef>,
    compliance: Vec<String>,
    enabled: Option<bool>,
    /// A correlation's `lateness` (how late an event may arrive and still count; for a count
    /// judged per period, how long after its end the period still takes events).
    lateness: Option<DurationDef>,
}

/// A Sigma document with where it came from.
pub struct Loaded {
    pub file: PathBuf,
    pub doc: SigmaDoc,
}

/// The native rules of every Sigma document loaded (from every file), each with its file and
/// line; or every problem found.
pub fn to_native(loaded: &[Loaded], fields: &SigmaFields) -> Result<Vec<PlacedDef>, Vec<RuleError>> {
    let mut errors = Vec::new();
    let err = |l: &Loaded, message: String| RuleError {
        file: l.file.clone(),
        line: Some(l.doc.meta().line),
        column: None,
        message: format!("rule {:?}: {message}", l.doc.meta().title),
    };

    // Every document by its id and its name (correlations name rules by either).
    let mut by_ref: HashMap<&str, usize> = HashMap::new();
    for (i, l) in loaded.iter().enumerate() {
        let m = l.doc.meta();
        for key in [&m.id, &m.name].into_iter().flatten() {
            if let Some(j) = by_ref.insert(key.as_str(), i) {
                if j != i {
                    let other = &loaded[j];
                    errors.push(err(l, format!("`{key}` is also the id or name of the rule at {}:{}", other.file.display(), other.doc.meta().line)));
                }
            }
        }
    }
    let mut ids: Vec<Option<String>> = Vec::with_capacity(loaded.len());
    for l in loaded {
        let m = l.doc.meta();
        match native_id(m) {
            Ok(id) => ids.push(Some(id)),
            Err(e) => {
                errors.push(err(l, e));
                ids.push(None);
            }
        }
    }
    // Which documents correlations name, and whether any of those says `generate: false`.
    let mut named = vec![false; loaded.len()];
    let mut suppressed = vec![false; loaded.len()];
    for l in loaded {
        if let SigmaDoc::Correlation(c) = &l.doc {
            for r in &c.rules {
                match by_ref.get(r.as_str()) {
                    Some(&j) => {
                        named[j] = true;
                        suppressed[j] |= !c.generate.unwrap_or(false);
                    }
                    None => errors.push(err(l, format!("names rule `{r}`, which is not loaded"))),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut out = Vec::new();
    for (i, l) in loaded.iter().enumerate() {
        let Some(id) = ids[i].clone() else { continue };
        let generate = !(named[i] && suppressed[i]);
        let result = match &l.doc {
            // A rule only a correlation uses is part of that correlation, not a rule of its own.
            SigmaDoc::Rule(_) if !generate => continue,
            SigmaDoc::Rule(r) => rule(r, id, fields),
            SigmaDoc::Correlation(c) => correlation(c, id, generate, loaded, &by_ref, &ids, fields),
        };
        match result {
            Ok(def) => out.push((l.file.clone(), Some(l.doc.meta().line), def)),
            Err(e) => errors.push(err(l, e)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The native id: the Sigma `name` when it is a valid rule id, else the `id`.
fn native_id(m: &Meta) -> Result<String, String> {
    let valid = |s: &str| !s.is_empty() && s.len() <= MAX_RULE_ID_CHARS && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    m.name
        .as_deref()
        .filter(|n| valid(n))
        .or(m.id.as_deref().filter(|i| valid(i)))
        .map(str::to_string)
        .ok_or_else(|| "needs an `id` (UUID) or a `name` of letters, digits, `-`, `_`, `.`: it names the rule's matches and windows".into())
}

fn severity(level: Option<Level>) -> Severity {
    match level {
        Some(Level::Informational | Level::Low) => Severity::Low,
        Some(Level::Medium) | None => Severity::Medium,
        Some(Level::High) => Severity::High,
        Some(Level::Critical) => Severity::Critical,
    }
}

fn extras(m: &Meta) -> Result<Extras, String> {
    match m.custom.get("auditflow") {
        None => Ok(Extras::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("`auditflow:` {e}")),
    }
}

/// The rule's common part: names, severity, action, tags and documentation.
fn base(m: &Meta, id: String, generate: bool) -> Result<RawRuleDef, String> {
    let x = extras(m)?;
    let informational = matches!(m.level, Some(Level::Informational));
    Ok(RawRuleDef {
        id,
        name: m.title.clone(),
        description: m.description.clone().unwrap_or_default(),
        enabled: x.enabled.unwrap_or(true),
        severity: severity(m.level),
        action: x.action.unwrap_or(if informational { RuleAction::Log } else { RuleAction::Alert }),
        compliance: x.compliance,
        tags: m.tags.clone(),
        references: m.references.clone(),
        falsepositives: m.falsepositives.clone(),
        generate,
        matcher: MatchDef::default(),
        threshold: None,
        distinct: None,
        sequence: None,
        absence: None,
        aggregate: None,
        travel: None,
        first_seen: None,
        block: x.block,
    })
}

fn rule(r: &SigmaRule, id: String, fields: &SigmaFields) -> Result<RawRuleDef, String> {
    let mut def = base(&r.meta, id, true)?;
    def.matcher = detection(r, fields)?;
    Ok(def)
}

/// A detection rule's condition, after its logsource is checked.
fn detection(r: &SigmaRule, fields: &SigmaFields) -> Result<MatchDef, String> {
    if !fields.serves(&r.logsource) {
        let l = &r.logsource;
        let shown: Vec<String> = [("product", &l.product), ("category", &l.category), ("service", &l.service)]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}: {v}")))
            .collect();
        return Err(format!(
            "logsource {{{}}} is not one auditflow serves: its rules run on auditflow's own audit events (logsource: {{product: auditflow}}, category audit or none)",
            shown.join(", ")
        ));
    }
    match r.detection.as_slice() {
        [one] => expr(one, fields),
        // Several conditions: any of them.
        many => Ok(MatchDef { any_of: many.iter().map(|e| expr(e, fields)).collect::<Result<_, _>>()?, ..MatchDef::default() }),
    }
}

/// `e` with nested ANDs (and ORs) of the same kind spliced into their parent.
fn flatten(e: &Expr) -> Expr {
    let splice = |items: &[Expr], and: bool| -> Vec<Expr> {
        let mut out = Vec::new();
        for x in items.iter().map(flatten) {
            match x {
                Expr::And(inner) if and => out.extend(inner),
                Expr::Or(inner) if !and => out.extend(inner),
                other => out.push(other),
            }
        }
        out
    };
    match e {
        Expr::And(items) => Expr::And(splice(items, true)),
        Expr::Or(items) => Expr::Or(splice(items, false)),
        Expr::Not(x) => Expr::Not(Box::new(flatten(x))),
        other => other.clone(),
    }
}

fn expr(e: &Expr, fields: &SigmaFields) -> Result<MatchDef, String> {
    translate(&flatten(e), fields)
}

fn translate(e: &Expr, fields: &SigmaFields) -> Result<MatchDef, String> {
    Ok(match e {
        Expr::And(items) => {
            let mut m = MatchDef::default();
            let blocks: Vec<&Expr> = items.iter().filter(|x| !matches!(x, Expr::Field { .. })).collect();
            for x in items {
                if let Expr::Field { field, test } = x {
                    m.fields.push(field_test(field, test, fields)?);
                }
            }
            // One OR or one NOT among field tests fits the block's own slot; more go in all_of.
            match blocks.as_slice() {
                [Expr::Or(_)] | [Expr::Not(_)] | [Expr::Keyword(_)] if !m.fields.is_empty() || blocks.len() == 1 => {
                    let b = translate(blocks[0], fields)?;
                    m.any_of = b.any_of;
                    m.not = b.not;
                    m.any = b.any;
                    m.fields.extend(b.fields);
                }
                _ => {
                    for b in blocks {
                        m.all_of.push(translate(b, fields)?);
                    }
                }
            }
            m
        }
        Expr::Or(items) => {
            let mut alternatives = merge_alternatives(items.iter().map(|x| translate(x, fields)).collect::<Result<_, _>>()?);
            if alternatives.len() == 1 {
                alternatives.pop().unwrap_or_default()
            } else {
                MatchDef { any_of: alternatives, ..MatchDef::default() }
            }
        }
        Expr::Not(x) => MatchDef { not: Some(Box::new(translate(x, fields)?)), ..MatchDef::default() },
        Expr::Field { field, test } => MatchDef { fields: vec![field_test(field, test, fields)?], ..MatchDef::default() },
        Expr::Keyword(test) => MatchDef { any: Some(keyword(test)?), ..MatchDef::default() },
    })
}

/// Alternatives that each test one field's text (`equals` of strings, or a regex), merged per
/// field into one test: `[action: login, action: authentication]` → one regex `login|authentication`.
fn merge_alternatives(alternatives: Vec<MatchDef>) -> Vec<MatchDef> {
    let mut out: Vec<MatchDef> = Vec::with_capacity(alternatives.len());
    for alt in alternatives {
        let Some(f) = single_text_test(&alt) else {
            out.push(alt);
            continue;
        };
        let same = out.iter_mut().filter_map(|o| {
            let g = single_text_test(o)?;
            (g.field.name == f.field.name && g.case_sensitive == f.case_sensitive).then_some(o)
        });
        match same.into_iter().next() {
            Some(o) => {
                let merged = {
                    let g = &o.fields[0];
                    match (&g.test, &f.test) {
                        (FieldTestDef::Equals(a), FieldTestDef::Equals(b)) => FieldTestDef::Equals(a.iter().chain(b).cloned().collect()),
                        (a, b) => FieldTestDef::Regex(format!("{}|{}", as_regex(a), as_regex(b))),
                    }
                };
                o.fields[0].test = merged;
            }
            None => out.push(alt),
        }
    }
    out
}

/// The one field test of a block that holds nothing else, when it tests text.
fn single_text_test(m: &MatchDef) -> Option<&FieldCondDef> {
    let [f] = m.fields.as_slice() else { return None };
    let text = match &f.test {
        FieldTestDef::Regex(_) => true,
        FieldTestDef::Equals(v) => v.iter().all(|x| x.is_string()),
        _ => false,
    };
    let rest_empty = MatchDef { fields: Vec::new(), ..m.clone() }.is_empty();
    (text && rest_empty).then_some(f)
}

/// A text test as a regex alternative (equality anchored).
fn as_regex(t: &FieldTestDef) -> String {
    match t {
        FieldTestDef::Regex(r) if r.starts_with("(?") => format!("(?:{r})"),
        FieldTestDef::Regex(r) => {
            if r.contains('|') {
                format!("(?:{r})")
            } else {
                r.clone()
            }
        }
        FieldTestDef::Equals(v) => {
            let alts: Vec<String> = v.iter().filter_map(|x| x.as_str()).map(regex::escape).collect();
            format!("^(?:{})$", alts.join("|"))
        }
        _ => String::new(),
    }
}

/// A glob as a regular expression: anchored where the glob is, `*` and `?` as `.*` and `.`
/// (crossing newlines), literals escaped. `*x*` is simply `x`.
fn glob_regex(s: &SigmaStr, anchored: bool) -> String {
    let parts = &s.parts;
    let (lead, trail) = (matches!(parts.first(), Some(StrPart::AnyRun)), matches!(parts.last(), Some(StrPart::AnyRun)));
    let inner = &parts[usize::from(lead)..parts.len() - usize::from(trail && parts.len() > usize::from(lead))];
    let mut out = String::new();
    if inner.iter().any(|p| !matches!(p, StrPart::Lit(_))) {
        out.push_str("(?s)");
    }
    if anchored && !lead {
        out.push('^');
    }
    for p in inner {
        match p {
            StrPart::Lit(l) => out.push_str(&regex::escape(l)),
            StrPart::AnyRun => out.push_str(".*"),
            StrPart::AnyOne => out.push('.'),
        }
    }
    if anchored && !trail {
        out.push('$');
    }
    out
}

fn field_test(name: &str, test: &Test, fields: &SigmaFields) -> Result<FieldCondDef, String> {
    let field = fields.field(name)?;
    let number = |n: f64| -> serde_json::Value {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            serde_json::Value::from(n as i64)
        } else {
            serde_json::Value::from(n)
        }
    };
    let (test, case_sensitive) = match test {
        Test::Str(s) => match s.literal() {
            Some(lit) => (FieldTestDef::Equals(vec![serde_json::Value::String(lit.to_string())]), s.cased),
            None => (FieldTestDef::Regex(glob_regex(s, true)), s.cased),
        },
        Test::Regex { pattern, ignore_case, multi_line, dot_all } => {
            let flags: String = [(*multi_line, 'm'), (*dot_all, 's')].iter().filter(|(on, _)| *on).map(|(_, f)| *f).collect();
            let text = if flags.is_empty() { pattern.clone() } else { format!("(?{flags}){pattern}") };
            // Sigma regular expressions are case-sensitive unless `|i`.
            (FieldTestDef::Regex(text), !ignore_case)
        }
        Test::Cidr(net) => {
            if !matches!(field.field, FieldRef::IpAddress) {
                return Err(format!("field `{name}`: `cidr` applies to an address (ip_address), not to `{}`", field.name));
            }
            (FieldTestDef::Cidr(vec![crate::rules::fields::Cidr::parse(net)?]), false)
        }
        Test::Compare { op, value } => {
            let op = match op {
                super::CmpOp::Gt => CmpOp::Gt,
                super::CmpOp::Gte => CmpOp::Gte,
                super::CmpOp::Lt => CmpOp::Lt,
                super::CmpOp::Lte => CmpOp::Lte,
            };
            (FieldTestDef::Compare(op, *value), false)
        }
        Test::Number(n) => (FieldTestDef::Equals(vec![number(*n)]), false),
        Test::Bool(b) => (FieldTestDef::Equals(vec![serde_json::Value::Bool(*b)]), false),
        Test::Null => (FieldTestDef::Null, false),
        Test::Exists(e) => (FieldTestDef::Exists(*e), false),
    };
    Ok(FieldCondDef { field, test, case_sensitive })
}

/// A keyword: some text field of the event holds it (case-insensitive; wildcards as written).
fn keyword(test: &Test) -> Result<PatternDef, String> {
    let (regex, case_sensitive) = match test {
        Test::Str(s) => (glob_regex(s, false), s.cased),
        Test::Regex { pattern, ignore_case, .. } => (pattern.clone(), !ignore_case),
        Test::Number(n) => (regex::escape(&n.to_string()), false),
        other => return Err(format!("a keyword must be text, not {other:?}")),
    };
    Ok(PatternDef { kind: PatternKind::Regex(regex), case_sensitive })
}

/// The lower bound of a condition that has only one (`gte`/`gt`), as a count to reach.
fn lower_bound_only(bounds: &[(CondOp, f64)]) -> Option<u64> {
    match bounds {
        [(CondOp::Gte, n)] => Some(n.ceil().max(0.0) as u64),
        [(CondOp::Gt, n)] => Some(n.floor().max(-1.0) as u64 + 1),
        _ => None,
    }
}

fn count_def(bounds: &[(CondOp, f64)]) -> Result<CountDef, String> {
    let mut c = CountDef::default();
    for (op, n) in bounds {
        if *n < 0.0 || n.fract() != 0.0 {
            return Err(format!("a count bound must be a whole number, 0 or more (not {n})"));
        }
        let n = *n as u64;
        match op {
            CondOp::Gt => c.gt = Some(n),
            CondOp::Gte => c.gte = Some(n),
            CondOp::Lt => c.lt = Some(n),
            CondOp::Lte => c.lte = Some(n),
            CondOp::Eq => c.eq = Some(n),
        }
    }
    Ok(c)
}

#[allow(clippy::too_many_arguments)]
fn correlation(
    c: &SigmaCorrelation,
    id: String,
    generate: bool,
    loaded: &[Loaded],
    by_ref: &HashMap<&str, usize>,
    ids: &[Option<String>],
    fields: &SigmaFields,
) -> Result<RawRuleDef, String> {
    if !c.aliases.is_empty() {
        return Err("`aliases` are not supported: the rules a correlation names must share its group-by fields".into());
    }
    let mut def = base(&c.meta, id, generate)?;
    let lateness = extras(&c.meta)?.lateness;
    // What each named rule contributes: its condition, or (a correlation) its firings.
    let mut steps = Vec::with_capacity(c.rules.len());
    for r in &c.rules {
        let j = *by_ref.get(r.as_str()).ok_or_else(|| format!("names rule `{r}`, which is not loaded"))?;
        steps.push(match &loaded[j].doc {
            SigmaDoc::Rule(rule) => detection(rule, fields).map_err(|e| format!("named rule {:?}: {e}", rule.meta.title))?,
            SigmaDoc::Correlation(_) => MatchDef { fired: ids[j].clone(), ..MatchDef::default() },
        });
    }
    let group_by: Vec<FieldSpec> = c.group_by.iter().map(|g| fields.field(g)).collect::<Result<_, _>>()?;
    let window = DurationDef(c.timespan_ms);
    let any_step = |steps: Vec<MatchDef>| -> MatchDef {
        if steps.len() == 1 {
            steps.into_iter().next().unwrap_or_default()
        } else {
            MatchDef { any_of: steps, ..MatchDef::default() }
        }
    };
    let bounds = c.condition.as_ref().map(|x| x.bounds.clone()).unwrap_or_default();
    match c.kind {
        CorrelationKind::EventCount => {
            def.matcher = any_step(steps);
            match lower_bound_only(&bounds) {
                Some(0) => return Err("`gte: 0` holds for every group: nothing to detect".into()),
                Some(n) => def.threshold = Some(ThresholdDef { count: n, window, group_by, lateness }),
                None => def.aggregate = Some(AggregateDef { period: window, group_by, distinct: None, count: count_def(&bounds)?, lateness }),
            }
        }
        CorrelationKind::ValueCount => {
            let name = c.condition.as_ref().and_then(|x| x.field.clone()).ok_or("value_count needs `condition.field`")?;
            let field = fields.field(&name)?;
            def.matcher = any_step(steps);
            match lower_bound_only(&bounds) {
                Some(0) => return Err("`gte: 0` holds for every group: nothing to detect".into()),
                Some(n) => def.distinct = Some(DistinctDef { field, more_than: n - 1, window, group_by, lateness }),
                None => def.aggregate = Some(AggregateDef { period: window, group_by, distinct: Some(field), count: count_def(&bounds)?, lateness }),
            }
        }
        CorrelationKind::Temporal | CorrelationKind::TemporalOrdered => {
            let n = steps.len() as u64;
            if n < 2 {
                return Err("a temporal correlation needs at least two rules".into());
            }
            let at_least = match bounds.as_slice() {
                [] => n,
                _ => match lower_bound_only(&bounds) {
                    Some(k) if (1..=n).contains(&k) => k,
                    _ => return Err(format!("a temporal condition counts the rules that matched: give `gte` (or `gt`) between 1 and {n}")),
                },
            };
            let ordered = matches!(c.kind, CorrelationKind::TemporalOrdered);
            if ordered && at_least != n {
                return Err("temporal_ordered needs every rule it names, in order (no condition, or `gte` equal to their number)".into());
            }
            def.sequence = Some(SequenceDef {
                within: window,
                group_by,
                steps,
                ordered,
                at_least: (!ordered && at_least != n).then_some(at_least as u32),
                lateness,
            });
        }
    }
    Ok(def)
}
