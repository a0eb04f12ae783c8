//! `auditflow token issue`: an HS256 token for the API, for local use and tests (an identity
//! provider issues the real ones).

use crate::api::auth::{self, Role};
use crate::cli::emit::InputError;
use crate::config::Config;
use crate::event::Classification;

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a signed token (HS256, AUDITFLOW_JWT_SECRET) on standard output.
    Issue(IssueArgs),
}

#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// A role (ingest, analyst, auditor, privacy, admin); repeat for several.
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// Most sensitive classification the caller may see: PUBLIC, INTERNAL, CONFIDENTIAL, RESTRICTED.
    #[arg(long)]
    pub clearance: String,
    /// Lifetime: seconds, or with a unit (30m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The token's subject (the actor the API records).
    #[arg(long, default_value = "local-user")]
    pub sub: String,
    /// OAuth scopes, e.g. pii:read; repeat for several.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
}

/// `30`, `30s`, `30m`, `1h`, `7d` → seconds.
pub fn parse_ttl(text: &str) -> Result<i64, InputError> {
    let t = text.trim();
    let (n, unit) = t.find(|c: char| !c.is_ascii_digit()).map(|i| t.split_at(i)).unwrap_or((t, "s"));
    let n: i64 = n.parse().map_err(|_| InputError(format!("--ttl: not a duration: {text:?}")))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(InputError(format!("--ttl: unknown unit in {text:?} (s, m, h, d)"))),
    };
    if secs <= 0 || secs > 30 * 86_400 {
        return Err(InputError("--ttl: between 1 second and 30 days".into()));
    }
    Ok(secs)
}

pub fn run(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Issue(args) = command;
    let roles = args
        .roles
        .iter()
        .map(|r| Role::parse(r).ok_or_else(|| InputError(format!("--role: unknown role {r:?} (ingest, analyst, auditor, privacy, admin)"))))
        .collect::<Result<Vec<_>, _>>()?;
    let clearance: Classification = serde_json::from_value(serde_json::Value::String(args.clearance.clone()))
        .map_err(|_| InputError(format!("--clearance: not a classification: {:?}", args.clearance)))?;
    let ttl = parse_ttl(&args.ttl)?;
    let token = auth::issue(&config.api.auth, &args.sub, &roles, clearance, &args.scopes, ttl, chrono::Utc::now().timestamp())?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_stay_bounded() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        assert!(parse_ttl("0").is_err() && parse_ttl("31d").is_err() && parse_ttl("1y").is_err() && parse_ttl("h").is_err());
    }
}
