//! What of an event's personal data leaves auditflow with an alert: on `security-alerts`, in
//! e-mail, Slack and webhook bodies.
//!
//! By default none of it. The personal fields of the privacy settings go as keyed pseudonyms
//! (users, addresses, sessions: the same pseudonyms persist stores as `subject_pseudonym`, so an
//! analyst with database access finds the events) or not at all (user agent, location,
//! metadata); the evidence event ids stay, and lead to the sealed records. A copy outside
//! auditflow is beyond the reach of `auditflow erase`, so sending fields in the clear is the
//! operator's explicit choice (`alert.include_personal_fields`).

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::render::AlertRecord;
use crate::privacy::{pseudonym, PersonalField, SecretKey, SubjectKind};

/// Prefix of every pseudonym an alert shows instead of a value.
pub const PSEUDONYM_PREFIX: &str = "pseudonym:";

pub enum Disclosure {
    /// Everything in the clear (`alert.include_personal_fields = true`).
    Plain,
    Pseudonymous {
        key: SecretKey,
        personal: HashSet<PersonalField>,
        /// Group-key fields shown in the clear anyway (`alert.clear_group_fields`).
        clear: HashSet<String>,
    },
}

/// The personal field a group-key field (a rule `group_by` name) reads, and the kind of subject
/// it names.
fn group_field(name: &str) -> Option<(PersonalField, Option<SubjectKind>)> {
    match name {
        "user_id" => Some((PersonalField::UserId, Some(SubjectKind::User))),
        "ip_address" => Some((PersonalField::IpAddress, Some(SubjectKind::Ip))),
        "session_id" => Some((PersonalField::SessionId, Some(SubjectKind::Session))),
        "user_agent" => Some((PersonalField::UserAgent, None)),
        "country_code" => Some((PersonalField::Location, None)),
        _ if name.starts_with("metadata.") => Some((PersonalField::Metadata, None)),
        _ => None,
    }
}

/// The event fields (camelCase, as in the JSON of a match) by personal field: a subject's
/// identifier is replaced by its pseudonym, the rest is left out.
const EVENT_FIELDS: [(&str, PersonalField, Option<SubjectKind>); 6] = [
    ("userId", PersonalField::UserId, Some(SubjectKind::User)),
    ("ipAddress", PersonalField::IpAddress, Some(SubjectKind::Ip)),
    ("sessionId", PersonalField::SessionId, Some(SubjectKind::Session)),
    ("userAgent", PersonalField::UserAgent, None),
    ("location", PersonalField::Location, None),
    ("metadata", PersonalField::Metadata, None),
];

impl Disclosure {
    pub fn pseudonymous(key: SecretKey, personal: &[PersonalField], clear: &[String]) -> Disclosure {
        Disclosure::Pseudonymous {
            key,
            personal: personal.iter().copied().collect(),
            clear: clear.iter().cloned().collect(),
        }
    }

    fn name(key: &SecretKey, kind: Option<SubjectKind>, field: &str, value: &str) -> String {
        // Values that name no subject get a pseudonym of their own: stable across alerts, so
        // analysts can still tell "the same one again", but matching no stored subject.
        let p = match kind {
            Some(k) => pseudonym(key, k, value),
            None => pseudonym(key, SubjectKind::Anonymous, &format!("{field}\n{value}")),
        };
        format!("{PSEUDONYM_PREFIX}{p}")
    }

    fn group_key(&self, group: &mut BTreeMap<String, String>) {
        let Disclosure::Pseudonymous { key, personal, clear } = self else { return };
        for (field, value) in group.iter_mut() {
            if clear.contains(field) {
                continue;
            }
            if let Some((pf, kind)) = group_field(field) {
                if personal.contains(&pf) {
                    *value = Self::name(key, kind, field, value);
                }
            }
        }
    }

