//! `multiproc run`: a local parallel job runner that takes GNU parallel's options.
//!
//! ```text
//! seq 100 | multiproc run -j 4 gzip -9 file{}.txt
//! multiproc run --tag -k 'convert {} {.}.png' ::: *.jpg
//! multiproc run echo {1}-{2} ::: a b ::: 1 2        # the cartesian product
//! ```
//!
//! The modules: `input` reads the arguments, `group` makes jobs of them, `template` makes
//! each job's command, `exec`
//! runs the jobs (one poll loop over all the jobs' pipes and the signals), `spawn` starts
//! them, `output` prints their output, and `joblog` logs them.

mod blocks;
mod exec;
mod group;
mod input;
mod job;
mod joblog;
mod output;
mod progress;
mod remote;
mod spawn;
mod spool;
mod template;

pub use remote::{Remote, RemoteJob, RemoteResult, ResultSink};
pub use template::quote_into;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// `multiproc run`'s options; the rest of the line is the command, then `:::` and `::::`
/// groups.
#[derive(Debug, Args)]
#[command(
    infer_long_args = true,
    args_override_self = true,
    after_help = "\
Long options may be shortened to any unique prefix, as GNU parallel allows (--keep for
--keep-order).

Replacement strings: {} {.} {/} {//} {/.} {#} {%} and {N} {N.} {N/} {N//} {N/.} {-N}.
Without any, ' {}' is appended. Values are shell-quoted as GNU parallel quotes them.

Signals, as GNU parallel: Ctrl-C (SIGINT) or SIGTERM kills the running jobs (their process
groups: SIGTERM, then SIGKILL) and exits 255; SIGHUP starts no new jobs and waits for the
running ones.

Exit status: 0 if every job succeeded, else the number of failed jobs (101 for more than
100), or as --halt says; 255 for an error of multiproc itself (bad option, unreadable file)
or after SIGINT/SIGTERM."
)]
pub struct Run {
    /// How many jobs run at once: N, N% of the CPUs, +N or -N CPUs; 0 means as many as
    /// possible. Default: one per CPU.
    #[arg(
        short = 'j',
        long = "jobs",
        visible_short_alias = 'P',
        visible_alias = "max-procs",
        value_name = "N",
        allow_negative_numbers = true
    )]
    jobs: Option<String>,
    /// Read arguments from FILE (`-` is stdin); several make a cartesian product.
    #[arg(
        short = 'a',
        long = "arg-file",
        visible_alias = "argfile",
        value_name = "FILE"
    )]
    arg_file: Vec<PathBuf>,
    /// Input records end with NUL instead of newline.
    #[arg(short = '0', long = "null")]
    null: bool,
    /// Input records end with DELIM (C escapes like \n, \t, \0, \x41 understood).
    #[arg(short = 'd', long = "delimiter", value_name = "DELIM")]
    delimiter: Option<String>,
    /// Take N records per job (0: one record per job, and its values are left out).
    #[arg(
        short = 'n',
        long = "max-args",
        visible_alias = "maxargs",
        value_name = "N",
        value_parser = parse_count,
        conflicts_with = "max_replace_args"
    )]
    max_args: Option<usize>,
    /// As -n, GNU parallel's spelling for "and {1}..{N} name them" (which -n does too).
    #[arg(
        short = 'N',
        value_name = "N",
        value_parser = parse_count,
        allow_hyphen_values = true
    )]
    max_replace_args: Option<usize>,
    /// Take N lines per job; a line ending in a blank goes on on the next one (-l alone,
    /// or -lN, as GNU parallel: -L 1, -L N).
    #[arg(
        short = 'L',
        value_name = "N",
        value_parser = parse_count,
        allow_hyphen_values = true
    )]
    max_lines: Option<usize>,
    /// As -L (alone: 1).
    #[arg(
        long = "max-lines",
        value_name = "N",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "1",
        conflicts_with = "max_lines"
    )]
    max_lines_long: Option<usize>,
    /// As many arguments per job as fit on a command line (-s), spread over the job slots
    /// at the end of the input; `{}` stands for all of them.
    #[arg(short = 'm', conflicts_with = "context_replace")]
    multiple: bool,
    /// As -m, but a word holding `{}` is repeated for each argument (`x{}y` → `xay xby`).
    #[arg(short = 'X')]
    context_replace: bool,
    /// Keep each command line shorter than N bytes (default and most: 63664, GNU parallel's
    /// on Linux).
    #[arg(
        short = 's',
        long = "max-chars",
        value_name = "N",
        value_parser = parse_count
    )]
    max_chars: Option<usize>,
    /// Stop reading a source at a record equal to EOF (empty: none).
    #[arg(short = 'E', value_name = "EOF", allow_hyphen_values = true)]
    eof: Option<String>,
    /// As -E; also -eEOF, and -e/--eof take the next word when it is no option, as GNU
    /// parallel does (alone: no EOF).
    #[arg(
        long = "eof",
        value_name = "EOF",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "",
        conflicts_with = "eof"
    )]
    eof_long: Option<String>,
    /// The first line of each input names its columns ({name} for {N}, split by --colsep);
    /// the first value of each ::: group names it; with --pipe, the first line goes before
    /// every block. `:` (or `.*\n`) is one line, a number that many.
    #[arg(long, value_name = ":|N")]
    header: Option<String>,
    /// Cut the input (stdin, or the first -a or :::: file) into blocks and give each job one
    /// on its stdin, instead of arguments.
    #[arg(long, visible_alias = "spreadstdin")]
    pipe: bool,
    /// With --pipe: a block's size before it is cut back to a record end (default 1M; k, m,
    /// g are powers of 1000, K, M, G of 1024).
    #[arg(
        long,
        visible_alias = "block-size",
        value_name = "SIZE",
        requires = "pipe"
    )]
    block: Option<String>,
    /// With --pipe: what ends a record (default a newline; C escapes understood; empty: cut
    /// anywhere).
    #[arg(long, value_name = "STR", requires = "pipe")]
    recend: Option<String>,
    /// Leave out records that are empty or only blanks.
    #[arg(short = 'r', long = "no-run-if-empty")]
    no_run_if_empty: bool,
    /// Take the sources side by side, not each with each: the n-th records together, the
    /// shorter sources starting over (`:::+` and `::::+` link one source to the one before,
    /// as far as the shorter goes).
    #[arg(long, visible_alias = "xapply")]
    link: bool,
    /// STR stands for the whole argument instead of `{}` (-i and --replace alone: `{}`).
    #[arg(short = 'I', value_name = "STR")]
    replace: Option<String>,
    /// As -I; `--replace=STR` (with the `=`) sets the string.
    #[arg(
        long = "replace",
        value_name = "STR",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "{}",
        conflicts_with = "replace"
    )]
    replace_long: Option<String>,
    /// As --replace alone.
    #[arg(short = 'i', hide = true)]
    replace_default: bool,
    /// Quote each whole word of the command, so that the shell sees the words as given
    /// (`multiproc run -q perl -e 'print "@ARGV\n"' ::: a`).
    #[arg(short = 'q', long)]
    quote: bool,
    /// Split each record into columns {1} {2}... at REGEX (a literal string if it is not a
    /// valid regular expression).
    #[arg(short = 'C', long, visible_alias = "col-sep", value_name = "REGEX")]
    colsep: Option<String>,
    /// Run the command directly, not through a shell (`sh -c`); values are not quoted then.
    #[arg(long)]
    no_shell: bool,
    /// Kill a job (its whole process group: SIGTERM, then SIGKILL) after DURATION: seconds, or
    /// with a suffix s, m, h, d (e.g. 1m30s).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Try a failing job up to N times in all (0 means forever).
    #[arg(long, value_name = "N", default_value_t = 1)]
    retries: u64,
    /// Wait DURATION before the first retry of a job, twice as long before the next, and so on.
    #[arg(long, value_name = "DURATION")]
    retry_delay: Option<String>,
    /// When to stop early: never (default), now|soon,fail=N, now|soon,fail=P%,
    /// now|soon,success=N (or %), now|soon,done=N (or %). `now` kills the running jobs, `soon`
    /// lets them finish.
    #[arg(
        long,
        visible_alias = "halt-on-error",
        value_name = "WHEN,WHY",
        allow_hyphen_values = true
    )]
    halt: Option<String>,
    /// Wait DURATION between job starts.
    #[arg(long, value_name = "DURATION")]
    delay: Option<String>,
    /// Print whole lines of output as they come, instead of each job's output when it ends.
    #[arg(
        long = "line-buffer",
        visible_aliases = ["lb", "linebuffer", "line-buffered"],
        overrides_with = "group"
    )]
    line_buffer: bool,
    /// Print each job's output when it ends, all of it at once (the default).
    #[arg(long, overrides_with = "line_buffer")]
    group: bool,
    /// Print the output in input order.
    #[arg(short = 'k', long = "keep-order", visible_alias = "keeporder")]
    keep_order: bool,
    /// Prefix each output line with the job's arguments and a TAB.
    #[arg(long)]
    tag: bool,
    /// Prefix each output line with STR, its replacement strings put in, and a TAB.
    #[arg(long, value_name = "STR")]
    tagstring: Option<String>,
    /// Print output as it comes, not even waiting for whole lines (lines of jobs may mix).
    #[arg(short = 'u', long, conflicts_with_all = ["line_buffer", "group", "keep_order"])]
    ungroup: bool,
    /// Write each job's output to a file in --tmpdir and print the file's name instead.
    #[arg(long, conflicts_with = "results")]
    files: bool,
    /// Where --files puts its files (default $TMPDIR, else /tmp).
    #[arg(long, visible_alias = "tempdir", value_name = "DIR")]
    tmpdir: Option<PathBuf>,
    /// Accepted for GNU parallel compatibility: output is held in memory, not in temporary
    /// files, so there is nothing to compress.
    #[arg(long)]
    compress: bool,
    /// Store each job's output in DIR/1/ARG/stdout and stderr (GNU parallel's layout)
    /// instead of printing it.
    #[arg(long, visible_aliases = ["res", "result"], value_name = "DIR")]
    results: Option<PathBuf>,
    /// Log each finished job to FILE in GNU parallel's joblog format (`-`: standard output,
    /// after each job's output).
    #[arg(long, visible_alias = "jl", value_name = "FILE")]
    joblog: Option<PathBuf>,
    /// Skip the jobs the joblog has (run the rest).
    #[arg(long)]
    resume: bool,
    /// Skip the jobs the joblog has as succeeded (run the failed ones again, and the rest).
    #[arg(long, conflicts_with = "resume")]
    resume_failed: bool,
    /// Print the commands instead of running them.
    #[arg(long, visible_alias = "dryrun")]
    dry_run: bool,
    /// Print each job's command line before its output (as part of it: grouped, tagged and
    /// kept in order with it).
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print the number of CPU cores (physical ones, as GNU parallel counts) and exit.
    #[arg(long)]
    number_of_cores: bool,
    /// Print the number of CPU threads (logical CPUs) and exit.
    #[arg(long, visible_alias = "number-of-cpus")]
    number_of_threads: bool,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Show a progress bar with an ETA on stderr (as lines of text when it is no terminal).
    #[arg(long)]
    bar: bool,
    /// Show how many jobs are done, running and left, and the estimated time left, on stderr.
    #[arg(long)]
    eta: bool,
    /// Show how many jobs are done, running and left on stderr.
    #[arg(long)]
    progress: bool,
    /// Accepted for GNU parallel compatibility; does nothing.
    #[arg(long, hide = true)]
    will_cite: bool,
    /// Run the jobs on `multiproc worker --run-jobs` workers (on any machine) through this
    /// Redis broker (redis://HOST:PORT/DB, rediss://…) instead of here; each job is signed
    /// with the authkey (MULTIPROC_AUTHKEY or --authkey-file), and -j is how many are queued
    /// at once (default 64). Output, --results and the joblog are written here. Its keys are
    /// under MULTIPROC_PREFIX when set (as the workers'), else the URL's `prefix=`.
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// With --broker: the queue the jobs go to (workers take them from it).
    #[arg(long, value_name = "NAME", default_value = "run", requires = "broker")]
    broker_queue: String,
    /// With --broker: a file holding the authkey (else MULTIPROC_AUTHKEY).
    #[arg(long, value_name = "FILE", requires = "broker")]
    authkey_file: Option<PathBuf>,
    /// The command, then its arguments: `::: ARGS...` and `:::: FILES...` (several groups make
    /// a cartesian product). Without them, arguments come from -a files or stdin, one per line.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Where `--broker` sends the jobs, for the caller that opens the queue.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The broker's URL.
    pub url: String,
    /// The queue the jobs go to.
    pub queue: String,
    /// Where the authkey is, if not in `MULTIPROC_AUTHKEY`.
    pub authkey_file: Option<PathBuf>,
}

