//! `multiproc`: the command line of the multiproc library.
//!
//! `multiproc demo` runs the seeds' master/workers example with real child processes; `serve`,
//! `worker`, `submit` and `collect` run named queues over TCP in CPython's manager protocol or
//! on Redis; `status` and `dead` look after broker queues, `dashboard` shows them on a web page
//! with Prometheus metrics; `run` is a GNU-parallel-compatible
//! job runner; `completions` and `man` print shell completions and man pages. Every subcommand
//! but `run` takes `-v`/`-q` for how much of the library's log reaches standard error.

#![forbid(unsafe_code)]

mod access;
mod admin;
mod dashboard;
mod demo;
mod http;
mod logging;
mod manual;
mod queues;
mod remote;
mod task_command;
mod worker_metrics;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Python's multiprocessing for Rust, from the command line.
#[derive(Debug, Parser)]
#[command(name = "multiproc", version, about, long_about = LONG_ABOUT)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// What `multiproc --help` and the man page's DESCRIPTION say (`-h` says the crate's
/// description).
const LONG_ABOUT: &str = "Python's multiprocessing for Rust, from the command line. `run` runs \
a command for each input, several at once, with GNU parallel's options; `serve`, `worker`, \
`submit` and `collect` pass tasks and results through named queues on a manager server \
(CPython's protocol) or on Redis; `status` and `dead` look after queues on Redis, and \
`dashboard` shows them on a web page with Prometheus metrics; `demo` shows the library at work. `multiproc SUBCOMMAND --help` (or `man multiproc-SUBCOMMAND`, once \
installed with `multiproc man --dir`) says more.";

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// The seeds' distributed example end to end: a master serving task and result queues
    /// over TCP (or on Redis with --broker), worker processes squaring ten tasks; --tour first
    /// shows pids, return values, pipes, daemons, a queue, a lock and a pool.
    Demo(Logged<demo::DemoArgs>),
    /// Serve named queues over TCP to workers (ours or CPython's `BaseManager`).
    Serve(Logged<queues::Serve>),
    /// Take tasks from a served queue, run a command per task, put the results back.
    Worker(Logged<queues::Worker>),
    /// Put tasks into a served queue.
    Submit(Logged<queues::Submit>),
    /// Take results from a served queue and print them.
    Collect(Logged<queues::Collect>),
    /// Show broker queues: items waiting, taken, dead; consumers and those that look lost.
    Status(Logged<admin::Status>),
    /// List, requeue or purge a broker queue's dead letters.
    Dead(Logged<admin::Dead>),
    /// Serve a web page and Prometheus metrics (/metrics) for the queues on a Redis broker.
    Dashboard(Logged<dashboard::Dashboard>),
    /// Run a command for each input, several at once, as GNU parallel does.
    Run(Box<multiproc_run::Run>),
    /// Print the completion script for a shell.
    ///
    /// For example `multiproc completions bash >
    /// ~/.local/share/bash-completion/completions/multiproc`, `multiproc completions zsh >
    /// ~/.zfunc/_multiproc` (with ~/.zfunc in fpath) or `multiproc completions fish >
    /// ~/.config/fish/completions/multiproc.fish`.
    Completions(manual::Completions),
    /// Print the man page of multiproc (roff), or write every page with --dir.
    ///
    /// For example `multiproc man | man -l -`, or `multiproc man --dir
    /// ~/.local/share/man/man1` for `man multiproc-run`.
    Man(manual::Man),
}

/// A subcommand's own arguments and the `-v`/`-q` it takes with them.
#[derive(Debug, Args)]
struct Logged<T: Args> {
    /// The subcommand's arguments.
    #[command(flatten)]
    args: T,
    /// How much of the log to show.
    #[command(flatten)]
    verbosity: logging::Verbosity,
}

impl Command {
    /// The `-v`/`-q` given, for the subcommands that take them.
    fn verbosity(&self) -> Option<logging::Verbosity> {
        match self {
            Command::Demo(c) => Some(c.verbosity),
            Command::Serve(c) => Some(c.verbosity),
            Command::Worker(c) => Some(c.verbosity),
            Command::Submit(c) => Some(c.verbosity),
            Command::Collect(c) => Some(c.verbosity),
            Command::Status(c) => Some(c.verbosity),
            Command::Dead(c) => Some(c.verbosity),
            Command::Dashboard(c) => Some(c.verbosity),
            Command::Run(_) | Command::Completions(_) | Command::Man(_) => None,
        }
    }
}

/// Parses the command line (`run`'s words first rewritten as GNU parallel reads them) and runs
/// the subcommand: `run` with its own exit status, the others with 0, or 1 after an error.
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
        let Some(broker) = args.broker() else {
            // No log here: `run` does not use the library, and its -v/-q are GNU parallel's.
            return multiproc_run::main(*args);
        };
        // With --broker the library's warnings (a refused outcome, a broker being retried)
        // are shown at the default level.
        logging::init(logging::Verbosity::default().level());
        return match remote::BrokerRemote::for_run(&broker) {
            Ok(remote) => multiproc_run::main_with(*args, Some(Box::new(remote))),
            Err(err) => {
                eprintln!("multiproc: {}", describe(&err));
                ExitCode::from(255)
            }
        };
    }
    // `completions` and `man` log nothing of their own; the default does for them.
    logging::init(cli.command.verbosity().unwrap_or_default().level());
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

/// Runs a subcommand other than `run`.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(c) => demo::main(c.args).context("demo failed"),
        Command::Serve(c) => queues::serve(c.args),
        Command::Worker(c) => queues::worker(c.args),
        Command::Submit(c) => queues::submit(c.args),
        Command::Collect(c) => queues::collect(c.args),
        Command::Status(c) => admin::status(c.args),
        Command::Dead(c) => admin::dead(c.args),
        Command::Dashboard(c) => dashboard::dashboard(c.args),
        Command::Completions(args) => manual::completions(args, Cli::command()),
        Command::Man(args) => manual::man(args, Cli::command()),
        // Handled in `main`, which owns the exit status.
        Command::Run(_) => Ok(()),
    }
}
