//! Rule files → the engine's compiled form.
//!
//! Every pattern is compiled once. All patterns on one field, from every rule, go into one
//! [`RegexSet`], so an event costs one scan per field however many rules there are; a rule's
//! pattern condition is then a bit lookup.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::fields::{metadata_value, Cidr, FieldRef};
use super::model::{
    BlockSubjectDef, CmpOp, FieldCondDef, FieldTestDef, MatchDef, MetadataTest, PatternDef, PatternKind, RawRuleDef, RuleDef,
    RuleFile, REGEX_SIZE_LIMIT,
};
use super::sigma;
use super::sigma::native::SigmaFields;
use crate::event::{Classification, EnrichedEvent, Severity};
use crate::rule_match::{RuleAction, RuleKind};

/// A problem in a rule file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    /// 1-based; absent when the problem concerns the file as a whole.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RuleError {}

/// The errors of a rule set that was refused, one per line when displayed.
#[derive(Debug, Clone)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Text fields a pattern can look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PatField {
    /// `"<action> <resource>"`.
    Text,
    Action,
    Resource,
    ResourceId,
    UserId,
    SessionId,
    Method,
    Endpoint,
    UserAgent,
    ErrorMessage,
    /// Every text field, metadata string values included.
    Any,
}

impl PatField {
    fn value(self, ev: &EnrichedEvent) -> Option<&str> {
        match self {
            PatField::Action => Some(&ev.action),
            PatField::Resource => Some(&ev.resource),
            PatField::ResourceId => ev.resource_id.as_deref(),
            PatField::UserId => ev.user_id.as_deref(),
            PatField::SessionId => ev.session_id.as_deref(),
            PatField::Method => ev.method.as_deref(),
            PatField::Endpoint => ev.endpoint.as_deref(),
            PatField::UserAgent => ev.user_agent.as_deref(),
            PatField::ErrorMessage => ev.error_message.as_deref(),
            PatField::Text | PatField::Any => None,
        }
    }

    /// The pattern field that scans `f`, when there is one (its tests then join the field's
    /// `RegexSet`).
    fn of(f: &FieldRef) -> Option<PatField> {
        Some(match f {
            FieldRef::Action => PatField::Action,
            FieldRef::Resource => PatField::Resource,
            FieldRef::ResourceId => PatField::ResourceId,
            FieldRef::UserId => PatField::UserId,
            FieldRef::SessionId => PatField::SessionId,
            FieldRef::Method => PatField::Method,
            FieldRef::Endpoint => PatField::Endpoint,
            FieldRef::UserAgent => PatField::UserAgent,
            FieldRef::ErrorMessage => PatField::ErrorMessage,
            _ => return None,
        })
    }

    const SINGLE: [PatField; 9] = [
        PatField::Action,
        PatField::Resource,
        PatField::ResourceId,
        PatField::UserId,
        PatField::SessionId,
        PatField::Method,
        PatField::Endpoint,
        PatField::UserAgent,
        PatField::ErrorMessage,
    ];
}

/// A condition on one event.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    True,
    All(Vec<Cond>),
    AnyOf(Vec<Cond>),
    Not(Box<Cond>),
    /// Bit of the event's pattern scan.
    Pattern(usize),
    Success(bool),
    SeverityIn(Vec<Severity>),
    MinSeverity(Severity),
    ClassificationIn(Vec<Classification>),
    MinClassification(Classification),
    IpIn(Vec<Cidr>),
    StatusIn(Vec<i32>),
    Metadata { path: Vec<String>, test: MetadataTest },
    /// A test on a field without a pattern scan of its own (or not a text test).
    Field { field: FieldRef, test: FieldTest },
    /// The event made the rule at this index fire (it is evaluated in an earlier pass).
    Fired(usize),
}

/// A compiled field test (see [`FieldTestDef`]).
#[derive(Debug, Clone)]
pub(crate) enum FieldTest {
    Regex(Regex),
    /// Texts (lower-cased unless case-sensitive), numbers and booleans, any of which may match.
    Equals { texts: Vec<String>, numbers: Vec<f64>, bools: Vec<bool>, case_sensitive: bool },
    Compare(CmpOp, f64),
    Exists(bool),
    Null,
    Cidr(Vec<Cidr>),
}

