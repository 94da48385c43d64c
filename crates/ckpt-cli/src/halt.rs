//! `ckpt run --halt`: when a run gives up early, in GNU parallel's grammar
//! (`WHEN,WHY=N` or `WHEN,WHY=P%`, and the old numeric forms).
//!
//! The policy is pure: given what this run's items came to so far (a
//! [`Tally`]) and how many items it set out to do, [`HaltPolicy::check`]
//! says whether to halt. Only final outcomes count, as in GNU parallel with
//! `--retries`: an item counts as failed when it is dead (its last attempt
//! failed, or it ended with a `--no-retry-exit` code), not at each failed
//! attempt that is retried.

use std::fmt;

/// What a halt does to the commands running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Start nothing new; let the running commands finish.
    Soon,
    /// Also stop the running commands (SIGTERM, then SIGKILL).
    Now,
}

/// Which items count towards the halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Items that failed for good (dead).
    Fail,
    /// Items that completed.
    Success,
    /// Both.
    Done,
}

/// How many items it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// This many.
    Count(u64),
    /// This percentage of the items the run set out to do.
    Percent(f64),
}

/// `--halt WHEN,WHY=N`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltPolicy {
    pub when: When,
    pub why: Why,
    pub threshold: Threshold,
}

/// The value of `--halt`: `None` for `never` (clap takes this newtype, as
/// it reads `Option<Option<_>>` as an optional value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltArg(pub Option<HaltPolicy>);

impl HaltArg {
    pub fn parse(s: &str) -> Result<HaltArg, String> {
        HaltPolicy::parse(s).map(HaltArg)
    }
}

/// What this run's items came to so far (final outcomes only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub succeeded: u64,
    pub failed: u64,
}

impl HaltPolicy {
    /// Parses GNU parallel's forms: `soon|now,fail|success|done=N` or
    /// `=P%`; `never` and `0` (no halt: `None`); `1` (soon,fail=1), `2`
    /// (now,fail=1), `-1` (soon,success=1), `-2` (now,success=1) and `P%`
    /// (soon,fail=P%).
    pub fn parse(s: &str) -> Result<Option<HaltPolicy>, String> {
        let policy = |when, why, threshold| {
            Ok(Some(HaltPolicy {
                when,
                why,
                threshold,
            }))
        };
        match s.trim() {
            "never" | "0" => return Ok(None),
            "1" => return policy(When::Soon, Why::Fail, Threshold::Count(1)),
            "2" => return policy(When::Now, Why::Fail, Threshold::Count(1)),
            "-1" => return policy(When::Soon, Why::Success, Threshold::Count(1)),
            "-2" => return policy(When::Now, Why::Success, Threshold::Count(1)),
            _ => {}
        }
        let hint =
            "expected soon|now,fail|success|done=N or =P% (e.g. soon,fail=3 or now,fail=10%)";
        if let Some(pct) = s.strip_suffix('%').filter(|p| !p.contains([',', '='])) {
            return policy(When::Soon, Why::Fail, parse_threshold(&format!("{pct}%"))?);
        }
        let (when, rest) = s.split_once(',').ok_or_else(|| {
            if s.contains('=') {
                // `fail=10%`: the WHEN left out, not a bad percentage.
                format!("'{s}' says no WHEN (soon or now): {hint}")
            } else {
                hint.to_string()
            }
        })?;
        let when = match when {
            "soon" => When::Soon,
            "now" => When::Now,
            other => return Err(format!("unknown WHEN '{other}': {hint}")),
        };
        let (why, n) = rest.split_once('=').ok_or_else(|| hint.to_string())?;
        let why = match why {
            "fail" => Why::Fail,
            "success" => Why::Success,
            "done" => Why::Done,
            other => return Err(format!("unknown WHY '{other}': {hint}")),
        };
        policy(when, why, parse_threshold(n)?)
    }

    /// How many items of the kind it counts make the run halt, out of
    /// `todo` items the run set out to do: the count, or the percentage
    /// of `todo` rounded up (at least one).
    pub fn limit(&self, todo: u64) -> u64 {
        match self.threshold {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => ((p / 100.0 * todo as f64).ceil() as u64).max(1),
        }
    }

    /// Whether `tally` makes a run that set out to do `todo` items halt.
    pub fn check(&self, tally: Tally, todo: u64) -> Option<When> {
        (self.counted(tally) >= self.limit(todo)).then_some(self.when)
    }

    /// The items of `tally` this policy counts.
    pub fn counted(&self, tally: Tally) -> u64 {
        match self.why {
            Why::Fail => tally.failed,
            Why::Success => tally.succeeded,
            Why::Done => tally.failed + tally.succeeded,
        }
    }

    /// Whether a run this policy halted succeeded: only a halt on
    /// `success=` is the goal reached (GNU parallel then exits with the
    /// status of the job that succeeded, 0); any other halt left work
    /// undone because of failures or a limit, and the run fails.
    pub fn halt_is_success(&self) -> bool {
        self.why == Why::Success
    }

