//! What an alert says, and making event data safe to say it with.
//!
//! Every value shown in a notification comes from audit events, i.e. from whoever can make an
//! upstream service log something. So every value is (1) cut to `max_field_chars`, (2) stripped
//! of control characters (no CR/LF can reach a header or start a line of its own) and (3)
//! escaped for where it goes: HTML for the e-mail's HTML part, Slack's `&`, `<`, `>` for Slack.
//! Escaping is a dozen lines here rather than a crate: five characters, tested below.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Severity;
use crate::rule_match::RuleMatch;

/// Escape text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// Escape text for Slack's mrkdwn: `&`, `<` and `>` are its control characters (`<!channel>`,
/// links); escaped, user data cannot ping a channel or forge a link.
pub fn escape_slack(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Keep at most `max` characters, saying how much was cut.
pub fn truncate_chars(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => {
            let total = s.chars().count();
            Cow::Owned(format!("{}… [truncated, {total} characters]", &s[..cut]))
        }
    }
}

/// What a detection found besides its window, as labelled lines: the two ends of an impossible
/// travel (place, or country, and time) with distance and speed; the new value of a first
/// sighting.
fn detail_lines(d: &serde_json::Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let end = |e: &serde_json::Value| -> String {
        let place = e["place"].as_str().filter(|p| !p.is_empty()).or(e["countryCode"].as_str()).unwrap_or("an unknown place");
        let at = e["time"].as_i64().and_then(DateTime::from_timestamp_millis).map(|t| ts(&t)).unwrap_or_default();
        format!("{place} at {at}")
    };
    if d.get("from").is_some() && d.get("to").is_some() {
        out.push(("Travelled from", end(&d["from"])));
        out.push(("Travelled to", end(&d["to"])));
        out.push((
            "Travel",
            format!("{} km in {} min: {} km/h", d["distanceKm"], d["minutes"], d["speedKmh"]),
        ));
    }
    if let Some(v) = d["value"].as_str() {
        let field = d["field"].as_str().unwrap_or("value");
        out.push(("First seen", format!("{field} {v}, after {} known before", d["knownValues"])));
    }
    out
}

/// At most `max` characters, the last being `…` when cut (for headers and titles).
pub fn short(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some(_) => {
            let keep: String = s.chars().take(max.saturating_sub(1)).collect();
            format!("{keep}…")
        }
    }
}

/// One line of text: every control character (CR, LF, TAB, NUL, NEL, the Unicode line and
/// paragraph separators, bidi overrides) becomes a space, runs of spaces collapse, and the
/// result is cut to `max` characters. Used for everything that reaches a header or a line of
/// a notification.
pub fn clean_line(s: &str, max: usize) -> String {
    let cut = truncate_chars(s, max);
    let mut out = String::with_capacity(cut.len());
    let mut last_space = false;
    for c in cut.chars() {
        let c = if c.is_control() || is_invisible_format(c) { ' ' } else { c };
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out.trim().to_string()
}

/// Line/paragraph separators and bidirectional controls: invisible, and able to make text look
/// like something it is not.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Cut every string in a JSON value to `max` characters (for records that must stay small).
pub fn truncate_json(v: &serde_json::Value, max: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(truncate_chars(s, max).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(|x| truncate_json(x, max)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (truncate_chars(k, max).into_owned(), truncate_json(x, max))).collect())
        }
        other => other.clone(),
    }
}

/// What analysts get on `security-alerts` (JSON, key = alert id) and webhooks get as the body.
/// Delivery is at least once: consumers deduplicate by `alertId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRecord {
    pub schema_version: u32,
    pub alert_id: Uuid,
    pub fingerprint: String,
    pub policy_id: String,
    pub policy_name: String,
    pub rule_id: String,
    pub rule_name: String,
    pub severity: Severity,
    /// The group the alert is about (policy `group_by` fields plus the rule's own group key).
    pub group_key: BTreeMap<String, String>,
    /// The suppression window the triggering match opened: `[windowStart, windowEnd)`.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Event times of the earliest and latest match folded into the alert.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Distinct rule matches the alert stands for, at dispatch time.
    pub match_count: i64,
    /// `matchCount - 1`: the matches this one notification stands for beyond the first.
    pub suppressed_count: i64,
    /// Ids of the events behind the folded matches (capped).
    pub evidence_event_ids: Vec<String>,
    /// The rule's tags.
    pub compliance: Vec<String>,
    /// The match that opened the alert (long strings cut).
    pub trigger: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub dispatched_at: DateTime<Utc>,
    /// The trace of the event that triggered the alert (32 hex digits), when it had one: look
    /// it up in the trace backend to see every hop it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