impl FieldTest {
    fn eval(&self, field: &FieldRef, ev: &EnrichedEvent, ip: Option<IpAddr>) -> bool {
        match self {
            FieldTest::Regex(re) => field.get(ev).is_some_and(|v| re.is_match(&v)),
            FieldTest::Equals { texts, numbers, bools, case_sensitive } => {
                let Some(v) = field.get(ev) else {
                    // An empty text is "no value" to `get`, but equals "".
                    return texts.iter().any(String::is_empty) && field.present(ev) && !field.is_null(ev);
                };
                (!texts.is_empty() && texts.iter().any(|t| if *case_sensitive { *t == v } else { v.to_lowercase() == *t }))
                    || (!numbers.is_empty() && field.number(ev).is_some_and(|n| numbers.contains(&n)))
                    || (!bools.is_empty() && bools.iter().any(|b| v == if *b { "true" } else { "false" }))
            }
            FieldTest::Compare(op, bound) => field.number(ev).is_some_and(|n| op.holds(n, *bound)),
            FieldTest::Exists(e) => field.present(ev) == *e,
            FieldTest::Null => field.is_null(ev),
            FieldTest::Cidr(nets) => ip.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
        }
    }
}

impl Cond {
    /// `fired`: the indices of the rules this event made fire in earlier passes, sorted.
    pub(crate) fn eval(&self, ev: &EnrichedEvent, ip: Option<IpAddr>, hits: &[bool], fired: &[usize]) -> bool {
        match self {
            Cond::True => true,
            Cond::All(v) => v.iter().all(|c| c.eval(ev, ip, hits, fired)),
            Cond::AnyOf(v) => v.iter().any(|c| c.eval(ev, ip, hits, fired)),
            Cond::Not(c) => !c.eval(ev, ip, hits, fired),
            Cond::Pattern(i) => hits.get(*i).copied().unwrap_or(false),
            Cond::Field { field, test } => test.eval(field, ev, ip),
            Cond::Fired(i) => fired.binary_search(i).is_ok(),
            Cond::Success(s) => ev.success == *s,
            Cond::SeverityIn(v) => v.contains(&ev.severity),
            Cond::MinSeverity(s) => ev.severity >= *s,
            Cond::ClassificationIn(v) => v.contains(&ev.classification),
            Cond::MinClassification(c) => ev.classification >= *c,
            Cond::IpIn(nets) => ip.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Cond::StatusIn(codes) => ev.status_code.is_some_and(|c| codes.contains(&c)),
            Cond::Metadata { path, test } => {
                let v = metadata_value(ev, path);
                match test {
                    MetadataTest::Exists(e) => v.is_some() == *e,
                    MetadataTest::Equals(want) => v.is_some_and(|v| json_equals(v, want)),
                    MetadataTest::Contains(needle) => v.is_some_and(|v| json_contains(v, needle)),
                }
            }
        }
    }
}

fn json_equals(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (have, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// A string contains the needle (case-insensitive); an array holds an element equal to it.
fn json_contains(have: &serde_json::Value, needle: &str) -> bool {
    use serde_json::Value;
    match have {
        Value::String(s) => contains_ci(s, needle),
        Value::Array(items) => items.iter().any(|i| match i {
            Value::String(s) => s.eq_ignore_ascii_case(needle),
            Value::Number(n) => n.to_string() == needle,
            Value::Bool(b) => b.to_string() == needle,
            _ => false,
        }),
        _ => false,
    }
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// Where a BLOCK rule takes its subject from, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub subject: BlockSubject,
    pub ttl_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockSubject {
    Ip,
    User,
}

impl BlockSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockSubject::Ip => "ip",
            BlockSubject::User => "user",
        }
    }
}

/// What a rule is, apart from its condition.
#[derive(Debug, Clone)]
pub struct RuleMeta {
    pub id: Arc<str>,
    pub name: String,
    pub description: String,
    pub severity: Severity,
    pub action: RuleAction,
    pub compliance: Vec<String>,
    /// Other tags (`attack.t1110`), copied into every match.
    pub tags: Vec<String>,
    pub references: Vec<String>,
    pub falsepositives: Vec<String>,
    /// Whether the rule's matches are emitted (`false`: it only feeds rules that name it).
    pub generate: bool,
    pub block: Option<BlockSpec>,
    pub file: PathBuf,
}

/// A named field of a group key.
pub(crate) type GroupBy = Vec<(String, FieldRef)>;

