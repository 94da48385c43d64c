//! The JSON API. Errors are `{"error": "..."}` with a fitting status.
//!
//! - `GET /api/info`: the store (password redacted), the version, whether
//!   mutations are enabled.
//! - `GET /api/jobs`: every job's [`JobJson`](ckpt::json::JobJson),
//!   ordered by name.
//! - `GET /api/jobs/{job}`: the job's
//!   [`JobDetailJson`](ckpt::json::JobDetailJson), with the history (newest
//!   first, at most [`HISTORY_SHOWN`]) and the dead and failed items (at
//!   most [`FAILURES_SHOWN`] of each, in enqueue order).
//! - `GET /api/jobs/{job}/items?status=S&limit=N`: an array of
//!   [`ItemJson`](ckpt::json::ItemJson), in enqueue order.
//! - `POST /api/jobs/{job}/retry` with an optional body
//!   `{"status": "dead" | "failed", "keys": [...]}` (default: every dead
//!   item): `{"moved": N}`. Needs the bearer token.
//!
//! The documents are the stable types of [`ckpt::json`], the same the
//! `--json` options print.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ckpt::inspect;
use ckpt::json::ItemJson;
use ckpt::ItemStatus;
use serde::{Deserialize, Serialize};

use super::auth::Authorized;
use super::error::{no_store, ApiError};
use super::{AppState, STORE_TIMEOUT};

/// History entries in a job's detail.
pub const HISTORY_SHOWN: usize = 100;
/// Dead items, and failed items, in a job's detail.
pub const FAILURES_SHOWN: usize = 100;
/// Items listed when no `limit` is given.
const DEFAULT_ITEMS: usize = 100;
/// The largest `limit` accepted.
const MAX_ITEMS: usize = 10_000;

fn ok(body: impl Serialize) -> Response {
    no_store(StatusCode::OK, Json(body))
}

/// The job named in the path, checked like a job name on the command line.
fn job_name(name: &str) -> Result<(), ApiError> {
    ckpt::validate::job_name(name).map_err(ApiError::from)
}

fn unknown_job(job: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no job named '{job}'"))
}

/// `GET /api/info`.
#[derive(Debug, Serialize)]
pub struct Info {
    /// The store URL, any password redacted.
    pub store: String,
    /// This ckpt's version.
    pub version: &'static str,
    /// Whether `POST` requests are accepted (a token is configured).
    pub mutations: bool,
}

pub async fn info(State(state): State<AppState>) -> Response {
    ok(Info {
        store: state.ckpt.store().describe(),
        version: env!("CARGO_PKG_VERSION"),
        mutations: state.token.is_some(),
    })
}

/// `GET /api/jobs`.
pub async fn jobs(State(state): State<AppState>) -> Result<Response, ApiError> {
    let summaries = state
        .blocking(STORE_TIMEOUT, |ckpt| {
            inspect::job_documents(ckpt.store().as_ref(), ckpt.now())
        })
        .await?;
    Ok(ok(summaries))
}

/// `GET /api/jobs/{job}`.
pub async fn job(
    State(state): State<AppState>,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    job_name(&job)?;
    let name = job.clone();
    let detail = state
        .blocking(STORE_TIMEOUT, move |ckpt| {
            inspect::job_detail(
                ckpt.store().as_ref(),
                &name,
                ckpt.now(),
                HISTORY_SHOWN,
                FAILURES_SHOWN,
            )
        })
        .await?;
    detail.map(ok).ok_or_else(|| unknown_job(&job))
}

/// The query of `GET /api/jobs/{job}/items`; checked by hand for clear
/// messages.
#[derive(Debug, Deserialize)]
pub struct ItemsQuery {
    status: Option<String>,
    limit: Option<String>,
}

pub async fn items(
    State(state): State<AppState>,
    Path(job): Path<String>,
    query: Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    job_name(&job)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match query.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(ItemStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("unknown status {s:?}: use one of {}", statuses()))
        })?),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_ITEMS,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ITEMS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit {s:?} is not a number from 1 to {MAX_ITEMS}"))
            })?,
    };
    let name = job.clone();
    let items = state
        .blocking(STORE_TIMEOUT, move |ckpt| {
            let store = ckpt.store();
            if store.get_job(&name)?.is_none() {
                return Ok(None);
            }
            let items = store.list_items(&name, status, limit)?;
            Ok(Some(items.iter().map(ItemJson::new).collect::<Vec<_>>()))
        })
        .await?;
    items.map(ok).ok_or_else(|| unknown_job(&job))
}

fn statuses() -> String {
    ItemStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of `POST /api/jobs/{job}/retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// "dead" (the default) or "failed".
    status: Option<String>,
    /// Only these items; every item of that status when absent.
    keys: Option<Vec<String>>,
}

/// `{"moved": N}`.
#[derive(Debug, Serialize)]
pub struct Moved {
    pub moved: u64,
}

pub async fn retry(
    _auth: Authorized,
    State(state): State<AppState>,
    Path(job): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    job_name(&job)?;
    let request: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetryRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                r#"the body is not a retry request ({e}); expected {{"status": "dead" | "failed", "keys": [...]}}, both optional"#
            ))
        })?
    };
    let from = match request.status.as_deref() {
        None | Some("dead") => ItemStatus::Dead,
        Some("failed") => ItemStatus::Failed,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "only dead or failed items can be retried, not {other:?}"
            )))
        }
    };
    if request.keys.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "keys is empty: leave it out to retry every item",
        ));
    }
    let name = job.clone();
    let keys = request.keys;
    let moved = state
        .blocking(STORE_TIMEOUT, move |ckpt| {
            if ckpt.get_job(&name)?.is_none() {
                return Ok(None);
            }
            ckpt.queue(&name)?.redrive(from, keys.as_deref()).map(Some)
        })
        .await?
        .ok_or_else(|| unknown_job(&job))?;
    tracing::info!(
        event = "retry",
        job = job.as_str(),
        "{moved} {from} item(s) back to pending (requested over HTTP)"
    );
    Ok(ok(Moved { moved }))
}