pub const RECORD_SCHEMA_VERSION: u32 = 1;
/// Longest string inside a published record.
pub const RECORD_MAX_STRING: usize = 4096;

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A notification, rendered once from an [`AlertRecord`] for every channel.
#[derive(Debug, Clone)]
pub struct Notice {
    pub record: AlertRecord,
    /// Header-safe subject line.
    pub subject: String,
    /// (label, value) pairs; values are single clean lines, not yet escaped.
    pub fields: Vec<(&'static str, String)>,
}

impl Notice {
    pub fn new(record: AlertRecord, max_field_chars: usize) -> Notice {
        let line = |s: &str| clean_line(s, max_field_chars);
        let group: Vec<String> = record.group_key.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let group_text = if group.is_empty() { "-".to_string() } else { group.join(", ") };
        let subject = short(
            &clean_line(
                &format!(
                    "[auditflow] {} {}: {} ({})",
                    record.severity,
                    short(&record.policy_name, 60),
                    short(&record.rule_name, 60),
                    short(&group_text, 60)
                ),
                400,
            ),
            160,
        );

        let mut fields: Vec<(&'static str, String)> = vec![
            ("Alert", record.alert_id.to_string()),
            ("Policy", line(&format!("{} ({})", record.policy_name, record.policy_id))),
            ("Rule", line(&format!("{} ({})", record.rule_name, record.rule_id))),
            ("Severity", record.severity.to_string()),
            ("Group", line(&group_text)),
            (
                "Matches",
                format!("{} (the first, and {} suppressed)", record.match_count, record.suppressed_count),
            ),
            ("Window", format!("{} to {}", ts(&record.window_start), ts(&record.window_end))),
            ("First seen", ts(&record.first_seen)),
            ("Last seen", ts(&record.last_seen)),
        ];
        if !record.compliance.is_empty() {
            fields.push(("Compliance", line(&record.compliance.join(", "))));
        }
        if !record.evidence_event_ids.is_empty() {
            let shown: Vec<&str> = record.evidence_event_ids.iter().take(10).map(String::as_str).collect();
            let more = record.evidence_event_ids.len().saturating_sub(shown.len());
            let mut text = shown.join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            fields.push(("Evidence events", line(&text)));
        }
        if let Ok(m) = serde_json::from_value::<RuleMatch>(record.trigger.clone()) {
            let techniques = crate::rule_match::attack_techniques(&m.tags);
            if !techniques.is_empty() {
                fields.push(("MITRE ATT&CK", line(&techniques.join(", "))));
            }
            if !m.tags.is_empty() {
                fields.push(("Tags", line(&m.tags.join(", "))));
            }
            if let Some(d) = &m.detail {
                for (label, text) in detail_lines(d) {
                    fields.push((label, line(&text)));
                }
            }
            if let Some(ev) = &m.event {
                let mut push = |label: &'static str, v: Option<String>| {
                    if let Some(v) = v {
                        fields.push((label, line(&v)));
                    }
                };
                push("Event", Some(ev.id.clone()));
                push("Event time", Some(ts(&ev.timestamp)));
                push("Action", Some(ev.action.clone()));
                push("Resource", Some(ev.resource.clone()));
                push("Resource id", ev.resource_id.clone());
                push("User", ev.user_id.clone());
                push("Session", ev.session_id.clone());
                push("IP address", ev.ip_address.clone());
                push(
                    "Network",
                    ev.asn.as_ref().map(|a| match &a.organization {
                        Some(org) => format!("AS{} {org}", a.number),
                        None => format!("AS{}", a.number),
                    }),
                );
                push(
                    "Location",
                    ev.location.as_ref().filter(|l| !l.is_empty()).map(|l| {
                        [&l.city, &l.region, &l.country]
                            .iter()
                            .filter_map(|x| x.as_deref())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                );
                push("Method", ev.method.clone());
                push("Endpoint", ev.endpoint.clone());
                push("Status code", ev.status_code.map(|c| c.to_string()));
                push("User agent", ev.user_agent.clone());
                push("Success", Some(if ev.success { "yes" } else { "no" }.to_string()));
                push("Error", ev.error_message.clone());
                push("Classification", Some(ev.classification.to_string()));
                push("Metadata", ev.metadata.as_ref().map(|m| m.to_string()));
            }
            if let Some(w) = &m.window {
                fields.push((
                    "Rule window",
                    format!("{} of {} within {} s ({} to {})", w.observed, w.limit, w.seconds, ts(&w.start), ts(&w.end)),
                ));
            }
        }
        Notice { record, subject, fields }
    }

    pub fn plain_text(&self) -> String {
        let mut s = String::new();
        s.push_str("Security alert from auditflow\r\n\r\n");
        for (label, value) in &self.fields {
            s.push_str(label);
            s.push_str(": ");
            s.push_str(value);
            s.push_str("\r\n");
        }
        s.push_str("\r\nPlease investigate. Later repeats inside the window are counted into this alert, not sent again.\r\n");
        if let Some(trace) = self.trace_id() {
            s.push_str(&format!("\r\n--\r\nTrace: {trace} (the triggering event's path through the pipeline, in the trace backend)\r\n"));
        }
        s
    }

    /// The triggering event's trace id, checked to be one (it is shown as is).
    pub fn trace_id(&self) -> Option<&str> {
        self.record.trace_id.as_deref().filter(|t| crate::trace::context::parse_trace_id(t).is_some())
    }

    pub fn html(&self) -> String {
        let color = match self.record.severity {
            Severity::Critical => "#b71c1c",
            Severity::High => "#e53935",
            Severity::Medium => "#fb8c00",
            Severity::Low => "#546e7a",
        };
        let mut s = String::new();
        s.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n<body style=\"font-family: Arial, sans-serif;\">\n");
        s.push_str(&format!(
            "<div style=\"background: {color}; color: white; padding: 16px; border-radius: 4px;\">\n<h2 style=\"margin: 0;\">Security alert: {}</h2>\n<p style=\"margin: 4px 0 0 0;\">{} &middot; {}</p>\n</div>\n",
            escape_html(&clean_line(&self.record.policy_name, 200)),
            escape_html(self.record.severity.as_str()),
            escape_html(&clean_line(&self.record.rule_name, 200)),
        ));
        s.push_str("<table style=\"margin: 16px 0; border-collapse: collapse;\">\n");
        for (label, value) in &self.fields {
            s.push_str(&format!(
                "<tr><th style=\"text-align: left; vertical-align: top; padding: 2px 12px 2px 0;\">{}</th><td style=\"word-break: break-all;\">{}</td></tr>\n",
                escape_html(label),
                escape_html(value)
            ));
        }
        s.push_str("</table>\n<p>Please investigate. Later repeats inside the window are counted into this alert, not sent again.</p>\n");
        if let Some(trace) = self.trace_id() {
            s.push_str(&format!(
                "<p style=\"color: #757575; font-size: small;\">Trace: <code>{}</code> (the triggering event's path through the pipeline, in the trace backend)</p>\n",
                escape_html(trace)
            ));
        }
        s.push_str("</body></html>\n");
        s
    }

