//! Sigma documents: rules and correlations, their shared metadata, and the checks of the
//! top-level keys. A file may hold several documents (`---`); each is read and checked on its
//! own and every problem is reported with its line, so one pass shows an author all of them.
//!
//! Unknown top-level keys are allowed by the spec ("arbitrary custom fields") and kept in
//! [`Meta::custom`]; that is where `auditflow:` settings go. Checks follow the spec, and
//! pySigma 2.0.1 where the spec is silent (e.g. levels and statuses in any case, `YYYY/M/D` dates).

use super::condition;
use super::correlation::{self, SigmaCorrelation};
use super::detection::{self, Expr};
use super::yaml::{self, Node, Problem, Val};
use super::SigmaError;

#[derive(Debug, Clone, PartialEq)]
pub enum SigmaDoc {
    Rule(SigmaRule),
    Correlation(SigmaCorrelation),
}

impl SigmaDoc {
    pub fn meta(&self) -> &Meta {
        match self {
            SigmaDoc::Rule(r) => &r.meta,
            SigmaDoc::Correlation(c) => &c.meta,
        }
    }
}

/// Metadata common to rules and correlations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    pub title: String,
    /// A UUID (`8-4-4-4-12` hex digits).
    pub id: Option<String>,
    /// Unique name, by which correlations may refer to the rule.
    pub name: Option<String>,
    /// stable, test, experimental, deprecated or unsupported (lowercased).
    pub status: Option<String>,
    pub description: Option<String>,
    pub references: Vec<String>,
    pub author: Option<String>,
    /// `YYYY-MM-DD` (a `YYYY/M/D` date is rewritten in this form).
    pub date: Option<String>,
    pub modified: Option<String>,
    pub tags: Vec<String>,
    pub falsepositives: Vec<String>,
    pub level: Option<Level>,
    /// Top-level keys the spec does not define, and `related`, `taxonomy`, `license`, `scope`.
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// 1-based line where the document starts.
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogSource {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
    /// For humans; not evaluated.
    pub definition: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SigmaRule {
    pub meta: Meta,
    pub logsource: LogSource,
    /// One expression per `condition` entry; the entries are ORed.
    pub detection: Vec<Expr>,
    /// Fields to show the analyst.
    pub fields: Vec<String>,
}

/// Error reporting for one document: positions become lines, errors name the document.
pub(crate) struct Ctx<'a> {
    text: &'a str,
    line_starts: &'a [usize],
    doc_line: usize,
    rule: Option<String>,
    pub errors: Vec<SigmaError>,
}

impl Ctx<'_> {
    /// An error at byte `pos` of the text, or at the document's first line.
    pub fn err(&mut self, pos: Option<usize>, message: impl Into<String>) {
        let (line, column) = match pos {
            Some(p) => line_col(self.text, self.line_starts, p),
            None => (self.doc_line, 1),
        };
        self.errors.push(SigmaError {
            line: Some(line),
            column: Some(column),
            rule: self.rule.clone(),
            message: message.into(),
        });
    }

    fn problem(&mut self, p: Problem) {
        self.err(p.pos, p.message);
    }
}

