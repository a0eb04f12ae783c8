//! Sigma rules through the engine (memory store): what each condition and modifier matches,
//! what each correlation type fires, `generate`, and what is refused and why.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};

use crate::event::{EnrichedEvent, Location};
use crate::rule_match::{RuleAction, RuleKind, RuleMatch};
use crate::rules::compile::compile_sources;
use crate::rules::tests::{ev, T0};
use crate::rules::{MemoryStore, RuleError, RulesEngine};

fn engine(files: &[&str]) -> RulesEngine {
    let sources: Vec<(PathBuf, String)> = files.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("s{i}.yml")), t.to_string())).collect();
    match compile_sources(&sources) {
        Ok(set) => RulesEngine::new(set),
        Err(e) => panic!("rules do not compile:\n{e}"),
    }
}

fn refused(text: &str) -> Vec<RuleError> {
    match compile_sources(&[(PathBuf::from("bad.yml"), text.to_string())]) {
        Ok(_) => panic!("expected a refusal of:\n{text}"),
        Err(e) => e.0,
    }
}

/// A Sigma rule on auditflow events with this detection (indented map body) and condition.
fn rule(detection: &str, condition: &str) -> String {
    format!(
        "title: Case\nid: 0b3a1f8e-2b7c-4c55-9d1e-6f0a5a1e9c01\nname: case\nlogsource:\n  product: auditflow\ndetection:\n{detection}\n  condition: {condition}\nlevel: high\n"
    )
}

fn matches(detection: &str, condition: &str, event: &EnrichedEvent) -> bool {
    let e = engine(&[&rule(detection, condition)]);
    let r = e.evaluate(std::slice::from_ref(event), &mut MemoryStore::new(), false).unwrap();
    r[0].matches.iter().any(|m| m.rule_id == "case")
}

/// An event changed by `f`.
fn with(f: impl FnOnce(&mut EnrichedEvent)) -> EnrichedEvent {
    let mut e = ev("e1", T0);
    f(&mut e);
    e
}

