//! `multiproc`: the command line of the multiproc library.
//!
//! `multiproc demo` runs the seeds' master/workers example with real child processes; `serve`,
//! `worker`, `submit` and `collect` run named queues over TCP in CPython's manager protocol or
//! on Redis; `status` and `dead` look after broker queues; `run` is a GNU-parallel-compatible
//! job runner.

#![forbid(unsafe_code)]

mod admin;
mod demo;
mod queues;
mod task_command;

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
    /// The seeds' distributed example end to end: a master serving task and result queues
    /// over TCP (or on Redis with --broker), worker processes squaring ten tasks; --tour first
    /// shows pids, return values, pipes, daemons, a queue, a lock and a pool.
    Demo(demo::DemoArgs),
    /// Serve named queues over TCP to workers (ours or CPython's `BaseManager`).
    Serve(queues::Serve),
    /// Take tasks from a served queue, run a command per task, put the results back.
    Worker(queues::Worker),
    /// Put tasks into a served queue.
    Submit(queues::Submit),
    /// Take results from a served queue and print them.
    Collect(queues::Collect),
    /// Show broker queues: items waiting, taken, dead; consumers and those that look lost.
    Status(admin::Status),
    /// List, requeue or purge a broker queue's dead letters.
    Dead(admin::Dead),
    /// Run a command for each input, several at once, as GNU parallel does.
    Run(Box<multiproc_run::Run>),
}

fn main() -> ExitCode {
    multiproc::init();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let is_run = args.get(1).is_some_and(|a| a == "run");
    if is_run {
        let rest = args.split_off(2);
        args.extend(multiproc_run::gnu_words(rest));
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // `run` exits with 255 on a bad option, as GNU parallel does.
        Err(e) if e.use_stderr() && is_run => {
            let _ = e.print();
            return ExitCode::from(255);
        }
        Err(e) => e.exit(),
    };
    if let Command::Run(args) = cli.command {
        return multiproc_run::main(*args);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("multiproc: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: the library's errors already show their source in
/// their own message, which a plain `{:#}` would print twice.
use multiproc_run::describe;

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::main(args).context("demo failed"),
        Command::Serve(args) => queues::serve(args),
        Command::Worker(args) => queues::worker(args),
        Command::Submit(args) => queues::submit(args),
        Command::Collect(args) => queues::collect(args),
        Command::Status(args) => admin::status(args),
        Command::Dead(args) => admin::dead(args),
        // Handled in `main`, which owns the exit status.
        Command::Run(_) => Ok(()),
    }
}
