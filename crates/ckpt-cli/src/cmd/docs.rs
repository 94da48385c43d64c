//! `ckpt completions SHELL` and `ckpt man`: generated from the clap
//! definitions, so they never drift from the real options.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    // Generated in memory: clap_complete panics on a write that fails.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ckpt", &mut script);
    std::io::stdout()
        .lock()
        .write_all(&script)
        .map_err(crate::output::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man() -> Result<ExitCode> {
    let man = clap_mangen::Man::new(Cli::command());
    man.render(&mut std::io::stdout())
        .map_err(crate::output::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}
