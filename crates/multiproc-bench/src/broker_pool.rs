//! `broker_pool_*`: a `Pool` on a broker (its tasks run by a `BrokerWorker` with two worker
//! processes, over the benchmarks' redis-server) against what people use for the same job:
//! Celery 5 (Redis broker and result backend, prefork pool of two) and RQ (two workers), both
//! from PyPI in a virtual environment this module sets up once (`python/task_queues.py`); and
//! `map` of many small tasks against the local `Pool`, what the broker costs per task; and
//! apalis 0.7 (`apalis-redis`, a worker of concurrency 2 in a process of its own), built on
//! first use from `apalis-ref/`, a cargo project outside the workspace so that the workspace's
//! builds stay free of it. Each row measures both sides in the same run, against the same
//! server; the other side's figure stands in the `cpython` column. The throughput rows run
//! each side three times in turn and give the medians (see [`rounds`]). `BENCH_NO_RECORDS=1` runs
//! our side without task records (`result_ttl(ZERO)`), to see what they cost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use multiproc::{BrokerWorker, Pool, Process, TaskRegistry};

use crate::broker;
use crate::cpu_share;
use crate::run_overhead::record_other;

const KEY: &[u8] = b"bench key";

fn noop(x: u64) -> u64 {
    x
}

fn tasks() -> TaskRegistry {
    TaskRegistry::new().register("noop", noop)
}

/// A worker with two processes, as Celery's prefork pool of two.
fn serve((url, queue): (String, String)) {
    let _ = BrokerWorker::new(url, queue)
        .authkey(KEY.to_vec())
        .tasks(tasks())
        .processes(2)
        .run();
}

/// The worker process, stopped when dropped.
struct Worker(Process<()>);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.terminate();
        if self.0.join_timeout(Duration::from_secs(10)).is_err() {
            let _ = self.0.kill();
            let _ = self.0.join();
        }
    }
}

/// A broker pool with its worker running, warmed up.
fn with_pool<T>(f: impl FnOnce(&Pool) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let url = broker::bench_url()?;
    let queue = format!("bench-pool-{}", std::process::id());
    let _worker = Worker(Process::new(serve, (url.clone(), queue.clone())).start()?);
    let mut builder = Pool::broker(url, queue)
        .authkey(KEY.to_vec())
        .tasks(tasks());
    if std::env::var_os("BENCH_NO_RECORDS").is_some() {
        builder = builder.result_ttl(Duration::ZERO);
    }
    let pool = builder.build()?;
    for i in 0..50 {
        ensure!(pool.apply(noop, i)? == i, "a wrong result");
    }
    f(&pool)
}