#[test]
fn conditions_and_modifiers_match_as_sigma_says() {
    let meta = |v: serde_json::Value| with(|e| e.metadata = Some(v));
    // (detection, condition, event, expected)
    let cases: Vec<(&str, &str, EnrichedEvent, bool)> = vec![
        // plain values: whole value, case-insensitive
        ("  s: { action: LOGIN }", "s", ev("e", T0), true),
        ("  s: { action: log }", "s", ev("e", T0), false),
        // wildcards
        ("  s: { action: 'log*' }", "s", ev("e", T0), true),
        ("  s: { action: '*gin' }", "s", ev("e", T0), true),
        ("  s: { action: 'l?gin' }", "s", ev("e", T0), true),
        ("  s: { action: 'l?in' }", "s", ev("e", T0), false),
        ("  s: { action: 'lo\\*' }", "s", with(|e| e.action = "lo*".into()), true),
        ("  s: { action: 'lo\\*' }", "s", ev("e", T0), false),
        // contains / startswith / endswith / all
        ("  s: { resource|contains: THENT }", "s", ev("e", T0), true),
        ("  s: { resource|startswith: auth }", "s", ev("e", T0), true),
        ("  s: { resource|endswith: auth }", "s", ev("e", T0), false),
        ("  s: { resource|contains|all: [auth, cation] }", "s", ev("e", T0), true),
        ("  s: { resource|contains|all: [auth, nothing] }", "s", ev("e", T0), false),
        ("  s: { resource|contains: [nothing, cation] }", "s", ev("e", T0), true),
        // regular expressions: case-sensitive unless i
        ("  s: { action|re: '^LOG' }", "s", ev("e", T0), false),
        ("  s: { action|re|i: '^LOG' }", "s", ev("e", T0), true),
        ("  s: { action|re: 'og.n$' }", "s", ev("e", T0), true),
        // cased
        ("  s: { user_id|cased: Alice }", "s", ev("e", T0), false),
        ("  s: { user_id|cased: alice }", "s", ev("e", T0), true),
        // networks
        ("  s: { ip_address|cidr: 10.0.0.0/8 }", "s", ev("e", T0), true),
        ("  s: { ip_address|cidr: [192.168.0.0/16, 172.16.0.0/12] }", "s", ev("e", T0), false),
        ("  s: { SourceIp|cidr: 10.0.0.0/24 }", "s", ev("e", T0), true),
        // numbers and comparisons
        ("  s: { status_code: 401 }", "s", with(|e| e.status_code = Some(401)), true),
        ("  s: { status_code|gte: 400 }", "s", with(|e| e.status_code = Some(401)), true),
        ("  s: { status_code|lt: 400 }", "s", with(|e| e.status_code = Some(401)), false),
        ("  s: { metadata.attempts|gt: 5 }", "s", meta(serde_json::json!({"attempts": 7})), true),
        ("  s: { metadata.attempts|gt: 5 }", "s", meta(serde_json::json!({"attempts": "7"})), true),
        ("  s: { metadata.attempts|gt: 5 }", "s", meta(serde_json::json!({"attempts": 3})), false),
        // booleans, null and exists
        ("  s: { success: false }", "s", ev("e", T0), true),
        ("  s: { success: true }", "s", ev("e", T0), false),
        ("  s: { metadata.ticket: null }", "s", ev("e", T0), true),
        ("  s: { metadata.ticket: null }", "s", meta(serde_json::json!({"ticket": null})), true),
        ("  s: { metadata.ticket: null }", "s", meta(serde_json::json!({"ticket": "T-1"})), false),
        ("  s: { metadata.ticket|exists: true }", "s", meta(serde_json::json!({"ticket": null})), true),
        ("  s: { session_id|exists: false }", "s", ev("e", T0), true),
        // neq
        ("  s: { user_id|neq: bob }", "s", ev("e", T0), true),
        ("  s: { user_id|neq: [alice, bob] }", "s", ev("e", T0), false),
        // mapped names (ECS, Sigma taxonomy, the event's own camelCase)
        ("  s: { user.name: alice }", "s", ev("e", T0), true),
        ("  s: { UserName: bob }", "s", ev("e", T0), false),
        ("  s: { ipAddress: 10.0.0.5 }", "s", ev("e", T0), true),
        // keywords: any text field holds it
        ("  k: [brute]", "k", with(|e| e.error_message = Some("Brute force suspected".into())), true),
        ("  k: ['*force sus*']", "k", with(|e| e.error_message = Some("Brute force suspected".into())), true),
        ("  k: [mimikatz]", "k", ev("e", T0), false),
        // lists of maps are ORed, maps ANDed
        ("  s:\n    - { action: logout }\n    - { resource: authentication, success: false }", "s", ev("e", T0), true),
        ("  s:\n    - { action: logout }\n    - { resource: authentication, success: true }", "s", ev("e", T0), false),
        // conditions
        ("  a: { action: login }\n  b: { success: true }", "a and not b", ev("e", T0), true),
        ("  a: { action: login }\n  b: { success: true }", "a and b", ev("e", T0), false),
        ("  a: { action: login }\n  b: { success: true }", "not (a or b)", ev("e", T0), false),
        ("  sel_a: { action: logout }\n  sel_b: { resource: authentication }", "1 of sel_*", ev("e", T0), true),
        ("  sel_a: { action: logout }\n  sel_b: { resource: authentication }", "all of sel_*", ev("e", T0), false),
        ("  x: { action: login }\n  y: { resource: authentication }\n  _f: { action: nothing }", "all of them", ev("e", T0), true),
        ("  x: { action: logout }\n  y: { resource: nothing }", "1 of them", ev("e", T0), false),
        // precedence: or < and < not
        ("  a: { action: logout }\n  b: { success: false }\n  c: { action: login }", "a and b or c", ev("e", T0), true),
        ("  a: { action: login }\n  b: { success: false }\n  c: { action: logout }", "not a and b or c", ev("e", T0), false),
    ];
    for (detection, condition, event, expected) in cases {
        assert_eq!(matches(detection, condition, &event), expected, "{detection} | {condition}");
    }
}

