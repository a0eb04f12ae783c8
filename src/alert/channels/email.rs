//! E-mail through SMTP with `lettre`: STARTTLS, implicit TLS or none; optional AUTH.
//!
//! Headers are built with lettre's typed builders only: `From` and `To` are parsed mailboxes
//! from configuration, never event data; the subject is event-derived but passes
//! [`clean_line`](crate::alert::render::clean_line), so it holds no CR or LF. The body is
//! multipart/alternative: plain text and HTML, every value escaped in the HTML part.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::DeliveryError;
use crate::alert::render::{clean_line, short, Notice};
use crate::alert::settings::{EmailConfig, SmtpTls};

pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailChannel {
    pub fn new(c: &EmailConfig) -> Result<EmailChannel, String> {
        let host = c.host.as_deref().ok_or("no SMTP host")?;
        let builder = match c.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("SMTP STARTTLS setup for {host}: {e}"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("SMTP TLS setup for {host}: {e}"))?,
        };
        let mut builder = builder.port(c.port()).timeout(Some(Duration::from_secs(c.timeout_seconds.max(1))));
        if let Some(user) = &c.username {
            let password = c.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let from = c.from.parse::<Mailbox>().map_err(|e| format!("SMTP from address {:?}: {e}", c.from))?;
        Ok(EmailChannel { transport: builder.build(), from })
    }

    /// The alert e-mail. The Message-ID derives from the alert id, so a mail system can drop
    /// the duplicate that at-least-once delivery may produce.
    pub fn alert_message(&self, notice: &Notice, to: &[Mailbox]) -> Result<Message, DeliveryError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(short(&clean_line(&notice.subject, 400), 200))
            .message_id(Some(format!("<alert-{}@auditflow>", notice.record.alert_id)))
            .date_now();
        for m in to {
            b = b.to(m.clone());
        }
        b.multipart(MultiPart::alternative_plain_html(notice.plain_text(), notice.html()))
            .map_err(|e| DeliveryError::permanent(format!("cannot build e-mail: {e}")))
    }

    /// A plain-text message (operational alerts).
    pub fn plain_message(&self, subject: &str, text: String, to: &[Mailbox]) -> Result<Message, DeliveryError> {
        let mut b = Message::builder().from(self.from.clone()).subject(short(&clean_line(subject, 400), 200)).date_now();
        for m in to {
            b = b.to(m.clone());
        }
        b.body(text).map_err(|e| DeliveryError::permanent(format!("cannot build e-mail: {e}")))
    }

    pub async fn send_alert(&self, notice: &Notice, to: &[Mailbox]) -> Result<(), DeliveryError> {
        if to.is_empty() {
            return Err(DeliveryError::permanent("no e-mail recipients routed"));
        }
        let message = self.alert_message(notice, to)?;
        self.send(message).await
    }

    pub async fn send(&self, message: Message) -> Result<(), DeliveryError> {
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(DeliveryError::permanent(format!("SMTP: {e}"))),
            Err(e) => Err(DeliveryError::transient(format!("SMTP: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::policy::tests::{event, rule_match};
    use crate::alert::render::tests::record_for;
    use crate::event::Severity;
    use crate::rule_match::RuleAction;

    fn channel() -> EmailChannel {
        let c = EmailConfig {
            host: Some("127.0.0.1".into()),
            port: Some(2525),
            tls: SmtpTls::None,
            from: "auditflow <alerts@example.com>".into(),
            ..EmailConfig::default()
        };
        EmailChannel::new(&c).unwrap()
    }

    /// Header names of a formatted message (unfolding continuation lines).
    fn header_names(raw: &str) -> Vec<String> {
        let head = raw.split("\r\n\r\n").next().unwrap();
        head.split("\r\n")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('\t'))
            .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
            .collect()
    }

    #[test]
    fn crlf_in_event_fields_cannot_add_headers() {
        let mut ev = event("mallory\r\nBcc: victim@example.com\r\nX-Injected: 1", "login\r\nSubject: fake", false);
        ev.resource = "payroll\nContent-Type: text/html\n\n<script>x</script>".into();
        let mut m = rule_match("failed-login-attempts\r\nX-Rule: 1", Severity::High, RuleAction::Alert, ev);
        m.rule_name = "Brute force\r\nReply-To: attacker@example.com".into();
        let notice = Notice::new(record_for(&m), 2000);
        let to: Vec<Mailbox> = vec!["security@example.com".parse().unwrap()];
        let raw = String::from_utf8(channel().alert_message(&notice, &to).unwrap().formatted()).unwrap();
        let names = header_names(&raw);
        for bad in ["bcc", "x-injected", "reply-to", "x-rule", "content-type: text/html"] {
            assert!(!names.contains(&bad.to_string()), "{bad} injected: {names:?}");
        }
        assert_eq!(names.iter().filter(|n| *n == "subject").count(), 1, "{names:?}");
        assert_eq!(names.iter().filter(|n| *n == "to").count(), 1);
        let subject_line = raw.split("\r\n").find(|l| l.starts_with("Subject:")).unwrap();
        assert!(subject_line.contains("[auditflow]"), "{subject_line}");
        assert!(raw.contains("Message-ID: <alert-00000000-0000-0000-0000-000000000000@auditflow>"));
    }

    #[test]
    fn every_tls_mode_builds_a_transport() {
        for (tls, port) in [(SmtpTls::None, 25), (SmtpTls::Starttls, 587), (SmtpTls::Tls, 465)] {
            let c = EmailConfig {
                host: Some("smtp.example.com".into()),
                tls,
                username: Some("alerts".into()),
                password: Some(crate::alert::settings::Secret("pw".into())),
                ..EmailConfig::default()
            };
            assert_eq!(c.port(), port);
            assert!(EmailChannel::new(&c).is_ok(), "{tls:?}");
        }
    }

    #[test]
    fn hundred_kilobyte_fields_make_a_bounded_message() {
        let mut ev = event(&"u".repeat(100 * 1024), "login", false);
        ev.error_message = Some("e".repeat(100 * 1024));
        let m = rule_match("r", Severity::Critical, RuleAction::Block, ev);
        let notice = Notice::new(record_for(&m), 2000);
        let to: Vec<Mailbox> = vec!["a@example.com".parse().unwrap(), "b@example.com".parse().unwrap()];
        let raw = channel().alert_message(&notice, &to).unwrap().formatted();
        assert!(raw.len() < 100_000, "{} bytes", raw.len());
        let text = String::from_utf8(raw).unwrap();
        assert!(text.contains("multipart/alternative"));
        assert!(text.contains("text/plain") && text.contains("text/html"));
        // every header line stays within SMTP's line limit
        let head = text.split("\r\n\r\n").next().unwrap();
        assert!(head.split("\r\n").all(|l| l.len() <= 998), "a header line is too long");
    }
}
