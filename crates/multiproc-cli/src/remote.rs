//! `multiproc run --broker URL` and `multiproc worker --run-jobs`: GNU-parallel jobs run on
//! workers on other machines through a Redis broker queue.
//!
//! A job is a shell command line, so the queue must not become a way to run code for
//! whoever can write to Redis. A worker runs command lines only when started with
//! `--run-jobs`, and only jobs signed with the shared authkey: an HMAC-SHA256 over every field
//! of the job, the name of the queue it was sent to included, so that a job copied into
//! another queue is refused too. Anything else goes to the dead letters at once, with the
//! reason, and never runs. Outcomes come back signed the same way, to a queue of the run's own
//! (named at random), and `multiproc run` takes only those that verify.
//!
//! Delivery is at least once: a job whose worker dies runs again on another (the broker's
//! lease); the runner takes the first outcome of each try and ignores the rest.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use multiproc::{ErrorKind, JoinableQueue, Queue, QueueAdmin};
use multiproc_run::{Remote, RemoteJob, RemoteResult, ResultSink};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The format's version, signed with the rest.
const VERSION: u32 = 1;
/// The longest command line a worker takes (as `sh -c` gets it, Linux allows 128 KiB; this
/// leaves room for longer limits elsewhere).
const MAX_COMMAND: usize = 1 << 20;
/// The longest queue name, run id or host name in a job or outcome.
const MAX_NAME: usize = 1024;
/// The largest stdin a job carries (`--pipe` blocks are 1 MiB by default).
const MAX_STDIN: usize = 64 << 20;
/// What a worker keeps of a job's stdout and of its stderr; the rest is dropped with a note.
const MAX_OUTPUT: usize = 16 << 20;
/// How long a job killed for its timeout has after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
/// How many outcome queues a worker keeps connections to.
const OUTCOME_QUEUES: usize = 16;

/// A job as it travels: every field is signed (`sig`, base64 of the HMAC).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SignedJob {
    /// [`VERSION`].
    pub(crate) v: u32,
    /// The queue it was sent to: a worker on another queue refuses it.
    pub(crate) queue: String,
    /// The run it belongs to.
    pub(crate) run: String,
    /// Where its outcome goes.
    pub(crate) results: String,
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Which try.
    pub(crate) attempt: u64,
    /// `--timeout`, in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
    /// The command line, base64.
    pub(crate) cmd: String,
    /// With `--pipe`: the job's stdin, base64 (empty: none).
    #[serde(default)]
    pub(crate) stdin: String,
    /// The signature.
    pub(crate) sig: String,
}

/// An outcome as it travels, signed as a job is.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SignedOutcome {
    /// [`VERSION`].
    pub(crate) v: u32,
    /// The run it belongs to.
    pub(crate) run: String,
    /// The job's sequence number.
    pub(crate) seq: u64,
    /// The try.
    pub(crate) attempt: u64,
    /// The worker's host.
    pub(crate) host: String,
    /// When the job started, in milliseconds since the epoch.
    pub(crate) start_ms: u64,
    /// How long it ran, in microseconds.
    pub(crate) runtime_us: u64,
    /// Its exit status, -1 when killed.
    pub(crate) exitval: i32,
    /// The signal that ended it, 0 if none.
    pub(crate) signal: i32,
    /// Its stdout, base64.
    pub(crate) stdout: String,
    /// Its stderr, base64.
    pub(crate) stderr: String,
    /// The signature.
    pub(crate) sig: String,
}

/// The HMAC of `parts` under `key`, each part length-prefixed so that no two different field
/// lists sign the same bytes.
fn mac(key: &[u8], domain: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
    // An HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac
}

impl SignedJob {
    /// The fields the signature covers.
    fn signed(&self, f: impl FnOnce(&[&[u8]]) -> Hmac<Sha256>) -> Hmac<Sha256> {
        let timeout = self.timeout_ms.map_or(u64::MAX, |t| t).to_le_bytes();
        f(&[
            &self.v.to_le_bytes(),
            self.queue.as_bytes(),
            self.run.as_bytes(),
            self.results.as_bytes(),
            &self.seq.to_le_bytes(),
            &self.attempt.to_le_bytes(),
            &timeout,
            self.cmd.as_bytes(),
            self.stdin.as_bytes(),
        ])
    }

