//! `multiproc run` against GNU parallel and `xargs`: the same 10 000 jobs of `true` (one per
//! input line, two at a time) through each, in the same run; jobs per second.
//!
//! - `run_overhead`: `seq 10000 | multiproc run -j 2 true` against `parallel -j 2 true`.
//! - `run_overhead_xargs`: the same against `xargs -P 2 -n 1 true`.
//! - `run_overhead_shell`: `true {} && true`, a command that needs the shell, against GNU
//!   parallel running the same.
//! - `run_pipe`: `seq 5000000 | multiproc run --pipe -j 2 wc -l` (the input cut into 1 MiB
//!   blocks, each a job's stdin) against GNU parallel's `--pipe`; input lines per second.
//!
//! Each row measures both sides (the other tool's figure goes in the `cpython` column, see
//! [`other_side`]), each the best of a few rounds after a warm-up. `multiproc` is looked for
//! next to this benchmark's executable, so build it first:
//! `cargo build --release -p multiproc-cli`. Without it, or without the other tool, the row is
//! skipped with a note.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, ensure};

/// The other tool's figure of the last row measured, by row name.
static OTHER: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// The `multiproc` binary next to this executable (`target/<profile>/multiproc`).
fn multiproc() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("multiproc");
    p.is_file().then_some(p)
}

/// The first of `names` found in `PATH`.
fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why row `name` cannot run here, if it is one of ours and something is missing.
pub(crate) fn skip_reason(name: &str) -> Option<String> {
    if !name.starts_with("run_overhead") && name != "run_pipe" {
        return None;
    }
    if multiproc().is_none() {
        return Some(
            "no multiproc binary next to this benchmark (cargo build --release -p multiproc-cli)"
                .into(),
        );
    }
    let tool = if name == "run_overhead_xargs" {
        "xargs"
    } else {
        "parallel"
    };
    in_path(tool)
        .is_none()
        .then(|| format!("{tool} is not installed"))
}

/// The other tool's figure measured by row `name`'s run, if it has one.
/// Records the other side's figure of row `name`, measured in this run.
pub(crate) fn record_other(name: &'static str, value: f64) {
    if let Ok(mut other) = OTHER.lock() {
        other.push((name, value));
    }
}

pub(crate) fn other_side(name: &str) -> Option<f64> {
    let other = OTHER.lock().ok()?;
    other
        .iter()
        .rev()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v)
}

