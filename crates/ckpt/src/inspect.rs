//! Read-only views for operators: one summary per job, the JSON documents
//! of jobs, and the health checks behind `ckpt doctor` (the thresholds of
//! the checkpoint operations guide: stale after 10 minutes, more than 100
//! history entries, state over 1 MiB).
//!
//! Both the CLI and `ckpt serve` build on these, so a job looks the same in
//! `ckpt jobs --json`, `ckpt show --json`, the API and the dashboard.

use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::json::{HistoryJson, ItemJson, JobDetailJson, JobJson};
use crate::model::{ItemCounts, ItemStatus, JobRecord, JobStatus};
use crate::store::Store;
use crate::time::Timestamp;

/// One job at a glance, typed: what the CLI's tables, `ckpt doctor` and
/// the metrics read. Its JSON counterpart is [`JobJson`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    /// The job's name.
    pub name: String,
    /// Running, completed or failed.
    pub status: JobStatus,
    /// Items by status.
    pub items: ItemCounts,
    /// Items processed, as the last checkpoint says (cursor jobs).
    pub items_processed: u64,
    /// The last checkpoint's stage.
    pub stage: Option<String>,
    /// When the last checkpoint was saved.
    pub checkpoint_at: Option<Timestamp>,
    /// Seconds since then.
    pub checkpoint_age_seconds: Option<f64>,
    /// Seconds since a running job without work items last showed
    /// progress ([`last_progress`]): what `ckpt doctor` calls stale past
    /// its threshold. `None` for other jobs.
    pub progress_age_seconds: Option<f64>,
    /// Checkpoints saved in all.
    pub saves: u64,
    /// Entries in the bounded history.
    pub history_len: u64,
    /// Size of the saved state.
    pub state_bytes: u64,
    /// The worker holding the job's lease (cursor jobs).
    pub owner: Option<String>,
    /// When that lease expires.
    pub lease_expires: Option<Timestamp>,
    /// Starts and resumes of the job.
    pub attempts: u32,
    /// When the job was created.
    pub created_at: Timestamp,
    /// When the job record last changed.
    pub updated_at: Timestamp,
    /// When it completed.
    pub completed_at: Option<Timestamp>,
    /// Why it failed.
    pub error: Option<String>,
}

impl JobSummary {
    /// The summary of `job` with its item counts, as seen at `now`.
    pub fn new(job: &JobRecord, items: ItemCounts, now: Timestamp) -> JobSummary {
        JobSummary {
            name: job.name.clone(),
            status: job.status,
            items,
            items_processed: job.checkpoint.as_ref().map_or(0, |c| c.items_processed),
            stage: job.checkpoint.as_ref().and_then(|c| c.stage.clone()),
            checkpoint_at: job.checkpoint_at,
            checkpoint_age_seconds: job.checkpoint_at.map(|t| now.since(t).as_secs_f64()),
            progress_age_seconds: last_progress(job, items).map(|t| now.since(t).as_secs_f64()),
            saves: job.saves,
            history_len: job.history_len,
            state_bytes: job.state_bytes,
            owner: job.owner.clone(),
            lease_expires: job.lease_expires,
            attempts: job.attempts,
            created_at: job.created_at,
            updated_at: job.updated_at,
            completed_at: job.completed_at,
            error: job.error.clone(),
        }
    }

    /// Work done out of work known: items when the job has items,
    /// otherwise nothing to measure against (`None`).
    pub fn progress(&self) -> Option<(u64, u64)> {
        let total = self.items.total();
        (total > 0).then_some((self.items.completed, total))
    }
}

/// Every job's summary, ordered by name.
pub fn job_summaries(store: &dyn Store, now: Timestamp) -> Result<Vec<JobSummary>> {
    store
        .list_jobs()?
        .iter()
        .map(|job| Ok(JobSummary::new(job, store.item_counts(&job.name)?, now)))
        .collect()
}

/// One job's summary, or `None` when there is no such job.
pub fn job_summary(store: &dyn Store, job: &str, now: Timestamp) -> Result<Option<JobSummary>> {
    match store.get_job(job)? {
        Some(record) => Ok(Some(JobSummary::new(&record, store.item_counts(job)?, now))),
        None => Ok(None),
    }
}

