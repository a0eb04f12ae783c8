//! Unit tests of the rules engine with the in-memory window store.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};

use super::compile::compile_sources;
use super::*;
use crate::event::{Classification, ComplianceFlags, EnrichedEvent, Severity, SourcePosition};
use crate::rule_match::{RuleKind, RuleMatch};

pub(crate) const T0: i64 = 1_700_000_000_000;

pub(crate) fn ev(id: &str, t_ms: i64) -> EnrichedEvent {
    EnrichedEvent {
        id: id.to_string(),
        timestamp: Utc.timestamp_millis_opt(t_ms).unwrap(),
        user_id: Some("alice".into()),
        session_id: None,
        action: "login".into(),
        resource: "authentication".into(),
        resource_id: None,
        method: None,
        endpoint: None,
        status_code: None,
        user_agent: None,
        ip_address: Some("10.0.0.5".into()),
        ip: None,
        location: None,
        classification: Classification::Internal,
        severity: Severity::Low,
        metadata: None,
        success: false,
        error_message: None,
        duration_ms: None,
        compliance: ComplianceFlags::default(),
        source: SourcePosition { topic: "t".into(), partition: 0, offset: 0, timestamp_ms: None },
        enriched_at: Utc.timestamp_millis_opt(t_ms).unwrap(),
        asn: None,
    }
}

fn engine(yaml: &str) -> RulesEngine {
    match compile_sources(&[(PathBuf::from("test.yaml"), yaml.to_string())]) {
        Ok(set) => RulesEngine::new(set),
        Err(e) => panic!("rules do not compile:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<RuleError> {
    match compile_sources(&[(PathBuf::from("bad.yaml"), yaml.to_string())]) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.0,
    }
}

/// Rule ids that matched each event, one batch per event.
fn run(e: &RulesEngine, store: &mut MemoryStore, events: &[EnrichedEvent]) -> Vec<Vec<RuleMatch>> {
    events
        .iter()
        .map(|x| e.evaluate(std::slice::from_ref(x), store, false).unwrap().pop().unwrap().matches)
        .collect()
}

fn fired_at(results: &[Vec<RuleMatch>], rule: &str) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, ms)| ms.iter().any(|m| m.rule_id == rule))
        .map(|(i, _)| i)
        .collect()
}

fn pattern_rule(cond: &str) -> String {
    format!("rules:\n  - id: r\n    name: R\n    severity: HIGH\n    action: ALERT\n    match:\n{cond}")
}

fn matches_one(cond: &str, event: &EnrichedEvent) -> bool {
    let e = engine(&pattern_rule(cond));
    let r = e.evaluate(std::slice::from_ref(event), &mut MemoryStore::new(), false).unwrap();
    !r[0].matches.is_empty()
}

// ---------------------------------------------------------------------------------- matching

#[test]
fn text_pattern_matches_action_and_resource_like_the_original_engine() {
    let cond = "      text: { regex: \"login|authentication\" }\n";
    assert!(matches_one(cond, &ev("a", T0)));
    let mut x = ev("b", T0);
    x.action = "LOGOUT".into();
    x.resource = "Authentication".into();
    assert!(matches_one(cond, &x), "case-insensitive, resource counts");
    x.resource = "session".into();
    assert!(!matches_one(cond, &x));
}

#[test]
fn case_sensitive_patterns_and_substrings() {
    let mut x = ev("a", T0);
    x.action = "Data_Export".into();
    assert!(matches_one("      action: { contains: export }\n", &x));
    assert!(matches_one("      action: { contains: [import, EXPORT] }\n", &x));
    assert!(!matches_one("      action: { contains: export, case_sensitive: true }\n", &x));
    assert!(matches_one("      action: { regex: \"^Data_\", case_sensitive: true }\n", &x));
    assert!(!matches_one("      action: { contains: \"a.e\" }\n", &x), "contains is literal, not a regex");
}

#[test]
fn any_field_includes_metadata_strings() {
    let mut x = ev("a", T0);
    x.metadata = Some(serde_json::json!({"export": {"format": "csv", "tags": ["quarterly-report"]}}));
    assert!(matches_one("      any: { contains: quarterly }\n", &x));
    x.error_message = Some("Invalid credentials".into());
    assert!(matches_one("      any: { regex: \"invalid cred\" }\n", &x));
    assert!(!matches_one("      any: { contains: nowhere }\n", &x));
}

#[test]
fn field_conditions() {
    let mut x = ev("a", T0);
    x.severity = Severity::High;
    x.classification = Classification::Confidential;
    x.status_code = Some(401);
    assert!(matches_one("      success: false\n", &x));
    assert!(!matches_one("      success: true\n", &x));
    assert!(matches_one("      severity: [HIGH, CRITICAL]\n", &x));
    assert!(matches_one("      severity: HIGH\n", &x));
    assert!(!matches_one("      severity: CRITICAL\n", &x));
    assert!(matches_one("      min_severity: MEDIUM\n", &x));
    assert!(!matches_one("      min_severity: CRITICAL\n", &x));
    assert!(matches_one("      classification: [CONFIDENTIAL, RESTRICTED]\n", &x));
    assert!(!matches_one("      classification: PUBLIC\n", &x));
    assert!(matches_one("      min_classification: CONFIDENTIAL\n", &x));
    assert!(matches_one("      status_code: [401, 403]\n", &x));
    assert!(!matches_one("      status_code: 500\n", &x));
}

