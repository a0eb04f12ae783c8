use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::mmdb_writer::{CityRecord, MmdbWriter};
use super::*;
use crate::codec;
use crate::event::{Classification, RawTimestamp, Severity};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap()
}

fn src(offset: i64) -> SourcePosition {
    SourcePosition {
        topic: "audit-raw".into(),
        partition: 2,
        offset,
        timestamp_ms: Some(now().timestamp_millis() - 5_000),
    }
}

fn enricher() -> Enricher {
    Enricher::new(&EnrichConfig::default()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn enrich(v: Value) -> Result<EnrichedEvent, Rejection> {
    enricher().enrich(&bytes(&v), &src(7), now())
}

fn kind(v: Value) -> RejectionKind {
    enrich(v).unwrap_err().kind
}

fn base() -> Value {
    json!({"action": "login", "resource": "authentication"})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = base();
    v[field] = value;
    v
}

fn nested(depth: usize) -> Value {
    // An object whose own depth is `depth` (the outermost object counts as 1).
    let mut v = json!({"leaf": 1});
    for _ in 1..depth {
        v = json!({ "n": v });
    }
    v
}

#[test]
fn enricher_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Enricher>();
}

#[test]
fn defaults_for_a_minimal_event() {
    let ev = enrich(base()).unwrap();
    assert_eq!(ev.action, "login");
    assert_eq!(ev.resource, "authentication");
    assert_eq!(ev.classification, Classification::Internal);
    assert_eq!(ev.severity, Severity::Low);
    assert!(ev.success);
    assert_eq!(ev.ip_address, None);
    assert_eq!(ev.ip, None);
    assert_eq!(ev.location, None);
    assert_eq!(ev.metadata, None);
    assert_eq!(ev.user_id, None);
    assert_eq!(ev.method, None);
    assert_eq!(ev.id, default_id(&src(7)));
    // Event time falls back to the Kafka message timestamp.
    assert_eq!(
        ev.timestamp.timestamp_millis(),
        now().timestamp_millis() - 5_000
    );
    assert_eq!(ev.enriched_at, now());
    assert_eq!(ev.source, src(7));
    assert_eq!(ev.compliance, crate::event::ComplianceFlags::default());
}

#[test]
fn time_falls_back_to_now_without_a_plausible_kafka_timestamp() {
    let e = enricher();
    let mut s = src(1);
    s.timestamp_ms = None;
    let at = now() + chrono::Duration::microseconds(1234);
    let ev = e.enrich(&bytes(&base()), &s, at).unwrap();
    // Truncated to milliseconds, the precision the Avro schema carries.
    assert_eq!(
        ev.timestamp,
        DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap()
    );
    assert_eq!(ev.enriched_at, ev.timestamp);
    s.timestamp_ms = Some(-1); // Kafka's "no timestamp"
    assert_eq!(
        e.enrich(&bytes(&base()), &s, now()).unwrap().timestamp,
        now()
    );
}

#[test]
fn full_event_is_normalised() {
    let ev = enrich(json!({
        "id": "  evt-1 ",
        "timestamp": "2024-05-31T10:00:00.123456+02:00",
        "userId": " user123 ",
        "session_id": "sess",
        "action": "  delete_user\t",
        "resource": " user_management ",
        "resourceId": "   ",
        "method": " delete ",
        "endpoint": "/api/users/user789",
        "statusCode": 200,
        "userAgent": "Mozilla/5.0",
        "ipAddress": " ::FFFF:172.16.0.10 ",
        "classification": "confidential",
        "severity": "Medium",
        "metadata": {"export_type": "full", "records_count": 1500},
        "success": false,
        "errorMessage": "line one\nline two",
        "duration": 250,
        "somethingElse": [1, 2, 3]
    }))
    .unwrap();
    assert_eq!(ev.id, "evt-1");
    assert_eq!(
        ev.timestamp,
        Utc.with_ymd_and_hms(2024, 5, 31, 8, 0, 0).unwrap() + chrono::Duration::milliseconds(123)
    );
    assert_eq!(ev.user_id.as_deref(), Some("user123"));
    assert_eq!(ev.session_id.as_deref(), Some("sess"));
    assert_eq!(ev.action, "delete_user");
    assert_eq!(ev.resource, "user_management");
    assert_eq!(ev.resource_id, None, "blank optional strings become absent");
    assert_eq!(ev.method.as_deref(), Some("DELETE"));
    assert_eq!(ev.status_code, Some(200));
    assert_eq!(ev.ip_address.as_deref(), Some("172.16.0.10"));
    let ip = ev.ip.unwrap();
    assert_eq!((ip.version, ip.private, ip.global), (4, true, false));
    assert_eq!(ev.location, None);
    assert_eq!(ev.classification, Classification::Confidential);
    assert_eq!(ev.severity, Severity::Medium);
    assert_eq!(
        ev.metadata,
        Some(json!({"export_type": "full", "records_count": 1500}))
    );
    assert!(!ev.success);
    assert_eq!(ev.error_message.as_deref(), Some("line one\nline two"));
    assert_eq!(ev.duration_ms, Some(250));
}

#[test]
fn ipv6_is_written_canonically() {
    let ev = enrich(with(
        "ipAddress",
        json!("2001:0DB8:0000:0000:0000:0000:0000:0001"),
    ))
    .unwrap();
    assert_eq!(ev.ip_address.as_deref(), Some("2001:db8::1"));
    assert_eq!(ev.ip.unwrap().version, 6);
    assert!(ev.ip.unwrap().reserved);
}

#[test]
fn ids_are_deterministic_per_source_position() {
    let e = enricher();
    let payload = bytes(&base());
    let a = e.enrich(&payload, &src(100), now()).unwrap().id;
    let b = e
        .enrich(&payload, &src(100), now() + chrono::Duration::hours(1))
        .unwrap()
        .id;
    let c = e.enrich(&payload, &src(101), now()).unwrap().id;
    let mut other_partition = src(100);
    other_partition.partition = 3;
    let d = e.enrich(&payload, &other_partition, now()).unwrap().id;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, d);
    let parsed = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(parsed.get_version_num(), 5);
    // Pinned, so a change of namespace or name format (which would break de-duplication across
    // a deploy) cannot go unnoticed.
    assert_eq!(
        a,
        uuid::Uuid::new_v5(&ID_NAMESPACE, b"audit-raw/2/100").to_string()
    );
    // Long topic names take the heap path and still work.
    let mut long = src(1);
    long.topic = "t".repeat(400);
    assert_eq!(
        default_id(&long),
        uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{}/2/1", long.topic).as_bytes()).to_string()
    );
}