#[test]
fn several_conditions_are_ored_and_level_tags_and_extras_carry_over() {
    let text = "title: Two ways\nid: 6f2e1c8a-0b8f-4a8e-9b0a-2f7e5d3c1a20\nlogsource:\n  product: auditflow\n  category: audit\ndetection:\n  a: { action: logout }\n  b: { resource: authentication }\n  condition:\n    - a\n    - b\ntags: [attack.credential_access, attack.t1110]\nlevel: critical\nauditflow:\n  compliance: [SOX]\n";
    let e = engine(&[text]);
    let r = e.evaluate(&[ev("e", T0)], &mut MemoryStore::new(), false).unwrap();
    let m = &r[0].matches[0];
    assert_eq!(m.rule_id, "6f2e1c8a-0b8f-4a8e-9b0a-2f7e5d3c1a20", "no name: the id names the rule");
    assert_eq!(m.severity, crate::event::Severity::Critical);
    assert_eq!(m.action, RuleAction::Alert);
    assert_eq!(m.tags, ["attack.credential_access", "attack.t1110"]);
    assert_eq!(m.compliance, ["SOX"]);
    assert_eq!(crate::rule_match::attack_techniques(&m.tags), ["T1110"]);
    let info = rule("  s: { action: login }", "s").replace("level: high", "level: informational");
    let r = engine(&[&info]).evaluate(&[ev("e", T0)], &mut MemoryStore::new(), false).unwrap();
    assert_eq!((r[0].matches[0].action, r[0].matches[0].severity), (RuleAction::Log, crate::event::Severity::Low));
}

const FAILED: &str = "title: Failed login\nid: 0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5\nname: failed\nlogsource: {product: auditflow}\ndetection:\n  s: { action: login, success: false }\n  condition: s\nlevel: medium\n";
const SUCCEEDED: &str = "title: Login\nid: 1c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5\nname: succeeded\nlogsource: {product: auditflow}\ndetection:\n  s: { action: login, success: true }\n  condition: s\nlevel: low\n";

fn correlation(body: &str) -> String {
    format!("title: Correlation\nid: 2c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5\nname: corr\ncorrelation:\n{body}\nlevel: high\n")
}

/// Events at these offsets (ms from T0), `f` applied to each (index, event).
fn stream(offsets: &[i64], f: impl Fn(usize, &mut EnrichedEvent)) -> Vec<EnrichedEvent> {
    offsets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut e = ev(&format!("e{i}"), T0 + t);
            f(i, &mut e);
            e
        })
        .collect()
}

fn run(e: &RulesEngine, store: &mut MemoryStore, events: &[EnrichedEvent]) -> Vec<Vec<RuleMatch>> {
    events.iter().map(|x| e.evaluate(std::slice::from_ref(x), store, false).unwrap().pop().unwrap().matches).collect()
}

fn fired(results: &[Vec<RuleMatch>], rule: &str) -> Vec<usize> {
    results.iter().enumerate().filter(|(_, ms)| ms.iter().any(|m| m.rule_id == rule)).map(|(i, _)| i).collect()
}

#[test]
fn event_count_with_a_lower_bound_is_a_sliding_threshold() {
    let e = engine(&[FAILED, &correlation("  type: event_count\n  rules: [failed]\n  group-by: [user_id]\n  timespan: 10s\n  condition: { gte: 3 }")]);
    let kinds: Vec<RuleKind> = e.rule_set().rules().map(|(_, k)| k).collect();
    assert_eq!(kinds, [RuleKind::Threshold], "the base rule is only part of the correlation (generate: false)");
    let r = run(&e, &mut MemoryStore::new(), &stream(&[0, 2000, 4000, 30_000, 31_000, 31_500], |_, _| {}));
    assert_eq!(fired(&r, "corr"), [2, 5]);
    assert!(fired(&r, "failed").is_empty());
    // gt 2 is the same as gte 3
    let gt = engine(&[FAILED, &correlation("  type: event_count\n  rules: [failed]\n  group-by: [user_id]\n  timespan: 10s\n  condition: { gt: 2 }")]);
    assert_eq!(fired(&run(&gt, &mut MemoryStore::new(), &stream(&[0, 2000, 4000], |_, _| {})), "corr"), [2]);
}

