//! Retention: which jobs a prune deletes.
//!
//! One rule, [`deletable`], decides; [`plan`] applies it to a listing and
//! returns the jobs to delete, which `ckpt prune --dry-run` prints and
//! `ckpt prune` executes. Each store's
//! [`delete_job`](crate::store::JobStore::delete_job) applies the same rule
//! again, in the transaction that deletes, so a job that changed since the
//! listing (reopened by an enqueue, taken up by a worker) is spared. The
//! memory, SQLite and PostgreSQL stores call [`deletable`]; Redis restates
//! it in its `delete_job` script (it must decide inside the script), and a
//! conformance test holds every store to the plan.

use std::time::Duration;

use crate::model::{ItemCounts, JobRecord, JobStatus};
use crate::time::Timestamp;

/// True if and only if a prune with this `cutoff` may delete `job`:
///
/// - it is completed, and completed at or before `cutoff` (failed and
///   running jobs are never pruned: they are waiting for someone);
/// - no worker holds it past `cutoff` (a worker that took the completed job
///   up again, for example to read or re-check it, has not left it idle
///   long enough);
/// - every one of its items is completed (`all_items_completed`): no item
///   is pending, running, waiting for a retry or dead.
pub fn deletable(job: &JobRecord, all_items_completed: bool, cutoff: Timestamp) -> bool {
    let finished_in_time =
        job.status == JobStatus::Completed && job.completed_at.is_some_and(|t| t <= cutoff);
    let held_past_cutoff = job.owner.is_some() && job.lease_expires.is_some_and(|t| t > cutoff);
    finished_in_time && !held_past_cutoff && all_items_completed
}

/// A job a prune deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneTarget {
    /// The job.
    pub job: String,
    /// When it completed.
    pub completed_at: Timestamp,
    /// Its items (all completed).
    pub items: u64,
}

/// What a prune will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    /// Jobs completed at or before this time may go.
    pub cutoff: Timestamp,
    /// The jobs to delete, in the listing's order.
    pub delete: Vec<PruneTarget>,
    /// Jobs kept because they are running or failed.
    pub kept_not_completed: usize,
    /// Completed jobs kept: completed after the cutoff, held by a worker
    /// past it, or with items not all completed.
    pub kept_completed: usize,
}

/// The plan for deleting jobs completed more than `older_than` before
/// `now`, from a listing of jobs with their item counts.
pub fn plan<'a>(
    jobs: impl IntoIterator<Item = (&'a JobRecord, &'a ItemCounts)>,
    now: Timestamp,
    older_than: Duration,
) -> PrunePlan {
    let cutoff = Timestamp(
        now.0
            .saturating_sub(crate::time::duration_millis(older_than)),
    );
    let mut plan = PrunePlan {
        cutoff,
        delete: Vec::new(),
        kept_not_completed: 0,
        kept_completed: 0,
    };
    for (job, counts) in jobs {
        let all_completed = counts.completed == counts.total();
        if deletable(job, all_completed, cutoff) {
            plan.delete.push(PruneTarget {
                job: job.name.clone(),
                completed_at: job.completed_at.unwrap_or(cutoff),
                items: counts.total(),
            });
        } else if job.status == JobStatus::Completed {
            plan.kept_completed += 1;
        } else {
            plan.kept_not_completed += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: Timestamp = Timestamp(100 * DAY);

    fn job(name: &str, status: JobStatus, completed_days_ago: Option<i64>) -> JobRecord {
        JobRecord {
            name: name.into(),
            status,
            checkpoint: None,
            checkpoint_at: None,
            owner: None,
            lease_expires: None,
            epoch: 1,
            attempts: 1,
            saves: 0,
            history_len: 0,
            state_bytes: 0,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            completed_at: completed_days_ago.map(|d| Timestamp(NOW.0 - d * DAY)),
            error: None,
        }
    }

    fn done(n: u64) -> ItemCounts {
        ItemCounts {
            completed: n,
            ..ItemCounts::default()
        }
    }

    #[test]
    fn only_jobs_completed_before_the_cutoff_with_every_item_done_go() {
        let week = Duration::from_secs(7 * 86_400);
        let old = job("old", JobStatus::Completed, Some(8));
        let recent = job("recent", JobStatus::Completed, Some(6));
        let failed = job("failed", JobStatus::Failed, None);
        let running = job("running", JobStatus::Running, None);
        let dead_item = job("dead-item", JobStatus::Completed, Some(30));
        let counts = [
            done(3),
            done(1),
            done(0),
            done(0),
            ItemCounts { dead: 1, ..done(2) },
        ];
        let jobs = [&old, &recent, &failed, &running, &dead_item];
        let plan = plan(jobs.into_iter().zip(counts.iter()), NOW, week);
        assert_eq!(plan.cutoff, Timestamp(NOW.0 - 7 * DAY));
        assert_eq!(
            plan.delete,
            vec![PruneTarget {
                job: "old".into(),
                completed_at: Timestamp(NOW.0 - 8 * DAY),
                items: 3
            }]
        );
        assert_eq!((plan.kept_completed, plan.kept_not_completed), (2, 2));
    }

    #[test]
    fn a_job_held_past_the_cutoff_is_spared() {
        // Completed long ago, then taken up again by a worker whose lease
        // runs past the cutoff: a listing that ignored the lease would
        // show it as deleted while the store's delete spares it.
        let mut held = job("held", JobStatus::Completed, Some(30));
        held.owner = Some("host:1:1:w".into());
        held.lease_expires = Some(Timestamp(NOW.0 - DAY));
        let cutoff = Timestamp(NOW.0 - 7 * DAY);
        assert!(!deletable(&held, true, cutoff));
        let plan = plan([(&held, &done(1))], NOW, Duration::from_secs(7 * 86_400));
        assert!(plan.delete.is_empty());
        assert_eq!(plan.kept_completed, 1);
        // A lease that lapsed before the cutoff does not hold it.
        held.lease_expires = Some(Timestamp(cutoff.0 - 1));
        assert!(deletable(&held, true, cutoff));
        // Nor does a lease time without an owner (a released lease).
        held.owner = None;
        held.lease_expires = Some(NOW);
        assert!(deletable(&held, true, cutoff));
    }

    #[test]
    fn a_completed_job_at_the_cutoff_exactly_goes_and_unfinished_items_keep_it() {
        let at = job("at", JobStatus::Completed, Some(7));
        let cutoff = Timestamp(NOW.0 - 7 * DAY);
        assert!(deletable(&at, true, cutoff));
        assert!(!deletable(&at, false, cutoff));
        let mut never = job("never", JobStatus::Completed, None);
        never.completed_at = None;
        assert!(!deletable(&never, true, cutoff));
    }
}
