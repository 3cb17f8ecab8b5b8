//! CPython's own manager tests (`test/_test_multiprocessing.py` of each interpreter) run
//! against `multiproc serve` by `tests/python/cpython_manager_suite.py`, which replaces
//! `BaseManager.start` so that every manager the tests start is our server.
//!
//! The interpreters are `python3` and pyenv's newest 3.8 to 3.13, one of each version, each
//! run with every start method (about 2 minutes in all); `MULTIPROC_SUITE_QUICK=1` runs the
//! first of them (`python3` when there is one) with every method and each other version with
//! one, by its minor version (3.8 forkserver, 3.9 fork, 3.10 spawn, 3.12 fork, 3.13 spawn).
//! `MULTIPROC_SUITE_TESTS="test_list test_lock"` passes unittest `-k` patterns. Runs go two
//! at a time. Without an interpreter that has the `test` package the test is skipped with a
//! note; under `CI` that is a failure when `python3` exists.
//!
//! Each run's output is kept in `target/tmp/manager-suite/<version>-<method>.{out,err}`.
//! The harness runs in its own process group, killed when the run ends, times out, or this
//! test fails: no manager server or test process outlives it.

#[path = "../../multiproc/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

/// The Python harness.
const HARNESS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/cpython_manager_suite.py"
);

/// The start methods of the tests' child processes.
const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

/// How long one run (one interpreter, one start method) may take. A run takes 10 to 15 s
/// when every test passes; a manager whose server does not stop at `shutdown` costs 1 s
/// (3.8 to 3.10) or 30 s (3.11 on: `SHUTDOWN_TIMEOUT`), a test that hangs the harness's
/// per-test timeout (120 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Before `RUN_TIMEOUT`, the harness prints every thread's traceback and exits by itself.
const HARNESS_RUN_TIMEOUT: Duration = Duration::from_secs(280);

/// Runs at the same time.
const JOBS: usize = 2;

/// A CPython with the `test` package.
#[derive(Debug, Clone)]
struct Interpreter {
    path: PathBuf,
    /// `3.11.7`.
    version: String,
    minor: u32,
}

/// One harness run.
#[derive(Debug)]
struct Run {
    interpreter: Interpreter,
    method: &'static str,
}

impl Run {
    fn name(&self) -> String {
        format!("{}-{}", self.interpreter.version, self.method)
    }
}

/// How a run ended.
#[derive(Debug)]
struct Outcome {
    name: String,
    status: Option<ExitStatus>,
    timed_out: bool,
    wall: Duration,
    /// The harness's `SUMMARY …` line.
    summary: Option<String>,
    /// unittest's output.
    stderr: String,
    stderr_path: PathBuf,
}

impl Outcome {
    fn passed(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success()) && self.summary.is_some()
    }
}

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A note the test harness does not capture (`eprintln!` output shows only on failure).
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "cli_manager_suite: {message}");
}

/// The interpreter at `path` if it runs and has `test._test_multiprocessing`; otherwise why
/// not.
fn probe(path: &Path) -> Result<Interpreter, String> {
    const PROBE: &str = "import sys, test._test_multiprocessing; \
                         print('%d.%d.%d' % sys.version_info[:3])";
    let out = Command::new(path)
        .args(["-c", PROBE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("");
        return Err(format!("{}: {last}", path.display()));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("{}: odd version {version:?}", path.display()))?;
    Ok(Interpreter {
        path: path.to_path_buf(),
        version,
        minor,
    })
}

/// `python3` and pyenv's newest 3.8 … 3.13, one per version (`python3` first), and the
/// reasons those that were found cannot be used.
fn interpreters() -> (Vec<Interpreter>, Vec<String>) {
    let mut candidates = vec![PathBuf::from("python3")];
    let pyenv = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".pyenv/versions"))
        .and_then(|dir| std::fs::read_dir(dir).ok());
    let installed: Vec<PathBuf> = pyenv
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    for minor in 8..=13 {
        let prefix = format!("3.{minor}.");
        let newest = installed
            .iter()
            .filter_map(|dir| {
                let name = dir.file_name()?.to_str()?;
                let patch: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((patch, dir))
            })
            .max();
        if let Some((_, dir)) = newest {
            candidates.push(dir.join("bin/python3"));
        }
    }
    let mut found: Vec<Interpreter> = Vec::new();
    let mut unusable = Vec::new();
    for path in candidates {
        match probe(&path) {
            Ok(interpreter) if found.iter().all(|f| f.version != interpreter.version) => {
                found.push(interpreter);
            }
            Ok(_) => {}
            Err(reason) => unusable.push(reason),
        }
    }
    (found, unusable)
}

