//! Search identifiers of a `detection` section → expressions over detection items.
//!
//! A map is the AND of its entries, a list of maps (or of nested lists) the OR of its elements, a
//! list of plain values a keyword search (OR), and a scalar a single keyword. Within an entry
//! `field|mod|mod: value(s)`, several values are ORed unless `all` is given. Modifiers are applied
//! left to right with pySigma's rules (which one may follow which, which value types they take),
//! and the encoding/placeholder modifiers we cannot evaluate on audit events are refused by name.

use std::net::IpAddr;

use super::yaml::{Node, Problem, Val};

/// A boolean expression over detection items; [`super::canon`] prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// The event's `field` passes `test`.
    Field {
        field: String,
        test: Test,
    },
    /// Some value of the event passes `test` (Sigma keyword search).
    Keyword(Test),
}

/// One value test, with modifiers already applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Whole-value glob match; case-insensitive unless `cased`.
    Str(SigmaStr),
    /// `re`: the pattern as written (after `contains`/`startswith`/`endswith`), checked to compile
    /// with the `regex` crate with these flags.
    Regex {
        pattern: String,
        ignore_case: bool,
        multi_line: bool,
        dot_all: bool,
    },
    /// `cidr`: the network as Python's `ipaddress` prints it (`10.0.0.0/8`, `2001:db8::/32`).
    Cidr(String),
    /// `gt`/`gte`/`lt`/`lte`: the field compared numerically with `value`.
    Compare {
        op: CmpOp,
        value: f64,
    },
    /// A YAML number; integers are exact up to 2^53 (larger ones are refused).
    Number(f64),
    Bool(bool),
    /// `F: null` or `F: []`.
    Null,
    /// `exists`: the field is present (`true`) or absent (`false`).
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// A Sigma string: literal text and wildcards, matched against the whole value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SigmaStr {
    pub parts: Vec<StrPart>,
    /// `cased` modifier: match case-sensitively.
    pub cased: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StrPart {
    Lit(String),
    /// `*`: any run of characters, including none.
    AnyRun,
    /// `?`: exactly one character.
    AnyOne,
}

impl SigmaStr {
    /// Parse a value as written: `*` and `?` are wildcards; a backslash makes a following `*`,
    /// `?` or `\` literal and is itself literal before anything else or at the end (the rules of
    /// pySigma's `SigmaString`, so `C:\Temp\*.txt` and `C:\\Temp\\*.txt` mean the same).
    pub fn parse(text: &str) -> SigmaStr {
        let mut s = SigmaStr::default();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' => s.parts.push(StrPart::AnyRun),
                '?' => s.parts.push(StrPart::AnyOne),
                '\\' => match chars.clone().next() {
                    Some(n @ ('*' | '?' | '\\')) => {
                        chars.next();
                        s.push_lit(n);
                    }
                    _ => s.push_lit('\\'),
                },
                c => s.push_lit(c),
            }
        }
        s
    }

    fn push_lit(&mut self, c: char) {
        match self.parts.last_mut() {
            Some(StrPart::Lit(l)) => l.push(c),
            _ => self.parts.push(StrPart::Lit(c.to_string())),
        }
    }

    /// An anchored regular expression for the `regex` crate: literals escaped, `*` → `.*?`,
    /// `?` → `.`, with `(?s)` so wildcards cross newlines and `(?i)` unless `cased`.
    pub fn to_regex(&self) -> String {
        let mut out = String::from(if self.cased { "(?s)^" } else { "(?is)^" });
        for p in &self.parts {
            match p {
                StrPart::Lit(l) => out.push_str(&regex::escape(l)),
                StrPart::AnyRun => out.push_str(".*?"),
                StrPart::AnyOne => out.push('.'),
            }
        }
        out.push('$');
        out
    }

    /// The text, if the string has no wildcards.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [StrPart::Lit(l)] => Some(l),
            _ => None,
        }
    }

    /// `contains`/`startswith`/`endswith`: a `*` at the front and/or end unless one is there.
    fn widen(mut self, front: bool, back: bool) -> SigmaStr {
        if front && self.parts.first() != Some(&StrPart::AnyRun) {
            self.parts.insert(0, StrPart::AnyRun);
        }
        if back && self.parts.last() != Some(&StrPart::AnyRun) {
            self.parts.push(StrPart::AnyRun);
        }
        self
    }
}

/// The modifiers we evaluate. Refused ones never get here (see [`modifier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mod {
    Contains,
    StartsWith,
    EndsWith,
    All,
    Re,
    ReFlag(char),
    Cidr,
    Exists,
    Cased,
    Neq,
    Cmp(CmpOp),
}

