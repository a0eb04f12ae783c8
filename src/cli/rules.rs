//! `auditflow rules validate PATH`, `auditflow rules test DIR --events F.jsonl` and
//! `auditflow rules convert PATH…`.
//!
//! `validate` compiles the rule files (native or Sigma) exactly as `audit-rules` does and reports
//! every problem with its file and line. `test` runs the whole engine over a file of events with
//! an in-memory window store (no Kafka, no Redis) and prints, per event, the rules that matched
//! and the window state of the stateful ones; absence and aggregate rules are checked on a clock
//! that follows the events' times. `convert` prints the native rules Sigma files compile to.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::cli::emit::InputError;
use crate::enrich::{EnrichConfig, Enricher};
use crate::event::{EnrichedEvent, SourcePosition};
use crate::rule_match::{RuleKind, RuleMatch};
use crate::rules::sigma::native::SigmaFields;
use crate::rules::{compile, MemoryStore, RuleError, RuleErrors, RulesEngine, TraceOutcome, WindowLimits, WindowOutcome};

/// The rule files of `paths` (directories: their rule files; files: themselves), read, with the
/// Sigma field mapping of the (first) directory they are in.
fn sources(paths: &[PathBuf]) -> Result<(Vec<(PathBuf, String)>, SigmaFields), RuleErrors> {
    let one = |e: RuleError| RuleErrors(vec![e]);
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(compile::rule_files(p).map_err(one)?);
        } else {
            files.push(p.clone());
        }
    }
    let home = paths.first().map(|p| if p.is_dir() { p.clone() } else { p.parent().map(Path::to_path_buf).unwrap_or_default() });
    let fields = compile::sigma_fields(&home.unwrap_or_default()).map_err(one)?;
    let mut out = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => out.push((f, text)),
            Err(e) => errors.push(RuleError { file: f, line: None, column: None, message: format!("cannot read: {e}") }),
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(RuleError { file: paths.first().cloned().unwrap_or_default(), line: None, column: None, message: "no rule files (*.yaml, *.yml)".into() });
    }
    if errors.is_empty() {
        Ok((out, fields))
    } else {
        Err(RuleErrors(errors))
    }
}

/// What `rules validate` found: a directory of rule files, or one file.
pub fn validate(path: &Path, out: &mut dyn Write) -> Result<(), RuleErrors> {
    let engine = if path.is_dir() {
        RulesEngine::load_dir(path)?
    } else {
        let (sources, fields) = sources(&[path.to_path_buf()])?;
        RulesEngine::new(compile::compile_with(&sources, &fields)?)
    };
    let dir = path;
    let set = engine.rule_set();
    let _ = writeln!(
        out,
        "ok: {} rules in force, {} disabled, in {} file(s) under {}",
        set.rule_count(),
        set.disabled.len(),
        set.files.len(),
        dir.display()
    );
    for (meta, kind) in set.rules() {
        let _ = writeln!(
            out,
            "  {:<28} {:<17} {:<8} {:<6} {}",
            meta.id,
            RuleKind::as_str(kind),
            meta.severity.as_str(),
            format!("{:?}", meta.action).to_uppercase(),
            meta.name
        );
    }
    for id in &set.disabled {
        let _ = writeln!(out, "  {id:<28} (disabled)");
    }
    Ok(())
}

