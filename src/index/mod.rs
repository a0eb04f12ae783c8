//! The search store: every event as an OpenSearch document, in monthly indices
//! `audit-events-YYYY.MM` (by event time) under one strict index template.
//!
//! Pure part: the settings, the document an event becomes, the template, the `_bulk` body and
//! the reading of its response item by item. [`client`] talks HTTP; `stages::index` is the
//! stage.
//!
//! Privacy: the index must not become a plaintext copy that crypto-shredding cannot reach.
//! Fields configured as personal (`AUDITFLOW_PERSONAL_FIELDS`) are never indexed in clear: the
//! user, session and IP address appear only as the keyed pseudonyms PostgreSQL uses (plus a
//! pseudonym of the IP's network, for grouping), and the user agent, location and metadata,
//! when personal, are left out. Everything else is searchable in clear.

pub mod client;
pub mod query;
pub mod rebuild;
pub mod retention;

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Datelike, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::event::EnrichedEvent;
use crate::privacy::{self, PersonalField, SecretKey, SubjectKind};

/// `[index]`: where and how events are indexed.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    /// OpenSearch base URL; none: no search store (`audit-index` refuses to start, `erase`
    /// has no index to redact). `AUDITFLOW_OPENSEARCH_URL`.
    pub url: Option<String>,
    /// Basic authentication. `AUDITFLOW_OPENSEARCH_USERNAME`, `AUDITFLOW_OPENSEARCH_PASSWORD`.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Index name prefix: indices are `<prefix>-YYYY.MM`. `AUDITFLOW_INDEX_PREFIX`.
    pub prefix: String,
    /// Per-request timeout. `AUDITFLOW_OPENSEARCH_TIMEOUT_MS`.
    pub timeout_ms: u64,
    /// `refresh_interval` of new indices (how soon a document is searchable).
    /// `AUDITFLOW_INDEX_REFRESH_INTERVAL`.
    pub refresh_interval: String,
}

impl Default for IndexSettings {
    fn default() -> Self {
        IndexSettings {
            url: None,
            username: None,
            password: None,
            prefix: "audit-events".into(),
            timeout_ms: 30_000,
            refresh_interval: "1s".into(),
        }
    }
}

impl std::fmt::Debug for IndexSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSettings")
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("refresh_interval", &self.refresh_interval)
            .finish()
    }
}

impl IndexSettings {
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let text = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(v) = text("AUDITFLOW_OPENSEARCH_URL") {
            self.url = Some(v);
        }
        if let Some(v) = text("AUDITFLOW_OPENSEARCH_USERNAME") {
            self.username = Some(v);
        }
        if let Some(v) = env.get("AUDITFLOW_OPENSEARCH_PASSWORD").filter(|v| !v.is_empty()) {
            self.password = Some(v.clone());
        }
        if let Some(v) = text("AUDITFLOW_INDEX_PREFIX") {
            self.prefix = v;
        }
        if let Some(v) = text("AUDITFLOW_INDEX_REFRESH_INTERVAL") {
            self.refresh_interval = v;
        }
        if let Some(v) = text("AUDITFLOW_OPENSEARCH_TIMEOUT_MS") {
            self.timeout_ms = v.parse().map_err(|_| ConfigError::new("AUDITFLOW_OPENSEARCH_TIMEOUT_MS", format!("not a number: {v:?}")))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.as_deref().is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
            return Err(ConfigError::new("AUDITFLOW_OPENSEARCH_URL", "must be an http:// or https:// URL"));
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 200
            && self.prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !self.prefix.starts_with(['-', '_']);
        if !prefix_ok {
            return Err(ConfigError::new("AUDITFLOW_INDEX_PREFIX", "lower-case letters, digits, '-' and '_' only, not starting with '-' or '_'"));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new("AUDITFLOW_OPENSEARCH_TIMEOUT_MS", "must be above 0"));
        }
        // OpenSearch's time units; -1 turns refresh off (documents never become searchable).
        let unit_ok = |v: &str| {
            ["ms", "s", "m"].iter().any(|u| v.strip_suffix(u).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        };
        if !unit_ok(&self.refresh_interval) {
            return Err(ConfigError::new("AUDITFLOW_INDEX_REFRESH_INTERVAL", "a duration such as 500ms, 1s or 30s"));
        }
        Ok(())
    }