/// Modifiers refused by name, and why.
const REFUSED: &[(&[&str], &str)] = &[
    (&["windash"], "it rewrites Windows command-line switches; auditflow's events carry no command lines"),
    (&["base64", "base64offset"], "it matches base64-encoded payloads, which auditflow's events do not carry"),
    (
        &["utf16le", "utf16be", "utf16", "wide"],
        "it re-encodes the value as UTF-16 for encoded payloads, which auditflow's events do not carry",
    ),
    (&["expand"], "its %placeholders% are filled in by a processing pipeline, which auditflow does not have"),
    (&["fieldref"], "comparing two fields of one event is not supported"),
    (
        &["minute", "hour", "day", "week", "month", "year"],
        "parts of a timestamp field cannot be matched; use a correlation's timespan",
    ),
];

/// A modifier by name, or why it is refused.
fn modifier(name: &str) -> Result<Mod, String> {
    Ok(match name {
        "contains" => Mod::Contains,
        "startswith" => Mod::StartsWith,
        "endswith" => Mod::EndsWith,
        "all" => Mod::All,
        "re" => Mod::Re,
        "i" | "ignorecase" => Mod::ReFlag('i'),
        "m" | "multiline" => Mod::ReFlag('m'),
        "s" | "dotall" => Mod::ReFlag('s'),
        "cidr" => Mod::Cidr,
        "exists" => Mod::Exists,
        "cased" => Mod::Cased,
        "neq" => Mod::Neq,
        "gt" => Mod::Cmp(CmpOp::Gt),
        "gte" => Mod::Cmp(CmpOp::Gte),
        "lt" => Mod::Cmp(CmpOp::Lt),
        "lte" => Mod::Cmp(CmpOp::Lte),
        _ => {
            return Err(match REFUSED.iter().find(|(names, _)| names.contains(&name)) {
                Some((_, why)) => format!("modifier `{name}` is not supported: {why}"),
                None => format!("unknown modifier `{name}`"),
            })
        }
    })
}

type Parsed = Result<Expr, Vec<Problem>>;
/// `Expr::And` or `Expr::Or`.
pub(crate) type Combine = fn(Vec<Expr>) -> Expr;

/// The expression of one search identifier's definition.
pub(crate) fn search_expr(node: &Node) -> Parsed {
    let one = |r: Result<Expr, Problem>| r.map_err(|p| vec![p]);
    let (parts, op): (Vec<Parsed>, Combine) = match &node.val {
        Val::Map(e) if e.is_empty() => return Err(vec![problem(node.pos, "the search identifier is an empty map")]),
        Val::Seq(i) if i.is_empty() => return Err(vec![problem(node.pos, "the search identifier is an empty list")]),
        Val::Map(entries) => (entries.iter().map(|(k, v)| one(item_expr(k, v))).collect(), Expr::And),
        Val::Seq(items) if items.iter().any(|n| matches!(n.val, Val::Seq(_) | Val::Map(_))) => {
            (items.iter().map(search_expr).collect(), Expr::Or)
        }
        // A list of plain values is one keyword item (the values ORed), a scalar a keyword.
        Val::Seq(items) => return one(item(None, &[], items, node.pos)),
        _ => return one(item(None, &[], std::slice::from_ref(node), node.pos)),
    };
    let mut problems = Vec::new();
    let exprs: Vec<Expr> = parts.into_iter().filter_map(|r| r.map_err(|p| problems.extend(p)).ok()).collect();
    if problems.is_empty() {
        Ok(collapse(exprs, op))
    } else {
        Err(problems)
    }
}

fn problem(pos: Option<usize>, message: impl Into<String>) -> Problem {
    Problem { pos, message: message.into() }
}

/// `And`/`Or` of the items, or the single item itself.
pub(crate) fn collapse(mut items: Vec<Expr>, op: Combine) -> Expr {
    if items.len() == 1 {
        items.remove(0)
    } else {
        op(items)
    }
}

/// One `field|mods: value(s)` entry of a map.
fn item_expr(key: &Node, value: &Node) -> Result<Expr, Problem> {
    let Some(key_text) = key.as_str() else {
        return Err(problem(key.pos.or(value.pos), format!("a field name must be text, found {}", key.kind())));
    };
    let mut names = key_text.split('|');
    let field = names.next().filter(|f| !f.is_empty());
    let mods: Vec<&str> = names.collect();
    let values = match &value.val {
        Val::Seq(items) => items.as_slice(),
        _ => std::slice::from_ref(value),
    };
    item(field, &mods, values, key.pos).map_err(|p| problem(p.pos, format!("`{key_text}`: {}", p.message)))
}