#[test]
fn counts_below_or_in_a_range_are_judged_when_the_period_is_over() {
    for (cond, expect) in [("{ lte: 2 }", vec![1u64, 2]), ("{ eq: 3 }", vec![3]), ("{ range: '2..3' }", vec![2, 3]), ("{ gt: 1, lt: 3 }", vec![2])] {
        let e = engine(&[FAILED, &correlation(&format!("  type: event_count\n  rules: [failed]\n  group-by: [user_id]\n  timespan: 10s\n  condition: {cond}"))]);
        assert_eq!(e.rule_set().rules().next().map(|(_, k)| k), Some(RuleKind::Aggregate));
        let mut store = MemoryStore::new();
        // alice: 2 in the first period, bob: 3, carol: 1
        let events = stream(&[0, 1000, 2000, 3000, 4000, 5000], |i, e| e.user_id = Some(["alice", "alice", "bob", "bob", "bob", "carol"][i].into()));
        run(&e, &mut store, &events);
        let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
        let period_start = T0.div_euclid(10_000) * 10_000;
        assert!(e.check_clock(at(period_start + 10_000), &mut store).unwrap().is_empty(), "not before the lateness has passed");
        let closed = e.check_clock(at(period_start + 10_000 + 60_000), &mut store).unwrap();
        let mut observed: Vec<u64> = closed.iter().map(|m| m.window.as_ref().unwrap().observed).collect();
        observed.sort();
        assert_eq!(observed, expect, "{cond}");
        assert!(e.check_clock(at(period_start + 200_000), &mut store).unwrap().is_empty(), "each period once");
        // A late event of a closed period counts nothing.
        let late = run(&e, &mut store, &stream(&[500], |_, e| e.user_id = Some("alice".into())));
        assert!(late[0].is_empty());
    }
}

#[test]
fn value_count_counts_distinct_values() {
    let e = engine(&[FAILED, &correlation("  type: value_count\n  rules: [failed]\n  group-by: [ip_address]\n  timespan: 1m\n  condition: { field: user.name, gte: 3 }")]);
    let events = stream(&[0, 1000, 2000, 3000], |i, e| e.user_id = Some(["a", "b", "a", "c"][i].into()));
    assert_eq!(fired(&run(&e, &mut MemoryStore::new(), &events), "corr"), [3]);
}

#[test]
fn temporal_fires_in_any_order_and_temporal_ordered_only_in_order() {
    let any = engine(&[FAILED, SUCCEEDED, &correlation("  type: temporal\n  rules: [failed, succeeded]\n  group-by: [user_id]\n  timespan: 1m")]);
    let ordered = engine(&[FAILED, SUCCEEDED, &correlation("  type: temporal_ordered\n  rules: [failed, succeeded]\n  group-by: [user_id]\n  timespan: 1m")]);
    let success_first = stream(&[0, 5000], |i, e| e.success = i == 0);
    let failure_first = stream(&[0, 5000], |i, e| e.success = i == 1);
    assert_eq!(fired(&run(&any, &mut MemoryStore::new(), &success_first), "corr"), [1]);
    assert!(fired(&run(&ordered, &mut MemoryStore::new(), &success_first), "corr").is_empty());
    assert_eq!(fired(&run(&ordered, &mut MemoryStore::new(), &failure_first), "corr"), [1]);
    assert_eq!(any.rule_set().rules().next().map(|(_, k)| k), Some(RuleKind::Temporal));
    // at least 2 of 3 rules, in any order
    let three = engine(&[
        FAILED,
        SUCCEEDED,
        "title: Logout\nid: 3c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5\nname: logout\nlogsource: {product: auditflow}\ndetection:\n  s: { action: logout }\n  condition: s\n",
        &correlation("  type: temporal\n  rules: [failed, succeeded, logout]\n  group-by: [user_id]\n  timespan: 1m\n  condition: { gte: 2 }"),
    ]);
    let events = stream(&[0, 1000], |i, e| {
        e.action = ["logout", "login"][i].into();
        e.success = true;
    });
    assert_eq!(fired(&run(&three, &mut MemoryStore::new(), &events), "corr"), [1]);
}

#[test]
fn a_correlation_of_a_correlation_chains_through_its_firings() {
    // The spec's example: failed logins, then a success, for one user within the timespan.
    let inner = "title: Many failures\nid: 4c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5\nname: many-failures\ncorrelation:\n  type: event_count\n  rules: [failed]\n  group-by: [user_id]\n  timespan: 1m\n  condition: { gte: 3 }\n";
    let outer = "title: Then a success\nid: 5c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5\nname: then-success\ncorrelation:\n  type: temporal_ordered\n  rules: [many-failures, succeeded]\n  group-by: [user_id]\n  timespan: 2m\nlevel: critical\n";
    let e = engine(&[FAILED, SUCCEEDED, inner, outer]);
    let ids: Vec<String> = e.rule_set().rules().map(|(m, _)| m.id.to_string()).collect();
    assert_eq!(ids, ["many-failures", "then-success"], "the inner correlation runs (not reported), the base rules are parts");
    let events = stream(&[0, 1000, 2000, 3000, 10_000], |i, e| e.success = i == 0 || i == 4);
    let r = run(&e, &mut MemoryStore::new(), &events);
    assert_eq!(fired(&r, "then-success"), [4], "the success after the third failure");
    assert!(fired(&r, "many-failures").is_empty(), "generate: false");
    // generate: true on the outer correlation reports the inner one too.
    let outer_gen = outer.replace("  timespan: 2m\n", "  timespan: 2m\n  generate: true\n");
    let e = engine(&[FAILED, SUCCEEDED, inner, &outer_gen]);
    let r = run(&e, &mut MemoryStore::new(), &events);
    assert_eq!(fired(&r, "many-failures"), [3]);
    assert_eq!(fired(&r, "then-success"), [4]);
    // replayed, the same matches again (ids and all)
    let mut store = MemoryStore::new();
    let first = run(&e, &mut store, &events);
    let again = run(&e, &mut store, &events);
    assert_eq!(first, again);
}

