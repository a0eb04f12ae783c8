//! Generic webhooks: the alert record as JSON, signed.
//!
//! `X-Auditflow-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>` with the
//! configured secret; receivers recompute it and compare in constant time.
//! `X-Auditflow-Alert-Id` lets them drop duplicates (delivery is at least once).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::slack::http_client;
use super::{http_status_error, DeliveryError};
use crate::alert::policy::hex;

pub const SIGNATURE_HEADER: &str = "X-Auditflow-Signature";
pub const ALERT_ID_HEADER: &str = "X-Auditflow-Alert-Id";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Check a received signature in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Some(bytes) = (0..hex_sig.len() / 2)
        .map(|i| u8::from_str_radix(hex_sig.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else { return false };
    mac.update(body);
    hex_sig.len() == 64 && mac.verify_slice(&bytes).is_ok()
}

pub struct WebhookChannel {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
}

impl WebhookChannel {
    pub fn new(url: &str, secret: &[u8], timeout_seconds: u64) -> Result<WebhookChannel, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("webhook URL: {e}"))?;
        Ok(WebhookChannel { client: http_client(timeout_seconds)?, url, secret: secret.to_vec() })
    }

    pub async fn send(&self, body: &[u8], alert_id: &str) -> Result<(), DeliveryError> {
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&self.secret, body))
            .header(ALERT_ID_HEADER, alert_id)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| DeliveryError::transient(format!("webhook: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(http_status_error(status, &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verification_rejects_tampering() {
        let body = br#"{"alertId":"x","suppressedCount":11}"#;
        let sig = signature(b"s3cret", body);
        assert!(verify(b"s3cret", body, &sig));
        assert!(!verify(b"other", body, &sig));
        assert!(!verify(b"s3cret", br#"{"alertId":"x","suppressedCount":0}"#, &sig));
        assert!(!verify(b"s3cret", body, "sha256=zz"));
        assert!(!verify(b"s3cret", body, &sig.replace("sha256=", "sha1=")));
    }

    #[test]
    fn status_classification() {
        use reqwest::StatusCode;
        assert!(!http_status_error(StatusCode::INTERNAL_SERVER_ERROR, "").permanent);
        assert!(!http_status_error(StatusCode::TOO_MANY_REQUESTS, "").permanent);
        assert!(!http_status_error(StatusCode::BAD_GATEWAY, "").permanent);
        assert!(http_status_error(StatusCode::NOT_FOUND, "").permanent);
        assert!(http_status_error(StatusCode::UNAUTHORIZED, "").permanent);
        let e = http_status_error(StatusCode::BAD_REQUEST, "bad\r\nX-Evil: 1");
        assert!(!e.message.contains('\n'), "{}", e.message);
    }
}
