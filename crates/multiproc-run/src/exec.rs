//! Running the jobs of `multiproc run`.
//!
//! One thread does it all: it spawns the jobs (`posix_spawn`, see [`super::spawn`]), each in
//! its own process group, and then waits in `poll(2)` on every running job's stdout and stderr
//! pipes, on SIGCHLD, SIGINT, SIGTERM and SIGHUP (signalfds on Linux, see [`SignalSource`]),
//! and on the input thread's wake-up socket, with a timeout at the next
//! deadline (a job's `--timeout`, the SIGKILL that follows a SIGTERM, `--delay`,
//! `--retry-delay`). Children are reaped with `waitpid(-1, WNOHANG)` when SIGCHLD says so.
//! Killing a job means SIGTERM to its process group, then SIGKILL to the group after a grace
//! period, so that its own children die with it.
//!
//! A command that a shell would run as it is (a program and plain words, see
//! [`Template::plain_program`]) skips the shell: the program is looked up in `PATH` once and
//! spawned directly, which halves the cost of a short job. Should that spawn fail, the job goes
//! through the shell after all, which reports the error as it always would.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::time::TimeSpec;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::blocks;
use super::input::{self, Feed, Job};
use super::joblog::{Entry, Joblog};
use super::output::{Output, Stream};
use super::progress::{self, Meter};
use super::remote::{Remote, RemoteJob, RemoteResult, ResultSink};
use super::spawn::{Spawned, Spawner, c_string};
use super::template::{Ctx, Template, quote};
use super::{Config, Halt, When, Why};

/// How long a job has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_millis(500);

/// Why a job was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Killed {
    /// It ran past `--timeout`.
    Timeout,
    /// The run is stopping (`--halt now`, Ctrl-C, SIGTERM).
    Stop,
}

/// A running job.
struct Running {
    /// What it runs.
    job: Job,
    /// Which try this is, from 1.
    attempt: u64,
    /// Its job slot.
    slot: usize,
    /// Its pid, which is also its process group.
    pid: Pid,
    /// Its stdout, until end of file.
    out: Option<File>,
    /// Its stderr, until end of file.
    err: Option<File>,
    /// Our copies of its pipes' write ends, closed once it is reaped.
    _writers: [std::os::fd::OwnedFd; 2],
    /// With `--pipe`: its stdin, until its block is written (or it stops reading).
    input: Option<File>,
    /// How much of its block is written.
    written: usize,
    /// When it started (for the joblog).
    start_wall: SystemTime,
    /// When it started.
    started: Instant,
    /// When `--timeout` kills it.
    deadline: Option<Instant>,
    /// Why it was killed, if it was.
    killed: Option<Killed>,
    /// When its group gets SIGKILL, after the SIGTERM.
    kill_at: Option<Instant>,
}

/// How a job's try ended.
struct Ended {
    /// When it started.
    start_wall: SystemTime,
    /// How long it ran.
    runtime: Duration,
    /// Its exit status, -1 when killed.
    exitval: i32,
    /// The signal that ended it, 0 if none.
    signal: i32,
    /// Where it ran, when not here (`--broker`).
    host: Option<String>,
}

/// A job sent to a [`Remote`], until its outcome comes back.
struct Away {
    /// What it runs.
    job: Job,
    /// Which try this is.
    attempt: u64,
    /// Its job slot.
    slot: usize,
}

/// A failed job waiting for its next try.
struct Retry {
    /// When it may start.
    at: Instant,
    /// The job.
    job: Job,
    /// The try it will be.
    attempt: u64,
}

/// Signals, as something poll(2) waits on.
///
/// On Linux, a signalfd: the signals stay blocked in every thread of the runner (they are
/// blocked before any other thread starts; jobs start with nothing blocked) and are read from
/// the descriptor. A handler and its self-pipe would cost a signal frame, a write and a read
/// per job for SIGCHLD: 3–6 % of the jobs per second of a run of `true`. Elsewhere, that
/// self-pipe (signal-hook's handlers).
struct SignalSource {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fd: nix::sys::signalfd::SignalFd,
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pipe: UnixStream,
}

impl SignalSource {
    /// Starts listening for `signals`. Call it before the runner starts any thread.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn listen(signals: &[Signal]) -> anyhow::Result<SignalSource> {
        use nix::sys::signal::{SigSet, SigmaskHow};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut mask = SigSet::empty();
        for &s in signals {
            mask.add(s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .with_context(|| format!("cannot block {signals:?}"))?;
        for &s in signals {
            // An ignored signal is discarded before a signalfd can see it, and a shell starts
            // background commands with SIGINT ignored: take the default disposition, whose
            // action never runs while the signal is blocked.
            // SAFETY: the default disposition runs no code of ours.
            unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) }
                .with_context(|| format!("cannot reset {s}"))?;
        }
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .with_context(|| format!("cannot create a signalfd for {signals:?}"))?;
        Ok(SignalSource { fd })
    }

    /// Starts listening for `signals`.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn listen(signals: &[Signal]) -> anyhow::Result<SignalSource> {
        let (r, w) = UnixStream::pair().context("cannot create a socket pair")?;
        r.set_nonblocking(true)?;
        for &s in signals {
            signal_hook::low_level::pipe::register(s as i32, w.try_clone()?)
                .with_context(|| format!("cannot handle {s}"))?;
        }
        Ok(SignalSource { pipe: r })
    }

    /// What poll(2) waits on.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return self.fd.as_fd();
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return self.pipe.as_fd();
    }

    /// Consumes the signals that arrived; how many.
    fn drain(&mut self) -> usize {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let mut n = 0;
            while let Ok(Some(_)) = self.fd.read_signal() {
                n += 1;
            }
            n
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        drain(&mut self.pipe).0
    }
}