#[test]
fn enum_values_are_case_insensitive() {
    for (c, want) in [
        ("public", Classification::Public),
        ("RESTRICTED", Classification::Restricted),
        (" Internal ", Classification::Internal),
    ] {
        assert_eq!(
            enrich(with("classification", json!(c)))
                .unwrap()
                .classification,
            want
        );
    }
    for (s, want) in [
        ("critical", Severity::Critical),
        ("HiGh", Severity::High),
        ("", Severity::Low),
    ] {
        assert_eq!(enrich(with("severity", json!(s))).unwrap().severity, want);
    }
}

#[test]
fn unknown_enum_names_allowed_values() {
    let r = enrich(with("severity", json!("URGENT"))).unwrap_err();
    assert_eq!(r.kind, RejectionKind::UnknownEnum);
    assert!(
        r.detail.contains("LOW, MEDIUM, HIGH, CRITICAL"),
        "{}",
        r.detail
    );
    let r = enrich(with("classification", json!("secret"))).unwrap_err();
    assert_eq!(r.kind, RejectionKind::UnknownEnum);
    assert!(
        r.detail
            .contains("PUBLIC, INTERNAL, CONFIDENTIAL, RESTRICTED"),
        "{}",
        r.detail
    );
}

#[test]
fn required_fields() {
    assert_eq!(kind(json!({"resource": "r"})), RejectionKind::MissingField);
    assert_eq!(kind(json!({"action": "a"})), RejectionKind::MissingField);
    assert_eq!(
        kind(json!({"action": "  ", "resource": "r"})),
        RejectionKind::MissingField
    );
    assert_eq!(
        kind(json!({"action": null, "resource": "r"})),
        RejectionKind::MissingField
    );
    let r = enrich(json!({"action": "a", "resource": ""})).unwrap_err();
    assert!(r.detail.contains("resource"), "{}", r.detail);
}

#[test]
fn length_limits() {
    let at = |n: usize| "a".repeat(n);
    assert!(enrich(with("action", json!(at(MAX_IDENT_CHARS)))).is_ok());
    assert_eq!(
        kind(with("action", json!(at(MAX_IDENT_CHARS + 1)))),
        RejectionKind::InvalidField
    );
    // Characters, not bytes.
    assert!(enrich(with("resource", json!("é".repeat(MAX_IDENT_CHARS)))).is_ok());
    assert_eq!(
        kind(with("resource", json!("é".repeat(MAX_IDENT_CHARS + 1)))),
        RejectionKind::InvalidField
    );
    assert!(enrich(with("id", json!(at(MAX_ID_CHARS)))).is_ok());
    assert_eq!(
        kind(with("id", json!(at(MAX_ID_CHARS + 1)))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("endpoint", json!(at(MAX_ENDPOINT_CHARS + 1)))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("userAgent", json!(at(MAX_USER_AGENT_CHARS + 1)))),
        RejectionKind::InvalidField
    );
    assert!(enrich(with("errorMessage", json!(at(MAX_ERROR_MESSAGE_CHARS)))).is_ok());
    assert_eq!(
        kind(with("errorMessage", json!(at(MAX_ERROR_MESSAGE_CHARS + 1)))),
        RejectionKind::InvalidField
    );
    // Whitespace around a value does not count against the limit.
    assert!(enrich(with(
        "userId",
        json!(format!("  {}  ", at(MAX_IDENT_CHARS)))
    ))
    .is_ok());
}

#[test]
fn control_characters_are_refused_where_they_would_reach_headers() {
    for field in [
        "id",
        "userId",
        "sessionId",
        "action",
        "resource",
        "resourceId",
        "endpoint",
        "userAgent",
    ] {
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{0}b",
            "a\u{1b}[31mb",
            "a\u{7f}b",
            "a\u{85}b",
        ] {
            let r = enrich(with(field, json!(bad))).unwrap_err();
            assert_eq!(r.kind, RejectionKind::InvalidField, "{field} {bad:?}");
            assert!(r.detail.contains(field), "{}", r.detail);
        }
    }
    // Error messages may span lines, but not carry NUL or escape sequences.
    assert!(enrich(with("errorMessage", json!("a\n\tb\r\n"))).is_ok());
    assert_eq!(
        kind(with("errorMessage", json!("a\u{0}b"))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("errorMessage", json!("a\u{1b}b"))),
        RejectionKind::InvalidField
    );
    // Non-ASCII text is fine.
    assert!(enrich(with("action", json!("connexion réussie ✓"))).is_ok());
}