/// A detection item: a field (or keyword search), its modifiers and values.
fn item(field: Option<&str>, names: &[&str], values: &[Node], pos: Option<usize>) -> Result<Expr, Problem> {
    let mods: Vec<Mod> = names.iter().map(|m| modifier(m)).collect::<Result<_, _>>().map_err(|m| problem(pos, m))?;
    let misplaced = mods.iter().enumerate().find_map(|(i, m)| match m {
        Mod::Re | Mod::Cidr if i > 0 => Some(format!("`{}` must be the first modifier", names[i])),
        Mod::Exists if mods.len() > 1 => {
            Some("`exists` must be the only modifier (for \"absent\" write `exists: false`)".into())
        }
        Mod::Exists if field.is_none() => Some("`exists` needs a field name".into()),
        _ => None,
    });
    if let Some(m) = misplaced {
        return Err(problem(pos, m));
    }
    let mut tests = Vec::with_capacity(values.len());
    for v in values {
        let at = v.pos.or(pos);
        let test = value_test(v, &mods, names).map_err(|m| problem(at, m))?;
        if field.is_none() && test == Test::Null {
            return Err(problem(at, "a keyword cannot be null (null needs a field name)"));
        }
        tests.push(test);
    }
    let leaf = |test: Test| match field {
        Some(f) => Expr::Field { field: f.to_string(), test },
        None => Expr::Keyword(test),
    };
    let expr = match tests.len() {
        // `F: []` means `F: null`, as in pySigma.
        0 if field.is_none() => return Err(problem(pos, "an empty keyword list")),
        0 => leaf(Test::Null),
        _ => {
            collapse(tests.into_iter().map(leaf).collect(), if mods.contains(&Mod::All) { Expr::And } else { Expr::Or })
        }
    };
    // `neq` negates the whole item (pySigma: `A|neq: [1, 2]` is NOT(A=1 OR A=2)).
    Ok(if mods.contains(&Mod::Neq) { Expr::Not(Box::new(expr)) } else { expr })
}

/// One value with the modifiers applied left to right.
fn value_test(v: &Node, mods: &[Mod], names: &[&str]) -> Result<Test, String> {
    let too_large = |n: f64| format!("the number {n} is too large to compare exactly; quote it to match it as text");
    let mut test = match (&v.val, mods.first()) {
        (Val::Seq(_) | Val::Map(_), _) => {
            return Err(format!("a value must be a scalar, found {} (nested lists and maps are not allowed)", v.kind()))
        }
        (Val::Str(s), Some(Mod::Re)) => {
            Test::Regex { pattern: s.clone(), ignore_case: false, multi_line: false, dot_all: false }
        }
        (Val::Str(s), Some(Mod::Cidr)) => Test::Cidr(cidr(s)?),
        (_, Some(Mod::Re | Mod::Cidr)) => {
            return Err(format!(
                "`{}` needs a text value, found {}",
                names.first().copied().unwrap_or_default(),
                v.kind()
            ))
        }
        (Val::Str(s), _) => Test::Str(SigmaStr::parse(s)),
        (Val::Int(i), _) if i.unsigned_abs() > 1 << 53 => return Err(too_large(*i as f64)),
        (Val::Int(i), _) => Test::Number(*i as f64),
        (Val::Float(f), _) if !f.is_finite() => return Err("a number must be finite".into()),
        (Val::Float(f), _) if f.abs() > (1u64 << 53) as f64 => return Err(too_large(*f)),
        (Val::Float(f), _) => Test::Number(*f),
        (Val::Bool(b), _) => Test::Bool(*b),
        (Val::Null, _) => Test::Null,
    };
    for (m, name) in mods.iter().zip(names) {
        test = apply(*m, name, test)?;
    }
    if let Test::Regex { pattern, ignore_case, multi_line, dot_all } = &test {
        check_regex(pattern, *ignore_case, *multi_line, *dot_all)?;
    }
    Ok(test)
}

