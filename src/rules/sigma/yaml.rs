//! YAML reading for Sigma files. serde_norway's values lose what the Sigma layer needs, so each
//! document is read into a [`Node`] tree that keeps map order, reports duplicate keys, remembers
//! the byte position of scalars (for error lines) and the source text of unquoted scalars.
//!
//! The last one matters because pySigma reads YAML 1.1 (PyYAML) and serde_norway reads YAML 1.2:
//! unquoted `yes`, `010` or `1e3` mean different things to the two. [`yaml11_mismatch`] tells
//! when an unquoted scalar would be read differently, so detection sections can refuse it.
//! Strings are exact: serde_norway hands them over as slices of the text, so their position and
//! quoting are known. Numbers arrive as values only; their text is found by scanning from the
//! previous scalar and re-reading the word, and a number whose text is not found that way (e.g.
//! right after a block scalar) is not checked.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A YAML value with its position in the file text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub val: Val,
    /// Byte offset in the whole file text (strings always; numbers when found in the text; maps
    /// and sequences take their first child's).
    pub pos: Option<usize>,
    /// The source text of an unquoted (plain) scalar, when it could be recovered.
    pub plain: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.val {
            Val::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Short description for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.val {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) | Val::Float(_) => "a number",
            Val::Str(_) => "text",
            Val::Seq(_) => "a list",
            Val::Map(_) => "a map",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.val {
            Val::Null => J::Null,
            Val::Bool(b) => J::Bool(*b),
            Val::Int(i) => J::from(*i),
            Val::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Val::Str(s) => J::String(s.clone()),
            Val::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Val::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.key_text(), v.to_json())).collect()),
        }
    }

    /// A map key (or any value) as text for messages and JSON keys.
    pub fn key_text(&self) -> String {
        self.as_str().map_or_else(|| self.to_json().to_string(), str::to_string)
    }
}

/// Where a problem was found (byte offset in the file text) and what it is.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub pos: Option<usize>,
    pub message: String,
}

/// One document of a file: its text is `text[start..end]`, its first line is `line` (1-based).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    pub start: usize,
    pub end: usize,
    pub line: usize,
}

/// Split a file at `---` (and after `...`) lines. Each chunk is read on its own, so a syntax
/// error in one document does not hide the problems of the others. Chunks without content
/// (comments only, a trailing `---`) are dropped.
pub(crate) fn split_documents(text: &str) -> Vec<Chunk> {
    // (offset, line) where a chunk may start.
    let mut bounds = vec![(0, 1)];
    let (mut offset, mut line_no) = (0, 1);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end();
        if body == "---" || body.starts_with("--- ") {
            bounds.push((offset, line_no));
        }
        offset += line.len();
        line_no += 1;
        if body == "..." {
            bounds.push((offset, line_no));
        }
    }
    bounds.push((text.len(), line_no));
    let content = |l: &str| {
        let t = l.trim();
        let t = t.strip_prefix("---").map_or(t, str::trim_start);
        !(t.is_empty() || t.starts_with('#') || t == "...")
    };
    // A document starts at its first line with content (`--- {a: 1}` has some).
    bounds
        .windows(2)
        .filter_map(|w| {
            let ((start, first), (end, _)) = (w[0], w[1]);
            let line = (first..).zip(text[start..end].lines()).find(|(_, l)| content(l))?.0;
            Some(Chunk { start, end, line })
        })
        .collect()
}

/// Read one document. `Err` is a YAML syntax error (position relative to the whole text);
/// `Ok` carries the tree and the problems noticed while reading (duplicate keys, merge keys).
pub(crate) fn read_document(text: &str, chunk: Chunk) -> Result<(Node, Vec<Problem>), Problem> {
    let reader = Reader { text, cursor: Cell::new(chunk.start), problems: RefCell::new(Vec::new()) };
    let doc_text = &text[chunk.start..chunk.end];
    let Some(doc) = serde_norway::Deserializer::from_str(doc_text).next() else {
        return Ok((Node { val: Val::Null, pos: None, plain: None }, Vec::new()));
    };
    match NodeSeed(&reader).deserialize(doc) {
        Ok(node) => Ok((node, reader.problems.into_inner())),
        Err(e) => {
            let mut message = e.to_string();
            let pos = e.location().map(|loc| {
                // The message repeats the position at its end; the caller shows it in front.
                if let Some(cut) = message.rfind(" at line ") {
                    message.truncate(cut);
                }
                chunk.start + loc.index()
            });
            Err(Problem { pos, message: format!("YAML: {message}") })
        }
    }
}

