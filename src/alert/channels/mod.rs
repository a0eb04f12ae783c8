//! Notification channels: e-mail (SMTP), Slack incoming webhooks, generic signed webhooks.
//!
//! A channel makes one attempt; [`super::dispatch`] wraps it in retries and its rate limit.
//! Errors say whether another attempt can help ([`DeliveryError::permanent`]).

pub mod email;
pub mod slack;
pub mod webhook;

use lettre::message::Mailbox;

use super::render::Notice;
use super::retry::RateLimiter;
use super::settings::{AlertSettings, ChannelKind};

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Retrying cannot help (a 4xx answer, a rejected recipient): give up at once.
    pub permanent: bool,
    pub message: String,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        DeliveryError { permanent: false, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError { permanent: true, message: message.into() }
    }
}

/// What one delivery carries.
pub struct Delivery<'a> {
    pub notice: &'a Notice,
    /// The alert record as JSON: the webhook body.
    pub record_json: &'a [u8],
    /// E-mail recipients from the alert's routes.
    pub recipients: &'a [Mailbox],
}

/// HTTP answers worth retrying: timeouts, rate limits, server errors.
pub(crate) fn http_status_error(status: reqwest::StatusCode, body: &str) -> DeliveryError {
    let body = super::render::clean_line(body, 200);
    let message = format!("HTTP {status}: {body}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS || status == reqwest::StatusCode::REQUEST_TIMEOUT {
        DeliveryError::transient(message)
    } else {
        DeliveryError::permanent(message)
    }
}

/// The configured channels of this process, each with its rate limiter.
pub struct Channels {
    pub email: Option<(email::EmailChannel, RateLimiter)>,
    pub slack: Option<(slack::SlackChannel, RateLimiter)>,
    pub webhook: Option<(webhook::WebhookChannel, RateLimiter)>,
}

impl Channels {
    pub fn from_settings(s: &AlertSettings) -> Result<Channels, String> {
        let email = match &s.email.host {
            Some(_) => Some((
                email::EmailChannel::new(&s.email)?,
                RateLimiter::new(s.email.rate_per_minute, s.email.burst),
            )),
            None => None,
        };
        let slack = match &s.slack.webhook_url {
            Some(url) => Some((
                slack::SlackChannel::new(url.expose(), s.slack.timeout_seconds)?,
                RateLimiter::new(s.slack.rate_per_minute, s.slack.burst),
            )),
            None => None,
        };
        let webhook = match (&s.webhook.url, &s.webhook.secret) {
            (Some(url), Some(secret)) => Some((
                webhook::WebhookChannel::new(url, secret.expose().as_bytes(), s.webhook.timeout_seconds)?,
                RateLimiter::new(s.webhook.rate_per_minute, s.webhook.burst),
            )),
            _ => None,
        };
        Ok(Channels { email, slack, webhook })
    }

    pub fn configured(&self, kind: ChannelKind) -> bool {
        match kind {
            ChannelKind::Email => self.email.is_some(),
            ChannelKind::Slack => self.slack.is_some(),
            ChannelKind::Webhook => self.webhook.is_some(),
        }
    }

    /// Wait for the channel's rate limit, then make one attempt.
    pub async fn attempt(&self, kind: ChannelKind, d: &Delivery<'_>) -> Result<(), DeliveryError> {
        match kind {
            ChannelKind::Email => {
                let (c, limit) = self.email.as_ref().ok_or_else(|| DeliveryError::permanent("e-mail not configured"))?;
                limit.acquire().await;
                c.send_alert(d.notice, d.recipients).await
            }
            ChannelKind::Slack => {
                let (c, limit) = self.slack.as_ref().ok_or_else(|| DeliveryError::permanent("Slack not configured"))?;
                limit.acquire().await;
                c.send(d.notice).await
            }
            ChannelKind::Webhook => {
                let (c, limit) =
                    self.webhook.as_ref().ok_or_else(|| DeliveryError::permanent("webhook not configured"))?;
                limit.acquire().await;
                c.send(d.record_json, &d.notice.record.alert_id.to_string()).await
            }
        }
    }
}