/// The runs: every start method for the first interpreter and one for each other (by its
/// minor version, so the same pairs every time), or every method for all with `full`.
fn matrix(interpreters: &[Interpreter], full: bool) -> Vec<Run> {
    let mut runs = Vec::new();
    for (i, interpreter) in interpreters.iter().enumerate() {
        let methods: &[&'static str] = if full || i == 0 {
            &METHODS
        } else {
            std::slice::from_ref(&METHODS[interpreter.minor as usize % METHODS.len()])
        };
        for &method in methods {
            runs.push(Run {
                interpreter: interpreter.clone(),
                method,
            });
        }
    }
    runs
}

/// A child in its own process group; the whole group is killed when it is reaped or
/// dropped.
struct Group(Option<Child>);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(Some(
            cmd.process_group(0).spawn().expect("spawn the harness"),
        ))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().expect("present").id()
    }

    /// Kills the group (what the harness left behind, or everything on a timeout) and
    /// reaps the child. The group is killed first: while the unreaped leader exists its
    /// group id cannot be reused.
    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        // ESRCH when nothing of the group is left: nothing to do.
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().ok()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// The unittest `-k` patterns from `MULTIPROC_SUITE_TESTS`.
fn filters() -> Vec<String> {
    std::env::var("MULTIPROC_SUITE_TESTS")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Runs the harness once, its output in `log_dir`.
fn run(run: &Run, log_dir: &Path) -> Outcome {
    let name = run.name();
    let stdout_path = log_dir.join(format!("{name}.out"));
    let stderr_path = log_dir.join(format!("{name}.err"));
    let started = Instant::now();
    let mut group = Group::spawn(
        Command::new(&run.interpreter.path)
            .arg(HARNESS)
            .arg(BIN)
            .arg(run.method)
            .args(filters())
            .arg("--run-timeout")
            .arg(HARNESS_RUN_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create the stdout log"))
            .stderr(File::create(&stderr_path).expect("create the stderr log")),
    );
    let pidfd = common::pidfd(group.pid() as i32).expect("pidfd of the harness");
    let timed_out = !common::wait_exit(&pidfd, RUN_TIMEOUT);
    let status = group.kill_and_reap();
    let wall = started.elapsed();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .map(str::to_string);
    Outcome {
        name,
        status,
        timed_out,
        wall,
        summary,
        stderr: String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap_or_default())
            .into_owned(),
        stderr_path,
    }
}

/// unittest's rule under a failure's heading and above its summary.
const RULE: &str = "----------------------------------------------------------------------";

/// The failing tests in unittest's output, as `FAIL Class.test_name` with the exception
/// they failed with. Both forms of the heading (`test (module.Class)` up to 3.10,
/// `test (module.Class.test)` since 3.11) give the same key.
fn failing_tests(stderr: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = stderr.lines().collect();
    let mut failing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((kind, rest)) = line
            .strip_prefix("FAIL: ")
            .map(|r| ("FAIL", r))
            .or_else(|| line.strip_prefix("ERROR: ").map(|r| ("ERROR", r)))
        else {
            continue;
        };
        // `test_x (__main__.Class.test_x)`, `test_x (__main__.Class)`, or for a class
        // fixture `setUpClass (__main__.Class)`.
        let (test, class) = match rest.split_once(" (") {
            Some((test, qualified)) => {
                let qualified = qualified.trim_end_matches(')');
                let qualified = qualified
                    .strip_suffix(&format!(".{test}"))
                    .unwrap_or(qualified);
                (test, qualified.rsplit('.').next().unwrap_or(qualified))
            }
            None => (rest, ""),
        };
        let block: Vec<&str> = lines[(i + 2).min(lines.len())..]
            .iter()
            .take_while(|l| !l.starts_with("=====") && **l != RULE)
            .copied()
            .collect();
        failing.push((format!("{kind} {class}.{test}"), exception(&block)));
    }
    failing
}

