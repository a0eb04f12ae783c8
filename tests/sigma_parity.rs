//! auditflow's Sigma reading against pySigma (PyPI `pysigma`, pinned, installed by
//! `scripts/prereqs` in its own virtualenv): every shipped Sigma file is valid Sigma to pySigma
//! and means the same condition tree to both, and a table of condition and modifier cases
//! (`tests/sigma/cases`) parses to the same trees, except the differences listed, each with its
//! reason, in `tests/sigma/expected_differences.tsv`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use auditflow::rules::sigma::{canon, check_references, looks_like_sigma, parse_documents, CondOp, CorrelationKind, SigmaDoc};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let stack = std::env::var("AUDITFLOW_STACK_DIR").map(PathBuf::from).unwrap_or_else(|_| repo().join(".stack"));
    let p = stack.join("pysigma/bin/python");
    assert!(p.exists(), "{} missing: run scripts/prereqs (it installs pySigma)", p.display());
    p
}

/// pySigma's lines for `files`, refusals as `<file>\tERROR`.
fn pysigma(files: &[PathBuf]) -> BTreeMap<String, Vec<String>> {
    let out = Command::new(python())
        .arg(repo().join("tests/sigma/pysigma_canon.py"))
        .args(files)
        .output()
        .expect("run pysigma_canon.py");
    assert!(out.status.success(), "pysigma_canon.py: {}", String::from_utf8_lossy(&out.stderr));
    group(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string))
}

/// The same lines from auditflow's own parser.
fn ours(files: &[PathBuf]) -> BTreeMap<String, Vec<String>> {
    let num = |v: f64| if v.fract() == 0.0 { format!("{v:.0}") } else { v.to_string() };
    let mut lines = Vec::new();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let text = std::fs::read_to_string(path).expect("read case");
        let docs = parse_documents(&text).and_then(|d| {
            let problems = check_references(&d);
            if problems.is_empty() {
                Ok(d)
            } else {
                Err(problems)
            }
        });
        let Ok(docs) = docs else {
            lines.push(format!("{name}\tERROR"));
            continue;
        };
        for d in &docs {
            let m = d.meta();
            let r = m.name.clone().or(m.id.clone()).unwrap_or_else(|| "None".into());
            match d {
                SigmaDoc::Rule(rule) => {
                    for (i, e) in rule.detection.iter().enumerate() {
                        lines.push(format!("{name}\t{r}\t{i}\t{}", canon(e)));
                    }
                }
                SigmaDoc::Correlation(c) => {
                    let cond = match &c.condition {
                        None => format!("gte {}", c.rules.len()),
                        Some(cc) => {
                            let bounds: Vec<String> = cc
                                .bounds
                                .iter()
                                .map(|(op, v)| {
                                    let op = match op {
                                        CondOp::Gt => "gt",
                                        CondOp::Gte => "gte",
                                        CondOp::Lt => "lt",
                                        CondOp::Lte => "lte",
                                        CondOp::Eq => "eq",
                                    };
                                    format!("{op} {}", num(*v))
                                })
                                .collect();
                            bounds.join(",") + &cc.field.as_ref().map(|f| format!(" field={f}")).unwrap_or_default()
                        }
                    };
                    let kind = match c.kind {
                        CorrelationKind::EventCount => "event_count",
                        CorrelationKind::ValueCount => "value_count",
                        CorrelationKind::Temporal => "temporal",
                        CorrelationKind::TemporalOrdered => "temporal_ordered",
                    };
                    lines.push(format!(
                        "{name}\t{r}\tcorr\ttype={kind} rules={} group_by={} timespan={}s cond={cond} generate={}",
                        c.rules.join(","),
                        c.group_by.join(","),
                        c.timespan_ms / 1000,
                        c.generate.unwrap_or(false)
                    ));
                }
            }
        }
    }
    group(lines.into_iter())
}

/// Lines by file, sorted (pySigma orders a file's documents by reference), refusals reduced to
/// `ERROR` (the reasons are worded differently by design).
fn group(lines: impl Iterator<Item = String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let file = l.split('\t').next().unwrap_or_default().to_string();
        let l = if l.split('\t').nth(1) == Some("ERROR") { format!("{file}\tERROR") } else { l };
        out.entry(file).or_default().push(l);
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

fn files_in(dir: &Path, sigma_only: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .filter(|p| !sigma_only || looks_like_sigma(&std::fs::read_to_string(p).unwrap_or_default()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_condition_cases_parse_to_the_same_trees_as_pysigma() {
    let cases = files_in(&repo().join("tests/sigma/cases"), false);
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let expected: BTreeSet<String> = std::fs::read_to_string(repo().join("tests/sigma/expected_differences.tsv"))
        .expect("expected differences")
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect();
    let (theirs, mine) = (pysigma(&cases), ours(&cases));
    let mut same = 0;
    for case in &cases {
        let name = case.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let (a, b) = (theirs.get(&name), mine.get(&name));
        if expected.contains(&name) {
            assert_ne!(a, b, "{name} is listed as a difference but both read it alike: {a:?}");
        } else {
            assert_eq!(a, b, "{name}: pySigma (left) and auditflow (right) read it differently");
            same += 1;
        }
    }
    // Refusals on both sides are among the agreements: check some accepted trees are compared.
    let trees = mine.values().flatten().filter(|l| !l.ends_with("\tERROR")).count();
    assert!(same >= 60 && trees >= 60, "{same} identical cases, {trees} trees");
}

#[test]
fn the_shipped_sigma_rules_are_valid_sigma_and_mean_the_same_to_pysigma() {
    let shipped = files_in(&repo().join("rules"), true);
    assert!(shipped.len() >= 2, "{shipped:?}");
    let (theirs, mine) = (pysigma(&shipped), ours(&shipped));
    for f in &shipped {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let lines = theirs.get(&name).unwrap_or_else(|| panic!("pySigma printed nothing for {name}"));
        assert!(!lines.iter().any(|l| l.ends_with("\tERROR")), "pySigma refuses {name}: {lines:?}");
        assert_eq!(Some(lines), mine.get(&name), "{name}: pySigma (left) and auditflow (right)");
    }
    // All of them as one rule set: every reference resolves for pySigma too.
    let out = Command::new(python())
        .arg(repo().join("tests/sigma/pysigma_canon.py"))
        .arg("--collection")
        .args(&shipped)
        .output()
        .expect("run pysigma_canon.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("collection\tOK"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // And auditflow runs them, reporting exactly the rules pySigma would generate output for
    // (`generate`: a rule a correlation uses is reported only if that correlation says so).
    let engine = auditflow::rules::RulesEngine::load_dir(&repo().join("rules")).expect("the shipped rules compile");
    let mut reported: Vec<String> = engine
        .rule_set()
        .rules()
        .filter(|(m, _)| m.generate && m.file.extension().is_some_and(|e| e == "yml"))
        .map(|(m, _)| m.id.to_string())
        .collect();
    reported.sort();
    let theirs: Vec<&str> = text.trim_end().split('\t').nth(3).unwrap_or_default().split(',').collect();
    assert_eq!(reported, theirs, "auditflow's reported Sigma rules (left) and pySigma's output rules (right)");
}
