//! The rule file format, exactly as operators write it (YAML). Every struct rejects unknown
//! fields, so a typo (`treshold:`) is an error with its line, never a silently ignored key.
//! [`super::compile`] turns these into the engine's compiled form.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::event::{Classification, Severity};
use crate::rule_match::RuleAction;

/// One rule file: `rules:` followed by one or several rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub rules: Vec<RawRuleDef>,
}

/// A rule as written whose fields were also checked together (see `TryFrom<RawRuleDef>`).
#[derive(Debug, Clone)]
pub struct RuleDef(pub RawRuleDef);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleDef {
    /// Stable identifier: letters, digits, `.`, `_`, `-`. Used in match ids, Redis keys, metrics.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    pub severity: Severity,
    pub action: RuleAction,
    /// Compliance tags (SOX, GDPR, HIPAA, PCI, …), copied into every match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compliance: Vec<String>,
    /// Other tags, copied into every match (`attack.t1110`: MITRE ATT&CK techniques and
    /// tactics, shown on alerts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Documentation: where the detection comes from, and what else can look like it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub falsepositives: Vec<String>,
    /// `false`: the rule's matches are not emitted; it only feeds rules that name it with
    /// `fired:` (a Sigma rule used by a correlation with `generate: false`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub generate: bool,
    /// Which events the rule looks at. For stateful kinds, the events that count.
    #[serde(default, rename = "match", skip_serializing_if = "MatchDef::is_empty")]
    pub matcher: MatchDef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<DistinctDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<SequenceDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absence: Option<AbsenceDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub travel: Option<TravelDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<FirstSeenDef>,
    /// Required with `action: BLOCK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockDef>,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// Conditions on one event; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchDef {
    /// `"<action> <resource>"`, the text the original rules engine matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<PatternDef>,
    /// Any text field of the event, including string values in metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub any: Option<PatternDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<OneOrMany<Severity>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<OneOrMany<Classification>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_classification: Option<Classification>,
    /// The client address lies in one of these networks (`10.0.0.0/8`, `2001:db8::/32`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_cidr: Option<OneOrMany<super::fields::Cidr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<OneOrMany<i32>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<MetadataDef>,
    /// Tests on any field by name (`country_code`, `status_code`, `asn`, `metadata.<path>`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldCondDef>,
    /// The event made rule `<id>` fire (that rule is evaluated first): rules built on rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired: Option<String>,
    /// Every one of these blocks holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<MatchDef>,
    /// At least one of these blocks holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<MatchDef>,
    /// This block does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<MatchDef>>,
}

/// A regular expression or substring(s); case-insensitive unless `case_sensitive: true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPatternDef")]
pub struct PatternDef {
    pub kind: PatternKind,
    pub case_sensitive: bool,
}

#[derive(Debug, Clone)]
pub enum PatternKind {
    Regex(String),
    Contains(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPatternDef {
    pub regex: Option<RegexText>,
    pub contains: Option<OneOrMany<String>>,
    pub case_sensitive: bool,
}

impl TryFrom<RawPatternDef> for PatternDef {
    type Error = String;
    fn try_from(raw: RawPatternDef) -> Result<Self, String> {
        let kind = match (raw.regex, raw.contains) {
            (Some(r), None) => PatternKind::Regex(r.0),
            (None, Some(c)) if !c.0.is_empty() && c.0.iter().all(|s| !s.is_empty()) => PatternKind::Contains(c.0),
            (None, Some(_)) => return Err("`contains` needs at least one non-empty string".into()),
            (Some(_), Some(_)) => return Err("give either `regex` or `contains`, not both".into()),
            (None, None) => return Err("a pattern needs `regex` or `contains`".into()),
        };
        Ok(PatternDef { kind, case_sensitive: raw.case_sensitive })
    }
}

impl Serialize for PatternDef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(None)?;
        match &self.kind {
            PatternKind::Regex(r) => m.serialize_entry("regex", r)?,
            PatternKind::Contains(c) => m.serialize_entry("contains", c)?,
        }
        if self.case_sensitive {
            m.serialize_entry("case_sensitive", &true)?;
        }
        m.end()
    }
}

/// A regular expression, checked when read so the error points at it.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RegexText(pub String);

impl<'de> Deserialize<'de> for RegexText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        match regex::RegexBuilder::new(&s).size_limit(REGEX_SIZE_LIMIT).build() {
            Ok(_) => Ok(RegexText(s)),
            // regex's message spans several lines (pattern, caret, reason): keep it on one.
            Err(e) => Err(de::Error::custom(format!(
                "invalid regex {s:?}: {}",
                e.to_string().lines().last().unwrap_or("").trim().trim_start_matches("error: ")
            ))),
        }
    }
}