#[test]
fn ip_in_cidr() {
    let x = ev("a", T0);
    assert!(matches_one("      ip_cidr: 10.0.0.0/8\n", &x));
    assert!(matches_one("      ip_cidr: [192.168.0.0/16, 10.0.0.0/24]\n", &x));
    assert!(!matches_one("      ip_cidr: 10.0.1.0/24\n", &x));
    let mut none = x.clone();
    none.ip_address = None;
    assert!(!matches_one("      ip_cidr: 0.0.0.0/0\n", &none), "no address, no match");
}

#[test]
fn metadata_conditions() {
    let mut x = ev("a", T0);
    x.metadata = Some(serde_json::json!({"export": {"format": "csv", "rows": 1500, "tags": ["pii", "bulk"]}}));
    let c = |s: &str| format!("      metadata:\n        - {s}\n");
    assert!(matches_one(&c("{ path: export.format, equals: csv }"), &x));
    assert!(!matches_one(&c("{ path: export.format, equals: json }"), &x));
    assert!(matches_one(&c("{ path: export.rows, equals: 1500 }"), &x));
    assert!(matches_one(&c("{ path: export.format, contains: CS }"), &x));
    assert!(matches_one(&c("{ path: export.tags, contains: pii }"), &x), "an array holding the value");
    assert!(matches_one(&c("{ path: export.tags.1, equals: bulk }"), &x), "array index in the path");
    assert!(matches_one(&c("{ path: export.rows, exists: true }"), &x));
    assert!(matches_one(&c("{ path: export.missing, exists: false }"), &x));
    assert!(!matches_one(&c("{ path: export.missing, equals: 1 }"), &x));
}

#[test]
fn any_of_and_not() {
    let mut x = ev("a", T0);
    x.success = true;
    x.severity = Severity::Critical;
    let cond = "      any_of:\n        - success: false\n        - severity: CRITICAL\n";
    assert!(matches_one(cond, &x));
    x.severity = Severity::Low;
    assert!(!matches_one(cond, &x));
    assert!(matches_one("      not: { ip_cidr: 192.168.0.0/16 }\n", &x));
    assert!(!matches_one("      not: { ip_cidr: 10.0.0.0/8 }\n", &x));
}

#[test]
fn one_regex_set_per_field_for_all_rules() {
    let yaml = "rules:\n".to_string()
        + &(0..50)
            .map(|i| {
                format!(
                    "  - id: r{i}\n    name: R\n    severity: LOW\n    action: LOG\n    match:\n      action: {{ regex: \"^act{i}$\" }}\n      text: {{ contains: res }}\n"
                )
            })
            .collect::<String>();
    let e = engine(&yaml);
    assert_eq!(e.rule_set().patterns.len(), 100, "each pattern compiled once");
    assert_eq!(e.rule_set().patterns.sets.len(), 2, "one RegexSet per field");
    let mut x = ev("a", T0);
    x.action = "act7".into();
    x.resource = "resource".into();
    let r = e.evaluate(&[x], &mut MemoryStore::new(), false).unwrap();
    let ids: Vec<&str> = r[0].matches.iter().map(|m| m.rule_id.as_str()).collect();
    assert_eq!(ids, vec!["r7"]);
}

#[test]
fn pattern_match_record_is_deterministic() {
    let e = engine(&pattern_rule("      text: { regex: login }\n"));
    let a = e.evaluate(&[ev("evt-1", T0)], &mut MemoryStore::new(), false).unwrap();
    let b = e.evaluate(&[ev("evt-1", T0)], &mut MemoryStore::new(), false).unwrap();
    assert_eq!(a, b);
    let m = &a[0].matches[0];
    assert_eq!(m.match_id, match_id("r", "evt-1"));
    assert_eq!(m.match_id, uuid::Uuid::new_v5(&engine::MATCH_ID_NAMESPACE, b"r\nevt-1").to_string());
    assert_eq!(m.kind, RuleKind::Pattern);
    assert_eq!(m.evidence_event_ids, vec!["evt-1".to_string()]);
    assert_eq!(m.matched_at, Utc.timestamp_millis_opt(T0).unwrap());
    assert!(m.group_key.is_empty() && m.window.is_none());
    assert_eq!(engine::match_key(m), "alice");
}

#[test]
fn disabled_rules_are_checked_but_not_run() {
    let e = engine(
        "rules:\n  - id: off\n    name: Off\n    enabled: false\n    severity: LOW\n    action: LOG\n    match:\n      success: false\n",
    );
    assert_eq!(e.rule_set().rule_count(), 0);
    assert_eq!(e.rule_set().disabled, vec!["off".to_string()]);
    let errs = errors(
        "rules:\n  - id: off\n    name: Off\n    enabled: false\n    severity: LOW\n    action: LOG\n    match:\n      action: { regex: \"(\" }\n",
    );
    assert_eq!(errs.len(), 1);
}

// ------------------------------------------------------------------------------- thresholds

fn threshold_rule(count: u64, window: &str, group_by: &str) -> String {
    format!(
        "rules:\n  - id: th\n    name: Threshold\n    severity: HIGH\n    action: ALERT\n    match:\n      success: false\n    threshold:\n      count: {count}\n      window: {window}\n      group_by: [{group_by}]\n"
    )
}