    /// A job for `queue`, signed with `key`.
    fn new(key: &[u8], queue: &str, run: &str, results: &str, job: &RemoteJob) -> SignedJob {
        let mut j = SignedJob {
            v: VERSION,
            queue: queue.to_string(),
            run: run.to_string(),
            results: results.to_string(),
            seq: job.seq,
            attempt: job.attempt,
            timeout_ms: job
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            cmd: BASE64.encode(&job.command),
            stdin: job
                .input
                .as_deref()
                .map_or_else(String::new, |b| BASE64.encode(b)),
            sig: String::new(),
        };
        j.sig = BASE64.encode(
            j.signed(|p| mac(key, "multiproc-run-job", p))
                .finalize()
                .into_bytes(),
        );
        j
    }

    /// The command line and its stdin, if the job is ours: signed with `key`, for the queue
    /// `queue` it was taken from, within bounds. The error is the reason it goes to the dead
    /// letters.
    pub(crate) fn verify(&self, key: &[u8], queue: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
        if self.v != VERSION {
            return Err(format!(
                "format version {} (this worker reads {VERSION})",
                self.v
            ));
        }
        if [&self.queue, &self.run, &self.results]
            .iter()
            .any(|s| s.len() > MAX_NAME)
            || self.cmd.len() > MAX_COMMAND / 3 * 4 + 4
            || self.stdin.len() > MAX_STDIN / 3 * 4 + 4
        {
            return Err("a field is too long".into());
        }
        let sig = BASE64
            .decode(&self.sig)
            .map_err(|_| "the signature is not base64".to_string())?;
        self.signed(|p| mac(key, "multiproc-run-job", p))
            .verify_slice(&sig)
            .map_err(|_| "bad signature (not signed with this worker's authkey)".to_string())?;
        if self.queue != queue {
            return Err(format!(
                "signed for queue {:?}, found in {queue:?} (replayed?)",
                self.queue
            ));
        }
        let decode = |s: &str, what: &str| {
            BASE64
                .decode(s)
                .map_err(|_| format!("the {what} is not base64"))
        };
        Ok((decode(&self.cmd, "command")?, decode(&self.stdin, "stdin")?))
    }
}

impl SignedOutcome {
    /// The fields the signature covers.
    fn signed(&self, f: impl FnOnce(&[&[u8]]) -> Hmac<Sha256>) -> Hmac<Sha256> {
        f(&[
            &self.v.to_le_bytes(),
            self.run.as_bytes(),
            &self.seq.to_le_bytes(),
            &self.attempt.to_le_bytes(),
            self.host.as_bytes(),
            &self.start_ms.to_le_bytes(),
            &self.runtime_us.to_le_bytes(),
            &self.exitval.to_le_bytes(),
            &self.signal.to_le_bytes(),
            self.stdout.as_bytes(),
            self.stderr.as_bytes(),
        ])
    }

    /// Signs the outcome with `key`.
    fn sign(mut self, key: &[u8]) -> SignedOutcome {
        self.sig = BASE64.encode(
            self.signed(|p| mac(key, "multiproc-run-outcome", p))
                .finalize()
                .into_bytes(),
        );
        self
    }

    /// The outcome, if it is one of run `run`'s, signed with `key`.
    fn verify(&self, key: &[u8], run: &str) -> Result<RemoteResult, String> {
        let sig = BASE64
            .decode(&self.sig)
            .map_err(|_| "the signature is not base64".to_string())?;
        self.signed(|p| mac(key, "multiproc-run-outcome", p))
            .verify_slice(&sig)
            .map_err(|_| "bad signature (not signed with this run's authkey)".to_string())?;
        if self.v != VERSION || self.run != run {
            return Err(format!("an outcome of run {:?}, not of this one", self.run));
        }
        // The host goes into the joblog's tab-separated line.
        if self.host.len() > MAX_NAME || self.host.chars().any(char::is_control) {
            return Err("a bad host name".into());
        }
        let decode = |s: &str| {
            BASE64
                .decode(s)
                .map_err(|_| "output not base64".to_string())
        };
        Ok(RemoteResult {
            seq: self.seq,
            attempt: self.attempt,
            host: self.host.clone(),
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(self.start_ms),
            runtime: Duration::from_micros(self.runtime_us),
            exitval: self.exitval,
            signal: self.signal,
            stdout: decode(&self.stdout)?,
            stderr: decode(&self.stderr)?,
        })
    }
}