/// Compiled size limit of one pattern; a rule set is refused rather than letting a pathological
/// pattern eat the stage's memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A condition on a metadata value addressed by a dotted path (`export.format`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawMetadataDef")]
pub struct MetadataDef {
    pub path: Vec<String>,
    pub test: MetadataTest,
}

#[derive(Debug, Clone)]
pub enum MetadataTest {
    Equals(serde_json::Value),
    Contains(String),
    Exists(bool),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetadataDef {
    pub path: String,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub exists: Option<bool>,
}

impl Serialize for MetadataDef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(2))?;
        m.serialize_entry("path", &self.path.join("."))?;
        match &self.test {
            MetadataTest::Equals(v) => m.serialize_entry("equals", v)?,
            MetadataTest::Contains(c) => m.serialize_entry("contains", c)?,
            MetadataTest::Exists(e) => m.serialize_entry("exists", e)?,
        }
        m.end()
    }
}

impl TryFrom<RawMetadataDef> for MetadataDef {
    type Error = String;
    fn try_from(raw: RawMetadataDef) -> Result<Self, String> {
        let path = super::fields::parse_path(&raw.path)?;
        let test = match (raw.equals, raw.contains, raw.exists) {
            (Some(v), None, None) => MetadataTest::Equals(v),
            (None, Some(c), None) => MetadataTest::Contains(c),
            (None, None, Some(e)) => MetadataTest::Exists(e),
            _ => return Err(format!("metadata `{}`: give exactly one of `equals`, `contains`, `exists`", raw.path)),
        };
        Ok(MetadataDef { path, test })
    }
}

/// A field name in `group_by` / `distinct.field`, checked when read.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub field: super::fields::FieldRef,
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let field = super::fields::FieldRef::parse(&name).map_err(de::Error::custom)?;
        Ok(FieldSpec { name: name.trim().to_string(), field })
    }
}

impl Serialize for FieldSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl Serialize for super::fields::Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for super::fields::Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        super::fields::Cidr::parse(&s).map_err(de::Error::custom)
    }
}

/// A test on one field, named like `group_by` fields: `{field: status_code, gte: 500}`,
/// `{field: country_code, equals: [KP, IR]}`, `{field: metadata.ticket, exists: false}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawFieldCondDef")]
pub struct FieldCondDef {
    pub field: FieldSpec,
    pub test: FieldTestDef,
    /// Text comparisons (`regex`, `equals` of strings) are case-insensitive unless this is set.
    pub case_sensitive: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldTestDef {
    /// The value's text contains a match (anchor with `^…$` for a whole-value match).
    Regex(String),
    /// Equal to one of these: strings as text, numbers numerically (also a numeric text),
    /// booleans as `true`/`false`.
    Equals(Vec<serde_json::Value>),
    /// A number (or a numeric text) compared with the bound.
    Compare(CmpOp, f64),
    /// The field is present (`true`) or absent (`false`), whatever its value.
    Exists(bool),
    /// The field is absent or null.
    Null,
    /// An address in one of these networks.
    Cidr(Vec<super::fields::Cidr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    pub fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            CmpOp::Gt => value > bound,
            CmpOp::Gte => value >= bound,
            CmpOp::Lt => value < bound,
            CmpOp::Lte => value <= bound,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => "gt",
            CmpOp::Gte => "gte",
            CmpOp::Lt => "lt",
            CmpOp::Lte => "lte",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFieldCondDef {
    pub field: Option<FieldSpec>,
    pub regex: Option<RegexText>,
    pub equals: Option<OneOrMany<serde_json::Value>>,
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
    pub exists: Option<bool>,
    pub null: Option<bool>,
    pub cidr: Option<OneOrMany<super::fields::Cidr>>,
    pub case_sensitive: bool,
}

impl TryFrom<RawFieldCondDef> for FieldCondDef {
    type Error = String;
    fn try_from(raw: RawFieldCondDef) -> Result<Self, String> {
        let field = raw.field.ok_or("a field test needs `field`")?;
        let mut tests = Vec::new();
        if let Some(r) = raw.regex {
            tests.push(FieldTestDef::Regex(r.0));
        }
        if let Some(e) = raw.equals {
            if e.0.is_empty() || e.0.iter().any(|v| !(v.is_string() || v.is_number() || v.is_boolean())) {
                return Err(format!("field `{}`: `equals` takes strings, numbers or booleans", field.name));
            }
            tests.push(FieldTestDef::Equals(e.0));
        }
        for (op, v) in [(CmpOp::Gt, raw.gt), (CmpOp::Gte, raw.gte), (CmpOp::Lt, raw.lt), (CmpOp::Lte, raw.lte)] {
            if let Some(v) = v {
                tests.push(FieldTestDef::Compare(op, v));
            }
        }
        if let Some(e) = raw.exists {
            tests.push(FieldTestDef::Exists(e));
        }
        match raw.null {
            Some(true) => tests.push(FieldTestDef::Null),
            Some(false) => return Err(format!("field `{}`: `null: false` is `exists: true`", field.name)),
            None => {}
        }
        if let Some(c) = raw.cidr {
            if !matches!(field.field, super::fields::FieldRef::IpAddress) {
                return Err(format!("field `{}`: `cidr` applies to ip_address only", field.name));
            }
            tests.push(FieldTestDef::Cidr(c.0));
        }
        if tests.len() != 1 {
            return Err(format!(
                "field `{}`: give exactly one of `regex`, `equals`, `gt`, `gte`, `lt`, `lte`, `exists`, `null`, `cidr`",
                field.name
            ));
        }
        let test = tests.remove(0);
        Ok(FieldCondDef { field, test, case_sensitive: raw.case_sensitive })
    }
}

impl Serialize for FieldCondDef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(None)?;
        m.serialize_entry("field", &self.field.name)?;
        match &self.test {
            FieldTestDef::Regex(r) => m.serialize_entry("regex", r)?,
            FieldTestDef::Equals(v) if v.len() == 1 => m.serialize_entry("equals", &v[0])?,
            FieldTestDef::Equals(v) => m.serialize_entry("equals", v)?,
            FieldTestDef::Compare(op, v) => m.serialize_entry(op.as_str(), v)?,
            FieldTestDef::Exists(e) => m.serialize_entry("exists", e)?,
            FieldTestDef::Null => m.serialize_entry("null", &true)?,
            FieldTestDef::Cidr(c) => m.serialize_entry("cidr", c)?,
        }
        if self.case_sensitive {
            m.serialize_entry("case_sensitive", &true)?;
        }
        m.end()
    }
}

/// N matching events with the same group key within `window`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdDef {
    pub count: u64,
    pub window: DurationDef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<FieldSpec>,
    /// How late (behind the newest event of its group) an event may arrive and still count.
    /// Default: the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<DurationDef>,
}

