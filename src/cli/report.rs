//! `auditflow report`: compliance figures of one framework over a period, from
//! `compliance_events` (and `audit_alerts` when that table exists), as self-contained HTML
//! (inline SVG charts, no scripts), CSV or JSON.
//!
//! Definitions (all over `compliance_events` rows of the framework with
//! `from <= event_time < to`):
//! - *records*: rows, one per (event, control); *events*: distinct event ids.
//! - *failures*: distinct events with `success = false`.
//! - *privileged actions*: distinct events with at least one `privileged` record.
//! - per control: distinct events, failures, privileged events.
//! - per day (UTC): distinct events and failures.
//! - top actors: distinct events per subject pseudonym (never a plaintext id); also top
//!   resources and privileged actions by action name.
//! - alerts: `audit_alerts` rows active in the period (`first_seen < to AND last_seen >= from`),
//!   by severity; alerts are not per framework.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::compliance::{Framework, Mapping};

/// Rows in each "top" list.
pub const TOP_N: i64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Html,
    Csv,
    Json,
}

impl std::str::FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<ReportFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "html" => Ok(ReportFormat::Html),
            "csv" => Ok(ReportFormat::Csv),
            "json" => Ok(ReportFormat::Json),
            other => Err(format!("unknown format {other:?} (allowed: html, csv, json)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub records: i64,
    pub events: i64,
    pub failures: i64,
    pub privileged_actions: i64,
    pub alerts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlFigures {
    pub control: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub events: i64,
    pub failures: i64,
    pub privileged: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DayFigures {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub events: i64,
    pub failures: i64,
}

/// A key (pseudonym, resource, action, severity) and its count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Count {
    pub key: String,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertFigures {
    /// Whether `audit_alerts` exists.
    pub available: bool,
    pub total: i64,
    pub by_severity: Vec<Count>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub framework: Framework,
    pub framework_title: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub totals: Totals,
    pub controls: Vec<ControlFigures>,
    pub per_day: Vec<DayFigures>,
    /// By subject pseudonym.
    pub top_actors: Vec<Count>,
    pub top_resources: Vec<Count>,
    /// Privileged events by action.
    pub privileged_actions: Vec<Count>,
    pub alerts: AlertFigures,
    pub notes: Vec<String>,
}

/// `2024-03-01`, `2024-03-01T12:00:00` (UTC) or RFC 3339.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN)));
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S") {
        return Ok(Utc.from_utc_datetime(&dt));
    }
    Err(format!("{t:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

const WHERE: &str = "framework = $1 AND event_time >= $2 AND event_time < $3";

/// Gather the figures. `mapping` (when given) lists the framework's controls that have no
/// records in the period too, with their descriptions.
pub async fn gather(
    pool: &PgPool,
    framework: Framework,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mapping: Option<&Mapping>,
) -> Result<Report, sqlx::Error> {
    let fw = framework.as_str();
    let (records, events, failures, privileged): (i64, i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*)::bigint, count(DISTINCT event_id)::bigint,
                count(DISTINCT event_id) FILTER (WHERE NOT success)::bigint,
                count(DISTINCT event_id) FILTER (WHERE privileged)::bigint
           FROM compliance_events WHERE {WHERE}"
    ))
    .bind(fw)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;

    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT control, max(control_name), count(DISTINCT event_id)::bigint,
                count(DISTINCT event_id) FILTER (WHERE NOT success)::bigint,
                count(DISTINCT event_id) FILTER (WHERE privileged)::bigint
           FROM compliance_events WHERE {WHERE} GROUP BY control ORDER BY control"
    ))
    .bind(fw)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut controls: Vec<ControlFigures> = Vec::new();
    if let Some(m) = mapping {
        for c in m.controls(framework) {
            controls.push(ControlFigures {
                control: c.id.clone(),
                name: c.name.clone(),
                description: Some(c.description.clone()),
                events: 0,
                failures: 0,
                privileged: 0,
            });
        }
    }
    for (control, name, events, failures, privileged) in rows {
        match controls.iter_mut().find(|c| c.control == control) {
            Some(c) => {
                c.events = events;
                c.failures = failures;
                c.privileged = privileged;
            }
            None => controls.push(ControlFigures { control, name, description: None, events, failures, privileged }),
        }
    }

    let per_day: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT to_char(date_trunc('day', event_time AT TIME ZONE 'UTC'), 'YYYY-MM-DD'),
                count(DISTINCT event_id)::bigint,
                count(DISTINCT event_id) FILTER (WHERE NOT success)::bigint
           FROM compliance_events WHERE {WHERE} GROUP BY 1 ORDER BY 1"
    ))
    .bind(fw)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let per_day = per_day.into_iter().map(|(day, events, failures)| DayFigures { day, events, failures }).collect();

    let top = |column: &str, extra: &str| {
        format!(
            "SELECT {column}, count(DISTINCT event_id)::bigint AS n FROM compliance_events
              WHERE {WHERE} AND {column} IS NOT NULL {extra}
              GROUP BY 1 ORDER BY n DESC, 1 LIMIT {TOP_N}"
        )
    };
    let mut lists = Vec::new();
    for sql in [top("subject_pseudonym", ""), top("resource", ""), top("action", "AND privileged")] {
        let rows: Vec<(String, i64)> = sqlx::query_as(&sql).bind(fw).bind(from).bind(to).fetch_all(pool).await?;
        lists.push(rows.into_iter().map(|(key, count)| Count { key, count }).collect::<Vec<_>>());
    }
    let privileged_actions = lists.pop().unwrap_or_default();
    let top_resources = lists.pop().unwrap_or_default();
    let top_actors = lists.pop().unwrap_or_default();

    let mut notes = vec![
        "Actors are keyed pseudonyms of data subjects; resolving one requires the pseudonym key.".to_string(),
    ];
    let alerts_table: bool = sqlx::query_scalar("SELECT to_regclass('audit_alerts') IS NOT NULL").fetch_one(pool).await?;
    let alerts = if alerts_table {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT severity::text, count(*)::bigint FROM audit_alerts
              WHERE first_seen < $2 AND last_seen >= $1 GROUP BY 1 ORDER BY 1",
        )
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
        notes.push("Alerts: every alert active in the period (audit_alerts is not split by framework).".into());
        let by_severity: Vec<Count> = rows.into_iter().map(|(key, count)| Count { key, count }).collect();
        AlertFigures { available: true, total: by_severity.iter().map(|c| c.count).sum(), by_severity }
    } else {
        notes.push("Alerts: 0 — no alert store (audit_alerts) in this database.".into());
        AlertFigures { available: false, total: 0, by_severity: Vec::new() }
    };

    Ok(Report {
        framework,
        framework_title: framework.title().to_string(),
        from,
        to,
        generated_at: Utc::now(),
        totals: Totals { records, events, failures, privileged_actions: privileged, alerts: alerts.total },
        controls,
        per_day,
        top_actors,
        top_resources,
        privileged_actions,
        alerts,
        notes,
    })
}

