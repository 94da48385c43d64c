//! `ckpt bench --checkpoint-loop`: what `Job::checkpoint` and `Job::is_due`
//! cost a tight loop when no save is due.
//!
//! One CPU-bound loop (a calibrated amount of work per item, `black_box`ed
//! so that it is not optimised away) runs in three variants:
//!
//! - **baseline**: the loop alone, without ckpt;
//! - **checkpoint**: the README's pattern,
//!   `job.checkpoint(Checkpoint::new(json!(i), i))?` after every item;
//! - **is_due**: `if job.is_due(i) { job.checkpoint(…)?; }` after every item.
//!
//! Both ckpt variants run on a fresh job with the default options (the
//! adaptive policy), so each round starts with the save that measures what
//! a save costs. The variants alternate within each round, in an order that
//! rotates from round to round, so that a noisy neighbour slows them alike;
//! each variant is compared with the baseline of the same round.
//!
//! Each run is timed twice: by the wall clock, which is what a user waits
//! and includes the saves' fsyncs, and by the thread's CPU time, which
//! leaves out the time the thread waited (for a disk, or for a CPU that
//! other processes held) and so shows the per-call cost with much less of
//! a busy machine's noise.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::job::JobOptions;
use crate::model::Checkpoint;
use crate::store::Store;
use crate::Ckpt;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Items per variant and round.
    pub items: u64,
    /// CPU work per item, in nanoseconds (calibrated at the start).
    pub work_ns: u64,
    /// Rounds; each runs every variant once.
    pub rounds: u32,
}

/// The results; `--json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct LoopReport {
    /// The store the jobs saved to (password redacted).
    pub store: String,
    /// The policy of both ckpt variants (the default).
    pub policy: String,
    /// Items per variant and round.
    pub items: u64,
    /// The work per item asked for, in nanoseconds.
    pub work_ns: u64,
    /// Iterations of the work function calibrated to take `work_ns`.
    pub work_iterations: u32,
    /// Rounds run.
    pub rounds: u32,
    /// The baseline first, then the `checkpoint` and `is_due` patterns.
    pub variants: Vec<LoopVariant>,
}

/// One variant's figures over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct LoopVariant {
    /// `baseline`, `checkpoint` or `is_due`.
    pub name: String,
    /// Nanoseconds per item by the wall clock, round by round.
    pub ns_per_item: Vec<f64>,
    /// Nanoseconds of the thread's CPU time per item, round by round.
    pub cpu_ns_per_item: Vec<f64>,
    /// The median of `ns_per_item`.
    pub median_ns_per_item: f64,
    /// The smallest of `ns_per_item`.
    pub best_ns_per_item: f64,
    /// The median over rounds of the time against the same round's
    /// baseline, in percent above it: the headline figure, because each
    /// round's pair saw the same noise.
    pub overhead_median_pct: f64,
    /// The best round against the best baseline round, in percent: the
    /// figure with the least noise left in it, and the most optimistic.
    pub overhead_best_pct: f64,
    /// `overhead_median_pct` by the thread's CPU time: what the calls cost,
    /// without waits (a save's fsync, or another process on the CPU).
    pub cpu_overhead_median_pct: f64,
    /// Saves per round (the median), counting the first, measuring save.
    pub saves: u64,
    /// Of `overhead_median_pct`, the share spent inside the saves
    /// themselves (the median over rounds, in percent of the baseline):
    /// the adaptive policy's own budget, 1 % by default.
    pub saves_pct: f64,
    /// `overhead_median_pct` without the time inside the saves (each
    /// round's, then the median): what the calls cost by the wall clock.
    pub calls_overhead_median_pct: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Baseline,
    Checkpoint,
    IsDue,
}

const VARIANTS: [Variant; 3] = [Variant::Baseline, Variant::Checkpoint, Variant::IsDue];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Checkpoint => "checkpoint",
            Variant::IsDue => "is_due",
        }
    }
}