#[derive(Debug, Clone)]
pub(crate) enum Stateful {
    Pattern,
    Threshold { count: u64, window_ms: i64, lateness_ms: i64, group_by: GroupBy },
    Distinct { field: (String, FieldRef), more_than: u64, window_ms: i64, lateness_ms: i64, group_by: GroupBy },
    /// `ordered: false`: Sigma `temporal`, `at_least` different steps in any order.
    Sequence { steps: Vec<Cond>, within_ms: i64, lateness_ms: i64, group_by: GroupBy, ordered: bool, at_least: u32 },
    Absence { window_ms: i64, group_by: GroupBy, expected: Vec<String> },
    /// Counts in `[min, max]` per period.
    Aggregate { period_ms: i64, lateness_ms: i64, group_by: GroupBy, distinct: Option<(String, FieldRef)>, min: u64, max: u64 },
    Travel { max_speed_kmh: f64, within_ms: i64, min_distance_km: f64, ignore: Vec<Cidr>, group_by: GroupBy },
    FirstSeen { field: (String, FieldRef), learning_ms: i64, forget_ms: i64, group_by: GroupBy },
}

impl Stateful {
    pub(crate) fn kind(&self) -> RuleKind {
        match self {
            Stateful::Pattern => RuleKind::Pattern,
            Stateful::Threshold { .. } => RuleKind::Threshold,
            Stateful::Distinct { .. } => RuleKind::DistinctCount,
            Stateful::Sequence { ordered: true, .. } => RuleKind::Sequence,
            Stateful::Sequence { ordered: false, .. } => RuleKind::Temporal,
            Stateful::Absence { .. } => RuleKind::Absence,
            Stateful::Aggregate { .. } => RuleKind::Aggregate,
            Stateful::Travel { .. } => RuleKind::ImpossibleTravel,
            Stateful::FirstSeen { .. } => RuleKind::FirstSeen,
        }
    }