struct Reader<'t> {
    text: &'t str,
    /// End of the last scalar placed in the text; numbers are looked for after it.
    cursor: Cell<usize>,
    problems: RefCell<Vec<Problem>>,
}

impl Reader<'_> {
    /// Byte offset of a string borrowed from the text.
    fn offset_of(&self, s: &str) -> Option<usize> {
        let base = self.text.as_ptr() as usize;
        let p = s.as_ptr() as usize;
        (p >= base && p + s.len() <= base + self.text.len()).then(|| p - base)
    }

    fn string(&self, s: &str, borrowed: bool) -> Node {
        let Some(off) = borrowed.then(|| self.offset_of(s)).flatten() else {
            // Escapes, folding or block style: a quoted or multi-line scalar, never a plain word.
            return Node { val: Val::Str(s.to_string()), pos: None, plain: None };
        };
        let bytes = self.text.as_bytes();
        let before = off.checked_sub(1).and_then(|i| bytes.get(i)).copied();
        let quoted = matches!(before, Some(b'\'' | b'"')) && bytes.get(off + s.len()).copied() == before;
        self.cursor.set(self.cursor.get().max(off + s.len() + usize::from(quoted)));
        Node { val: Val::Str(s.to_string()), pos: Some(off), plain: (!quoted).then(|| s.to_string()) }
    }

    /// A number's node, with its source text when the next plain word in the text reads as the
    /// same number (serde hands over the value only; the word is re-read to be sure).
    fn number(&self, val: Val, value: f64) -> Node {
        let found = next_word(self.text, self.cursor.get()).filter(|&(a, b)| {
            serde_norway::from_str::<serde_norway::Value>(&self.text[a..b]).ok().and_then(|v| v.as_f64()) == Some(value)
        });
        match found {
            Some((a, b)) => {
                self.cursor.set(b);
                Node { val, pos: Some(a), plain: Some(self.text[a..b].to_string()) }
            }
            None => Node { val, pos: None, plain: None },
        }
    }
}

/// The next plain word at or after `from` that is not a boolean or null spelling (those read the
/// same in YAML 1.1 and 1.2, so serde's booleans and nulls are not placed). Skips indicators,
/// comments, quoted scalars, anchors, aliases and tags.
fn next_word(text: &str, from: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let space = |i: usize| i >= b.len() || b[i].is_ascii_whitespace();
    let mut i = from;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() || b",[]{}".contains(&c) => i += 1,
            b'-' | b'?' | b':' if space(i + 1) => i += 1,
            b'#' => i = text[i..].find('\n').map_or(b.len(), |n| i + n),
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if q == b'"' && b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'&' | b'*' | b'!' => {
                while !space(i) {
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while !(space(i) || b",[]{}".contains(&b[i]) || (b[i] == b':' && space(i + 1))) {
                    i += 1;
                }
                let word = &text[start..i];
                let null_or_bool = matches!(word, "~" | "null" | "Null" | "NULL")
                    || matches!(word, "true" | "True" | "TRUE" | "false" | "False" | "FALSE");
                if !null_or_bool {
                    return Some((start, i));
                }
            }
        }
    }
    None
}

/// How PyYAML (YAML 1.1, pySigma's reader) resolves a plain scalar. Where both readers see a
/// number they see the same one (PyYAML's forms that serde_norway also reads as numbers, such as
/// `0x17` or `1.5e+3`, have the same value), so numbers need no value here.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Yaml11 {
    Null,
    Bool(bool),
    Number,
    Date,
    Special,
    Str,
}