pub fn render(report: &Report, format: ReportFormat) -> String {
    match format {
        ReportFormat::Html => render_html(report),
        ReportFormat::Csv => render_csv(report),
        ReportFormat::Json => render_json(report),
    }
}

pub fn render_json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// One CSV field: quoted when needed; text that a spreadsheet would run as a formula is
/// prefixed with `'`.
fn csv_field(text: &str) -> String {
    let defused = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_string() };
    if defused.contains([',', '"', '\n', '\r']) || defused.starts_with(' ') || defused.ends_with(' ') {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// Long ("tidy") CSV: `section,key,name,metric,value`, one figure per line.
pub fn render_csv(r: &Report) -> String {
    let mut out = String::from("section,key,name,metric,value\n");
    let mut row = |section: &str, key: &str, name: &str, metric: &str, value: &str| {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            csv_field(section),
            csv_field(key),
            csv_field(name),
            csv_field(metric),
            csv_field(value)
        );
    };
    row("report", "framework", r.framework_title.as_str(), "framework", r.framework.as_str());
    row("report", "from", "", "time", &r.from.to_rfc3339());
    row("report", "to", "", "time", &r.to.to_rfc3339());
    row("report", "generated_at", "", "time", &r.generated_at.to_rfc3339());
    let t = &r.totals;
    for (metric, v) in [
        ("records", t.records),
        ("events", t.events),
        ("failures", t.failures),
        ("privileged_actions", t.privileged_actions),
        ("alerts", t.alerts),
    ] {
        row("total", "", "", metric, &v.to_string());
    }
    for c in &r.controls {
        for (metric, v) in [("events", c.events), ("failures", c.failures), ("privileged", c.privileged)] {
            row("control", &c.control, &c.name, metric, &v.to_string());
        }
    }
    for d in &r.per_day {
        row("day", &d.day, "", "events", &d.events.to_string());
        row("day", &d.day, "", "failures", &d.failures.to_string());
    }
    for (section, list) in [("actor", &r.top_actors), ("resource", &r.top_resources), ("privileged_action", &r.privileged_actions)] {
        for c in list {
            row(section, &c.key, "", "events", &c.count.to_string());
        }
    }
    for c in &r.alerts.by_severity {
        row("alerts", &c.key, "", "alerts", &c.count.to_string());
    }
    out
}