/// The exception a traceback ends in: its first unindented line after `Traceback …`; for a
/// `RemoteError`, the server's exception inside its dashed frame.
fn exception(traceback: &[&str]) -> String {
    let mut lines = traceback.iter().map(|l| l.trim_end()).filter(|l| {
        !l.is_empty()
            && !l.starts_with(' ')
            && !l.starts_with("Traceback ")
            && !l.chars().all(|c| c == '-')
    });
    let first = lines.next().unwrap_or("");
    if first.ends_with("RemoteError:")
        && let Some(inner) = lines.next()
    {
        return format!("{first} {}", inner.trim_end_matches('-'));
    }
    first.to_string()
}

#[test]
fn cpython_manager_tests_pass_against_multiproc_serve() {
    let (interpreters, unusable) = interpreters();
    for reason in &unusable {
        note(&format!("not used: {reason}"));
    }
    if interpreters.is_empty() {
        let python3 = Command::new("python3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            !(python3 && under_ci()),
            "python3 exists but no interpreter has test._test_multiprocessing (CI is set): \
             {unusable:?}"
        );
        note("skipped: no CPython with the test package (test._test_multiprocessing)");
        return;
    }
    let full = !std::env::var("MULTIPROC_SUITE_QUICK").is_ok_and(|v| v == "1");
    let runs = matrix(&interpreters, full);
    let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manager-suite");
    std::fs::create_dir_all(&log_dir).expect("create the log directory");
    note(&format!(
        "{} runs: {} ({}), logs in {}",
        runs.len(),
        runs.iter().map(Run::name).collect::<Vec<_>>().join(" "),
        if full {
            "full matrix"
        } else {
            "MULTIPROC_SUITE_QUICK=1 for fewer"
        },
        log_dir.display()
    ));

    let pending = Mutex::new(runs.iter());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..JOBS {
            s.spawn(|| {
                loop {
                    let Some(next) = pending.lock().expect("pending").next() else {
                        break;
                    };
                    let outcome = run(next, &log_dir);
                    note(&format!(
                        "{}: {} in {:.1}s",
                        outcome.name,
                        outcome.summary.as_deref().unwrap_or("no summary"),
                        outcome.wall.as_secs_f64()
                    ));
                    outcomes.lock().expect("outcomes").push(outcome);
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    if failed.is_empty() {
        return;
    }
    // Each failing test once, with its exception and the runs it fails in.
    let mut by_test: BTreeMap<String, (String, Vec<&str>)> = BTreeMap::new();
    let mut report = String::new();
    for outcome in &failed {
        let how = match outcome.status {
            _ if outcome.timed_out => format!("timed out after {}s", RUN_TIMEOUT.as_secs()),
            Some(status) => status.to_string(),
            None => "not reaped".to_string(),
        };
        let _ = writeln!(
            report,
            "{}: {} ({how}); log {}",
            outcome.name,
            outcome.summary.as_deref().unwrap_or("no summary"),
            outcome.stderr_path.display()
        );
        for (test, exception) in failing_tests(&outcome.stderr) {
            let entry = by_test
                .entry(test)
                .or_insert_with(|| (exception, Vec::new()));
            entry.1.push(&outcome.name);
        }
    }
    let _ = writeln!(report, "\nfailing tests:");
    for (test, (exception, runs)) in &by_test {
        let where_ = if runs.len() == outcomes.len() {
            "every run".to_string()
        } else {
            runs.join(", ")
        };
        let _ = writeln!(report, "  {test}: {exception}\n      in {where_}");
    }
    panic!(
        "{} of {} runs of CPython's manager tests failed against multiproc serve:\n{report}",
        failed.len(),
        outcomes.len()
    );
}