/// A run's side of the broker: it signs and queues the jobs, and a thread takes their
/// outcomes from the run's own queue.
pub(crate) struct BrokerRemote {
    /// The broker.
    url: String,
    /// The jobs' queue's name.
    queue: String,
    /// The jobs' queue.
    jobs: Queue<SignedJob>,
    /// The shared authkey.
    key: Arc<Vec<u8>>,
    /// This run's id (random).
    run: String,
    /// The outcomes' queue's name.
    results: String,
    /// Tells the outcomes' thread to stop.
    stop: Arc<AtomicBool>,
    /// The outcomes' thread.
    taker: Option<std::thread::JoinHandle<()>>,
}

impl BrokerRemote {
    /// The remote `multiproc run --broker` asks for.
    /// Its keys are under `MULTIPROC_PREFIX` when that is set, as the workers' are.
    pub(crate) fn for_run(b: &multiproc_run::BrokerOptions) -> anyhow::Result<BrokerRemote> {
        let key = crate::access::read_authkey(b.authkey_file.as_deref())?;
        let url = match std::env::var("MULTIPROC_PREFIX") {
            Ok(prefix) => crate::access::with_prefix(&b.url, &prefix),
            Err(_) => b.url.clone(),
        };
        BrokerRemote::connect(&url, &b.queue, key)
    }

    /// Connects to the jobs' queue `queue` at `url`.
    pub(crate) fn connect(url: &str, queue: &str, key: Vec<u8>) -> anyhow::Result<BrokerRemote> {
        if key.is_empty() {
            bail!("the authkey is empty: jobs would be signed with nothing");
        }
        let mut id = [0u8; 12];
        getrandom::fill(&mut id)
            .map_err(|e| anyhow::anyhow!("no randomness for the run id: {e}"))?;
        let run: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let results = format!("{queue}.outcomes.{run}");
        let jobs = Queue::connect(url, queue)
            .with_context(|| format!("cannot open the job queue {queue:?}"))?;
        Ok(BrokerRemote {
            url: url.to_string(),
            queue: queue.to_string(),
            jobs,
            key: Arc::new(key),
            run,
            results,
            stop: Arc::new(AtomicBool::new(false)),
            taker: None,
        })
    }
}

impl Remote for BrokerRemote {
    fn start(&mut self, sink: ResultSink) -> anyhow::Result<()> {
        let outcomes: JoinableQueue<SignedOutcome> =
            JoinableQueue::connect(&self.url, &self.results)
                .with_context(|| format!("cannot open the outcome queue {:?}", self.results))?;
        let (key, run, stop) = (self.key.clone(), self.run.clone(), self.stop.clone());
        let taker = std::thread::Builder::new()
            .name("run-outcomes".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = match outcomes.get_timeout(Duration::from_millis(200)) {
                        Ok(o) => o,
                        Err(e) if e.kind() == ErrorKind::Timeout => continue,
                        Err(e) => {
                            sink.fail(format!("taking outcomes: {e}"));
                            return;
                        }
                    };
                    let handled = match outcome.verify(&key, &run) {
                        Ok(result) => {
                            if !sink.deliver(result) {
                                return;
                            }
                            outcomes.task_done()
                        }
                        Err(reason) => {
                            tracing::warn!(%reason, "refused an outcome");
                            outcomes.task_rejected(&reason)
                        }
                    };
                    if let Err(e) = handled {
                        sink.fail(format!("taking outcomes: {e}"));
                        return;
                    }
                }
            })
            .context("cannot start the outcomes' thread")?;
        self.taker = Some(taker);
        Ok(())
    }

    fn send(&mut self, job: RemoteJob) -> anyhow::Result<()> {
        let signed = SignedJob::new(&self.key, &self.queue, &self.run, &self.results, &job);
        self.jobs.put(&signed)?;
        // Stored before the runner counts it as running.
        self.jobs.flush()?;
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.taker.take() {
            let _ = t.join();
        }
        QueueAdmin::connect(&self.url, &self.results)
            .and_then(QueueAdmin::destroy)
            .with_context(|| format!("cannot delete the outcome queue {:?}", self.results))
    }
}

