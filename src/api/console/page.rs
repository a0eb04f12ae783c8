//! HTML for the console: escaping (every value from an event goes through [`esc`]), the page
//! frame, and the strict Content-Security-Policy every page is sent with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Scripts, styles and connections only from the console itself (its one script and stylesheet,
/// no inline code of either kind), nothing framed, forms only to the console.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

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
<title>{title} · auditflow</title><link rel="stylesheet" href="/ui/assets/console.css"><script src="/ui/assets/console.js" defer></script></head>
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

/// Width and height of a chart's drawing area (the SVG scales to its container).
const CHART_W: f64 = 960.0;
const CHART_H: f64 = 160.0;
/// Room under the bars for the first and last time label.
const CHART_LABELS: f64 = 22.0;

/// A number of events for an axis label: `950`, `12k`, `3.4M`.
fn short(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{}k", n / 1000),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Counts over time as an SVG bar chart drawn on the server; each bar links to its own time
/// range (`link(from, to)`, `to` empty for the last bar) and names its bucket and count for
/// screen readers and on hover. SVG attributes, not inline styles: the CSP allows none.
pub fn histogram(buckets: &[(String, u64)], link: impl Fn(&str, &str) -> String) -> String {
    if buckets.is_empty() {
        return String::new();
    }
    let max = buckets.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    let slot = CHART_W / buckets.len() as f64;
    let gap = if slot > 6.0 { 1.5 } else { 0.0 };
    let mut out = format!(
        r#"<figure class="chart"><svg class="histogram" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="group" aria-label="{total} over {n} interval(s), at most {max} in one">"#,
        w = CHART_W,
        h = CHART_H + CHART_LABELS,
        n = buckets.len(),
    );
    out.push_str(&format!(r#"<line class="axis" x1="0" y1="{CHART_H}" x2="{CHART_W}" y2="{CHART_H}"/>"#));
    for (i, (at, n)) in buckets.iter().enumerate() {
        let next = buckets.get(i + 1).map(|(t, _)| t.as_str()).unwrap_or("");
        // A bucket with events is at least a pixel high, so it can be seen and clicked.
        let height = if *n == 0 { 0.0 } else { (*n as f64 / max as f64 * CHART_H).max(2.0) };
        out.push_str(&format!(
            r#"<a class="bar" href="{href}"><title>{at}: {n}</title><rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{height:.2}"/><rect class="hit" x="{x:.2}" y="0" width="{w:.2}" height="{CHART_H}"/></a>"#,
            href = esc(&link(at, next)),
            at = esc(at),
            x = i as f64 * slot,
            y = CHART_H - height,
            w = (slot - gap).max(0.5),
        ));
    }
    let first = esc(&buckets[0].0);
    let last = esc(&buckets[buckets.len() - 1].0);
    out.push_str(&format!(
        r#"<text x="0" y="{ty}" class="label">{first}</text><text x="{CHART_W}" y="{ty}" class="label end">{last}</text></svg><figcaption class="muted">max {} per interval; click a bar to zoom in</figcaption></figure>"#,
        short(max),
        ty = CHART_H + 16.0,
    ));
    out
}

/// Named values as horizontal SVG bars with their figures, largest first as given.
pub fn bars(items: &[(String, u64)], label: &str) -> String {
    if items.is_empty() {
        return String::new();
    }
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let row = 24.0;
    let text_w = 260.0;
    let bar_w = CHART_W - text_w - 80.0;
    let mut out = format!(
        r#"<figure class="chart"><svg class="bars" viewBox="0 0 {CHART_W} {}" role="group" aria-label="{}">"#,
        row * items.len() as f64,
        esc(label)
    );
    for (i, (name, n)) in items.iter().enumerate() {
        let y = i as f64 * row;
        let w = if *n == 0 { 0.0 } else { (*n as f64 / max as f64 * bar_w).max(2.0) };
        out.push_str(&format!(
            r#"<g><title>{name}: {n}</title><text x="0" y="{ty:.1}" class="label">{name}</text><rect x="{text_w}" y="{ry:.1}" width="{w:.2}" height="{h:.1}"/><text x="{vx:.1}" y="{ty:.1}" class="label">{n}</text></g>"#,
            name = esc(name),
            ty = y + 16.0,
            ry = y + 4.0,
            h = row - 8.0,
            vx = text_w + w + 6.0,
        ));
    }
    out.push_str("</svg></figure>");
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