    /// Why the run halted, e.g. `3 failures`.
    pub fn describe(&self, tally: Tally) -> String {
        let n = self.counted(tally);
        let (one, many) = match self.why {
            Why::Fail => ("failure", "failures"),
            Why::Success => ("success", "successes"),
            Why::Done => ("item done", "items done"),
        };
        format!("{n} {}", if n == 1 { one } else { many })
    }
}

fn parse_threshold(s: &str) -> Result<Threshold, String> {
    if let Some(p) = s.strip_suffix('%') {
        return match p.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(Threshold::Percent(p)),
            _ => Err(format!(
                "'{s}': a percentage must be above 0% and at most 100%"
            )),
        };
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Threshold::Count(n)),
        _ => Err(format!(
            "'{s}': expected a count of at least 1 or a percentage"
        )),
    }
}

/// As written on the command line, canonical: `soon,fail=3`.
impl fmt::Display for HaltPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.when {
            When::Soon => "soon",
            When::Now => "now",
        };
        let why = match self.why {
            Why::Fail => "fail",
            Why::Success => "success",
            Why::Done => "done",
        };
        match self.threshold {
            Threshold::Count(n) => write!(f, "{when},{why}={n}"),
            Threshold::Percent(p) => write!(f, "{when},{why}={p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> HaltPolicy {
        HaltPolicy::parse(s).unwrap().unwrap()
    }

    fn tally(succeeded: u64, failed: u64) -> Tally {
        Tally { succeeded, failed }
    }

    #[test]
    fn parses_gnu_parallel_forms() {
        for (s, canonical) in [
            ("soon,fail=3", "soon,fail=3"),
            ("now,fail=1", "now,fail=1"),
            ("soon,fail=10%", "soon,fail=10%"),
            ("now,success=2", "now,success=2"),
            ("soon,done=50%", "soon,done=50%"),
            ("1", "soon,fail=1"),
            ("2", "now,fail=1"),
            ("-1", "soon,success=1"),
            ("-2", "now,success=1"),
            ("25%", "soon,fail=25%"),
        ] {
            assert_eq!(parse(s).to_string(), canonical, "{s}");
        }
        assert_eq!(HaltPolicy::parse("never"), Ok(None));
        assert_eq!(HaltPolicy::parse("0"), Ok(None));
        for bad in [
            "",
            "soon",
            "later,fail=1",
            "soon,oops=1",
            "soon,fail=0",
            "soon,fail=x",
            "now,fail=0%",
            "now,fail=101%",
            "3",
            "soon,fail",
        ] {
            assert!(HaltPolicy::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn a_threshold_without_when_is_told_so_not_called_a_bad_percentage() {
        for bad in ["success=50%", "fail=10%", "done=3"] {
            let err = HaltPolicy::parse(bad).unwrap_err();
            assert!(err.contains("no WHEN (soon or now)"), "{bad}: {err}");
            assert!(!err.contains("percentage must be"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_count_halts_at_that_many_final_outcomes_of_its_kind() {
        let p = parse("soon,fail=3");
        assert_eq!(p.check(tally(100, 2), 1000), None);
        assert_eq!(p.check(tally(0, 3), 1000), Some(When::Soon));
        assert_eq!(p.check(tally(0, 4), 1000), Some(When::Soon));
        let p = parse("now,success=1");
        assert_eq!(p.check(tally(0, 5), 10), None);
        assert_eq!(p.check(tally(1, 0), 10), Some(When::Now));
        let p = parse("soon,done=4");
        assert_eq!(p.check(tally(2, 1), 10), None);
        assert_eq!(p.check(tally(2, 2), 10), Some(When::Soon));
    }

    #[test]
    fn a_percentage_is_of_the_items_the_run_set_out_to_do_rounded_up() {
        let p = parse("soon,fail=10%");
        assert_eq!(p.limit(120), 12);
        assert_eq!(p.limit(125), 13, "12.5 rounds up");
        assert_eq!(p.limit(3), 1, "never below one");
        assert_eq!(p.limit(0), 1);
        assert_eq!(p.check(tally(500, 11), 120), None);
        assert_eq!(p.check(tally(0, 12), 120), Some(When::Soon));
        assert_eq!(parse("now,done=100%").limit(7), 7);
    }

    #[test]
    fn only_a_halt_on_success_succeeds() {
        assert!(parse("now,success=1").halt_is_success());
        assert!(parse("-1").halt_is_success());
        assert!(!parse("soon,fail=1").halt_is_success());
        assert!(!parse("soon,done=5").halt_is_success());
    }

    #[test]
    fn describes_what_it_counted() {
        assert_eq!(parse("soon,fail=3").describe(tally(9, 3)), "3 failures");
        assert_eq!(parse("soon,fail=1").describe(tally(9, 1)), "1 failure");
        assert_eq!(parse("now,success=1").describe(tally(1, 0)), "1 success");
        assert_eq!(parse("soon,done=2").describe(tally(1, 1)), "2 items done");
    }
}
