//! The route table: every endpoint, the roles it admits and the clearance it needs, and what
//! the OpenAPI document says about it. Deny by default: the router answers 403 for any route
//! without an entry here, and [`crate::api::server::handlers`] builds the router from the same
//! paths, so a handler cannot be added without deciding who may call it.

use serde_json::{json, Map, Value};

use super::auth::{Caller, Role};
use crate::event::Classification;

use Role::*;

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (the OpenAPI document).
    Anyone,
    /// A valid token with one of these roles; `clearance`: the least clearance the answer needs
    /// (answers that aggregate over every classification need RESTRICTED).
    Roles { any_of: &'static [Role], clearance: Classification },
}

const fn roles(any_of: &'static [Role]) -> Access {
    Access::Roles { any_of, clearance: Classification::Public }
}
const fn restricted(any_of: &'static [Role]) -> Access {
    Access::Roles { any_of, clearance: Classification::Restricted }
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// axum's path syntax (`{id}`), which is also OpenAPI's.
    pub path: &'static str,
    pub access: Access,
    pub tag: &'static str,
    pub summary: &'static str,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    /// Request body media types.
    pub body: &'static [&'static str],
    /// Success status and its media type.
    pub ok: (u16, &'static str),
}

const SEARCH_QUERY: &[(&str, &str)] = &[
    ("from", "events at or after this time (RFC 3339)"),
    ("to", "events before this time (RFC 3339)"),
    ("user", "a user id (searched by its pseudonym)"),
    ("ip", "an address, or a network in CIDR notation (/16–/24, /40–/48)"),
    ("action", "exact action"),
    ("resource", "exact resource"),
    ("severity", "LOW, MEDIUM, HIGH or CRITICAL"),
    ("classification", "PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED"),
    ("success", "true or false"),
    ("q", "free text over action, resource and error message (words, never query syntax)"),
    ("limit", "hits per page, 1–1000 (default 50)"),
    ("interval", "histogram bucket width: 1m, 5m, 1h, 1d, … (default 1h)"),
    ("cursor", "the `next` cursor of the previous page"),
];
const REASON: &[(&str, &str)] = &[("reason", "why personal fields are read in clear (with scope pii:read); without it they stay pseudonyms")];
const JSON: &str = "application/json";
const HTML: &str = "text/html";
const FORM: &str = "application/x-www-form-urlencoded";