impl Run {
    /// `--broker` and its companions, if given.
    pub fn broker(&self) -> Option<BrokerOptions> {
        Some(BrokerOptions {
            url: self.broker.clone()?,
            queue: self.broker_queue.clone(),
            authkey_file: self.authkey_file.clone(),
        })
    }
}

/// How many jobs `--broker` keeps queued at once without `-j`.
const REMOTE_JOBS: usize = 64;

/// When `--halt` stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Never (the default).
    Never,
    /// Kill the running jobs and stop.
    Now,
    /// Start no more jobs; let the running ones finish.
    Soon,
}

/// What `--halt` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Failed jobs.
    Fail,
    /// Succeeded jobs.
    Success,
    /// Finished jobs.
    Done,
}

/// A `--halt` condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Halt {
    /// When to stop.
    pub(crate) when: When,
    /// What to count.
    pub(crate) why: Why,
    /// The threshold: a count, or a fraction of all jobs when `pct`.
    pub(crate) limit: f64,
    /// Whether `limit` is a fraction.
    pub(crate) pct: bool,
}

impl Halt {
    /// No halting.
    pub(crate) const NEVER: Halt = Halt {
        when: When::Never,
        why: Why::Fail,
        limit: 0.0,
        pct: false,
    };
}

/// Parses `--halt`, with GNU parallel's error messages.
pub(crate) fn parse_halt(s: &str) -> anyhow::Result<Halt> {
    let simple = |when, why, limit, pct| Halt {
        when,
        why,
        limit,
        pct,
    };
    let long = match s {
        "0" => "never".to_string(),
        "1" => "soon,fail=1".to_string(),
        "2" => "now,fail=1".to_string(),
        "-1" => "soon,success=1".to_string(),
        "-2" => "now,success=1".to_string(),
        _ => match s.strip_suffix('%') {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                format!("soon,fail={p}%")
            }
            _ => s.to_string(),
        },
    };
    let mut parts = long.split([',', '=']);
    let when = match parts.next().unwrap_or_default() {
        "never" => return Ok(Halt::NEVER),
        "now" => When::Now,
        "soon" => When::Soon,
        _ => bail!("--halt must have 'never', 'soon', or 'now'."),
    };
    let word = if when == When::Now { "now" } else { "soon" };
    let (why, why_word) = match parts.next().unwrap_or_default() {
        "fail" => (Why::Fail, "fail"),
        "success" => (Why::Success, "success"),
        "done" => (Why::Done, "done"),
        _ => bail!("--halt {word} must be followed by ,success or ,fail."),
    };
    let bad = || format!("--halt {word},{why_word} must be followed by ,number or ,percent%.");
    let n = parts.next().unwrap_or_default();
    if let Some(p) = n.strip_suffix('%') {
        let p: u32 = p.parse().ok().with_context(bad)?;
        if !(1..=100).contains(&p) {
            bail!(bad());
        }
        return Ok(simple(when, why, f64::from(p) / 100.0, true));
    }
    let count: u32 = n.parse().ok().filter(|&c| c > 0).with_context(bad)?;
    Ok(simple(when, why, f64::from(count), false))
}

