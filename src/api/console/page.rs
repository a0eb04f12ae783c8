//! HTML for the console: escaping (every value from an event goes through [`esc`]), the page
//! frame, and the strict Content-Security-Policy every page is sent with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// No script at all, styles only from the console's own stylesheet, nothing framed, forms only
/// to the console itself.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// HTML-escape text for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (other than tab and newline) are shown as their code point.
            c if c.is_control() && c != '\n' && c != '\t' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as text for a table cell.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// Percent-encode a value for a query string or a path segment.
pub fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

pub struct Nav<'a> {
    pub subject: Option<&'a str>,
    pub active: &'a str,
    pub csrf: Option<&'a str>,
}

/// A whole page: navigation, title, body.
pub fn page(status: StatusCode, nav: Nav<'_>, title: &str, body: &str) -> Response {
    let link = |href: &str, name: &str| {
        let current = if nav.active == name { r#" aria-current="page""# } else { "" };
        format!(r#"<a href="{href}"{current}>{name}</a>"#)
    };
    let who = match (nav.subject, nav.csrf) {
        (Some(s), Some(csrf)) => format!(
            r#"<form method="post" action="/ui/logout" class="who"><span>{}</span><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form>"#,
            esc(s),
            esc(csrf)
        ),
        _ => String::new(),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · auditflow</title><link rel="stylesheet" href="/ui/assets/console.css"></head>
<body><header><nav aria-label="main"><strong>auditflow</strong> {alerts} {events} {timeline} {compliance} {ledger} {health}</nav>{who}</header>
<main id="main"><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
        alerts = link("/ui/alerts", "Alerts"),
        events = link("/ui/events", "Events"),
        timeline = link("/ui/timeline", "Timeline"),
        compliance = link("/ui/compliance", "Compliance"),
        ledger = link("/ui/ledger", "Ledger"),
        health = link("/ui/health", "Health"),
    );
    let mut r = (status, html).into_response();
    secure_headers(&mut r, "text/html; charset=utf-8");
    r
}

pub fn secure_headers(r: &mut Response, media: &'static str) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the
    // console's own forms.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Hits over time as bars; each bar links to its own time range.
pub fn histogram(buckets: &[(String, u64)], link: impl Fn(&str, &str) -> String) -> String {
    if buckets.is_empty() {
        return String::new();
    }
    let max = buckets.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let mut out = String::from(r#"<div class="histogram" role="list" aria-label="hits over time">"#);
    for (i, (at, n)) in buckets.iter().enumerate() {
        let next = buckets.get(i + 1).map(|(t, _)| t.as_str()).unwrap_or("");
        // Heights in twentieths, as classes: the CSP allows no inline style.
        let step = (*n as f64 / max as f64 * 20.0).ceil() as u32;
        out.push_str(&format!(
            r#"<a role="listitem" class="bar h{step}" href="{href}" title="{at}: {n}"><span class="sr">{at}: {n}</span></a>"#,
            href = esc(&link(at, next)),
            at = esc(at),
        ));
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_inert_text() {
        let s = esc(r#"<script>alert(1)</script><img src=x onerror="a()"> ' javascript:x"#);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('"') && !s.contains('\''), "{s}");
        assert_eq!(esc("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(enc("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        assert!(CSP.contains("default-src 'none'") && !CSP.contains("unsafe"));
    }
}
