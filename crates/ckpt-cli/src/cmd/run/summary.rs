//! The end of a run's summary line: what is left to do.

/// Why a run that ended on its own, with no dead item, has not completed
/// its job: items became unfinished as it ended (a `ckpt retry` after its
/// last claim, items added meanwhile). `None` when every item is done.
pub(super) fn left_unfinished(counts: &ckpt::ItemCounts) -> Option<String> {
    (counts.unfinished() > 0).then(|| {
        format!(
            "{} item(s) became unfinished as the run ended (a `ckpt retry`, or items added meanwhile); run the same command again to run them",
            counts.unfinished()
        )
    })
}

/// The end of a stopped or halted run's summary: what is left, and what
/// to do about it.
pub(super) fn left_to_do(unfinished: u64, dead: u64, job: &str, verb: &str) -> String {
    let dead = if dead > 0 {
        format!(
            "{dead} dead item(s): see `ckpt status {}`",
            super::shell_word(job)
        )
    } else {
        String::new()
    };
    match (unfinished, dead.is_empty()) {
        (0, true) => "nothing is left to run".into(),
        (0, false) => dead,
        (n, true) => format!("{n} item(s) left, run the same command again to {verb}"),
        (n, false) => format!("{n} item(s) left, run the same command again to {verb}; {dead}"),
    }
}

#[cfg(test)]
mod tests {
    use ckpt::{ItemCounts, ItemStatus};

    use super::left_unfinished;

    #[test]
    fn a_run_that_ends_with_items_unfinished_has_not_completed() {
        let mut counts = ItemCounts::default();
        counts.add(ItemStatus::Completed, 5);
        assert_eq!(left_unfinished(&counts), None);
        for status in [ItemStatus::Pending, ItemStatus::Failed, ItemStatus::Running] {
            let mut c = counts;
            c.add(status, 3);
            let why = left_unfinished(&c).expect("not completed");
            assert!(why.starts_with("3 item(s) became unfinished"), "{why}");
        }
    }
}