/// Parses a duration: seconds (fractions allowed), or numbers with suffixes s, m, h, d, ms,
/// which add up (`1m30s`, `1.5h`).
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let bad = || format!("bad duration {s:?}: use seconds, or a number with s, m, h or d");
    let mut total = 0.0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        bail!(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            bail!(bad());
        }
        let value: f64 = rest[..n].parse().with_context(bad)?;
        rest = &rest[n..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "" | "s" => 1.0,
            "ms" => 0.001,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => bail!(bad()),
        };
        rest = &rest[unit..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).with_context(bad)
}

/// Parses `-j`: `N`, `N%`, `+N`, `-N` relative to `cpus`; `0` is `None` (no limit).
pub(crate) fn parse_jobs(s: &str, cpus: usize) -> anyhow::Result<Option<usize>> {
    let bad = || format!("bad --jobs {s:?}: use N, N%, +N or -N");
    let s = s.trim();
    let n = if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.parse().with_context(bad)?;
        if !(p >= 0.0 && p.is_finite()) {
            bail!(bad());
        }
        ((cpus as f64 * p / 100.0).floor() as usize).max(1)
    } else if let Some(d) = s.strip_prefix('+') {
        cpus.saturating_add(d.parse::<usize>().with_context(bad)?)
    } else if let Some(d) = s.strip_prefix('-') {
        cpus.saturating_sub(d.parse::<usize>().with_context(bad)?)
            .max(1)
    } else {
        match s.parse::<usize>().with_context(bad)? {
            0 => return Ok(None),
            n => n,
        }
    };
    Ok(Some(n))
}