#[test]
fn threshold_fires_exactly_at_the_limit_once_per_window() {
    let e = engine(&threshold_rule(10, "60s", "user_id"));
    let mut store = MemoryStore::new();
    let events: Vec<EnrichedEvent> = (0..12).map(|i| ev(&format!("e{i}"), T0 + i * 1000)).collect();
    let r = run(&e, &mut store, &events);
    assert_eq!(fired_at(&r, "th"), vec![9], "the 10th event crosses; the 11th and 12th do not fire again");
    let m = &r[9][0];
    let w = m.window.as_ref().unwrap();
    assert_eq!((w.observed, w.limit, w.seconds), (10, 10, 60));
    assert_eq!(w.end, events[9].timestamp);
    assert_eq!(w.start.timestamp_millis(), T0 + 9000 - 60_000);
    assert_eq!(m.group_key.get("user_id").map(String::as_str), Some("alice"));
    assert_eq!(m.evidence_event_ids.len(), 10);
    assert_eq!(m.evidence_event_ids.last().map(String::as_str), Some("e9"), "the trigger is last");
    assert_eq!(m.match_id, match_id("th", "e9"));
    assert_eq!(store.threshold_members("th", "user_id=alice"), 12);
}

#[test]
fn threshold_window_edges_are_inclusive() {
    let e = engine(&threshold_rule(2, "60s", "user_id"));
    // exactly one window apart: both count
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0), ev("b", T0 + 60_000)]);
    assert_eq!(fired_at(&r, "th"), vec![1]);
    // one millisecond more: they do not
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0), ev("b", T0 + 60_001)]);
    assert!(fired_at(&r, "th").is_empty());
    // one below the limit never fires
    let e3 = engine(&threshold_rule(3, "60s", "user_id"));
    let r = run(&e3, &mut MemoryStore::new(), &[ev("a", T0), ev("b", T0 + 1)]);
    assert!(fired_at(&r, "th").is_empty());
}

#[test]
fn threshold_groups_are_separate_and_missing_group_values_skip() {
    let e = engine(&threshold_rule(2, "60s", "user_id"));
    let mut bob = ev("b", T0 + 1);
    bob.user_id = Some("bob".into());
    let mut nobody = ev("n", T0 + 2);
    nobody.user_id = None;
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0), bob, nobody]);
    assert!(fired_at(&r, "th").is_empty());
}

#[test]
fn threshold_uses_event_time_not_arrival() {
    let e = engine(&threshold_rule(3, "60s", "user_id"));
    // Arriving together, but two minutes apart in event time: no window holds three.
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0), ev("b", T0 + 120_000), ev("c", T0 + 240_000)]);
    assert!(fired_at(&r, "th").is_empty());
}

#[test]
fn threshold_sustained_activity_fires_again_after_a_window() {
    let e = engine(&threshold_rule(3, "60s", "user_id"));
    let events: Vec<EnrichedEvent> = (0..20).map(|i| ev(&format!("e{i:02}"), T0 + i * 10_000)).collect();
    let r = run(&e, &mut MemoryStore::new(), &events);
    // crossing at e02 (t=20s); quiet until one window later (t >= 80s): e08; then e14.
    assert_eq!(fired_at(&r, "th"), vec![2, 8, 14]);
}

#[test]
fn replayed_events_are_not_counted_twice_and_the_trigger_replays_the_same_match() {
    let e = engine(&threshold_rule(10, "60s", "user_id"));
    let mut store = MemoryStore::new();
    let events: Vec<EnrichedEvent> = (0..12).map(|i| ev(&format!("e{i}"), T0 + i * 1000)).collect();
    let first = run(&e, &mut store, &events);
    // The whole stream again (offset reset), and once more as one batch (a retried batch).
    let second = run(&e, &mut store, &events);
    let third = e.evaluate(&events, &mut store, false).unwrap();
    assert_eq!(store.threshold_members("th", "user_id=alice"), 12, "still 12 events in the window");
    assert_eq!(fired_at(&second, "th"), vec![9], "the trigger, re-processed, re-emits");
    assert_eq!(first[9], second[9], "…the very same match");
    assert_eq!(third[9].matches, first[9]);
    let all: usize = third.iter().map(|r| r.matches.len()).sum();
    assert_eq!(all, 1, "no second crossing");
    // A replay of events 0..9 alone (the trigger's batch re-read before it fired elsewhere)
    let fresh = &mut MemoryStore::new();
    let part: Vec<EnrichedEvent> = events[..5].to_vec();
    run(&e, fresh, &part);
    run(&e, fresh, &part);
    assert_eq!(fresh.threshold_members("th", "user_id=alice"), 5);
}