#[test]
fn method_must_be_a_token() {
    assert_eq!(
        enrich(with("method", json!("m-search")))
            .unwrap()
            .method
            .as_deref(),
        Some("M-SEARCH")
    );
    assert_eq!(
        kind(with("method", json!("GET /"))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("method", json!("x".repeat(MAX_METHOD_CHARS + 1)))),
        RejectionKind::InvalidField
    );
}

#[test]
fn numbers_in_range() {
    assert!(enrich(with("statusCode", json!(100))).is_ok());
    assert!(enrich(with("statusCode", json!(599))).is_ok());
    assert_eq!(
        kind(with("statusCode", json!(99))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("statusCode", json!(600))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("statusCode", json!(-1))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        enrich(with("duration", json!(0))).unwrap().duration_ms,
        Some(0)
    );
    assert_eq!(
        enrich(with("duration", json!(1.4))).unwrap().duration_ms,
        Some(1)
    );
    assert_eq!(
        kind(with("duration", json!(-1))),
        RejectionKind::InvalidField
    );
}

#[test]
fn wrong_types_are_invalid_field_and_bad_syntax_is_invalid_json() {
    let r = enrich(with("statusCode", json!("200"))).unwrap_err();
    assert_eq!(r.kind, RejectionKind::InvalidField);
    assert!(r.detail.contains("invalid type"), "{}", r.detail);
    assert_eq!(
        kind(with("success", json!("yes"))),
        RejectionKind::InvalidField
    );
    assert_eq!(kind(with("action", json!(5))), RejectionKind::InvalidField);
    assert_eq!(
        kind(with("timestamp", json!(true))),
        RejectionKind::InvalidField
    );
    assert_eq!(
        kind(with("statusCode", json!(1e300))),
        RejectionKind::InvalidField
    );

    let e = enricher();
    let s = src(1);
    for bad in [
        &b"{"[..],
        b"{\"action\":}",
        b"{\"action\":\"a\",}",
        b"{\"a\":1} trailing",
        b"{'single':1}",
    ] {
        assert_eq!(
            e.enrich(bad, &s, now()).unwrap_err().kind,
            RejectionKind::InvalidJson,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Valid JSON that is not an object.
    for not_object in [&b"[1,2]"[..], b"\"text\"", b"42", b"null", b" true "] {
        let r = e.enrich(not_object, &s, now()).unwrap_err();
        assert_eq!(r.kind, RejectionKind::InvalidJson);
        assert!(r.detail.contains("object"), "{}", r.detail);
    }
    // Duplicate keys are well-formed JSON of the wrong shape.
    assert_eq!(
        e.enrich(br#"{"action":"a","resource":"r","action":"b"}"#, &s, now())
            .unwrap_err()
            .kind,
        RejectionKind::InvalidField
    );
}

#[test]
fn encoding_detection() {
    let e = enricher();
    let s = src(1);
    assert_eq!(
        e.enrich(b"", &s, now()).unwrap_err().kind,
        RejectionKind::UnsupportedEncoding
    );
    assert_eq!(
        e.enrich(b"  \n ", &s, now()).unwrap_err().kind,
        RejectionKind::UnsupportedEncoding
    );
    assert_eq!(
        e.enrich(b"\x00\x01\x02", &s, now()).unwrap_err().kind,
        RejectionKind::UnsupportedEncoding
    );
    assert_eq!(
        e.enrich(b"action=login", &s, now()).unwrap_err().kind,
        RejectionKind::UnsupportedEncoding
    );
    assert_eq!(
        e.enrich(b"\xC3", &s, now()).unwrap_err().kind,
        RejectionKind::UnsupportedEncoding
    );
    // Leading whitespace and a byte-order mark are tolerated.
    let mut padded = b"\xEF\xBB\xBF \r\n\t".to_vec();
    padded.extend(bytes(&base()));
    assert!(e.enrich(&padded, &s, now()).is_ok());
    // Avro magic with the wrong fingerprint.
    let mut wrong = codec::encode_raw(&RawEvent {
        action: Some("a".into()),
        resource: Some("r".into()),
        ..Default::default()
    });
    wrong[5] ^= 0xff;
    let r = e.enrich(&wrong, &s, now()).unwrap_err();
    assert_eq!(r.kind, RejectionKind::InvalidAvro);
    assert!(r.detail.contains("fingerprint"), "{}", r.detail);
    let truncated = &codec::encode_raw(&RawEvent {
        action: Some("a".into()),
        ..Default::default()
    })[..12];
    assert_eq!(
        e.enrich(truncated, &s, now()).unwrap_err().kind,
        RejectionKind::InvalidAvro
    );
}

#[test]
fn avro_and_json_inputs_give_the_same_event() {
    let raw = RawEvent {
        id: Some("x-1".into()),
        timestamp: Some(RawTimestamp::Rfc3339("2024-05-31T23:59:59.999Z".into())),
        user_id: Some("u".into()),
        action: Some(" login ".into()),
        resource: Some("authentication".into()),
        method: Some("post".into()),
        ip_address: Some("8.8.8.8".into()),
        severity: Some("high".into()),
        metadata: Some(json!({"k": [1, {"z": null}]})),
        success: Some(false),
        duration: Some(3),
        ..Default::default()
    };
    let e = enricher();
    let from_json = e
        .enrich(&serde_json::to_vec(&raw).unwrap(), &src(9), now())
        .unwrap();
    let from_avro = e.enrich(&codec::encode_raw(&raw), &src(9), now()).unwrap();
    assert_eq!(from_json, from_avro);
    assert_eq!(from_avro.action, "login");
    // Validation applies to Avro input too.
    let bad = RawEvent {
        ip_address: Some("999.1.1.1".into()),
        ..raw
    };
    assert_eq!(
        e.enrich(&codec::encode_raw(&bad), &src(9), now())
            .unwrap_err()
            .kind,
        RejectionKind::InvalidIp
    );
}

#[test]
fn invalid_ip() {
    for bad in [
        "999.1.1.1",
        "localhost",
        "1.2.3",
        "010.0.0.1",
        "fe80::1%eth0",
        "::ffff:1.2.3.4.5",
        "1.2.3.4/24",
    ] {
        let r = enrich(with("ipAddress", json!(bad))).unwrap_err();
        assert_eq!(r.kind, RejectionKind::InvalidIp, "{bad}");
    }
    let r = enrich(with("ipAddress", json!("x".repeat(10_000)))).unwrap_err();
    assert_eq!(r.kind, RejectionKind::InvalidIp);
    assert!(
        r.detail.len() < 200,
        "details stay short: {}",
        r.detail.len()
    );
    assert_eq!(
        enrich(with("ipAddress", json!(""))).unwrap().ip_address,
        None
    );
    assert_eq!(enrich(with("ipAddress", json!(null))).unwrap().ip, None);
}

#[test]
fn timestamp_forms_and_bounds() {
    let ms = |v: Value| enrich(with("timestamp", v)).map(|e| e.timestamp.timestamp_millis());
    let t = Utc
        .with_ymd_and_hms(2024, 5, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    assert_eq!(ms(json!(t)).unwrap(), t);
    assert_eq!(ms(json!(t as f64)).unwrap(), t);
    assert_eq!(ms(json!("2024-05-01T00:00:00Z")).unwrap(), t);
    assert_eq!(ms(json!("2024-05-01T02:00:00+02:00")).unwrap(), t);
    assert_eq!(ms(json!("2024-04-30T19:00:00.000-05:00")).unwrap(), t);
    assert_eq!(
        ms(json!(" 2024-05-01T00:00:00.0009Z ")).unwrap(),
        t,
        "sub-millisecond digits are truncated"
    );

    assert_eq!(ms(json!(MIN_EVENT_TIME_MS)).unwrap(), MIN_EVENT_TIME_MS);
    assert_eq!(
        ms(json!("2000-01-01T00:00:00Z")).unwrap(),
        MIN_EVENT_TIME_MS
    );
    let limit = now().timestamp_millis() + MAX_FUTURE_SKEW_MS;
    assert_eq!(ms(json!(limit)).unwrap(), limit);

    for bad in [
        json!(MIN_EVENT_TIME_MS - 1),
        json!(limit + 1),
        json!("1999-12-31T23:59:59Z"),
        json!("yesterday"),
        json!("2024-05-01"),
        json!("2024-13-01T00:00:00Z"),
        json!(""),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(-1),
    ] {
        assert_eq!(
            ms(bad.clone()).unwrap_err().kind,
            RejectionKind::InvalidTimestamp,
            "{bad}"
        );
    }
    let r = enrich(with("timestamp", json!(1_717_000_000))).unwrap_err();
    assert!(r.detail.contains("epoch seconds"), "{}", r.detail);
    // Fractional milliseconds are truncated; a number far from plausible is still refused.
    assert_eq!(ms(json!(t as f64 + 0.456)).unwrap(), t);
    assert_eq!(
        kind(with("timestamp", json!(1.5))),
        RejectionKind::InvalidTimestamp
    );
    assert_eq!(
        kind(with("timestamp", json!(1e300))),
        RejectionKind::InvalidField
    );
}

#[test]
fn metadata_rules() {
    let cfg = EnrichConfig::default();
    let e = enricher();
    let run = |m: Value| e.enrich(&bytes(&with("metadata", m)), &src(1), now());
    assert!(run(nested(cfg.max_metadata_depth)).is_ok());
    let r = run(nested(cfg.max_metadata_depth + 1)).unwrap_err();
    assert_eq!(r.kind, RejectionKind::MetadataTooDeep);
    assert!(r.detail.contains('8'), "{}", r.detail);
    // Arrays are a level too: object(1) → array(2) → object(3).
    let shallow = EnrichConfig {
        max_metadata_depth: 2,
        ..Default::default()
    };
    let e2 = Enricher::new(&shallow).unwrap();
    let run2 = |m: Value| e2.enrich(&bytes(&with("metadata", m)), &src(1), now());
    assert!(run2(json!({"a": [1, 2], "b": {"c": "d"}})).is_ok());
    assert_eq!(
        run2(json!({"a": [{"b": 1}]})).unwrap_err().kind,
        RejectionKind::MetadataTooDeep
    );
    assert_eq!(
        run2(json!({"a": [[]]})).unwrap_err().kind,
        RejectionKind::MetadataTooDeep
    );
    // Beyond the JSON parser's own nesting limit.
    let deep = format!(
        r#"{{"action":"a","resource":"r","metadata":{}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    assert_eq!(
        e.enrich(deep.as_bytes(), &src(1), now()).unwrap_err().kind,
        RejectionKind::MetadataTooDeep
    );

    for not_object in [json!([1]), json!("x"), json!(3), json!(true)] {
        let r = run(not_object).unwrap_err();
        assert_eq!(r.kind, RejectionKind::InvalidField);
        assert!(r.detail.contains("object"), "{}", r.detail);
    }
    assert_eq!(run(json!(null)).unwrap().metadata, None);
    assert_eq!(run(json!({})).unwrap().metadata, Some(json!({})));
    assert_eq!(
        run(json!({"a": "x\u{0}y"})).unwrap_err().kind,
        RejectionKind::InvalidField
    );
    assert_eq!(
        run(json!({"k\u{0}": 1})).unwrap_err().kind,
        RejectionKind::InvalidField
    );
}

#[test]
fn size_limit_edge() {
    let mut cfg = EnrichConfig::default();
    let payload = bytes(&base());
    cfg.max_message_bytes = payload.len();
    let e = Enricher::new(&cfg).unwrap();
    assert!(e.enrich(&payload, &src(1), now()).is_ok());
    cfg.max_message_bytes = payload.len() - 1;
    let e = Enricher::new(&cfg).unwrap();
    let r = e.enrich(&payload, &src(1), now()).unwrap_err();
    assert_eq!(r.kind, RejectionKind::TooLarge);
    // Checked before anything else: garbage of the same size is still TooLarge.
    assert_eq!(
        e.enrich(&vec![0xff; payload.len()], &src(1), now())
            .unwrap_err()
            .kind,
        RejectionKind::TooLarge
    );
}

#[test]
fn every_rejection_kind_is_produced() {
    let small = EnrichConfig {
        max_message_bytes: 64,
        ..Default::default()
    };
    let e = enricher();
    let s = src(1);
    let raw_avro_bad = {
        let mut b = codec::encode_raw(&RawEvent::default());
        b.truncate(11);
        b
    };
    let cases: Vec<(Vec<u8>, &Enricher)> = vec![
        (b"{".to_vec(), &e),
        (raw_avro_bad, &e),
        (b"hello".to_vec(), &e),
        (b"{}".to_vec(), &e),
        (bytes(&with("severity", json!("x"))), &e),
        (bytes(&with("ipAddress", json!("x"))), &e),
        (bytes(&with("timestamp", json!("x"))), &e),
        (bytes(&with("statusCode", json!(1))), &e),
        (bytes(&with("metadata", nested(9))), &e),
    ];
    let small_e = Enricher::new(&small).unwrap();
    let mut seen: HashSet<RejectionKind> = cases
        .iter()
        .map(|(p, e)| e.enrich(p, &s, now()).unwrap_err().kind)
        .collect();
    seen.insert(small_e.enrich(&[b' '; 65], &s, now()).unwrap_err().kind);
    // Refusals by the broker or the store come from what a stage writes to, not from enrich.
    let all: HashSet<RejectionKind> = RejectionKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, RejectionKind::RefusedByBroker | RejectionKind::RefusedByStore))
        .collect();
    assert_eq!(seen, all);
}

#[test]
fn rejection_details_stay_short() {
    let huge = "x".repeat(100_000);
    let r = enrich(with("statusCode", json!(huge))).unwrap_err();
    assert_eq!(r.kind, RejectionKind::InvalidField);
    assert!(r.detail.len() <= 600, "{}", r.detail.len());
    let r = enrich(with("severity", json!(huge))).unwrap_err();
    assert!(r.detail.len() <= 600, "{}", r.detail.len());
}

#[test]
fn rejection_details_do_not_echo_control_characters() {
    let r = enrich(with("ipAddress", json!("1.2.3.4\r\nX-Injected: yes"))).unwrap_err();
    assert!(
        !r.detail.contains('\n') && !r.detail.contains('\r'),
        "{}",
        r.detail
    );
    let r = enrich(with("timestamp", json!("\u{1b}[2J"))).unwrap_err();
    assert!(!r.detail.contains('\u{1b}'), "{}", r.detail);
}

// --- compliance -------------------------------------------------------------------------------

fn flags_with(cfg: &EnrichConfig, v: Value) -> crate::event::ComplianceFlags {
    Enricher::new(cfg)
        .unwrap()
        .enrich(&bytes(&v), &src(1), now())
        .unwrap()
        .compliance
}

#[test]
fn gdpr_flags_identified_people() {
    let cfg = EnrichConfig::default();
    assert!(!flags_with(&cfg, base()).gdpr);
    assert!(flags_with(&cfg, with("userId", json!("u1"))).gdpr);
    assert!(flags_with(&cfg, with("ipAddress", json!("10.0.0.1"))).gdpr);
    let mut no_ip = cfg.clone();
    no_ip.compliance.gdpr.ip_address = false;
    assert!(!flags_with(&no_ip, with("ipAddress", json!("10.0.0.1"))).gdpr);
    let mut patterns = cfg.clone();
    patterns.compliance.gdpr.patterns = vec!["(?i)customer".into()];
    assert!(
        flags_with(
            &patterns,
            json!({"action": "export", "resource": "Customer_data"})
        )
        .gdpr
    );
    let mut off = cfg.clone();
    off.compliance.gdpr.enabled = false;
    assert!(!flags_with(&off, with("userId", json!("u1"))).gdpr);
}

#[test]
fn sox_flags_critical_and_privileged_or_financial_events() {
    let cfg = EnrichConfig::default();
    assert!(!flags_with(&cfg, base()).sox);
    assert!(!flags_with(&cfg, with("severity", json!("HIGH"))).sox);
    assert!(flags_with(&cfg, with("severity", json!("CRITICAL"))).sox);
    assert!(flags_with(&cfg, json!({"action": "GRANT_ROLE", "resource": "iam"})).sox);
    assert!(
        flags_with(
            &cfg,
            json!({"action": "update", "resource": "general_ledger"})
        )
        .sox
    );
    assert!(flags_with(&cfg, json!({"action": "sudo", "resource": "host"})).sox);
    let mut lower = cfg.clone();
    lower.compliance.sox.min_severity = Severity::High;
    assert!(flags_with(&lower, with("severity", json!("HIGH"))).sox);
    let mut off = cfg.clone();
    off.compliance.sox.enabled = false;
    assert!(
        !flags_with(
            &off,
            json!({"action": "grant", "resource": "admin", "severity": "CRITICAL"})
        )
        .sox
    );
}

#[test]
fn hipaa_is_off_by_default_and_matches_health_resources_when_on() {
    let cfg = EnrichConfig::default();
    let health =
        json!({"action": "read", "resource": "patient_records", "classification": "CONFIDENTIAL"});
    assert!(!flags_with(&cfg, health.clone()).hipaa);
    let mut on = cfg.clone();
    on.compliance.hipaa.enabled = true;
    assert!(flags_with(&on, health.clone()).hipaa);
    assert!(flags_with(&on, json!({"action": "read", "resource": "PHI"})).hipaa);
    assert!(flags_with(&on, json!({"action": "read", "resource": "ehr/notes"})).hipaa);
    assert!(!flags_with(&on, json!({"action": "read", "resource": "graphics"})).hipaa);
    // Matched on the resource only by default.
    assert!(
        !flags_with(
            &on,
            json!({"action": "patient_lookup", "resource": "search"})
        )
        .hipaa
    );
    let mut restricted = on.clone();
    restricted.compliance.hipaa.min_classification = Classification::Restricted;
    assert!(!flags_with(&restricted, health.clone()).hipaa);
    let mut health_restricted = health;
    health_restricted["classification"] = json!("RESTRICTED");
    assert!(flags_with(&restricted, health_restricted).hipaa);
}

#[test]
fn pci_matches_resource_and_endpoint() {
    let cfg = EnrichConfig::default();
    assert!(
        flags_with(
            &cfg,
            json!({"action": "read", "resource": "cardholder_data"})
        )
        .pci
    );
    assert!(
        flags_with(
            &cfg,
            json!({"action": "post", "resource": "orders", "endpoint": "/api/checkout"})
        )
        .pci
    );
    assert!(flags_with(&cfg, json!({"action": "read", "resource": "card_pan"})).pci);
    assert!(!flags_with(&cfg, json!({"action": "read", "resource": "company"})).pci);
    assert!(
        !flags_with(&cfg, json!({"action": "checkout", "resource": "orders"})).pci,
        "action is not a PCI field by default"
    );
    let mut off = cfg.clone();
    off.compliance.pci.enabled = false;
    assert!(
        !flags_with(
            &off,
            json!({"action": "read", "resource": "cardholder_data"})
        )
        .pci
    );
    let mut by_action = cfg.clone();
    by_action.compliance.pci.fields = vec![MatchField::Action];
    assert!(
        flags_with(
            &by_action,
            json!({"action": "checkout", "resource": "orders"})
        )
        .pci
    );
}

#[test]
fn compliance_config_from_a_config_file_section() {
    // The same structure a TOML `[enrich]` section deserialises into.
    let cfg: EnrichConfig = serde_json::from_value(json!({
        "max_metadata_depth": 4,
        "compliance": {
            "hipaa": {"enabled": true},
            "pci": {"patterns": ["(?i)iban"], "fields": ["resource", "action"]},
            "sox": {"min_severity": "high"}
        }
    }))
    .unwrap();
    assert_eq!(cfg.max_message_bytes, 1024 * 1024);
    assert_eq!(cfg.max_metadata_depth, 4);
    assert!(cfg.compliance.hipaa.enabled);
    assert_eq!(
        cfg.compliance.hipaa.patterns,
        HipaaConfig::default().patterns
    );
    assert_eq!(
        cfg.compliance.pci.fields,
        vec![MatchField::Resource, MatchField::Action]
    );
    assert_eq!(cfg.compliance.sox.min_severity, Severity::High);
    assert!(cfg.compliance.gdpr.enabled);
    assert!(serde_json::from_value::<EnrichConfig>(
        json!({"compliance": {"gdpr": {"enable": true}}})
    )
    .is_err());
    assert!(serde_json::from_value::<EnrichConfig>(json!({"max_mesage_bytes": 1})).is_err());
}

#[test]
fn config_errors_name_the_setting() {
    let mut bad = EnrichConfig::default();
    bad.compliance.sox.patterns = vec!["ok".into(), "(unclosed".into()];
    let e = Enricher::new(&bad).unwrap_err();
    assert_eq!(e.setting, "enrich.compliance.sox.patterns[1]");
    assert!(e.to_string().contains("sox"));
    // A disabled framework's patterns are not compiled.
    bad.compliance.sox.enabled = false;
    assert!(Enricher::new(&bad).is_ok());

    let mut depth = EnrichConfig {
        max_metadata_depth: 0,
        ..Default::default()
    };
    assert_eq!(
        Enricher::new(&depth).unwrap_err().setting,
        "enrich.max_metadata_depth"
    );
    depth.max_metadata_depth = 1000;
    assert_eq!(
        Enricher::new(&depth).unwrap_err().setting,
        "enrich.max_metadata_depth"
    );
    let size = EnrichConfig {
        max_message_bytes: 0,
        ..Default::default()
    };
    assert_eq!(
        Enricher::new(&size).unwrap_err().setting,
        "enrich.max_message_bytes"
    );

    let mut geo = EnrichConfig {
        geoip_db: Some("/nonexistent/GeoLite2-City.mmdb".into()),
        ..Default::default()
    };
    let e = Enricher::new(&geo).unwrap_err();
    assert_eq!(e.setting, "enrich.geoip_db");
    assert!(
        e.reason.contains("/nonexistent/GeoLite2-City.mmdb"),
        "{}",
        e.reason
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"not a database").unwrap();
    geo.geoip_db = Some(garbage.clone());
    let e = Enricher::new(&geo).unwrap_err();
    assert!(e.reason.contains("garbage.mmdb"), "{}", e.reason);

    let asn = dir.path().join("asn.mmdb");
    MmdbWriter::new()
        .database_type("GeoLite2-ASN")
        .write_to(&asn)
        .unwrap();
    geo.geoip_db = Some(asn);
    let e = Enricher::new(&geo).unwrap_err();
    assert!(e.reason.contains("GeoLite2-ASN"), "{}", e.reason);
}

// --- geolocation ------------------------------------------------------------------------------

fn test_db(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("city.mmdb");
    MmdbWriter::new()
        .insert(
            "8.8.8.0/24",
            CityRecord {
                country_code: Some("US".into()),
                country: Some("United States".into()),
                region: Some("California".into()),
                city: Some("Mountain View".into()),
                latitude: Some(37.386),
                longitude: Some(-122.0838),
            },
        )
        .unwrap()
        .insert(
            "2a00:1450::/32",
            CityRecord {
                country_code: Some("IE".into()),
                city: Some("Dublin".into()),
                ..Default::default()
            },
        )
        .unwrap()
        // Private space in the database must still not be looked up.
        .insert(
            "10.0.0.0/8",
            CityRecord {
                country_code: Some("XX".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .insert("9.9.9.9/32", CityRecord::default())
        .unwrap()
        .write_to(&path)
        .unwrap();
    path
}

#[test]
fn geolocation_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EnrichConfig {
        geoip_db: Some(test_db(dir.path())),
        ..Default::default()
    };
    let e = Enricher::new(&cfg).unwrap();
    assert!(e.has_geoip());
    let loc = |ip: &str| {
        e.enrich(&bytes(&with("ipAddress", json!(ip))), &src(1), now())
            .unwrap()
            .location
    };

    let us = loc("8.8.8.8").unwrap();
    assert_eq!(us.country_code.as_deref(), Some("US"));
    assert_eq!(us.country.as_deref(), Some("United States"));
    assert_eq!(us.region.as_deref(), Some("California"));
    assert_eq!(us.city.as_deref(), Some("Mountain View"));
    assert_eq!((us.latitude, us.longitude), (Some(37.386), Some(-122.0838)));
    assert_eq!(loc("::ffff:8.8.8.8"), Some(us));
    let ie = loc("2a00:1450:4001::1").unwrap();
    assert_eq!(
        (
            ie.country_code.as_deref(),
            ie.city.as_deref(),
            ie.region.as_deref()
        ),
        (Some("IE"), Some("Dublin"), None)
    );

    assert_eq!(loc("10.0.0.1"), None, "private addresses are not looked up");
    assert_eq!(loc("192.168.1.100"), None);
    assert_eq!(loc("203.0.113.10"), None);
    assert_eq!(loc("1.1.1.1"), None, "a miss");
    assert_eq!(loc("9.9.9.9"), None, "a hit with nothing in it");

    // Without a database there is never a location.
    let plain = enricher();
    assert!(!plain.has_geoip());
    assert_eq!(
        plain
            .enrich(&bytes(&with("ipAddress", json!("8.8.8.8"))), &src(1), now())
            .unwrap()
            .location,
        None
    );
}

#[test]
fn the_flat_layout_of_ip_location_db_in_two_files_of_a_directory() {
    // ip-location-db ships IPv4 and IPv6 as two files with flat records; a city-less record is
    // a country's centre, with no city.
    let dir = tempfile::tempdir().unwrap();
    let rec = |cc: &str, region: &str, city: &str, lat: f64, lon: f64| CityRecord {
        country_code: Some(cc.into()),
        region: (!region.is_empty()).then(|| region.into()),
        city: (!city.is_empty()).then(|| city.into()),
        latitude: Some(lat),
        longitude: Some(lon),
        ..Default::default()
    };
    let mut v4 = MmdbWriter::new().flat().database_type("city ipv4").build_epoch(1_781_700_000);
    v4.insert("81.2.69.0/24", rec("GB", "England", "Bracknell", 51.4036, -0.7618)).unwrap();
    v4.insert("8.8.8.0/24", rec("US", "", "", 37.751, -97.822)).unwrap();
    v4.write_to(dir.path().join("geolite2-city-ipv4.mmdb")).unwrap();
    let mut v6 = MmdbWriter::new().flat().database_type("city ipv6").build_epoch(1_781_700_060);
    v6.insert("2a00:1450::/32", rec("IE", "Leinster", "Dublin", 53.3382, -6.2591)).unwrap();
    v6.write_to(dir.path().join("geolite2-city-ipv6.mmdb")).unwrap();
    let mut asn = std::fs::File::create(dir.path().join("asn.csv")).unwrap();
    std::io::Write::write_all(&mut asn, b"81.2.69.0,81.2.69.255,20712,Andrews & Arnold Ltd\n2a00:1450::,2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff,15169,Google LLC\n").unwrap();
    let cfg = EnrichConfig { geoip_db: Some(dir.path().to_path_buf()), asn_db: Some(dir.path().join("asn.csv")), ..Default::default() };
    let e = Enricher::new(&cfg).unwrap();
    let ev = |ip: &str| e.enrich(&bytes(&with("ipAddress", json!(ip))), &src(1), now()).unwrap();
    let gb = ev("81.2.69.142");
    let loc = gb.location.unwrap();
    assert_eq!((loc.country_code.as_deref(), loc.region.as_deref(), loc.city.as_deref()), (Some("GB"), Some("England"), Some("Bracknell")));
    assert_eq!(loc.country, None, "the flat layout names no country");
    assert!((loc.latitude.unwrap() - 51.4036).abs() < 1e-9);
    assert_eq!(gb.asn, Some(crate::event::Asn { number: 20712, organization: Some("Andrews & Arnold Ltd".into()) }));
    let us = ev("8.8.8.8").location.unwrap();
    assert_eq!((us.country_code.as_deref(), us.city), (Some("US"), None), "empty text is no value");
    let ie = ev("2a00:1450:4001::1");
    assert_eq!(ie.location.unwrap().city.as_deref(), Some("Dublin"), "IPv6 from the IPv6 file");
    assert_eq!(ie.asn.map(|a| a.number), Some(15169));
    assert_eq!(ev("10.0.0.1").asn, None, "private addresses are not looked up");
    // The data's dates: the oldest City file, and the CSV's modification time.
    let dates = e.data_dates();
    assert_eq!(dates[0], ("geoip", chrono::DateTime::from_timestamp(1_781_700_000, 0).unwrap()));
    assert_eq!(dates[1].0, "asn");
}

#[test]
fn real_geolocation_data_when_present() {
    // `scripts/stack geoip` places current GeoLite2 City files (npm, ip-location-db's flat
    // layout) and AS ranges under the repository's `.stack/`; the variables point elsewhere.
    // The tests that depend on them run where they are; here, without them there is nothing to
    // check.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".stack/geoip");
    let city = std::env::var_os("AUDITFLOW_GEOIP_DB").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("city"));
    let asn = std::env::var_os("AUDITFLOW_ASN_DB").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("asn"));
    if !city.exists() {
        return;
    }
    let cfg = EnrichConfig { geoip_db: Some(city), asn_db: asn.exists().then_some(asn), ..Default::default() };
    let e = Enricher::new(&cfg).unwrap();
    let ev = |ip: &str| e.enrich(&bytes(&with("ipAddress", json!(ip))), &src(1), now()).unwrap();
    let loc = |ip: &str| ev(ip).location;
    let us = loc("8.8.8.8").unwrap();
    assert_eq!(us.country_code.as_deref(), Some("US"));
    assert!(us.latitude.is_some() && us.longitude.is_some());
    // MaxMind's own documented test address.
    assert_eq!(loc("81.2.69.142").unwrap().country_code.as_deref(), Some("GB"));
    // A university network with a city-level record (the impossible-travel tests use these).
    let tokyo = loc("133.11.1.1").unwrap();
    assert_eq!((tokyo.country_code.as_deref(), tokyo.city.as_deref()), (Some("JP"), Some("Tokyo")));
    assert!(loc("2001:4860:4860::8888").is_some());
    assert_eq!(loc("10.0.0.1"), None);
    if cfg.asn_db.is_some() {
        assert_eq!(ev("8.8.8.8").asn.map(|a| a.number), Some(15169));
        assert_eq!(ev("1.1.1.1").asn.and_then(|a| a.organization).as_deref(), Some("Cloudflare, Inc."));
    }
    assert!(e.data_dates().iter().any(|(d, _)| *d == "geoip"));
}

// --- validate_raw and output forms ------------------------------------------------------------

#[test]
fn validate_raw_checks_like_the_stage() {
    let cfg = EnrichConfig::default();
    let ok = RawEvent {
        action: Some("login".into()),
        resource: Some("auth".into()),
        ..Default::default()
    };
    assert!(validate_raw(&ok, &cfg).is_ok());
    let missing = RawEvent {
        resource: Some("auth".into()),
        ..Default::default()
    };
    assert_eq!(
        validate_raw(&missing, &cfg).unwrap_err().kind,
        RejectionKind::MissingField
    );
    let bad_ip = RawEvent {
        ip_address: Some("nope".into()),
        ..ok.clone()
    };
    assert_eq!(
        validate_raw(&bad_ip, &cfg).unwrap_err().kind,
        RejectionKind::InvalidIp
    );
    let future = RawEvent {
        timestamp: Some(RawTimestamp::EpochMillis(
            Utc::now().timestamp_millis() + 2 * MAX_FUTURE_SKEW_MS,
        )),
        ..ok.clone()
    };
    assert_eq!(
        validate_raw(&future, &cfg).unwrap_err().kind,
        RejectionKind::InvalidTimestamp
    );
    let big = RawEvent {
        error_message: Some("x".repeat(5000)),
        ..ok.clone()
    };
    let small = EnrichConfig {
        max_message_bytes: 1000,
        ..Default::default()
    };
    assert_eq!(
        validate_raw(&big, &small).unwrap_err().kind,
        RejectionKind::TooLarge
    );
    // The input is left as it was.
    let padded = RawEvent {
        action: Some(" login ".into()),
        ..ok
    };
    assert!(validate_raw(&padded, &cfg).is_ok());
    assert_eq!(padded.action.as_deref(), Some(" login "));
}

#[test]
fn enriched_json_form_is_camel_case_and_round_trips() {
    let ev = enrich(json!({
        "action": "a", "resource": "r", "userId": "u", "ipAddress": "8.8.8.8", "statusCode": 201,
        "duration": 5, "metadata": {"x": 1}
    }))
    .unwrap();
    let v = serde_json::to_value(&ev).unwrap();
    for key in [
        "id",
        "timestamp",
        "userId",
        "ipAddress",
        "statusCode",
        "durationMs",
        "enrichedAt",
        "classification",
        "compliance",
        "source",
    ] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    assert_eq!(v["ip"]["linkLocal"], json!(false));
    assert_eq!(
        v["source"]["timestampMs"],
        json!(now().timestamp_millis() - 5_000)
    );
    assert_eq!(v["severity"], json!("LOW"));
    assert!(v.get("sessionId").is_none(), "absent fields are omitted");
    assert_eq!(serde_json::from_value::<EnrichedEvent>(v).unwrap(), ev);
    // And through Avro.
    let mut buf = Vec::new();
    codec::encode_enriched(&ev, &mut buf);
    assert_eq!(codec::decode_enriched(&buf).unwrap(), ev);
}
