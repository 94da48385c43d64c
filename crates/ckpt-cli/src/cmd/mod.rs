//! One module per subcommand; each returns the process exit code.

mod bench;
mod checkpoint;
mod docs;
mod doctor;
mod inspect;
mod items;
mod maintain;
mod retry;
mod run;
mod status;

use std::process::ExitCode;

use anyhow::Result;
use ckpt::store::{self, OpenMode};
use ckpt::Ckpt;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let url = cli.store.clone();
    command(cli).map_err(|e| name_corrupt_file(e, &url))
}

fn command(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(&cli.store, args),
        Command::Status(args) => status::status(&cli.store, args),
        Command::Retry(args) => retry::retry(&cli.store, args),
        Command::Checkpoint(cmd) => checkpoint::checkpoint(&cli.store, cmd),
        Command::Bench(args) => bench::bench(&cli.store, args),
        Command::Jobs(args) => inspect::jobs(&cli.store, args),
        Command::Show(args) => inspect::show(&cli.store, args),
        Command::Items(args) => inspect::items(&cli.store, args),
        Command::Reset(args) => maintain::reset(&cli.store, args),
        Command::Prune(args) => maintain::prune(&cli.store, args),
        Command::History(cmd) => maintain::history(&cli.store, cmd),
        Command::Doctor(args) => doctor::doctor(&cli.store, args),
        Command::Completions(args) => docs::completions(args),
        Command::Man => docs::man(),
        Command::Serve(args) => crate::serve::serve(&cli.store, args),
    }
}

/// The hidden first argument of the sentinel process `ckpt run` starts.
pub use run::sentinel::ARG as SENTINEL_ARG;

/// The sentinel process: see `run::sentinel`.
pub fn sentinel() -> ExitCode {
    run::sentinel::main()
}

/// Names the store file in a corruption error found deep in a read, which
/// does not know the file's path.
fn name_corrupt_file(err: anyhow::Error, url: &str) -> anyhow::Error {
    let unnamed = matches!(
        err.downcast_ref::<ckpt::Error>(),
        Some(ckpt::Error::Corrupt { path: None, .. })
    );
    let Some(path) = url.strip_prefix("sqlite://").filter(|_| unnamed) else {
        return err;
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match err.downcast::<ckpt::Error>() {
        Ok(e) => e.with_store_path(path).into(),
        Err(e) => e,
    }
}

/// Opens the store named by `url`; `mode` says whether it may be created.
pub fn open(url: &str, mode: OpenMode) -> Result<Ckpt> {
    Ok(Ckpt::new(store::open(url, mode)?))
}

/// Validates a job name given on the command line.
pub fn job_name(name: &str) -> Result<()> {
    ckpt::validate::job_name(name)?;
    Ok(())
}
