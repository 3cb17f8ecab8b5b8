//! `multiproc`: the command line of the multiproc library.
//!
//! `multiproc demo` runs a tour of the process API with real child processes.

#![forbid(unsafe_code)]

mod demo;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Python's multiprocessing for Rust, from the command line.
#[derive(Debug, Parser)]
#[command(name = "multiproc", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show child processes at work: pids, a returned value, a pipe, a daemon, data isolation,
    /// a queue of tasks and a lock around a shared counter.
    Demo,
}

fn main() -> ExitCode {
    multiproc::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("multiproc: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo => demo::run().context("demo failed"),
    }
}