    /// The monthly index of an event time.
    pub fn index_for(&self, at: DateTime<Utc>) -> String {
        format!("{}-{:04}.{:02}", self.prefix, at.year(), at.month())
    }

    pub fn template_name(&self) -> String {
        format!("{}-template", self.prefix)
    }
}

/// Pseudonym of the network an address belongs to (/24 for IPv4, /48 for IPv6), so events from
/// one network group together without the address.
pub fn network_of(ip: &str) -> Option<String> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
        }
    }
}

/// The document an event becomes. `personal`: the fields indexed only as pseudonyms or not at all.
pub fn document(ev: &EnrichedEvent, key: &SecretKey, personal: &[PersonalField]) -> Value {
    let is_personal = |f: PersonalField| personal.contains(&f);
    let (kind, id) = privacy::subject_of(ev);
    let mut doc = json!({
        "id": ev.id,
        "timestamp": ev.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "action": ev.action,
        "resource": ev.resource,
        "classification": ev.classification.as_str(),
        "severity": ev.severity.as_str(),
        "success": ev.success,
        "compliance": { "gdpr": ev.compliance.gdpr, "sox": ev.compliance.sox, "hipaa": ev.compliance.hipaa, "pci": ev.compliance.pci },
        "source": { "topic": ev.source.topic, "partition": ev.source.partition, "offset": ev.source.offset },
        "enrichedAt": ev.enriched_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "subjectPseudonym": privacy::pseudonym(key, kind, id),
    });
    let o = doc.as_object_mut().expect("an object");
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.to_string(), v);
        }
    };
    put("resourceId", ev.resource_id.clone().map(Value::from));
    put("method", ev.method.clone().map(Value::from));
    put("endpoint", ev.endpoint.clone().map(Value::from));
    put("statusCode", ev.status_code.map(Value::from));
    put("errorMessage", ev.error_message.clone().map(Value::from));
    put("durationMs", ev.duration_ms.map(Value::from));
    put("ipFacts", ev.ip.as_ref().map(|f| json!({"version": f.version, "private": f.private, "global": f.global})));
    // The network operator of an address is not personal on its own (many share it).
    put("asn", ev.asn.as_ref().map(|a| json!({"number": a.number, "organization": a.organization})));
    // The same pseudonyms as PostgreSQL's: searching for a user computes the pseudonym.
    put("userPseudonym", ev.user_id.as_deref().map(|u| Value::from(privacy::pseudonym(key, SubjectKind::User, u))));
    if let Some(ip) = ev.ip_address.as_deref() {
        put("ipPseudonym", Some(privacy::pseudonym(key, SubjectKind::Ip, ip).into()));
        put("networkPseudonym", network_of(ip).map(|n| Value::from(privacy::pseudonym(key, SubjectKind::Ip, &n))));
    }
    put("sessionPseudonym", ev.session_id.as_deref().map(|s| Value::from(privacy::pseudonym(key, SubjectKind::Session, s))));
    if !is_personal(PersonalField::UserId) {
        put("userId", ev.user_id.clone().map(Value::from));
    }
    if !is_personal(PersonalField::SessionId) {
        put("sessionId", ev.session_id.clone().map(Value::from));
    }
    if !is_personal(PersonalField::IpAddress) {
        put("ipAddress", ev.ip_address.clone().map(Value::from));
    }
    if !is_personal(PersonalField::UserAgent) {
        put("userAgent", ev.user_agent.clone().map(Value::from));
    }
    if !is_personal(PersonalField::Location) {
        if let Some(l) = &ev.location {
            let mut loc = json!({});
            let m = loc.as_object_mut().expect("an object");
            for (k, v) in [("countryCode", &l.country_code), ("country", &l.country), ("region", &l.region), ("city", &l.city)] {
                if let Some(v) = v {
                    m.insert(k.into(), v.clone().into());
                }
            }
            if let (Some(lat), Some(lon)) = (l.latitude, l.longitude) {
                m.insert("point".into(), json!({"lat": lat, "lon": lon}));
            }
            put("location", Some(loc));
        }
    }
    if !is_personal(PersonalField::Metadata) {
        // Searchable as flattened text, whatever its shape (the mapping stays fixed).
        put("metadata", ev.metadata.as_ref().map(|m| Value::from(m.to_string())));
    }
    doc
}