#[test]
fn out_of_order_events_are_counted_in_their_windows() {
    let e = engine(&threshold_rule(3, "60s", "user_id"));
    // Event times 0 s, 50 s, then a late one at 30 s: the window [−10 s, 50 s] holds all three.
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0), ev("b", T0 + 50_000), ev("late", T0 + 30_000)]);
    assert_eq!(fired_at(&r, "th"), vec![2], "the late event completes the window");
    let w = r[2][0].window.clone().unwrap();
    assert_eq!(w.observed, 3);
    assert_eq!(r[2][0].match_id, match_id("th", "late"));

    // A late event that completes a window ending after it: 30 s and 80 s arrive first, then
    // 60 s; [0 s, 60 s] holds two, [20 s, 80 s] holds all three.
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0 + 30_000), ev("c", T0 + 80_000), ev("late", T0 + 60_000)]);
    assert_eq!(fired_at(&r, "th"), vec![2]);
    let w = r[2][0].window.clone().unwrap();
    assert_eq!((w.start.timestamp_millis(), w.end.timestamp_millis()), (T0 + 20_000, T0 + 80_000));
    // 0 s, 100 s, then 50 s: no 60 s window holds three.
    let r = run(&e, &mut MemoryStore::new(), &[ev("a", T0), ev("c", T0 + 100_000), ev("late", T0 + 50_000)]);
    assert!(fired_at(&r, "th").is_empty());
}

#[test]
fn too_late_events_are_ignored() {
    let e = engine(&threshold_rule(2, "60s", "user_id"));
    let mut store = MemoryStore::new();
    run(&e, &mut store, &[ev("new", T0 + 10 * 60_000)]);
    // lateness defaults to the window: older than newest − 2 min is ignored
    let r = e.evaluate(&[ev("old", T0)], &mut store, true).unwrap();
    assert!(r[0].matches.is_empty());
    assert!(matches!(
        r[0].trace[0].outcome,
        TraceOutcome::Window { outcome: WindowOutcome::TooLate, .. }
    ));
    assert_eq!(store.threshold_members("th", "user_id=alice"), 1);
}

#[test]
fn old_window_state_is_trimmed() {
    let e = engine(&threshold_rule(100, "60s", "user_id"));
    let mut store = MemoryStore::new();
    let events: Vec<EnrichedEvent> = (0..50).map(|i| ev(&format!("e{i}"), T0 + i * 30_000)).collect();
    run(&e, &mut store, &events);
    // kept: 2 × window + lateness = 3 min behind the newest → 7 events (at 30 s spacing)
    assert_eq!(store.threshold_members("th", "user_id=alice"), 7);
}

// ---------------------------------------------------------------------------- distinct count

const DISTINCT: &str = "rules:\n  - id: spray\n    name: Spray\n    severity: HIGH\n    action: ALERT\n    match:\n      success: false\n    distinct:\n      field: user_id\n      more_than: 3\n      window: 10m\n      group_by: [ip_address]\n";

fn user(id: &str, t: i64, u: &str) -> EnrichedEvent {
    let mut x = ev(id, t);
    x.user_id = Some(u.into());
    x
}

#[test]
fn distinct_count_fires_above_k_distinct_values() {
    let e = engine(DISTINCT);
    let events = vec![
        user("a", T0, "u1"),
        user("b", T0 + 1000, "u1"),
        user("c", T0 + 2000, "u2"),
        user("d", T0 + 3000, "u3"),
        user("e", T0 + 4000, "u3"),
        user("f", T0 + 5000, "u4"),
        user("g", T0 + 6000, "u5"),
    ];
    let r = run(&e, &mut MemoryStore::new(), &events);
    assert_eq!(fired_at(&r, "spray"), vec![5], "the 4th distinct user is more than 3");
    let m = &r[5][0];
    let w = m.window.as_ref().unwrap();
    assert_eq!((w.observed, w.limit), (4, 4));
    assert_eq!(m.group_key.get("ip_address").map(String::as_str), Some("10.0.0.5"));
    // evidence: the newest event of each other user, then the trigger
    assert_eq!(m.evidence_event_ids, vec!["b", "c", "e", "f"]);
}

#[test]
fn distinct_count_window_edges_and_replay() {
    let e = engine(DISTINCT);
    let mut store = MemoryStore::new();
    // u1 falls out of the 10-minute window by 1 ms
    let events = vec![
        user("a", T0, "u1"),
        user("b", T0 + 1, "u2"),
        user("c", T0 + 2, "u3"),
        user("d", T0 + 600_001, "u4"),
    ];
    let r = run(&e, &mut store, &events);
    assert!(fired_at(&r, "spray").is_empty());
    // u2 seen again: still 3 distinct in [1 ms, 600 001 ms]; then u5 makes 4 in the next window
    let later = vec![user("e", T0 + 600_001, "u2"), user("f", T0 + 600_002, "u5")];
    let r = run(&e, &mut store, &later);
    assert_eq!(fired_at(&r, "spray"), vec![1]);
    assert_eq!(r[1][0].window.as_ref().unwrap().observed, 4);
    // replaying everything: the same single match, from the same trigger
    let again = run(&e, &mut store, &[events, later].concat());
    assert_eq!(fired_at(&again, "spray"), vec![5]);
    assert_eq!(again[5][0], r[1][0]);
}

// ---------------------------------------------------------------------------------- sequence

const SEQUENCE: &str = "rules:\n  - id: seq\n    name: Grant then export\n    severity: CRITICAL\n    action: ALERT\n    sequence:\n      within: 1h\n      group_by: [user_id]\n      steps:\n        - action: { regex: \"^grant_role$\" }\n        - action: { regex: \"^data_export$\" }\n";