pub const ROUTES: &[Route] = &[
    Route { method: "GET", path: "/openapi.json", access: Access::Anyone, tag: "meta", summary: "This OpenAPI document", query: &[], body: &[], ok: (200, JSON) },
    Route {
        method: "POST", path: "/v1/events", access: roles(&[Ingest]), tag: "ingest",
        summary: "Send one event (JSON object), a JSON array of events, or NDJSON. Each is validated like `auditflow emit`; bad ones are reported by index and not sent. 202 once Kafka has the accepted ones (acks=all); 400 when none is valid; 413 over the body or event limit. An `Idempotency-Key` header (or the events' own ids) makes a retry harmless.",
        query: &[], body: &["application/json", "application/x-ndjson"], ok: (202, JSON),
    },
    Route { method: "GET", path: "/v1/events", access: roles(&[Analyst, Auditor]), tag: "events", summary: "Search events (the filters of `auditflow search`), newest first, with the total and a time histogram; events above the caller's clearance are left out of all three", query: SEARCH_QUERY, body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/events/{id}", access: roles(&[Analyst, Auditor]), tag: "events", summary: "One stored event with its chain position and whether its link verifies", query: REASON, body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/subjects/{kind}/{subject}/timeline", access: roles(&[Analyst, Auditor]), tag: "events", summary: "A subject's events, oldest first (kind: user, ip, session)", query: &[("from", "RFC 3339"), ("to", "RFC 3339"), ("limit", "1–1000"), ("cursor", "the `next` cursor of the previous page")], body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/alerts", access: roles(&[Analyst, Auditor]), tag: "alerts", summary: "Alerts, newest first; alerts with evidence above the caller's clearance are left out", query: &[("status", "open, acknowledged or resolved"), ("policy", "policy id"), ("rule", "rule id"), ("severity", "LOW … CRITICAL"), ("from", "created at or after (RFC 3339)"), ("to", "created before (RFC 3339)"), ("limit", "1–500 (default 50)"), ("cursor", "the `next` cursor of the previous page")], body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/alerts/{id}", access: roles(&[Analyst, Auditor]), tag: "alerts", summary: "One alert with its evidence events and its triage history", query: &[], body: &[], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/alerts/{id}/acknowledge", access: roles(&[Analyst]), tag: "alerts", summary: "Acknowledge an alert (body: note, assignee); published on security-alerts", query: &[], body: &[JSON], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/alerts/{id}/resolve", access: roles(&[Analyst]), tag: "alerts", summary: "Resolve an alert (body: note, assignee); published on security-alerts", query: &[], body: &[JSON], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/alerts/{id}/reopen", access: roles(&[Analyst]), tag: "alerts", summary: "Reopen an alert (body: note, assignee); published on security-alerts", query: &[], body: &[JSON], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/reports/{framework}", access: restricted(&[Auditor]), tag: "compliance", summary: "The compliance report of `auditflow report` (framework: sox, gdpr, hipaa, pci)", query: &[("from", "period start (date or RFC 3339; default 30 days ago)"), ("to", "period end (default now)"), ("format", "json (default), csv or html")], body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/holds", access: roles(&[Auditor, Admin]), tag: "compliance", summary: "Legal holds", query: &[("all", "true: released ones too")], body: &[], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/holds", access: roles(&[Admin]), tag: "compliance", summary: "Place a legal hold (body: reason, and subject with kind, or from/to, or framework)", query: &[], body: &[JSON], ok: (201, JSON) },
    Route { method: "POST", path: "/v1/holds/{id}/release", access: roles(&[Admin]), tag: "compliance", summary: "Release a legal hold", query: &[], body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/ledger/checkpoints", access: roles(&[Auditor]), tag: "ledger", summary: "Signed checkpoints, newest first", query: &[("chain", "one chain id"), ("limit", "1–1000 (default 100)")], body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/ledger/verifications/latest", access: restricted(&[Auditor]), tag: "ledger", summary: "The latest verification run and its result", query: &[], body: &[], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/ledger/verifications", access: restricted(&[Auditor]), tag: "ledger", summary: "Start a verification of every chain against its checkpoints (202; poll the latest)", query: &[], body: &[], ok: (202, JSON) },
    Route { method: "POST", path: "/v1/subjects/{kind}/{subject}/export", access: restricted(&[Privacy]), tag: "privacy", summary: "Every stored event about a subject, personal fields in clear (body: reason)", query: &[], body: &[JSON], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/subjects/{kind}/{subject}/erase", access: roles(&[Privacy]), tag: "privacy", summary: "Crypto-shred a subject (body: reason); answers the signed receipt; 409 under legal hold", query: &[], body: &[JSON], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/dead-letters", access: roles(&[Analyst, Admin]), tag: "dead-letters", summary: "Dead letters with their reasons (payloads only with scope pii:read and a reason)", query: &[("stage", "enrich, persist, rules, alert, compliance, index"), ("kind", "rejection kind"), ("limit", "1–1000 (default 100)"), ("reason", "why payloads are shown")], body: &[], ok: (200, JSON) },
    Route { method: "GET", path: "/v1/dead-letters/{partition}/{offset}", access: roles(&[Analyst, Admin]), tag: "dead-letters", summary: "One dead letter", query: REASON, body: &[], ok: (200, JSON) },
    Route { method: "POST", path: "/v1/dead-letters/replay", access: roles(&[Admin]), tag: "dead-letters", summary: "Send dead letters back to their stage's input, each at most once (body: positions [\"p:o\"], or stage/kind)", query: &[], body: &[JSON], ok: (200, JSON) },
    // The console: HTML pages over the handlers above, under the same rules (not in the OpenAPI
    // document). Sign-in and the stylesheet need no token; everything else does.
    Route { method: "GET", path: "/ui", access: Access::Anyone, tag: "console", summary: "to the alerts", query: &[], body: &[], ok: (303, HTML) },
    Route { method: "GET", path: "/ui/assets/console.css", access: Access::Anyone, tag: "console", summary: "stylesheet", query: &[], body: &[], ok: (200, "text/css") },
    Route { method: "GET", path: "/ui/assets/console.js", access: Access::Anyone, tag: "console", summary: "script of the live view", query: &[], body: &[], ok: (200, "text/javascript") },
    Route { method: "GET", path: "/ui/login", access: Access::Anyone, tag: "console", summary: "sign-in form", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "POST", path: "/ui/login", access: Access::Anyone, tag: "console", summary: "sign in with a token", query: &[], body: &[FORM], ok: (303, HTML) },
    Route { method: "POST", path: "/ui/logout", access: Access::Anyone, tag: "console", summary: "sign out", query: &[], body: &[FORM], ok: (303, HTML) },
    Route { method: "GET", path: "/ui/oidc/start", access: Access::Anyone, tag: "console", summary: "sign in through the identity provider (authorization code with PKCE)", query: &[], body: &[], ok: (303, HTML) },
    Route { method: "GET", path: "/ui/oidc/callback", access: Access::Anyone, tag: "console", summary: "the identity provider's answer", query: &[], body: &[], ok: (303, HTML) },
    Route { method: "GET", path: "/ui/alerts", access: roles(&[Analyst, Auditor]), tag: "console", summary: "alerts page", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "GET", path: "/ui/alerts/live", access: roles(&[Analyst, Auditor]), tag: "console", summary: "alert changes as server-sent events", query: &[], body: &[], ok: (200, "text/event-stream") },
    Route { method: "GET", path: "/ui/alerts/{id}", access: roles(&[Analyst, Auditor]), tag: "console", summary: "alert page", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "POST", path: "/ui/alerts/{id}/triage", access: roles(&[Analyst]), tag: "console", summary: "triage form", query: &[], body: &[FORM], ok: (303, HTML) },
    Route { method: "GET", path: "/ui/events", access: roles(&[Analyst, Auditor]), tag: "console", summary: "events page", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "GET", path: "/ui/events/{id}", access: roles(&[Analyst, Auditor]), tag: "console", summary: "event page", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "GET", path: "/ui/timeline", access: roles(&[Analyst, Auditor]), tag: "console", summary: "subject timeline", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "GET", path: "/ui/compliance", access: restricted(&[Auditor]), tag: "console", summary: "compliance figures", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "GET", path: "/ui/compliance/{framework}/{file}", access: restricted(&[Auditor]), tag: "console", summary: "report download", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "GET", path: "/ui/ledger", access: restricted(&[Auditor]), tag: "console", summary: "ledger", query: &[], body: &[], ok: (200, HTML) },
    Route { method: "POST", path: "/ui/ledger/verify", access: restricted(&[Auditor]), tag: "console", summary: "run a verification", query: &[], body: &[FORM], ok: (303, HTML) },
    Route { method: "GET", path: "/ui/health", access: roles(&[Analyst, Admin]), tag: "console", summary: "pipeline health", query: &[], body: &[], ok: (200, HTML) },
];

/// The table's entry for a matched route.
pub fn lookup(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

/// Why a caller is refused an endpoint it authenticated for.
pub fn refusal(access: Access, caller: &Caller) -> Option<String> {
    match access {
        Access::Anyone => None,
        Access::Roles { any_of, clearance } => {
            if !any_of.iter().any(|r| caller.has(*r)) {
                let names: Vec<&str> = any_of.iter().map(|r| r.as_str()).collect();
                Some(format!("needs role {}", names.join(" or ")))
            } else if caller.clearance < clearance {
                Some(format!("needs clearance {}", clearance.as_str()))
            } else {
                None
            }
        }
    }
}

/// The OpenAPI 3.1 document, generated from the table (committed as `schemas/openapi.json`).
pub fn openapi() -> Value {
    let problem = json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
    let mut paths = Map::new();
    for r in ROUTES.iter().filter(|r| r.tag != "console") {
        let mut params: Vec<Value> = Vec::new();
        for seg in r.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        for (name, description) in r.query {
            params.push(json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}}));
        }
        if r.method == "POST" && r.path == "/v1/events" {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "description": "the same key and body give the same event ids", "schema": {"type": "string", "maxLength": 200}}));
        }
        let mut responses = Map::new();
        responses.insert(r.ok.0.to_string(), json!({"description": "success", "content": {r.ok.1: {"schema": {"type": "object"}}}}));
        let mut errors = vec![(400, "invalid request"), (503, "a store behind the API is unavailable")];
        let mut op = Map::new();
        match r.access {
            Access::Anyone => {
                op.insert("security".into(), json!([]));
            }
            Access::Roles { any_of, clearance } => {
                errors.extend([(401, "no valid bearer token"), (403, "role or clearance missing")]);
                let names: Vec<&str> = any_of.iter().map(|r| r.as_str()).collect();
                op.insert("x-auditflow-roles".into(), json!(names));
                op.insert("x-auditflow-clearance".into(), json!(clearance.as_str()));
            }
        }
        if r.path.contains('{') {
            errors.push((404, "not found, or above the caller's clearance"));
        }
        if !r.body.is_empty() {
            errors.push((413, "body too large"));
        }
        errors.sort_unstable();
        for (code, d) in errors {
            responses.insert(code.to_string(), json!({"description": d, "content": problem.clone()}));
        }
        op.insert("tags".into(), json!([r.tag]));
        op.insert("summary".into(), json!(r.summary));
        op.insert("operationId".into(), json!(operation_id(r)));
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if !r.body.is_empty() {
            let content: Map<String, Value> = r.body.iter().map(|m| (m.to_string(), json!({"schema": {}}))).collect();
            op.insert("requestBody".into(), json!({"required": true, "content": content}));
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = Value::Object(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "auditflow API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP ingest and queries over the audit pipeline. Every read is itself an audit event on audit-raw."
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Problem": {
                "type": "object",
                "description": "RFC 9457 problem details",
                "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}},
                "required": ["title", "status"]
            }}
        }
    })
}