#[test]
fn refusals_name_the_file_the_rule_and_the_reason() {
    let cases: Vec<(String, &str)> = vec![
        (rule("  s: { action: login }", "s").replace("product: auditflow", "product: windows\n  service: security"), "not one auditflow serves"),
        (rule("  s: { CommandLine|windash|contains: ' -enc ' }", "s"), "windash"),
        (rule("  s: { Payload|base64: x }", "s"), "base64"),
        (rule("  s: { Frobnicator: 1 }", "s"), "unknown field `Frobnicator`"),
        (rule("  s: { EventID: 4625 }", "s"), "a Windows event id"),
        (rule("  s: { action|nonsense: x }", "s"), "nonsense"),
        (rule("  s: { action: login }", "s AND s"), "condition"),
        (rule("  s: { action: login }", "s").replace("detection:", "detection: [oops"), "line"),
        (correlation("  type: event_count\n  rules: [missing]\n  timespan: 1m\n  condition: { gte: 2 }"), "not loaded"),
        (format!("{FAILED}---\n{SUCCEEDED}---\n{}", correlation("  type: temporal_ordered\n  rules: [failed, succeeded]\n  timespan: 1m\n  condition: { gte: 1 }")), "in order"),
        (format!("{FAILED}---\n{}", correlation("  type: value_sum\n  rules: [failed]\n  timespan: 1m\n  condition: { field: x, gte: 1 }")), "value_sum"),
    ];
    for (text, why) in cases {
        let errs = refused(&text);
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(all.iter().any(|e| e.contains(why)), "{why}: {all:?}");
        assert!(errs.iter().all(|e| e.file.as_path() == std::path::Path::new("bad.yml")), "{all:?}");
        assert!(errs.iter().any(|e| e.line.is_some()), "a line: {all:?}");
    }
    // The rule's title is named where the problem is within one.
    let errs = refused(&rule("  s: { EventID: 4625 }", "s"));
    assert!(errs[0].to_string().contains("rule \"Case\""), "{}", errs[0]);
}

/// An event of user `user` logging in successfully from a city.
fn login_from(id: &str, t: i64, user: &str, ip: &str, (city, cc, lat, lon): (&str, &str, f64, f64)) -> EnrichedEvent {
    let mut e = ev(id, t);
    e.user_id = Some(user.into());
    e.success = true;
    e.ip_address = Some(ip.into());
    e.ip = Some(crate::enrich::ip_facts(ip.parse().unwrap()));
    e.location = Some(Location { country_code: Some(cc.into()), city: Some(city.into()), latitude: Some(lat), longitude: Some(lon), ..Location::default() });
    e
}

const TRAVEL: &str = "rules:\n  - id: travel\n    name: Impossible travel\n    severity: HIGH\n    action: ALERT\n    match: { success: true }\n    travel: { max_speed_kmh: 900, group_by: [user_id], ignore_networks: [203.0.113.0/24] }\n";