/// `multiproc worker --run-jobs`: takes signed jobs from `tasks`, runs each command line with
/// `shell -c`, and sends its signed outcome back, until none came for `idle`.
pub(crate) fn run_jobs(
    url: &str,
    queue: &str,
    tasks: &JoinableQueue<SignedJob>,
    key: &[u8],
    shell: &std::path::Path,
    idle: Duration,
) -> anyhow::Result<()> {
    if key.is_empty() {
        bail!("the authkey is empty: no job could be checked");
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_control))
        .unwrap_or_else(|| "worker".into());
    let mut outcome_queues: Vec<(String, Queue<SignedOutcome>)> = Vec::new();
    let (mut ran, mut refused) = (0u64, 0u64);
    loop {
        let job = match tasks.get_timeout(idle) {
            Ok(j) => j,
            Err(e) if e.kind() == ErrorKind::Timeout => break,
            Err(e) => return Err(e.into()),
        };
        let (command, stdin) = match job.verify(key, queue) {
            Ok(c) => c,
            Err(reason) => {
                tracing::warn!(queue, seq = job.seq, %reason, "refused a job: to the dead letters");
                tasks.task_rejected(&reason)?;
                refused += 1;
                continue;
            }
        };
        let timeout = job.timeout_ms.map(Duration::from_millis);
        let run = Run {
            seq: job.seq,
            attempt: job.attempt,
            run: &job.run,
            host: &host,
            timeout,
        };
        let outcome = execute(shell, &command, &stdin, &run).sign(key);
        let at = match outcome_queues.iter().position(|(n, _)| *n == job.results) {
            Some(at) => at,
            None => {
                if outcome_queues.len() >= OUTCOME_QUEUES {
                    outcome_queues.remove(0);
                }
                outcome_queues.push((job.results.clone(), Queue::connect(url, &job.results)?));
                outcome_queues.len() - 1
            }
        };
        let results = &outcome_queues[at].1;
        results.put(&outcome)?;
        // Stored before the job is done: a worker that dies in between leaves the job to run
        // again, never a job done without its outcome.
        results.flush()?;
        tasks.task_done()?;
        ran += 1;
    }
    println!(
        "worker: ran {ran} job{}, refused {refused}, none left",
        if ran == 1 { "" } else { "s" }
    );
    Ok(())
}

/// What an outcome says of the job it is for.
struct Run<'a> {
    /// The job's sequence number.
    seq: u64,
    /// Its try.
    attempt: u64,
    /// Its run.
    run: &'a str,
    /// This worker's host.
    host: &'a str,
    /// Its `--timeout`.
    timeout: Option<Duration>,
}

/// Runs `shell -c command` in a process group of its own, `stdin` on its stdin, its output
/// kept up to [`MAX_OUTPUT`], killed after the job's timeout.
fn execute(shell: &std::path::Path, command: &[u8], stdin: &[u8], job: &Run<'_>) -> SignedOutcome {
    let Run {
        seq,
        attempt,
        run,
        host,
        timeout,
    } = *job;
    let start = SystemTime::now();
    let started = Instant::now();
    let mut outcome = SignedOutcome {
        v: VERSION,
        run: run.to_string(),
        seq,
        attempt,
        host: host.to_string(),
        start_ms: start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        runtime_us: 0,
        exitval: 0,
        signal: 0,
        stdout: String::new(),
        stderr: String::new(),
        sig: String::new(),
    };
    let child = Command::new(shell)
        .arg("-c")
        .arg(OsStr::from_bytes(command))
        .env("PARALLEL_SEQ", seq.to_string())
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            outcome.exitval = 127;
            outcome.stderr = BASE64.encode(format!(
                "multiproc worker: cannot start {}: {e}\n",
                shell.display()
            ));
            return outcome;
        }
    };
    // From a thread: the job may write all its output before it reads its input.
    let feeder = child.stdin.take().map(|mut w| {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            // A job that stops reading early is no error (as with GNU parallel's --pipe).
            let _ = w.write_all(&data);
        })
    });
    let readers = [
        child.stdout.take().map(|r| keep(Box::new(r))),
        child.stderr.take().map(|r| keep(Box::new(r))),
    ];
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let killpg = |sig| {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    };
    let status = match timeout {
        None => done_rx.recv().ok(),
        Some(t) => match done_rx.recv_timeout(t) {
            Ok(s) => Some(s),
            Err(_) => {
                killpg(nix::sys::signal::Signal::SIGTERM);
                outcome.exitval = -1;
                match done_rx.recv_timeout(GRACE) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        killpg(nix::sys::signal::Signal::SIGKILL);
                        done_rx.recv().ok()
                    }
                }
            }
        },
    };
    let _ = waiter.join();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let [out, err] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    outcome.runtime_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match status {
        Some(Ok(s)) => {
            if outcome.exitval != -1 {
                outcome.exitval = s.code().unwrap_or(-1);
            }
            outcome.signal = s.signal().unwrap_or(0);
        }
        _ => outcome.exitval = -1,
    }
    outcome.stdout = BASE64.encode(out);
    outcome.stderr = BASE64.encode(err);
    outcome
}

