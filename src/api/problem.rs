//! RFC 9457 problem details: every error the API answers is `application/problem+json` with a
//! status, a short title and a detail that never carries a token, a secret or data the caller
//! may not see.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// More members (e.g. per-event errors of an ingest request).
    pub extra: Option<serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem { status, detail: detail.into(), extra: None }
    }
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn not_found() -> Problem {
        // The same answer whether the thing is missing or above the caller's clearance.
        Problem::new(StatusCode::NOT_FOUND, "no such resource")
    }
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }
    /// A fault of a store behind the API: logged in full, answered without internals.
    pub fn internal(what: &str, e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "{what}");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: temporarily unavailable, retry later"))
    }
    pub fn with(mut self, extra: serde_json::Value) -> Problem {
        self.extra = Some(extra);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(serde_json::Value::Object(extra)), Some(map)) = (self.extra, body.as_object_mut()) {
            map.extend(extra);
        }
        let mut r = (self.status, body.to_string()).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Problem {
        Problem::internal("the database", e)
    }
}

pub type ApiResult<T> = Result<T, Problem>;
