//! The `ckpt` command. Thin: it parses arguments, sets up logging, calls
//! into the `ckpt` library and maps errors to exit codes in one place.

mod cli;
mod cmd;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cmd::dispatch(args) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}
