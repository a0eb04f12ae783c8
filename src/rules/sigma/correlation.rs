//! Sigma correlation documents (spec v2.0.2): `event_count`, `value_count`, `temporal` and
//! `temporal_ordered` over other rules, grouped by fields within a time span.
//!
//! Beyond the spec text we accept what the engine can honour unambiguously: a two-bound
//! condition (`{gt: 100, lte: 200}`, which the spec suggests for ranges), the earlier draft's
//! inclusive `range: "10..20"`, and `generate` both inside `correlation` (where pySigma reads it)
//! and at the top level (where the spec puts it). The v2.1 metric types and pySigma's string
//! conditions for temporal types are refused by name.

use std::collections::BTreeMap;

use super::model::{is_uuid, text_list, Ctx, Meta};
use super::yaml::{Node, Val};

#[derive(Debug, Clone, PartialEq)]
pub struct SigmaCorrelation {
    pub meta: Meta,
    pub kind: CorrelationKind,
    /// Referenced rules or correlations, by `id` or `name`, in the order written (the order
    /// `temporal_ordered` requires).
    pub rules: Vec<String>,
    /// Empty: one group for all events.
    pub group_by: Vec<String>,
    pub timespan_ms: u64,
    /// As written, e.g. `10m`.
    pub timespan: String,
    /// `None` only for temporal types, meaning every referenced rule must match.
    pub condition: Option<CorrelationCondition>,
    /// `correlation.generate` or top-level `generate`; `None` if neither is given (the spec's
    /// default is false: the referenced rules raise no alerts of their own).
    pub generate: Option<bool>,
    /// alias → (rule name → field in that rule's events).
    pub aliases: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrelationKind {
    /// Matching events per group.
    EventCount,
    /// Distinct values of `condition.field` per group.
    ValueCount,
    /// Distinct referenced rules that matched per group, in any order.
    Temporal,
    /// Like `Temporal`, but in the order of `rules`.
    TemporalOrdered,
}

/// What the counted quantity must satisfy: every bound holds (they are ANDed).
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationCondition {
    /// The counted field (`value_count` only).
    pub field: Option<String>,
    /// One bound, or a lower and an upper bound.
    pub bounds: Vec<(CondOp, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondOp {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
}

/// Read the `correlation` map of a document (`generate` is the top-level key, if any).
pub(crate) fn correlation(
    meta: Meta,
    node: &Node,
    top_generate: Option<&Node>,
    ctx: &mut Ctx,
) -> Option<SigmaCorrelation> {
    let before = ctx.errors.len();
    let Val::Map(entries) = &node.val else {
        ctx.err(node.pos, format!("`correlation` must be a map, found {}", node.kind()));
        return None;
    };
    let known = ["type", "rules", "group-by", "timespan", "condition", "generate", "aliases"];
    for (k, _) in entries.iter().filter(|(k, _)| !known.contains(&k.as_str().unwrap_or_default())) {
        ctx.err(k.pos, format!("unknown key `{}` in `correlation`", k.key_text()));
    }
    let (pos, get) = (node.pos, |key: &str| node.get(key));
    let kind = match get("type") {
        Some(t) => correlation_kind(t, ctx),
        None => {
            ctx.err(pos, "`correlation.type` is missing (event_count, value_count, temporal or temporal_ordered)");
            None
        }
    };
    // A reference that is a UUID is an id, compared lowercase (see `Meta::id`).
    let rules: Vec<String> = get("rules").map(|r| text_list(r, "correlation.rules", true, ctx)).unwrap_or_default();
    let rules: Vec<String> = rules.into_iter().map(|r| if is_uuid(&r) { r.to_lowercase() } else { r }).collect();
    if rules.is_empty() {
        ctx.err(pos, "`correlation.rules` is missing or empty: name the rules (by id or name) to correlate");
    }
    let group_by = get("group-by").map(|g| text_list(g, "correlation.group-by", true, ctx)).unwrap_or_default();
    let timespan = match get("timespan") {
        Some(t) => timespan_of(t, ctx),
        None => {
            ctx.err(pos, "`correlation.timespan` is missing (e.g. `10m`)");
            None
        }
    };
    let condition = match (get("condition"), kind) {
        (Some(c), Some(k)) => condition_of(c, k, ctx),
        (None, Some(CorrelationKind::EventCount | CorrelationKind::ValueCount)) => {
            ctx.err(pos, "`correlation.condition` is missing (e.g. `gte: 10`)");
            None
        }
        _ => None,
    };
    let generate = generate_of(get("generate"), top_generate, ctx);
    let aliases = get("aliases").map(|a| aliases_of(a, &rules, ctx)).unwrap_or_default();
    let ((timespan, timespan_ms), kind) = (timespan?, kind?);
    (ctx.errors.len() == before).then_some(SigmaCorrelation {
        meta,
        kind,
        rules,
        group_by,
        timespan_ms,
        timespan,
        condition,
        generate,
        aliases,
    })
}

fn correlation_kind(v: &Node, ctx: &mut Ctx) -> Option<CorrelationKind> {
    let t = v.as_str().unwrap_or_default();
    let kind = match t {
        "event_count" => CorrelationKind::EventCount,
        "value_count" => CorrelationKind::ValueCount,
        "temporal" => CorrelationKind::Temporal,
        "temporal_ordered" => CorrelationKind::TemporalOrdered,
        _ => {
            let supported = "event_count, value_count, temporal or temporal_ordered";
            ctx.err(
                v.pos,
                match t {
                    "value_sum" | "value_avg" | "value_percentile" | "value_median" => {
                        format!("correlation type `{t}` is not supported (use {supported})")
                    }
                    _ => format!("unknown correlation type `{}` (use {supported})", v.key_text()),
                },
            );
            return None;
        }
    };
    Some(kind)
}

/// `<n><unit>`, unit s, m, h, d or w; n > 0.
fn timespan_of(v: &Node, ctx: &mut Ctx) -> Option<(String, u64)> {
    let text = match &v.val {
        Val::Str(t) => t.as_str(),
        Val::Int(_) | Val::Float(_) => {
            ctx.err(v.pos, "`timespan` needs a unit: s, m, h, d or w (e.g. `10m`)");
            return None;
        }
        _ => "",
    };
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let unit_ms: Option<u64> = match unit {
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        "w" => Some(604_800_000),
        _ => None,
    };
    let why = match (digits.parse::<u64>(), unit_ms) {
        (Ok(n), Some(ms)) if n > 0 => match n.checked_mul(ms) {
            Some(total) => return Some((text.to_string(), total)),
            None => "it is too long".to_string(),
        },
        (Ok(0), Some(_)) => "it must be greater than zero".to_string(),
        _ if matches!(unit, "M" | "y") => "months and years have no fixed length; use days (d)".to_string(),
        _ => "write one number and one unit (s, m, h, d, w), e.g. `90m` for 1h30m".to_string(),
    };
    ctx.err(v.pos, format!("invalid timespan `{}`: {why}", v.key_text()));
    None
}

fn condition_of(c: &Node, kind: CorrelationKind, ctx: &mut Ctx) -> Option<CorrelationCondition> {
    let Val::Map(entries) = &c.val else {
        ctx.err(
            c.pos,
            match c.val {
                Val::Str(_) => {
                    "`correlation.condition`: boolean rule expressions (pySigma's extended temporal conditions) \
                            are not supported; use a count such as `gte: 2`"
                        .to_string()
                }
                _ => format!("`correlation.condition` must be a map such as `gte: 10`, found {}", c.kind()),
            },
        );
        return None;
    };
    let (mut field, mut bounds, mut range) = (None, Vec::new(), None);
    for (k, v) in entries {
        let key = k.as_str().unwrap_or_default();
        let op = match key {
            "gt" => CondOp::Gt,
            "gte" => CondOp::Gte,
            "lt" => CondOp::Lt,
            "lte" => CondOp::Lte,
            "eq" => CondOp::Eq,
            "field" if v.as_str().is_some_and(|f| !f.is_empty()) => {
                field = v.as_str().map(str::to_string);
                continue;
            }
            "field" => {
                ctx.err(v.pos.or(k.pos), format!("`condition.field` must be one field name, found {}", v.kind()));
                continue;
            }
            "range" => {
                range = Some((k, v));
                continue;
            }
            _ => {
                let why = if matches!(key, "neq" | "percentile") { "is not supported" } else { "is unknown" };
                ctx.err(
                    k.pos,
                    format!("correlation condition `{}` {why} (use gt, gte, lt, lte, eq or range)", k.key_text()),
                );
                continue;
            }
        };
        match v.val {
            Val::Int(i) => bounds.push((op, i as f64)),
            Val::Float(f) if f.is_finite() => bounds.push((op, f)),
            _ => ctx.err(v.pos.or(k.pos), format!("`condition.{key}` must be a number, found {}", v.kind())),
        }
    }
    if let Some((k, v)) = range {
        // The earlier draft's `range: min..max`, inclusive.
        let parsed = v.as_str().and_then(|s| s.split_once("..")).and_then(|(a, b)| {
            let (lo, hi) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
            (lo.is_finite() && hi.is_finite() && lo <= hi).then_some((lo, hi))
        });
        match parsed {
            Some(_) if !bounds.is_empty() => ctx.err(k.pos, "`range` cannot be combined with gt/gte/lt/lte/eq"),
            Some((lo, hi)) => bounds = vec![(CondOp::Gte, lo), (CondOp::Lte, hi)],
            None => ctx.err(v.pos.or(k.pos), "`range` must be text `min..max` with min <= max, e.g. \"10..20\""),
        }
    }
    let lower = |o: CondOp| matches!(o, CondOp::Gt | CondOp::Gte);
    let upper = |o: CondOp| matches!(o, CondOp::Lt | CondOp::Lte);
    match bounds.as_slice() {
        [] if range.is_none() => ctx.err(c.pos, "`correlation.condition` needs one of gt, gte, lt, lte, eq (or range)"),
        [] | [_] => {}
        [a, b] => {
            let (lo, hi) = if lower(a.0) { (a, b) } else { (b, a) };
            if !(lower(lo.0) && upper(hi.0) && lo.1 <= hi.1) {
                ctx.err(
                    c.pos,
                    "a two-bound condition needs a lower bound (gt/gte) at or below an upper bound (lt/lte)",
                );
            }
        }
        _ => ctx.err(c.pos, "`correlation.condition` takes one bound, or one lower and one upper bound"),
    }
    match (kind, &field) {
        (CorrelationKind::ValueCount, None) => ctx.err(
            c.pos,
            "a value_count correlation needs `field` in its condition (the field whose distinct values are counted)",
        ),
        (CorrelationKind::ValueCount, Some(_)) | (_, None) => {}
        (_, Some(_)) => ctx.err(c.pos, "`condition.field` only applies to value_count correlations"),
    }
    Some(CorrelationCondition { field, bounds })
}

fn generate_of(inner: Option<&Node>, top: Option<&Node>, ctx: &mut Ctx) -> Option<bool> {
    let mut read = |n: &Node| match n.val {
        Val::Bool(b) => Some(b),
        _ => {
            ctx.err(n.pos, format!("`generate` must be true or false, found {}", n.kind()));
            None
        }
    };
    match (inner.and_then(&mut read), top.and_then(&mut read)) {
        (Some(a), Some(b)) if a != b => {
            ctx.err(top.and_then(|n| n.pos), "`generate` and `correlation.generate` disagree; give it once");
            None
        }
        (a, b) => a.or(b),
    }
}

/// alias → rule name → field; every rule named must be one the correlation refers to.
fn aliases_of(v: &Node, rules: &[String], ctx: &mut Ctx) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Val::Map(entries) = &v.val else {
        ctx.err(v.pos, format!("`aliases` must be a map (alias → rule name → field), found {}", v.kind()));
        return out;
    };
    for (alias, per_rule) in entries {
        let mut fields = BTreeMap::new();
        let pairs = match &per_rule.val {
            Val::Map(pairs) => pairs.as_slice(),
            _ => &[],
        };
        for (rule, field) in pairs {
            match (rule.as_str(), field.as_str()) {
                (Some(r), _) if !rules.iter().any(|x| x == r) => ctx.err(
                    rule.pos,
                    format!("alias `{}` names rule `{r}`, which is not in `correlation.rules`", alias.key_text()),
                ),
                (Some(r), Some(f)) => drop(fields.insert(r.to_string(), f.to_string())),
                _ => ctx.err(rule.pos, format!("alias `{}`: map rule names to field names", alias.key_text())),
            }
        }
        if pairs.is_empty() {
            ctx.err(alias.pos, format!("alias `{}` must map rule names to fields", alias.key_text()));
        }
        out.insert(alias.key_text(), fields);
    }
    out
}