/// The index template every monthly index is created from: strict (an unknown field is a
/// mapping error, dead-lettered, never a silent new field), one shard, no replica by default.
pub fn template(settings: &IndexSettings) -> Value {
    let kw = || json!({"type": "keyword", "ignore_above": 1024});
    let text_kw = || json!({"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 1024}}});
    let t = |ty: &str| json!({"type": ty});
    let object = |fields: Vec<(&str, Value)>| json!({"properties": fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<serde_json::Map<_, _>>()});
    let fields: Vec<(&str, Value)> = vec![
        ("id", kw()), ("timestamp", t("date")), ("enrichedAt", t("date")),
        ("action", text_kw()), ("resource", text_kw()), ("resourceId", kw()), ("method", kw()), ("endpoint", kw()),
        ("statusCode", t("integer")), ("classification", kw()), ("severity", kw()), ("success", t("boolean")),
        ("errorMessage", t("text")), ("durationMs", t("long")),
        ("compliance", object(vec![("gdpr", t("boolean")), ("sox", t("boolean")), ("hipaa", t("boolean")), ("pci", t("boolean"))])),
        ("source", object(vec![("topic", kw()), ("partition", t("integer")), ("offset", t("long"))])),
        ("ipFacts", object(vec![("version", t("byte")), ("private", t("boolean")), ("global", t("boolean"))])),
        ("asn", object(vec![("number", t("long")), ("organization", kw())])),
        ("subjectPseudonym", kw()), ("userPseudonym", kw()), ("ipPseudonym", kw()), ("networkPseudonym", kw()), ("sessionPseudonym", kw()),
        ("userId", kw()), ("sessionId", kw()), ("ipAddress", t("ip")), ("userAgent", t("text")),
        ("location", object(vec![("countryCode", kw()), ("country", kw()), ("region", kw()), ("city", kw()), ("point", t("geo_point"))])),
        ("metadata", t("text")),
        ("personalDataErased", t("boolean")),
    ];
    let properties: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    json!({
        "index_patterns": [format!("{}-*", settings.prefix)],
        "template": {
            "settings": { "number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": settings.refresh_interval },
            "mappings": { "dynamic": "strict", "properties": properties }
        }
    })
}

/// Every field of a document that identifies its subject, directly or by pseudonym: what
/// erasure takes out (the document stays, as a fact, like the row in PostgreSQL).
pub const IDENTIFYING_FIELDS: &[&str] = &[
    "subjectPseudonym", "userPseudonym", "sessionPseudonym", "ipPseudonym", "networkPseudonym",
    "userId", "sessionId", "ipAddress", "userAgent", "location", "metadata",
];

/// A document with the identifying fields taken out and marked as erased.
pub fn redact(doc: &mut Value) {
    if let Some(o) = doc.as_object_mut() {
        for f in IDENTIFYING_FIELDS {
            o.remove(*f);
        }
        o.insert("personalDataErased".into(), Value::Bool(true));
    }
}

/// NDJSON body of `_bulk` updates that redact documents in place (`(index, id)` each).
pub fn redaction_body(docs: &[(String, String)]) -> Vec<u8> {
    let mut patch = serde_json::Map::new();
    for f in IDENTIFYING_FIELDS {
        patch.insert((*f).into(), Value::Null);
    }
    patch.insert("personalDataErased".into(), Value::Bool(true));
    let patch = json!({"doc": patch}).to_string();
    let mut out = Vec::new();
    for (index, id) in docs {
        out.extend_from_slice(json!({"update": {"_index": index, "_id": id}}).to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(patch.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The query for every document of a subject (by any of its pseudonyms).
pub fn subject_query(pseudonym: &str) -> Value {
    json!({"bool": {"should": [
        {"term": {"subjectPseudonym": pseudonym}},
        {"term": {"userPseudonym": pseudonym}},
        {"term": {"ipPseudonym": pseudonym}},
        {"term": {"sessionPseudonym": pseudonym}}
    ], "minimum_should_match": 1}})
}

/// One document of a bulk request.
#[derive(Debug, Clone)]
pub struct BulkDoc {
    pub index: String,
    pub id: String,
    pub source: Value,
}

impl BulkDoc {
    /// The document of `ev`, in its month's index, `_id` = event id.
    pub fn of(ev: &EnrichedEvent, settings: &IndexSettings, key: &SecretKey, personal: &[PersonalField]) -> BulkDoc {
        BulkDoc { index: settings.index_for(ev.timestamp), id: ev.id.clone(), source: document(ev, key, personal) }
    }
}

/// The operation of a bulk item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkOp {
    /// Only if absent: 409 when the document is there (the stage: a replay adds nothing).
    Create,
    /// Create or replace (a rebuild from the ledger: the stored row is the truth).
    Index,
}

/// NDJSON body of `_bulk` with one `create` per document: `_id` = event id, so a replay or a
/// second instance answers 409 instead of making a second document.
pub fn bulk_body(docs: &[&BulkDoc]) -> Vec<u8> {
    bulk_body_op(BulkOp::Create, docs)
}

/// NDJSON body of `_bulk` with one `op` per document, `_id` = event id.
pub fn bulk_body_op(op: BulkOp, docs: &[&BulkDoc]) -> Vec<u8> {
    let op = match op {
        BulkOp::Create => "create",
        BulkOp::Index => "index",
    };
    let mut out = Vec::with_capacity(docs.len() * 512);
    for d in docs {
        out.extend_from_slice(json!({op: {"_index": d.index, "_id": d.id}}).to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(d.source.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// What became of one item of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Created,
    /// 409: the document is there already (a replay, or another instance).
    Exists,
    /// 400 and the like: the cluster refuses this document for its content.
    Rejected(String),
    /// 429, 5xx: try this item again.
    Retry(String),
}

/// Read a `_bulk` response: one outcome per item, in request order.
pub fn bulk_outcomes(response: &Value, expected: usize) -> Result<Vec<ItemOutcome>, String> {
    let items = response.get("items").and_then(Value::as_array).ok_or("bulk response without items")?;
    if items.len() != expected {
        return Err(format!("bulk response has {} items for {expected} documents", items.len()));
    }
    Ok(items
        .iter()
        .map(|item| {
            let r = item.get("create").or_else(|| item.as_object().and_then(|o| o.values().next())).cloned().unwrap_or_default();
            let status = r.get("status").and_then(Value::as_u64).unwrap_or(0);
            let reason = || {
                let e = r.get("error").cloned().unwrap_or_default();
                let kind = e.get("type").and_then(Value::as_str).unwrap_or("unknown");
                let why = e.get("reason").and_then(Value::as_str).unwrap_or("");
                let text = format!("{status} {kind}: {why}");
                text.chars().take(1000).collect::<String>()
            };
            match status {
                200 | 201 => ItemOutcome::Created,
                409 => ItemOutcome::Exists,
                429 | 500..=599 | 0 => ItemOutcome::Retry(reason()),
                _ => ItemOutcome::Rejected(reason()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Classification, ComplianceFlags, Severity, SourcePosition};

    fn event() -> EnrichedEvent {
        EnrichedEvent {
            id: "e1".into(),
            timestamp: DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap().with_timezone(&Utc),
            user_id: Some("alice".into()),
            session_id: Some("s1".into()),
            action: "login".into(),
            resource: "auth".into(),
            resource_id: None,
            method: Some("POST".into()),
            endpoint: Some("/login".into()),
            status_code: Some(401),
            user_agent: Some("curl/8".into()),
            ip_address: Some("203.0.113.7".into()),
            ip: None,
            location: None,
            classification: Classification::Internal,
            severity: Severity::High,
            metadata: Some(json!({"k": "v"})),
            success: false,
            error_message: Some("bad password".into()),
            duration_ms: Some(12),
            compliance: ComplianceFlags::default(),
            source: SourcePosition { topic: "audit-raw".into(), partition: 0, offset: 5, timestamp_ms: None },
            enriched_at: Utc::now(),
            asn: None,
        }
    }

    #[test]
    fn personal_fields_are_only_pseudonyms_in_the_document() {
        let key = SecretKey([9; 32]);
        let all = [PersonalField::UserId, PersonalField::SessionId, PersonalField::IpAddress, PersonalField::UserAgent, PersonalField::Location, PersonalField::Metadata];
        let doc = document(&event(), &key, &all);
        let text = doc.to_string();
        for secret in ["alice", "s1", "203.0.113", "curl/8", "\"k\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(doc["userPseudonym"], privacy::pseudonym(&key, SubjectKind::User, "alice"));
        assert_eq!(doc["subjectPseudonym"], doc["userPseudonym"]);
        assert_eq!(doc["networkPseudonym"], privacy::pseudonym(&key, SubjectKind::Ip, "203.0.113.0/24"));
        assert_eq!(doc["errorMessage"], "bad password");
        // Not personal by configuration: searchable in clear.
        let doc = document(&event(), &key, &[]);
        assert_eq!((doc["userId"].as_str(), doc["ipAddress"].as_str()), (Some("alice"), Some("203.0.113.7")));
    }

    #[test]
    fn every_field_of_a_full_document_is_in_the_strict_template() {
        let mut ev = event();
        ev.ip = Some(crate::enrich::ip_facts("203.0.113.7".parse().unwrap()));
        ev.location = Some(crate::event::Location { country_code: Some("GB".into()), city: Some("London".into()), latitude: Some(51.5), longitude: Some(-0.1), ..Default::default() });
        ev.asn = Some(crate::event::Asn { number: 786, organization: Some("Jisc Services Limited".into()) });
        let doc = document(&ev, &SecretKey([9; 32]), &[]);
        let props = template(&IndexSettings::default())["template"]["mappings"]["properties"].clone();
        for (k, v) in doc.as_object().unwrap() {
            assert!(props.get(k).is_some(), "{k} is not in the template");
            if let Some(inner) = v.as_object() {
                for ik in inner.keys() {
                    assert!(props[k]["properties"].get(ik).is_some(), "{k}.{ik} is not in the template");
                }
            }
        }
        assert_eq!(doc["asn"]["number"], 786);
    }

    #[test]
    fn redaction_takes_out_every_identifying_field() {
        let key = SecretKey([9; 32]);
        let mut doc = document(&event(), &key, &[]);
        redact(&mut doc);
        let text = doc.to_string();
        for secret in ["alice", "s1", "203.0.113", "curl/8", "Pseudonym"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(doc["personalDataErased"], true);
        assert_eq!(doc["action"], "login");
        let body = String::from_utf8(redaction_body(&[("i".into(), "e1".into())])).unwrap();
        assert!(body.starts_with("{\"update\":{\"_id\":\"e1\",\"_index\":\"i\"}}\n{\"doc\":{"), "{body}");
        assert!(body.contains("\"userPseudonym\":null"));
    }

    #[test]
    fn monthly_indices_and_settings_are_checked() {
        let s = IndexSettings::default();
        assert_eq!(s.index_for(event().timestamp), "audit-events-2026.12");
        assert!(s.validate().is_ok());
        assert!(IndexSettings { prefix: "Audit".into(), ..IndexSettings::default() }.validate().is_err());
        assert!(IndexSettings { url: Some("opensearch:9200".into()), ..IndexSettings::default() }.validate().is_err());
        assert!(IndexSettings { url: Some("http://127.0.0.1:9200".into()), ..IndexSettings::default() }.validate().is_ok());
        assert_eq!(network_of("2001:db8:1:2::7").as_deref(), Some("2001:db8:1::/48"));
    }

    #[test]
    fn bulk_items_are_read_one_by_one() {
        let r = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"status": 400, "error": {"type": "strict_dynamic_mapping_exception", "reason": "mapping set to strict"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
        ]});
        let o = bulk_outcomes(&r, 4).unwrap();
        assert_eq!(o[0], ItemOutcome::Created);
        assert_eq!(o[1], ItemOutcome::Exists);
        assert!(matches!(&o[2], ItemOutcome::Rejected(why) if why.contains("strict")));
        assert!(matches!(&o[3], ItemOutcome::Retry(_)));
        assert!(bulk_outcomes(&r, 3).is_err());
        let doc = BulkDoc { index: "i".into(), id: "e\"1".into(), source: json!({"a": 1}) };
        let body = String::from_utf8(bulk_body(&[&doc])).unwrap();
        assert_eq!(body, "{\"create\":{\"_id\":\"e\\\"1\",\"_index\":\"i\"}}\n{\"a\":1}\n");
    }
}
