//! What the tests of `multiproc run` share: starting it (and GNU parallel) in a process group
//! of its own, gathering its output, comparing the two, and cleaning up after a failed test.

#![allow(dead_code)] // Each test crate uses its own part of it.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long anything may take before a test calls it a hang.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// GNU parallel, where the comparisons look for it.
pub(crate) const GNU: &str = "/usr/bin/parallel";

/// The binary under test.
pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_multiproc")
}

/// Whether GNU parallel can be compared with. Without it: a failure under CI, a skip note
/// otherwise.
pub(crate) fn have_gnu(test: &str) -> bool {
    if Path::new(GNU).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: GNU parallel is not installed at {GNU}, and CI is set"
    );
    eprintln!("{test}: skipped: GNU parallel is not installed at {GNU}");
    false
}

/// A fresh directory, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// Makes one, its name from `tag`, the pid and a counter.
    pub(crate) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "multiproc-cli-run-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A path in it.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits a little, without `thread::sleep` (a polling loop's pause).
pub(crate) fn pause() {
    std::thread::park_timeout(Duration::from_millis(10));
}

/// Polls `cond` until it holds; panics with `what` after [`PATIENCE`].
pub(crate) fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        pause();
    }
}

/// Whether a process is gone: no such pid, or a zombie waiting for its reaper.
pub(crate) fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Reads the pids written to the files of `dir` whose names start with `prefix`.
pub(crate) fn pids_in(dir: &Path, prefix: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix)
            && let Ok(s) = std::fs::read_to_string(e.path())
            && let Ok(p) = s.trim().parse()
        {
            pids.push(p);
        }
    }
    pids
}

/// A running `multiproc run` (or GNU parallel), its output gathered by threads. Dropping it
/// kills it: SIGTERM to it (it kills its jobs' groups), then SIGKILL to its process group.
pub(crate) struct Runner {
    /// The process.
    pub(crate) child: Child,
    /// Its stdout so far.
    pub(crate) out: Arc<Mutex<Vec<u8>>>,
    /// Its stderr so far.
    pub(crate) err: Arc<Mutex<Vec<u8>>>,
    /// The threads reading them.
    pub(crate) readers: Vec<std::thread::JoinHandle<()>>,
    /// Pids of jobs' processes to kill too if the test fails (files `dir/prefix*`).
    pub(crate) pid_files: Option<(PathBuf, &'static str)>,
    /// Its exit status, once waited for.
    pub(crate) status: Option<ExitStatus>,
}

/// What a finished run gave.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The exit code (`None` if killed by a signal).
    pub(crate) code: Option<i32>,
    /// Its stdout.
    pub(crate) out: String,
    /// Its stderr.
    pub(crate) err: String,
    /// How long it took from `finish` on.
    pub(crate) elapsed: Duration,
}

/// Copies what `r` gives into `into`, in a thread, until end of file.
pub(crate) fn gather(
    mut r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().expect("lock").extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Runner {
    /// Starts `program args...` in `dir` with `stdin` as its input.
    pub(crate) fn start(program: &str, args: &[&str], dir: Option<&Path>, stdin: &[u8]) -> Runner {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().expect("spawn");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            gather(child.stdout.take().expect("stdout"), out.clone()),
            gather(child.stderr.take().expect("stderr"), err.clone()),
        ];
        Runner {
            child,
            out,
            err,
            readers,
            pid_files: None,
            status: None,
        }
    }

    /// Its pid (and process group).
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends it `sig`.
    pub(crate) fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("kill");
    }

    /// Its stdout so far.
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("lock")).into_owned()
    }

    /// Its stderr so far.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("lock")).into_owned()
    }

    /// Waits (at most [`PATIENCE`]) for the end and the output.
    pub(crate) fn finish(mut self) -> Outcome {
        let t = Instant::now();
        let deadline = t + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "hung; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            pause();
        };
        self.status = Some(status);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Outcome {
            code: status.code(),
            out: self.stdout(),
            err: self.stderr(),
            elapsed: t.elapsed(),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                pause();
            }
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if let Some((dir, prefix)) = &self.pid_files {
            for p in pids_in(dir, prefix) {
                if p > 0 {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Runs `multiproc run ARGS` to its end.
pub(crate) fn ours(args: &[&str], stdin: &[u8]) -> Outcome {
    ours_in(None, args, stdin)
}

/// Runs `multiproc run ARGS` in `dir` to its end.
pub(crate) fn ours_in(dir: Option<&Path>, args: &[&str], stdin: &[u8]) -> Outcome {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    Runner::start(bin(), &all, dir, stdin).finish()
}

/// Runs `parallel --will-cite ARGS` to its end.
pub(crate) fn gnu_in(dir: Option<&Path>, args: &[&str], stdin: &[u8]) -> Outcome {
    let mut all = vec!["--will-cite"];
    all.extend_from_slice(args);
    Runner::start(GNU, &all, dir, stdin).finish()
}

/// Checks that we print what GNU parallel prints, and exit as it does.
pub(crate) fn same_as_gnu(args: &[&str], stdin: &[u8]) {
    let theirs = gnu_in(None, args, stdin);
    let mine = ours(args, stdin);
    assert_eq!(
        mine.out, theirs.out,
        "stdout differs for {args:?}\nours stderr: {}\ntheirs stderr: {}",
        mine.err, theirs.err
    );
    assert_eq!(mine.code, theirs.code, "exit status differs for {args:?}");
}