fn line_col(text: &str, line_starts: &[usize], pos: usize) -> (usize, usize) {
    let line = line_starts.partition_point(|&s| s <= pos).max(1);
    let start = line_starts.get(line - 1).copied().unwrap_or(0);
    let column = text.get(start..pos).map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

/// Parse every document of a Sigma file. On failure, every problem found in every document.
pub fn parse_documents(text: &str) -> Result<Vec<SigmaDoc>, Vec<SigmaError>> {
    let line_starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for chunk in yaml::split_documents(text) {
        let mut ctx = Ctx { text, line_starts: &line_starts, doc_line: chunk.line, rule: None, errors: Vec::new() };
        match yaml::read_document(text, chunk) {
            Err(p) => ctx.problem(p),
            Ok((node, problems)) => {
                ctx.rule = label(&node);
                for p in problems {
                    ctx.problem(p);
                }
                if let Some(doc) = document(&node, chunk.line, &mut ctx) {
                    if ctx.errors.is_empty() {
                        docs.push(doc);
                    }
                }
            }
        }
        errors.append(&mut ctx.errors);
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Title, else id, else name: how errors name a document.
fn label(node: &Node) -> Option<String> {
    ["title", "id", "name"].iter().find_map(|k| node.get(k).and_then(Node::as_str)).map(str::to_string)
}

fn document(node: &Node, line: usize, ctx: &mut Ctx) -> Option<SigmaDoc> {
    let Val::Map(entries) = &node.val else {
        ctx.err(node.pos, format!("a Sigma document must be a map, found {}", node.kind()));
        return None;
    };
    let is_correlation = node.get("correlation").is_some();
    if node.get("filter").is_some() && !is_correlation {
        ctx.err(node.pos, "Sigma filter documents (`filter:`) are not supported");
        return None;
    }
    if node.get("action").is_some() {
        ctx.err(
            node.pos,
            "legacy collection actions (`action: global/reset/repeat`) are not supported: write each rule in full",
        );
        return None;
    }
    let mut meta = Meta { line, ..Meta::default() };
    for (k, v) in entries {
        let Some(key) = k.as_str() else {
            ctx.err(k.pos.or(v.pos), format!("top-level keys must be text, found {}", k.kind()));
            continue;
        };
        let mut checked = |f: &dyn Fn(&str) -> Result<String, String>| {
            let t = text(v, key, ctx)?;
            f(&t).map_err(|m| ctx.err(v.pos.or(k.pos), format!("`{key}` {t:?} {m}"))).ok()
        };
        match key {
            "title" if v.as_str().is_some_and(|t| t.chars().count() > 256) => {
                ctx.err(v.pos, "`title` is longer than 256 characters")
            }
            "title" => meta.title = checked(&|t| nonempty(t)).unwrap_or_default(),
            // Lowercase, as UUIDs compare (correlations may refer to it in any case).
            "id" => {
                meta.id = checked(&|id| if is_uuid(id) { Ok(id.to_lowercase()) } else { Err("is not a UUID".into()) })
            }
            "name" => meta.name = checked(&nonempty),
            "status" => {
                meta.status = checked(&|s| one_of(s, &["stable", "test", "experimental", "deprecated", "unsupported"]))
            }
            "level" => {
                meta.level = checked(&|l| one_of(l, &["informational", "low", "medium", "high", "critical"])).map(|l| {
                    match l.as_str() {
                        "informational" => Level::Informational,
                        "low" => Level::Low,
                        "medium" => Level::Medium,
                        "high" => Level::High,
                        _ => Level::Critical,
                    }
                })
            }
            "description" => meta.description = text(v, key, ctx),
            "author" => meta.author = text(v, key, ctx),
            "date" => meta.date = checked(&|d| date(d).ok_or_else(|| "is not a date: write YYYY-MM-DD".into())),
            "modified" => meta.modified = checked(&|d| date(d).ok_or_else(|| "is not a date: write YYYY-MM-DD".into())),
            "references" => meta.references = text_list(v, key, false, ctx),
            "falsepositives" => meta.falsepositives = text_list(v, key, true, ctx),
            "tags" => {
                meta.tags = text_list(v, key, false, ctx);
                for t in meta.tags.iter().filter(|t| !t.contains('.')) {
                    ctx.err(v.pos, format!("tag `{t}` must be `namespace.name` (e.g. attack.t1059)"));
                }
            }
            // Read by the rule or correlation part below.
            "logsource" | "detection" | "fields" if !is_correlation => {}
            "correlation" => {}
            "generate" if is_correlation => {}
            _ => {
                let list = matches!(key, "related" | "scope");
                if (list && !matches!(v.val, Val::Seq(_)))
                    || (matches!(key, "taxonomy" | "license") && v.as_str().is_none())
                {
                    let want = if list { "a list" } else { "text" };
                    ctx.err(v.pos.or(k.pos), format!("`{key}` must be {want}, found {}", v.kind()));
                }
                meta.custom.insert(key.to_string(), v.to_json());
            }
        }
    }
    if node.get("title").is_none_or(|t| t.val == Val::Null) {
        ctx.err(node.pos, "`title` is missing");
    }
    if let Some(c) = node.get("correlation") {
        return correlation::correlation(meta, c, node.get("generate"), ctx).map(SigmaDoc::Correlation);
    }
    rule(meta, node, ctx).map(SigmaDoc::Rule)
}

fn nonempty(t: &str) -> Result<String, String> {
    if t.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(t.to_string())
    }
}

/// One of `names`, in any case (as pySigma accepts), returned lowercase.
fn one_of(s: &str, names: &[&str]) -> Result<String, String> {
    let lower = s.to_lowercase();
    names.contains(&lower.as_str()).then_some(lower).ok_or_else(|| format!("is not one of {}", names.join(", ")))
}

fn text(v: &Node, key: &str, ctx: &mut Ctx) -> Option<String> {
    match &v.val {
        Val::Str(s) => Some(s.clone()),
        Val::Null => None,
        _ => {
            ctx.err(v.pos, format!("`{key}` must be text, found {}", v.kind()));
            None
        }
    }
}

/// A list of strings; with `single_ok`, one string also counts as a list of one.
pub(crate) fn text_list(v: &Node, key: &str, single_ok: bool, ctx: &mut Ctx) -> Vec<String> {
    match &v.val {
        Val::Null => Vec::new(),
        Val::Str(s) if single_ok => vec![s.clone()],
        Val::Seq(items) => items
            .iter()
            .filter_map(|i| match &i.val {
                Val::Str(s) => Some(s.clone()),
                _ => {
                    ctx.err(i.pos.or(v.pos), format!("`{key}` entries must be text, found {}", i.kind()));
                    None
                }
            })
            .collect(),
        _ => {
            ctx.err(v.pos, format!("`{key}` must be a list of text, found {}", v.kind()));
            Vec::new()
        }
    }
}

pub(crate) fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// `YYYY-MM-DD`, or `YYYY/M/D` with one- or two-digit month and day (as pySigma accepts), for
/// years 1000..=3999; a real calendar date. Returned as `YYYY-MM-DD`.
fn date(s: &str) -> Option<String> {
    let (parts, slash): (Vec<&str>, bool) =
        if s.contains('/') { (s.split('/').collect(), true) } else { (s.split('-').collect(), false) };
    let [y, m, d] = parts.as_slice() else { return None };
    let digits = |p: &str, lens: &[usize]| lens.contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit());
    let md_lens: &[usize] = if slash { &[1, 2] } else { &[2] };
    let year_ok = digits(y, &[4]) && ('1'..='3').contains(&y.chars().next()?);
    if !(year_ok && digits(m, md_lens) && digits(d, md_lens)) {
        return None;
    }
    let (y, m, d): (u32, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let max = *days.get(m.checked_sub(1)? as usize)?;
    (1..=max).contains(&d).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

fn rule(meta: Meta, node: &Node, ctx: &mut Ctx) -> Option<SigmaRule> {
    let logsource = match node.get("logsource") {
        Some(n) => logsource(n, ctx),
        None => {
            ctx.err(node.pos, "`logsource` is missing");
            None
        }
    };
    let detection = match node.get("detection") {
        Some(n) => detection_section(n, ctx),
        None => {
            ctx.err(node.pos, "`detection` is missing");
            None
        }
    };
    let fields = node.get("fields").map(|f| text_list(f, "fields", false, ctx)).unwrap_or_default();
    Some(SigmaRule { meta, logsource: logsource?, detection: detection?, fields })
}

fn logsource(n: &Node, ctx: &mut Ctx) -> Option<LogSource> {
    if !matches!(n.val, Val::Map(_)) {
        ctx.err(n.pos, format!("`logsource` must be a map, found {}", n.kind()));
        return None;
    }
    // Logsource values select the field mapping, so they must read the same as to pySigma.
    yaml11_check(n, ctx);
    let mut field = |k: &str| n.get(k).and_then(|v| text(v, &format!("logsource.{k}"), ctx));
    let ls = LogSource {
        product: field("product"),
        category: field("category"),
        service: field("service"),
        definition: field("definition"),
    };
    if ls.product.is_none() && ls.category.is_none() && ls.service.is_none() {
        ctx.err(n.pos, "`logsource` needs at least one of category, product, service");
    }
    Some(ls)
}

/// Search identifiers and conditions → one expression per condition.
fn detection_section(n: &Node, ctx: &mut Ctx) -> Option<Vec<Expr>> {
    let Val::Map(entries) = &n.val else {
        ctx.err(n.pos, format!("`detection` must be a map, found {}", n.kind()));
        return None;
    };
    let before = ctx.errors.len();
    yaml11_check(n, ctx);
    let mut defs: Vec<(String, Expr)> = Vec::new();
    let mut conditions: Vec<(&str, Option<usize>)> = Vec::new();
    let mut condition_key = None;
    for (k, v) in entries {
        match k.as_str() {
            Some("condition") => {
                condition_key = Some(k);
                let list = match &v.val {
                    Val::Seq(items) => items.iter().collect(),
                    _ => vec![v],
                };
                if list.is_empty() {
                    ctx.err(k.pos, "`condition` is an empty list");
                }
                for c in list {
                    match c.as_str() {
                        Some(s) => conditions.push((s, c.pos.or(k.pos))),
                        None => ctx.err(c.pos.or(k.pos), format!("a condition must be text, found {}", c.kind())),
                    }
                }
            }
            Some(name) => match detection::search_expr(v) {
                Ok(e) => defs.push((name.to_string(), e)),
                Err(problems) => {
                    for p in problems {
                        ctx.err(p.pos.or(k.pos), format!("search identifier `{name}`: {}", p.message));
                    }
                    // Keep the name defined so conditions are still checked.
                    defs.push((name.to_string(), Expr::And(Vec::new())));
                }
            },
            None => ctx.err(k.pos.or(v.pos), format!("search identifier names must be text, found {}", k.kind())),
        }
    }
    if defs.is_empty() {
        ctx.err(n.pos, "`detection` defines no search identifiers");
    }
    if condition_key.is_none() {
        ctx.err(n.pos, "`detection.condition` is missing");
    }
    let mut exprs = Vec::new();
    for (c, pos) in conditions {
        match condition::resolve(c, &defs) {
            Ok(e) => exprs.push(e),
            Err(m) => ctx.err(pos, m),
        }
    }
    (ctx.errors.len() == before).then_some(exprs)
}

/// Refuse unquoted scalars that pySigma's YAML 1.1 reader would read differently.
fn yaml11_check(n: &Node, ctx: &mut Ctx) {
    match &n.val {
        Val::Seq(items) => items.iter().for_each(|i| yaml11_check(i, ctx)),
        Val::Map(entries) => {
            for (k, v) in entries {
                yaml11_check(k, ctx);
                yaml11_check(v, ctx);
            }
        }
        _ => {
            if let Some(m) = yaml::yaml11_mismatch(n) {
                ctx.err(n.pos, m);
            }
        }
    }
}

/// Whether `text` is a Sigma file rather than a native auditflow rule file (`rules:` at the
/// top): some document has top-level `detection` and `logsource`, or `correlation`. Reads the
/// top-level keys from the text, so a file with YAML errors is still recognised.
pub fn looks_like_sigma(text: &str) -> bool {
    let mut sigma = false;
    for chunk in yaml::split_documents(text) {
        let keys: Vec<&str> = text[chunk.start..chunk.end]
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '\'' || c == '"'))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().trim_matches(['\'', '"'])))
            .collect();
        if keys.contains(&"rules") {
            return false;
        }
        sigma |= (keys.contains(&"detection") && keys.contains(&"logsource")) || keys.contains(&"correlation");
    }
    sigma
}
