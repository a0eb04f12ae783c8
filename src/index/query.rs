//! Analysts' questions as OpenSearch queries, for `auditflow search` and the HTTP API alike.
//!
//! Identifiers are never sent in clear when the index holds them as pseudonyms: a user, an
//! address or a network is turned into the same keyed pseudonym the index stage wrote. A CIDR
//! wider than the indexed network (/24, /48) is expanded into the networks it covers, up to 256.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::privacy::{self, PersonalField, SecretKey, SubjectKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// One question. Every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub user: Option<String>,
    /// An address, or a network in CIDR notation.
    pub ip: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub severity: Option<String>,
    pub classification: Option<String>,
    pub success: Option<bool>,
    /// Free text over action, resource and error message.
    pub text: Option<String>,
    /// Hits returned (the total is always counted).
    pub size: usize,
    /// Histogram bucket width, e.g. `1h`, `1d` (a fixed interval).
    pub interval: Option<String>,
    /// The caller's clearance: events classified above it are left out of the hits, the total
    /// and the histogram alike (a filter, so nothing about them leaks through counts).
    pub clearance: Option<crate::event::Classification>,
    /// Oldest first (a timeline) instead of newest first.
    pub ascending: bool,
    /// The sort values of the last hit of the previous page (`search_after`): pages stay
    /// stable while new events arrive, and no page costs more than the one before.
    pub after: Option<Value>,
}

/// The /24 (IPv4) or /48 (IPv6) networks a CIDR covers, as the index stage names them.
fn networks(cidr: &str) -> Result<Vec<String>, QueryError> {
    let (addr, len) = cidr.split_once('/').ok_or_else(|| QueryError(format!("{cidr:?} is not a CIDR")))?;
    let ip: IpAddr = addr.parse().map_err(|_| QueryError(format!("{addr:?} is not an IP address")))?;
    let len: u8 = len.parse().map_err(|_| QueryError(format!("{len:?} is not a prefix length")))?;
    match ip {
        IpAddr::V4(v4) => {
            if !(16..=24).contains(&len) {
                return Err(QueryError("IPv4 networks are searchable from /16 to /24 (addresses are indexed as pseudonyms of their /24)".into()));
            }
            let base = u32::from(v4) & (u32::MAX << (32 - len));
            let count = 1u32 << (24 - len);
            Ok((0..count).map(|i| {
                let n = base + (i << 8);
                format!("{}.{}.{}.0/24", n >> 24, (n >> 16) & 255, (n >> 8) & 255)
            }).collect())
        }
        IpAddr::V6(v6) => {
            if !(40..=48).contains(&len) {
                return Err(QueryError("IPv6 networks are searchable from /40 to /48 (addresses are indexed as pseudonyms of their /48)".into()));
            }
            let bits = u128::from(v6) >> 80; // the top 48 bits
            let base = bits & (u128::MAX << (48 - len));
            let count = 1u128 << (48 - len);
            Ok((0..count).map(|i| {
                let n = base + i;
                format!("{:x}:{:x}:{:x}::/48", (n >> 32) & 0xffff, (n >> 16) & 0xffff, n & 0xffff)
            }).collect())
        }
    }
}

impl SearchQuery {
    /// The `_search` body. `key`: the pseudonym key; `personal`: the fields indexed only as
    /// pseudonyms (as configured for the index stage).
    pub fn to_body(&self, key: &SecretKey, personal: &[PersonalField]) -> Result<Value, QueryError> {
        let mut filter: Vec<Value> = Vec::new();
        if self.from.is_some() || self.to.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(f) = self.from {
                range.insert("gte".into(), f.to_rfc3339().into());
            }
            if let Some(t) = self.to {
                range.insert("lt".into(), t.to_rfc3339().into());
            }
            filter.push(json!({"range": {"timestamp": range}}));
        }
        if let Some(u) = &self.user {
            filter.push(json!({"term": {"userPseudonym": privacy::pseudonym(key, SubjectKind::User, u)}}));
        }
        if let Some(ip) = &self.ip {
            let in_clear = !personal.contains(&PersonalField::IpAddress);
            if in_clear {
                filter.push(json!({"term": {"ipAddress": ip}}));
            } else if ip.contains('/') {
                let nets: Vec<String> = networks(ip)?.iter().map(|n| privacy::pseudonym(key, SubjectKind::Ip, n)).collect();
                filter.push(json!({"terms": {"networkPseudonym": nets}}));
            } else {
                let addr: IpAddr = ip.parse().map_err(|_| QueryError(format!("{ip:?} is not an IP address")))?;
                filter.push(json!({"term": {"ipPseudonym": privacy::pseudonym(key, SubjectKind::Ip, &addr.to_string())}}));
            }
        }
        for (field, value) in [("action.raw", &self.action), ("resource.raw", &self.resource)] {
            if let Some(v) = value {
                filter.push(json!({"term": {field: v}}));
            }
        }
        for (field, value) in [("severity", &self.severity), ("classification", &self.classification)] {
            if let Some(v) = value {
                filter.push(json!({"term": {field: v.to_ascii_uppercase()}}));
            }
        }
        if let Some(s) = self.success {
            filter.push(json!({"term": {"success": s}}));
        }
        if let Some(c) = self.clearance {
            let allowed: Vec<&str> = crate::event::Classification::ALL.iter().filter(|k| **k <= c).map(|k| k.as_str()).collect();
            filter.push(json!({"terms": {"classification": allowed}}));
        }
        // Every word must appear in one of the fields. A `multi_match` takes the text as data:
        // quotes, operators, wildcards and field names in it are only words.
        let must: Vec<Value> = self
            .text
            .iter()
            .map(|t| json!({"multi_match": {"query": t, "fields": ["action", "resource", "errorMessage"], "type": "cross_fields", "operator": "and"}}))
            .collect();
        let interval = self.interval.clone().unwrap_or_else(|| "1h".into());
        let order = if self.ascending { "asc" } else { "desc" };
        let mut body = json!({
            "size": self.size,
            "track_total_hits": true,
            "sort": [{"timestamp": order}, {"id": "asc"}],
            "query": {"bool": {"filter": filter, "must": must}},
            "aggs": {"over_time": {"date_histogram": {"field": "timestamp", "fixed_interval": interval, "min_doc_count": 1}}}
        });
        if let Some(after) = &self.after {
            match after.as_array().map(Vec::as_slice) {
                Some([Value::Number(_), Value::String(_)]) => body["search_after"] = after.clone(),
                _ => return Err(QueryError("the cursor is not one this service issued".into())),
            }
        }
        Ok(body)
    }
}

