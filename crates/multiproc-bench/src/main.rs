//! Benchmarks of multiproc against CPython's multiprocessing doing the same job, in the same
//! run. Prints `<name> <ours> <cpython> <unit> <ratio>`, where ratio > 1 means multiproc is
//! better (faster, or more throughput). Rows named `limit_*` have no CPython side: they measure
//! what the machine allows (the matching lines of `limits.c`), printed with `-` for CPython.
//! Rows named `run_overhead*` and `run_pipe` compare `multiproc run` with GNU parallel or xargs instead: the
//! other tool's figure stands in the `cpython` column (see `run_overhead.rs`); the `async_*`
//! rows compare the awaitable waits with what a tokio program would do without them (see
//! `async_rows.rs`); the `broker_pool_*` rows compare a pool on a broker with Celery, RQ,
//! apalis and the local pool (see `broker_pool.rs`).
//!
//! ```text
//! cargo run --release -p multiproc-bench -- all
//! cargo run --release -p multiproc-bench -- pipe_pingpong --quick --json out.json
//! cargo run --release -p multiproc-bench -- --busy 1 all   # with a busy process beside
//! ```

#![forbid(unsafe_code)]

mod async_rows;
mod run_overhead;

mod broker;
mod broker_pool;
mod cpu_share;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use multiproc::{
    Address, Barrier, Connection, Event, ManagerClient, ManagerServer, Pipe, Process, Queue,
    RawValue, StartMethod, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

#[derive(Parser)]
#[command(about = "multiproc against CPython's multiprocessing, side by side")]
struct Args {
    /// A benchmark name, or `all`, or `list`.
    name: String,
    /// Run about a tenth of the iterations (a smoke test).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The CPython interpreter to compare with.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Run this many busy processes (plain CPU loops) beside the benchmarks for the whole
    /// run, both sides alike: a machine whose cores have other work to do.
    #[arg(long, default_value_t = 0)]
    busy: usize,
}

/// A process that only burns CPU, until it is killed.
fn burn(_: ()) {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// `n` busy processes, killed when dropped.
struct Busy(Vec<Process<()>>);

impl Busy {
    fn start(n: usize) -> anyhow::Result<Busy> {
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            procs.push(
                Process::new(burn, ())
                    .name(format!("busy-{i}"))
                    .daemon(true)
                    .start()?,
            );
        }
        Ok(Busy(procs))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.kill();
            let _ = p.join();
        }
    }
}

/// Whether a larger or a smaller figure is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