/// More than `more_than` distinct values of `field` with the same group key within `window`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistinctDef {
    pub field: FieldSpec,
    pub more_than: u64,
    pub window: DurationDef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<FieldSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<DurationDef>,
}

/// Steps in order (or, with `ordered: false`, in any order), same group key, first to last
/// within `within`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceDef {
    pub within: DurationDef,
    pub group_by: Vec<FieldSpec>,
    pub steps: Vec<MatchDef>,
    /// `false`: the steps may happen in any order (Sigma `temporal`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ordered: bool,
    /// Unordered only: this many different steps suffice (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<DurationDef>,
}

/// A group that has sent matching events goes quiet for `window`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceDef {
    pub window: DurationDef,
    pub group_by: Vec<FieldSpec>,
    /// Group values watched from the stage's start even if they never sent anything
    /// (only with a single `group_by` field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected: Vec<String>,
}

/// Matching events (or distinct values of `distinct`) per group in each fixed `period`
/// (aligned to the epoch, UTC), judged against `count` once the period is over: for conditions
/// that only an ended period can decide (`lt`, `lte`, `eq`, a range).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDef {
    pub period: DurationDef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<FieldSpec>,
    /// Count distinct values of this field instead of events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<FieldSpec>,
    pub count: CountDef,
    /// How long after its end a period still takes events (default 1 minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<DurationDef>,
}

/// Bounds on a count, all of which must hold: `{lte: 5}`, `{eq: 3}`, `{gte: 10, lte: 20}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountDef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gt: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gte: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lte: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eq: Option<u64>,
}

impl CountDef {
    /// The inclusive range of counts the bounds admit, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        let mut lo = 0u64;
        let mut hi = u64::MAX;
        if let Some(v) = self.gt {
            lo = lo.max(v.checked_add(1)?);
        }
        if let Some(v) = self.gte {
            lo = lo.max(v);
        }
        if let Some(v) = self.lt {
            hi = hi.min(v.checked_sub(1)?);
        }
        if let Some(v) = self.lte {
            hi = hi.min(v);
        }
        if let Some(v) = self.eq {
            lo = lo.max(v);
            hi = hi.min(v);
        }
        (lo <= hi).then_some((lo, hi))
    }
    fn is_empty(&self) -> bool {
        *self == CountDef::default()
    }
}

