//! Event fields as rules name them (`user_id`, `ip_address`, `metadata.export.format`, …), and
//! IP networks for `ip_cidr`.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::event::EnrichedEvent;

/// A field a rule can test, group by or count distinct values of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldRef {
    UserId,
    SessionId,
    IpAddress,
    Action,
    Resource,
    ResourceId,
    Method,
    Endpoint,
    UserAgent,
    StatusCode,
    Classification,
    Severity,
    Success,
    ErrorMessage,
    DurationMs,
    CountryCode,
    Country,
    Region,
    City,
    /// The autonomous system's number.
    Asn,
    /// The autonomous system's organisation.
    AsnOrg,
    /// `metadata.<dotted path>`; a scalar value is used as text.
    Metadata(Vec<String>),
}

/// The names accepted where rules name a field, for error messages.
pub const FIELD_NAMES: &str = "user_id, session_id, ip_address, action, resource, resource_id, method, endpoint, \
     user_agent, status_code, classification, severity, success, error_message, duration_ms, country_code, country, \
     region, city, asn, asn_org, metadata.<path>";

impl FieldRef {
    pub fn parse(name: &str) -> Result<FieldRef, String> {
        let n = name.trim();
        Ok(match n {
            "user_id" => FieldRef::UserId,
            "session_id" => FieldRef::SessionId,
            "ip_address" => FieldRef::IpAddress,
            "action" => FieldRef::Action,
            "resource" => FieldRef::Resource,
            "resource_id" => FieldRef::ResourceId,
            "method" => FieldRef::Method,
            "endpoint" => FieldRef::Endpoint,
            "user_agent" => FieldRef::UserAgent,
            "status_code" => FieldRef::StatusCode,
            "classification" => FieldRef::Classification,
            "severity" => FieldRef::Severity,
            "success" => FieldRef::Success,
            "error_message" => FieldRef::ErrorMessage,
            "duration_ms" => FieldRef::DurationMs,
            "country_code" => FieldRef::CountryCode,
            "country" => FieldRef::Country,
            "region" => FieldRef::Region,
            "city" => FieldRef::City,
            "asn" => FieldRef::Asn,
            "asn_org" => FieldRef::AsnOrg,
            _ => match n.strip_prefix("metadata.") {
                Some(path) => FieldRef::Metadata(parse_path(path)?),
                None => return Err(format!("unknown field {n:?} (known: {FIELD_NAMES})")),
            },
        })
    }