    /// The fields of the group key (none for pattern rules).
    pub(crate) fn group_by(&self) -> &[(String, FieldRef)] {
        match self {
            Stateful::Pattern => &[],
            Stateful::Threshold { group_by, .. }
            | Stateful::Distinct { group_by, .. }
            | Stateful::Sequence { group_by, .. }
            | Stateful::Absence { group_by, .. }
            | Stateful::Aggregate { group_by, .. }
            | Stateful::Travel { group_by, .. }
            | Stateful::FirstSeen { group_by, .. } => group_by,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub meta: RuleMeta,
    pub cond: Cond,
    pub state: Stateful,
    /// Evaluation pass: 0, or one more than the deepest rule it names with `fired:`.
    pub depth: usize,
}

/// Every pattern of the rule set, one [`RegexSet`] per field.
#[derive(Debug, Clone, Default)]
pub(crate) struct Patterns {
    /// (field, set, global bit of each pattern in the set)
    pub(crate) sets: Vec<(PatField, RegexSet, Vec<usize>)>,
    total: usize,
}

impl Patterns {
    /// Which patterns the event matches, as bits indexed like [`Cond::Pattern`].
    pub(crate) fn scan(&self, ev: &EnrichedEvent, hits: &mut Vec<bool>) {
        hits.clear();
        hits.resize(self.total, false);
        let mut mark = |set: &RegexSet, bits: &[usize], text: &str| {
            for local in set.matches(text).iter() {
                hits[bits[local]] = true;
            }
        };
        for (field, set, bits) in &self.sets {
            match field {
                PatField::Text => {
                    let mut text = String::with_capacity(ev.action.len() + ev.resource.len() + 1);
                    text.push_str(&ev.action);
                    text.push(' ');
                    text.push_str(&ev.resource);
                    mark(set, bits, &text);
                }
                PatField::Any => {
                    for f in PatField::SINGLE {
                        if let Some(v) = f.value(ev) {
                            mark(set, bits, v);
                        }
                    }
                    if let Some(ip) = &ev.ip_address {
                        mark(set, bits, ip);
                    }
                    if let Some(m) = &ev.metadata {
                        visit_strings(m, &mut |s| mark(set, bits, s));
                    }
                }
                single => {
                    if let Some(v) = single.value(ev) {
                        mark(set, bits, v);
                    }
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.total
    }
}

fn visit_strings(v: &serde_json::Value, f: &mut dyn FnMut(&str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| visit_strings(x, f)),
        serde_json::Value::Object(o) => o.values().for_each(|x| visit_strings(x, f)),
        _ => {}
    }
}

/// Collects patterns while conditions are compiled, then builds the sets.
#[derive(Default)]
struct PatternBuilder {
    by_field: Vec<(PatField, Vec<String>, Vec<usize>)>,
    total: usize,
}

impl PatternBuilder {
    fn add(&mut self, field: PatField, p: &PatternDef) -> usize {
        let flags = if p.case_sensitive { "" } else { "(?i)" };
        let source = match &p.kind {
            PatternKind::Regex(r) => format!("{flags}(?:{r})"),
            PatternKind::Contains(words) => {
                let alts: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
                format!("{flags}(?:{})", alts.join("|"))
            }
        };
        self.add_source(field, source)
    }

    fn add_source(&mut self, field: PatField, source: String) -> usize {
        let bit = self.total;
        self.total += 1;
        match self.by_field.iter_mut().find(|(f, _, _)| *f == field) {
            Some((_, sources, bits)) => {
                sources.push(source);
                bits.push(bit);
            }
            None => self.by_field.push((field, vec![source], vec![bit])),
        }
        bit
    }

    fn build(self) -> Result<Patterns, String> {
        let mut sets = Vec::with_capacity(self.by_field.len());
        for (field, sources, bits) in self.by_field {
            let set = RegexSetBuilder::new(&sources)
                .size_limit(REGEX_SIZE_LIMIT * sources.len().max(1))
                .build()
                .map_err(|e| format!("patterns on {field:?} do not compile together: {e}"))?;
            sets.push((field, set, bits));
        }
        Ok(Patterns { sets, total: self.total })
    }
}

/// A field test: a pattern bit when the field has a scan and the test is on its text, else a
/// [`Cond::Field`].
fn compile_field(f: &FieldCondDef, pb: &mut PatternBuilder) -> Result<Cond, String> {
    let flags = if f.case_sensitive { "" } else { "(?i)" };
    let pat = PatField::of(&f.field.field);
    let text_only = |v: &[serde_json::Value]| v.iter().all(|x| x.is_string());
    let test = match &f.test {
        FieldTestDef::Regex(r) => {
            if let Some(pf) = pat {
                return Ok(Cond::Pattern(pb.add_source(pf, format!("{flags}(?:{r})"))));
            }
            let re = RegexBuilder::new(r)
                .case_insensitive(!f.case_sensitive)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("field `{}`: invalid regex: {e}", f.field.name))?;
            FieldTest::Regex(re)
        }
        FieldTestDef::Equals(values) if pat.is_some() && text_only(values) => {
            let alts: Vec<String> = values.iter().filter_map(|v| v.as_str()).map(regex::escape).collect();
            let pf = pat.ok_or("unreachable")?;
            return Ok(Cond::Pattern(pb.add_source(pf, format!("{flags}^(?:{})$", alts.join("|")))));
        }
        FieldTestDef::Equals(values) => FieldTest::Equals {
            texts: values
                .iter()
                .filter_map(|v| v.as_str())
                .map(|t| if f.case_sensitive { t.to_string() } else { t.to_lowercase() })
                .collect(),
            numbers: values.iter().filter_map(|v| v.as_f64()).collect(),
            bools: values.iter().filter_map(|v| v.as_bool()).collect(),
            case_sensitive: f.case_sensitive,
        },
        FieldTestDef::Compare(op, v) => FieldTest::Compare(*op, *v),
        FieldTestDef::Exists(e) => FieldTest::Exists(*e),
        FieldTestDef::Null => FieldTest::Null,
        FieldTestDef::Cidr(nets) => FieldTest::Cidr(nets.clone()),
    };
    Ok(Cond::Field { field: f.field.field.clone(), test })
}

/// Rule ids → their index among the enabled rules (for `fired:`).
type RuleIndex = HashMap<String, usize>;

fn compile_match(m: &MatchDef, pb: &mut PatternBuilder, index: &RuleIndex) -> Result<Cond, String> {
    let mut all = Vec::new();
    let fields: [(PatField, &Option<PatternDef>); 11] = [
        (PatField::Text, &m.text),
        (PatField::Action, &m.action),
        (PatField::Resource, &m.resource),
        (PatField::ResourceId, &m.resource_id),
        (PatField::UserId, &m.user_id),
        (PatField::SessionId, &m.session_id),
        (PatField::Method, &m.method),
        (PatField::Endpoint, &m.endpoint),
        (PatField::UserAgent, &m.user_agent),
        (PatField::ErrorMessage, &m.error_message),
        (PatField::Any, &m.any),
    ];
    for (field, p) in fields {
        if let Some(p) = p {
            all.push(Cond::Pattern(pb.add(field, p)));
        }
    }
    if let Some(s) = m.success {
        all.push(Cond::Success(s));
    }
    if let Some(s) = &m.severity {
        all.push(Cond::SeverityIn(s.0.clone()));
    }
    if let Some(s) = m.min_severity {
        all.push(Cond::MinSeverity(s));
    }
    if let Some(c) = &m.classification {
        all.push(Cond::ClassificationIn(c.0.clone()));
    }
    if let Some(c) = m.min_classification {
        all.push(Cond::MinClassification(c));
    }
    if let Some(nets) = &m.ip_cidr {
        all.push(Cond::IpIn(nets.0.clone()));
    }
    if let Some(codes) = &m.status_code {
        all.push(Cond::StatusIn(codes.0.clone()));
    }
    for md in &m.metadata {
        all.push(Cond::Metadata { path: md.path.clone(), test: md.test.clone() });
    }
    for f in &m.fields {
        all.push(compile_field(f, pb)?);
    }
    if let Some(id) = &m.fired {
        let i = index.get(id).ok_or_else(|| format!("`fired: {id}` names no enabled rule"))?;
        all.push(Cond::Fired(*i));
    }
    for x in &m.all_of {
        all.push(compile_match(x, pb, index)?);
    }
    if !m.any_of.is_empty() {
        all.push(Cond::AnyOf(m.any_of.iter().map(|x| compile_match(x, pb, index)).collect::<Result<_, _>>()?));
    }
    if let Some(n) = &m.not {
        all.push(Cond::Not(Box::new(compile_match(n, pb, index)?)));
    }
    Ok(match all.len() {
        0 => Cond::True,
        1 => all.pop().unwrap_or(Cond::True),
        _ => Cond::All(all),
    })
}

/// Every rule index a condition names with `fired:`.
fn fired_refs(c: &Cond, out: &mut Vec<usize>) {
    match c {
        Cond::Fired(i) => out.push(*i),
        Cond::All(v) | Cond::AnyOf(v) => v.iter().for_each(|x| fired_refs(x, out)),
        Cond::Not(x) => fired_refs(x, out),
        _ => {}
    }
}

/// Deepest chain of `fired:` references a rule set may have.
pub const MAX_RULE_DEPTH: usize = 4;

/// Evaluation pass of each rule: rules naming others run after them. Cycles and chains deeper
/// than [`MAX_RULE_DEPTH`] are refused, naming the rules.
fn depths(refs: &[Vec<usize>], ids: &[&str]) -> Result<Vec<usize>, String> {
    fn visit(i: usize, refs: &[Vec<usize>], ids: &[&str], depth: &mut [Option<usize>], path: &mut Vec<usize>) -> Result<usize, String> {
        if let Some(d) = depth[i] {
            return Ok(d);
        }
        if path.contains(&i) {
            let names: Vec<&str> = path.iter().skip_while(|p| **p != i).map(|p| ids[*p]).chain([ids[i]]).collect();
            return Err(format!("rules name each other in a cycle: {}", names.join(" -> ")));
        }
        path.push(i);
        let mut d = 0;
        for &r in &refs[i] {
            d = d.max(visit(r, refs, ids, depth, path)? + 1);
        }
        path.pop();
        if d > MAX_RULE_DEPTH {
            return Err(format!("rule `{}` is more than {MAX_RULE_DEPTH} `fired:` references deep", ids[i]));
        }
        depth[i] = Some(d);
        Ok(d)
    }
    let mut depth = vec![None; refs.len()];
    (0..refs.len()).map(|i| visit(i, refs, ids, &mut depth, &mut Vec::new())).collect()
}

fn group_by(specs: &[super::model::FieldSpec]) -> GroupBy {
    specs.iter().map(|s| (s.name.clone(), s.field.clone())).collect()
}

/// A compiled rule set: what [`super::RulesEngine`] evaluates.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) patterns: Patterns,
    /// Rules that are written but `enabled: false`.
    pub disabled: Vec<String>,
    pub files: Vec<PathBuf>,
}

impl RuleSet {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn rules(&self) -> impl Iterator<Item = (&RuleMeta, RuleKind)> {
        self.rules.iter().map(|r| (&r.meta, r.state.kind()))
    }
}

/// The rule files of a directory (`*.yaml`, `*.yml`, not recursive), sorted by name; the Sigma
/// field mapping (`sigma-fields.yaml`) is not one.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let entries = std::fs::read_dir(dir).map_err(|e| RuleError {
        file: dir.to_path_buf(),
        line: None,
        column: None,
        message: format!("cannot read the rules directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            p.is_file() && yaml && !name.starts_with('.') && name != sigma::native::FIELDS_FILE
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The Sigma field mapping of a rules directory: the built-in one, with the directory's
/// `sigma-fields.yaml` laid over it when there is one.
pub fn sigma_fields(dir: &Path) -> Result<SigmaFields, RuleError> {
    let path = dir.join(sigma::native::FIELDS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => SigmaFields::with_file(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SigmaFields::builtin()),
        Err(e) => Err(RuleError { file: path, line: None, column: None, message: format!("cannot read: {e}") }),
    }
}

/// Read and compile every rule file of `dir` (native or Sigma).
pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleErrors> {
    let files = rule_files(dir).map_err(|e| RuleErrors(vec![e]))?;
    if files.is_empty() {
        return Err(RuleErrors(vec![RuleError {
            file: dir.to_path_buf(),
            line: None,
            column: None,
            message: "no rule files (*.yaml, *.yml) in this directory".into(),
        }]));
    }
    let fields = sigma_fields(dir).map_err(|e| RuleErrors(vec![e]))?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => sources.push((f, text)),
            Err(e) => errors.push(RuleError { file: f, line: None, column: None, message: format!("cannot read: {e}") }),
        }
    }
    if !errors.is_empty() {
        return Err(RuleErrors(errors));
    }
    compile_with(&sources, &fields)
}

/// Compile rule files given as (path, text), with the built-in Sigma field mapping.
pub fn compile_sources(sources: &[(PathBuf, String)]) -> Result<RuleSet, RuleErrors> {
    compile_with(sources, &SigmaFields::builtin())
}

/// A rule as written (or translated from Sigma), with the file and line it comes from.
pub type PlacedDef = (PathBuf, Option<usize>, RawRuleDef);

/// The native rules of files given as (path, text): native files as they are, Sigma files (told
/// apart by their keys) translated; with every problem found on the way (rules that could be
/// read are returned too, so the problems of all of them are reported together).
pub fn read_defs(sources: &[(PathBuf, String)], fields: &SigmaFields) -> (Vec<PlacedDef>, Vec<RuleError>) {
    let mut errors = Vec::new();
    let mut raws: Vec<PlacedDef> = Vec::new();
    let mut loaded: Vec<sigma::native::Loaded> = Vec::new();
    for (path, text) in sources {
        if sigma::looks_like_sigma(text) {
            match sigma::parse_documents(text) {
                Ok(docs) => loaded.extend(docs.into_iter().map(|doc| sigma::native::Loaded { file: path.clone(), doc })),
                Err(es) => errors.extend(es.into_iter().map(|e| RuleError {
                    file: path.clone(),
                    line: e.line,
                    column: e.column,
                    message: match &e.rule {
                        Some(r) => format!("rule {r:?}: {}", e.message),
                        None => e.message,
                    },
                })),
            }
            continue;
        }
        let file: RuleFile = match serde_norway::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                // Reading stops at the first problem; read rule by rule to report them all.
                match per_rule_errors(path, text) {
                    Some(each) if !each.is_empty() => errors.extend(each),
                    _ => errors.push(yaml_error(path, &e)),
                }
                continue;
            }
        };
        let id_lines = id_lines(text);
        for (i, raw) in file.rules.into_iter().enumerate() {
            raws.push((path.clone(), id_lines.get(i).copied(), raw));
        }
    }
    if !loaded.is_empty() {
        match sigma::native::to_native(&loaded, fields) {
            Ok(defs) => raws.extend(defs),
            Err(es) => errors.extend(es),
        }
    }
    (raws, errors)
}

