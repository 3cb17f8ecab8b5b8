//! Jobs that run elsewhere: `multiproc run --broker URL` hands each job's command line to a
//! [`Remote`] (the command line's broker queue, in the `multiproc` binary) instead of starting
//! it here, and takes its outcome back through a [`ResultSink`]. Everything else (the input,
//! `-k`, `--tag`, `--results`, the joblog, `--retries`, `--halt`, the exit status) is the
//! runner's, as for local jobs.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, SystemTime};

/// A job sent away: its command line for a shell, run by the other side.
#[derive(Debug, Clone)]
pub struct RemoteJob {
    /// Its sequence number (`{#}`), from 1.
    pub seq: u64,
    /// Which try this is, from 1 (`--retries`).
    pub attempt: u64,
    /// The shell command line, as it would run here.
    pub command: Vec<u8>,
    /// `--timeout`: the other side kills the job after this long.
    pub timeout: Option<Duration>,
    /// With `--pipe`: its block of the input, for its stdin.
    pub input: Option<Vec<u8>>,
}

/// What came of a job run elsewhere.
#[derive(Debug, Clone)]
pub struct RemoteResult {
    /// The job's sequence number.
    pub seq: u64,
    /// The try this is the outcome of.
    pub attempt: u64,
    /// Where it ran (the joblog's Host column).
    pub host: String,
    /// When it started.
    pub start: SystemTime,
    /// How long it ran.
    pub runtime: Duration,
    /// Its exit status; -1 when it was killed.
    pub exitval: i32,
    /// The signal that ended it, 0 if none.
    pub signal: i32,
    /// What it wrote to its stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to its stderr.
    pub stderr: Vec<u8>,
}

/// Where a [`Remote`] delivers outcomes: a channel the runner's loop reads, and a socket that
/// wakes it.
#[derive(Debug)]
pub struct ResultSink {
    /// The outcomes, or the error that ended them.
    tx: SyncSender<Result<RemoteResult, String>>,
    /// A byte after each, so that the loop's poll returns.
    wake: UnixStream,
}

impl ResultSink {
    /// A sink over `tx`, waking the loop through `wake`.
    pub(crate) fn new(tx: SyncSender<Result<RemoteResult, String>>, wake: UnixStream) -> Self {
        ResultSink { tx, wake }
    }

    /// Hands an outcome to the runner; `false` when the runner has gone.
    pub fn deliver(&self, result: RemoteResult) -> bool {
        self.send(Ok(result))
    }

    /// Tells the runner that no more outcomes can come, and why.
    pub fn fail(&self, error: String) {
        self.send(Err(error));
    }

    /// Sends one message and wakes the loop.
    fn send(&self, msg: Result<RemoteResult, String>) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        // Non-blocking: a full socket already has bytes waiting to wake the runner.
        let _ = (&self.wake).write(&[1]);
        true
    }
}

/// Where jobs go instead of being started here.
pub trait Remote: Send {
    /// Starts taking outcomes, delivering each to `sink` (from a thread of its own: the
    /// runner's loop must not wait on it).
    fn start(&mut self, sink: ResultSink) -> anyhow::Result<()>;

    /// Sends one job. Called from the runner's loop, at most `-j` jobs outstanding.
    fn send(&mut self, job: RemoteJob) -> anyhow::Result<()>;

    /// The run is over (every outcome taken, or the run stopped): tidies up, such as the
    /// queue the outcomes came through.
    fn finish(&mut self) -> anyhow::Result<()>;
}