/// How many lines a `--header` regular expression of the form `.*\n.*\n…` takes (the `\n`
/// as written, or a newline).
fn lines_regex(h: &str) -> Option<usize> {
    let mut rest = h;
    let mut n = 0;
    while !rest.is_empty() {
        rest = rest
            .strip_prefix(".*\\n")
            .or_else(|| rest.strip_prefix(".*\n"))?;
        n += 1;
    }
    (n > 0).then_some(n)
}

/// `--results PATH` when it holds replacement strings: the template of each job's path.
fn results_template(
    path: Option<&std::path::Path>,
    syntax: &template::Syntax,
) -> anyhow::Result<Option<template::Template>> {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = path else {
        return Ok(None);
    };
    let t = template::Template::parse_text(path.as_os_str().as_bytes(), syntax)?;
    Ok(t.has_replacements().then_some(t))
}

/// `-j FILE`: the file's first line read as `-j`'s value.
pub(crate) fn jobs_from_file(path: &std::path::Path, cpus: usize) -> anyhow::Result<Option<usize>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the number of jobs from {}", path.display()))?;
    parse_jobs(text.lines().next().unwrap_or_default(), cpus)
        .with_context(|| format!("in {}", path.display()))
}

/// Bourne-like shells: the quoting of values is written for these.
const BOURNE: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh", "ash", "yash", "posh",
    "rbash",
];

/// The shell jobs run in, chosen as GNU parallel chooses it: `$PARALLEL_SHELL`, else the
/// nearest shell among our ancestors, else `$SHELL`, else `/bin/sh`. A shell that is not
/// Bourne-like (csh, fish…) is passed over: our quoting is for Bourne shells.
fn shell() -> OsString {
    if let Some(s) = std::env::var_os("PARALLEL_SHELL").filter(|s| !s.is_empty()) {
        return s;
    }
    if let Some(s) = parent_shell() {
        return s;
    }
    if let Some(s) = std::env::var_os("SHELL") {
        let path = std::path::Path::new(&s);
        if path.is_absolute()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| BOURNE.contains(&n))
        {
            return s;
        }
    }
    OsString::from("/bin/sh")
}

/// The name of the shell `argv0` says it is, as a login shell (`-bash`) or by path
/// (`/usr/bin/bash`); `None` when it is no shell at all (`bashful`, `/bin/sshd`).
fn shell_name(argv0: &str) -> Option<&str> {
    let name = argv0.strip_prefix('-').unwrap_or(argv0);
    let name = name.rsplit('/').next().unwrap_or(name);
    const OTHERS: &[&str] = &[
        "csh",
        "tcsh",
        "bsd-csh",
        "fish",
        "rc",
        "rush",
        "sash",
        "fdsh",
        "fizsh",
        "rzsh",
        "static-sh",
    ];
    (BOURNE.contains(&name) || OTHERS.contains(&name)).then_some(name)
}

