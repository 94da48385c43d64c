//! `ckpt serve`: a dashboard, a JSON API and Prometheus metrics over HTTP.
//!
//! The library is synchronous and so is the [`Store`](ckpt::Store) trait
//! (PostgreSQL's and Redis's stores run a runtime of their own and must not
//! be called from async code), so every store call runs on Tokio's blocking
//! pool through [`AppState::blocking`].
//!
//! - `GET /` and `/assets/*`: the dashboard ([`assets`]), embedded in the
//!   binary.
//! - `GET /metrics`: Prometheus text exposition ([`metrics`]).
//! - `GET /healthz`: 200 `ok` when the store answers, else 503 and why.
//! - `GET /api/...` and `POST /api/jobs/{job}/retry` ([`api`]); mutations
//!   need the bearer token ([`auth`]).
//!
//! Every route answers only requests whose `Host` it serves ([`host`]):
//! others get 421, against DNS rebinding.

mod api;
mod assets;
mod auth;
mod error;
mod host;
mod metrics;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ckpt::store::OpenMode;
use ckpt::Ckpt;

use crate::cli::ServeArgs;
use crate::exit::Usage;
use error::ApiError;

/// How long `/healthz` waits for the store.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other request waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections may take to finish after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    ckpt: Ckpt,
    /// The bearer token mutations need; `None`: mutations are disabled.
    token: Option<Arc<str>>,
    metrics: ::metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    /// Runs `f` with the store on the blocking pool, giving up after
    /// `timeout` (the call itself then finishes in the background).
    async fn blocking<T, F>(&self, timeout: Duration, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Ckpt) -> ckpt::Result<T> + Send + 'static,
    {
        let ckpt = self.ckpt.clone();
        let task = tokio::task::spawn_blocking(move || f(&ckpt));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result.map_err(ApiError::from),
            Ok(Err(join)) => Err(ApiError::internal(format!("the store call failed: {join}"))),
            Err(_) => Err(ApiError::unavailable(format!(
                "the store did not answer within {}s",
                timeout.as_secs()
            ))),
        }
    }
}

/// `ckpt serve`.
pub fn serve(url: &str, args: ServeArgs) -> Result<ExitCode> {
    // A token read from a file or a Kubernetes secret often ends in a
    // newline; the header's token is trimmed too, so compare them alike.
    let token = match args.token.as_deref().map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => {
            return Err(Usage(
                "the token is empty: give --token (or CKPT_TOKEN) a value, or leave it unset to disable mutations"
                    .into(),
            )
            .into())
        }
        t => t.map(Arc::from),
    };
    // Read-only at start, like the other read commands: a missing store is
    // an error (exit 3) rather than a new empty one.
    let ckpt = Ckpt::new(ckpt::store::open(url, OpenMode::MustExist)?);
    let handle = crate::exporter::install_recorder()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ckpt-serve")
        .build()
        .context("cannot start the server's runtime")?;
    // The last handle on the store is dropped here, outside the runtime:
    // PostgreSQL's store owns a runtime, which cannot be dropped in async
    // code.
    let keep = ckpt.clone();
    let state = AppState {
        ckpt,
        token,
        metrics: handle,
    };
    let result = runtime.block_on(run(&args, state));
    // A store call stuck past its timeout must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(keep);
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn run(args: &ServeArgs, state: AppState) -> Result<()> {
    let listen = &args.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Usage(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let hostname = host::hostname();
    let hosts = host::AllowedHosts::new(listen, addr, &args.allowed_host, hostname.as_deref())
        .map_err(Usage)?;
    tracing::info!("answering requests for Host {}", hosts.describe());
    let mutations = if state.token.is_some() {
        "retry enabled with the token"
    } else {
        "read-only (start with --token to enable retry)"
    };
    tracing::info!(
        "listening on http://{addr}/ for {} ({mutations})",
        state.ckpt.store().describe()
    );
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "listening on {addr}, not on loopback: anyone who can reach it can read every job (plain HTTP, no TLS)"
        );
    }
    crate::exporter::spawn_upkeep(state.metrics.clone());
    let app = router(state, hosts);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing open requests");
        let _ = stop_tx.send(());
    });
    let grace = async move {
        if stop_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result.context("the server failed")?,
        () = grace => tracing::warn!(
            "connections still open {}s after the signal; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

/// Every route, for the `Host`s in `hosts` only.
pub fn router(state: AppState, hosts: host::AllowedHosts) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/api/info", get(api::info))
        .route("/api/jobs", get(api::jobs))
        .route("/api/jobs/{job}", get(api::job))
        .route("/api/jobs/{job}/items", get(api::items))
        .route("/api/jobs/{job}/retry", post(api::retry))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(error::BODY_LIMIT))
        .layer(axum::middleware::from_fn(error::refuse_oversize_bodies))
        .layer(axum::middleware::from_fn(error::api_errors_as_json))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            host::check,
        ))
        .with_state(state)
}

/// 200 `ok` when the store answers a listing of jobs; 503 with one line
/// saying why otherwise.
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state
        .blocking(HEALTH_TIMEOUT, |ckpt| ckpt.store().list_jobs().map(|_| ()))
        .await
    {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(e) => {
            tracing::warn!("health check failed: {}", e.message);
            let line = e.message.replace(['\n', '\r'], " ");
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{line}\n"))
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {}", uri.path()),
        )
        .into_response()
    } else {
        text(StatusCode::NOT_FOUND, "not found\n".into())
    }
}

/// A plain-text response that is never cached.
fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}