/// One variant's run in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    elapsed: Duration,
    cpu: Duration,
    saves: u64,
    save_time: Duration,
}

/// Runs the three variants `options.rounds` times against `store`.
pub fn checkpoint_loop(store: Arc<dyn Store>, options: &LoopOptions) -> Result<LoopReport> {
    let ckpt = Ckpt::new(store.clone());
    let iterations = calibrate(options.work_ns);
    let suffix = format!("{:08x}", rand::random::<u32>());
    let rounds = options.rounds.max(1);
    let mut samples = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let v = (k + round as usize) % VARIANTS.len();
            let name = format!("bench-loop-{suffix}-{}-{round}", VARIANTS[v].name());
            samples[v].push(run_variant(
                &ckpt,
                VARIANTS[v],
                &name,
                options.items,
                iterations,
            )?);
        }
    }
    let per_item = |d: Duration| d.as_secs_f64() * 1e9 / options.items.max(1) as f64;
    let wall = |s: &Sample| per_item(s.elapsed);
    let cpu = |s: &Sample| per_item(s.cpu);
    let vs = |ns: &[f64], base: &[f64]| -> Vec<f64> {
        ns.iter()
            .zip(base)
            .map(|(n, b)| (n / b - 1.0) * 100.0)
            .collect()
    };
    let baseline: Vec<f64> = samples[0].iter().map(wall).collect();
    let baseline_cpu: Vec<f64> = samples[0].iter().map(cpu).collect();
    let best_baseline = baseline.iter().copied().fold(f64::INFINITY, f64::min);
    let variants = VARIANTS
        .iter()
        .zip(&samples)
        .map(|(v, samples)| {
            let ns: Vec<f64> = samples.iter().map(wall).collect();
            let cpu_ns: Vec<f64> = samples.iter().map(cpu).collect();
            let best = ns.iter().copied().fold(f64::INFINITY, f64::min);
            let saves_pct: Vec<f64> = samples
                .iter()
                .zip(&baseline)
                .map(|(s, b)| per_item(s.save_time) / b * 100.0)
                .collect();
            let without_saves: Vec<f64> = samples
                .iter()
                .map(|s| per_item(s.elapsed.saturating_sub(s.save_time)))
                .collect();
            let mut saves: Vec<u64> = samples.iter().map(|s| s.saves).collect();
            saves.sort_unstable();
            LoopVariant {
                name: v.name().to_string(),
                median_ns_per_item: median(&ns),
                best_ns_per_item: best,
                overhead_median_pct: median(&vs(&ns, &baseline)),
                overhead_best_pct: (best / best_baseline - 1.0) * 100.0,
                cpu_overhead_median_pct: median(&vs(&cpu_ns, &baseline_cpu)),
                saves: saves[saves.len() / 2],
                saves_pct: median(&saves_pct),
                calls_overhead_median_pct: median(&vs(&without_saves, &baseline)),
                ns_per_item: ns,
                cpu_ns_per_item: cpu_ns,
            }
        })
        .collect();
    Ok(LoopReport {
        store: store.describe(),
        policy: format!("{:?}", JobOptions::default().policy),
        items: options.items,
        work_ns: options.work_ns,
        work_iterations: iterations,
        rounds,
        variants,
    })
}