/// Two successful logins of one group (a user) from places whose distance over the time
/// between them needs a speed above `max_speed_kmh`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TravelDef {
    pub max_speed_kmh: f64,
    pub group_by: Vec<FieldSpec>,
    /// Logins further apart in time are not compared (default 24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<DurationDef>,
    /// Places nearer than this are never impossible: geolocation of an address is only so
    /// precise (default 100 km).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_distance_km: Option<f64>,
    /// Addresses in these networks (VPN and corporate egress) are not located.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_networks: Vec<super::fields::Cidr>,
}

/// The first time a group (a user) shows a value of `field` (a country, an ASN) it has not
/// shown before, once it has `learning` of history.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirstSeenDef {
    pub field: FieldSpec,
    pub group_by: Vec<FieldSpec>,
    /// How much history a group needs before a new value is reported (default 14 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<DurationDef>,
    /// A value not seen for this long is forgotten (new again), and so is a silent group
    /// (default 90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_after: Option<DurationDef>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDef {
    pub subject: BlockSubjectDef,
    pub ttl: DurationDef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockSubjectDef {
    Ip,
    User,
}

/// A duration: `500ms`, `60s`, `10m`, `1h`, `1d`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationDef(pub u64 /* milliseconds */);

impl DurationDef {
    pub fn ms(self) -> i64 {
        self.0 as i64
    }
}

/// Written back in the largest unit that says it exactly (`90m`, `1d`, `1500ms`).
impl fmt::Display for DurationDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, n) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
            if ms != 0 && ms.is_multiple_of(n) {
                return write!(f, "{}{unit}", ms / n);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for DurationDef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parses `500ms`, `60s`, `10m`, `1h`, `1d` (or a bare number of seconds) into milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?} (examples: 500ms, 60s, 10m, 1h, 1d)"))?;
    let factor = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit {other:?} in {text:?} (use ms, s, m, h or d)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("duration {text:?} is too large"))
}

