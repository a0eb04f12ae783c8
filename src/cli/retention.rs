//! `auditflow retention run` and `auditflow hold …`: what the operator sees.

use std::fmt::Write as _;

use crate::compliance::Pseudonyms;
use crate::privacy::SubjectKind;
use crate::retention::holds::LegalHold;
use crate::retention::{Decision, RetentionOutcome};

/// How `hold add --subject` reads its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubjectArg {
    /// An IP address is an anonymous actor's address, anything else a user id.
    Auto,
    User,
    Ip,
}

/// The pseudonym of a subject given on the command line, spelt as the pipeline spells it
/// (trimmed user id; canonical address, IPv4-mapped IPv6 shown as IPv4).
pub fn subject_pseudonym(pseudonyms: &Pseudonyms, subject: &str, kind: SubjectArg) -> Result<String, String> {
    let subject = subject.trim();
    if subject.is_empty() {
        return Err("--subject is empty".into());
    }
    let ip = crate::enrich::parse_ip(subject);
    match (kind, ip) {
        (SubjectArg::Ip, None) => Err(format!("--subject {subject:?} is not an IP address")),
        (SubjectArg::Ip | SubjectArg::Auto, Some(addr)) => Ok(pseudonyms.of(SubjectKind::Ip, &addr.to_string())),
        (SubjectArg::User | SubjectArg::Auto, _) => Ok(pseudonyms.of(SubjectKind::User, subject)),
    }
}

pub fn format_outcome(outcome: &RetentionOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>10} {:>9} {:<21} {}",
        "month", "rows", "retention", "expires", if outcome.dry_run { "decision (dry run)" } else { "decision" }
    );
    for m in &outcome.months {
        let mut decision = match (m.decision, outcome.dry_run) {
            (Decision::Drop, true) => "would drop".to_string(),
            (d, _) => d.as_str().to_string(),
        };
        if !m.held_by.is_empty() {
            let ids: Vec<String> = m.held_by.iter().map(i64::to_string).collect();
            let _ = write!(decision, " by hold {}", ids.join(", "));
        }
        if m.rows_without_subject > 0 {
            let _ = write!(decision, ": {} row(s) with no subject pseudonym while subject holds are active", m.rows_without_subject);
        }
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>9} {:<21} {}",
            m.month_start.format("%Y-%m"),
            m.rows().map_or("-".into(), |r| r.to_string()),
            m.retention_days.map_or("-".into(), |d| format!("{d}d")),
            m.expires_at.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
            decision
        );
    }
    let dropped = outcome.dropped().count();
    let would = outcome.months.iter().filter(|m| m.decision == Decision::Drop).count();
    if outcome.dry_run {
        let _ = writeln!(s, "dry run: {would} month(s) would be dropped; nothing was changed");
    } else {
        let _ = writeln!(s, "{dropped} month(s) dropped");
    }
    s
}

pub fn format_holds(holds: &[LegalHold]) -> String {
    if holds.is_empty() {
        return "no legal holds\n".into();
    }
    let mut s = String::new();
    let _ = writeln!(s, "{:>5}  {:<32}  {:<20}  {:<20}  {:<10}  {:<20}  reason", "id", "subject pseudonym", "from", "to", "by", "released");
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| v.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into());
    for h in holds {
        let _ = writeln!(
            s,
            "{:>5}  {:<32}  {:<20}  {:<20}  {:<10}  {:<20}  {}",
            h.id,
            h.subject_pseudonym.as_deref().unwrap_or("-"),
            t(h.from_ts),
            t(h.to_ts),
            h.created_by,
            t(h.released_at),
            h.reason
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::SecretKey;

    #[test]
    fn subjects_are_pseudonymised_as_the_pipeline_does() {
        let p = Pseudonyms::new(SecretKey([2u8; 32]));
        assert_eq!(subject_pseudonym(&p, " alice ", SubjectArg::Auto).unwrap(), p.of(SubjectKind::User, "alice"));
        assert_eq!(subject_pseudonym(&p, "::ffff:10.0.0.1", SubjectArg::Auto).unwrap(), p.of(SubjectKind::Ip, "10.0.0.1"));
        assert_eq!(subject_pseudonym(&p, "10.0.0.1", SubjectArg::User).unwrap(), p.of(SubjectKind::User, "10.0.0.1"));
        assert!(subject_pseudonym(&p, "alice", SubjectArg::Ip).is_err());
        assert!(subject_pseudonym(&p, " ", SubjectArg::Auto).is_err());
    }
}