fn run_variant(
    ckpt: &Ckpt,
    variant: Variant,
    name: &str,
    items: u64,
    iterations: u32,
) -> Result<Sample> {
    if variant == Variant::Baseline {
        let (started, cpu) = (Instant::now(), thread_cpu_time());
        let mut acc = 0u64;
        for i in 0..items {
            acc = acc.wrapping_add(work(i, iterations));
        }
        black_box(acc);
        return Ok(Sample {
            elapsed: started.elapsed(),
            cpu: thread_cpu_time().saturating_sub(cpu),
            ..Sample::default()
        });
    }
    let mut job = ckpt.job(name)?;
    let saves_before = job.record().saves;
    let timer = SaveTimer::default();
    let (elapsed, cpu) = metrics::with_local_recorder(&timer, || -> Result<_> {
        let (started, cpu) = (Instant::now(), thread_cpu_time());
        let mut acc = 0u64;
        if variant == Variant::Checkpoint {
            for i in 0..items {
                acc = acc.wrapping_add(work(i, iterations));
                job.checkpoint(Checkpoint::new(serde_json::json!(i + 1), i + 1))?;
            }
        } else {
            for i in 0..items {
                acc = acc.wrapping_add(work(i, iterations));
                if job.is_due(i + 1) {
                    job.checkpoint(Checkpoint::new(serde_json::json!(i + 1), i + 1))?;
                }
            }
        }
        black_box(acc);
        Ok((started.elapsed(), thread_cpu_time().saturating_sub(cpu)))
    })?;
    let saves = job.record().saves - saves_before;
    job.complete()?;
    Ok(Sample {
        elapsed,
        cpu,
        saves,
        save_time: Duration::from_nanos(timer.save_ns.load(Ordering::Relaxed)),
    })
}

/// The work per item: a chain of multiply-xorshift steps, each depending
/// on the last, that the compiler can neither vectorise nor fold.
#[inline(never)]
fn work(seed: u64, iterations: u32) -> u64 {
    let mut h = black_box(seed);
    for _ in 0..black_box(iterations) {
        h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    }
    h
}

/// Iterations of [`work`] that make the baseline loop take `work_ns` of
/// CPU time per item: the loop's CPU time is measured at two iteration
/// counts (best of three each) and the line through them solved for
/// `work_ns`.
fn calibrate(work_ns: u64) -> u32 {
    const ITEMS: u64 = 200_000;
    let per_item = |iterations: u32| {
        (0..3)
            .map(|_| {
                let started = thread_cpu_time();
                let mut acc = 0u64;
                for i in 0..ITEMS {
                    acc = acc.wrapping_add(work(i, iterations));
                }
                black_box(acc);
                (thread_cpu_time().saturating_sub(started)).as_secs_f64() * 1e9 / ITEMS as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (lo, hi) = (16u32, 256u32);
    let (t_lo, t_hi) = (per_item(lo), per_item(hi));
    let per_iteration = ((t_hi - t_lo) / f64::from(hi - lo)).max(1e-3);
    let fixed = t_lo - per_iteration * f64::from(lo);
    ((work_ns as f64 - fixed) / per_iteration).round().max(1.0) as u32
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A metrics recorder, installed for the timed loop only, that adds up the
/// save durations the job reports (`ckpt_checkpoint_write_seconds`).
#[derive(Debug, Default)]
struct SaveTimer {
    save_ns: Arc<AtomicU64>,
}

#[derive(Debug)]
struct SaveNanos(Arc<AtomicU64>);

impl metrics::HistogramFn for SaveNanos {
    fn record(&self, seconds: f64) {
        self.0.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
}

impl metrics::Recorder for SaveTimer {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        if key.name() == "ckpt_checkpoint_write_seconds" {
            metrics::Histogram::from_arc(Arc::new(SaveNanos(self.save_ns.clone())))
        } else {
            metrics::Histogram::noop()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_variant_and_counts_saves() {
        let store =
            crate::store::open("memory://", crate::store::OpenMode::CreateIfMissing).unwrap();
        let report = checkpoint_loop(
            store,
            &LoopOptions {
                items: 2_000,
                work_ns: 50,
                rounds: 2,
            },
        )
        .unwrap();
        let names: Vec<_> = report.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["baseline", "checkpoint", "is_due"]);
        assert_eq!(report.variants[0].saves, 0);
        // The adaptive policy saves at once to measure a save.
        assert!(report.variants[1].saves >= 1);
        assert!(report.variants[2].saves >= 1);
        assert!(report.variants.iter().all(|v| v.ns_per_item.len() == 2));
    }
}