/// Runs `program args` with `jobs` input lines on stdin; returns the seconds it took.
fn time(program: &Path, args: &[&str], jobs: usize) -> anyhow::Result<f64> {
    let input: String = (1..=jobs).map(|i| format!("{i}\n")).collect();
    let t = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = writer.join();
    ensure!(
        out.status.success(),
        "{} {args:?} failed ({}): {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}

/// Times `multiproc run <ours>` and `<tool> <theirs>` on `jobs` lines, alternately, `rounds`
/// times each after a small warm-up; records the tool's jobs/s for [`other_side`] and returns
/// ours.
fn compare(
    name: &'static str,
    ours: &[&str],
    tool: &str,
    theirs: &[&str],
    jobs: usize,
    rounds: usize,
) -> anyhow::Result<f64> {
    let bin = multiproc().context("no multiproc binary")?;
    let tool = in_path(tool).with_context(|| format!("{tool} is not installed"))?;
    let mut our_args = vec!["run"];
    our_args.extend_from_slice(ours);
    time(&bin, &our_args, 100)?; // warm-up
    time(&tool, theirs, 100)?;
    let (mut best_ours, mut best_theirs) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        best_ours = best_ours.min(time(&bin, &our_args, jobs)?);
        best_theirs = best_theirs.min(time(&tool, theirs, jobs)?);
    }
    if let Ok(mut other) = OTHER.lock() {
        other.push((name, jobs as f64 / best_theirs));
    }
    Ok(jobs as f64 / best_ours)
}

/// The number of jobs: 10 000, or 1000 with `--quick`.
fn jobs(quick: bool) -> usize {
    if quick { 1000 } else { 10_000 }
}

/// `multiproc run -j 2 true` against `parallel -j 2 true`, best of three rounds each (GNU
/// parallel's take ~25 s each).
pub(crate) fn run_overhead(quick: bool) -> anyhow::Result<f64> {
    let p = ["-j", "2", "true"];
    let rounds = if quick { 1 } else { 3 };
    compare(
        "run_overhead",
        &p,
        "parallel",
        &["--will-cite", "-j", "2", "true"],
        jobs(quick),
        rounds,
    )
}

/// `multiproc run -j 2 true` against `xargs -P 2 -n 1 true`.
pub(crate) fn run_overhead_xargs(quick: bool) -> anyhow::Result<f64> {
    let rounds = if quick { 1 } else { 3 };
    let x = ["-P", "2", "-n", "1", "true"];
    compare(
        "run_overhead_xargs",
        &["-j", "2", "true"],
        "xargs",
        &x,
        jobs(quick),
        rounds,
    )
}

/// `multiproc run -j 2 'true {} && true'` (through the shell) against GNU parallel.
pub(crate) fn run_overhead_shell(quick: bool) -> anyhow::Result<f64> {
    let cmd = "true {} && true";
    let theirs = ["--will-cite", "-j", "2", cmd];
    compare(
        "run_overhead_shell",
        &["-j", "2", cmd],
        "parallel",
        &theirs,
        jobs(quick),
        1,
    )
}

/// `multiproc run --pipe -j 2 wc -l` against `parallel --pipe -j 2 wc -l` over the lines of
/// `seq 5000000` (39 MB; `--quick`: a tenth), best of three rounds each; lines per second.
pub(crate) fn run_pipe(quick: bool) -> anyhow::Result<f64> {
    let lines = if quick { 500_000 } else { 5_000_000 };
    let rounds = if quick { 1 } else { 3 };
    compare(
        "run_pipe",
        &["--pipe", "-j", "2", "wc", "-l"],
        "parallel",
        &["--will-cite", "--pipe", "-j", "2", "wc", "-l"],
        lines,
        rounds,
    )
}

/// The fastest runner this machine allows, for `run_overhead` to be held against: the same
/// 10 000 jobs (`true N`, two at a time), each spawned with `posix_spawn` (environment
/// prepared once) with its stdout and stderr in pipes, reaped with a blocking `waitpid(-1)`,
/// then its pipes read to their end; nothing else (no placeholders, no process group, no
/// output kept). The write ends stay open until the reap, so an exit wakes the loop once (an
/// end of file would wake it first). The `true` process itself is most of the cost: what is
/// left between this figure and GNU parallel's is all any runner could gain.
pub(crate) fn limit_run_spawn(quick: bool) -> anyhow::Result<f64> {
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use nix::fcntl::OFlag;
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions};

    let program = CString::new(
        in_path("true")
            .context("no true in PATH")?
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let attr = PosixSpawnAttr::init()?;
    type Job = (
        nix::unistd::Pid,
        [std::fs::File; 2],
        [std::os::fd::OwnedFd; 2],
    );
    let spawn = |i: usize| -> anyhow::Result<Job> {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Our read ends only: drained without blocking once the job is reaped.
        for r in [&out_r, &err_r] {
            nix::fcntl::fcntl(r, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        let mut actions = PosixSpawnFileActions::init()?;
        actions.add_dup2(out_w.as_raw_fd(), 1)?;
        actions.add_dup2(err_w.as_raw_fd(), 2)?;
        let argv = [c"true".to_owned(), CString::new(i.to_string())?];
        let pid = nix::spawn::posix_spawn(program.as_c_str(), &actions, &attr, &argv, &env)?;
        Ok((pid, [out_r.into(), err_r.into()], [out_w, err_w]))
    };
    // Reaps whichever job ends first and drains its pipes.
    let reap_one = |running: &mut Vec<Job>| -> anyhow::Result<()> {
        let status = nix::sys::wait::waitpid(None, None)?;
        ensure!(
            matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
            "true failed: {status:?}"
        );
        let pid = status.pid().context("no pid")?;
        let at = running
            .iter()
            .position(|(p, _, _)| *p == pid)
            .context("an unknown child")?;
        let (_, pipes, _) = running.swap_remove(at);
        let mut buf = [0u8; 512];
        for mut p in pipes {
            while matches!(p.read(&mut buf), Ok(n) if n > 0) {}
        }
        Ok(())
    };
    let n = jobs(quick);
    let mut best = f64::INFINITY;
    for _ in 0..if quick { 1 } else { 3 } {
        let t = Instant::now();
        let mut running = Vec::with_capacity(2);
        for i in 1..=n {
            if running.len() == 2 {
                reap_one(&mut running)?;
            }
            running.push(spawn(i)?);
        }
        while !running.is_empty() {
            reap_one(&mut running)?;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(n as f64 / best)
}