/// Every job's JSON document, ordered by name: `ckpt jobs --json` and
/// `GET /api/jobs`.
pub fn job_documents(store: &dyn Store, now: Timestamp) -> Result<Vec<JobJson>> {
    store
        .list_jobs()?
        .iter()
        .map(|job| Ok(JobJson::new(job, store.item_counts(&job.name)?, now)))
        .collect()
}

/// One job's full JSON document, or `None` when there is no such job: the
/// newest `history_limit` history entries, and the last `items_limit` dead
/// items and as many failed items (in input order, the last first). `ckpt status --json`, `ckpt show
/// --json` and `GET /api/jobs/{job}` all print it.
pub fn job_detail(
    store: &dyn Store,
    job: &str,
    now: Timestamp,
    history_limit: usize,
    items_limit: usize,
) -> Result<Option<JobDetailJson>> {
    let Some(record) = store.get_job(job)? else {
        return Ok(None);
    };
    let counts = store.item_counts(job)?;
    let items = |status, n| -> Result<Vec<ItemJson>> {
        if n == 0 || items_limit == 0 {
            return Ok(Vec::new());
        }
        let list = store.last_items(job, status, items_limit)?;
        Ok(list.iter().map(ItemJson::new).collect())
    };
    let history = if history_limit == 0 {
        Vec::new()
    } else {
        store.history(job, history_limit)?
    };
    let commands = store.commands(job)?;
    Ok(Some(JobDetailJson {
        summary: JobJson::new(&record, counts, now),
        state: record.checkpoint.as_ref().and_then(|c| c.state.clone()),
        history: history.iter().map(HistoryJson::new).collect(),
        dead_items: items(ItemStatus::Dead, counts.dead)?,
        failed_items: items(ItemStatus::Failed, counts.failed)?,
        commands: crate::json::CommandJson::list(&commands),
        completed_by_unknown_command: commands.unknown,
    }))
}

/// Thresholds of `ckpt doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoctorOptions {
    /// A running job whose last checkpoint (or, never saved, whose last
    /// change) is older than this is stale.
    pub stale: Duration,
    /// More history entries than this is excessive.
    pub max_history: u64,
    /// State larger than this is large.
    pub max_state_bytes: u64,
}

impl Default for DoctorOptions {
    /// The operations guide's thresholds: 10 minutes, 100 entries, 1 MiB.
    fn default() -> Self {
        DoctorOptions {
            stale: Duration::from_secs(600),
            max_history: 100,
            max_state_bytes: 1024 * 1024,
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A running job's checkpoint is older than the threshold.
    StaleCheckpoint,
    /// More history entries than the threshold.
    ExcessiveHistory,
    /// State larger than the threshold.
    LargeState,
    /// Items in the dead-letter list.
    DeadItems,
    /// Running items (or a job) whose lease expired: their worker is gone
    /// and nobody has taken them over yet.
    ExpiredLeases,
}

/// One problem `ckpt doctor` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The job it concerns.
    pub job: String,
    /// What kind of problem.
    pub kind: FindingKind,
    /// A sentence for people, with the numbers and what to do.
    pub message: String,
}

/// Running items looked at per job for expired leases; a job with more
/// running items than this is checked on the first this many.
const LEASE_SCAN: usize = 10_000;

/// `s` as one argument of a POSIX shell: as it is if nothing in it is
/// special, else single-quoted ([`shell_quote`]). (Control characters stay
/// as they are: a terminal printer escapes them.)
pub fn shell_arg(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-+=@%:,./".contains(&b));
    if plain {
        s.to_string()
    } else {
        shell_quote(s)
    }
}

/// `s` as one word of a POSIX shell: in single quotes, each `'` written as
/// `'\''` (close, escaped quote, reopen). Nothing inside single quotes is
/// special to the shell: no `$`, backquote, `;`, glob or newline.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// When a running job without work items last showed progress: its last
/// checkpoint, or before the first its record's last change (its start,
/// a renewal of its lease).
/// `None` for a job that is not running or has items: an item job's
/// progress is its items, and its record changes only on enqueue and
/// finish (its dead workers show as expired leases instead). The rule of
/// `ckpt doctor`'s stale checkpoint and of the metrics' progress age.
pub fn last_progress(job: &JobRecord, items: ItemCounts) -> Option<Timestamp> {
    (job.status == JobStatus::Running && items.total() == 0)
        .then(|| job.checkpoint_at.unwrap_or(job.updated_at))
}

/// Checks every job against `options` at `now`.
pub fn doctor(store: &dyn Store, options: &DoctorOptions, now: Timestamp) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for job in store.list_jobs()? {
        let counts = store.item_counts(&job.name)?;
        findings.extend(check_job(store, &job, counts, options, now)?);
    }
    Ok(findings)
}