fn act(id: &str, t: i64, action: &str) -> EnrichedEvent {
    let mut x = ev(id, t);
    x.action = action.into();
    x.resource = "x".into();
    x.success = true;
    x
}

#[test]
fn sequence_a_then_b_within_the_window() {
    let e = engine(SEQUENCE);
    let r = run(&e, &mut MemoryStore::new(), &[act("g", T0, "grant_role"), act("x", T0 + 3_600_000, "data_export")]);
    assert_eq!(fired_at(&r, "seq"), vec![1], "exactly one hour apart is within");
    let m = &r[1][0];
    assert_eq!(m.evidence_event_ids, vec!["g", "x"]);
    let w = m.window.as_ref().unwrap();
    assert_eq!((w.observed, w.limit, w.seconds), (2, 2, 3600));
    assert_eq!(m.group_key.get("user_id").map(String::as_str), Some("alice"));

    let r = run(&e, &mut MemoryStore::new(), &[act("g", T0, "grant_role"), act("x", T0 + 3_600_001, "data_export")]);
    assert!(fired_at(&r, "seq").is_empty(), "one millisecond too late");
    let r = run(&e, &mut MemoryStore::new(), &[act("x", T0, "data_export"), act("g", T0 + 1, "grant_role")]);
    assert!(fired_at(&r, "seq").is_empty(), "B before A is not the sequence");
    let mut other = act("x", T0 + 10, "data_export");
    other.user_id = Some("bob".into());
    let r = run(&e, &mut MemoryStore::new(), &[act("g", T0, "grant_role"), other]);
    assert!(fired_at(&r, "seq").is_empty(), "another user's export");
}

#[test]
fn sequence_each_grant_completes_once() {
    let e = engine(SEQUENCE);
    let mut store = MemoryStore::new();
    let events = [
        act("g1", T0, "grant_role"),
        act("x1", T0 + 1000, "data_export"),
        act("x2", T0 + 2000, "data_export"),
        act("g2", T0 + 3000, "grant_role"),
        act("x3", T0 + 4000, "data_export"),
    ];
    let r = run(&e, &mut store, &events);
    assert_eq!(fired_at(&r, "seq"), vec![1, 4]);
    assert_eq!(r[4][0].evidence_event_ids, vec!["g2", "x3"]);
    let again = run(&e, &mut store, &events);
    assert_eq!(fired_at(&again, "seq"), vec![1, 4], "a replay re-emits the same two");
    assert_eq!(again[1], r[1]);
}

#[test]
fn sequence_completed_by_a_late_first_step() {
    let e = engine(SEQUENCE);
    let r = run(&e, &mut MemoryStore::new(), &[act("x", T0 + 5000, "data_export"), act("g", T0, "grant_role")]);
    assert_eq!(fired_at(&r, "seq"), vec![1]);
    assert_eq!(r[1][0].evidence_event_ids, vec!["x", "g"], "chain in step order, the trigger last");
}

#[test]
fn sequence_keeps_the_newest_steps_and_fires_from_them() {
    let e = engine(SEQUENCE).with_limits(WindowLimits { sequence_keep: 3, ..WindowLimits::default() });
    let mut store = MemoryStore::new();
    let mut events: Vec<EnrichedEvent> = (0..10).map(|i| act(&format!("g{i}"), T0 + i * 1000, "grant_role")).collect();
    events.push(act("x", T0 + 20_000, "data_export"));
    let r = run(&e, &mut store, &events);
    assert_eq!(fired_at(&r, "seq"), vec![10]);
    assert_eq!(r[10][0].evidence_event_ids, vec!["g7", "x"], "the oldest first steps were let go");
    // Without the bound the chain starts at the oldest grant.
    let r = run(&engine(SEQUENCE), &mut MemoryStore::new(), &events);
    assert_eq!(r[10][0].evidence_event_ids, vec!["g0", "x"]);
}

/// One event stamped a day ahead of its receive time must not move its group's clock a day on:
/// then every current event of that user would be "too late" and the rule blind to them.
#[test]
fn a_future_dated_event_is_judged_at_its_receive_time() {
    let e = engine(&threshold_rule(3, "1m", "user_id"));
    let mut ahead = ev("ahead", T0 + 86_400_000);
    ahead.enriched_at = Utc.timestamp_millis_opt(T0).unwrap();
    let events = [ahead, ev("a", T0 + 1000), ev("b", T0 + 2000)];
    let r = run(&e, &mut MemoryStore::new(), &events);
    assert_eq!(fired_at(&r, "th"), vec![2], "the three count together in one minute");
    assert_eq!(r[2][0].evidence_event_ids, vec!["ahead", "a", "b"]);
    // Within the allowed skew an event keeps its own time.
    let mut soon = ev("soon", T0 + 60_000);
    soon.enriched_at = Utc.timestamp_millis_opt(T0).unwrap();
    let limits = WindowLimits::default();
    assert_eq!(limits.window_time_ms(&soon), T0 + 60_000);
    assert_eq!(limits.window_time_ms(&events[0]), T0);
    // A pattern match of a future-dated event is dated when it was received.
    let p = engine(&pattern_rule("      success: false\n"));
    let r = run(&p, &mut MemoryStore::new(), &events[..1]);
    assert_eq!(r[0][0].matched_at, Utc.timestamp_millis_opt(T0).unwrap());
    // Without the bound (as in `rules test`), the day-ahead event blinds the group.
    let unbounded = e.with_limits(WindowLimits { max_future_skew_ms: i64::MAX, ..WindowLimits::default() });
    let r = run(&unbounded, &mut MemoryStore::new(), &events);
    assert!(fired_at(&r, "th").is_empty());
}