/// The signals the runner waits for.
struct Signals {
    chld: SignalSource,
    /// SIGINT and SIGTERM: stop now.
    stop: SignalSource,
    /// SIGHUP: start no new jobs.
    hup: SignalSource,
}

impl Signals {
    /// Starts listening for SIGCHLD, SIGINT, SIGTERM and SIGHUP. Call it before the runner
    /// starts any thread.
    fn listen() -> anyhow::Result<Signals> {
        Ok(Signals {
            chld: SignalSource::listen(&[Signal::SIGCHLD])?,
            stop: SignalSource::listen(&[Signal::SIGINT, Signal::SIGTERM])?,
            hup: SignalSource::listen(&[Signal::SIGHUP])?,
        })
    }
}

/// Reads everything waiting in a non-blocking socket; returns how many bytes, and whether the
/// other end is closed.
fn drain(s: &mut UnixStream) -> (usize, bool) {
    let mut buf = [0u8; 64];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (n, true),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (n, false),
        }
    }
}

/// Runs everything; returns the exit status.
pub(crate) fn run(cfg: Config, remote: Option<Box<dyn Remote>>) -> anyhow::Result<u8> {
    let (wake_rx, wake_tx) = UnixStream::pair().context("cannot create a socket pair")?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let start = |wake: UnixStream| match cfg.pipe {
        Some((spec, source)) => blocks::start(source, spec, wake),
        None => input::start(cfg.input, wake),
    };
    if cfg.dry_run {
        let rx = start(wake_tx)?;
        return dry_run(&cfg.template, cfg.shell.is_none(), cfg.jobs, &rx);
    }
    // Before the input thread starts: the signals must be blocked in every thread.
    let signals = Signals::listen()?;
    // The input first: a missing file is an error before anything else happens.
    let rx = start(wake_tx)?;
    let (joblog, skip) = match &cfg.joblog {
        Some(p) => {
            let (log, skip) = Joblog::open(p, cfg.resume)?;
            (Some(log), skip)
        }
        None => (None, HashSet::new()),
    };
    let direct = match &cfg.shell {
        Some(_) => cfg
            .template
            .plain_program()
            .and_then(resolve)
            .and_then(|p| CString::new(p.into_os_string().into_vec()).ok()),
        None => None,
    };
    let shell = match cfg.shell {
        Some(sh) => Some(c_string(sh.into_vec(), "shell's path")?),
        None => None,
    };
    let spawner = Spawner::new().context("cannot prepare to start jobs")?;
    let bar = (cfg.bar && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} {percent}% ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    // Where no terminal draws the bar, and for --eta and --progress: GNU parallel's lines.
    let style = match (cfg.progress, bar.is_some()) {
        (Some(s), false) => Some(s),
        (Some(progress::Style::Bar), true) | (None, _) => None,
        (Some(s), true) => Some(s),
    };
    let output = Output::new(cfg.output.clone(), bar.clone())?;
    let slots = slots_for(cfg.jobs);
    let mut r = Runner {
        template: cfg.template,
        shell,
        direct,
        spawner,
        slots,
        jobs_file: cfg.jobs_file,
        timeout: cfg.timeout,
        retries: cfg.retries,
        retry_delay: cfg.retry_delay,
        delay: cfg.delay,
        verbose: cfg.verbose,
        halt: cfg.halt,
        output,
        joblog,
        skip,
        bar,
        meter: style.map(|s| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            Meter::new(s, cpus, slots)
        }),
        last_args: Vec::new(),
        rx: Some(rx),
        wake: Some(wake_rx),
        signals,
        pending: VecDeque::new(),
        retry_queue: Vec::new(),
        running: HashMap::new(),
        remote: None,
        outcomes: None,
        away: HashMap::new(),
        pending_kills: Vec::new(),
        free_slots: BinaryHeap::new(),
        used_slots: 0,
        next_start: None,
        stopping: false,
        descriptor_bound: cfg.jobs.is_none() && remote.is_none(),
        forced: None,
        input_error: false,
        total_jobs: 0,
        started: 0,
        completed: 0,
        failed: 0,
        halt_exit: None,
        buf: vec![0; 1 << 16],
    };
    let counted = r.meter.is_some() && style != Some(progress::Style::Progress);
    if r.halt.pct || r.bar.is_some() || counted {
        // Percentages, the bar and the ETA need the number of jobs: read all the input first.
        r.read_all_input();
        if let Some(bar) = &r.bar {
            bar.set_length(r.pending.len() as u64);
        }
        if let Some(m) = &mut r.meter {
            m.set_total(r.pending.len() as u64);
        }
    }
    r.total_jobs = r.pending.len() as u64;
    if let Some(mut remote) = remote {
        let (wake_rx, wake_tx) = UnixStream::pair().context("cannot create a socket pair")?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, rx) = sync_channel(1024);
        remote.start(ResultSink::new(tx, wake_tx))?;
        r.remote = Some(remote);
        r.outcomes = Some((rx, wake_rx));
    }
    let mut res = r.main_loop();
    if let Some(remote) = &mut r.remote {
        // Stop taking outcomes before tidying up after them.
        r.outcomes = None;
        let finished = remote.finish();
        res = res.and(finished);
    }
    if res.is_err() {
        // An error of ours (the joblog cannot be written, say): leave no job behind.
        for job in r.running.values() {
            let _ = killpg(job.pid, Signal::SIGKILL);
        }
    }
    r.output.close();
    if let Some(bar) = &r.bar {
        bar.finish();
    }
    if let Some(m) = &r.meter {
        m.update(0, r.completed, r.started, &r.last_args);
        m.finish();
    }
    res?;
    Ok(r.exit_status())
}

