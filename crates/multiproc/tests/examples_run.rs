//! Runs every example in `examples/` (listed when the test runs) and checks that it exits with
//! status 0 within a deadline, with stdin on `/dev/null`.
//!
//! The examples run from `target/<profile>/examples/<name>`, beside this test's own
//! `target/<profile>/deps/`. A plain `cargo test -p multiproc` builds them; a filtered run such
//! as `cargo test -p multiproc --test examples_run` does not, so build them first with
//! `cargo build -p multiproc --examples`. A missing binary, or one older than its source, fails
//! the test when the `CI` environment variable is set, and is skipped with a note otherwise.
//!
//! Each example runs in a process group of its own: one that hangs is killed with everything
//! it started, and processes an example leaves behind after it exits fail the test too.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one example may run before it is killed.
const DEADLINE: Duration = Duration::from_secs(60);

/// How long processes an example started may take to go once it has exited (daemon children
/// are killed by the kernel when their parent dies, which takes a moment).
const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// Examples that cannot run unattended (they read a terminal, need a network or run for
/// minutes), with the reason. None today: every example is its own client, uses loopback only
/// and stands in for the seeds' `input()` with a written answer.
const SKIP: &[(&str, &str)] = &[];

/// How many lines of an example's output a failure shows.
const TAIL_LINES: usize = 40;

/// The examples' sources: `examples/<name>.rs` and `examples/<name>/main.rs`, sorted by name.
fn examples() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {dir:?}: {e}"));
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {dir:?}: {e}"))
            .path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && path.is_file() {
            found.push((stem.to_string(), path.clone()));
        } else if path.join("main.rs").is_file() {
            found.push((stem.to_string(), path.join("main.rs")));
        }
    }
    found.sort();
    found
}

/// `target/<profile>/examples`: this test binary is `target/<profile>/deps/examples_run-<hash>`.
fn examples_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    exe.parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples"))
        .unwrap_or_else(|| panic!("{exe:?} is not in target/<profile>/deps"))
}

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A note the test harness does not capture: `eprintln!` output is shown only on failure.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "examples_run: {message}");
}

/// Why `binary` cannot stand for `source`: missing, or built before the source last changed.
fn unusable(binary: &Path, source: &Path) -> Option<String> {
    let Ok(built) = fs::metadata(binary).and_then(|m| m.modified()) else {
        return Some(format!("{} does not exist", binary.display()));
    };
    let changed = fs::metadata(source).and_then(|m| m.modified()).ok()?;
    (changed > built).then(|| format!("{} is older than {}", binary.display(), source.display()))
}

/// The live (not zombie) processes of group `pgid`, from `/proc/<pid>/stat` (state is
/// field 3, the group field 5). A zombie is left out: it has ended, and whether it is reaped
/// is up to whoever adopted it (a container's init may never do it).
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let live_member = |pid: &u32| -> Option<bool> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?;
        let group = fields.nth(1)?.parse::<u32>().ok()?;
        Some(group == pgid && state != "Z")
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| live_member(pid) == Some(true))
        .collect()
}

/// SIGKILL to every process of group `pgid` (`kill` is a shell builtin everywhere).
fn kill_group(pgid: u32) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s KILL -- -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .status();
}

/// Waits until group `pgid` is empty, at most `grace`; the pids still in it.
fn wait_group_empty(pgid: u32, grace: Duration) -> Vec<u32> {
    let deadline = Instant::now() + grace;
    loop {
        let left = group_members(pgid);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// The last `TAIL_LINES` lines of the file at `path`.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].join("\n")
}

/// Runs `binary` with stdin on `/dev/null` and its output in files under `out_dir`; `Ok`
/// with the time taken, or `Err` with why it failed and the tail of its output.
fn run_example(name: &str, binary: &Path, out_dir: &Path) -> Result<Duration, String> {
    let (out_path, err_path) = (
        out_dir.join(format!("{name}.stdout")),
        out_dir.join(format!("{name}.stderr")),
    );
    let create = |p: &Path| File::create(p).map_err(|e| format!("cannot create {p:?}: {e}"));
    let mut command = Command::new(binary);
    command
        .stdin(Stdio::null())
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?)
        .process_group(0);
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {binary:?}: {e}"))?;
    let pgid = child.id();

    // The waiter owns the child; this thread keeps the deadline.
    let (done, exited) = mpsc::channel::<std::io::Result<ExitStatus>>();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let (status, hung) = match exited.recv_timeout(DEADLINE) {
        Ok(status) => (status, false),
        Err(_) => {
            kill_group(pgid);
            let status = exited
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{name}: cannot kill process group {pgid}"));
            (status, true)
        }
    };
    let took = start.elapsed();

    let mut problems = Vec::new();
    match status {
        _ if hung => problems.push(format!("still running after {DEADLINE:?}: killed")),
        Ok(s) if s.success() => {}
        Ok(s) => problems.push(format!("exited with {s}")),
        Err(e) => problems.push(format!("cannot be waited for: {e}")),
    }
    let left = wait_group_empty(pgid, STRAGGLER_GRACE);
    if !left.is_empty() {
        kill_group(pgid);
        problems.push(format!(
            "left processes {left:?} running after it exited (killed now)"
        ));
    }
    if problems.is_empty() {
        return Ok(took);
    }
    let mut report = format!("{name}: {}", problems.join("; "));
    let _ = write!(
        report,
        "\n--- stdout (last {TAIL_LINES} lines) ---\n{}\n--- stderr (last {TAIL_LINES} lines) ---\n{}",
        tail(&out_path),
        tail(&err_path)
    );
    Err(report)
}

#[test]
fn every_example_exits_zero_unattended() {
    let examples = examples();
    assert!(!examples.is_empty(), "no examples found");
    for (skipped, _) in SKIP {
        assert!(
            examples.iter().any(|(name, _)| name == skipped),
            "the skip list names {skipped:?}, which is no example"
        );
    }
    let bin_dir = examples_bin_dir();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples_run");
    fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("cannot create {out_dir:?}: {e}"));
    let ci = under_ci();

    let (mut failures, mut not_built, mut ran) = (Vec::new(), Vec::new(), 0);
    for (name, source) in &examples {
        if let Some((_, why)) = SKIP.iter().find(|(skipped, _)| skipped == name) {
            note(&format!("skipping {name}: {why}"));
            continue;
        }
        let binary = bin_dir.join(name);
        if let Some(why) = unusable(&binary, source) {
            not_built.push(format!("{name}: {why}"));
            continue;
        }
        match run_example(name, &binary, &out_dir) {
            Ok(took) => {
                ran += 1;
                println!("{name}: ok in {:.2} s", took.as_secs_f64());
            }
            Err(report) => failures.push(report),
        }
    }

    if !not_built.is_empty() {
        let list = not_built.join("\n  ");
        let hint = "build them with `cargo build -p multiproc --examples` (a filtered \
                    `cargo test --test examples_run` does not)";
        assert!(
            !ci,
            "{} example binaries missing or stale under CI; {hint}:\n  {list}",
            not_built.len()
        );
        note(&format!(
            "skipped {} examples whose binaries are missing or stale; {hint}:\n  {list}",
            not_built.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n\n{}",
        failures.len(),
        ran + failures.len(),
        failures.join("\n\n")
    );
}
