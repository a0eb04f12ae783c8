//! Slack incoming webhooks: one JSON message per alert, user data escaped for mrkdwn.

use std::time::Duration;

use super::{http_status_error, DeliveryError};
use crate::alert::render::Notice;

pub struct SlackChannel {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl SlackChannel {
    pub fn new(url: &str, timeout_seconds: u64) -> Result<SlackChannel, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("Slack webhook URL: {e}"))?;
        Ok(SlackChannel { client: http_client(timeout_seconds)?, url })
    }

    pub async fn send(&self, notice: &Notice) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&notice.slack_payload()).map_err(|e| DeliveryError::permanent(e.to_string()))?;
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::transient(format!("Slack: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(http_status_error(status, &text))
    }
}

/// The HTTP client of the HTTP channels: a timeout, no redirects (a redirect must not carry a
/// signed alert somewhere else), rustls with the OS trust store.
pub(crate) fn http_client(timeout_seconds: u64) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_seconds.max(1)))
        .connect_timeout(Duration::from_secs(timeout_seconds.clamp(1, 10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("auditflow/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
