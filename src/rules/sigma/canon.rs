//! Canonical text of an expression, identical to what `canon.py` prints for pySigma's parse of
//! the same rule, so the two parsers can be compared line by line (see `parity/`).
//!
//! n-ary `AND(...)`/`OR(...)` with nested same operators flattened and child order kept, a
//! single child printed on its own, `NOT(x)`; leaves `field=<value>` and `kw:<value>`. Numbers
//! print as Python does after pySigma's normalisation (an integral float is an int).

use super::detection::{CmpOp, Expr, StrPart, Test};

pub fn canon(expr: &Expr) -> String {
    match expr {
        Expr::And(_) | Expr::Or(_) => {
            let and = matches!(expr, Expr::And(_));
            let mut items = Vec::new();
            flatten(expr, and, &mut items);
            match items.as_slice() {
                [single] => canon(single),
                _ => {
                    let inner: Vec<String> = items.into_iter().map(canon).collect();
                    format!("{}({})", if and { "AND" } else { "OR" }, inner.join(", "))
                }
            }
        }
        Expr::Not(inner) => format!("NOT({})", canon(inner)),
        Expr::Field { field, test } => format!("{field}={}", value(test)),
        Expr::Keyword(test) => format!("kw:{}", value(test)),
    }
}

fn flatten<'e>(expr: &'e Expr, and: bool, items: &mut Vec<&'e Expr>) {
    match (expr, and) {
        (Expr::And(children), true) | (Expr::Or(children), false) => {
            children.iter().for_each(|c| flatten(c, and, items));
        }
        _ => items.push(expr),
    }
}

fn value(test: &Test) -> String {
    match test {
        Test::Str(s) => {
            // Literal `\`, `*` and `?` are escaped so they differ from wildcards.
            let body: String = s
                .parts
                .iter()
                .map(|p| match p {
                    StrPart::AnyRun => "*".to_string(),
                    StrPart::AnyOne => "?".to_string(),
                    StrPart::Lit(l) => l.replace('\\', "\\\\").replace('*', "\\*").replace('?', "\\?"),
                })
                .collect();
            format!("{}\"{body}\"", if s.cased { "cased:" } else { "" })
        }
        Test::Regex { pattern, ignore_case, multi_line, dot_all } => {
            let flags: String = [(ignore_case, 'i'), (multi_line, 'm'), (dot_all, 's')]
                .iter()
                .filter_map(|(on, f)| on.then_some(*f))
                .collect();
            format!("re:/{pattern}/{flags}")
        }
        Test::Cidr(net) => format!("cidr:{net}"),
        Test::Compare { op, value } => {
            let op = match op {
                CmpOp::Lt => "lt",
                CmpOp::Lte => "lte",
                CmpOp::Gt => "gt",
                CmpOp::Gte => "gte",
            };
            format!("{op}:{}", py_number(*value))
        }
        Test::Number(n) => py_number(*n),
        Test::Bool(b) => b.to_string(),
        Test::Null => "null".into(),
        Test::Exists(b) => format!("exists:{b}"),
    }
}

/// Python's `repr` of a pySigma number: integral values as ints, others as the shortest
/// round-trip float, in exponent form below 1e-4 (`1e-05`).
pub(crate) fn py_number(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if v.fract() == 0.0 {
        // `{:.0}` prints the exact integer value of the float, as Python's int() does.
        return if v == 0.0 { "0".into() } else { format!("{v:.0}") };
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        format!("{v}")
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}