/// No-op tasks per second, each sent on its own, from submission to every result in hand.
fn throughput(pool: &Pool, n: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let pending: Vec<_> = (0..n)
        .map(|i| pool.apply_async(noop, i))
        .collect::<Result<_, _>>()?;
    for (i, p) in pending.into_iter().enumerate() {
        ensure!(p.get()? == i as u64, "a wrong result");
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// One task's round trips, one after another: (p50, p99) in microseconds.
fn latency(pool: &Pool, samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut us: Vec<f64> = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let t = Instant::now();
        ensure!(pool.apply(noop, i)? == i, "a wrong result");
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// What `python/task_queues.py` measured for a system.
#[derive(Clone, Copy, serde::Deserialize)]
struct Reference {
    tasks_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// The virtual environment with Celery and RQ, made on first use.
fn venv_python() -> anyhow::Result<PathBuf> {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = PYTHON.get() {
        return Ok(p.clone());
    }
    let dir = std::env::temp_dir().join("multiproc-bench-task-queues");
    // Every run: a second time costs about a second, and mends an install cut short.
    let out = Command::new("python3")
        .arg(script())
        .arg("--setup-venv")
        .arg(&dir)
        .output()
        .context("running python3 to make the task queues' virtual environment")?;
    if !out.status.success() {
        bail!(
            "could not install Celery and RQ (python3-venv installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let python = dir.join("bin").join("python");
    Ok(PYTHON.get_or_init(|| python).clone())
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/python/task_queues.py")
}

/// The benchmarks' server with database `db` (ours uses 0): 1 for Celery and RQ, 2 for apalis.
fn reference_url(db: u8) -> anyhow::Result<String> {
    Ok(format!(
        "{}{db}",
        broker::bench_url()?.trim_end_matches('0')
    ))
}

/// The reference figures of `system` (`celery`, `rq`): those the throughput row took in
/// turn with ours, or else the medians of [`rounds`] runs, measured once per run.
fn reference(system: &str, quick: bool) -> anyhow::Result<Reference> {
    if let Some(r) = REFERENCES
        .lock()
        .ok()
        .and_then(|s| s.as_ref()?.get(system).copied())
    {
        return Ok(r);
    }
    let runs = (0..rounds(quick))
        .map(|_| reference_run(system, quick))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(remember(system, &runs))
}

static REFERENCES: Mutex<Option<HashMap<String, Reference>>> = Mutex::new(None);

/// Keeps the medians of `runs` as the reference figures of `system`; returns them.
fn remember(system: &str, runs: &[Reference]) -> Reference {
    let of = |field: fn(&Reference) -> f64| median(runs.iter().map(field).collect());
    let r = Reference {
        tasks_per_sec: of(|r| r.tasks_per_sec),
        p50_us: of(|r| r.p50_us),
        p99_us: of(|r| r.p99_us),
    };
    if let Ok(mut seen) = REFERENCES.lock() {
        seen.get_or_insert_with(HashMap::new)
            .insert(system.to_string(), r);
    }
    r
}

/// How many times each side of a throughput row runs, in turn (ours, theirs, ours, …); the
/// row gives each side's median. This VM's speed swings by a third or more from one minute
/// to the next, and one run of each side, a minute apart, made ratios of 30 and 63 within
/// the hour.
fn rounds(quick: bool) -> usize {
    if quick { 1 } else { 3 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Our throughput and `theirs`, each the median of [`rounds`] runs taken in turn.
fn in_turn<T>(
    quick: bool,
    mut theirs: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(f64, Vec<T>)> {
    let (mut ours, mut their_runs) = (Vec::new(), Vec::new());
    for _ in 0..rounds(quick) {
        ours.push(with_pool(|p| throughput(p, tasks_for(quick)))?);
        their_runs.push(theirs()?);
    }
    Ok((median(ours), their_runs))
}

/// One run of `python/task_queues.py` for `system`.
fn reference_run(system: &str, quick: bool) -> anyhow::Result<Reference> {
    let (tasks, samples) = if quick {
        ("500", "50")
    } else {
        ("3000", "300")
    };
    let out = Command::new(venv_python()?)
        .arg(script())
        // A database of its own: the script empties it first.
        .args(["--redis-url", &reference_url(1)?])
        .args(["--system", system, "--tasks", tasks, "--workers", "2"])
        .args(["--latency-samples", samples])
        .output()
        .with_context(|| format!("running the {system} benchmark"))?;
    if !out.status.success() {
        bail!(
            "the {system} benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("the {system} benchmark printed {text:?}"))
}

fn tasks_for(quick: bool) -> u64 {
    if quick { 2_000 } else { 20_000 }
}

/// Our throughput against `system`'s (`celery`, `rq`), taken in turn; its figures are kept
/// for the latency rows.
fn vs_python(system: &str, row: &'static str, quick: bool) -> anyhow::Result<f64> {
    let (ours, theirs) = in_turn(quick, || reference_run(system, quick))?;
    record_other(row, remember(system, &theirs).tasks_per_sec);
    Ok(ours)
}

pub(crate) fn vs_celery(quick: bool) -> anyhow::Result<f64> {
    vs_python("celery", "broker_pool_vs_celery", quick)
}

pub(crate) fn vs_rq(quick: bool) -> anyhow::Result<f64> {
    vs_python("rq", "broker_pool_vs_rq", quick)
}

/// The apalis reference program, built on first use (every run: a second time costs well under
/// a second, and picks up changes); the first build takes a few minutes.
fn apalis_ref() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BIN.get() {
        return Ok(p.clone());
    }
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/apalis-ref"));
    let target = dir.join("target");
    let bin = target.join("release").join("apalis-ref");
    if !bin.exists() {
        eprintln!("multiproc-bench: building apalis-ref (first use: a few minutes)");
    }
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        // Its own target directory, whatever the caller's cargo was told.
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .context("running cargo to build apalis-ref")?;
    if !out.status.success() {
        bail!(
            "could not build {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(BIN.get_or_init(|| bin).clone())
}

/// No-op tasks per second through apalis, pushed one by one, every result in hand (see
/// `apalis-ref/src/main.rs`).
fn apalis_reference(quick: bool) -> anyhow::Result<f64> {
    #[derive(serde::Deserialize)]
    struct Figure {
        tasks_per_sec: f64,
    }
    let mut cmd = Command::new(apalis_ref()?);
    // A database of its own, and a namespace of its own within it, deleted at the end.
    cmd.args(["--url", &reference_url(2)?])
        .args(["--tasks", &tasks_for(quick).to_string()]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().context("running apalis-ref")?;
    if !out.status.success() {
        bail!(
            "the apalis benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let f: Figure = serde_json::from_str(line)
        .with_context(|| format!("the apalis benchmark printed {text:?}"))?;
    Ok(f.tasks_per_sec)
}

pub(crate) fn vs_apalis(quick: bool) -> anyhow::Result<f64> {
    let (ours, theirs) = in_turn(quick, || apalis_reference(quick))?;
    record_other("broker_pool_vs_apalis", median(theirs));
    Ok(ours)
}

fn samples(quick: bool) -> usize {
    if quick { 100 } else { 1_000 }
}

pub(crate) fn latency_vs_celery(quick: bool) -> anyhow::Result<f64> {
    let (p50, _) = with_pool(|p| latency(p, samples(quick)))?;
    record_other(
        "broker_pool_latency_vs_celery",
        reference("celery", quick)?.p50_us,
    );
    Ok(p50)
}

pub(crate) fn latency_p99_vs_celery(quick: bool) -> anyhow::Result<f64> {
    let (_, p99) = with_pool(|p| latency(p, samples(quick)))?;
    record_other(
        "broker_pool_latency_p99_vs_celery",
        reference("celery", quick)?.p99_us,
    );
    Ok(p99)
}

/// `broker_pool_cpu_per_task`: the CPU a no-op task of the `broker_pool_vs_celery` job costs
/// the machine, in microseconds: every thread of the submitter (this process), of the worker
/// and of its processes, and of the benchmarks' redis-server. Each thread's share goes to
/// stderr.
pub(crate) fn cpu_per_task(quick: bool) -> anyhow::Result<f64> {
    let n = tasks_for(quick);
    // The benchmarks' redis-server is a child of this process: counted with the rest.
    broker::bench_url()?;
    let (rate, used) = with_pool(|pool| {
        let before = cpu_share::threads(std::process::id());
        let rate = throughput(pool, n)?;
        let after = cpu_share::threads(std::process::id());
        Ok((rate, cpu_share::per_job(&before, &after, n)))
    })?;
    let total: Duration = used.iter().map(|(_, d)| *d).sum();
    for (thread, d) in used.iter().filter(|(_, d)| !d.is_zero()) {
        eprintln!("  {thread:32} {:6.1} us/task", d.as_secs_f64() * 1e6);
    }
    // The share of the machine's CPUs the job kept busy: below 1, the job waited on itself.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    eprintln!(
        "  {rate:.0} tasks/s, the machine {:.0}% busy",
        100.0 * rate * total.as_secs_f64() / cpus
    );
    Ok(total.as_secs_f64() * 1e6)
}

/// `map` over many no-op tasks through the broker, against the local pool of two processes.
pub(crate) fn map_vs_local(quick: bool) -> anyhow::Result<f64> {
    let n: u64 = if quick { 10_000 } else { 100_000 };
    let timed = |pool: &Pool| -> anyhow::Result<f64> {
        let t = Instant::now();
        let got = pool.map(noop, 0..n)?;
        ensure!(
            got.len() as u64 == n && got[n as usize - 1] == n - 1,
            "wrong results"
        );
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let ours = with_pool(timed)?;
    let local = timed(&Pool::new(2)?)?;
    record_other("broker_pool_map_vs_local", local);
    Ok(ours)
}