// ----------------------------------------------------------------------------------- absence

const ABSENCE: &str = "rules:\n  - id: quiet\n    name: Quiet\n    severity: MEDIUM\n    action: ALERT\n    match:\n      metadata:\n        - { path: service, exists: true }\n    absence:\n      window: 15m\n      group_by: [metadata.service]\n";

fn from_service(id: &str, t: i64, service: &str) -> EnrichedEvent {
    let mut x = ev(id, t);
    x.metadata = Some(serde_json::json!({ "service": service }));
    x
}

#[test]
fn absence_reports_each_silence_once() {
    let e = engine(ABSENCE);
    let mut store = MemoryStore::new();
    run(&e, &mut store, &[from_service("a", T0, "billing"), from_service("b", T0 + 60_000, "hr")]);
    let at = |ms: i64| Utc.timestamp_millis_opt(T0 + ms).unwrap();
    assert!(e.check_clock(at(15 * 60_000 - 1), &mut store).unwrap().is_empty());
    let silent = e.check_clock(at(15 * 60_000), &mut store).unwrap();
    assert_eq!(silent.len(), 1, "billing is silent exactly 15 min after its last event");
    let m = &silent[0];
    assert_eq!(m.kind, RuleKind::Absence);
    assert_eq!(m.group_key.get("metadata.service").map(String::as_str), Some("billing"));
    assert!(m.event.is_none());
    assert_eq!(m.window.as_ref().unwrap().start, at(0));
    assert_eq!(m.matched_at, at(15 * 60_000));
    assert!(e.check_clock(at(20 * 60_000), &mut store).unwrap().len() == 1, "hr now, billing not again");
    assert!(e.check_clock(at(60 * 60_000), &mut store).unwrap().is_empty());
    // a replayed old event does not re-arm billing; a new one does
    run(&e, &mut store, &[from_service("a", T0, "billing")]);
    assert!(e.check_clock(at(90 * 60_000), &mut store).unwrap().is_empty());
    run(&e, &mut store, &[from_service("c", T0 + 91 * 60_000, "billing")]);
    let again = e.check_clock(at(120 * 60_000), &mut store).unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].match_id, m.match_id, "a new silence, a new match");
}

#[test]
fn absence_of_expected_sources_that_never_sent() {
    let yaml = ABSENCE.replace("      group_by: [metadata.service]\n", "      group_by: [metadata.service]\n      expected: [payroll]\n");
    let e = engine(&yaml);
    let mut store = MemoryStore::new();
    let at = |ms: i64| Utc.timestamp_millis_opt(T0 + ms).unwrap();
    assert!(e.check_clock(at(0), &mut store).unwrap().is_empty());
    let silent = e.check_clock(at(15 * 60_000), &mut store).unwrap();
    assert_eq!(silent.len(), 1);
    assert!(e.check_clock(at(45 * 60_000), &mut store).unwrap().is_empty(), "reported once");
}

// ------------------------------------------------------------------------------------ blocks

#[test]
fn block_rules_decide_blocks() {
    let yaml = "rules:\n  - id: bf\n    name: Brute force\n    severity: HIGH\n    action: BLOCK\n    match:\n      success: false\n    threshold:\n      count: 2\n      window: 60s\n      group_by: [ip_address]\n    block:\n      subject: ip\n      ttl: 15m\n";
    let e = engine(yaml);
    let mut store = MemoryStore::new();
    let r = e.evaluate(&[ev("a", T0), ev("b", T0 + 1)], &mut store, false).unwrap();
    assert!(r[0].blocks.is_empty());
    let b = &r[1].blocks[0];
    assert_eq!((b.subject_type.as_str(), b.subject.as_str(), b.ttl_seconds), ("ip", "10.0.0.5", 900));
    assert_eq!(b.rule_id, "bf");
    assert_eq!(b.match_id, r[1].matches[0].match_id);
    assert_eq!(b.decided_at, Utc.timestamp_millis_opt(T0 + 1).unwrap());
    assert!(b.reason.contains("2 events in 60 s"), "{}", b.reason);
    let json = serde_json::to_value(b).unwrap();
    for k in ["decisionId", "subjectType", "subject", "ttlSeconds", "ruleId", "reason", "decidedAt"] {
        assert!(json.get(k).is_some(), "{k} in {json}");
    }
    // In force for 15 minutes from the event: published while it lasts, not after.
    let op = b.store_op(T0 + 60_000).unwrap();
    assert!(matches!(op, WindowOp::Block { ttl_ms, .. } if ttl_ms == 900_000 + 1 - 60_000));
    assert!(b.store_op(T0 + 901_000).is_none(), "a replay of old events blocks nobody today");
    store.apply(&[op]).unwrap();
    assert!(store.blocks.contains_key(&("ip".to_string(), "10.0.0.5".to_string())));
}

// ----------------------------------------------------------------------- files and validation