/// What a search answered: the total, the hits' sources, the histogram buckets.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SearchResult {
    pub total: u64,
    pub hits: Vec<Value>,
    pub histogram: Vec<(String, u64)>,
    /// The sort values of the last hit (`search_after` for the next page).
    #[serde(skip)]
    pub last_sort: Option<Value>,
}

pub fn read_result(r: &Value) -> SearchResult {
    SearchResult {
        total: r.pointer("/hits/total/value").and_then(Value::as_u64).unwrap_or(0),
        hits: r.pointer("/hits/hits").and_then(Value::as_array).map(|h| h.iter().map(|d| d["_source"].clone()).collect()).unwrap_or_default(),
        histogram: r
            .pointer("/aggregations/over_time/buckets")
            .and_then(Value::as_array)
            .map(|b| {
                b.iter()
                    .map(|x| (x["key_as_string"].as_str().unwrap_or_default().to_string(), x["doc_count"].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
        last_sort: r.pointer("/hits/hits").and_then(Value::as_array).and_then(|h| h.last()).and_then(|d| d.get("sort")).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_pseudonyms_and_networks_expand() {
        let key = SecretKey([9; 32]);
        let all = [PersonalField::UserId, PersonalField::IpAddress];
        let q = SearchQuery { user: Some("alice".into()), ip: Some("203.0.113.0/23".into()), success: Some(false), size: 10, ..SearchQuery::default() };
        let body = q.to_body(&key, &all).unwrap();
        let text = body.to_string();
        assert!(!text.contains("alice") && !text.contains("203.0.113"), "{text}");
        let nets = &body["query"]["bool"]["filter"][1]["terms"]["networkPseudonym"];
        assert_eq!(nets.as_array().map(Vec::len), Some(2));
        assert_eq!(nets[1], privacy::pseudonym(&key, SubjectKind::Ip, "203.0.113.0/24"));
        assert_eq!(networks("10.1.0.0/16").unwrap().len(), 256);
        assert_eq!(networks("2001:db8::/47").unwrap(), vec!["2001:db8:0::/48", "2001:db8:1::/48"]);
        assert!(networks("10.0.0.0/8").is_err());
        // An address in clear when it is not personal.
        let body = SearchQuery { ip: Some("10.0.0.1".into()), ..SearchQuery::default() }.to_body(&key, &[]).unwrap();
        assert_eq!(body["query"]["bool"]["filter"][0]["term"]["ipAddress"], "10.0.0.1");
    }

    #[test]
    fn clearance_filters_and_free_text_is_data() {
        use crate::event::Classification;
        let key = SecretKey([9; 32]);
        let q = SearchQuery {
            clearance: Some(Classification::Internal),
            text: Some(r#"error" OR classification:RESTRICTED | * -x"#.into()),
            ..SearchQuery::default()
        };
        let body = q.to_body(&key, &[]).unwrap();
        assert_eq!(body["query"]["bool"]["filter"][0]["terms"]["classification"], json!(["PUBLIC", "INTERNAL"]));
        let m = &body["query"]["bool"]["must"][0]["multi_match"];
        assert_eq!(m["query"], r#"error" OR classification:RESTRICTED | * -x"#, "passed as one value, not parsed as syntax");
        assert!(body["query"]["bool"]["must"][0].get("simple_query_string").is_none() && body["query"]["bool"]["must"][0].get("query_string").is_none());
    }
}