/// Escape text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// Horizontal bars, one per (label, value), with a tooltip per bar.
fn svg_bars(rows: &[(String, String, i64)]) -> String {
    let label_w = 190.0;
    let bar_max = 470.0;
    let row_h = 24.0;
    let width = label_w + bar_max + 70.0;
    let height = row_h * rows.len().max(1) as f64 + 10.0;
    let max = rows.iter().map(|r| r.2).max().unwrap_or(0).max(1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">"#
    );
    for (i, (label, title, v)) in rows.iter().enumerate() {
        let y = 5.0 + row_h * i as f64;
        let w = if *v > 0 { (bar_max * *v as f64 / max).max(2.0) } else { 0.0 };
        let _ = write!(
            s,
            r#"<g><title>{title}: {v}</title><text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{bh}" class="bar"/><text x="{vx:.1}" y="{ty}">{v}</text></g>"#,
            title = esc(title),
            label = esc(label),
            lx = label_w - 8.0,
            ty = y + 15.0,
            bh = row_h - 6.0,
            vx = label_w + w + 6.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// Vertical bars per day, with a date label on a few of them.
fn svg_days(days: &[(String, i64, i64)]) -> String {
    let width = 760.0;
    let height = 220.0;
    let (left, bottom, top) = (40.0, 30.0, 10.0);
    let plot_w = width - left - 10.0;
    let plot_h = height - bottom - top;
    let n = days.len().max(1);
    let step = plot_w / n as f64;
    let max = days.iter().map(|d| d.1).max().unwrap_or(0).max(1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">"#
    );
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/><text x="{tx}" y="{ty}" text-anchor="end">{max}</text><text x="{tx}" y="{y0}" text-anchor="end">0</text>"#,
        y0 = top + plot_h,
        x1 = left + plot_w,
        tx = left - 4.0,
        ty = top + 10.0,
        max = max as i64,
    );
    let label_every = n.div_ceil(8);
    for (i, (day, events, failures)) in days.iter().enumerate() {
        let x = left + step * i as f64;
        let h = plot_h * *events as f64 / max;
        let fh = plot_h * *failures as f64 / max;
        let bw = (step * 0.8).max(1.0);
        let _ = write!(
            s,
            r#"<g><title>{day}: {events} events, {failures} failures</title><rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{h:.1}" class="bar"/><rect x="{x:.1}" y="{fy:.1}" width="{bw:.1}" height="{fh:.1}" class="fail"/></g>"#,
            day = esc(day),
            y = top + plot_h - h,
            fy = top + plot_h - fh,
        );
        if i % label_every == 0 {
            let _ = write!(s, r#"<text x="{x:.1}" y="{ly}">{d}</text>"#, ly = height - 10.0, d = esc(day));
        }
    }
    s.push_str("</svg>");
    s
}

/// Days of the period for the chart: every day, zeros included, when the period is at most
/// 400 days; else only the days with records.
fn chart_days(r: &Report) -> Vec<(String, i64, i64)> {
    let span = (r.to - r.from).num_days();
    if !(0..=400).contains(&span) {
        return r.per_day.iter().map(|d| (d.day.clone(), d.events, d.failures)).collect();
    }
    let mut out = Vec::new();
    let mut day = r.from.date_naive();
    while Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN)) < r.to {
        let key = day.format("%Y-%m-%d").to_string();
        let found = r.per_day.iter().find(|d| d.day == key);
        out.push((key, found.map_or(0, |d| d.events), found.map_or(0, |d| d.failures)));
        day += Duration::days(1);
    }
    out
}

fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(s, r#"<tr><td colspan="{}" class="none">none</td></tr>"#, head.len());
    }
    for r in rows {
        s.push_str("<tr>");
        for cell in r {
            let _ = write!(s, "<td>{}</td>", esc(&cell));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn count_rows(list: &[Count]) -> Vec<Vec<String>> {
    list.iter().map(|c| vec![c.key.clone(), c.count.to_string()]).collect()
}

/// A self-contained page: inline CSS and SVG, no scripts, every value escaped.
pub fn render_html(r: &Report) -> String {
    let title = format!("{} compliance report", r.framework_title);
    let period = format!("{} to {}", r.from.format("%Y-%m-%d %H:%M UTC"), r.to.format("%Y-%m-%d %H:%M UTC"));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #1d2733; }}
h1 {{ margin-bottom: 0.2em; }} .meta {{ color: #5b6776; margin-top: 0; }}
.tiles {{ display: flex; gap: 1em; flex-wrap: wrap; margin: 1.5em 0; }}
.tile {{ border: 1px solid #d5dbe3; border-radius: 6px; padding: 0.8em 1.2em; min-width: 9em; }}
.tile .v {{ font-size: 1.8em; font-weight: 600; }} .tile .k {{ color: #5b6776; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border-bottom: 1px solid #e3e7ec; padding: 0.35em 0.8em; text-align: left; vertical-align: top; }}
td.none {{ color: #8a94a1; }}
.chart text {{ font-size: 12px; fill: #1d2733; }} .chart .bar {{ fill: #3b73b9; }} .chart .fail {{ fill: #c8423b; }}
.chart .axis {{ stroke: #8a94a1; }} .notes {{ color: #5b6776; font-size: 0.9em; }}
</style></head><body>
<h1>{t}</h1><p class="meta">Period: {p} &middot; generated {g}</p>
"#,
        t = esc(&title),
        p = esc(&period),
        g = esc(&r.generated_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
    );
    s.push_str(r#"<div class="tiles">"#);
    for (k, v) in [
        ("events", r.totals.events),
        ("records", r.totals.records),
        ("failures", r.totals.failures),
        ("privileged actions", r.totals.privileged_actions),
        ("alerts", r.totals.alerts),
    ] {
        let _ = write!(s, r#"<div class="tile"><div class="v">{v}</div><div class="k">{}</div></div>"#, esc(k));
    }
    s.push_str("</div>\n<h2>Events per control</h2>\n");
    let bars: Vec<(String, String, i64)> =
        r.controls.iter().map(|c| (c.control.clone(), format!("{} {}", c.control, c.name), c.events)).collect();
    s.push_str(&svg_bars(&bars));
    s.push_str(&table(
        &["control", "name", "events", "failures", "privileged", "description"],
        r.controls
            .iter()
            .map(|c| {
                vec![
                    c.control.clone(),
                    c.name.clone(),
                    c.events.to_string(),
                    c.failures.to_string(),
                    c.privileged.to_string(),
                    c.description.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    ));
    s.push_str("\n<h2>Events per day (UTC)</h2>\n<p class=\"notes\">Blue: events; red: failures.</p>\n");
    s.push_str(&svg_days(&chart_days(r)));
    s.push_str(&table(
        &["day", "events", "failures"],
        r.per_day.iter().map(|d| vec![d.day.clone(), d.events.to_string(), d.failures.to_string()]).collect(),
    ));
    s.push_str("\n<h2>Top actors</h2>\n");
    s.push_str(&table(&["subject pseudonym", "events"], count_rows(&r.top_actors)));
    s.push_str("\n<h2>Top resources</h2>\n");
    s.push_str(&table(&["resource", "events"], count_rows(&r.top_resources)));
    s.push_str("\n<h2>Privileged actions</h2>\n");
    s.push_str(&table(&["action", "events"], count_rows(&r.privileged_actions)));
    s.push_str("\n<h2>Alerts</h2>\n");
    s.push_str(&table(&["severity", "alerts"], count_rows(&r.alerts.by_severity)));
    s.push_str("\n<div class=\"notes\"><ul>");
    for n in &r.notes {
        let _ = write!(s, "<li>{}</li>", esc(n));
    }
    s.push_str("</ul></div>\n</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let from = parse_time("2024-03-01").unwrap();
        Report {
            framework: Framework::Sox,
            framework_title: "SOX".into(),
            from,
            to: parse_time("2024-03-04").unwrap(),
            generated_at: from,
            totals: Totals { records: 3, events: 2, failures: 1, privileged_actions: 1, alerts: 0 },
            controls: vec![ControlFigures {
                control: "ITGC-AC-02".into(),
                name: "Privileged <access>".into(),
                description: None,
                events: 2,
                failures: 1,
                privileged: 1,
            }],
            per_day: vec![DayFigures { day: "2024-03-02".into(), events: 2, failures: 1 }],
            top_actors: vec![Count { key: "abc".into(), count: 2 }],
            top_resources: vec![Count { key: "<script>alert(1)</script>".into(), count: 2 }],
            privileged_actions: vec![Count { key: "=cmd|' /C calc'!A0".into(), count: 1 }],
            alerts: AlertFigures { available: false, total: 0, by_severity: vec![] },
            notes: vec!["n & m".into()],
        }
    }

    #[test]
    fn times_parse_as_dates_or_rfc3339() {
        assert_eq!(parse_time("2024-03-01").unwrap().to_rfc3339(), "2024-03-01T00:00:00+00:00");
        assert_eq!(parse_time("2024-03-01T10:00:00+02:00").unwrap().to_rfc3339(), "2024-03-01T08:00:00+00:00");
        assert_eq!(parse_time("2024-03-01T10:00:00").unwrap().to_rfc3339(), "2024-03-01T10:00:00+00:00");
        assert!(parse_time("last tuesday").is_err());
        assert_eq!("HTML".parse::<ReportFormat>().unwrap(), ReportFormat::Html);
        assert!("pdf".parse::<ReportFormat>().is_err());
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let html = render_html(&sample());
        assert!(html.contains("<svg"));
        assert!(!html.contains("<script"), "no script element, and the resource name is escaped");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("Privileged &lt;access&gt;"));
        assert!(html.contains("n &amp; m"));
        // Zero days are filled in for the chart: 1st, 2nd and 3rd of March.
        assert_eq!(chart_days(&sample()).iter().map(|d| d.1).collect::<Vec<_>>(), [0, 2, 0]);
    }

    #[test]
    fn csv_is_tidy_quoted_and_defused() {
        let csv = render_csv(&sample());
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("section,key,name,metric,value"));
        assert!(csv.contains("total,,,events,2\n"));
        assert!(csv.contains("control,ITGC-AC-02,Privileged <access>,events,2\n"));
        assert!(csv.contains("privileged_action,'=cmd|' /C calc'!A0,,events,1\n"), "{csv}");
        assert!(csv.contains("day,2024-03-02,,failures,1\n"));
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn json_round_trips_the_figures() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample())).unwrap();
        assert_eq!(v["framework"], "SOX");
        assert_eq!(v["totals"]["privilegedActions"], 1);
        assert_eq!(v["controls"][0]["failures"], 1);
        assert_eq!(v["perDay"][0]["day"], "2024-03-02");
    }
}