/// `rules convert`: the native rules the Sigma files among `paths` compile to, as one native
/// rule file, each rule headed by the Sigma file and line it comes from. Every file given is
/// compiled (a correlation may name rules of another file); the native ones are not printed.
pub fn convert(paths: &[PathBuf], out: &mut dyn Write) -> Result<usize, RuleErrors> {
    let (sources, fields) = sources(paths)?;
    // The whole set must compile, as audit-rules would load it.
    compile::compile_with(&sources, &fields)?;
    let (defs, errors) = compile::read_defs(&sources, &fields);
    if !errors.is_empty() {
        return Err(RuleErrors(errors));
    }
    let sigma_files: Vec<&PathBuf> = sources.iter().filter(|(_, t)| crate::rules::sigma::looks_like_sigma(t)).map(|(p, _)| p).collect();
    let _ = writeln!(out, "# Native rules compiled from Sigma by `auditflow rules convert`.\nrules:");
    let mut n = 0;
    for (file, line, def) in defs.iter().filter(|(f, _, _)| sigma_files.contains(&f)) {
        let yaml = serde_norway::to_string(&[def]).map_err(|e| {
            RuleErrors(vec![RuleError { file: file.clone(), line: *line, column: None, message: format!("cannot write the native rule: {e}") }])
        })?;
        let _ = writeln!(out, "  # {}{}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default());
        for l in yaml.lines() {
            let _ = writeln!(out, "  {l}");
        }
        n += 1;
    }
    Ok(n)
}

/// Options of `rules test`.
pub struct TestOptions {
    pub rules_dir: PathBuf,
    pub events: PathBuf,
    /// Print matches as JSON lines instead of the readable report.
    pub json: bool,
    /// Check absence rules once more at this time after the last event (default: its time).
    pub until: Option<DateTime<Utc>>,
}

/// Totals of a `rules test` run.
#[derive(Debug, Default, PartialEq)]
pub struct TestSummary {
    pub events: usize,
    pub matches: usize,
    pub by_rule: BTreeMap<String, usize>,
}

/// Parse one line of the events file: an enriched event (has `enrichedAt`) as is, anything
/// else as a raw event, validated and enriched as `audit-enrich` would.
fn parse_event(line: &str, line_no: usize, enricher: &Enricher) -> Result<EnrichedEvent, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("enrichedAt").is_some() {
        return serde_json::from_value(value).map_err(|e| format!("not an enriched event: {e}"));
    }
    let source = SourcePosition {
        topic: "rules-test".into(),
        partition: 0,
        offset: line_no as i64,
        timestamp_ms: Some(Utc::now().timestamp_millis()),
    };
    enricher.enrich(line.as_bytes(), &source, Utc::now()).map_err(|r| format!("invalid event: {r}"))
}

pub fn run_test(
    opts: &TestOptions,
    enrich: &EnrichConfig,
    out: &mut dyn Write,
) -> Result<TestSummary, anyhow::Error> {
    // Offline, events are judged at their own times however far they are from today.
    let engine = RulesEngine::load_dir(&opts.rules_dir)
        .map_err(|e| InputError(format!("invalid rules in {}:\n{e}", opts.rules_dir.display())))?
        .with_limits(WindowLimits { max_future_skew_ms: i64::MAX, ..WindowLimits::default() });
    let enricher = Enricher::new(enrich)?;
    let reader: Box<dyn BufRead> = if opts.events.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&opts.events)
            .map_err(|e| InputError(format!("{}: {e}", opts.events.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| InputError(format!("{}: {e}", opts.events.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = parse_event(&line, i + 1, &enricher)
            .map_err(|e| InputError(format!("{}:{}: {e}", opts.events.display(), i + 1)))?;
        events.push(ev);
    }

    let mut store = MemoryStore::new();
    let mut summary = TestSummary::default();
    let mut clock: Option<DateTime<Utc>> = None;
    for (n, ev) in events.iter().enumerate() {
        // Absence rules see a clock that follows the events (never going back).
        if clock.is_none_or(|c| ev.timestamp > c) {
            clock = Some(ev.timestamp);
        }
        if let Some(now) = clock {
            for m in engine.check_clock(now, &mut store)? {
                report_silence(&m, opts.json, out, &mut summary)?;
            }
        }
        let result = engine
            .evaluate(std::slice::from_ref(ev), &mut store, true)?
            .pop()
            .unwrap_or_default();
        summary.events += 1;
        if opts.json {
            for m in &result.matches {
                writeln!(out, "{}", serde_json::to_string(m)?)?;
            }
        } else {
            writeln!(
                out,
                "event {} {} {} {} user={} ip={} success={} severity={} id={}",
                n + 1,
                ev.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ev.action,
                ev.resource,
                ev.user_id.as_deref().unwrap_or("-"),
                ev.ip_address.as_deref().unwrap_or("-"),
                ev.success,
                ev.severity,
                ev.id
            )?;
            for m in result.matches.iter().filter(|m| m.kind == RuleKind::Pattern) {
                let action = format!("{:?}", m.action).to_uppercase();
                writeln!(out, "  MATCH  {:<28} pattern        {} {action} match={}", m.rule_id, m.severity, m.match_id)?;
            }
            for t in &result.trace {
                let line = match &t.outcome {
                    TraceOutcome::NoGroup => "no value for group_by/field: skipped".to_string(),
                    TraceOutcome::Seen => "last seen now".to_string(),
                    TraceOutcome::Window { outcome, window_ms, limit } => {
                        let win = format_ms(*window_ms);
                        match outcome {
                            WindowOutcome::Counted { observed } => format!("{observed}/{limit} in {win}"),
                            WindowOutcome::Suppressed { observed } => {
                                format!("{observed}/{limit} in {win} (already fired in this window)")
                            }
                            WindowOutcome::TooLate => "too late: older than the window allows; ignored".into(),
                            WindowOutcome::Fired { firing, replayed } => {
                                let m = result.matches.iter().find(|m| *m.rule_id == *t.rule_id);
                                format!(
                                    "FIRED {}/{} in {win}, window {} .. {}{} match={}",
                                    firing.observed,
                                    firing.limit,
                                    fmt_ms(firing.start_ms),
                                    fmt_ms(firing.end_ms),
                                    if *replayed { " (replayed trigger)" } else { "" },
                                    m.map(|m| m.match_id.as_str()).unwrap_or("-")
                                )
                            }
                            other => format!("{other:?}"),
                        }
                    }
                };
                let tag = if matches!(&t.outcome, TraceOutcome::Window { outcome: WindowOutcome::Fired { .. }, .. }) {
                    "MATCH "
                } else {
                    "window"
                };
                writeln!(out, "  {tag} {:<28} {:<14} {:<30} {line}", t.rule_id, RuleKind::as_str(t.kind), t.group)?;
            }
            for b in &result.blocks {
                writeln!(out, "  BLOCK  {} {} for {} s ({})", b.subject_type, b.subject, b.ttl_seconds, b.reason)?;
            }
        }
        summary.matches += result.matches.len();
        for m in &result.matches {
            *summary.by_rule.entry(m.rule_id.clone()).or_default() += 1;
        }
    }
    let end = opts.until.or(clock);
    if let Some(now) = end {
        for m in engine.check_clock(now, &mut store)? {
            report_silence(&m, opts.json, out, &mut summary)?;
        }
    }
    if !opts.json {
        writeln!(out, "summary: {} events, {} matches", summary.events, summary.matches)?;
        for (rule, n) in &summary.by_rule {
            writeln!(out, "  {rule:<28} {n}")?;
        }
    }
    Ok(summary)
}

fn report_silence(m: &RuleMatch, json: bool, out: &mut dyn Write, summary: &mut TestSummary) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(m)?)?;
    } else if let Some(w) = &m.window {
        let group: Vec<String> = m.group_key.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "SILENT {:<28} absence        {:<30} nothing since {} ({} s) match={}",
            m.rule_id,
            group.join("&"),
            w.start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            w.seconds,
            m.match_id
        )?;
    }
    summary.matches += 1;
    *summary.by_rule.entry(m.rule_id.clone()).or_default() += 1;
    Ok(())
}