/// [`compile_sources`] with a given Sigma field mapping.
pub fn compile_with(sources: &[(PathBuf, String)], fields: &SigmaFields) -> Result<RuleSet, RuleErrors> {
    let (raws, mut errors) = read_defs(sources, fields);
    let mut defs: Vec<(PathBuf, Option<usize>, RuleDef)> = Vec::new();
    let mut seen: HashMap<String, (PathBuf, Option<usize>)> = HashMap::new();
    for (path, line, raw) in raws {
        let def = match RuleDef::try_from(raw) {
            Ok(d) => d,
            Err(message) => {
                errors.push(RuleError { file: path, line, column: None, message });
                continue;
            }
        };
        let id = def.0.id.clone();
        if let Some((first_file, first_line)) = seen.get(&id) {
            errors.push(RuleError {
                file: path,
                line,
                column: None,
                message: format!(
                    "duplicate rule id `{id}` (first defined at {}{})",
                    first_file.display(),
                    first_line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            });
            continue;
        }
        seen.insert(id, (path.clone(), line));
        defs.push((path, line, def));
    }
    if !errors.is_empty() {
        // In file and line order, whichever step found them.
        errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        return Err(RuleErrors(errors));
    }

    let disabled: Vec<String> = defs.iter().filter(|(_, _, d)| !d.0.enabled).map(|(_, _, d)| d.0.id.clone()).collect();
    let enabled: Vec<(PathBuf, Option<usize>, RawRuleDef)> = defs.into_iter().filter(|(_, _, d)| d.0.enabled).map(|(p, l, d)| (p, l, d.0)).collect();
    let index: RuleIndex = enabled.iter().enumerate().map(|(i, (_, _, d))| (d.id.clone(), i)).collect();
    let mut pb = PatternBuilder::default();
    let mut rules = Vec::new();
    for (path, line, d) in &enabled {
        match compile_rule(d, path, &mut pb, &index) {
            Ok(r) => rules.push(r),
            Err(message) => errors.push(RuleError { file: path.clone(), line: *line, column: None, message: format!("rule `{}`: {message}", d.id) }),
        }
    }
    if !errors.is_empty() {
        return Err(RuleErrors(errors));
    }
    let refs: Vec<Vec<usize>> = rules
        .iter()
        .map(|r: &CompiledRule| {
            let mut out = Vec::new();
            fired_refs(&r.cond, &mut out);
            if let Stateful::Sequence { steps, .. } = &r.state {
                steps.iter().for_each(|c| fired_refs(c, &mut out));
            }
            out
        })
        .collect();
    let ids: Vec<&str> = enabled.iter().map(|(_, _, d)| d.id.as_str()).collect();
    // Absence and aggregate rules fire on the clock, with no event to pass on.
    for (i, r) in refs.iter().enumerate() {
        for &j in r {
            if matches!(rules[j].state, Stateful::Absence { .. } | Stateful::Aggregate { .. }) {
                let (path, line, _) = &enabled[i];
                errors.push(RuleError {
                    file: path.clone(),
                    line: *line,
                    column: None,
                    message: format!("rule `{}`: `fired: {}` names a rule that fires on the clock (absence, or a count judged per period), never on an event", ids[i], ids[j]),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(RuleErrors(errors));
    }
    let depth = depths(&refs, &ids).map_err(|message| {
        RuleErrors(vec![RuleError { file: enabled.first().map(|e| e.0.clone()).unwrap_or_default(), line: None, column: None, message }])
    })?;
    for (r, d) in rules.iter_mut().zip(depth) {
        r.depth = d;
    }
    let patterns = pb.build().map_err(|message| {
        RuleErrors(vec![RuleError {
            file: sources.first().map(|(p, _)| p.clone()).unwrap_or_default(),
            line: None,
            column: None,
            message,
        }])
    })?;
    Ok(RuleSet { rules, patterns, disabled, files: sources.iter().map(|(p, _)| p.clone()).collect() })
}

/// One enabled rule in the engine's form.
fn compile_rule(d: &RawRuleDef, path: &Path, pb: &mut PatternBuilder, index: &RuleIndex) -> Result<CompiledRule, String> {
    let cond = compile_match(&d.matcher, pb, index)?;
    let lateness = |l: Option<super::model::DurationDef>, w: i64| l.map(|l| l.ms()).unwrap_or(w);
    let state = if let Some(t) = &d.threshold {
        Stateful::Threshold {
            count: t.count,
            window_ms: t.window.ms(),
            lateness_ms: lateness(t.lateness, t.window.ms()),
            group_by: group_by(&t.group_by),
        }
    } else if let Some(x) = &d.distinct {
        Stateful::Distinct {
            field: (x.field.name.clone(), x.field.field.clone()),
            more_than: x.more_than,
            window_ms: x.window.ms(),
            lateness_ms: lateness(x.lateness, x.window.ms()),
            group_by: group_by(&x.group_by),
        }
    } else if let Some(s) = &d.sequence {
        Stateful::Sequence {
            steps: s.steps.iter().map(|m| compile_match(m, pb, index)).collect::<Result<_, _>>()?,
            within_ms: s.within.ms(),
            lateness_ms: lateness(s.lateness, s.within.ms()),
            group_by: group_by(&s.group_by),
            ordered: s.ordered,
            at_least: s.at_least.unwrap_or(s.steps.len() as u32),
        }
    } else if let Some(a) = &d.absence {
        Stateful::Absence { window_ms: a.window.ms(), group_by: group_by(&a.group_by), expected: a.expected.clone() }
    } else if let Some(a) = &d.aggregate {
        let (min, max) = a.count.range().ok_or("`aggregate.count`: no count satisfies these bounds")?;
        Stateful::Aggregate {
            period_ms: a.period.ms(),
            lateness_ms: a.lateness.map(|l| l.ms()).unwrap_or(DEFAULT_AGGREGATE_LATENESS_MS),
            group_by: group_by(&a.group_by),
            distinct: a.distinct.as_ref().map(|f| (f.name.clone(), f.field.clone())),
            min,
            max,
        }
    } else if let Some(t) = &d.travel {
        Stateful::Travel {
            max_speed_kmh: t.max_speed_kmh,
            within_ms: t.within.map(|w| w.ms()).unwrap_or(24 * 3_600_000),
            min_distance_km: t.min_distance_km.unwrap_or(100.0),
            ignore: t.ignore_networks.clone(),
            group_by: group_by(&t.group_by),
        }
    } else if let Some(f) = &d.first_seen {
        Stateful::FirstSeen {
            field: (f.field.name.clone(), f.field.field.clone()),
            learning_ms: f.learning.map(|l| l.ms()).unwrap_or(14 * 86_400_000),
            forget_ms: f.forget_after.map(|l| l.ms()).unwrap_or(90 * 86_400_000),
            group_by: group_by(&f.group_by),
        }
    } else {
        Stateful::Pattern
    };
    let block = d.block.as_ref().map(|b| BlockSpec {
        subject: match b.subject {
            BlockSubjectDef::Ip => BlockSubject::Ip,
            BlockSubjectDef::User => BlockSubject::User,
        },
        ttl_ms: b.ttl.ms(),
    });
    Ok(CompiledRule {
        meta: RuleMeta {
            id: Arc::from(d.id.as_str()),
            name: d.name.clone(),
            description: d.description.clone(),
            severity: d.severity,
            action: d.action,
            compliance: d.compliance.clone(),
            tags: d.tags.clone(),
            references: d.references.clone(),
            falsepositives: d.falsepositives.clone(),
            generate: d.generate,
            block,
            file: path.to_path_buf(),
        },
        cond,
        state,
        depth: 0,
    })
}

/// How long after its end an aggregate period still takes events, unless the rule says.
pub const DEFAULT_AGGREGATE_LATENESS_MS: i64 = 60_000;

/// A YAML or schema error with the line and column serde_norway reports.
fn yaml_error(path: &Path, e: &serde_norway::Error) -> RuleError {
    let mut message = e.to_string();
    let (line, column) = match e.location() {
        Some(loc) => {
            // The message repeats the position at its end; it is shown in front instead.
            if let Some(cut) = message.rfind(" at line ") {
                message.truncate(cut);
            }
            (Some(loc.line()), Some(loc.column()))
        }
        None => (None, None),
    };
    RuleError { file: path.to_path_buf(), line, column, message }
}

/// The problems of each rule of a file read on its own, for files laid out the usual way
/// (`rules:` at the left margin, one `- ` item per rule). `None` when the layout is not that.
fn per_rule_errors(path: &Path, text: &str) -> Option<Vec<RuleError>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == "rules:")?;
    let mut items: Vec<usize> = Vec::new();
    let mut indent: Option<usize> = None;
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let body = line.trim_start();
        let ind = line.len() - body.len();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if ind == 0 && !body.starts_with('-') {
            end = i; // another top-level key
            break;
        }
        if body.starts_with('-') && indent.is_none_or(|d| d == ind) {
            indent = Some(ind);
            items.push(i);
        }
    }
    let mut errors = Vec::new();
    for (k, &first) in items.iter().enumerate() {
        let last = items.get(k + 1).copied().unwrap_or(end);
        let chunk = lines[first..last].join("\n");
        if let Err(e) = serde_norway::from_str::<Vec<super::model::RawRuleDef>>(&chunk) {
            let mut err = yaml_error(path, &e);
            err.line = err.line.map(|l| l + first);
            if let Some(rest) = err.message.strip_prefix(".[0]").or_else(|| err.message.strip_prefix("[0]")) {
                err.message = format!("rules[{k}]{rest}");
            }
            errors.push(err);
        }
    }
    Some(errors)
}

/// Line (1-based) of each rule's `id:` key, in file order. Rules are the only mappings with an
/// `id` key, so the n-th one belongs to the n-th rule; used to place the errors found once a
/// rule is read whole (conflicting sections, duplicate ids).
fn id_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            let t = t.strip_prefix('-').map(str::trim_start).unwrap_or(t);
            t.starts_with("id:") || t.starts_with("\"id\":") || t.starts_with("'id':")
        })
        .map(|(i, _)| i + 1)
        .collect()
}