    /// Slack incoming-webhook payload.
    pub fn slack_payload(&self) -> serde_json::Value {
        let mut text = format!("*{}*\n", escape_slack(&self.subject));
        for (label, value) in &self.fields {
            // Slack rejects very long messages: fields are already cut; keep the whole short.
            text.push_str(&format!("*{}:* {}\n", escape_slack(label), escape_slack(&clean_line(value, 300))));
        }
        if let Some(trace) = self.trace_id() {
            text.push_str(&format!("_Trace: {}_\n", escape_slack(trace)));
        }
        serde_json::json!({ "text": text })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alert::policy::tests::{event, rule_match};
    use crate::rule_match::RuleAction;
    use chrono::TimeZone;

    pub fn record_for(m: &RuleMatch) -> AlertRecord {
        let t = m.matched_at;
        AlertRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            alert_id: Uuid::nil(),
            fingerprint: "f".into(),
            policy_id: "failed-authentication".into(),
            policy_name: "Failed Authentication Attempts".into(),
            rule_id: m.rule_id.clone(),
            rule_name: m.rule_name.clone(),
            severity: m.severity,
            group_key: [("user_id".to_string(), m.event.as_ref().and_then(|e| e.user_id.clone()).unwrap_or_default())]
                .into(),
            window_start: t,
            window_end: t + chrono::Duration::seconds(600),
            first_seen: t,
            last_seen: t,
            match_count: 12,
            suppressed_count: 11,
            evidence_event_ids: vec!["e1".into()],
            compliance: m.compliance.clone(),
            trigger: truncate_json(&serde_json::to_value(m).unwrap(), RECORD_MAX_STRING),
            created_at: t,
            dispatched_at: t,
            trace_id: None,
        }
    }