#[test]
fn the_default_pack_compiles_and_matches_the_seed_examples() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let e = RulesEngine::load_dir(&dir).unwrap();
    let ids: Vec<String> = e.rule_set().rules().map(|(m, _)| m.id.to_string()).collect();
    for id in [
        "failed-login-attempts",
        "admin-actions",
        "data-export",
        "privilege-escalation",
        "failed-logins-per-user",
        "failed-logins-per-ip",
        "suspicious-activity",
        "password-spraying",
        "grant-then-export",
        "audit-source-silent",
        "bulk-pii-reads",
        "brute-force-then-success",
        "impossible-travel",
        "new-country-for-user",
        "new-network-for-user",
    ] {
        assert!(ids.contains(&id.to_string()), "{id} in {ids:?}");
    }
    // Building blocks of correlations with `generate: false` are not rules of their own.
    for id in ["role-granted", "data-exported", "failed-or-critical", "personal-data-read", "successful-login"] {
        assert!(!ids.contains(&id.to_string()), "{id} in {ids:?}");
    }
    let kinds: Vec<RuleKind> = e.rule_set().rules().map(|(_, k)| k).collect();
    for k in [
        RuleKind::Pattern,
        RuleKind::Threshold,
        RuleKind::DistinctCount,
        RuleKind::Sequence,
        RuleKind::Absence,
        RuleKind::ImpossibleTravel,
        RuleKind::FirstSeen,
    ] {
        assert!(kinds.contains(&k), "{k:?}");
    }
    // The original design's rules are Sigma now, and carry ATT&CK tags.
    let privilege = e.rule_set().rules().find(|(m, _)| &*m.id == "privilege-escalation").map(|(m, _)| m.clone()).unwrap();
    assert!(privilege.file.ends_with("auditflow-activity.yml"));
    assert!(privilege.tags.contains(&"attack.t1548".to_string()));
    let seed = |action: &str, resource: &str, success: bool| {
        let mut x = ev("s", T0);
        x.action = action.into();
        x.resource = resource.into();
        x.success = success;
        let r = e.evaluate(&[x], &mut MemoryStore::new(), false).unwrap();
        r[0].matches.iter().filter(|m| m.kind == RuleKind::Pattern).map(|m| m.rule_id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(seed("login", "authentication", false), vec!["failed-login-attempts"]);
    assert!(seed("login", "user_account", true).is_empty(), "a successful login is only a step of brute-force-then-success");
    assert_eq!(seed("delete_user", "user_management", true), vec!["admin-actions"]);
    assert_eq!(seed("data_export", "customer_data", true), vec!["data-export"]);
    assert_eq!(seed("grant_role", "iam", true), vec!["privilege-escalation"]);
}

#[test]
fn unknown_fields_are_rejected_with_their_line() {
    let errs = errors("rules:\n  - id: a\n    name: A\n    severity: LOW\n    action: LOG\n    treshold:\n      count: 3\n");
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.message.contains("unknown field `treshold`"), "{e}");
    assert!(e.to_string().starts_with("bad.yaml:6:"), "{e}");
    let errs = errors(&pattern_rule("      succes: false\n"));
    assert_eq!(errs[0].line, Some(7), "{}", errs[0]);
}

#[test]
fn invalid_regex_cidr_duration_and_fields_point_at_their_line() {
    let errs = errors(&pattern_rule("      action: { regex: \"(unclosed\" }\n"));
    assert_eq!(errs[0].line, Some(7), "{}", errs[0]);
    assert!(errs[0].message.contains("invalid regex"), "{}", errs[0]);
    let errs = errors(&pattern_rule("      ip_cidr: [10.0.0.0/8, 300.1.2.3/8]\n"));
    assert_eq!(errs[0].line, Some(7), "{}", errs[0]);
    assert!(errs[0].message.contains("invalid CIDR \"300.1.2.3/8\""), "{}", errs[0]);
    let errs = errors(&pattern_rule("      severity: URGENT\n"));
    assert!(errs[0].message.contains("LOW, MEDIUM, HIGH, CRITICAL"), "{}", errs[0]);
    let errs = errors(&threshold_rule(3, "5 fortnights", "user_id"));
    assert!(errs[0].message.contains("duration"), "{}", errs[0]);
    assert_eq!(errs[0].line, Some(10), "{}", errs[0]);
    let errs = errors(&threshold_rule(3, "60s", "userid"));
    assert!(errs[0].message.contains("unknown field \"userid\""), "{}", errs[0]);
    assert_eq!(errs[0].line, Some(11), "{}", errs[0]);
}

#[test]
fn every_broken_rule_of_a_file_is_reported() {
    let yaml = "rules:\n  - id: a\n    name: A\n    severity: LOW\n    action: LOG\n    match:\n      text: { regex: \"admin(\" }\n  - id: ok\n    name: OK\n    severity: LOW\n    action: LOG\n    match: { success: true }\n  - id: c\n    name: C\n    severity: LOW\n    action: LOG\n    treshold: { count: 3, window: 1m }\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (Some(7), Some(13)), "{}", errs[0]);
    assert!(errs[0].message.starts_with("rules[0].match.text: invalid regex"), "{}", errs[0]);
    assert_eq!(errs[1].line, Some(17), "{}", errs[1]);
    assert!(errs[1].message.contains("rules[2]: unknown field `treshold`"), "{}", errs[1]);
}

