//! `--joblog FILE` in GNU parallel's format, and `--resume` / `--resume-failed` reading it.
//!
//! The file is tab-separated, with a header line: `Seq Host Starttime JobRuntime Send Receive
//! Exitval Signal Command`. Host is `:` (this machine) or the worker's host name (`--broker`), Starttime is seconds since the epoch
//! with three decimals, JobRuntime seconds with three decimals right-aligned in ten columns,
//! Send the bytes of input given to the job (its block with `--pipe`, else 0), Receive the bytes the job wrote to its stdout, Exitval -1 for a job that was
//! killed (timed out, or stopped), and Signal the signal that ended it, if any.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, bail};

/// The header line.
const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// Which jobs of an earlier run to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Start afresh (the log is truncated).
    No,
    /// `--resume`: skip every job the log has.
    Done,
    /// `--resume-failed`: skip the jobs the log has as succeeded; run the failed ones again.
    Failed,
}

/// One finished job, as logged.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Where it ran: `:` for here, as GNU parallel writes it, else the host's name.
    pub(crate) host: &'a str,
    /// When it started, in seconds since the epoch.
    pub(crate) start: f64,
    /// How long it ran, in seconds.
    pub(crate) runtime: f64,
    /// Bytes of input it was given (`--pipe`).
    pub(crate) sent: u64,
    /// Bytes it wrote to stdout.
    pub(crate) received: u64,
    /// Its exit status, -1 when it was killed.
    pub(crate) exitval: i32,
    /// The signal that ended it, 0 if none.
    pub(crate) signal: i32,
    /// Its command line.
    pub(crate) command: &'a [u8],
}

/// An open joblog.
#[derive(Debug)]
pub(crate) struct Joblog {
    /// The file, appended to one line at a time.
    file: File,
    /// `--joblog -`: the file is (a duplicate of) our stdout.
    to_stdout: bool,
}

impl Joblog {
    /// Opens the log at `path`. When resuming, reads it first and returns the sequence numbers
    /// to skip; the new lines are then appended (after a header if the file had none).
    pub(crate) fn open(path: &Path, resume: Resume) -> anyhow::Result<(Joblog, HashSet<u64>)> {
        let mut skip = HashSet::new();
        if path == Path::new("-") {
            // Standard output, as GNU parallel: nothing to resume from.
            let mut file = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .context("cannot duplicate stdout for the joblog")?;
            file.write_all(HEADER.as_bytes())
                .context("writing the joblog to stdout")?;
            let log = Joblog {
                file,
                to_stdout: true,
            };
            return Ok((log, skip));
        }
        // `+FILE`: appended to, as with --resume, but nothing skipped (GNU parallel's).
        let (path, append) = match path.to_str().and_then(|p| p.strip_prefix('+')) {
            Some(rest) if !rest.is_empty() => (Path::new(rest), true),
            _ => (path, false),
        };
        let mut has_header = false;
        if append && resume == Resume::No {
            has_header = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        }
        if resume != Resume::No {
            match File::open(path) {
                Ok(f) => has_header = read(f, resume, &mut skip, path)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            }
        }
        let mut opts = OpenOptions::new();
        if resume == Resume::No && !append {
            opts.write(true).create(true).truncate(true);
        } else {
            opts.append(true).create(true);
        }
        let mut file = opts
            .open(path)
            .with_context(|| format!("cannot write the joblog {}", path.display()))?;
        if !has_header {
            file.write_all(HEADER.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let log = Joblog {
            file,
            to_stdout: false,
        };
        Ok((log, skip))
    }

    /// Whether the log goes to stdout (`--joblog -`), among the jobs' output.
    pub(crate) fn to_stdout(&self) -> bool {
        self.to_stdout
    }

    /// Appends one line (one write, so that a crash leaves no half line).
    pub(crate) fn write(&mut self, e: &Entry<'_>) -> std::io::Result<()> {
        let mut line = format!(
            "{}\t{}\t{:.3}\t{:>10.3}\t{}\t{}\t{}\t{}\t",
            e.seq, e.host, e.start, e.runtime, e.sent, e.received, e.exitval, e.signal
        )
        .into_bytes();
        line.extend_from_slice(e.command);
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// Reads an earlier log into `skip`; returns whether it had a header.
fn read(f: File, resume: Resume, skip: &mut HashSet<u64>, path: &Path) -> anyhow::Result<bool> {
    let mut has_header = false;
    for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if i == 0 && line.starts_with(b"Seq\t") {
            has_header = true;
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&[u8]> = line.splitn(9, |&b| b == b'\t').collect();
        let parsed = (|| {
            if fields.len() < 9 {
                return None;
            }
            let num = |f: &[u8]| std::str::from_utf8(f).ok()?.trim().parse::<i64>().ok();
            Some((num(fields[0])?, num(fields[6])?, num(fields[7])?))
        })();
        let Some((seq, exitval, signal)) = parsed else {
            bail!(
                "format of the joblog {} is wrong: {}",
                path.display(),
                String::from_utf8_lossy(&line)
            );
        };
        let Ok(seq) = u64::try_from(seq) else {
            bail!("bad sequence number {seq} in {}", path.display());
        };
        if resume == Resume::Done || (exitval == 0 && signal == 0) {
            skip.insert(seq);
        }
    }
    Ok(has_header)
}