fn apply(m: Mod, name: &str, test: Test) -> Result<Test, String> {
    Ok(match (m, test) {
        (Mod::All | Mod::Neq | Mod::Re | Mod::Cidr, t) => t,
        (Mod::Contains, Test::Str(s)) => Test::Str(s.widen(true, true)),
        (Mod::StartsWith, Test::Str(s)) => Test::Str(s.widen(false, true)),
        (Mod::EndsWith, Test::Str(s)) => Test::Str(s.widen(true, false)),
        (
            m @ (Mod::Contains | Mod::StartsWith | Mod::EndsWith),
            Test::Regex { pattern, ignore_case, multi_line, dot_all },
        ) => Test::Regex { pattern: widen_regex(m, &pattern), ignore_case, multi_line, dot_all },
        (Mod::ReFlag(f), Test::Regex { pattern, ignore_case, multi_line, dot_all }) => Test::Regex {
            pattern,
            ignore_case: ignore_case || f == 'i',
            multi_line: multi_line || f == 'm',
            dot_all: dot_all || f == 's',
        },
        (Mod::Cased, Test::Str(s)) => Test::Str(SigmaStr { cased: true, ..s }),
        (Mod::Exists, Test::Bool(b)) => Test::Exists(b),
        (Mod::Cmp(op), Test::Number(value)) => Test::Compare { op, value },
        (m, t) => {
            let wants = match m {
                Mod::ReFlag(_) => "a regular expression (put `re` first)",
                Mod::Cased => "text",
                Mod::Exists => "true or false",
                Mod::Cmp(_) => "a number",
                _ => "text or a regular expression",
            };
            let found = match t {
                Test::Str(_) => "text",
                Test::Regex { .. } => "a regular expression",
                Test::Cidr(_) => "a network",
                Test::Number(_) => "a number",
                Test::Bool(_) => "a boolean",
                Test::Null => "null",
                Test::Compare { .. } | Test::Exists(_) => "a comparison",
            };
            return Err(format!("modifier `{name}` needs {wants}, found {found}"));
        }
    })
}

/// `contains`/`startswith`/`endswith` after `re`, as pySigma does them: a top-level alternation
/// is grouped first, then `.*` is added on the open side(s) unless already anchored or open.
fn widen_regex(m: Mod, pattern: &str) -> String {
    let mut p = if has_toplevel_alternation(pattern) { format!("(?:{pattern})") } else { pattern.to_string() };
    let front = matches!(m, Mod::Contains | Mod::EndsWith) && !(p.starts_with(".*") || p.starts_with('^'));
    let open_end = !ends_unescaped(&p, ".*") && !ends_unescaped(&p, "$");
    if matches!(m, Mod::Contains | Mod::StartsWith) && open_end {
        p.push_str(".*");
    }
    if front {
        p.insert_str(0, ".*");
    }
    p
}

fn has_toplevel_alternation(re: &str) -> bool {
    let b = re.as_bytes();
    let (mut depth, mut in_class, mut i) = (0i32, false, 0);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b']' if in_class => in_class = false,
            _ if in_class => {}
            b'[' => {
                in_class = true;
                if b.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'|' if depth == 0 => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn ends_unescaped(re: &str, suffix: &str) -> bool {
    match re.strip_suffix(suffix) {
        Some(head) => (head.len() - head.trim_end_matches('\\').len()) % 2 == 0,
        None => false,
    }
}

/// Compile-check a pattern. The `regex` crate, like pySigma's RE2, has no look-around or
/// back-references; its message says which construct failed.
fn check_regex(pattern: &str, i: bool, m: bool, s: bool) -> Result<(), String> {
    let built = regex::RegexBuilder::new(pattern)
        .case_insensitive(i)
        .multi_line(m)
        .dot_matches_new_line(s)
        .size_limit(1 << 20)
        .build();
    match built {
        Ok(_) => Ok(()),
        // The message spans several lines (pattern, caret, reason): keep the reason.
        Err(e) => Err(format!(
            "invalid regular expression {pattern:?}: {}",
            e.to_string().lines().last().unwrap_or("").trim().trim_start_matches("error: ")
        )),
    }
}

/// A network as Python's `ip_network()` (pySigma) accepts and prints it: `addr` or `addr/len`,
/// with the host bits zero. (Python's netmask form `addr/255.0.0.0` is refused: write `/8`.)
fn cidr(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid CIDR network {text:?}: {why}");
    let (addr_text, prefix_text) = text.split_once('/').map_or((text, None), |(a, p)| (a, Some(p)));
    let addr: IpAddr = addr_text.parse().map_err(|_| bad("not an IPv4 or IPv6 address"))?;
    let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => bits,
        Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()) => p
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= bits)
            .ok_or_else(|| bad(&format!("the prefix must be 0..={bits}")))?,
        Some(_) => return Err(bad("write the prefix length as a number, e.g. /8")),
    };
    let value: u128 = match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    };
    // bits - prefix is 0..=128: shift a full mask right rather than 1 left (no overflow).
    let host_mask = if prefix == bits { 0 } else { u128::MAX >> (128 - (bits - prefix)) };
    if value & host_mask != 0 {
        return Err(bad("host bits are set (write the network address)"));
    }
    Ok(match addr {
        // Rust writes IPv4-mapped addresses as ::ffff:1.2.3.4, Python in hex.
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            let s = a.segments();
            format!("::ffff:{:x}:{:x}/{prefix}", s[6], s[7])
        }
        a => format!("{a}/{prefix}"),
    })
}