fn fmt_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn format_ms(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn rules_test_runs_the_example_events_through_the_default_pack() {
        let opts = TestOptions {
            rules_dir: root().join("rules"),
            events: root().join("examples/rules-events.jsonl"),
            json: false,
            until: Some("2025-11-26T19:00:00Z".parse().unwrap()),
        };
        let mut out = Vec::new();
        let summary = run_test(&opts, &EnrichConfig::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(summary.events, 17);
        for (rule, n) in [
            ("failed-login-attempts", 15),
            ("failed-logins-per-user", 1),
            ("failed-logins-per-ip", 1),
            ("suspicious-activity", 1),
            ("password-spraying", 1),
            ("grant-then-export", 1),
            ("audit-source-silent", 3),
        ] {
            assert_eq!(summary.by_rule.get(rule), Some(&n), "{rule}:\n{text}");
        }
        assert!(text.contains("9/10 in 1m"), "window state per event:\n{text}");
        assert!(text.contains("FIRED 10/10 in 1m"), "{text}");
        assert!(text.contains("BLOCK  ip 203.0.113.7 for 900 s"), "{text}");

        let mut json = Vec::new();
        let opts = TestOptions { json: true, ..opts };
        run_test(&opts, &EnrichConfig::default(), &mut json).unwrap();
        let matches: Vec<RuleMatch> = String::from_utf8(json)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(matches.len(), summary.matches);
    }

    #[test]
    fn rules_test_reports_the_line_of_a_bad_event() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("e.jsonl");
        std::fs::write(&events, "{\"action\":\"login\",\"resource\":\"x\"}\n{\"action\":\"login\"}\n").unwrap();
        let opts = TestOptions { rules_dir: root().join("rules"), events, json: false, until: None };
        let err = run_test(&opts, &EnrichConfig::default(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("e.jsonl:2: invalid event: missing_field"), "{err}");
    }

    #[test]
    fn validate_lists_the_rules() {
        let mut out = Vec::new();
        validate(&root().join("rules"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("ok: 16 rules in force"), "{text}");
        assert!(text.contains("impossible-travel") && text.contains("impossible_travel"), "{text}");
        assert!(text.contains("bulk-pii-reads"), "{text}");
        assert!(text.contains("grant-then-export") && text.contains("sequence"), "{text}");
    }
}