    /// The field's value in `ev` as text, if it has one (an empty string counts as none).
    pub fn get<'a>(&self, ev: &'a EnrichedEvent) -> Option<Cow<'a, str>> {
        let loc = || ev.location.as_ref();
        let v: Option<Cow<'a, str>> = match self {
            FieldRef::UserId => ev.user_id.as_deref().map(Cow::Borrowed),
            FieldRef::SessionId => ev.session_id.as_deref().map(Cow::Borrowed),
            FieldRef::IpAddress => ev.ip_address.as_deref().map(Cow::Borrowed),
            FieldRef::Action => Some(Cow::Borrowed(ev.action.as_str())),
            FieldRef::Resource => Some(Cow::Borrowed(ev.resource.as_str())),
            FieldRef::ResourceId => ev.resource_id.as_deref().map(Cow::Borrowed),
            FieldRef::Method => ev.method.as_deref().map(Cow::Borrowed),
            FieldRef::Endpoint => ev.endpoint.as_deref().map(Cow::Borrowed),
            FieldRef::UserAgent => ev.user_agent.as_deref().map(Cow::Borrowed),
            FieldRef::StatusCode => ev.status_code.map(|c| Cow::Owned(c.to_string())),
            FieldRef::Classification => Some(Cow::Borrowed(ev.classification.as_str())),
            FieldRef::Severity => Some(Cow::Borrowed(ev.severity.as_str())),
            FieldRef::Success => Some(Cow::Borrowed(if ev.success { "true" } else { "false" })),
            FieldRef::ErrorMessage => ev.error_message.as_deref().map(Cow::Borrowed),
            FieldRef::DurationMs => ev.duration_ms.map(|d| Cow::Owned(d.to_string())),
            FieldRef::CountryCode => loc().and_then(|l| l.country_code.as_deref()).map(Cow::Borrowed),
            FieldRef::Country => loc().and_then(|l| l.country.as_deref()).map(Cow::Borrowed),
            FieldRef::Region => loc().and_then(|l| l.region.as_deref()).map(Cow::Borrowed),
            FieldRef::City => loc().and_then(|l| l.city.as_deref()).map(Cow::Borrowed),
            FieldRef::Asn => ev.asn.as_ref().map(|a| Cow::Owned(a.number.to_string())),
            FieldRef::AsnOrg => ev.asn.as_ref().and_then(|a| a.organization.as_deref()).map(Cow::Borrowed),
            FieldRef::Metadata(path) => match metadata_value(ev, path)? {
                serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
                serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
                serde_json::Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                _ => None,
            },
        };
        v.filter(|s| !s.is_empty())
    }

    /// The field's value as a number: numeric fields as they are, text that reads as a number.
    pub fn number(&self, ev: &EnrichedEvent) -> Option<f64> {
        match self {
            FieldRef::StatusCode => ev.status_code.map(f64::from),
            FieldRef::DurationMs => ev.duration_ms.map(|d| d as f64),
            FieldRef::Asn => ev.asn.as_ref().map(|a| f64::from(a.number)),
            FieldRef::Metadata(path) => match metadata_value(ev, path)? {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
            other => other.get(ev)?.trim().parse().ok(),
        }
    }

    /// Whether the event has the field at all (an empty text or a JSON null still counts).
    pub fn present(&self, ev: &EnrichedEvent) -> bool {
        let loc = ev.location.as_ref();
        match self {
            FieldRef::UserId => ev.user_id.is_some(),
            FieldRef::SessionId => ev.session_id.is_some(),
            FieldRef::IpAddress => ev.ip_address.is_some(),
            FieldRef::ResourceId => ev.resource_id.is_some(),
            FieldRef::Method => ev.method.is_some(),
            FieldRef::Endpoint => ev.endpoint.is_some(),
            FieldRef::UserAgent => ev.user_agent.is_some(),
            FieldRef::StatusCode => ev.status_code.is_some(),
            FieldRef::ErrorMessage => ev.error_message.is_some(),
            FieldRef::DurationMs => ev.duration_ms.is_some(),
            FieldRef::CountryCode => loc.is_some_and(|l| l.country_code.is_some()),
            FieldRef::Country => loc.is_some_and(|l| l.country.is_some()),
            FieldRef::Region => loc.is_some_and(|l| l.region.is_some()),
            FieldRef::City => loc.is_some_and(|l| l.city.is_some()),
            FieldRef::Asn => ev.asn.is_some(),
            FieldRef::AsnOrg => ev.asn.as_ref().is_some_and(|a| a.organization.is_some()),
            FieldRef::Metadata(path) => metadata_value(ev, path).is_some(),
            FieldRef::Action | FieldRef::Resource | FieldRef::Classification | FieldRef::Severity | FieldRef::Success => true,
        }
    }

    /// Whether the field is absent or null (Sigma `field: null`).
    pub fn is_null(&self, ev: &EnrichedEvent) -> bool {
        match self {
            FieldRef::Metadata(path) => metadata_value(ev, path).is_none_or(serde_json::Value::is_null),
            other => !other.present(ev),
        }
    }
}

/// `a.b.c` → `["a", "b", "c"]`; empty segments are an error.
pub fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!("invalid metadata path {path:?}: empty segment"));
    }
    Ok(parts)
}

/// The metadata value at `path` (object keys; a numeric segment also indexes an array).
pub fn metadata_value<'a>(ev: &'a EnrichedEvent, path: &[String]) -> Option<&'a serde_json::Value> {
    let mut cur = ev.metadata.as_ref()?;
    for seg in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(seg)?,
            serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        let (addr_text, prefix_text) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| format!("invalid CIDR {text:?}: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid CIDR {text:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses are compared as IPv4 (the enricher prints them that way).
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.3.4".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()), "IPv4-mapped IPv6 is compared as IPv4");
        let c6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!c6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("192.168.1.7").unwrap().contains("192.168.1.7".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("::/129").is_err());
    }

    #[test]
    fn field_names() {
        assert_eq!(FieldRef::parse("user_id").unwrap(), FieldRef::UserId);
        assert_eq!(FieldRef::parse("metadata.a.b").unwrap(), FieldRef::Metadata(vec!["a".into(), "b".into()]));
        assert!(FieldRef::parse("metadata.a..b").is_err());
        assert!(FieldRef::parse("userid").unwrap_err().contains("known:"));
    }
}