#[test]
fn impossible_travel_fires_with_both_places_and_times() {
    let e = engine(&[TRAVEL]);
    let hour = 3_600_000;
    let ny = login_from("ny", T0, "alice", "128.59.1.1", ("New York", "US", 40.8123, -73.9682));
    let tokyo = login_from("tokyo", T0 + hour, "alice", "133.11.1.1", ("Tokyo", "JP", 35.6837, 139.6805));
    let r = run(&e, &mut MemoryStore::new(), &[ny.clone(), tokyo.clone()]);
    assert!(r[0].is_empty());
    let m = &r[1][0];
    assert_eq!(m.kind, RuleKind::ImpossibleTravel);
    let d = m.detail.as_ref().unwrap();
    assert_eq!(d["from"]["place"], "New York, US");
    assert_eq!(d["to"]["place"], "Tokyo, JP");
    assert_eq!(d["from"]["eventId"], "ny");
    let km = d["distanceKm"].as_u64().unwrap();
    assert!((10_800..10_900).contains(&km), "{km}");
    assert_eq!(d["minutes"], 60);
    assert_eq!(m.window.as_ref().unwrap().observed, d["speedKmh"].as_u64().unwrap());
    assert_eq!(m.evidence_event_ids, ["ny", "tokyo"]);
    // The same trip over 13 hours is a flight; a nearby city is never impossible; an ignored
    // network and a private address are not placed; another user is another journey.
    let slow = login_from("slow", T0 + 13 * hour, "bob", "133.11.1.1", ("Tokyo", "JP", 35.6837, 139.6805));
    let bob_ny = login_from("bob-ny", T0, "bob", "128.59.1.1", ("New York", "US", 40.8123, -73.9682));
    assert!(run(&e, &mut MemoryStore::new(), &[bob_ny.clone(), slow]).concat().is_empty());
    let near = login_from("near", T0 + 60_000, "bob", "128.59.1.2", ("Newark", "US", 40.7357, -74.1724));
    assert!(run(&e, &mut MemoryStore::new(), &[bob_ny.clone(), near]).concat().is_empty());
    let vpn = login_from("vpn", T0 + hour, "bob", "203.0.113.9", ("Tokyo", "JP", 35.6837, 139.6805));
    assert!(run(&e, &mut MemoryStore::new(), &[bob_ny.clone(), vpn]).concat().is_empty());
    let other = login_from("carol", T0 + hour, "carol", "133.11.1.1", ("Tokyo", "JP", 35.6837, 139.6805));
    assert!(run(&e, &mut MemoryStore::new(), &[bob_ny, other]).concat().is_empty());
    // Out of order: the earlier login arriving second fires too, with the places in time order.
    let mut store = MemoryStore::new();
    let r = run(&e, &mut store, &[tokyo.clone(), ny.clone()]);
    let d = r[1][0].detail.clone().unwrap();
    assert_eq!((d["from"]["place"].as_str(), d["to"]["place"].as_str()), (Some("New York, US"), Some("Tokyo, JP")));
    // Replayed in the other order: new york's match again (the same one), and tokyo does not
    // report the journey a second time from its end.
    let again = run(&e, &mut store, &[ny, tokyo]);
    assert_eq!(again[0], r[1]);
    assert!(again[1].is_empty(), "the journey was reported by new york's event: {again:?}");
}

#[test]
fn first_seen_fires_for_a_new_value_after_the_learning_period() {
    let e = engine(&["rules:\n  - id: new-country\n    name: New country\n    severity: MEDIUM\n    action: ALERT\n    first_seen: { field: country_code, group_by: [user_id], learning: 2d, forget_after: 30d }\n"]);
    let day = 86_400_000;
    let at = |id: &str, d: i64, cc: &str| {
        let mut x = login_from(id, T0 + d, "alice", "128.59.1.1", ("Somewhere", cc, 0.0, 0.0));
        x.success = true;
        x
    };
    let events = [
        at("d0", 0, "US"),
        at("d1", day, "DE"),
        at("d3", 3 * day, "US"),
        at("d4", 4 * day, "FR"),
        at("d4b", 4 * day + 1, "FR"),
        at("d39", 39 * day, "US"),
        at("d40", 40 * day, "DE"),
    ];
    let mut store = MemoryStore::new();
    let r = run(&e, &mut store, &events);
    assert_eq!(fired(&r, "new-country"), [3, 6], "DE during learning is learnt; FR after it fires once; DE unseen for 30 days is new again");
    let d = r[3][0].detail.as_ref().unwrap();
    assert_eq!(d["value"], "FR");
    assert_eq!(d["knownValues"], 2);
    assert_eq!(r[3][0].kind, RuleKind::FirstSeen);
    // A replay gives the same match, nothing more.
    let again = run(&e, &mut store, &events);
    assert_eq!(fired(&again, "new-country"), [3, 6]);
    assert_eq!(again[3], r[3]);
}