struct Bench {
    name: &'static str,
    unit: &'static str,
    better: Better,
    /// Whether `python/bench.py` runs the same job; `false` for the `limit_*` rows.
    compared: bool,
    run: fn(quick: bool) -> anyhow::Result<f64>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "process_spawn_join",
        unit: "us",
        better: Better::Lower,
        compared: true,
        run: spawn_join_default,
    },
    Bench {
        name: "process_spawn_join_forkserver",
        unit: "us",
        better: Better::Lower,
        compared: true,
        run: spawn_join_forkserver,
    },
    Bench {
        name: "pipe_pingpong",
        unit: "rt/s",
        better: Better::Higher,
        compared: true,
        run: pipe_pingpong,
    },
    Bench {
        name: "pipe_throughput",
        unit: "MB/s",
        better: Better::Higher,
        compared: true,
        run: pipe_throughput,
    },
    Bench {
        name: "queue_small",
        unit: "msg/s",
        better: Better::Higher,
        compared: true,
        run: queue_small,
    },
    Bench {
        name: "queue_large",
        unit: "MB/s",
        better: Better::Higher,
        compared: true,
        run: queue_large,
    },
    Bench {
        name: "queue_mpmc",
        unit: "msg/s",
        better: Better::Higher,
        compared: true,
        run: queue_mpmc,
    },
    Bench {
        name: "lock_contention",
        unit: "op/s",
        better: Better::Higher,
        compared: true,
        run: lock_contention,
    },
    Bench {
        name: "event_pingpong",
        unit: "rt/s",
        better: Better::Higher,
        compared: true,
        run: event_pingpong,
    },
    Bench {
        name: "pool_map_small",
        unit: "task/s",
        better: Better::Higher,
        compared: true,
        run: pool_map_small,
    },
    Bench {
        name: "pool_apply_roundtrip",
        unit: "rt/s",
        better: Better::Higher,
        compared: true,
        run: pool_apply_roundtrip,
    },
    Bench {
        name: "executor_submit",
        unit: "task/s",
        better: Better::Higher,
        compared: true,
        run: executor_submit,
    },
    Bench {
        name: "thread_executor_submit",
        unit: "task/s",
        better: Better::Higher,
        compared: true,
        run: thread_executor_submit,
    },
    Bench {
        name: "manager_tcp_queue",
        unit: "msg/s",
        better: Better::Higher,
        compared: true,
        run: manager_tcp_queue,
    },
    Bench {
        name: "manager_dict_call",
        unit: "call/s",
        better: Better::Higher,
        compared: true,
        run: manager_dict_call,
    },
    Bench {
        name: "manager_connect",
        unit: "us",
        better: Better::Lower,
        compared: true,
        run: manager_connect,
    },
    Bench {
        name: "broker_queue",
        unit: "task/s",
        better: Better::Higher,
        compared: true,
        run: broker::broker_queue,
    },
    Bench {
        name: "broker_queue_batched",
        unit: "task/s",
        better: Better::Higher,
        compared: true,
        run: broker::broker_queue,
    },
    Bench {
        name: "broker_pool_vs_celery",
        unit: "task/s",
        better: Better::Higher,
        compared: false,
        run: broker_pool::vs_celery,
    },
    Bench {
        name: "broker_pool_vs_rq",
        unit: "task/s",
        better: Better::Higher,
        compared: false,
        run: broker_pool::vs_rq,
    },
    Bench {
        name: "broker_pool_vs_apalis",
        unit: "task/s",
        better: Better::Higher,
        compared: false,
        run: broker_pool::vs_apalis,
    },
    Bench {
        name: "broker_pool_latency_vs_celery",
        unit: "us",
        better: Better::Lower,
        compared: false,
        run: broker_pool::latency_vs_celery,
    },
    Bench {
        name: "broker_pool_latency_p99_vs_celery",
        unit: "us",
        better: Better::Lower,
        compared: false,
        run: broker_pool::latency_p99_vs_celery,
    },
    Bench {
        name: "broker_pool_map_vs_local",
        unit: "task/s",
        better: Better::Higher,
        compared: false,
        run: broker_pool::map_vs_local,
    },
    Bench {
        name: "broker_pool_cpu_per_task",
        unit: "us",
        better: Better::Lower,
        compared: false,
        run: broker_pool::cpu_per_task,
    },
    Bench {
        name: "limit_redis_xadd",
        unit: "op/s",
        better: Better::Higher,
        compared: false,
        run: broker::limit_redis_xadd,
    },
    Bench {
        name: "run_overhead",
        unit: "job/s",
        better: Better::Higher,
        compared: false,
        run: run_overhead::run_overhead,
    },
    Bench {
        name: "run_overhead_xargs",
        unit: "job/s",
        better: Better::Higher,
        compared: false,
        run: run_overhead::run_overhead_xargs,
    },
    Bench {
        name: "run_overhead_shell",
        unit: "job/s",
        better: Better::Higher,
        compared: false,
        run: run_overhead::run_overhead_shell,
    },
    Bench {
        name: "run_pipe",
        unit: "line/s",
        better: Better::Higher,
        compared: false,
        run: run_overhead::run_pipe,
    },
    Bench {
        name: "limit_run_spawn",
        unit: "job/s",
        better: Better::Higher,
        compared: false,
        run: run_overhead::limit_run_spawn,
    },
    Bench {
        name: "limit_spin_pingpong",
        unit: "rt/s",
        better: Better::Higher,
        compared: false,
        run: limit_spin_pingpong,
    },
    Bench {
        name: "limit_tcp_pingpong",
        unit: "rt/s",
        better: Better::Higher,
        compared: false,
        run: limit_tcp_pingpong,
    },
    Bench {
        name: "limit_memcpy_64m",
        unit: "MB/s",
        better: Better::Higher,
        compared: false,
        run: limit_memcpy_64m,
    },
    Bench {
        name: "async_queue_pingpong_vs_tokio_process",
        unit: "rt/s",
        better: Better::Higher,
        compared: false,
        run: async_rows::pingpong_vs_tokio_process,
    },
    Bench {
        name: "async_queue_pingpong_vs_blocking",
        unit: "rt/s",
        better: Better::Higher,
        compared: false,
        run: async_rows::pingpong_vs_blocking,
    },
    Bench {
        name: "async_pool_submit",
        unit: "task/s",
        better: Better::Higher,
        compared: false,
        run: async_rows::pool_submit_vs_spawn_blocking,
    },
    Bench {
        name: "async_idle_cpu",
        unit: "%core",
        better: Better::Lower,
        compared: false,
        run: async_rows::idle_cpu,
    },
];

