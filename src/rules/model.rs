//! The rule file format, exactly as operators write it (YAML). Every struct rejects unknown
//! fields, so a typo (`treshold:`) is an error with its line, never a silently ignored key.
//! [`super::compile`] turns these into the engine's compiled form.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::event::{Classification, Severity};
use crate::rule_match::RuleAction;

/// One rule file: `rules:` followed by one or several rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub rules: Vec<RawRuleDef>,
}

/// A rule as written whose fields were also checked together (see `TryFrom<RawRuleDef>`).
#[derive(Debug, Clone)]
pub struct RuleDef(pub RawRuleDef);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleDef {
    /// Stable identifier: letters, digits, `.`, `_`, `-`. Used in match ids, Redis keys, metrics.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub severity: Severity,
    pub action: RuleAction,
    /// Compliance tags (SOX, GDPR, HIPAA, PCI, …), copied into every match.
    #[serde(default)]
    pub compliance: Vec<String>,
    /// Which events the rule looks at. For stateful kinds, the events that count.
    #[serde(default, rename = "match")]
    pub matcher: MatchDef,
    #[serde(default)]
    pub threshold: Option<ThresholdDef>,
    #[serde(default)]
    pub distinct: Option<DistinctDef>,
    #[serde(default)]
    pub sequence: Option<SequenceDef>,
    #[serde(default)]
    pub absence: Option<AbsenceDef>,
    /// Required with `action: BLOCK`.
    #[serde(default)]
    pub block: Option<BlockDef>,
}

fn yes() -> bool {
    true
}

/// Conditions on one event; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchDef {
    /// `"<action> <resource>"`, the text the original rules engine matched.
    pub text: Option<PatternDef>,
    pub action: Option<PatternDef>,
    pub resource: Option<PatternDef>,
    pub resource_id: Option<PatternDef>,
    pub user_id: Option<PatternDef>,
    pub session_id: Option<PatternDef>,
    pub method: Option<PatternDef>,
    pub endpoint: Option<PatternDef>,
    pub user_agent: Option<PatternDef>,
    pub error_message: Option<PatternDef>,
    /// Any text field of the event, including string values in metadata.
    pub any: Option<PatternDef>,
    pub success: Option<bool>,
    pub severity: Option<OneOrMany<Severity>>,
    pub min_severity: Option<Severity>,
    pub classification: Option<OneOrMany<Classification>>,
    pub min_classification: Option<Classification>,
    /// The client address lies in one of these networks (`10.0.0.0/8`, `2001:db8::/32`).
    pub ip_cidr: Option<OneOrMany<super::fields::Cidr>>,
    pub status_code: Option<OneOrMany<i32>>,
    pub metadata: Vec<MetadataDef>,
    /// At least one of these blocks holds.
    pub any_of: Vec<MatchDef>,
    /// This block does not hold.
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

/// A regular expression, checked when read so the error points at it.
#[derive(Debug, Clone)]
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

impl<'de> Deserialize<'de> for super::fields::Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        super::fields::Cidr::parse(&s).map_err(de::Error::custom)
    }
}

/// N matching events with the same group key within `window`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdDef {
    pub count: u64,
    pub window: DurationDef,
    #[serde(default)]
    pub group_by: Vec<FieldSpec>,
    /// How late (behind the newest event of its group) an event may arrive and still count.
    /// Default: the window.
    #[serde(default)]
    pub lateness: Option<DurationDef>,
}

/// More than `more_than` distinct values of `field` with the same group key within `window`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistinctDef {
    pub field: FieldSpec,
    pub more_than: u64,
    pub window: DurationDef,
    #[serde(default)]
    pub group_by: Vec<FieldSpec>,
    #[serde(default)]
    pub lateness: Option<DurationDef>,
}

/// Steps in order, same group key, first to last within `within`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceDef {
    pub within: DurationDef,
    pub group_by: Vec<FieldSpec>,
    pub steps: Vec<MatchDef>,
    #[serde(default)]
    pub lateness: Option<DurationDef>,
}

/// A group that has sent matching events goes quiet for `window`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceDef {
    pub window: DurationDef,
    pub group_by: Vec<FieldSpec>,
    /// Group values watched from the stage's start even if they never sent anything
    /// (only with a single `group_by` field).
    #[serde(default)]
    pub expected: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDef {
    pub subject: BlockSubjectDef,
    pub ttl: DurationDef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
            && any_of.is_empty()
            && not.is_none()
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
        let kinds = [raw.threshold.is_some(), raw.distinct.is_some(), raw.sequence.is_some(), raw.absence.is_some()]
            .iter()
            .filter(|k| **k)
            .count();
        if kinds > 1 {
            return fail("give at most one of `threshold`, `distinct`, `sequence`, `absence`".into());
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
