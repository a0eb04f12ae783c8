//! Generic webhooks: the alert record as JSON, signed so that a captured request cannot be
//! replayed later.
//!
//! `X-Auditflow-Timestamp: <unix seconds>` and
//! `X-Auditflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the
//! configured secret. Receivers recompute the HMAC over the timestamp, a dot and the exact body
//! bytes, compare in constant time, and refuse a timestamp older than their tolerance (300 s
//! recommended). Each attempt is signed afresh, so retries stay within it.
//! `X-Auditflow-Alert-Id` lets them drop duplicates (delivery is at least once). When tracing is
//! on, `traceparent` names the delivery's span, and the body's `traceId` the triggering event's
//! trace.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::slack::http_client;
use super::{http_status_error, DeliveryError};
use crate::alert::policy::hex;

pub const SIGNATURE_HEADER: &str = "X-Auditflow-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Auditflow-Timestamp";
pub const ALERT_ID_HEADER: &str = "X-Auditflow-Alert-Id";
/// How far from the receiver's clock a timestamp may be; what the README recommends.
pub const RECOMMENDED_TOLERANCE_SECS: i64 = 300;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Why a received signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the timestamp is further than the tolerance from now")]
    Stale,
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Check a received signature header as a receiver should: the timestamp within `tolerance_secs`
/// of `now` (unix seconds), and one `v1` (several are allowed, for secret rotation) equal in
/// constant time to the HMAC of `"<t>.<body>"`.
pub fn verify(secret: &[u8], body: &[u8], header: &str, now: i64, tolerance_secs: i64) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = Some(v.parse::<i64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => candidates.push(v),
            Some(_) => {} // other schemes: ignored, so new ones can be added beside v1
            None => return Err(VerifyError::Malformed),
        }
    }
    let t = timestamp.ok_or(VerifyError::Malformed)?;
    if candidates.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(VerifyError::Stale);
    }
    let matches = |hex_sig: &str| {
        let bytes: Option<Vec<u8>> = (0..hex_sig.len() / 2)
            .map(|i| u8::from_str_radix(hex_sig.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        hex_sig.len() == 64 && bytes.is_some_and(|b| mac(secret, t, body).verify_slice(&b).is_ok())
    };
    if candidates.into_iter().any(matches) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
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
        let now = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature(&self.secret, now, body))
            .header(ALERT_ID_HEADER, alert_id);
        // The receiver may continue the trace (W3C Trace Context over HTTP).
        if let Some(trace) = crate::trace::current() {
            request = request.header(crate::trace::TRACEPARENT, trace.to_string());
        }
        let response = request
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
    fn signature_is_the_hmac_of_timestamp_dot_body() {
        // The signed string is exactly the timestamp, a dot and the body bytes.
        let sig = signature(b"Jefe", 42, b"body");
        let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        reference.update(b"42.body");
        assert_eq!(sig, format!("t=42,v1={}", hex(&reference.finalize().into_bytes())));
    }

    #[test]
    fn verification_rejects_tampering_staleness_and_malformed_headers() {
        let body = br#"{"alertId":"x","suppressedCount":11}"#;
        let t = 1_700_000_000;
        let sig = signature(b"s3cret", t, body);
        let ok = |h: &str, now: i64| verify(b"s3cret", body, h, now, RECOMMENDED_TOLERANCE_SECS);
        assert_eq!(ok(&sig, t), Ok(()));
        assert_eq!(ok(&sig, t + 300), Ok(()));
        assert_eq!(ok(&sig, t + 301), Err(VerifyError::Stale), "a replay after the tolerance is refused");
        assert_eq!(ok(&sig, t - 301), Err(VerifyError::Stale), "so is a timestamp from the future");
        assert_eq!(verify(b"other", body, &sig, t, 300), Err(VerifyError::Mismatch));
        let other_body = br#"{"alertId":"x","suppressedCount":0}"#;
        assert_eq!(verify(b"s3cret", other_body, &sig, t, 300), Err(VerifyError::Mismatch));
        // Moving the timestamp forward to pass the freshness check breaks the signature.
        assert_eq!(ok(&sig.replace(&format!("t={t}"), &format!("t={}", t + 1000)), t + 1000), Err(VerifyError::Mismatch));
        // Rotation: any v1 may match.
        let rotated = format!("{},v1={}", signature(b"old", t, body), &sig[sig.find("v1=").unwrap() + 3..]);
        assert_eq!(ok(&rotated, t), Ok(()));
        for bad in ["", "v1=00", &format!("t={t}"), "t=x,v1=00", "sha256=ab", &format!("t={t},v1=zz")] {
            assert_ne!(ok(bad, t), Ok(()), "{bad:?}");
        }
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