impl<'de> Deserialize<'de> for DurationDef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 60s, 10m, 1h (or a number of seconds)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationDef, E> {
                v.checked_mul(1000).map(DurationDef).ok_or_else(|| E::custom("duration too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationDef, E> {
                u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative")).and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationDef, E> {
                parse_duration(v).map(DurationDef).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A single value or a list of them: `severity: HIGH` or `severity: [HIGH, CRITICAL]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(OneOrMany(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|x| OneOrMany(vec![x]))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|x| OneOrMany(vec![x]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|x| OneOrMany(vec![x]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|x| OneOrMany(vec![x]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|x| OneOrMany(vec![x]))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl MatchDef {
    /// True when the block sets no condition at all (it then matches every event).
    pub fn is_empty(&self) -> bool {
        let MatchDef {
            text,
            action,
            resource,
            resource_id,
            user_id,
            session_id,
            method,
            endpoint,
            user_agent,
            error_message,
            any,
            success,
            severity,
            min_severity,
            classification,
            min_classification,
            ip_cidr,
            status_code,
            metadata,
            fields,
            fired,
            all_of,
            any_of,
            not,
        } = self;
        [text, action, resource, resource_id, user_id, session_id, method, endpoint, user_agent, error_message, any]
            .iter()
            .all(|p| p.is_none())
            && success.is_none()
            && severity.is_none()
            && min_severity.is_none()
            && classification.is_none()
            && min_classification.is_none()
            && ip_cidr.is_none()
            && status_code.is_none()
            && metadata.is_empty()
            && fields.is_empty()
            && fired.is_none()
            && all_of.is_empty()
            && any_of.is_empty()
            && not.is_none()
    }

    /// Every `fired:` rule id in this block and the blocks inside it.
    pub fn fired_ids(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.fired.iter().map(String::as_str).collect();
        for m in self.all_of.iter().chain(&self.any_of).chain(self.not.as_deref()) {
            out.extend(m.fired_ids());
        }
        out
    }
}

/// Longest accepted rule id: it ends up in Redis keys and metric labels.
pub const MAX_RULE_ID_CHARS: usize = 64;
/// Most steps a sequence may have.
pub const MAX_SEQUENCE_STEPS: usize = 8;

impl TryFrom<RawRuleDef> for RuleDef {
    type Error = String;
    fn try_from(raw: RawRuleDef) -> Result<Self, String> {
        let id = raw.id.as_str();
        if id.is_empty()
            || id.len() > MAX_RULE_ID_CHARS
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "rule id {id:?} must be 1..={MAX_RULE_ID_CHARS} letters, digits, `-`, `_` or `.`"
            ));
        }
        let fail = |msg: String| Err(format!("rule `{id}`: {msg}"));
        if raw.name.trim().is_empty() {
            return fail("`name` is empty".into());
        }
        let kinds = [
            raw.threshold.is_some(),
            raw.distinct.is_some(),
            raw.sequence.is_some(),
            raw.absence.is_some(),
            raw.aggregate.is_some(),
            raw.travel.is_some(),
            raw.first_seen.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if kinds > 1 {
            return fail("give at most one of `threshold`, `distinct`, `sequence`, `absence`, `aggregate`, `travel`, `first_seen`".into());
        }
        if kinds == 0 && raw.matcher.is_empty() {
            return fail("a pattern rule needs at least one condition under `match`".into());
        }
        let nonzero = |what: &str, d: DurationDef| -> Result<(), String> {
            if d.0 == 0 {
                Err(format!("rule `{id}`: `{what}` must be longer than zero"))
            } else {
                Ok(())
            }
        };
        if let Some(t) = &raw.threshold {
            if t.count == 0 {
                return fail("`threshold.count` must be at least 1".into());
            }
            nonzero("threshold.window", t.window)?;
        }
        if let Some(d) = &raw.distinct {
            nonzero("distinct.window", d.window)?;
        }
        if let Some(s) = &raw.sequence {
            nonzero("sequence.within", s.within)?;
            if s.steps.len() < 2 || s.steps.len() > MAX_SEQUENCE_STEPS {
                return fail(format!("`sequence.steps` needs 2..={MAX_SEQUENCE_STEPS} steps"));
            }
            if s.group_by.is_empty() {
                return fail("`sequence.group_by` needs at least one field".into());
            }
            if let Some(i) = s.steps.iter().position(MatchDef::is_empty) {
                return fail(format!("sequence step {} has no condition", i + 1));
            }
        }
        if let Some(s) = &raw.sequence {
            match s.at_least {
                Some(_) if s.ordered => return fail("`sequence.at_least` needs `ordered: false`".into()),
                Some(n) if n < 1 || n as usize > s.steps.len() => {
                    return fail(format!("`sequence.at_least` must be 1..={}", s.steps.len()))
                }
                _ => {}
            }
        }
        if let Some(a) = &raw.aggregate {
            nonzero("aggregate.period", a.period)?;
            if a.count.is_empty() {
                return fail("`aggregate.count` needs a bound: gt, gte, lt, lte or eq".into());
            }
            if a.count.range().is_none() {
                return fail("`aggregate.count`: no count satisfies these bounds".into());
            }
        }
        if let Some(t) = &raw.travel {
            if !(t.max_speed_kmh.is_finite() && t.max_speed_kmh > 0.0) {
                return fail("`travel.max_speed_kmh` must be a positive number".into());
            }
            if t.group_by.is_empty() {
                return fail("`travel.group_by` needs at least one field (the user)".into());
            }
            if t.min_distance_km.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
                return fail("`travel.min_distance_km` must be a number, 0 or more".into());
            }
            if let Some(w) = t.within {
                nonzero("travel.within", w)?;
            }
        }
        if let Some(f) = &raw.first_seen {
            if f.group_by.is_empty() {
                return fail("`first_seen.group_by` needs at least one field (the user)".into());
            }
            if let Some(w) = f.forget_after {
                nonzero("first_seen.forget_after", w)?;
                if f.learning.is_some_and(|l| l.0 >= w.0) {
                    return fail("`first_seen.learning` must be shorter than `forget_after`".into());
                }
            }
        }
        if raw.matcher.fired_ids().contains(&raw.id.as_str()) {
            return fail("a rule cannot be `fired:` by itself".into());
        }
        if let Some(a) = &raw.absence {
            nonzero("absence.window", a.window)?;
            if a.group_by.is_empty() {
                return fail("`absence.group_by` needs at least one field".into());
            }
            if !a.expected.is_empty() && a.group_by.len() != 1 {
                return fail("`absence.expected` needs exactly one `group_by` field".into());
            }
        }
        match (raw.action, &raw.block) {
            (RuleAction::Block, None) => return fail("action BLOCK needs a `block:` section (subject, ttl)".into()),
            (RuleAction::Block, Some(b)) => nonzero("block.ttl", b.ttl)?,
            (_, Some(_)) => return fail("`block:` is only meaningful with action BLOCK".into()),
            _ => {}
        }
        if raw.absence.is_some() && raw.action == RuleAction::Block {
            return fail("an absence rule cannot BLOCK (there is no event to take a subject from)".into());
        }
        Ok(RuleDef(raw))
    }
}