/// Reads `r` to its end in a thread, keeping the first [`MAX_OUTPUT`] bytes.
fn keep(mut r: Box<dyn Read + Send>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 1 << 16];
        let mut dropped = 0u64;
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&buf[..room]);
                    dropped += (n - room) as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if dropped > 0 {
            kept.extend_from_slice(
                format!("\n[multiproc worker: {dropped} more bytes dropped]\n").as_bytes(),
            );
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(cmd: &str) -> RemoteJob {
        RemoteJob {
            seq: 3,
            attempt: 1,
            command: cmd.as_bytes().to_vec(),
            timeout: None,
            input: None,
        }
    }

    #[test]
    fn a_signed_job_verifies_only_with_its_key_and_queue() {
        let j = SignedJob::new(b"key", "run", "r1", "run.outcomes.r1", &job("echo a"));
        assert_eq!(j.verify(b"key", "run").expect("ours").0, b"echo a");
        assert!(
            j.verify(b"other", "run")
                .expect_err("key")
                .contains("bad signature")
        );
        assert!(
            j.verify(b"key", "elsewhere")
                .expect_err("queue")
                .contains("replayed")
        );
        // Any field changed breaks the signature: the command, the outcome queue, the try.
        let mut forged = SignedJob::new(b"key", "run", "r1", "run.outcomes.r1", &job("echo a"));
        forged.cmd = BASE64.encode("rm -rf ~");
        assert!(forged.verify(b"key", "run").is_err());
        let mut moved = SignedJob::new(b"key", "run", "r1", "run.outcomes.r1", &job("echo a"));
        moved.results = "theirs".into();
        assert!(moved.verify(b"key", "run").is_err());
        let mut again = SignedJob::new(b"key", "run", "r1", "run.outcomes.r1", &job("echo a"));
        again.attempt = 2;
        assert!(again.verify(b"key", "run").is_err());
    }

    #[test]
    fn outcomes_verify_only_for_their_run() {
        let job = |seq, timeout| Run {
            seq,
            attempt: 1,
            run: "r1",
            host: "h",
            timeout,
        };
        let sh = std::path::Path::new("/bin/sh");
        let o = execute(sh, b"cat; echo err >&2; exit 3", b"out\n", &job(5, None)).sign(b"key");
        let r = o.verify(b"key", "r1").expect("ours");
        assert_eq!((r.seq, r.exitval, r.signal), (5, 3, 0));
        assert_eq!(
            (r.stdout.as_slice(), r.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert!(o.verify(b"key", "r2").is_err());
        assert!(o.verify(b"nope", "r1").is_err());
    }

    #[test]
    fn a_job_over_its_timeout_is_killed_with_its_group() {
        let job = Run {
            seq: 1,
            attempt: 1,
            run: "r",
            host: "h",
            timeout: Some(Duration::from_millis(100)),
        };
        let o = execute(
            std::path::Path::new("/bin/sh"),
            b"sleep 30 & wait",
            b"",
            &job,
        );
        assert_eq!(o.exitval, -1);
        assert_eq!(o.signal, nix::sys::signal::Signal::SIGTERM as i32);
    }
}