fn operation_id(r: &Route) -> String {
    let mut id = r.method.to_ascii_lowercase();
    for seg in r.path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        let seg = seg.trim_matches(|c| c == '{' || c == '}');
        id.push('_');
        id.push_str(&seg.replace(['-', '.'], "_"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn caller(roles: &[Role], clearance: Classification) -> Caller {
        Caller { subject: "s".into(), roles: roles.iter().copied().collect(), clearance, scopes: BTreeSet::new() }
    }

    #[test]
    fn every_route_is_unique_and_admits_someone() {
        let mut seen = BTreeSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {} twice", r.method, r.path);
            if let Access::Roles { any_of, .. } = r.access {
                assert!(!any_of.is_empty(), "{} {} admits nobody", r.method, r.path);
            }
        }
        assert!(lookup("GET", "/v1/nothing").is_none());
    }

    #[test]
    fn roles_and_clearance_bound_access() {
        let report = lookup("GET", "/v1/reports/{framework}").unwrap().access;
        assert_eq!(refusal(report, &caller(&[Analyst], Classification::Restricted)).as_deref(), Some("needs role auditor"));
        assert_eq!(refusal(report, &caller(&[Auditor], Classification::Confidential)).as_deref(), Some("needs clearance RESTRICTED"));
        assert_eq!(refusal(report, &caller(&[Auditor], Classification::Restricted)), None);
        let ingest = lookup("POST", "/v1/events").unwrap().access;
        assert!(refusal(ingest, &caller(&[Admin, Analyst, Auditor, Privacy], Classification::Restricted)).is_some(), "admin is not a superuser");
    }

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.json");
        let generated = serde_json::to_string_pretty(&openapi()).unwrap() + "\n";
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if std::env::var_os("AUDITFLOW_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(committed == generated, "schemas/openapi.json is stale: run `AUDITFLOW_WRITE_OPENAPI=1 cargo test --lib openapi` and commit it");
    }
}
