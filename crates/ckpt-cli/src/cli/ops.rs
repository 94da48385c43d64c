//! Arguments of the inspect and repair commands.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Print JSON (an array with one object per job).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job.
    pub job: String,
    /// History entries shown, newest first.
    #[arg(long, default_value_t = 20)]
    pub history: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// An item status, as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Pending,
    Running,
    Completed,
    Failed,
    Dead,
}

impl From<StatusArg> for ckpt::ItemStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => ckpt::ItemStatus::Pending,
            StatusArg::Running => ckpt::ItemStatus::Running,
            StatusArg::Completed => ckpt::ItemStatus::Completed,
            StatusArg::Failed => ckpt::ItemStatus::Failed,
            StatusArg::Dead => ckpt::ItemStatus::Dead,
        }
    }
}

#[derive(Debug, Args)]
pub struct ItemsArgs {
    /// The job.
    pub job: String,
    /// Only items of this status.
    #[arg(long)]
    pub status: Option<StatusArg>,
    /// At most this many items, in enqueue order.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The job.
    pub job: String,
    /// Don't ask.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Reset even while a live worker holds the job (it is fenced: its
    /// next write fails and changes nothing).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete completed jobs that finished longer ago than this (e.g. 7d).
    #[arg(long, value_parser = super::parse_duration)]
    pub completed_before: Duration,
    /// Print what would be deleted and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Keep only the newest N history entries of a job (or of every job).
    Truncate {
        /// The job; every job when absent.
        job: Option<String>,
        /// Entries to keep.
        #[arg(long)]
        keep: usize,
    },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// A running job whose last checkpoint is older than this is stale.
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub stale: Duration,
    /// More history entries than this is excessive.
    #[arg(long, default_value_t = 100)]
    pub max_history: u64,
    /// State larger than this is large (bytes, or with KiB, MiB, GiB, KB, MB, GB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_state: u64,
    /// Print JSON: {"healthy": bool, "findings": [...]}.
    #[arg(long)]
    pub json: bool,
    /// Check a SQLite store file with `PRAGMA integrity_check` instead of
    /// `quick_check`: also whether every index matches its rows (2 to 3
    /// times the time).
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// `--stderr-tail`: a size of at most what an item keeps.
pub fn parse_tail(s: &str) -> Result<u64, String> {
    let max = ckpt::store::machine::MAX_LAST_OUTPUT as u64;
    match parse_size(s)? {
        n if n > max => Err(format!("at most {max} bytes (64KiB) are kept")),
        n => Ok(n),
    }
}

/// "1MiB", "512KiB", "2MB", "1048576": a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || format!("invalid size '{s}' (examples: 1048576, 512KiB, 1MiB, 2MB)");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("-1").is_err());
    }
}