fn check_job(
    store: &dyn Store,
    job: &JobRecord,
    counts: ItemCounts,
    options: &DoctorOptions,
    now: Timestamp,
) -> Result<Vec<Finding>> {
    let mut found = Vec::new();
    // The name as the commands the messages suggest need it.
    let name = shell_arg(&job.name);
    let mut add = |kind, message: String| {
        found.push(Finding {
            job: job.name.clone(),
            kind,
            message,
        })
    };
    if let Some(last) = last_progress(job, counts) {
        let age = now.since(last);
        if age > options.stale {
            let what = if job.checkpoint_at.is_some() {
                "last checkpoint"
            } else {
                "no checkpoint yet; last change"
            };
            add(
                FindingKind::StaleCheckpoint,
                format!(
                    "running, {what} {} ago (threshold {}): is its worker alive? `ckpt show {}`",
                    humanize(age),
                    humanize(options.stale),
                    name
                ),
            );
        }
    }
    if job.history_len > options.max_history {
        add(
            FindingKind::ExcessiveHistory,
            format!(
                "{} history entries (threshold {}): `ckpt history truncate {} --keep {}`",
                job.history_len, options.max_history, name, options.max_history
            ),
        );
    }
    if job.state_bytes > options.max_state_bytes {
        add(
            FindingKind::LargeState,
            format!(
                "state is {} bytes (threshold {}): keep large data outside the checkpoint",
                job.state_bytes, options.max_state_bytes
            ),
        );
    }
    if counts.dead > 0 {
        add(
            FindingKind::DeadItems,
            format!(
                "{} dead item(s): `ckpt items {} --status dead`, then `ckpt retry {} --dead`",
                counts.dead, name, name
            ),
        );
    }
    let mut expired = 0u64;
    if counts.running > 0 {
        expired = store
            .list_items(&job.name, Some(ItemStatus::Running), LEASE_SCAN)?
            .iter()
            .filter(|item| item.ready_at.is_some_and(|t| t <= now))
            .count() as u64;
    }
    let job_lease_expired = job.status == JobStatus::Running
        && job.owner.is_some()
        && job.lease_expires.is_some_and(|t| t <= now);
    // Nothing to repair by hand: an expired lease is taken over by the next
    // worker. (`ckpt reset` would not help: it clears the checkpoint, and
    // leaves items as they are.)
    let job_takeover = "the next worker to take the job resumes from its checkpoint";
    let items_takeover = "the next run of the job (or any worker of its queue) takes them over, counting the attempt";
    let advice = match (expired, job_lease_expired) {
        (0, false) => None,
        (0, true) => Some(format!(
            "the job's lease expired: its worker is gone; {job_takeover}"
        )),
        (n, false) => Some(format!(
            "{n} running item(s) expired: their worker is gone; {items_takeover}"
        )),
        (n, true) => Some(format!(
            "the job's lease and {n} running item(s) expired: their worker is gone; {job_takeover}, and {items_takeover}"
        )),
    };
    if let Some(advice) = advice {
        add(FindingKind::ExpiredLeases, advice);
    }
    Ok(found)
}

