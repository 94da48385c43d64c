//! This process's Prometheus exporter: the in-process metrics the library
//! emits through the `metrics` facade (checkpoint write times, item
//! attempts and durations...). They reach the recorder
//! [`install_recorder`] installs in this process, so they show where the
//! work runs: `ckpt run --metrics-listen ADDR` serves them with
//! [`spawn_metrics_listener`], and `ckpt serve` appends them to its store
//! gauges (`serve::metrics`).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{
    describe_counter, describe_histogram, Counter, Gauge, Histogram, Key, KeyName, Label, Metadata,
    Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

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
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(BackslashSafe(recorder)).map_err(|e| e.to_string())?;
            describe_process_metrics();
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))
}

/// The Prometheus recorder, with every backslash in a label value doubled
/// before it sees it. Its sanitiser reads a backslash before another as an
/// escape already made (metrics-exporter-prometheus 0.18), so jobs named
/// `a\b` and `a\\b` were both rendered `job="a\\b"`: two jobs in one
/// series. Doubled, every value renders as the text format's escape of
/// itself. (`a_label_value_renders_as_itself` checks the exporter still
/// behaves so.)
pub struct BackslashSafe(PrometheusRecorder);

impl BackslashSafe {
    /// A recorder that renders label values faithfully.
    pub fn new() -> BackslashSafe {
        BackslashSafe(PrometheusBuilder::new().build_recorder())
    }

    /// The handle that renders what it recorded.
    pub fn handle(&self) -> PrometheusHandle {
        self.0.handle()
    }
}

/// `key` with the backslashes of its label values doubled (borrowed when
/// it has none, as almost every key).
fn backslash_safe(key: &Key) -> Cow<'_, Key> {
    if !key.labels().any(|l| l.value().contains('\\')) {
        return Cow::Borrowed(key);
    }
    let labels: Vec<Label> = key
        .labels()
        .map(|l| Label::new(l.key().to_string(), l.value().replace('\\', "\\\\")))
        .collect();
    Cow::Owned(Key::from_parts(key.name().to_string(), labels))
}

impl Recorder for BackslashSafe {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(&backslash_safe(key), metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(&backslash_safe(key), metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(&backslash_safe(key), metadata)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the text format reads back from a rendered label value.
    fn unescape(rendered: &str) -> String {
        let mut out = String::new();
        let mut chars = rendered.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        }
        out
    }

    /// Every job name, backslashes and quotes included, renders as a label
    /// value that reads back as itself, and distinct names stay distinct
    /// series; fails if the exporter's sanitiser changes under us.
    #[test]
    fn a_label_value_renders_as_itself() {
        let names = [
            r"back\slash",
            r"back\\slash",
            r#"q"uo\te\\x"#,
            r"ends\",
            r#"\""#,
            "plain",
        ];
        let recorder = BackslashSafe::new();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for (i, name) in names.iter().enumerate() {
                metrics::gauge!("t", "job" => name.to_string()).set(i as f64);
            }
        });
        let text = handle.render();
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("t{")) {
            let value = line
                .strip_prefix("t{job=\"")
                .and_then(|l| l.rsplit_once("\"} "))
                .unwrap_or_else(|| panic!("{line}"));
            seen.push((unescape(value.0), value.1.parse::<f64>().unwrap() as usize));
        }
        seen.sort_by_key(|(_, i)| *i);
        let expected: Vec<(String, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        assert_eq!(seen, expected, "{text}");
    }
}
