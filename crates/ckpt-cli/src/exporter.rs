//! This process's Prometheus exporter: the in-process metrics the library
//! emits through the `metrics` facade (checkpoint write times, item
//! attempts and durations...). They reach the recorder
//! [`install_recorder`] installs in this process, so they show where the
//! work runs: `ckpt run --metrics-listen ADDR` serves them with
//! [`spawn_metrics_listener`], and `ckpt serve` appends them to its store
//! gauges (`serve::metrics`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{describe_counter, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::exit::Usage;

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histograms are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Bucket bounds of the checkpoint write histogram, in seconds.
const WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds of the item duration and lead time histograms, in seconds.
const ITEM_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

static HANDLE: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as this process's `metrics` recorder
/// (once; later calls return the same handle). The library's histograms
/// are rendered as Prometheus histograms with fixed buckets, so they can be
/// aggregated across processes.
pub fn install_recorder() -> Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("ckpt_checkpoint_write_seconds".into()),
                    WRITE_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("ckpt_item_duration_seconds".into()),
                        ITEM_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("ckpt_item_lead_time_seconds".into()),
                        ITEM_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?;
            let handle = builder.install_recorder().map_err(|e| e.to_string())?;
            describe_process_metrics();
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))
}

/// Help texts of the metrics the library emits in-process.
fn describe_process_metrics() {
    describe_counter!(
        "ckpt_item_attempts_total",
        "Items claimed (attempts started) by this process"
    );
    describe_histogram!(
        "ckpt_item_duration_seconds",
        Unit::Seconds,
        "Run time of one attempt of an item in this process, by outcome"
    );
    describe_histogram!(
        "ckpt_item_lead_time_seconds",
        Unit::Seconds,
        "Time from an item's enqueue to its completion"
    );
    describe_histogram!(
        "ckpt_checkpoint_write_seconds",
        Unit::Seconds,
        "Time to save one durable checkpoint"
    );
    describe_counter!(
        "ckpt_checkpoints_total",
        "Checkpoints saved by this process"
    );
}

/// Folds recorded histogram samples in every few seconds, so a process that
/// is rarely scraped does not pile them up. Needs a Tokio runtime.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Serves `GET /metrics` with this process's metrics on `addr` from a
/// background thread, for as long as the process lives; returns the
/// address bound (`addr` may have port 0). A bind failure is reported here,
/// before anything starts.
pub fn spawn_metrics_listener(addr: &str) -> Result<SocketAddr> {
    let handle = install_recorder()?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Usage(format!("cannot listen on {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ckpt-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("metrics listener on {bound} failed: {e}");
                        return;
                    }
                };
                spawn_upkeep(handle.clone());
                let app = Router::new()
                    .route("/metrics", get(process_scrape))
                    .with_state(handle);
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!("metrics listener on {bound} failed: {e}");
                }
            });
        })?;
    Ok(bound)
}

/// `GET /metrics` of `ckpt run --metrics-listen`: in-process metrics only.
async fn process_scrape(State(handle): State<PrometheusHandle>) -> Response {
    handle.run_upkeep();
    exposition(handle.render())
}

/// A Prometheus text exposition response, never cached.
pub fn exposition(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}