fn yaml11(s: &str) -> Yaml11 {
    // PyYAML's implicit resolvers (yaml/resolver.py): float, int, timestamp.
    static RES: OnceLock<[Regex; 3]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("static YAML 1.1 resolver pattern");
        [
            re(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
            re(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"),
            re(r"^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)$"),
        ]
    });
    match s {
        "" | "~" | "null" | "Null" | "NULL" => Yaml11::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Yaml11::Bool(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Yaml11::Bool(false),
        "=" | "<<" => Yaml11::Special,
        _ if res[0].is_match(s) || res[1].is_match(s) => Yaml11::Number,
        _ if res[2].is_match(s) => Yaml11::Date,
        _ => Yaml11::Str,
    }
}

/// If the unquoted scalar `node` would be read differently by a YAML 1.1 reader (pySigma),
/// the explanation; `None` when both readers agree or the scalar was quoted.
pub(crate) fn yaml11_mismatch(node: &Node) -> Option<String> {
    let text = node.plain.as_deref()?;
    let theirs = yaml11(text);
    let ours = match &node.val {
        Val::Null => Yaml11::Null,
        Val::Bool(b) => Yaml11::Bool(*b),
        Val::Int(_) | Val::Float(_) => Yaml11::Number,
        Val::Str(_) => Yaml11::Str,
        Val::Seq(_) | Val::Map(_) => return None,
    };
    if ours == theirs {
        return None;
    }
    let describe = |y: Yaml11| match y {
        Yaml11::Null => "null".to_string(),
        Yaml11::Bool(b) => format!("the boolean {b}"),
        Yaml11::Number => "a number".to_string(),
        Yaml11::Date => "a date".to_string(),
        Yaml11::Special => "a YAML 1.1 special value".to_string(),
        Yaml11::Str => "text".to_string(),
    };
    let alternative = match (theirs, ours) {
        (Yaml11::Bool(b), _) => format!(", or write {b} for the boolean"),
        (Yaml11::Number, _) | (_, Yaml11::Number) => ", or write the number in plain decimal".to_string(),
        _ => String::new(),
    };
    Some(format!(
        "unquoted `{text}` means {} to YAML 1.1 readers such as pySigma but {} to YAML 1.2 readers \
         such as auditflow's: quote it ('{text}') for the text{alternative}",
        describe(theirs),
        describe(ours)
    ))
}

struct NodeSeed<'r, 't>(&'r Reader<'t>);

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor(self.0))
    }
}

struct NodeVisitor<'r, 't>(&'r Reader<'t>);

impl<'de> Visitor<'de> for NodeVisitor<'_, '_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node { val: Val::Null, pos: None, plain: None })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node { val: Val::Bool(v), pos: None, plain: None })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(self.0.number(Val::Int(v), v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Ok(self.0.number(Val::Float(v as f64), v as f64)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(self.0.number(Val::Float(v), v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node, E> {
        Ok(self.0.string(v, true))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(self.0.string(v, false))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed(self.0))? {
            items.push(item);
        }
        let pos = items.first().and_then(|n| n.pos);
        Ok(Node { val: Val::Seq(items), pos, plain: None })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        while let Some(key) = map.next_key_seed(NodeSeed(self.0))? {
            let value = map.next_value_seed(NodeSeed(self.0))?;
            let problem = if entries.iter().any(|(k, _)| k.val == key.val) {
                Some(format!("duplicate key `{}` in a map", key.key_text()))
            } else if key.plain.as_deref() == Some("<<") {
                Some("merge keys (`<<`) are not supported: write the entries out".to_string())
            } else {
                None
            };
            if let Some(message) = problem {
                self.0.problems.borrow_mut().push(Problem { pos: key.pos, message });
                continue;
            }
            entries.push((key, value));
        }
        let pos = entries.first().and_then(|(k, _)| k.pos);
        Ok(Node { val: Val::Map(entries), pos, plain: None })
    }
}