/// "12m 5s": seconds precision is enough for thresholds of minutes.
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::json::rfc3339;
    use crate::{
        CheckpointPolicy, Ckpt, JobOptions, ManualClock, NewItem, QueueOptions, RetryPolicy,
    };

    const T: Timestamp = Timestamp(1_700_000_000_000);

    fn queue_options(max_attempts: u32) -> QueueOptions {
        QueueOptions {
            lease: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts,
                jitter: 0.0,
                ..RetryPolicy::default()
            },
        }
    }

    #[test]
    fn job_detail_names_each_item_time_by_what_it_means() {
        let ckpt = Ckpt::open("memory://")
            .unwrap()
            .with_clock(Arc::new(ManualClock::new(T)));
        let once = ckpt.queue_with("q", queue_options(1)).unwrap();
        let thrice = ckpt.queue_with("q", queue_options(3)).unwrap();
        once.enqueue(["a", "b", "c", "d", "e"].map(NewItem::key))
            .unwrap();
        let a = once.claim(1).unwrap().remove(0);
        once.fail(&a, "a broke").unwrap(); // dead: one attempt allowed
        let b = thrice.claim(1).unwrap().remove(0);
        thrice.fail(&b, "b broke").unwrap(); // failed: retried in 5 s
        let c = thrice.claim(1).unwrap().remove(0); // running: leased for 30 s
        let d = thrice.claim(1).unwrap().remove(0);
        thrice.complete(&d, None).unwrap();
        assert_eq!(
            (a.key.as_str(), c.key.as_str(), d.key.as_str()),
            ("a", "c", "d")
        );

        let store = ckpt.store().as_ref();
        let detail = job_detail(store, "q", T, 10, 10).unwrap().expect("job q");
        assert_eq!(detail.summary.job, "q");
        assert_eq!(detail.summary.items.total, 5);
        assert_eq!(detail.summary.cursor, None);
        let [dead] = &detail.dead_items[..] else {
            panic!("{:?}", detail.dead_items)
        };
        assert_eq!(
            (dead.key.as_str(), dead.last_error.as_deref()),
            ("a", Some("a broke"))
        );
        assert_eq!((&dead.retry_at, &dead.lease_expires_at), (&None, &None));
        assert!(dead.finished_at.is_some());
        let [failed] = &detail.failed_items[..] else {
            panic!("{:?}", detail.failed_items)
        };
        assert_eq!(
            failed.retry_at,
            Some(rfc3339(T.plus(Duration::from_secs(5))))
        );
        assert_eq!(failed.lease_expires_at, None);

        let running = store
            .list_items("q", Some(ItemStatus::Running), 10)
            .unwrap();
        let running = crate::json::ItemJson::new(&running[0]);
        assert_eq!(running.key, "c");
        assert_eq!(
            running.lease_expires_at,
            Some(rfc3339(T.plus(Duration::from_secs(30))))
        );
        assert_eq!(running.retry_at, None);

        let bare = job_detail(store, "q", T, 0, 0).unwrap().unwrap();
        assert!(bare.dead_items.is_empty() && bare.failed_items.is_empty());
        assert!(job_detail(store, "nope", T, 10, 10).unwrap().is_none());
    }

    #[test]
    fn job_detail_holds_the_newest_history_and_the_state() {
        let ckpt = Ckpt::open("memory://")
            .unwrap()
            .with_clock(Arc::new(ManualClock::new(T)));
        let options = JobOptions {
            policy: CheckpointPolicy::Always,
            ..JobOptions::default()
        };
        let mut job = ckpt.job_with("export", options).unwrap();
        job.save(&1u64, 1).unwrap();
        job.save(&2u64, 2).unwrap();
        let store = ckpt.store().as_ref();
        let detail = job_detail(store, "export", T, 1, 10).unwrap().unwrap();
        assert_eq!(detail.history.len(), 1);
        assert_eq!(detail.history[0].seq, 2);
        assert_eq!(detail.history[0].saved_at, rfc3339(T));
        assert_eq!(detail.summary.cursor, Some(serde_json::json!(2)));
        assert_eq!(detail.summary.checkpoint_at, Some(rfc3339(T)));
        assert_eq!(detail.summary.checkpoint_age_seconds, Some(0.0));
        assert_eq!(detail.state, None);
        let list = job_documents(store, T).unwrap();
        assert_eq!(list, vec![detail.summary]);
    }
}
