//! The API's errors: `{"error": "..."}` with a fitting status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<ckpt::Error> for ApiError {
    /// The library's messages never hold a store password.
    fn from(err: ckpt::Error) -> ApiError {
        use ckpt::Error as E;
        let status = match &err {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::InvalidInput(_) | E::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
            E::Fenced(_) => StatusCode::CONFLICT,
            // Busy here means the store is locked by a writer: try again.
            E::Busy(_) | E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), "{}", self.message);
        }
        let mut response = no_store(
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Every error under `/api/` is `{"error": message}`, as docs/JSON.md
/// says, including axum's own rejections, which are plain text or empty:
/// a method the route does not take (405, its `Allow` header kept), a
/// path that is not UTF-8, a body over the limit (413).
pub async fn api_errors_as_json(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !api || json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // A rejection's text is a line; more is not a message.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// The largest request body taken (the only body is a retry's list of
/// keys).
pub const BODY_LIMIT: usize = 2 << 20;

/// Refuses a body whose `Content-Length` is over [`BODY_LIMIT`] before
/// reading any of it (413). Read up to the limit first, the refusal would
/// come while the client is still sending: the connection is then closed
/// with its body unread, and the client may see the reset before the
/// answer. A body without a length is cut at the limit when read.
pub async fn refuse_oversize_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > BODY_LIMIT as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is {n} bytes, over the length limit of {BODY_LIMIT} bytes"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// A response that is never cached: job data changes all the time.
pub fn no_store(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