/// The nearest ancestor process that is a shell, when it is a Bourne-like one: its
/// executable (`/proc/PID/exe`), or the name found on `$PATH`.
#[cfg(target_os = "linux")]
fn parent_shell() -> Option<OsString> {
    let mut pid = std::os::unix::process::parent_id();
    // A cycle is impossible in a process tree, but the walk is bounded all the same.
    for _ in 0..64 {
        if pid <= 1 {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        if let Some(name) = std::str::from_utf8(argv0).ok().and_then(shell_name) {
            if !BOURNE.contains(&name) {
                return None;
            }
            return std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(OsString::from)
                .or_else(|| on_path(name));
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so read after the last ')'.
        pid = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn parent_shell() -> Option<OsString> {
    None
}

/// `name` looked up on `$PATH`.
#[cfg(target_os = "linux")]
fn on_path(name: &str) -> Option<OsString> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .map(OsString::from)
}

/// Rewrites the spellings of GNU parallel that a parser of options cannot take as they are:
/// `-l` alone (`-L 1`), `-lN` and `-l N` (`-L N`; `-l0` is `-L 1`, as GNU's). `words` are
/// what follows `run`; only the options are looked at, never the command after them. The
/// options in the environment variable `PARALLEL` come first, as GNU parallel reads them.
pub fn gnu_words(words: Vec<OsString>) -> Vec<OsString> {
    let words = match std::env::var("PARALLEL") {
        Ok(env) if !env.trim().is_empty() => {
            let mut all: Vec<OsString> =
                split_words(&env).into_iter().map(OsString::from).collect();
            all.extend(words);
            all
        }
        _ => words,
    };
    let mut cmd = <Run as Args>::augment_args(clap::Command::new("run"));
    cmd.build();
    // Whether an option takes the next word as its value.
    let takes_next =
        |arg: &clap::Arg| arg.get_action().takes_values() && !arg.is_require_equals_set();
    let mut out = Vec::with_capacity(words.len());
    let mut words = words.into_iter().peekable();
    while let Some(w) = words.next() {
        let Some(text) = w.to_str().map(str::to_owned) else {
            out.push(w);
            break;
        };
        if text == "--" || text == "-" || !text.starts_with('-') {
            out.push(w);
            break;
        }
        // GNU parallel's options with an optional value (`-e`/`--eof`, `-i`/`--replace`) take
        // the next word unless it is an option, and an attached one (`-eEOF`, `-iSTR`).
        let optional = [("-e", "--eof", ""), ("-i", "--replace", "{}")];
        if let Some(&(_, long, alone)) = optional.iter().find(|(s, l, _)| text == *s || text == *l)
        {
            let v = words.next_if(|v| !v.to_string_lossy().starts_with('-'));
            let mut opt = OsString::from(format!("{long}="));
            opt.push(v.unwrap_or_else(|| alone.into()));
            out.push(opt);
            continue;
        }
        if let Some(&(short, long, _)) = optional.iter().find(|(s, _, _)| text.starts_with(s)) {
            out.push(OsString::from(format!("{long}={}", &text[short.len()..])));
            continue;
        }
        if text == "--max-lines" {
            // Its count is optional: GNU parallel takes the next word when it is a number.
            match words.next_if(|v| v.to_str().is_some_and(|v| v.parse::<usize>().is_ok())) {
                Some(n) => {
                    let n = n.to_string_lossy().into_owned();
                    out.push(OsString::from(format!("--max-lines={}", one_if_zero(&n))));
                }
                None => out.push(w),
            }
            continue;
        }
        if let Some(long) = text.strip_prefix("--") {
            out.push(w.clone());
            if long.contains('=') {
                continue;
            }
            let names = |a: &clap::Arg| {
                let mut n: Vec<String> = a.get_long().map(str::to_owned).into_iter().collect();
                n.extend(
                    a.get_all_aliases()
                        .unwrap_or_default()
                        .into_iter()
                        .map(str::to_owned),
                );
                n
            };
            let matching: Vec<&clap::Arg> = cmd
                .get_arguments()
                .filter(|a| names(a).iter().any(|n| n == long))
                .chain(
                    cmd.get_arguments()
                        .filter(|a| names(a).iter().any(|n| n.starts_with(long))),
                )
                .collect();
            if let Some(arg) = matching.first()
                && takes_next(arg)
                && let Some(v) = words.next()
            {
                out.push(v);
            }
            continue;
        }
        if text == "-l" {
            let n = words
                .next_if(|v| v.to_str().is_some_and(|v| v.parse::<usize>().is_ok()))
                .and_then(|v| v.into_string().ok())
                .unwrap_or_else(|| "1".into());
            out.push(OsString::from(format!("-L{}", one_if_zero(&n))));
            continue;
        }
        if let Some(n) = text.strip_prefix("-l")
            && n.parse::<usize>().is_ok()
        {
            out.push(OsString::from(format!("-L{}", one_if_zero(n))));
            continue;
        }
        // A cluster of short options: the first that takes a value ends it.
        out.push(w.clone());
        let chars: Vec<char> = text[1..].chars().collect();
        for (i, c) in chars.iter().enumerate() {
            let Some(arg) = cmd.get_arguments().find(|a| {
                a.get_short() == Some(*c)
                    || a.get_visible_short_aliases()
                        .unwrap_or_default()
                        .contains(c)
            }) else {
                break;
            };
            if takes_next(arg) {
                if i + 1 == chars.len()
                    && let Some(v) = words.next()
                {
                    out.push(v);
                }
                break;
            }
        }
    }
    out.extend(words);
    out
}

/// A count (`-n`, `-N`, `-L`, `-s`): a number, with a suffix as GNU parallel allows (`1k`
/// is 1000, `1K` 1024, `1.5k` 1500).
fn parse_count(s: &str) -> Result<usize, String> {
    if let Ok(n) = s.parse::<usize>() {
        return Ok(n);
    }
    blocks::scaled(s).ok_or_else(|| {
        format!("{s:?} is no count: use a number, with k, K, m, M, g, G, t or T after it")
    })
}

/// `-l`'s count: `0` is `1` (GNU parallel's `-l0`).
fn one_if_zero(n: &str) -> &str {
    if n.parse::<usize>() == Ok(0) { "1" } else { n }
}

/// The words of `PARALLEL` as a shell would split them: at blanks, with single and double
/// quotes and backslashes (no expansion).
fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                cur.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        _ => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Runs `multiproc run`; returns its exit status (255 after printing any error).
pub fn main(args: Run) -> ExitCode {
    main_with(args, None)
}

/// Runs `multiproc run`, its jobs handed to `remote` when given (`--broker`, whose queue the
/// caller opens: see [`Run::broker`]); returns its exit status (255 after printing any error).
pub fn main_with(args: Run, remote: Option<Box<dyn Remote>>) -> ExitCode {
    if let Some(text) = information(&args) {
        println!("{text}");
        return ExitCode::SUCCESS;
    }
    let remote = if args.dry_run { None } else { remote };
    match configure(args).and_then(|cfg| exec::run(cfg, remote)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // "Error: " as GNU parallel's errors begin.
            eprintln!("multiproc: Error: {}", describe(&err));
            ExitCode::from(255)
        }
    }
}

/// What `--version`, `--number-of-cores` and `--number-of-threads` print instead of running.
fn information(args: &Run) -> Option<String> {
    if args.version {
        return Some(format!(
            "multiproc run {} (GNU parallel's options)",
            env!("CARGO_PKG_VERSION")
        ));
    }
    let threads = || std::thread::available_parallelism().map_or(1, usize::from);
    if args.number_of_cores {
        let cores = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .map(|info| physical_cores(&info))
            .filter(|&n| n > 0)
            .unwrap_or_else(threads);
        return Some(cores.to_string());
    }
    args.number_of_threads.then(|| threads().to_string())
}

/// The physical cores `/proc/cpuinfo` lists: its distinct (`physical id`, `core id`) pairs
/// (0 when it does not say).
fn physical_cores(cpuinfo: &str) -> usize {
    let mut cores = std::collections::HashSet::new();
    for block in cpuinfo.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        if let (Some(package), Some(core)) = (field("physical id"), field("core id")) {
            cores.insert((package, core));
        }
    }
    cores.len()
}

/// Everything a run needs, checked.
pub(crate) struct Config {
    /// The input.
    pub(crate) input: input::Spec,
    /// The command.
    pub(crate) template: template::Template,
    /// The shell, or `None` with `--no-shell`.
    pub(crate) shell: Option<OsString>,
    /// Jobs at once; `None` for as many as possible.
    pub(crate) jobs: Option<usize>,
    /// `-j FILE`: read again whenever a job finishes.
    pub(crate) jobs_file: Option<PathBuf>,
    /// `--timeout`.
    pub(crate) timeout: Option<Duration>,
    /// Tries in all per job; 0 for no limit.
    pub(crate) retries: u64,
    /// `--retry-delay`.
    pub(crate) retry_delay: Duration,
    /// `--delay`.
    pub(crate) delay: Duration,
    /// `--halt`.
    pub(crate) halt: Halt,
    /// How output is printed.
    pub(crate) output: output::Options,
    /// `--joblog`.
    pub(crate) joblog: Option<PathBuf>,
    /// `--resume` / `--resume-failed`.
    pub(crate) resume: joblog::Resume,
    /// `--dry-run`.
    pub(crate) dry_run: bool,
    /// `-v`: each job's command line before its output.
    pub(crate) verbose: bool,
    /// `--bar`.
    pub(crate) bar: bool,
    /// `--eta`, `--progress`, or `--bar` (drawn as text where stderr is no terminal).
    pub(crate) progress: Option<progress::Style>,
    /// `--pipe`: how the input is cut, and where it comes from.
    pub(crate) pipe: Option<(blocks::BlockSpec, Option<PathBuf>)>,
}

/// Checks the options and splits the command from its `:::` / `::::` groups.
fn configure(a: Run) -> anyhow::Result<Config> {
    let delimiter = match (&a.delimiter, a.null) {
        (Some(_), true) => bail!("-0 and -d cannot be used together"),
        (Some(d), false) => input::parse_delimiter(d)?,
        (None, true) => vec![0],
        (None, false) => vec![b'\n'],
    };
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut groups: Vec<input::Source> = a.arg_file.into_iter().map(input::Source::File).collect();
    let mut links = input::Links {
        to_previous: Vec::new(),
        all: a.link,
    };
    let mut mode: Option<bool> = None; // Some(true) in `:::`, Some(false) in `::::`
    let mut link_next = false; // after `::::+`: each file is linked to the one before
    for w in a.command {
        let w = w.into_vec();
        match w.as_slice() {
            b":::" | b":::+" => {
                mode = Some(true);
                if w.len() == 4 {
                    links.to_previous.push(groups.len());
                }
                groups.push(input::Source::Args(Vec::new()));
            }
            b"::::" | b"::::+" => {
                mode = Some(false);
                link_next = w.len() == 5;
            }
            _ => match mode {
                None => words.push(w),
                Some(true) => {
                    if let Some(input::Source::Args(v)) = groups.last_mut() {
                        // `-d` splits `:::` arguments too, as GNU parallel does.
                        match a.delimiter {
                            Some(_) => v.extend(input::split_on(&w, &delimiter)),
                            None => v.push(w),
                        }
                    }
                }
                Some(false) => {
                    // `::::+ a b`: each file linked to the one before.
                    if link_next && !groups.is_empty() {
                        links.to_previous.push(groups.len());
                    }
                    groups.push(input::Source::File(PathBuf::from(OsString::from_vec(w))))
                }
            },
        }
    }
    // `--header` splits at TABs when --colsep does not say otherwise, as GNU parallel.
    let colsep = match (a.colsep.as_deref(), &a.header) {
        (None, Some(_)) if !a.pipe => Some(input::colsep("\t")?),
        (c, _) => c.map(input::colsep).transpose()?,
    };
    let header_lines = match a.header.as_deref() {
        None => 0,
        Some(":") => 1,
        Some(h) => match h.parse::<usize>() {
            Ok(n) if n > 0 => n,
            // `.*\n` once per line, the regular expression GNU parallel's manual gives.
            _ => match lines_regex(h) {
                Some(n) => n,
                None => bail!(
                    "--header {h:?}: use `:` for one line, a number of lines, or `.*\\n` once \
                     per line"
                ),
            },
        },
    };
    let names = if header_lines > 0 && !a.pipe {
        input::read_headers(&mut groups, header_lines, &delimiter, colsep.as_ref())?
    } else {
        Vec::new()
    };
    let results_names = {
        let mut by_pos: Vec<Option<Vec<u8>>> = Vec::new();
        for (name, pos) in &names {
            if by_pos.len() < *pos {
                by_pos.resize(*pos, None);
            }
            by_pos[pos - 1] = Some(name.clone());
        }
        by_pos
    };
    let replace = a
        .replace
        .or(a.replace_long)
        .or(a.replace_default.then(|| "{}".to_string()));
    if replace.as_deref() == Some("") {
        bail!("the replacement string (-I) is empty");
    }
    let syntax = template::Syntax {
        replace: replace.map(String::into_bytes),
        quote_words: a.quote,
        // -N and -L repeat a word around `{}` per argument too, as GNU parallel's do (-n not).
        context: a.context_replace
            || a.max_replace_args.is_some()
            || a.max_lines.or(a.max_lines_long).is_some(),
        pipe: a.pipe,
        names,
    };
    let pipe = if a.pipe {
        if a.multiple || a.context_replace {
            bail!("--pipe cannot be used with -m or -X");
        }
        if words.is_empty() {
            bail!("--pipe/--pipepart must have a command to pipe into (e.g. 'cat').");
        }
        let source = match groups.as_slice() {
            [] => None,
            [input::Source::File(p)] => Some(p.clone()),
            _ => bail!("--pipe reads one input: stdin, or one -a or :::: file"),
        };
        let recend = match &a.recend {
            Some(r) if r.is_empty() => Vec::new(),
            Some(r) => input::parse_delimiter(r)?,
            None => vec![b'\n'],
        };
        let spec = blocks::BlockSpec {
            size: a
                .block
                .as_deref()
                .map_or(Ok(blocks::DEFAULT_BLOCK), blocks::parse_size)?,
            recend,
            records: a.max_args.or(a.max_replace_args),
            lines: a.max_lines.or(a.max_lines_long),
            header_lines,
            skip_blank: a.no_run_if_empty,
        };
        Some((spec, source))
    } else {
        None
    };
    let template = template::Template::parse(&words, &syntax)?;
    let tagstring = a
        .tagstring
        .as_deref()
        .map(|t| template::Template::parse_text(t.as_bytes(), &syntax))
        .transpose()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // `-j FILE`: the file says, and is read again as jobs finish.
    let jobs_file = a.jobs.as_deref().map(PathBuf::from).filter(|p| p.is_file());
    let jobs = match (&jobs_file, &a.jobs) {
        (Some(f), _) => jobs_from_file(f, cpus)?,
        (None, Some(j)) => parse_jobs(j, cpus)?,
        (None, None) if a.broker.is_some() => Some(REMOTE_JOBS),
        (None, None) => Some(cpus),
    };
    let pack = a.multiple || a.context_replace;
    let lines = a.max_lines.or(a.max_lines_long);
    // `-n0`: a job per record, run without its values.
    let per_job = match a.max_args.or(a.max_replace_args).or(lines) {
        Some(n) => n,
        None if pack => usize::MAX,
        None => 1,
    };
    let max_line = match a.max_chars {
        Some(0) => bail!("-s must be more than 0"),
        Some(n) if n <= group::DEFAULT_MAX_LINE => n,
        Some(_) => {
            eprintln!(
                "multiproc: Warning: Value for option -s should be < {}.",
                group::DEFAULT_MAX_LINE
            );
            group::DEFAULT_MAX_LINE
        }
        None => group::DEFAULT_MAX_LINE,
    };
    let grouping = group::Grouping {
        per_job,
        pack,
        slots: jobs.unwrap_or(usize::MAX),
        template: template.clone(),
        max_line,
    };
    let filter = input::Filter {
        eof: a
            .eof
            .or(a.eof_long)
            .filter(|e| !e.is_empty())
            .map(String::into_bytes),
        skip_blank: a.no_run_if_empty,
        continued_lines: lines.is_some(),
        warn_crnl: a.delimiter.is_none() && !a.null,
    };
    let dur = |s: &Option<String>| s.as_deref().map(parse_duration).transpose();
    let timeout = dur(&a.timeout)?;
    if timeout == Some(Duration::ZERO) {
        bail!("--timeout must be more than 0");
    }
    let resume = match (a.resume, a.resume_failed) {
        (true, _) => joblog::Resume::Done,
        (_, true) => joblog::Resume::Failed,
        _ => joblog::Resume::No,
    };
    if resume != joblog::Resume::No && a.joblog.is_none() {
        bail!("--resume and --resume-failed need --joblog");
    }
    Ok(Config {
        input: input::Spec {
            sources: groups,
            links,
            delimiter,
            colsep,
            filter,
            grouping,
        },
        template,
        shell: if a.no_shell { None } else { Some(shell()) },
        jobs,
        jobs_file,
        timeout,
        retries: a.retries,
        retry_delay: dur(&a.retry_delay)?.unwrap_or(Duration::ZERO),
        delay: dur(&a.delay)?.unwrap_or(Duration::ZERO),
        halt: a.halt.as_deref().map_or(Ok(Halt::NEVER), parse_halt)?,
        output: output::Options {
            keep_order: a.keep_order,
            // Whichever of --line-buffer and --group came last is set.
            line_buffer: a.line_buffer && !a.group,
            tag: a.tag,
            tagstring,
            ungroup: a.ungroup,
            results_template: results_template(a.results.as_deref(), &syntax)?,
            results_names,
            results: a.results,
            files: a.files,
            tmpdir: a
                .tmpdir
                .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/tmp")),
        },
        joblog: a.joblog,
        resume,
        dry_run: a.dry_run,
        verbose: a.verbose > 0,
        bar: a.bar,
        progress: if a.eta {
            Some(progress::Style::Eta)
        } else if a.progress {
            Some(progress::Style::Progress)
        } else if a.bar {
            Some(progress::Style::Bar)
        } else {
            None
        },
        pipe,
    })
}

/// An error and its causes on one line, each cause once (`cannot read x: No such file`).
pub fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_words_rewrite_dash_l_in_the_options_only() {
        let w = |ws: &[&str]| ws.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(gnu_words(w(&["-l", "echo"])), w(&["-L1", "echo"]));
        assert_eq!(
            gnu_words(w(&["-k", "-l2", "echo"])),
            w(&["-k", "-L2", "echo"])
        );
        assert_eq!(gnu_words(w(&["-l", "3", "echo"])), w(&["-L3", "echo"]));
        // Values of options and the command's own words are left alone.
        assert_eq!(
            gnu_words(w(&["--tagstring", "-l", "ls", "-l"])),
            w(&["--tagstring", "-l", "ls", "-l"])
        );
        assert_eq!(gnu_words(w(&["-j", "-l", "-l"])), w(&["-j", "-l", "-L1"]));
        assert_eq!(gnu_words(w(&["-kj2", "-l"])), w(&["-kj2", "-L1"]));
        assert_eq!(
            gnu_words(w(&["--halt", "-1", "-l"])),
            w(&["--halt", "-1", "-L1"])
        );
        assert_eq!(
            gnu_words(w(&["--tag", "-l", "x"])),
            w(&["--tag", "-L1", "x"])
        );
        assert_eq!(gnu_words(w(&["--eof", "-l"])), w(&["--eof=", "-L1"]));
        // -e/--eof take the next word unless it is an option; -eSTR is --eof=STR.
        assert_eq!(
            gnu_words(w(&["-e", "END", "echo"])),
            w(&["--eof=END", "echo"])
        );
        assert_eq!(gnu_words(w(&["-eEND", "echo"])), w(&["--eof=END", "echo"]));
        assert_eq!(gnu_words(w(&["--eof", "x", "-k"])), w(&["--eof=x", "-k"]));
        assert_eq!(gnu_words(w(&["ls", "-l"])), w(&["ls", "-l"]));
        assert_eq!(
            gnu_words(w(&["--max-lines", "3", "echo"])),
            w(&["--max-lines=3", "echo"])
        );
        assert_eq!(
            gnu_words(w(&["--max-lines", "echo"])),
            w(&["--max-lines", "echo"])
        );
    }

    #[test]
    fn parallel_variable_words_split_as_a_shell_splits_them() {
        assert_eq!(split_words(" -v  -k"), ["-v", "-k"]);
        assert_eq!(
            split_words("--tagstring 'a b' -j\"2\""),
            ["--tagstring", "a b", "-j2"]
        );
        assert_eq!(split_words(r"a\ b ''"), ["a b", ""]);
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn physical_cores_count_distinct_cores_not_threads() {
        let block = |cpu: u32, package: u32, core: u32| {
            format!("processor\t: {cpu}\nphysical id\t: {package}\ncore id\t\t: {core}\n")
        };
        // Two packages of two cores with two threads each: eight CPUs, four cores.
        let info: Vec<String> = (0..8)
            .map(|cpu| block(cpu, cpu / 4, (cpu / 2) % 2))
            .collect();
        assert_eq!(physical_cores(&info.join("\n")), 4);
        assert_eq!(physical_cores("processor\t: 0\nmodel name\t: x\n"), 0);
    }

    #[test]
    fn each_cause_is_told_once() {
        let io = std::io::Error::other("refused");
        let err = anyhow::Error::new(io).context("connection to h: refused");
        assert_eq!(describe(&err), "connection to h: refused");
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&err), "outer: inner");
    }

    #[test]
    fn shell_names_from_argv0() {
        for (argv0, name) in [
            ("bash", "bash"),
            ("-bash", "bash"),
            ("/usr/bin/dash", "dash"),
            ("-/bin/zsh", "zsh"),
            ("tcsh", "tcsh"),
        ] {
            assert_eq!(shell_name(argv0), Some(name), "{argv0}");
        }
        for not_shell in ["bashful", "/usr/sbin/sshd", "flush", "cargo", "", "/"] {
            assert_eq!(shell_name(not_shell), None, "{not_shell}");
        }
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).expect(s);
        assert_eq!(d("1.5"), Duration::from_millis(1500));
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        for bad in ["", "x", "1x", "-1", "s", "1..2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jobs() {
        let j = |s| parse_jobs(s, 4).expect(s);
        assert_eq!(j("3"), Some(3));
        assert_eq!(j("0"), None);
        assert_eq!(j("50%"), Some(2));
        assert_eq!(j("1%"), Some(1));
        assert_eq!(j("+2"), Some(6));
        assert_eq!(j("-1"), Some(3));
        assert_eq!(j("-10"), Some(1));
        for bad in ["", "x", "+", "-x", "%", "1.5"] {
            assert!(parse_jobs(bad, 4).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn halts() {
        let h = |s| parse_halt(s).expect(s);
        assert_eq!(h("never"), Halt::NEVER);
        assert_eq!(h("now,fail=1").when, When::Now);
        assert_eq!(h("soon,fail=3").limit, 3.0);
        let p = h("now,fail=50%");
        assert!(p.pct && p.limit == 0.5);
        assert_eq!(h("soon,success=2").why, Why::Success);
        assert_eq!(h("now,done=1").why, Why::Done);
        assert_eq!(h("2"), h("now,fail=1"));
        for bad in [
            "",
            "now",
            "now,fail",
            "now,fail=0",
            "later,fail=1",
            "now,oops=1",
            "now,fail=x",
        ] {
            assert!(parse_halt(bad).is_err(), "{bad:?}");
        }
    }
}