#[derive(Serialize)]
struct Outcome {
    name: &'static str,
    ours: f64,
    /// `None` for a row without a CPython side (`null` in the JSON).
    cpython: Option<f64>,
    unit: &'static str,
    ratio: Option<f64>,
}

fn main() {
    multiproc::init();
    if let Err(e) = run() {
        eprintln!("multiproc-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.name == "list" {
        for b in BENCHES {
            println!("{}", b.name);
        }
        return Ok(());
    }
    let chosen: Vec<&Bench> = if args.name == "all" {
        BENCHES.iter().collect()
    } else {
        let b = BENCHES.iter().find(|b| b.name == args.name);
        vec![b.with_context(|| format!("unknown benchmark {:?} (try `list`)", args.name))?]
    };
    let _busy = Busy::start(args.busy)?;
    println!(
        "# machine: {} CPUs, {} busy processes beside; ratio > 1 means multiproc is better",
        multiproc::cpu_count(),
        args.busy
    );
    println!(
        "{:<32} {:>14} {:>14} {:<6} {:>8}",
        "# name", "ours", "cpython", "unit", "ratio"
    );
    let mut outcomes = Vec::new();
    for b in chosen {
        if let Some(why) = run_overhead::skip_reason(b.name) {
            println!("# {}: skipped: {why}", b.name);
            continue;
        }
        let ours = (b.run)(args.quick).with_context(|| format!("{}: ours", b.name))?;
        let cpython = if b.compared {
            Some(cpython(&args.python, b.name, args.quick)?)
        } else {
            run_overhead::other_side(b.name)
        };
        let ratio = cpython.map(|c| match b.better {
            Better::Higher => ours / c,
            Better::Lower => c / ours,
        });
        println!(
            "{:<32} {:>14.1} {:>14} {:<6} {:>8}",
            b.name,
            ours,
            cpython.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            b.unit,
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
        );
        outcomes.push(Outcome {
            name: b.name,
            ours,
            cpython,
            unit: b.unit,
            ratio,
        });
    }
    broker::stop();
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&outcomes)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the same benchmark in CPython (`python/bench.py`) and reads its JSON line.
fn cpython(python: &str, name: &str, quick: bool) -> anyhow::Result<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/bench.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(name);
    if let Some(url) = broker::url_if_started() {
        cmd.env("MULTIPROC_BENCH_REDIS", url);
    }
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    if !out.status.success() {
        bail!(
            "{name}: cpython side failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[derive(serde::Deserialize)]
    struct Line {
        value: f64,
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Line = serde_json::from_str(text.trim())
        .with_context(|| format!("{name}: cpython printed {text:?}"))?;
    Ok(line.value)
}

fn scaled(n: usize, quick: bool) -> usize {
    if quick { (n / 10).max(1) } else { n }
}

fn spawn_join(method: StartMethod, n: usize) -> anyhow::Result<f64> {
    for _ in 0..5 {
        Process::new(|()| (), ())
            .start_method(method)
            .start()?
            .into_result()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        let mut p = Process::new(|()| (), ()).start_method(method).start()?;
        p.join()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn spawn_join_default(quick: bool) -> anyhow::Result<f64> {
    spawn_join(StartMethod::Spawn, scaled(200, quick))
}

fn spawn_join_forkserver(quick: bool) -> anyhow::Result<f64> {
    spawn_join(StartMethod::ForkServer, scaled(200, quick))
}

fn echo(conn: Connection<u64>) {
    while let Ok(x) = conn.recv() {
        if conn.send(&x).is_err() {
            break;
        }
    }
}

fn pipe_pingpong(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(20_000, quick);
    let (ours, theirs) = Pipe::new::<u64>(true)?;
    let child = Process::new(echo, theirs).start()?;
    for i in 0..1000 {
        ours.send(&i)?;
        ours.recv()?;
    }
    let t = Instant::now();
    for i in 0..n as u64 {
        ours.send(&i)?;
        let back = ours.recv()?;
        anyhow::ensure!(back == i, "echo mismatch");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(ours);
    child.into_result()?;
    Ok(rate)
}

fn sink(conn: Connection<u64>) {
    let mut total = 0u64;
    while let Ok(b) = conn.recv_bytes() {
        if b.is_empty() {
            break;
        }
        total += b.len() as u64;
    }
    let _ = conn.send(&total);
}

fn pipe_throughput(quick: bool) -> anyhow::Result<f64> {
    let total: usize = if quick { 64 << 20 } else { 1 << 30 };
    let chunk = vec![0x5au8; 1 << 20];
    let (ours, theirs) = Pipe::new::<u64>(true)?;
    let child = Process::new(sink, theirs).start()?;
    for _ in 0..16 {
        ours.send_bytes(&chunk)?; // warm-up
    }
    let t = Instant::now();
    for _ in 0..total / chunk.len() {
        ours.send_bytes(&chunk)?;
    }
    ours.send_bytes(&[])?;
    let got = ours.recv()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        got as usize == total + 16 * chunk.len(),
        "sink counted {got} bytes"
    );
    child.into_result()?;
    Ok(total as f64 / secs / 1e6)
}

/// How long any party of a benchmark waits for the others (at a barrier, for an event, or
/// spinning) before the run is declared broken, as bench.py's 60 s start timeout.
const PATIENCE: Duration = Duration::from_secs(60);

/// Meets the other parties at `barrier`, giving up after [`PATIENCE`].
fn meet(barrier: &Barrier) -> Result<(), String> {
    barrier
        .wait_timeout(PATIENCE)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn waited(event: &Event, what: &str) -> Result<(), String> {
    if event.wait_timeout(PATIENCE) {
        Ok(())
    } else {
        Err(format!("{what}: not set after {PATIENCE:?}"))
    }
}

/// Joins the children of a timed run and returns their results. If the run failed (a barrier
/// broke, say), kills them first and reports what they said along with the run's error.
fn settle<R: Serialize + DeserializeOwned>(
    children: Vec<Process<Result<R, String>>>,
    run: anyhow::Result<Duration>,
) -> anyhow::Result<(Duration, Vec<R>)> {
    match run {
        Ok(elapsed) => {
            let mut out = Vec::with_capacity(children.len());
            for p in children {
                out.push(p.into_result()?.map_err(anyhow::Error::msg)?);
            }
            Ok((elapsed, out))
        }
        Err(e) => {
            let mut why = Vec::new();
            for mut p in children {
                let _ = p.kill();
                if let Err(c) = p.join() {
                    why.push(c.to_string());
                }
            }
            Err(e.context(format!("children: [{}]", why.join("; "))))
        }
    }
}

/// An item of the queue benchmarks: bench.py's "small" kind (ints) or "large" kind (64 KiB
/// bytes). Items travel as `Some(item)`; `None` is the end marker, as bench.py's `None`.
trait Item: Serialize + DeserializeOwned + Send + 'static {
    /// What a consumer adds up to check the run: the int itself, or the byte count.
    fn weight(&self) -> u64;
}

impl Item for u64 {
    fn weight(&self) -> u64 {
        *self
    }
}

impl Item for ByteBuf {
    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

/// The payload of a "large" item.
const LARGE_ITEM: usize = 64 * 1024;

/// The queue, the start barrier, and how many items to put.
type ProducerArgs<T> = (Queue<Option<T>>, Barrier, u64);

/// Puts `0..count` then the end marker; returns `(count, sum)`.
fn small_producer((q, start, count): ProducerArgs<u64>) -> Result<(u64, u64), String> {
    meet(&start)?;
    for i in 0..count {
        q.put(Some(i)).map_err(|e| e.to_string())?;
    }
    q.put(None).map_err(|e| e.to_string())?;
    Ok((count, count * count.saturating_sub(1) / 2))
}

/// Puts `count` 64 KiB items then the end marker; returns `(count, bytes)`.
fn large_producer((q, start, count): ProducerArgs<ByteBuf>) -> Result<(u64, u64), String> {
    let item = Some(ByteBuf::from(vec![0xab; LARGE_ITEM]));
    meet(&start)?;
    for _ in 0..count {
        q.put(&item).map_err(|e| e.to_string())?;
    }
    q.put(None).map_err(|e| e.to_string())?;
    Ok((count, count * LARGE_ITEM as u64))
}

/// Gets items up to the first end marker, then meets the parent at `done`; returns
/// `(items, sum of weights)`.
fn consumer<T: Item>(
    (q, start, done): (Queue<Option<T>>, Barrier, Barrier),
) -> Result<(u64, u64), String> {
    meet(&start)?;
    let (mut items, mut weight) = (0u64, 0u64);
    while let Some(x) = q.get().map_err(|e| e.to_string())? {
        items += 1;
        weight += x.weight();
    }
    meet(&done)?;
    Ok((items, weight))
}

/// bench.py's `_queue_run`: `n` producers and `n` consumers on one default queue, each
/// consumer stopping at its first end marker. Timed from the start barrier (every child
/// started) to the last consumer's end. Returns the seconds, items and weight received.
fn queue_run<T, P>(producer: P, n: u64, total: u64) -> anyhow::Result<(f64, u64, u64)>
where
    T: Item,
    P: Fn(ProducerArgs<T>) -> Result<(u64, u64), String> + Copy + Send + 'static,
{
    let q = Queue::<Option<T>>::new()?;
    let parties = u32::try_from(2 * n + 1)?;
    let (start, done) = (Barrier::new(parties)?, Barrier::new(u32::try_from(n + 1)?)?);
    let mut children = Vec::new();
    for _ in 0..n {
        let args = (q.clone(), start.clone(), done.clone());
        children.push(Process::new(consumer::<T>, args).start()?);
    }
    for i in 0..n {
        let count = total / n + if i == 0 { total % n } else { 0 };
        children.push(Process::new(producer, (q.clone(), start.clone(), count)).start()?);
    }
    let run = (|| {
        meet(&start).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        meet(&done).map_err(anyhow::Error::msg)?;
        Ok(t.elapsed())
    })();
    let (elapsed, results) = settle(children, run)?;
    let (got, sent) = results.split_at(n as usize);
    let sum = |r: &[(u64, u64)]| r.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let (got, sent) = (sum(got), sum(sent));
    ensure!(
        got == sent && sent.0 == total,
        "consumers got {got:?} (items, weight), producers sent {sent:?}, expected {total} items"
    );
    Ok((elapsed.as_secs_f64(), got.0, got.1))
}

fn queue_small(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(1_000_000, quick) as u64;
    queue_run(small_producer, 1, (n / 100).max(1000))?; // warm-up
    let (secs, items, _) = queue_run(small_producer, 1, n)?;
    Ok(items as f64 / secs)
}

fn queue_large(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(16_000, quick) as u64;
    queue_run(large_producer, 1, 100)?; // warm-up
    let (secs, _, bytes) = queue_run(large_producer, 1, n)?;
    Ok(bytes as f64 / 1e6 / secs)
}

fn queue_mpmc(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(500_000, quick) as u64;
    queue_run(small_producer, 2, (n / 100).max(1000))?; // warm-up
    let (secs, items, _) = queue_run(small_producer, 2, n)?;
    Ok(items as f64 / secs)
}

fn lock_worker((v, start, done, count): (Value<u64>, Barrier, Barrier, u64)) -> Result<(), String> {
    meet(&start)?;
    for _ in 0..count {
        *v.get_lock().map_err(|e| e.to_string())? += 1;
    }
    meet(&done)
}

/// bench.py's `_lock_run`: two processes add 1 to a shared value `per_proc` times each, under
/// its lock. Returns the seconds from the start barrier to the end of the last one.
fn lock_run(per_proc: u64) -> anyhow::Result<f64> {
    let v = Value::new(0u64)?;
    let (start, done) = (Barrier::new(3)?, Barrier::new(3)?);
    let mut children = Vec::new();
    for _ in 0..2 {
        let args = (v.clone(), start.clone(), done.clone(), per_proc);
        children.push(Process::new(lock_worker, args).start()?);
    }
    let run = (|| {
        meet(&start).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        meet(&done).map_err(anyhow::Error::msg)?;
        Ok(t.elapsed())
    })();
    let (elapsed, _) = settle(children, run)?;
    ensure!(
        v.get() == 2 * per_proc,
        "counter {} != {}",
        v.get(),
        2 * per_proc
    );
    Ok(elapsed.as_secs_f64())
}

fn lock_contention(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(100_000, quick) as u64;
    lock_run(1000)?; // warm-up
    Ok(2.0 * n as f64 / lock_run(n)?)
}

fn event_child((ping, pong, rounds): (Event, Event, u64)) -> Result<(), String> {
    for _ in 0..rounds {
        waited(&ping, "ping")?;
        ping.clear();
        pong.set();
    }
    Ok(())
}

/// bench.py's `bench_event_pingpong`: the parent sets `ping` and waits for `pong`, the child
/// the reverse; the warm-up rounds also wait out the child's start.
fn event_pingpong(quick: bool) -> anyhow::Result<f64> {
    let (n, warm) = (scaled(10_000, quick) as u64, 200);
    let (ping, pong) = (Event::new()?, Event::new()?);
    let child = Process::new(event_child, (ping.clone(), pong.clone(), warm + n)).start()?;
    let rounds = |k: u64| -> Result<(), String> {
        for _ in 0..k {
            ping.set();
            waited(&pong, "pong")?;
            pong.clear();
        }
        Ok(())
    };
    let run = (|| {
        rounds(warm).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        rounds(n).map_err(anyhow::Error::msg)?;
        Ok(t.elapsed())
    })();
    let (elapsed, _) = settle(vec![child], run)?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Spins until `word` holds `want`, without any system call; gives up after [`PATIENCE`].
fn spin_for(word: &RawValue<u8>, want: u8) -> Result<(), String> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    while word.get() != want {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 20)
            && since.get_or_insert_with(Instant::now).elapsed() > PATIENCE
        {
            return Err(format!("spin: {want} not seen after {PATIENCE:?}"));
        }
    }
    Ok(())
}

/// Round `i` of the spin ping-pong: the parent writes `ping(i)`, the child answers `ping(i) +
/// 1`. One byte, so that each write is a single store (a byte-wise copy of a wider counter
/// could interleave with the other side's next write); wrapping is harmless, as each side
/// waits for the value that follows the one it wrote.
fn ping(i: u64) -> u8 {
    (2 * i + 1) as u8
}

fn spin_child((word, rounds): (RawValue<u8>, u64)) -> Result<(), String> {
    for i in 0..rounds {
        spin_for(&word, ping(i))?;
        word.set(ping(i).wrapping_add(1));
    }
    Ok(())
}

/// The floor of a cross-process round trip: one shared byte bounced by two spinning processes
/// (`limits.c`: "shm word + pure spin").
fn limit_spin_pingpong(quick: bool) -> anyhow::Result<f64> {
    let (n, warm) = (scaled(1_000_000, quick) as u64, 1000);
    let word = RawValue::new(0u8)?;
    let child = Process::new(spin_child, (word.clone(), warm + n)).start()?;
    let rounds = |from: u64, to: u64| -> Result<(), String> {
        for i in from..to {
            word.set(ping(i));
            spin_for(&word, ping(i).wrapping_add(1))?;
        }
        Ok(())
    };
    let run = (|| {
        rounds(0, warm).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        rounds(warm, warm + n).map_err(anyhow::Error::msg)?;
        Ok(t.elapsed())
    })();
    let (elapsed, _) = settle(vec![child], run)?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket, spinning on `WouldBlock`.
fn spin_read(s: &mut std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Echoes 64-byte messages on a TCP connection to `address` until it closes.
fn tcp_echo_child(address: String) -> Result<(), String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    while spin_read(&mut s, &mut buf).is_ok() {
        s.write_all(&buf).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The floor of a request and its reply over TCP on loopback (what the `manager_*` rows do):
/// 64-byte messages bounced by two processes that spin on non-blocking reads.
fn limit_tcp_pingpong(quick: bool) -> anyhow::Result<f64> {
    use std::io::Write;
    let n = scaled(100_000, quick);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let child = Process::new(tcp_echo_child, address).start()?;
    let run = (|| {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut buf = [7u8; 64];
        let mut rounds = |count: usize| -> std::io::Result<()> {
            for _ in 0..count {
                s.write_all(&buf)?;
                spin_read(&mut s, &mut buf)?;
            }
            Ok(())
        };
        rounds(1000)?;
        let t = Instant::now();
        rounds(n)?;
        Ok(t.elapsed())
    })();
    let (elapsed, _) = settle(vec![child], run)?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The floor of a copy: a 64 MiB buffer copied in process (`limits.c`: "memcpy 67108864").
fn limit_memcpy_64m(quick: bool) -> anyhow::Result<f64> {
    let (size, n) = (64 << 20, scaled(20, quick));
    let mut a = vec![1u8; size];
    let mut b = vec![2u8; size];
    b.copy_from_slice(&a); // warm-up
    let t = Instant::now();
    for i in 0..n {
        b.copy_from_slice(std::hint::black_box(&a));
        a[i % size] = b[(i * 7) % size];
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&b);
    Ok((size * n) as f64 / secs / 1e6)
}

fn identity(x: u64) -> u64 {
    x
}

/// `map` of identity over 100k ints with 2 workers (CPython's default chunk size on both sides).
fn pool_map_small(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(100_000, quick) as u64;
    let pool = multiproc::Pool::new(2)?;
    pool.map(identity, 0..1000)?; // warm-up
    // The median of five maps (bench.py does the same): one map is ~1 ms, at the mercy of a
    // single late wake-up on this 2-CPU machine.
    let mut rates = Vec::new();
    for _ in 0..MAP_ROUNDS {
        let t0 = Instant::now();
        let out = pool.map(identity, 0..n)?;
        let dt = t0.elapsed().as_secs_f64();
        if out.len() as u64 != n || out.last() != Some(&(n - 1)) {
            bail!("bad map result");
        }
        rates.push(n as f64 / dt);
    }
    pool.close();
    pool.join()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Maps timed by `pool_map_small` (the median counts).
const MAP_ROUNDS: usize = 5;

/// Sequential `apply_async(identity, i).get()` on a pool of 2.
fn pool_apply_roundtrip(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(5000, quick) as u64;
    let pool = multiproc::Pool::new(2)?;
    for i in 0..100 {
        pool.apply_async(identity, i)?.get()?;
    }
    let t0 = Instant::now();
    for i in 0..n {
        if pool.apply_async(identity, i)?.get()? != i {
            bail!("bad apply result");
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    pool.close();
    pool.join()?;
    Ok(n as f64 / dt)
}

/// Sequential `submit(identity, i).result()` on a ProcessPoolExecutor of 2.
fn executor_submit(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(10_000, quick) as u64;
    let ex = multiproc::ProcessPoolExecutor::new(2)?;
    for i in 0..100 {
        ex.submit(identity, i)?.result()?;
    }
    let t0 = Instant::now();
    for i in 0..n {
        if ex.submit(identity, i)?.result()? != i {
            bail!("bad result");
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    ex.shutdown(true, false)?;
    Ok(n as f64 / dt)
}

/// Sequential `submit(|| i).result()` on a ThreadPoolExecutor of 2.
fn thread_executor_submit(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(10_000, quick) as u64;
    let ex = multiproc::ThreadPoolExecutor::new(2)?;
    for i in 0..100u64 {
        ex.submit(move || identity(i))?.result()?;
    }
    let t0 = Instant::now();
    for i in 0..n {
        if ex.submit(move || identity(i))?.result()? != i {
            bail!("bad result");
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    ex.shutdown(true, false);
    Ok(n as f64 / dt)
}

/// The authkey of the manager benchmarks (bench.py's `_AUTHKEY`).
const MANAGER_AUTHKEY: &[u8] = b"abc";

/// The typeid the manager benchmarks' server registers its queue under.
const TASK_QUEUE: &str = "get_task_queue";

/// The manager server of the `manager_*` benchmarks, run in a child process as CPython's
/// `BaseManager.start()` does: binds `at` (a Unix socket path, as CPython's `Manager()` does
/// on Linux) or else 127.0.0.1 on a free port, registers one queue as `get_task_queue`, sends
/// its address back through `conn`, then serves until killed.
fn manager_server_child((conn, at): (Connection<String>, Option<String>)) -> Result<(), String> {
    let bind = || -> multiproc::Result<ManagerServer> {
        let address = match &at {
            Some(path) => Address::unix(path),
            None => Address::tcp("127.0.0.1:0")?,
        };
        let mut server = ManagerServer::bind(&address, MANAGER_AUTHKEY)?;
        server.register_queue::<i64>(TASK_QUEUE);
        Ok(server)
    };
    let server = bind().map_err(|e| e.to_string())?;
    let address = match &at {
        Some(path) => path.clone(),
        None => server.address().to_string(),
    };
    conn.send(&address).map_err(|e| e.to_string())?;
    drop(conn);
    server.serve_forever();
    Ok(())
}

/// A running [`manager_server_child`]; killed when dropped.
struct ManagerChild {
    process: Process<Result<(), String>>,
    address: Address,
}

impl ManagerChild {
    /// Starts the server process on TCP and waits (up to [`PATIENCE`]) for its address.
    fn start() -> anyhow::Result<ManagerChild> {
        ManagerChild::start_at(None)
    }

    /// Starts the server process on a fresh Unix socket path.
    fn start_unix() -> anyhow::Result<ManagerChild> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "multiproc-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        ManagerChild::start_at(Some(path.to_string_lossy().into_owned()))
    }

    fn start_at(unix: Option<String>) -> anyhow::Result<ManagerChild> {
        let (ours, theirs) = Pipe::new::<String>(true)?;
        let process = Process::new(manager_server_child, (theirs, unix.clone()))
            .daemon(true)
            .start()?;
        let address = match ours.recv_timeout(PATIENCE) {
            Ok(a) => a,
            Err(e) => {
                let _ = process.kill();
                let why = process
                    .into_result()
                    .map_or_else(|c| c.to_string(), |r| format!("{r:?}"));
                bail!("manager server did not report its address: {e} (child: {why})");
            }
        };
        let address = match unix {
            Some(path) => Address::unix(path),
            None => Address::tcp(address.as_str())?,
        };
        Ok(ManagerChild { process, address })
    }
}

impl Drop for ManagerChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.join(); // `Killed`, as asked
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sequential `put(i)` + `get(timeout=5)` round trips on a manager's queue through its proxy,
/// over TCP, the server in a child process (bench.py's `bench_manager_tcp_queue`). The
/// server's start-up is not timed.
fn manager_tcp_queue(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(10_000, quick) as i64;
    let server = ManagerChild::start()?;
    let manager = ManagerClient::connect(&server.address, MANAGER_AUTHKEY)?;
    let q = manager.queue::<i64>(TASK_QUEUE)?;
    let rounds = |from: i64, to: i64| -> anyhow::Result<()> {
        for i in from..to {
            q.put(i)?;
            let back = q.get_timeout(Duration::from_secs(5))?;
            ensure!(back == i, "queue gave {back}, expected {i}");
        }
        Ok(())
    };
    rounds(0, 100)?; // warm-up
    let t = Instant::now();
    rounds(0, n)?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(q);
    drop(server);
    Ok(rate)
}

/// A child process's `d[i] = i` calls through a dict proxy of a manager (the server in another
/// child process, on a Unix socket as CPython's `Manager()` is on Linux), calls per second as
/// the child measured them (bench.py's `bench_manager_dict_call`).
fn manager_dict_call(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(10_000, quick) as i64;
    let server = ManagerChild::start_unix()?;
    let Address::Unix(path) = &server.address else {
        bail!("the server was started on a Unix socket");
    };
    let rate = Process::new(dict_caller, (path.to_string_lossy().into_owned(), n))
        .start()?
        .into_result()?
        .map_err(anyhow::Error::msg)?;
    drop(server);
    Ok(rate)
}

/// The client side of [`manager_dict_call`]: connects, makes a dict, times `n` item sets.
fn dict_caller((path, n): (String, i64)) -> Result<f64, String> {
    let run = || -> anyhow::Result<f64> {
        let manager = ManagerClient::connect(&Address::unix(path), MANAGER_AUTHKEY)?;
        let d = manager.dict::<i64, i64>()?;
        for i in 0..100 {
            d.set(&i, &i)?; // warm-up
        }
        let t = Instant::now();
        for i in 0..n {
            d.set(&i, &i)?;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        ensure!(d.len()? == n.max(100) as usize, "lost dict items");
        Ok(rate)
    };
    run().map_err(|e| format!("{e:#}"))
}

/// Latency of a fresh client's connect + first queue call (`get_nowait`; `qsize` in bench.py,
/// one round trip each) on an already running
/// manager (bench.py's `bench_manager_connect`), in microseconds per iteration; dropping the
/// proxy is timed too.
fn manager_connect(quick: bool) -> anyhow::Result<f64> {
    let n = scaled(200, quick);
    let server = ManagerChild::start()?;
    let once = || -> anyhow::Result<()> {
        let got = ManagerClient::connect(&server.address, MANAGER_AUTHKEY)?
            .queue::<i64>(TASK_QUEUE)?
            .try_get();
        ensure!(
            got.as_ref()
                .is_err_and(|e| e.kind() == multiproc::ErrorKind::Empty),
            "expected an empty queue, got {got:?}"
        );
        Ok(())
    };
    for _ in 0..5 {
        once()?; // warm-up
    }
    let t = Instant::now();
    for _ in 0..n {
        once()?;
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(server);
    Ok(per)
}
