//! Sigma `condition` expressions: lexer, precedence parser and expansion into an [`Expr`].
//!
//! Grammar (precedence from loosest to tightest, as the spec lists it): `or` < `and` < `not` <
//! `1 of`/`any of`/`all of` < parentheses. Keywords are lowercase only. Identifiers are
//! `[A-Za-z0-9_-]+`; selector patterns are `[A-Za-z0-9_*]+` (no `-`, like pySigma) or `them`.
//! `*` matches any run and the pattern must match the whole name. Selectors expand in the order
//! the identifiers are defined. Names starting with `_` are left out unless the pattern starts
//! with `_` (`them` included).

use super::detection::{collapse, Expr};

/// A condition as parsed, before identifiers are replaced by their definitions.
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Id(String),
    /// `1 of` / `any of` (`all: false`) or `all of` a pattern.
    Of {
        all: bool,
        pattern: String,
    },
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
}

/// Parse `text` and expand it over `defs` (search identifiers in definition order).
pub(crate) fn resolve(text: &str, defs: &[(String, Expr)]) -> Result<Expr, String> {
    let fail = |why: String| format!("condition `{text}`: {why}");
    if text.contains('|') {
        return Err(fail(
            "the pipe syntax (`| count() …`) is deprecated and not supported; write a correlation rule".into(),
        ));
    }
    let toks = lex(text).map_err(fail)?;
    let mut p = Parser { toks, at: 0, depth: 0 };
    let cond = p.or().map_err(fail)?;
    if let Some(t) = p.toks.get(p.at) {
        if let Tok::Word(w) = t {
            lowercase_operator(w).map_err(fail)?;
        }
        return Err(fail(format!("unexpected {}", describe(Some(t)))));
    }
    expand(&cond, defs).map_err(fail)
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut word = String::new();
    // A trailing space ends the last word.
    for c in text.chars().chain([' ']) {
        if is_word_char(c) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            toks.push(Tok::Word(std::mem::take(&mut word)));
        }
        match c {
            '(' => toks.push(Tok::Open),
            ')' => toks.push(Tok::Close),
            c if c.is_whitespace() => {}
            c => return Err(format!("unexpected character `{c}`")),
        }
    }
    Ok(toks)
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*')
}

/// `AND`, `Or`, …: pySigma reads operators in lowercase only; say so instead of "unexpected".
fn lowercase_operator(word: &str) -> Result<(), String> {
    let lower = word.to_ascii_lowercase();
    if matches!(lower.as_str(), "and" | "or" | "not") && word != lower {
        return Err(format!("operators are lowercase: write `{lower}` instead of `{word}`"));
    }
    Ok(())
}

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "end of the condition".into(),
        Some(Tok::Open) => "`(`".into(),
        Some(Tok::Close) => "`)`".into(),
        Some(Tok::Word(w)) => format!("`{w}`"),
    }
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    /// Nesting of parentheses and `not`, bounded so a hostile condition cannot exhaust the stack.
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek_word(&self) -> Option<&str> {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn eat(&mut self, word: &str) -> bool {
        let hit = self.peek_word() == Some(word);
        self.at += usize::from(hit);
        hit
    }

    fn or(&mut self) -> Result<Cond, String> {
        self.chain("or", Self::and, Cond::Or)
    }

    fn and(&mut self) -> Result<Cond, String> {
        self.chain("and", Self::not, Cond::And)
    }

    /// `next (op next)*`, left-associative and n-ary.
    fn chain(
        &mut self,
        op: &str,
        next: fn(&mut Self) -> Result<Cond, String>,
        make: fn(Vec<Cond>) -> Cond,
    ) -> Result<Cond, String> {
        let mut items = vec![next(self)?];
        while self.eat(op) {
            items.push(next(self)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { make(items) })
    }

    fn not(&mut self) -> Result<Cond, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let cond = if self.eat("not") { self.not().map(|c| Cond::Not(Box::new(c))) } else { self.operand() };
        self.depth -= 1;
        cond
    }

    fn operand(&mut self) -> Result<Cond, String> {
        let tok = self.toks.get(self.at).cloned();
        self.at += 1;
        let word = match tok {
            Some(Tok::Open) => {
                let inner = self.or()?;
                if self.toks.get(self.at) != Some(&Tok::Close) {
                    return Err(format!("expected `)`, found {}", describe(self.toks.get(self.at))));
                }
                self.at += 1;
                return Ok(inner);
            }
            Some(Tok::Word(w)) => w,
            other => return Err(format!("expected a search identifier, found {}", describe(other.as_ref()))),
        };
        if self.peek_word() == Some("of") {
            self.at += 1;
            let all = match word.as_str() {
                "1" | "any" => false,
                "all" => true,
                _ => return Err(format!("`{word} of`: only `1 of`, `any of` and `all of` are supported")),
            };
            return match self.toks.get(self.at) {
                Some(Tok::Word(p)) if p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*') => {
                    self.at += 1;
                    Ok(Cond::Of { all, pattern: p.clone() })
                }
                Some(Tok::Word(p)) => Err(format!("invalid pattern `{p}`: patterns use letters, digits, `_` and `*`")),
                other => Err(format!("expected a pattern after `{word} of`, found {}", describe(other))),
            };
        }
        if matches!(word.as_str(), "and" | "or" | "not" | "of") {
            return Err(format!("expected a search identifier, found `{word}`"));
        }
        lowercase_operator(&word)?;
        match word.as_str() {
            w if w.contains('*') => Err(format!("`{w}`: wildcards are only allowed after `1 of` / `all of`")),
            _ => Ok(Cond::Id(word)),
        }
    }
}

fn expand(cond: &Cond, defs: &[(String, Expr)]) -> Result<Expr, String> {
    Ok(match cond {
        Cond::Id(name) => match defs.iter().find(|(n, _)| n == name) {
            Some((_, e)) => e.clone(),
            None => return Err(format!("search identifier `{name}` is not defined")),
        },
        Cond::Of { all, pattern } => {
            // Patterns hold only [A-Za-z0-9_*], so `*` → `.*` is the whole translation.
            let re = regex::Regex::new(&format!("^(?:{})$", pattern.replace('*', ".*"))).map_err(|e| e.to_string())?;
            let hits: Vec<Expr> = defs
                .iter()
                .filter(|(name, _)| pattern == "them" || re.is_match(name))
                .filter(|(name, _)| pattern.starts_with('_') || !name.starts_with('_'))
                .map(|(_, e)| e.clone())
                .collect();
            if hits.is_empty() {
                return Err(format!("`{} of {pattern}` matches no search identifier", if *all { "all" } else { "1" }));
            }
            collapse(hits, if *all { Expr::And } else { Expr::Or })
        }
        Cond::Not(inner) => Expr::Not(Box::new(expand(inner, defs)?)),
        Cond::And(items) => Expr::And(items.iter().map(|c| expand(c, defs)).collect::<Result<_, _>>()?),
        Cond::Or(items) => Expr::Or(items.iter().map(|c| expand(c, defs)).collect::<Result<_, _>>()?),
    })
}
