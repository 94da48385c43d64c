//! The dashboard: one page, its script and its style sheet, embedded in the
//! binary (no build step, nothing fetched from elsewhere).
//!
//! The script and style are separate files so that the page can run under a
//! strict Content-Security-Policy: no inline script, nothing from another
//! origin. The script puts data into the page with `textContent` only.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub async fn index() -> Response {
    asset_response("text/html; charset=utf-8", INDEX)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset_response("text/javascript; charset=utf-8", APP_JS),
        "style.css" => asset_response("text/css; charset=utf-8", STYLE_CSS),
        _ => super::text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Revalidate each load, so an upgraded binary's page is used.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