/// GNU parallel's warning that descriptors allow only `most` jobs at once.
fn warn_few_descriptors(most: usize) {
    eprintln!(
        "multiproc: Warning: Only enough file handles to run {most} jobs in parallel.\n\
         multiproc: Warning: Try running 'multiproc run -j0 -N {most} --pipe multiproc run \
         -j0'\n\
         multiproc: Warning: or increasing 'ulimit -n' (try: ulimit -n `ulimit -Hn`)\n\
         multiproc: Warning: or increasing 'nofile' in /etc/security/limits.conf\n\
         multiproc: Warning: or increasing /proc/sys/fs/file-max"
    );
}

/// How many jobs can run at once when `-j 0` sets no limit: as many as the descriptors allow.
fn unlimited_slots() -> usize {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let open = std::fs::read_dir("/proc/self/fd").map_or(32, |d| d.count() as u64);
    // Four descriptors per job (its pipes' two ends), and a few to spare for the joblog,
    // `--results` and `--files`.
    usize::try_from(nofile.saturating_sub(open + 8) / 4)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// `-j N` lowered to what the descriptors allow, with GNU parallel's warning.
fn slots_for(jobs: Option<usize>) -> usize {
    let most = unlimited_slots();
    match jobs {
        Some(n) if n > most => {
            warn_few_descriptors(most);
            most
        }
        Some(n) => n,
        None => most,
    }
}

/// `--dry-run`: prints each job's command.
fn dry_run(
    template: &Template,
    no_shell: bool,
    jobs: Option<usize>,
    rx: &Receiver<Feed>,
) -> anyhow::Result<u8> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let slots = jobs.unwrap_or(usize::MAX) as u64;
    let mut line = Vec::new();
    while let Ok(feed) = rx.recv() {
        match feed {
            Feed::Jobs(jobs) => {
                for job in jobs {
                    let ctx = Ctx::new(&job.args, job.seq, ((job.seq - 1) % slots + 1) as usize);
                    line.clear();
                    command_line(template, no_shell, &ctx, &mut line);
                    line.push(b'\n');
                    out.write_all(&line)?;
                }
            }
            Feed::Error(e) => {
                out.flush()?;
                anyhow::bail!(e);
            }
        }
    }
    out.flush()?;
    Ok(0)
}

/// A job's command as shown (`--dry-run`, joblog, messages): the shell line, or the quoted
/// argv with `--no-shell`.
fn command_line(template: &Template, no_shell: bool, ctx: &Ctx<'_>, out: &mut Vec<u8>) {
    if no_shell {
        for (i, w) in template.argv(ctx).iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(&quote(w));
        }
    } else {
        template.shell_line(ctx, out);
    }
}

