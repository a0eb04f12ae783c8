//! Unit tests of the Sigma front end. Expected trees are written in the canonical form, which
//! parity/run_parity.sh checks against pySigma 2.0.1.

use super::*;

/// A rule with this detection body (indented 4) and condition(s).
fn rule_text(det: &str, cond: &str) -> String {
    format!("title: Test rule\nlogsource: {{product: linux}}\ndetection:\n{det}    condition: {cond}\n")
}

fn parse_rule(text: &str) -> SigmaRule {
    match parse_documents(text) {
        Ok(mut docs) => match docs.remove(0) {
            SigmaDoc::Rule(r) => r,
            other => panic!("expected a rule, got {other:?}"),
        },
        Err(e) => panic!("refused:\n{}\n{text}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

/// Canonical form of each condition.
fn canon_of(det: &str, cond: &str) -> Vec<String> {
    parse_rule(&rule_text(det, cond)).detection.iter().map(canon).collect()
}

/// Canonical form of `sel: {<entry>}` with condition `sel`.
fn item(entry: &str) -> String {
    canon_of(&format!("    sel: {{{entry}}}\n"), "sel").remove(0)
}

fn errors(text: &str) -> Vec<SigmaError> {
    match parse_documents(text) {
        Ok(d) => panic!("expected errors, parsed {d:?}\n{text}"),
        Err(e) => e,
    }
}

/// All messages of a refused rule, joined.
fn refusal(det: &str, cond: &str) -> String {
    errors(&rule_text(det, cond)).iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("\n")
}

fn item_refusal(entry: &str) -> String {
    refusal(&format!("    sel: {{{entry}}}\n"), "sel")
}

#[test]
fn detection_structure() {
    assert_eq!(item("EventID: [4624, 4625], User: 'root'"), r#"AND(OR(EventID=4624, EventID=4625), User="root")"#);
    assert_eq!(canon_of("    sel:\n        - {A: 1}\n        - {B: 2, C: 3}\n", "sel"), ["OR(A=1, AND(B=2, C=3))"]);
    assert_eq!(canon_of("    kw: ['mimikatz', 42]\n", "kw"), [r#"OR(kw:"mimikatz", kw:42)"#]);
    assert_eq!(canon_of("    kw:\n        '|all': ['a', 'b']\n", "kw"), [r#"AND(kw:"a", kw:"b")"#]);
    assert_eq!(canon_of("    s: 'foo*'\n", "s"), [r#"kw:"foo*""#]);
    assert_eq!(canon_of("    m: ['a', {F: 1}]\n", "m"), [r#"OR(kw:"a", F=1)"#]);
    assert_eq!(canon_of("    n: [[a, b], c]\n", "n"), [r#"OR(kw:"a", kw:"b", kw:"c")"#]);
    assert_eq!(item("A: null, B: [], C: '', D: ~"), r#"AND(A=null, B=null, C="", D=null)"#);
    assert_eq!(
        item("A: 1.5, B: -7, C: true, D: 0x17, E: 1.0, F: '4624'"),
        r#"AND(A=1.5, B=-7, C=true, D=23, E=1, F="4624")"#
    );
    let rule = parse_rule(&rule_text("    sel: {A: 'x', B: 2}\n", "sel"));
    assert_eq!(
        rule.detection[0],
        Expr::And(vec![
            Expr::Field {
                field: "A".into(),
                test: Test::Str(SigmaStr { parts: vec![StrPart::Lit("x".into())], cased: false })
            },
            Expr::Field { field: "B".into(), test: Test::Number(2.0) },
        ])
    );
}

#[test]
fn detection_structure_refusals() {
    assert!(refusal("    sel: {}\n", "sel").contains("empty map"));
    assert!(refusal("    sel: []\n", "sel").contains("empty list"));
    assert!(item_refusal("F: {a: 1}").contains("must be a scalar"));
    assert!(item_refusal("F: [[1]]").contains("must be a scalar"));
    assert!(refusal("    sel: [null]\n", "sel").contains("keyword cannot be null"));
    assert!(refusal("    sel: {'|all': []}\n", "sel").contains("empty keyword list"));
    assert!(refusal("    sel: {5: x}\n", "sel").contains("field name must be text"));
    assert!(item_refusal("A: 9007199254740993").contains("too large"));
    assert!(refusal("    condition: sel\n", "sel").contains("no search identifiers"));
}

#[test]
fn string_modifiers() {
    assert_eq!(item("A|contains: 'x'"), r#"A="*x*""#);
    assert_eq!(item("A|contains: '*x'"), r#"A="*x*""#, "no second `*`");
    assert_eq!(item("A|contains: ''"), r#"A="*""#);
    assert_eq!(item("A|startswith: 'x'"), r#"A="x*""#);
    assert_eq!(item("A|endswith: 'x'"), r#"A="*x""#);
    assert_eq!(item("A|contains|all: ['a', 'b']"), r#"AND(A="*a*", A="*b*")"#);
    assert_eq!(item("A|all: 1"), "A=1", "all on one value is accepted");
    assert_eq!(item("A|cased: 'Admin'"), r#"A=cased:"Admin""#);
    assert_eq!(item("A|contains|cased: 'E'"), r#"A=cased:"*E*""#);
    assert_eq!(item("A|cased|contains: 'E'"), r#"A=cased:"*E*""#);
    assert_eq!(item("A|neq: 443"), "NOT(A=443)");
    assert_eq!(item("A|neq: [1, 2]"), "NOT(OR(A=1, A=2))");
    assert_eq!(item("A|neq|all: ['x', 'y']"), r#"NOT(AND(A="x", A="y"))"#);
    assert_eq!(item("'|contains': ['x', 'y']"), r#"OR(kw:"*x*", kw:"*y*")"#);
}

#[test]
fn regex_modifiers() {
    assert_eq!(item("A|re: '^adm[0-9]+$'"), "A=re:/^adm[0-9]+$/");
    assert_eq!(item("A|re|i: 'x'"), "A=re:/x/i");
    assert_eq!(item("A|re|s|m: 'x'"), "A=re:/x/ms");
    assert_eq!(item("A|re|ignorecase|multiline|dotall: 'x'"), "A=re:/x/ims");
    assert_eq!(item("A|re|contains: 'a|b'"), "A=re:/.*(?:a|b).*/");
    assert_eq!(item("A|re|contains: 'a\\|b'"), r"A=re:/.*a\|b.*/");
    assert_eq!(item("A|re|contains: '.*ab.*'"), "A=re:/.*ab.*/");
    assert_eq!(item("A|re|startswith: 'ab$'"), "A=re:/ab$/");
    assert_eq!(item("A|re|startswith: 'ab'"), "A=re:/ab.*/");
    assert_eq!(item("A|re|endswith: '^ab'"), "A=re:/^ab/");
    assert_eq!(item("A|re|endswith: 'ab'"), "A=re:/.*ab/");
    let rule = parse_rule(&rule_text("    sel: {A|re|i: 'x'}\n", "sel"));
    assert!(matches!(
        &rule.detection[0],
        Expr::Field { test: Test::Regex { ignore_case: true, multi_line: false, .. }, .. }
    ));

    assert!(item_refusal("A|re: 'a(?=b)'").contains("look-around"));
    assert!(item_refusal("A|re: '(a)\\1'").contains("backreferences are not supported"));
    assert!(item_refusal("A|contains|re: 'x'").contains("`re` must be the first modifier"));
    assert!(item_refusal("A|re: 5").contains("`re` needs a text value, found a number"));
    assert!(item_refusal("A|i: 'x'").contains("put `re` first"));
    assert!(item_refusal("A|re|cased: 'x'").contains("modifier `cased` needs text, found a regular expression"));
}

#[test]
fn cidr_exists_compare_modifiers() {
    assert_eq!(item("A|cidr: '10.0.0.0/8'"), "A=cidr:10.0.0.0/8");
    assert_eq!(item("A|cidr: '2001:DB8::/32'"), "A=cidr:2001:db8::/32");
    assert_eq!(item("A|cidr: '192.168.1.7'"), "A=cidr:192.168.1.7/32");
    assert!(item_refusal("A|cidr: '10.0.0.0/255.0.0.0'").contains("prefix length as a number"));
    assert_eq!(item("A|cidr: '0.0.0.0/0'"), "A=cidr:0.0.0.0/0");
    assert_eq!(item("A|cidr: '::ffff:1.2.3.4/128'"), "A=cidr:::ffff:102:304/128");
    assert_eq!(item("A|cidr: '::1.2.3.4'"), "A=cidr:::102:304/128");
    assert_eq!(item("A|cidr: '1:0:0:1:0:0:0:1'"), "A=cidr:1:0:0:1::1/128");
    assert_eq!(item("A|cidr: ['fe80::/10', '::/0']"), "OR(A=cidr:fe80::/10, A=cidr:::/0)");
    assert!(item_refusal("A|cidr: '10.0.0.0/33'").contains("prefix must be 0..=32"));
    assert!(item_refusal("A|cidr: '10.0.0.1/8'").contains("host bits"));
    assert!(item_refusal("A|cidr: '010.0.0.0/8'").contains("not an IPv4 or IPv6 address"));
    assert!(item_refusal("A|contains|cidr: '10.0.0.0/8'").contains("`cidr` must be the first modifier"));
    assert!(item_refusal("A|cidr|contains: '10.0.0.0/8'").contains("found a network"));

    assert_eq!(item("A|exists: true, B|exists: false"), "AND(A=exists:true, B=exists:false)");
    assert!(item_refusal("A|exists: 'yes please'").contains("modifier `exists` needs true or false, found text"));
    assert!(item_refusal("A|exists|neq: true").contains("only modifier"));
    assert!(item_refusal("'|exists': true").contains("needs a field name"));

    assert_eq!(
        item("A|gt: 5, B|gte: 1.5, C|lt: 0.25, D|lte: -3, E|gt: 1.0"),
        "AND(A=gt:5, B=gte:1.5, C=lt:0.25, D=lte:-3, E=gt:1)"
    );
    assert!(item_refusal("A|gt: 'abc'").contains("needs a number, found text"));
    assert!(item_refusal("A|gte: true").contains("needs a number, found a boolean"));
    assert!(item_refusal("A|contains: 5")
        .contains("modifier `contains` needs text or a regular expression, found a number"));
}

#[test]
fn refused_modifiers_name_the_reason() {
    assert!(item_refusal("A|windash: '-x'")
        .contains("modifier `windash` is not supported: it rewrites Windows command-line switches"));
    assert!(item_refusal("A|windash: '-x'").contains("auditflow's events carry no command lines"));
    for m in ["base64", "base64offset"] {
        assert!(item_refusal(&format!("A|{m}: 'x'")).contains("base64-encoded payloads"), "{m}");
    }
    for m in ["utf16le", "utf16be", "utf16", "wide"] {
        assert!(item_refusal(&format!("A|{m}|base64: 'x'")).contains("UTF-16 for encoded payloads"), "{m}");
    }
    assert!(item_refusal("A|expand: '%x%'").contains("pipeline"));
    assert!(item_refusal("A|fieldref: B").contains("two fields of one event"));
    for m in ["minute", "hour", "day", "week", "month", "year"] {
        assert!(item_refusal(&format!("A|{m}: 3")).contains("parts of a timestamp field"), "{m}");
    }
    assert!(item_refusal("A|foo: 1").contains("unknown modifier `foo`"));
}

#[test]
fn wildcards_and_escapes() {
    let p = |s: &str| SigmaStr::parse(s).parts;
    use StrPart::{AnyOne, AnyRun, Lit};
    assert_eq!(p(r"C:\Temp\fi?e\*.txt"), [Lit(r"C:\Temp\fi".into()), AnyOne, Lit("e*.txt".into())]);
    assert_eq!(p(r"C:\\Temp"), [Lit(r"C:\Temp".into())], r"`\\` is one backslash");
    assert_eq!(p(r"a\\*"), [Lit(r"a\".into()), AnyRun], r"`\\*` is a backslash and a wildcard");
    assert_eq!(p(r"a\\\*"), [Lit(r"a\*".into())], r"`\\\*` is a backslash and a star");
    assert_eq!(p(r"a\\\\b"), [Lit(r"a\\b".into())]);
    assert_eq!(p(r"a\\\b"), [Lit(r"a\\b".into())], "three backslashes before a letter give two");
    assert_eq!(p("end\\"), [Lit("end\\".into())], "a trailing backslash is literal");
    assert_eq!(p(""), []);
    assert_eq!(item(r"A: 'C:\Temp\fi?e\*.txt'"), r#"A="C:\\Temp\\fi?e\*.txt""#);

    let s = SigmaStr::parse("a.b*c?");
    assert_eq!(s.to_regex(), r"(?is)^a\.b.*?c.$");
    assert_eq!(SigmaStr { cased: true, ..SigmaStr::parse("X") }.to_regex(), "(?s)^X$");
    let re = regex::Regex::new(&SigmaStr::parse("*\\Temp\\\\*.EXE").to_regex()).unwrap();
    assert!(re.is_match("c:\\temp\\x\ny.exe"));
    assert!(!re.is_match("c:\\temp\\x.exe.bak"));
    assert_eq!(SigmaStr::parse(r"lit\*").literal(), Some("lit*"));
    assert_eq!(SigmaStr::parse("").literal(), Some(""));
    assert_eq!(SigmaStr::parse("a*").literal(), None);
}

#[test]
fn precedence() {
    let det = "    a: {A: 1}\n    b: {B: 2}\n    c: {C: 3}\n";
    let cases = [
        ("not a and b or c", "OR(AND(NOT(A=1), B=2), C=3)"),
        ("a or b and not c", "OR(A=1, AND(B=2, NOT(C=3)))"),
        ("not (a or b) and c", "AND(NOT(OR(A=1, B=2)), C=3)"),
        ("a and (b or c)", "AND(A=1, OR(B=2, C=3))"),
        ("not not a", "NOT(NOT(A=1))"),
        ("a or b or c and a", "OR(A=1, B=2, AND(C=3, A=1))"),
        ("((a))", "A=1"),
    ];
    for (cond, want) in cases {
        assert_eq!(canon_of(det, cond), [want], "{cond}");
    }
}

#[test]
fn selectors_and_them() {
    let det = "    sel1: {A: 1}\n    sel2: {B: 2}\n    _u: {U: 4}\n    x_u: {X: 5}\n    filter_a: {F: 6}\n";
    let cases = [
        ("1 of them", "OR(A=1, B=2, X=5, F=6)"),
        ("all of them", "AND(A=1, B=2, X=5, F=6)"),
        ("any of sel*", "OR(A=1, B=2)"),
        ("all of sel*", "AND(A=1, B=2)"),
        ("all of _*", "U=4"),
        ("1 of *u", "X=5"),
        ("1 of _u", "U=4"),
        ("not 1 of sel*", "NOT(OR(A=1, B=2))"),
        ("sel1 and not 1 of filter*", "AND(A=1, NOT(F=6))"),
    ];
    for (cond, want) in cases {
        assert_eq!(canon_of(det, cond), [want], "{cond}");
    }
    // Operators are whole words: these are identifiers.
    let det = "    notepad: {A: 1}\n    order: {B: 2}\n    and_x: {C: 3}\n    sel-1: {D: 4}\n";
    assert_eq!(canon_of(det, "notepad and order or not and_x and sel-1"), ["OR(AND(A=1, B=2), AND(NOT(C=3), D=4))"]);
}

#[test]
fn condition_refusals() {
    let det = "    sel1: {A: 1}\n    sel-2: {B: 2}\n";
    let refused = |cond: &str| refusal(det, cond);
    assert!(refused("sel1 and other").contains("search identifier `other` is not defined"));
    assert!(refused("sel1 and other").contains("condition `sel1 and other`"), "the message quotes the condition");
    assert!(refused("1 of filter*").contains("`1 of filter*` matches no search identifier"));
    assert!(refused("sel1 AND sel-2").contains("write `and` instead of `AND`"));
    assert!(refused("NOT sel1").contains("write `not` instead of `NOT`"));
    assert!(refused("2 of sel*").contains("only `1 of`, `any of` and `all of`"));
    assert!(refused("sel1 | count() > 5").contains("pipe syntax"));
    assert!(refused("1 of sel-*").contains("invalid pattern `sel-*`"));
    assert!(refused("sel*").contains("wildcards are only allowed after"));
    assert!(refused("(sel1").contains("expected `)`"));
    assert!(refused("sel1 and").contains("found end of the condition"));
    assert!(refused("sel1 sel-2").contains("unexpected `sel-2`"));
    assert!(refused("sel1 & sel-2").contains("unexpected character `&`"));
    let deep = format!("{}sel1{}", "(".repeat(100), ")".repeat(100));
    assert!(refused(&deep).contains("nested deeper"));
    assert!(refusal("    sel: {A: 1}\n", "[]").contains("empty list"));
    assert!(refusal("    sel: {A: 1}\n", "[5]").contains("a condition must be text"));
    assert!(errors("title: t\nlogsource: {product: x}\ndetection:\n    sel: {A: 1}\n")[0]
        .message
        .contains("condition` is missing"));
}

#[test]
fn condition_lists() {
    let det = "    sel: {A: 1}\n    f: {B: 2}\n";
    assert_eq!(
        canon_of(det, "\n        - sel\n        - sel and not f\n        - f"),
        ["A=1", "AND(A=1, NOT(B=2))", "B=2"]
    );
    // A block condition may span lines.
    assert_eq!(canon_of(det, "|\n        sel\n          and\tnot f"), ["AND(A=1, NOT(B=2))"]);
}

#[test]
fn errors_name_rule_and_line() {
    let text =
        "title: Bad one\nlogsource: {product: linux}\ndetection:\n    sel:\n        A|foo: 1\n    condition: sel\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column, e[0].rule.as_deref()), (Some(5), Some(9), Some("Bad one")));
    assert_eq!(
        e[0].to_string(),
        "line 5:9: rule \"Bad one\": search identifier `sel`: `A|foo`: unknown modifier `foo`"
    );
    // Without a title, the id names the document; every problem is reported.
    let text = "id: 11111111-2222-4333-8444-555555555555\nlevel: severe\nlogsource: {product: x}\ndetection:\n    sel: {A|gt: x}\n    condition: sel and nope\n";
    let e = errors(text);
    let lines: Vec<_> = e.iter().map(|e| (e.line, e.message.split(':').next().unwrap_or("").to_string())).collect();
    assert!(e.iter().all(|e| e.rule.as_deref() == Some("11111111-2222-4333-8444-555555555555")), "{e:?}");
    assert!(
        lines
            .contains(&(Some(2), "`level` \"severe\" is not one of informational, low, medium, high, critical".into())),
        "{lines:?}"
    );
    assert!(e.iter().any(|e| e.line == Some(5) && e.message.contains("needs a number")));
    assert!(e.iter().any(|e| e.line == Some(6) && e.message.contains("`nope` is not defined")));
    assert!(e.iter().any(|e| e.message.contains("`title` is missing")));
    // A YAML syntax error has its line too.
    let e = errors("title: t\nlogsource: {product: x\ndetection:\n");
    assert!(e[0].message.starts_with("YAML:") && e[0].line.is_some(), "{e:?}");
}

#[test]
fn metadata() {
    let text = "title: Meta\nid: 11111111-AAAA-4333-8444-555555555555\nname: meta\nstatus: Test\nlevel: HIGH\n\
                description: d\nauthor: me\ndate: 2024/1/5\nmodified: 2024-02-29\ntags: [attack.t1059]\n\
                references: [https://example.com]\nfalsepositives: admins\nauditflow:\n    severity: high\n\
                related: [{id: x, type: similar}]\nfields: [User]\n\
                logsource: {category: process_creation, product: linux, service: auditd, definition: d}\n\
                detection:\n    sel: {A: 1}\n    condition: sel\n";
    let r = parse_rule(text);
    let m = &r.meta;
    assert_eq!(m.id.as_deref(), Some("11111111-aaaa-4333-8444-555555555555"));
    assert_eq!((m.status.as_deref(), m.level), (Some("test"), Some(Level::High)));
    assert_eq!((m.date.as_deref(), m.modified.as_deref()), (Some("2024-01-05"), Some("2024-02-29")));
    assert_eq!(m.falsepositives, ["admins"]);
    assert_eq!(m.custom["auditflow"]["severity"], "high");
    assert!(m.custom.contains_key("related"));
    assert_eq!(m.line, 1);
    assert_eq!(r.fields, ["User"]);
    assert_eq!(r.logsource.service.as_deref(), Some("auditd"));

    let bad = |key_line: &str| {
        let text = format!(
            "title: t\n{key_line}\nlogsource: {{product: x}}\ndetection:\n    sel: {{A: 1}}\n    condition: sel\n"
        );
        errors(&text).iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("\n")
    };
    assert!(bad("id: not-a-uuid").contains("is not a UUID"));
    assert!(bad("status: beta").contains("`status` \"beta\""));
    assert!(bad("date: 2024-1-5").contains("write YYYY-MM-DD"));
    assert!(bad("date: 2023-02-29").contains("write YYYY-MM-DD"), "not a calendar date");
    assert!(bad("tags: attack.t1").contains("must be a list"));
    assert!(bad("tags: [nonamespace]").contains("namespace.name"));
    assert!(bad("tags: [5]").contains("entries must be text"));
    assert!(bad("references: x").contains("must be a list"));
    assert!(bad("name: ''").contains("must not be empty"));
    assert!(bad("scope: x").contains("must be a list"));
    assert!(bad("action: global").contains("legacy collection actions"));
    let long = format!(
        "title: {}\nlogsource: {{product: x}}\ndetection:\n    sel: {{A: 1}}\n    condition: sel\n",
        "x".repeat(257)
    );
    assert!(errors(&long)[0].message.contains("longer than 256"));
    assert!(errors("logsource: {product: x}\ndetection:\n    sel: {A: 1}\n    condition: sel\n")[0]
        .message
        .contains("`title` is missing"));
    let e = errors("title: t\nlogsource: {definition: d}\ndetection:\n    sel: {A: 1}\n    condition: sel\n");
    assert!(e[0].message.contains("at least one of category, product, service"));
    assert!(errors("title: t\ndetection:\n    sel: {A: 1}\n    condition: sel\n")[0]
        .message
        .contains("`logsource` is missing"));
    assert!(errors("title: t\nlogsource: {product: x}\n")[0].message.contains("`detection` is missing"));
    assert!(errors("- a\n- b\n")[0].message.contains("must be a map"));
}

#[test]
fn duplicate_and_merge_keys() {
    let e = errors(
        "title: t\nlogsource: {product: x}\ndetection:\n    sel:\n        A: 1\n        A: 2\n    condition: sel\n",
    );
    assert_eq!((e[0].line, e[0].message.as_str()), (Some(6), "duplicate key `A` in a map"));
    let e = errors("title: t\ntitle: u\nlogsource: {product: x}\ndetection:\n    sel: {A: 1}\n    condition: sel\n");
    assert!(e[0].message.contains("duplicate key `title`"));
    let e = errors("title: t\nlogsource: {product: x}\ndetection:\n    base: &b {A: 1}\n    sel:\n        <<: *b\n        B: 2\n    condition: sel\n");
    assert!(e[0].message.contains("merge keys"));
    // Anchors and aliases themselves are fine.
    assert_eq!(canon_of("    sel: &s {A: 1}\n    sel2: *s\n", "sel and sel2"), ["AND(A=1, A=1)"]);
}

#[test]
fn yaml11_ambiguities_are_refused() {
    for (value, reading) in [
        ("yes", "the boolean true"),
        ("No", "the boolean false"),
        ("on", "the boolean true"),
        ("OFF", "the boolean false"),
        ("010", "a number"),
        ("1_000", "a number"),
        ("12:30", "a number"),
        ("0x_1F", "a number"),
        ("2024-01-05", "a date"),
        ("0o17", "text"),
        ("1e3", "text"),
        ("1.5e3", "text"),
        ("+.5", "text"),
        ("=", "a YAML 1.1 special value"),
    ] {
        let msg = item_refusal(&format!("A: {value}"));
        assert!(msg.contains(&format!("unquoted `{value}` means {reading}")), "{value}: {msg}");
        assert!(msg.contains(&format!("quote it ('{value}')")), "{value}: {msg}");
    }
    assert!(item_refusal("A: yes").contains("write true for the boolean"));
    assert!(item_refusal("A: 010").contains("write the number in plain decimal"));
    assert!(item_refusal("A: 1e3").contains("but a number to YAML 1.2 readers"));
    // In lists (block and flow), after comments, nulls and booleans, and as keys and identifiers.
    assert!(item_refusal("A: [1, 'x', 0o17]").contains("`0o17`"));
    assert!(item_refusal("A: [null, true, 1e3]").contains("`1e3`"));
    assert!(refusal("    sel:\n        A:\n            - 4 # four\n            - 010\n", "sel").contains("`010`"));
    assert!(refusal("    sel:\n        on: 1\n", "sel").contains("`on`"));
    assert!(refusal("    yes: {A: 1}\n", "yes").contains("`yes`"));
    let e = errors(&rule_text("    sel:\n        A: 1\n        B: off\n", "sel"));
    assert_eq!(e[0].line, Some(6));
    // Quoted forms, and forms both readers agree on, are accepted.
    assert_eq!(
        item("A: 'yes', B: \"010\", C: '1e3', D: y, E: 0x17, F: 1.0e+3, G: true, H: 08, I: 0b101"),
        r#"AND(A="yes", B="010", C="1e3", D="y", E=23, F=1000, G=true, H="08", I=5)"#
    );
    // Outside detection, as pySigma reads only the detection values this way.
    let r = parse_rule(
        "title: yes\ndescription: on\nlogsource: {product: x}\ndetection:\n    sel: {A: 1}\n    condition: sel\n",
    );
    assert_eq!(r.meta.title, "yes");
}

#[test]
fn multi_document_files() {
    let text =
        "# leading comment\ntitle: One\nlogsource: {product: x}\ndetection:\n    sel: {A: 1}\n    condition: sel\n\
                ---\n\ntitle: Two\nlogsource: {product: x}\ndetection:\n    sel: {B: 2}\n    condition: sel\n---\n";
    let docs = parse_documents(text).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].meta().line, docs[1].meta().line), (2, 9));
    // Problems in several documents are all reported, each naming its document.
    let text = "title: One\nlogsource: {product: x}\ndetection:\n    sel: {A|foo: 1}\n    condition: sel\n---\n\
                title: Two\nlogsource: {product: x\n---\ntitle: Three\nlogsource: {product: x}\ndetection:\n    sel: {A: 1}\n    condition: nope\n";
    let e = errors(text);
    let who: Vec<_> = e.iter().map(|e| (e.rule.clone(), e.line)).collect();
    assert_eq!(who.len(), 3, "{e:?}");
    assert_eq!(who[0], (Some("One".into()), Some(4)));
    assert_eq!(who[1].0, None, "a syntax error hides the title");
    assert!(who[1].1.is_some_and(|l| (8..=9).contains(&l)), "{who:?}");
    assert_eq!(who[2], (Some("Three".into()), Some(14)));
    assert!(parse_documents("---\n# nothing\n...\n").unwrap().is_empty());
}

fn corr(body: &str) -> Result<SigmaCorrelation, String> {
    let text = format!("title: C\nname: c\n{body}");
    match parse_documents(&text) {
        Ok(mut d) => match d.remove(0) {
            SigmaDoc::Correlation(c) => Ok(c),
            other => panic!("not a correlation: {other:?}"),
        },
        Err(e) => Err(e.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("\n")),
    }
}

fn corr_with(kind: &str, extra: &str) -> Result<SigmaCorrelation, String> {
    corr(&format!("correlation:\n    type: {kind}\n    rules: [a, b]\n    timespan: 10m\n{extra}"))
}

#[test]
fn correlation_types() {
    let c = corr_with("event_count", "    group-by: [User, Host]\n    condition: {gte: 10}\n").unwrap();
    assert_eq!(
        (c.kind, c.rules.as_slice(), c.group_by.as_slice()),
        (CorrelationKind::EventCount, &["a".to_string(), "b".into()][..], &["User".to_string(), "Host".into()][..])
    );
    assert_eq!((c.timespan.as_str(), c.timespan_ms), ("10m", 600_000));
    assert_eq!(c.condition, Some(CorrelationCondition { field: None, bounds: vec![(CondOp::Gte, 10.0)] }));
    assert_eq!(c.generate, None);

    let c = corr_with("value_count", "    group-by: Host\n    condition: {field: User, gt: 100}\n").unwrap();
    assert_eq!((c.kind, c.group_by.as_slice()), (CorrelationKind::ValueCount, &["Host".to_string()][..]));
    assert_eq!(
        c.condition,
        Some(CorrelationCondition { field: Some("User".into()), bounds: vec![(CondOp::Gt, 100.0)] })
    );

    let c = corr_with("temporal", "").unwrap();
    assert_eq!((c.kind, c.condition.clone(), c.group_by.is_empty()), (CorrelationKind::Temporal, None, true));
    let c = corr_with("temporal_ordered", "    condition: {eq: 2}\n").unwrap();
    assert_eq!(c.kind, CorrelationKind::TemporalOrdered);
    assert_eq!(c.condition.unwrap().bounds, [(CondOp::Eq, 2.0)]);

    let c = corr("correlation:\n    type: event_count\n    rules: one\n    timespan: 1h\n    condition: {lt: 3}\n")
        .unwrap();
    assert_eq!(c.rules, ["one"]);
    let c = corr("correlation:\n    type: event_count\n    rules: [53BA33FD-3A50-4468-A5EF-C583635CFA92]\n    timespan: 1h\n    condition: {lte: 3}\n").unwrap();
    assert_eq!(c.rules, ["53ba33fd-3a50-4468-a5ef-c583635cfa92"], "UUID references compare lowercase");

    for t in ["value_sum", "value_avg", "value_percentile", "value_median"] {
        let e = corr_with(t, "    condition: {field: X, gt: 1}\n").unwrap_err();
        assert!(e.contains(&format!("correlation type `{t}` is not supported")), "{e}");
    }
    assert!(corr_with("value_max", "    condition: {gt: 1}\n")
        .unwrap_err()
        .contains("unknown correlation type `value_max`"));
    assert!(corr("correlation:\n    rules: [a]\n    timespan: 1h\n")
        .unwrap_err()
        .contains("`correlation.type` is missing"));
    assert!(corr("correlation:\n    type: temporal\n    timespan: 1h\n").unwrap_err().contains("rules` is missing"));
    assert!(corr_with("temporal", "    bogus: 1\n").unwrap_err().contains("unknown key `bogus`"));
    assert!(corr("correlation: 5\n").unwrap_err().contains("must be a map"));
}

#[test]
fn correlation_conditions() {
    let bounds =
        |cond: &str| corr_with("event_count", &format!("    condition: {cond}\n")).map(|c| c.condition.unwrap().bounds);
    assert_eq!(bounds("{gt: 100, lte: 200}").unwrap(), [(CondOp::Gt, 100.0), (CondOp::Lte, 200.0)]);
    assert_eq!(bounds("{lt: 5, gte: 1}").unwrap(), [(CondOp::Lt, 5.0), (CondOp::Gte, 1.0)]);
    assert_eq!(bounds("{range: '10..20'}").unwrap(), [(CondOp::Gte, 10.0), (CondOp::Lte, 20.0)], "range is inclusive");
    assert_eq!(bounds("{range: 10..20}").unwrap(), [(CondOp::Gte, 10.0), (CondOp::Lte, 20.0)]);
    assert_eq!(bounds("{gte: 1.5}").unwrap(), [(CondOp::Gte, 1.5)]);
    assert!(bounds("{gt: 1, gte: 2}").unwrap_err().contains("needs a lower bound (gt/gte) at or below an upper bound"));
    assert!(bounds("{gt: 300, lt: 200}")
        .unwrap_err()
        .contains("needs a lower bound (gt/gte) at or below an upper bound"));
    assert!(bounds("{gt: 1, lt: 5, eq: 3}").unwrap_err().contains("one bound, or one lower and one upper"));
    assert!(bounds("{range: '20..10'}").unwrap_err().contains("min <= max"));
    assert!(bounds("{range: '10..20', gt: 1}").unwrap_err().contains("cannot be combined"));
    assert!(bounds("{neq: 1}").unwrap_err().contains("`neq` is not supported"));
    assert!(bounds("{gte: x}").unwrap_err().contains("must be a number"));
    assert!(bounds("{}").unwrap_err().contains("needs one of gt"));
    assert!(bounds("{foo: 1}").unwrap_err().contains("correlation condition `foo` is unknown"));
    assert!(bounds("'a and b'").unwrap_err().contains("boolean rule expressions"));
    assert!(bounds("{field: User, gte: 1}").unwrap_err().contains("only applies to value_count"));
    assert!(corr_with("value_count", "    condition: {gte: 1}\n").unwrap_err().contains("needs `field`"));
    assert!(corr_with("event_count", "").unwrap_err().contains("condition` is missing"));
    assert!(corr_with("value_count", "").unwrap_err().contains("condition` is missing"));
}

#[test]
fn correlation_timespans() {
    let ts = |t: &str| {
        corr(&format!("correlation:\n    type: temporal\n    rules: [a]\n    timespan: {t}\n")).map(|c| c.timespan_ms)
    };
    assert_eq!(ts("30s"), Ok(30_000));
    assert_eq!(ts("5m"), Ok(300_000));
    assert_eq!(ts("2h"), Ok(7_200_000));
    assert_eq!(ts("1d"), Ok(86_400_000));
    assert_eq!(ts("2w"), Ok(1_209_600_000));
    assert!(ts("0s").unwrap_err().contains("invalid timespan `0s`: it must be greater than zero"));
    assert!(ts("1h30m").unwrap_err().contains("e.g. `90m` for 1h30m"));
    assert!(ts("5").unwrap_err().contains("needs a unit"));
    assert!(ts("'5'").unwrap_err().contains("invalid timespan `5`"));
    assert!(ts("1M").unwrap_err().contains("months and years"));
    assert!(ts("1y").unwrap_err().contains("months and years"));
    assert!(ts("10 m").unwrap_err().contains("invalid timespan"));
    assert!(ts("99999999999999999999s").unwrap_err().contains("invalid timespan"));
    assert!(ts("9999999999999999d").unwrap_err().contains("too long"));
    assert!(corr("correlation:\n    type: temporal\n    rules: [a]\n").unwrap_err().contains("timespan` is missing"));
}

#[test]
fn correlation_generate_and_aliases() {
    let generate = |top: &str, inner: &str| {
        corr(&format!("{top}correlation:\n    type: temporal\n    rules: [a, b]\n    timespan: 1h\n{inner}"))
            .map(|c| c.generate)
    };
    assert_eq!(generate("", ""), Ok(None));
    assert_eq!(generate("generate: true\n", ""), Ok(Some(true)));
    assert_eq!(generate("", "    generate: true\n"), Ok(Some(true)));
    assert_eq!(generate("generate: false\n", "    generate: false\n"), Ok(Some(false)));
    assert!(generate("generate: true\n", "    generate: false\n").unwrap_err().contains("disagree"));
    assert!(generate("", "    generate: 'yes'\n").unwrap_err().contains("`generate` must be true or false"));

    let aliases = "    aliases:\n        ip:\n            a: source.ip\n            b: destination.ip\n";
    let c = corr_with("temporal", &format!("    group-by: [ip]\n{aliases}")).unwrap();
    assert_eq!(c.aliases["ip"]["b"], "destination.ip");
    let e = corr_with("temporal", "    aliases:\n        ip:\n            zzz: x\n").unwrap_err();
    assert!(e.contains("names rule `zzz`"), "{e}");
    assert!(corr_with("temporal", "    aliases: [x]\n").unwrap_err().contains("must be a map"));
}

#[test]
fn references_between_documents() {
    let text = "title: r\nname: base\nlogsource: {product: x}\ndetection:\n    sel: {A: 1}\n    condition: sel\n---\n\
                title: c\ncorrelation:\n    type: event_count\n    rules: [base, missing]\n    timespan: 1h\n    condition: {gte: 1}\n";
    let docs = parse_documents(text).unwrap();
    let e = check_references(&docs);
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("`missing`"));
    let mut twice = docs.clone();
    twice.push(docs[0].clone());
    assert!(check_references(&twice).iter().any(|e| e.message.contains("`base` is already")));
}

#[test]
fn sigma_detection() {
    assert!(looks_like_sigma("title: x\nlogsource:\n    product: linux\ndetection:\n    sel: {A: 1}\n"));
    assert!(looks_like_sigma("title: x\ncorrelation:\n    type: temporal\n"));
    assert!(looks_like_sigma("title: x\nlogsource: {product: x\ndetection: [broken\n"), "even with YAML errors");
    assert!(looks_like_sigma("# c\n---\ntitle: a\ncorrelation: {}\n---\ntitle: b\nlogsource: {}\ndetection: {}\n"));
    assert!(!looks_like_sigma("rules:\n  - id: x\n    detection: y\n    logsource: z\n"));
    assert!(!looks_like_sigma("title: x\ndetection: {}\n"), "detection without logsource");
    assert!(!looks_like_sigma("rules: []\n---\ntitle: x\ncorrelation: {}\n"));
    assert!(!looks_like_sigma(""));
}

#[test]
fn canonical_numbers() {
    use super::canon::py_number;
    let cases = [
        (4624.0, "4624"),
        (1.5, "1.5"),
        (-3.0, "-3"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.0, "0"),
        (1e20, "100000000000000000000"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.25e-7, "1.25e-07"),
    ];
    for (v, want) in cases {
        assert_eq!(py_number(v), want, "{v}");
    }
    // Single children collapse and same operators flatten, across the tree.
    let leaf = |n: f64| Expr::Keyword(Test::Number(n));
    let e = Expr::Or(vec![
        Expr::And(vec![leaf(1.0)]),
        Expr::Or(vec![leaf(2.0), Expr::Or(vec![leaf(3.0)])]),
        Expr::Not(Box::new(Expr::Or(vec![leaf(4.0), leaf(5.0)]))),
    ]);
    assert_eq!(canon(&e), "OR(kw:1, kw:2, kw:3, NOT(OR(kw:4, kw:5)))");
    assert_eq!(canon(&Expr::Field { field: "F".into(), test: Test::Exists(false) }), "F=exists:false");
    assert_eq!(canon(&Expr::Keyword(Test::Bool(false))), "kw:false");
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("title: t\nlogsource: {product: x}\nx0: &x0 [a, a, a, a, a, a, a, a, a]\n");
    for i in 1..10 {
        let p = format!("*x{}", i - 1);
        text += &format!("x{i}: &x{i} [{}]\n", [p.as_str(); 9].join(", "));
    }
    text += "detection:\n    sel: *x9\n    condition: sel\n";
    let e = errors(&text);
    assert!(e[0].message.starts_with("YAML:"), "{e:?}");
}