    /// What a detection reports besides the event: the ends of an impossible travel (places
    /// and coordinates are locations; their country codes follow the `country_code` group
    /// rule) and the value a first sighting is about (the rule of its field).
    fn detail(&self, d: &mut serde_json::Map<String, Value>) {
        let Disclosure::Pseudonymous { personal, .. } = self else { return };
        for end in ["from", "to"] {
            let Some(Value::Object(e)) = d.get_mut(end) else { continue };
            if personal.contains(&PersonalField::Location) {
                for k in ["place", "latitude", "longitude"] {
                    e.remove(k);
                }
            }
            if let Some(cc) = e.get("countryCode").and_then(Value::as_str).map(str::to_string) {
                let mut g = BTreeMap::from([("country_code".to_string(), cc)]);
                self.group_key(&mut g);
                e.insert("countryCode".into(), Value::String(g.remove("country_code").unwrap_or_default()));
            }
        }
        if let (Some(field), Some(value)) = (d.get("field").and_then(Value::as_str), d.get("value").and_then(Value::as_str)) {
            let mut g = BTreeMap::from([(field.to_string(), value.to_string())]);
            self.group_key(&mut g);
            if let Some(v) = g.into_values().next() {
                d.insert("value".into(), Value::String(v));
            }
        }
    }