#[test]
fn whole_rule_problems_and_duplicates_point_at_the_rule() {
    let yaml = "rules:\n  - id: a\n    name: A\n    severity: LOW\n    action: LOG\n    match: { success: false }\n\n  - name: B\n    id: b\n    severity: LOW\n    action: BLOCK\n    match: { success: false }\n  - id: a\n    name: A again\n    severity: LOW\n    action: LOG\n    match: { success: false }\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].line, Some(9));
    assert!(errs[0].message.contains("action BLOCK needs a `block:` section"), "{}", errs[0]);
    assert_eq!(errs[1].line, Some(13));
    assert!(errs[1].message.contains("duplicate rule id `a` (first defined at bad.yaml:2)"), "{}", errs[1]);

    let both = "rules:\n  - id: a\n    name: A\n    severity: LOW\n    action: LOG\n    threshold: { count: 2, window: 1m }\n    absence: { window: 1m, group_by: [user_id] }\n";
    assert!(errors(both)[0].message.contains("at most one of"));
    let empty = "rules:\n  - id: a\n    name: A\n    severity: LOW\n    action: LOG\n";
    assert!(errors(empty)[0].message.contains("at least one condition"));
    let bad_id = "rules:\n  - id: \"has space\"\n    name: A\n    severity: LOW\n    action: LOG\n    match: { success: true }\n";
    assert!(errors(bad_id)[0].message.contains("letters, digits"));
    let one_step = "rules:\n  - id: s\n    name: S\n    severity: LOW\n    action: LOG\n    sequence:\n      within: 1h\n      group_by: [user_id]\n      steps:\n        - success: true\n";
    assert!(errors(one_step)[0].message.contains("2..=8 steps"));
}

#[test]
fn duplicate_ids_across_files_and_yaml_syntax_errors() {
    let a = (PathBuf::from("rules/a.yaml"), pattern_rule("      success: false\n"));
    let b = (PathBuf::from("rules/b.yaml"), pattern_rule("      success: true\n"));
    let c = (PathBuf::from("rules/c.yaml"), "rules:\n  - id: x\n    name: [unclosed\n".to_string());
    let errs = compile_sources(&[a, b, c]).unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].to_string(), "rules/b.yaml:2: duplicate rule id `r` (first defined at rules/a.yaml:2)");
    assert_eq!(errs[1].file, PathBuf::from("rules/c.yaml"));
    assert!(errs[1].line.is_some(), "{}", errs[1]);
}

#[test]
fn reload_refuses_a_bad_file_and_keeps_the_rules_in_force() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), pattern_rule("      success: false\n")).unwrap();
    let (mut watcher, first) = reload::RuleWatcher::start(dir.path(), 0).unwrap();
    assert_eq!(first.rule_set().rule_count(), 1);
    assert!(watcher.poll().is_none(), "no interval, no request: nothing to do");

    std::fs::write(dir.path().join("b.yaml"), "rules:\n  - id: b\n    name: B\n    severity: LOW\n    action: LOG\n    match:\n      action: { regex: \"[\" }\n").unwrap();
    watcher.requested.store(true, std::sync::atomic::Ordering::SeqCst);
    match watcher.poll() {
        Some(reload::Reload::Refused(errors)) => {
            assert!(errors.to_string().contains("b.yaml:7"), "{errors}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    std::fs::write(dir.path().join("b.yaml"), "rules:\n  - id: b\n    name: B\n    severity: LOW\n    action: LOG\n    match:\n      action: { regex: \"x\" }\n").unwrap();
    watcher.requested.store(true, std::sync::atomic::Ordering::SeqCst);
    match watcher.poll() {
        Some(reload::Reload::Loaded(engine)) => assert_eq!(engine.rule_set().rule_count(), 2),
        other => panic!("expected the fixed set, got {other:?}"),
    }
}

#[test]
fn reload_polls_for_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), pattern_rule("      success: false\n")).unwrap();
    let (mut watcher, _) = reload::RuleWatcher::start(dir.path(), 1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(watcher.poll().is_none(), "unchanged files are not reloaded");
    std::fs::write(dir.path().join("a.yaml"), pattern_rule("      success: true\n      min_severity: HIGH\n")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(matches!(watcher.poll(), Some(reload::Reload::Loaded(_))));
}

#[test]
fn durations() {
    use super::model::parse_duration;
    assert_eq!(parse_duration("500ms"), Ok(500));
    assert_eq!(parse_duration("60s"), Ok(60_000));
    assert_eq!(parse_duration("60"), Ok(60_000));
    assert_eq!(parse_duration("10m"), Ok(600_000));
    assert_eq!(parse_duration("1h"), Ok(3_600_000));
    assert_eq!(parse_duration("1d"), Ok(86_400_000));
    assert!(parse_duration("1w").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn group_keys_round_trip() {
    let g = engine::encode_group(&[("metadata.service", "a&b=c%"), ("user_id", "x")]);
    assert_eq!(g, "metadata.service=a%26b%3Dc%25&user_id=x");
    let back = engine::decode_group(&g);
    assert_eq!(back.get("metadata.service").map(String::as_str), Some("a&b=c%"));
    assert_eq!(back.get("user_id").map(String::as_str), Some("x"));
}
