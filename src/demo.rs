//! A realistic synthetic event mix: the four example kinds of the original design (login,
//! failed login, administrative action, data export) over many users and addresses, about 5%
//! failures, metadata of a few hundred bytes. Used by the demo producer, tests and benchmarks.
//! Deterministic for a given seed, so runs can be compared.

use crate::event::RawEvent;

/// xorshift64*: tiny, fast, and good enough to spread users and addresses.
pub struct EventMix {
    state: u64,
    users: u64,
}

impl EventMix {
    pub fn new(seed: u64, users: u64) -> EventMix {
        EventMix { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, users: users.max(1) }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next event. `id` is set so callers can follow it through the pipeline.
    pub fn next_event(&mut self) -> RawEvent {
        let r = self.next();
        let user = format!("emp{:05}", r % self.users);
        let ip = match (r >> 20) % 4 {
            0 => format!("10.{}.{}.{}", (r >> 8) % 256, (r >> 16) % 256, (r >> 24) % 254 + 1),
            1 => format!("192.168.{}.{}", (r >> 8) % 256, (r >> 16) % 254 + 1),
            2 => format!("203.0.113.{}", (r >> 8) % 254 + 1),
            _ => format!("{}.{}.{}.{}", (r >> 8) % 223 + 1, (r >> 16) % 256, (r >> 24) % 256, (r >> 32) % 254 + 1),
        };
        let failed = (r >> 40) % 100 < 5;
        let kind = (r >> 48) % 10;
        let session = format!("sess-{:x}", (r >> 4) % 1_000_000);
        let mut raw = RawEvent {
            id: Some(uuid::Uuid::from_u64_pair(self.next(), self.next()).to_string()),
            user_id: Some(user),
            session_id: Some(session),
            ip_address: Some(ip),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0".into()),
            success: Some(!failed),
            ..RawEvent::default()
        };
        match kind {
            // logins dominate real audit streams
            0..=5 => {
                raw.action = Some("login".into());
                raw.resource = Some(if failed { "authentication" } else { "user_account" }.into());
                raw.severity = Some(if failed { "HIGH" } else { "LOW" }.into());
                raw.method = Some("POST".into());
                raw.endpoint = Some("/api/auth/login".into());
                raw.status_code = Some(if failed { 401 } else { 200 });
                if failed {
                    raw.error_message = Some("Invalid credentials".into());
                }
                raw.metadata = Some(serde_json::json!({
                    "mfa": (r >> 7).is_multiple_of(2), "client": "web", "region": "eu-west-1",
                    "request_id": format!("req-{:016x}", r), "trace": {"span": format!("{:08x}", r >> 16)}
                }));
            }
            6 | 7 => {
                raw.action = Some("delete_user".into());
                raw.resource = Some("user_management".into());
                raw.resource_id = Some(format!("emp{:05}", (r >> 9) % self.users));
                raw.classification = Some("CONFIDENTIAL".into());
                raw.severity = Some("MEDIUM".into());
                raw.method = Some("DELETE".into());
                raw.endpoint = Some(format!("/api/users/emp{:05}", (r >> 9) % self.users));
                raw.status_code = Some(if failed { 403 } else { 200 });
                raw.duration = Some(((r >> 11) % 900) as i64 + 20);
                raw.metadata = Some(serde_json::json!({
                    "reason": "account closure requested", "ticket": format!("OPS-{}", (r >> 5) % 100000),
                    "approver": format!("admin{}", (r >> 13) % 20)
                }));
            }
            8 => {
                raw.action = Some("data_export".into());
                raw.resource = Some("customer_data".into());
                raw.classification = Some("RESTRICTED".into());
                raw.severity = Some("HIGH".into());
                raw.metadata = Some(serde_json::json!({
                    "export_type": "full", "records_count": (r >> 10) % 5000, "file_format": "csv",
                    "destination": "s3://exports/customer", "columns": ["id", "email", "country", "plan"]
                }));
            }
            _ => {
                raw.action = Some("grant_role".into());
                raw.resource = Some("iam_roles".into());
                raw.resource_id = Some(format!("role-{}", (r >> 6) % 50));
                raw.classification = Some("CONFIDENTIAL".into());
                raw.severity = Some(if (r >> 3).is_multiple_of(20) { "CRITICAL" } else { "MEDIUM" }.into());
                raw.metadata = Some(serde_json::json!({
                    "role": "billing-admin", "granted_to": format!("emp{:05}", (r >> 17) % self.users),
                    "expires_in_days": 30
                }));
            }
        }
        raw
    }
}

/// The four usage examples of the original design, verbatim.
pub fn seed_examples() -> Vec<RawEvent> {
    vec![
        RawEvent {
            action: Some("login".into()),
            resource: Some("user_account".into()),
            user_id: Some("user123".into()),
            ip_address: Some("192.168.1.100".into()),
            success: Some(true),
            ..RawEvent::default()
        },
        RawEvent {
            action: Some("login".into()),
            resource: Some("authentication".into()),
            user_id: Some("user456".into()),
            ip_address: Some("10.0.0.50".into()),
            success: Some(false),
            severity: Some("HIGH".into()),
            error_message: Some("Invalid credentials".into()),
            ..RawEvent::default()
        },
        RawEvent {
            action: Some("delete_user".into()),
            resource: Some("user_management".into()),
            resource_id: Some("user789".into()),
            user_id: Some("admin123".into()),
            ip_address: Some("172.16.0.10".into()),
            classification: Some("CONFIDENTIAL".into()),
            severity: Some("MEDIUM".into()),
            method: Some("DELETE".into()),
            endpoint: Some("/api/users/user789".into()),
            status_code: Some(200),
            duration: Some(250),
            ..RawEvent::default()
        },
        RawEvent {
            action: Some("data_export".into()),
            resource: Some("customer_data".into()),
            user_id: Some("user123".into()),
            ip_address: Some("203.0.113.10".into()),
            classification: Some("RESTRICTED".into()),
            severity: Some("HIGH".into()),
            metadata: Some(serde_json::json!({"export_type":"full","records_count":1500,"file_format":"csv"})),
            ..RawEvent::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_deterministic_and_varied() {
        let a: Vec<_> = { let mut m = EventMix::new(7, 1000); (0..2000).map(|_| m.next_event()).collect() };
        let b: Vec<_> = { let mut m = EventMix::new(7, 1000); (0..2000).map(|_| m.next_event()).collect() };
        assert_eq!(a.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), b.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
        let failures = a.iter().filter(|e| e.success == Some(false)).count();
        assert!((40..=160).contains(&failures), "about 5% failures, got {failures}");
        let actions: std::collections::HashSet<_> = a.iter().filter_map(|e| e.action.clone()).collect();
        assert!(actions.len() >= 4, "{actions:?}");
        let users: std::collections::HashSet<_> = a.iter().filter_map(|e| e.user_id.clone()).collect();
        assert!(users.len() > 500);
    }
}