    /// The record as it may leave auditflow.
    pub fn apply(&self, record: &mut AlertRecord) {
        let Disclosure::Pseudonymous { key, personal, .. } = self else { return };
        self.group_key(&mut record.group_key);
        let Value::Object(trigger) = &mut record.trigger else { return };
        if let Some(Value::Object(g)) = trigger.get_mut("groupKey") {
            let mut map: BTreeMap<String, String> =
                g.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect();
            self.group_key(&mut map);
            for (k, v) in map {
                g.insert(k, Value::String(v));
            }
        }
        if let Some(Value::Object(d)) = trigger.get_mut("detail") {
            self.detail(d);
        }
        if let Some(Value::Object(ev)) = trigger.get_mut("event") {
            for (name, pf, kind) in EVENT_FIELDS {
                if !personal.contains(&pf) {
                    continue;
                }
                match (kind, ev.get(name)) {
                    (Some(kind), Some(Value::String(v))) => {
                        let named = Self::name(key, Some(kind), name, v);
                        ev.insert(name.to_string(), Value::String(named));
                    }
                    _ => {
                        ev.remove(name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::policy::tests::{event, rule_match};
    use crate::alert::render::tests::record_for;
    use crate::alert::render::Notice;
    use crate::event::Severity;
    use crate::rule_match::RuleAction;

    fn key() -> SecretKey {
        SecretKey([7u8; 32])
    }

    fn record() -> AlertRecord {
        let mut ev = event("alice", "login", false);
        ev.id = "evt-1".into(); // ids are not personal; this one just must not spell the name
        ev.ip_address = Some("203.0.113.9".into());
        ev.session_id = Some("sess-42".into());
        ev.user_agent = Some("curl/8.0 alice-laptop".into());
        ev.metadata = Some(serde_json::json!({ "email": "alice@example.org", "service": "billing" }));
        ev.location = Some(crate::event::Location { city: Some("Lyon".into()), ..Default::default() });
        let mut m = rule_match("r", Severity::High, RuleAction::Alert, ev);
        m.group_key = [("user_id".to_string(), "alice".to_string()), ("metadata.service".to_string(), "billing".to_string())]
            .into();
        let mut r = record_for(&m);
        r.group_key.insert("metadata.service".into(), "billing".into());
        r
    }

    #[test]
    fn personal_fields_leave_as_pseudonyms_or_not_at_all() {
        let mut r = record();
        let d = Disclosure::pseudonymous(key(), &PersonalField::ALL, &["metadata.service".to_string()]);
        d.apply(&mut r);
        let alice = format!("{PSEUDONYM_PREFIX}{}", pseudonym(&key(), SubjectKind::User, "alice"));
        assert_eq!(r.group_key.get("user_id"), Some(&alice), "the pseudonym persist stores for alice");
        assert_eq!(r.group_key.get("metadata.service").map(String::as_str), Some("billing"), "named clear");
        let json = serde_json::to_string(&r).unwrap();
        for secret in ["alice", "203.0.113.9", "sess-42", "curl/8.0", "Lyon", "alice@example.org"] {
            assert!(!json.contains(secret), "{secret} left in {json}");
        }
        assert_eq!(r.trigger["event"]["userId"], Value::String(alice.clone()));
        assert!(r.trigger["event"]["ipAddress"].as_str().unwrap().starts_with(PSEUDONYM_PREFIX));
        assert!(r.trigger["event"].get("location").is_none() && r.trigger["event"].get("metadata").is_none());
        assert_eq!(r.trigger["groupKey"]["user_id"], Value::String(alice.clone()));
        assert_eq!(r.evidence_event_ids, vec!["e1".to_string()], "the evidence ids stay");
        // Every channel renders from this record: the e-mail, Slack and webhook bodies too.
        let n = Notice::new(r, 2000);
        let text = format!("{}{}{}{}", n.subject, n.plain_text(), n.html(), n.slack_payload());
        assert!(!text.contains("alice") && !text.contains("203.0.113.9"), "{text}");
        assert!(text.contains(&alice));
    }

    /// An impossible-travel match of alice's, New York to Tokyo, with her network.
    fn travel_record() -> AlertRecord {
        let mut ev = event("alice", "login", true);
        ev.id = "evt-2".into();
        ev.asn = Some(crate::event::Asn { number: 2501, organization: Some("The University of Tokyo".into()) });
        let mut m = rule_match("impossible-travel", Severity::High, RuleAction::Alert, ev);
        m.tags = vec!["attack.initial_access".into(), "attack.t1078".into()];
        m.detail = Some(serde_json::json!({
            "from": {"eventId": "ny", "time": 1_796_600_000_000i64, "countryCode": "US", "place": "New York, NY, US", "latitude": 40.8123, "longitude": -73.9682},
            "to": {"eventId": "tokyo", "time": 1_796_603_600_000i64, "countryCode": "JP", "place": "Tokyo, JP", "latitude": 35.6837, "longitude": 139.6805},
            "distanceKm": 10841, "minutes": 60, "speedKmh": 10841,
        }));
        record_for(&m)
    }

    #[test]
    fn an_impossible_travel_says_where_and_when_as_far_as_privacy_allows() {
        // Locations in the clear (not personal here): both places and times, distance, speed,
        // the ATT&CK technique and the network.
        let mut r = travel_record();
        Disclosure::pseudonymous(key(), &[PersonalField::UserId], &[]).apply(&mut r);
        let text = Notice::new(r, 2000).plain_text();
        for shown in ["Travelled from: New York, NY, US at 2026-12-06T23:33:20.000Z", "Travelled to: Tokyo, JP at 2026-12-07T00:33:20.000Z", "10841 km in 60 min: 10841 km/h", "MITRE ATT&CK: T1078", "Network: AS2501 The University of Tokyo"] {
            assert!(text.contains(shown), "{shown} in {text}");
        }
        // The defaults: locations are personal, country codes may leave: countries only.
        let mut r = travel_record();
        let defaults = crate::alert::settings::AlertSettings::default();
        Disclosure::pseudonymous(key(), &PersonalField::ALL, &defaults.clear_group_fields).apply(&mut r);
        let text = Notice::new(r.clone(), 2000).plain_text();
        assert!(text.contains("Travelled from: US at") && text.contains("Travelled to: JP at"), "{text}");
        assert!(!text.contains("New York") && !text.contains("40.81") && !text.contains("alice"), "{text}");
        // Without country codes allowed out, not even those.
        let mut r = travel_record();
        Disclosure::pseudonymous(key(), &PersonalField::ALL, &[]).apply(&mut r);
        let cc = r.trigger["detail"]["from"]["countryCode"].as_str().unwrap().to_string();
        assert!(cc.starts_with(PSEUDONYM_PREFIX), "{cc}");
    }

    #[test]
    fn only_the_configured_personal_fields_and_plain_on_request() {
        let mut r = record();
        Disclosure::pseudonymous(key(), &[PersonalField::IpAddress], &[]).apply(&mut r);
        assert_eq!(r.group_key.get("user_id").map(String::as_str), Some("alice"), "user ids are not personal here");
        assert!(r.trigger["event"]["ipAddress"].as_str().unwrap().starts_with(PSEUDONYM_PREFIX));
        assert_eq!(r.trigger["event"]["metadata"]["service"], "billing");
        let mut plain = record();
        Disclosure::Plain.apply(&mut plain);
        assert_eq!(plain, record());
    }
}
