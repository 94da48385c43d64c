//! The store gauges of `ckpt serve`'s `/metrics`: read from the store on
//! every scrape with [`ckpt::inspect::job_summaries`] and recorded into a
//! fresh recorder per scrape, so a job that is gone (pruned) leaves no
//! stale series behind, and one scrape is one consistent read. This
//! process's own metrics ([`crate::exporter`]) follow them.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use ckpt::inspect::JobSummary;
use ckpt::JobStatus;
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use super::AppState;
use crate::exporter::exposition;

/// How long a scrape waits for the store: less than Prometheus's default
/// scrape timeout (10 s), so that a slow store shows as `ckpt_store_up 0`
/// rather than as a failed scrape.
const STORE_TIMEOUT: Duration = Duration::from_secs(8);

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

/// The store gauges for `jobs` (`None`: the store did not answer, so only
/// `ckpt_store_up 0`), in the text format.
pub fn render_store(jobs: Option<&[JobSummary]>) -> String {
    // Job names go into labels: see `BackslashSafe`.
    let recorder = crate::exporter::BackslashSafe::new();
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
        "ckpt_progress_age_seconds",
        Unit::Seconds,
        "Seconds since a running job without work items last showed progress: its last checkpoint, or before the first its last change: its start or a lease renewal (ckpt doctor's stale rule; no series for other jobs)"
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

/// `seconds` to the millisecond, as stored ("3.837", not
/// "3.8369999999999997").
fn millis(seconds: f64) -> f64 {
    (seconds * 1e3).round() / 1e3
}

fn record_job(job: &JobSummary) {
    let name = job.name.clone();
    let running = job.status == JobStatus::Running;
    gauge!("ckpt_job_running", "job" => name.clone()).set(if running { 1.0 } else { 0.0 });
    if let Some(age) = job.checkpoint_age_seconds {
        gauge!("ckpt_checkpoint_age_seconds", "job" => name.clone()).set(millis(age));
    }
    if let Some(age) = job.progress_age_seconds {
        gauge!("ckpt_progress_age_seconds", "job" => name.clone()).set(millis(age));
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