/// Finds `name` in `PATH` as a shell would, unless something could make the shell run
/// another thing: `BASH_ENV`, or an exported bash function of that name.
fn resolve(name: &[u8]) -> Option<PathBuf> {
    if std::env::var_os("BASH_ENV").is_some() {
        return None;
    }
    let mut func = b"BASH_FUNC_".to_vec();
    func.extend_from_slice(name);
    func.extend_from_slice(b"%%");
    if std::env::var_os(OsStr::from_bytes(&func)).is_some() {
        return None;
    }
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let name = OsStr::from_bytes(name);
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// The runner's state.
struct Runner {
    /// The command.
    template: Template,
    /// The shell, `None` with `--no-shell`.
    shell: Option<CString>,
    /// The program to spawn directly, when the shell can be skipped.
    direct: Option<CString>,
    /// What every job is spawned with.
    spawner: Spawner,
    /// Jobs at once.
    slots: usize,
    /// `-j FILE`: read again as each job finishes.
    jobs_file: Option<PathBuf>,
    /// `--timeout`.
    timeout: Option<Duration>,
    /// Tries per job (0: no limit).
    retries: u64,
    /// `--retry-delay`.
    retry_delay: Duration,
    /// `-v`.
    verbose: bool,
    /// `--delay`.
    delay: Duration,
    /// `--halt`.
    halt: Halt,
    /// The printer.
    output: Output,
    /// `--joblog`.
    joblog: Option<Joblog>,
    /// The sequence numbers `--resume` skips.
    skip: HashSet<u64>,
    /// The progress bar, if drawn.
    bar: Option<ProgressBar>,
    /// The progress as text lines (`--eta`, `--progress`, `--bar` without a terminal).
    meter: Option<Meter>,
    /// The arguments of the last job started, for the meter.
    last_args: Vec<u8>,
    /// The input feed, until it ends.
    rx: Option<Receiver<Feed>>,
    /// The input thread's wake-up socket, until the thread closes it.
    wake: Option<UnixStream>,
    /// The signal self-pipes.
    signals: Signals,
    /// Jobs read and not started.
    pending: VecDeque<Job>,
    /// Failed jobs waiting for another try.
    retry_queue: Vec<Retry>,
    /// The running jobs, by pid.
    running: HashMap<i32, Running>,
    /// With `--broker`: where jobs go instead.
    remote: Option<Box<dyn Remote>>,
    /// The outcomes of jobs sent away, and the socket that says some came.
    outcomes: Option<(Receiver<Result<RemoteResult, String>>, UnixStream)>,
    /// The jobs sent away and not back, by sequence number.
    away: HashMap<u64, Away>,
    /// Process groups of reaped jobs that still get their SIGKILL.
    pending_kills: Vec<(Pid, Instant)>,
    /// Free job slots below `used_slots`.
    free_slots: BinaryHeap<Reverse<usize>>,
    /// How many slot numbers have been handed out.
    used_slots: usize,
    /// `--delay`: no job starts before this.
    next_start: Option<Instant>,
    /// No new job starts.
    stopping: bool,
    /// `-j0`: the descriptors bound the job slots; GNU parallel's warning is due the first
    /// time a job waits for one.
    descriptor_bound: bool,
    /// Stopped at once: by this signal (the exit status is 128 + it), or by SIGINT/SIGTERM
    /// (`None`: 255).
    forced: Option<Option<i32>>,
    /// Reading the input failed.
    input_error: bool,
    /// How many jobs there are in all, when read ahead (for `--halt` percentages).
    total_jobs: u64,
    /// Jobs started (first tries).
    started: u64,
    /// Jobs finished for good.
    completed: u64,
    /// Jobs finished for good that failed.
    failed: u64,
    /// The exit status `--halt` decided on.
    halt_exit: Option<u8>,
    /// The read buffer.
    buf: Vec<u8>,
}

impl Runner {
    /// Receives all of the input into `pending`.
    fn read_all_input(&mut self) {
        while let Some(rx) = &self.rx {
            match rx.recv() {
                Ok(Feed::Jobs(jobs)) => self.pending.extend(jobs),
                Ok(Feed::Error(e)) => self.input_failed(&e),
                Err(_) => self.rx = None,
            }
        }
    }

    /// Reports an input error; the run goes on with what was read, and exits with 255.
    fn input_failed(&mut self, e: &str) {
        self.output.message(&format!("multiproc: Error: {e}"));
        self.input_error = true;
        self.rx = None;
    }

    /// The next job to start, if one is ready; `None` also when waiting for input.
    fn next_job(&mut self, now: Instant) -> Option<(Job, u64)> {
        if let Some(i) = (0..self.retry_queue.len())
            .filter(|&i| self.retry_queue[i].at <= now)
            .min_by_key(|&i| self.retry_queue[i].at)
        {
            let r = self.retry_queue.swap_remove(i);
            return Some((r.job, r.attempt));
        }
        loop {
            if let Some(job) = self.pending.pop_front() {
                if self.skip.contains(&job.seq) {
                    self.output.skip(job.seq);
                    continue;
                }
                return Some((job, 1));
            }
            if !self.receive() {
                return None;
            }
        }
    }

    /// Takes what the input thread has sent, without waiting; returns whether anything came
    /// (jobs, an error, or the end of the input).
    fn receive(&mut self) -> bool {
        let Some(rx) = self.rx.as_ref() else {
            return false;
        };
        match rx.try_recv() {
            Ok(Feed::Jobs(jobs)) => self.pending.extend(jobs),
            Ok(Feed::Error(e)) => self.input_failed(&e),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => self.rx = None,
        }
        true
    }

    /// Starts jobs while slots are free and jobs ready.
    fn start_jobs(&mut self) -> anyhow::Result<()> {
        if self.descriptor_bound
            && self.busy() >= self.slots
            && (!self.pending.is_empty() || self.receive())
        {
            // `-j0` and a job waits: as many run as the descriptors allow.
            self.descriptor_bound = false;
            self.output.flush();
            warn_few_descriptors(self.slots);
        }
        while !self.stopping && self.busy() < self.slots {
            let now = Instant::now();
            if self.next_start.is_some_and(|t| t > now) {
                // Waiting for `--delay`: but not after the last job (learn whether the input
                // has ended).
                while self.pending.is_empty() && self.receive() {}
                return Ok(());
            }
            let Some((job, attempt)) = self.next_job(now) else {
                return Ok(());
            };
            if attempt == 1 {
                self.started += 1;
            }
            if let Some(m) = &self.meter {
                self.last_args.clear();
                super::template::join(&job.args, &mut self.last_args);
                // As GNU parallel: the progress is shown again as each job starts.
                self.output.flush();
                m.update(self.busy(), self.completed, self.started, &self.last_args);
            }
            let slot = match self.free_slots.pop() {
                Some(Reverse(s)) => s,
                None => {
                    self.used_slots += 1;
                    self.used_slots
                }
            };
            self.output.start(job.seq, slot, &job.args);
            if self.verbose {
                let mut line = self.shown(&job, slot);
                line.push(b'\n');
                self.output.data(job.seq, Stream::Out, &line);
            }
            if self.remote.is_some() {
                self.send_away(job, attempt, slot)?;
                if !self.delay.is_zero() {
                    self.next_start = Some(Instant::now() + self.delay);
                }
                continue;
            }
            match self.spawn(&job, slot) {
                Ok(spawned) => {
                    let started = Instant::now();
                    self.running.insert(
                        spawned.pid.as_raw(),
                        Running {
                            out: Some(spawned.out),
                            err: Some(spawned.err),
                            _writers: spawned.writers,
                            input: spawned.input,
                            written: 0,
                            job,
                            attempt,
                            slot,
                            pid: spawned.pid,
                            start_wall: SystemTime::now(),
                            started,
                            deadline: self.timeout.map(|t| started + t),
                            killed: None,
                            kill_at: None,
                        },
                    );
                    self.write_input(spawned.pid.as_raw());
                }
                Err(e) => {
                    // Not even the shell could be spawned (out of processes or descriptors):
                    // the job fails as a shell's "cannot execute" would.
                    let msg = format!("multiproc: cannot start job {}: {e}\n", job.seq);
                    self.output.data(job.seq, Stream::Err, msg.as_bytes());
                    self.free_slots.push(Reverse(slot));
                    let end = Ended {
                        start_wall: SystemTime::now(),
                        runtime: Duration::ZERO,
                        exitval: 126,
                        signal: 0,
                        host: None,
                    };
                    self.done(job, attempt, slot, end)?;
                }
            }
            if !self.delay.is_zero() {
                self.next_start = Some(Instant::now() + self.delay);
            }
        }
        Ok(())
    }

    /// Hands a job to the [`Remote`].
    fn send_away(&mut self, job: Job, attempt: u64, slot: usize) -> anyhow::Result<()> {
        let mut command = Vec::new();
        self.template
            .shell_line(&Ctx::new(&job.args, job.seq, slot), &mut command);
        let sent = RemoteJob {
            seq: job.seq,
            attempt,
            command,
            timeout: self.timeout,
            input: job.input.clone(),
        };
        if let Some(remote) = &mut self.remote {
            remote.send(sent)?;
        }
        self.away.insert(job.seq, Away { job, attempt, slot });
        Ok(())
    }

    /// Takes the outcomes that came back.
    fn take_outcomes(&mut self) -> anyhow::Result<()> {
        loop {
            let Some((rx, _)) = &self.outcomes else {
                return Ok(());
            };
            let outcome = match rx.try_recv() {
                Ok(o) => o,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => Err("the outcomes stopped coming".to_string()),
            };
            let r = match outcome {
                Ok(r) => r,
                Err(e) => {
                    self.outcomes = None;
                    if self.away.is_empty() && self.stopping {
                        return Ok(());
                    }
                    anyhow::bail!("{e}");
                }
            };
            // A job done twice (its worker died after running it) or late (an earlier try):
            // the first outcome of its current try counts.
            let Some(a) = self.away.remove(&r.seq) else {
                continue;
            };
            if a.attempt != r.attempt {
                self.away.insert(r.seq, a);
                continue;
            }
            self.free_slots.push(Reverse(a.slot));
            self.output.data(a.job.seq, Stream::Out, &r.stdout);
            self.output.data(a.job.seq, Stream::Err, &r.stderr);
            let end = Ended {
                start_wall: r.start,
                runtime: r.runtime,
                exitval: r.exitval,
                signal: r.signal,
                host: Some(r.host),
            };
            self.done(a.job, a.attempt, a.slot, end)?;
        }
    }

    /// Jobs running here or away.
    fn busy(&self) -> usize {
        self.running.len() + self.away.len()
    }

    /// Spawns a job.
    fn spawn(&self, job: &Job, slot: usize) -> std::io::Result<Spawned> {
        let ctx = Ctx::new(&job.args, job.seq, slot);
        let piped = job.input.is_some();
        let argv = |ctx: &Ctx<'_>| -> std::io::Result<Vec<CString>> {
            self.template
                .argv(ctx)
                .into_iter()
                .map(|w| c_string(w, "command"))
                .collect()
        };
        if let Some(prog) = &self.direct
            && let Ok(spawned) = self
                .spawner
                .spawn(prog, false, &argv(&ctx)?, job.seq, slot, piped)
        {
            return Ok(spawned);
        }
        match &self.shell {
            Some(sh) => {
                let mut line = Vec::new();
                self.template.shell_line(&ctx, &mut line);
                let argv = [sh.clone(), c"-c".to_owned(), c_string(line, "command")?];
                self.spawner.spawn(sh, false, &argv, job.seq, slot, piped)
            }
            None => {
                let argv = argv(&ctx)?;
                let prog = argv.first().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command")
                })?;
                self.spawner.spawn(prog, true, &argv, job.seq, slot, piped)
            }
        }
    }

    /// The loop: start jobs, wait for events, handle them, until all is done.
    fn main_loop(&mut self) -> anyhow::Result<()> {
        loop {
            self.start_jobs()?;
            if self.output.broken() && self.forced.is_none() {
                self.force(Some(Signal::SIGPIPE as i32));
            }
            let input_left = !self.pending.is_empty() || self.rx.is_some();
            let work_left = !self.stopping && (input_left || !self.retry_queue.is_empty());
            if self.busy() == 0 && self.pending_kills.is_empty() && !work_left {
                return Ok(());
            }
            self.output.flush();
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            self.wait(timeout)?;
            self.timers();
        }
    }

    /// The earliest deadline the loop must wake up for.
    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for r in self.running.values() {
            match (r.kill_at, r.deadline, r.killed) {
                (Some(k), _, _) => at(k),
                (None, Some(d), None) => at(d),
                _ => {}
            }
        }
        for &(_, t) in &self.pending_kills {
            at(t);
        }
        if !self.stopping && self.busy() < self.slots {
            for r in &self.retry_queue {
                at(r.at);
            }
            if let Some(t) = self.next_start
                && (!self.pending.is_empty() || self.rx.is_some() || !self.retry_queue.is_empty())
            {
                at(t);
            }
        }
        next
    }

    /// Waits in poll(2) for pipes, signals and input, then handles what happened.
    fn wait(&mut self, timeout: Option<Duration>) -> anyhow::Result<()> {
        let mut owners: Vec<(i32, Stream)> = Vec::with_capacity(2 * self.running.len());
        let mut inputs: Vec<i32> = Vec::new();
        let ready: Vec<(i32, Stream)>;
        let writable: Vec<i32>;
        let (chld, stop, hup, wake, outcomes);
        {
            let ev = PollFlags::POLLIN;
            let mut fds = Vec::with_capacity(4 + 2 * self.running.len());
            fds.push(PollFd::new(self.signals.chld.as_fd(), ev));
            fds.push(PollFd::new(self.signals.stop.as_fd(), ev));
            fds.push(PollFd::new(self.signals.hup.as_fd(), ev));
            if let Some(w) = &self.wake {
                fds.push(PollFd::new(w.as_fd(), ev));
            }
            for (&pid, r) in &self.running {
                if let Some(f) = &r.out {
                    fds.push(PollFd::new(f.as_fd(), ev));
                    owners.push((pid, Stream::Out));
                }
                if let Some(f) = &r.err {
                    fds.push(PollFd::new(f.as_fd(), ev));
                    owners.push((pid, Stream::Err));
                }
            }
            // Stdins last, so that the pipes above keep their places after `first`.
            for (&pid, r) in &self.running {
                if let Some(f) = &r.input {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                    inputs.push(pid);
                }
            }
            // The outcomes' socket last of all, so that the others keep their places.
            if let Some((_, w)) = &self.outcomes {
                fds.push(PollFd::new(w.as_fd(), ev));
            }
            match ppoll(&mut fds, timeout.map(TimeSpec::from), None) {
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(()),
                Err(e) => return Err(std::io::Error::from(e)).context("poll failed"),
            }
            let hit = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            chld = hit(&fds[0]);
            stop = hit(&fds[1]);
            hup = hit(&fds[2]);
            let first = if self.wake.is_some() { 4 } else { 3 };
            wake = first == 4 && hit(&fds[3]);
            ready = fds[first..first + owners.len()]
                .iter()
                .zip(&owners)
                .filter(|(fd, _)| hit(fd))
                .map(|(_, o)| *o)
                .collect();
            let end = first + owners.len() + inputs.len();
            outcomes = self.outcomes.is_some() && hit(&fds[end]);
            writable = fds[first + owners.len()..end]
                .iter()
                .zip(&inputs)
                .filter(|(fd, _)| hit(fd))
                .map(|(_, &pid)| pid)
                .collect();
        }
        for (pid, stream) in ready {
            self.read_pipe(pid, stream, false);
        }
        for pid in writable {
            self.write_input(pid);
        }
        if outcomes {
            if let Some((_, w)) = &mut self.outcomes {
                drain(w);
            }
            self.take_outcomes()?;
        }
        if wake
            && let Some(w) = &mut self.wake
            && drain(w).1
        {
            self.wake = None;
        }
        if stop && self.signals.stop.drain() > 0 {
            // As GNU parallel: Ctrl-C or SIGTERM kills the jobs, silently, and exits 255.
            self.force(None);
        }
        if hup && self.signals.hup.drain() > 0 {
            self.on_sighup();
        }
        if chld {
            self.signals.chld.drain();
            self.reap()?;
        }
        Ok(())
    }

    /// Writes what a job's stdin pipe takes of its block; closes the pipe when all is written
    /// or the job no longer reads (EPIPE: GNU parallel does not count that as an error).
    fn write_input(&mut self, pid: i32) {
        let Some(r) = self.running.get_mut(&pid) else {
            return;
        };
        let (Some(f), Some(block)) = (&mut r.input, &r.job.input) else {
            r.input = None;
            return;
        };
        while r.written < block.len() {
            match f.write(&block[r.written..]) {
                Ok(n) => r.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        r.input = None;
    }

    /// Reads what a job's pipe holds: once (after poll said so), or until it would block
    /// (`all`, once the job has exited). Closes it at end of file.
    fn read_pipe(&mut self, pid: i32, stream: Stream, all: bool) {
        let Some(r) = self.running.get_mut(&pid) else {
            return;
        };
        let seq = r.job.seq;
        let file = match stream {
            Stream::Out => &mut r.out,
            Stream::Err => &mut r.err,
        };
        let Some(f) = file else {
            return;
        };
        if all && set_nonblocking(f).is_err() {
            *file = None;
            return;
        }
        loop {
            match f.read(&mut self.buf) {
                Ok(0) => {
                    *file = None;
                    return;
                }
                Ok(n) => {
                    self.output.data(seq, stream, &self.buf[..n]);
                    if !all {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The job has exited: what it wrote is in (we hold a write end ourselves,
                    // and a child of the job may hold one too).
                    *file = None;
                    return;
                }
                Err(_) => {
                    *file = None;
                    return;
                }
            }
        }
    }

    /// Reaps every child that has exited and finishes its job.
    fn reap(&mut self) -> anyhow::Result<()> {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Err(Errno::EINTR) => {}
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let raw = pid.as_raw();
                    if self.running.contains_key(&raw) {
                        self.read_pipe(raw, Stream::Out, true);
                        self.read_pipe(raw, Stream::Err, true);
                        if let Some(r) = self.running.remove(&raw) {
                            self.exited(r, status)?;
                        }
                    }
                }
                Err(e) => return Err(std::io::Error::from(e)).context("waitpid failed"),
            }
        }
    }

    /// A job's process has exited: log it, print it, or try it again.
    fn exited(&mut self, r: Running, status: WaitStatus) -> anyhow::Result<()> {
        if let Some(at) = r.kill_at {
            self.pending_kills.push((r.pid, at));
        }
        self.free_slots.push(Reverse(r.slot));
        let runtime = r.started.elapsed();
        let (exitval, signal) = match r.killed {
            Some(_) => (-1, signal_of(&status).unwrap_or(Signal::SIGTERM as i32)),
            None => (
                exit_code(&status).unwrap_or(0),
                signal_of(&status).unwrap_or(0),
            ),
        };
        if r.killed == Some(Killed::Stop) {
            // Killed because the run stops: neither printed nor logged (`--resume` runs it
            // again).
            self.output.discard(r.job.seq);
            return Ok(());
        }
        if r.killed == Some(Killed::Timeout) {
            let cmd = self.shown(&r.job, r.slot);
            self.output.message(&format!(
                "multiproc: Warning: This job was killed because it timed out:\n\
                 multiproc: Warning: {}",
                String::from_utf8_lossy(&cmd)
            ));
        }
        let end = Ended {
            start_wall: r.start_wall,
            runtime,
            exitval,
            signal,
            host: None,
        };
        self.done(r.job, r.attempt, r.slot, end)
    }

    /// A job's try is over: try again, or log and print it.
    fn done(&mut self, job: Job, attempt: u64, slot: usize, end: Ended) -> anyhow::Result<()> {
        let Ended {
            start_wall,
            runtime,
            exitval,
            signal,
            host,
        } = end;
        if let Some(f) = &self.jobs_file {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            // A file being rewritten may read as nothing: keep the number until it says one.
            if let Ok(n) = crate::jobs_from_file(f, cpus) {
                self.slots = n.map_or_else(unlimited_slots, |n| n.min(unlimited_slots()));
            }
        }
        let failed = exitval != 0 || signal != 0;
        if failed && !self.stopping && (self.retries == 0 || attempt < self.retries) {
            let factor = 2u32.saturating_pow(u32::try_from(attempt - 1).unwrap_or(u32::MAX));
            let wait = self
                .retry_delay
                .checked_mul(factor)
                .unwrap_or(Duration::from_secs(86_400));
            self.retry_queue.push(Retry {
                at: Instant::now() + wait,
                job,
                attempt: attempt + 1,
            });
            return Ok(());
        }
        let cmd = if self.joblog.is_some() || self.halt.when != When::Never {
            self.shown(&job, slot)
        } else {
            Vec::new()
        };
        // A joblog on stdout follows the job's output there, as GNU parallel's does.
        let log_on_stdout = self.joblog.as_ref().is_some_and(Joblog::to_stdout);
        if log_on_stdout {
            self.output.finish(job.seq)?;
            self.output.flush();
        }
        if let Some(log) = &mut self.joblog {
            let start = start_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            log.write(&Entry {
                seq: job.seq,
                host: host.as_deref().unwrap_or(":"),
                start,
                runtime: runtime.as_secs_f64(),
                sent: job.input.as_ref().map_or(0, |b| b.len() as u64),
                received: self.output.received(job.seq),
                exitval,
                signal,
                command: &cmd,
            })
            .context("writing the joblog")?;
        }
        if !log_on_stdout {
            self.output.finish(job.seq)?;
        }
        self.completed += 1;
        if failed {
            self.failed += 1;
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        if let Some(m) = &self.meter {
            self.output.flush();
            m.update(
                self.running.len(),
                self.completed,
                self.started,
                &self.last_args,
            );
        }
        self.check_halt(failed, exitval, signal, &cmd);
        Ok(())
    }

    /// The command line of a job, as shown.
    fn shown(&self, job: &Job, slot: usize) -> Vec<u8> {
        let mut cmd = Vec::new();
        let ctx = Ctx::new(&job.args, job.seq, slot);
        command_line(&self.template, self.shell.is_none(), &ctx, &mut cmd);
        cmd
    }

    /// GNU parallel's `should_we_halt`, after a job finished.
    fn check_halt(&mut self, failed: bool, exitval: i32, signal: i32, cmd: &[u8]) {
        let h = self.halt;
        if h.when == When::Never {
            return;
        }
        let cmd = String::from_utf8_lossy(cmd);
        let mut count = None;
        if failed {
            if h.why == Why::Fail {
                self.output
                    .message(&format!("multiproc: This job failed:\n{cmd}"));
                count = Some(self.failed);
            }
        } else if h.why == Why::Success {
            self.output
                .message(&format!("multiproc: This job succeeded:\n{cmd}"));
            count = Some(self.completed - self.failed);
        }
        if h.why == Why::Done {
            self.output
                .message(&format!("multiproc: This job finished:\n{cmd}"));
            count = Some(self.completed);
        }
        let Some(count) = count else {
            return;
        };
        let threshold = if h.pct {
            self.total_jobs as f64 * h.limit
        } else {
            h.limit
        };
        if (count as f64) < threshold {
            return;
        }
        if h.why == Why::Success {
            self.halt_exit = Some(0);
        } else if self.halt_exit.is_none() {
            self.halt_exit = Some(if h.pct {
                pct_of(self.failed, self.total_jobs)
            } else if h.limit == 1.0 {
                // The failing job's status, as bash reports it.
                if exitval != 0 {
                    exitval as u8
                } else {
                    (signal + 128) as u8
                }
            } else {
                self.failed.min(101) as u8
            });
        }
        self.stopping = true;
        match h.when {
            When::Now => self.kill_all(),
            _ => {
                if !self.running.is_empty() {
                    self.output.message(&format!(
                        "multiproc: Starting no more jobs. Waiting for {} jobs to finish.",
                        self.running.len()
                    ));
                }
            }
        }
    }

    /// Ctrl-C, `n` times more.
    fn on_sighup(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let mut msg = format!(
            "multiproc: SIGHUP received. No new jobs will be started.\n\
             multiproc: Waiting for these {} jobs to finish. Send SIGTERM to stop now.",
            self.busy()
        );
        let mut running: Vec<&Running> = self.running.values().collect();
        running.sort_by_key(|r| r.job.seq);
        for r in running {
            let cmd = self.shown(&r.job, r.slot);
            msg.push_str("\nmultiproc: ");
            msg.push_str(&String::from_utf8_lossy(&cmd));
        }
        self.output.message(&msg);
    }

    /// Stops now: kills every running job. `signal` is the signal that stopped the run when
    /// it sets the exit status (SIGPIPE: 141); `None` exits 255, as GNU parallel does after
    /// SIGINT or SIGTERM.
    fn force(&mut self, signal: Option<i32>) {
        if self.forced.is_none() {
            self.forced = Some(signal);
        }
        self.stopping = true;
        self.kill_all();
    }

    /// SIGTERM to every running job's group (SIGKILL follows after [`GRACE`]). Jobs sent
    /// away cannot be reached: they are forgotten (their outcomes, if any, are not waited for).
    fn kill_all(&mut self) {
        for (_, a) in self.away.drain() {
            self.output.discard(a.job.seq);
        }
        let now = Instant::now();
        for r in self.running.values_mut() {
            if r.kill_at.is_none() {
                let _ = killpg(r.pid, Signal::SIGTERM);
                r.kill_at = Some(now + GRACE);
            }
            r.killed = Some(Killed::Stop);
        }
    }

    /// Handles the deadlines that have passed: timeouts and SIGKILLs.
    fn timers(&mut self) {
        let now = Instant::now();
        for r in self.running.values_mut() {
            if let Some(k) = r.kill_at {
                if k <= now {
                    let _ = killpg(r.pid, Signal::SIGKILL);
                    r.kill_at = None;
                }
            } else if r.killed.is_none() && r.deadline.is_some_and(|d| d <= now) {
                let _ = killpg(r.pid, Signal::SIGTERM);
                r.kill_at = Some(now + GRACE);
                r.killed = Some(Killed::Timeout);
            }
        }
        self.pending_kills.retain(|&(pgid, at)| {
            if at <= now {
                let _ = killpg(pgid, Signal::SIGKILL);
                false
            } else {
                true
            }
        });
    }

    /// The exit status, once all is done.
    fn exit_status(&self) -> u8 {
        if let Some(sig) = self.forced {
            return sig.map_or(255, |sig| (128 + sig).clamp(0, 255) as u8);
        }
        if self.input_error {
            return 255;
        }
        if self.halt.when != When::Never {
            return self.halt_exit.unwrap_or_else(|| {
                if self.halt.pct {
                    pct_of(self.failed, self.started.max(1))
                } else {
                    self.failed.min(101) as u8
                }
            });
        }
        self.failed.min(101) as u8
    }
}

/// `ceil(part / whole * 100)`.
fn pct_of(part: u64, whole: u64) -> u8 {
    (part as f64 / whole.max(1) as f64 * 100.0)
        .ceil()
        .min(100.0) as u8
}

/// The exit code of a process that exited.
fn exit_code(status: &WaitStatus) -> Option<i32> {
    match *status {
        WaitStatus::Exited(_, code) => Some(code),
        _ => None,
    }
}

/// The signal that ended a process.
fn signal_of(status: &WaitStatus) -> Option<i32> {
    match *status {
        WaitStatus::Signaled(_, signal, _) => Some(signal as i32),
        _ => None,
    }
}

/// Makes reads of `f` return at once when nothing waits.
fn set_nonblocking(f: &File) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}
