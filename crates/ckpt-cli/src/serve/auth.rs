//! The bearer token that mutating requests carry.
//!
//! No token configured: every mutation is refused (403), so a server started
//! without `--token` is read-only. A request without `Authorization: Bearer
//! ...` gets 401; a wrong token 403. GETs need no token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Proof that the request carries the configured token: a handler that
/// takes it as an argument runs only for authorised requests.
#[derive(Debug)]
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(expected) = state.token.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mutations are disabled: start ckpt serve with --token (or CKPT_TOKEN) to allow them",
            )
            .into_response());
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        let Some(given) = given else {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request needs the token: send Authorization: Bearer <token>",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="ckpt""#),
            );
            return Err(response);
        };
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            tracing::warn!("a request with a wrong token was refused");
            return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong token").into_response());
        }
        Ok(Authorized)
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive); `None` for another scheme or an empty token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equality whose time depends only on the lengths, not on where the first
/// difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parses_the_scheme_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer(""), None);
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"", b"x"));
        // A prefix padded with NULs is still different.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