    #[test]
    fn the_triggering_events_trace_is_named_in_every_channel_and_only_a_real_id() {
        let m = rule_match("r", Severity::High, RuleAction::Alert, event("u", "login", false));
        let mut r = record_for(&m);
        r.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        let n = Notice::new(r.clone(), 2000);
        assert!(n.plain_text().contains("\r\n--\r\nTrace: 4bf92f3577b34da6a3ce929d0e0e4736"), "{}", n.plain_text());
        assert!(n.html().contains("Trace: <code>4bf92f3577b34da6a3ce929d0e0e4736</code>"));
        assert!(n.slack_payload()["text"].as_str().unwrap().contains("Trace: 4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(serde_json::to_value(&r).unwrap()["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736", "the record and webhook body");
        r.trace_id = Some("<b>not an id</b>".into());
        let n = Notice::new(r.clone(), 2000);
        assert!(!n.html().contains("Trace:") && !n.plain_text().contains("Trace:"));
        r.trace_id = None;
        assert!(serde_json::to_value(&r).unwrap().get("traceId").is_none());
    }

    #[test]
    fn html_escaping_neutralises_markup() {
        assert_eq!(
            escape_html(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
        );
        assert_eq!(escape_html("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape_slack("<!channel> & <https://evil|click>"), "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;");
    }

    #[test]
    fn clean_line_removes_every_line_break_and_control() {
        let s = "alice\r\nBcc: victim@example.com\nX-Injected: 1\u{2028}\u{0085}\u{0000}\tend\u{202E}";
        let c = clean_line(s, 1000);
        assert!(!c.contains('\r') && !c.contains('\n'), "{c:?}");
        assert!(c.chars().all(|ch| !ch.is_control()), "{c:?}");
        assert_eq!(c, "alice Bcc: victim@example.com X-Injected: 1 end");
    }

    #[test]
    fn long_values_are_cut_and_say_so() {
        let long = "x".repeat(100 * 1024);
        let c = clean_line(&long, 2000);
        assert!(c.len() < 2100, "{}", c.len());
        assert!(c.ends_with("… [truncated, 102400 characters]"), "{}", &c[c.len() - 40..]);
        // Multi-byte characters are cut on character boundaries.
        let wide = "é".repeat(5000);
        assert!(truncate_chars(&wide, 3).starts_with("ééé…"));
        let j = truncate_json(&serde_json::json!({ "a": [long.clone()], "b": 1 }), 10);
        assert!(j["a"][0].as_str().unwrap().starts_with("xxxxxxxxxx… [truncated"));
        assert_eq!(j["b"], 1);
    }

    #[test]
    fn notification_with_hostile_event_is_escaped_and_bounded() {
        let mut ev = event("<script>alert('owned')</script>\r\nBcc: evil@example.com", "login\r\nX-Injected: yes", false);
        ev.resource = "r".repeat(100 * 1024);
        ev.user_agent = Some("<img src=x onerror=alert(1)>".into());
        ev.metadata = Some(serde_json::json!({ "note": "</td></tr></table><script>x()</script>" }));
        let m = rule_match("failed-login-attempts", Severity::High, RuleAction::Alert, ev);
        let n = Notice::new(record_for(&m), 2000);

        assert!(!n.subject.contains('\r') && !n.subject.contains('\n'), "{:?}", n.subject);
        assert!(n.subject.chars().count() <= 160);

        let html = n.html();
        assert!(!html.contains("<script>"), "raw script tag in HTML");
        assert!(!html.contains("<img"), "raw img tag in HTML");
        assert!(html.contains("&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;"));
        assert!(html.contains("&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;"));
        assert!(html.len() < 40_000, "100 KB fields are cut: {} bytes", html.len());

        let plain = n.plain_text();
        for line in plain.split("\r\n") {
            assert!(!line.starts_with("Bcc:") && !line.starts_with("X-Injected:"), "{line:?}");
        }
        assert!(plain.contains("Matches: 12 (the first, and 11 suppressed)"));

        let slack = n.slack_payload()["text"].as_str().unwrap().to_string();
        assert!(!slack.contains("<script>") && slack.contains("&lt;script&gt;"));
    }

    #[test]
    fn record_round_trips_and_keeps_the_trigger_small() {
        let mut ev = event("bob", "login", false);
        ev.error_message = Some("e".repeat(50_000));
        let m = rule_match("failed-login-attempts", Severity::High, RuleAction::Alert, ev);
        let r = record_for(&m);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.len() < 12_000, "{}", json.len());
        assert!(json.contains("\"alertId\"") && json.contains("\"suppressedCount\":11"));
        let back: AlertRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let _ = Utc.timestamp_millis_opt(0);
    }
}
