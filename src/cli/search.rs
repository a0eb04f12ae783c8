//! `auditflow search`: analysts' questions to the search store, as a table or JSON, with a
//! histogram of hits over time and the total.

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::cli::emit::InputError;
use crate::cli::ops::printable;
use crate::config::Config;
use crate::error::ConfigError;
use crate::index::client::SearchClient;
use crate::index::query::{read_result, SearchQuery};
use crate::privacy::SecretKey;

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// A user id (searched by its pseudonym).
    #[arg(long)]
    pub user: Option<String>,
    /// An IP address, or a network (CIDR: /16–/24 for IPv4, /40–/48 for IPv6).
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long)]
    pub severity: Option<String>,
    #[arg(long)]
    pub classification: Option<String>,
    /// `true` or `false`.
    #[arg(long)]
    pub success: Option<bool>,
    /// Hits to show (the total is always counted).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Histogram bucket width (OpenSearch fixed interval: 1m, 1h, 1d, …).
    #[arg(long, default_value = "1h")]
    pub interval: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Free text over action, resource and error message.
    pub text: Option<String>,
}

pub async fn run(config: &Config, args: SearchArgs) -> anyhow::Result<()> {
    let key = config
        .privacy
        .pseudonym_key
        .as_deref()
        .ok_or_else(|| ConfigError::new("AUDITFLOW_PSEUDONYM_KEY", "required: users and addresses are searched by pseudonym"))?;
    let key = SecretKey::parse("AUDITFLOW_PSEUDONYM_KEY", key)?;
    let query = SearchQuery {
        from: args.from,
        to: args.to,
        user: args.user.clone(),
        ip: args.ip.clone(),
        action: args.action.clone(),
        resource: args.resource.clone(),
        severity: args.severity.clone(),
        classification: args.classification.clone(),
        success: args.success,
        text: args.text.clone(),
        size: args.limit.min(10_000),
        interval: Some(args.interval.clone()),
        // The operator's command: no clearance bound.
        clearance: None,
        ..SearchQuery::default()
    };
    let body = query.to_body(&key, &config.privacy.personal_fields).map_err(|e| InputError(e.0))?;
    let client = SearchClient::new(&config.index)?;
    let r = client
        .search(&format!("{}-*", config.index.prefix), &body)
        .await
        .context("searching OpenSearch")?;
    let result = read_result(&r);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => printable(s.as_bytes(), false),
        other => other.to_string(),
    };
    println!("{:<24} {:<20} {:<22} {:<8} {:<7} {:<16} error", "timestamp", "action", "resource", "severity", "success", "user (pseudonym)");
    for h in &result.hits {
        let user = cell(&h["userPseudonym"]);
        println!(
            "{:<24} {:<20} {:<22} {:<8} {:<7} {:<16} {}",
            cell(&h["timestamp"]),
            cell(&h["action"]),
            cell(&h["resource"]),
            cell(&h["severity"]),
            cell(&h["success"]),
            user.get(..16).unwrap_or(&user),
            cell(&h["errorMessage"])
        );
    }
    if !result.histogram.is_empty() {
        println!();
        let max = result.histogram.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
        for (at, n) in &result.histogram {
            let bar = "#".repeat(((*n as f64 / max as f64) * 40.0).ceil() as usize);
            println!("{at:<24} {n:>8} {bar}");
        }
    }
    println!("{} hit(s) in all, {} shown", result.total, result.hits.len());
    Ok(())
}
