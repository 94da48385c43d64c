//! Prometheus metrics.
//!
//! Two sources end up in one exposition:
//!
//! - **In-process metrics** the library emits through the `metrics` facade
//!   (checkpoint write times, item attempts and durations...). They reach
//!   the recorder [`install_recorder`] installs in this process, so they
//!   show where the work runs: `ckpt run --metrics-listen ADDR` serves them
//!   with [`spawn_metrics_listener`].
//! - **Store gauges** (`ckpt serve` only), read from the store on every
//!   scrape with [`ckpt::inspect::job_summaries`]. They are recorded into a
//!   fresh recorder per scrape, so a job that is gone (pruned) leaves no
//!   stale series behind, and one scrape is one consistent read.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ckpt::inspect::JobSummary;
use ckpt::JobStatus;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::AppState;
use crate::exit::Usage;

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the store: less than Prometheus's default
/// scrape timeout (10 s), so that a slow store shows as `ckpt_store_up 0`
/// rather than as a failed scrape.
const STORE_TIMEOUT: Duration = Duration::from_secs(8);

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

/// `GET /metrics` of `ckpt serve`: the store gauges, then this process's
/// own metrics.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let summaries = state
        .blocking(STORE_TIMEOUT, |ckpt| {
            ckpt::inspect::job_summaries(ckpt.store().as_ref(), ckpt.now())
        })
        .await;
    let mut body = match summaries {
        Ok(jobs) => render_store(Some(&jobs)),
        Err(e) => {
            tracing::warn!("metrics: cannot read the store: {}", e.message);
            render_store(None)
        }
    };
    state.metrics.run_upkeep();
    body.push_str(&state.metrics.render());
    exposition(body)
}

fn exposition(body: String) -> Response {
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

/// The store gauges for `jobs` (`None`: the store did not answer, so only
/// `ckpt_store_up 0`), in the text format.
pub fn render_store(jobs: Option<&[JobSummary]>) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        describe();
        gauge!("ckpt_store_up").set(if jobs.is_some() { 1.0 } else { 0.0 });
        for job in jobs.unwrap_or_default() {
            record_job(job);
        }
    });
    recorder.handle().render()
}

fn describe() {
    describe_gauge!(
        "ckpt_store_up",
        "1 if the store answered this scrape, 0 if not (then no job series follow)"
    );
    describe_gauge!(
        "ckpt_job_running",
        "1 while the job is running (not completed or failed), else 0"
    );
    describe_gauge!(
        "ckpt_checkpoint_age_seconds",
        Unit::Seconds,
        "Seconds since the job's last checkpoint was saved (no series before the first)"
    );
    describe_gauge!(
        "ckpt_checkpoint_history_size",
        "Entries in the job's bounded checkpoint history"
    );
    describe_gauge!(
        "ckpt_checkpoint_state_bytes",
        Unit::Bytes,
        "Size of the state saved with the job's last checkpoint"
    );
    describe_gauge!(
        "ckpt_checkpoint_items_processed",
        "Items processed as the job's last checkpoint says (cursor jobs)"
    );
    describe_gauge!("ckpt_items", "The job's work items by status");
    describe_counter!(
        "ckpt_checkpoints_total",
        "Checkpoints saved for the job over its lifetime, as the store counts them (resets only when the job is pruned)"
    );
}

fn record_job(job: &JobSummary) {
    let name = job.name.clone();
    let running = job.status == JobStatus::Running;
    gauge!("ckpt_job_running", "job" => name.clone()).set(if running { 1.0 } else { 0.0 });
    if let Some(age) = job.checkpoint_age_seconds {
        // Millisecond precision, as stored ("3.837", not "3.8369999999999997").
        gauge!("ckpt_checkpoint_age_seconds", "job" => name.clone()).set((age * 1e3).round() / 1e3);
    }
    gauge!("ckpt_checkpoint_history_size", "job" => name.clone()).set(job.history_len as f64);
    gauge!("ckpt_checkpoint_state_bytes", "job" => name.clone()).set(job.state_bytes as f64);
    gauge!("ckpt_checkpoint_items_processed", "job" => name.clone())
        .set(job.items_processed as f64);
    let items = &job.items;
    for (status, n) in [
        ("pending", items.pending),
        ("running", items.running),
        ("completed", items.completed),
        ("failed", items.failed),
        ("dead", items.dead),
    ] {
        gauge!("ckpt_items", "job" => name.clone(), "status" => status).set(n as f64);
    }
    counter!("ckpt_checkpoints_total", "job" => name).absolute(job.saves);
}
