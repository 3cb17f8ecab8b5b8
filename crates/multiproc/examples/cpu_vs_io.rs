//! CPU-bound against I/O-bound work, with threads and with processes.
//!
//! Mirrors `【3.1】多进程与多线程的运行速度对比` (processes against threads) of seed 001, which
//! times 5 processes and 5 threads counting to 99999999, then 5 of each sleeping 3 s:
//!
//! ```python
//! def task_count():
//!     count = 0
//!     while 1:
//!         count += 1
//!         if count == 99999999: break
//! @timer
//! def main_process():
//!     p_list = [Process(target=task_count) for i in range(5)]
//!     [p.start() for p in p_list]; [p.join() for p in p_list]
//! main_process()  # main_process总耗时:4.49s   (total time)
//! main_thread()   # main_thread总耗时:11.69s
//! # and with time.sleep(3) as the task ("通过sleep模拟IO", I/O simulated by sleep):
//! main_process()  # 3.25s
//! main_thread()   # 3.01s
//! ```
//!
//! In Python the GIL lets one thread count at a time, so processes win the CPU-bound race. Rust
//! has no GIL: threads count in parallel as well as processes do, and save the processes'
//! start-up. The count is sized at run time so that one job takes about 0.3 s here, and the
//! waiting job waits 1 s; the whole example takes about 6 s.
//!
//! Run with `cargo run --example cpu_vs_io -p multiproc`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use multiproc::{Pool, Process, cpu_count};

/// Jobs in each run, as in the seed.
const JOBS: usize = 5;
/// How long one CPU-bound job should take.
const JOB_TIME: Duration = Duration::from_millis(300);
/// How long the I/O-like job waits (the seed sleeps 3 s).
const WAIT: Duration = Duration::from_secs(1);

/// `def task_count()`: counts to `n`. `black_box` keeps the compiler from skipping the loop.
fn task_count(n: u64) -> u64 {
    let mut count = 0;
    while count < n {
        count = black_box(count + 1);
    }
    count
}

/// `time.sleep(d)` standing in for I/O: nothing unparks this thread, so `park_timeout` just
/// runs out (in a loop, as it may return early).
fn wait_io(ms: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ms;
        }
        std::thread::park_timeout(left);
    }
}

/// How far one job counts: as far as this machine counts in [`JOB_TIME`].
fn calibrate() -> u64 {
    const STEP: u64 = 1_000_000;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < JOB_TIME / 4 {
        n += task_count(STEP);
    }
    n * 4
}

/// Runs `f`, prints how long it took under `name` (the seed's `@timer`), and returns both.
fn timer<T>(name: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    println!("  {name:<14} total time: {:.2} s", took.as_secs_f64());
    (out, took)
}

/// Runs `job(arg)` on `JOBS` threads and returns their results.
fn on_threads<F: Fn(u64) -> u64 + Copy + Send>(job: F, arg: u64) -> Vec<u64> {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..JOBS).map(|_| s.spawn(move || job(arg))).collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a job panicked"))
            .collect()
    })
}

/// Runs `job(arg)` in `JOBS` processes of its own, as the seed's `main_process` does. `job` is
/// a `fn` item (a zero-sized type), as a process target must be, not a `fn` pointer.
fn on_processes<F>(job: F, arg: u64) -> multiproc::Result<Vec<u64>>
where
    F: Fn(u64) -> u64 + Copy + Send + 'static,
{
    let processes = (0..JOBS)
        .map(|_| Process::new(job, arg).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    processes.into_iter().map(|p| p.into_result()).collect()
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    let n = calibrate();
    println!(
        "== 1. CPU-bound: {JOBS} jobs counting to {n} ({} cores) ==",
        cpu_count()
    );
    let (serial, serial_took) = timer("serial", || {
        (0..JOBS).map(|_| task_count(n)).collect::<Vec<_>>()
    });
    let (threaded, threads_took) = timer("threads", || on_threads(task_count, n));
    // Start-up is timed apart: a program makes its pool once and uses it many times.
    let (pool, _) = timer("pool start-up", || Pool::new(JOBS));
    let pool = pool?;
    let (pooled, pool_took) = timer("pool.map", || pool.map(task_count, vec![n; JOBS]));
    let pooled = pooled?;
    pool.close();
    pool.join()?;
    for counts in [&serial, &threaded, &pooled] {
        assert_eq!(counts, &vec![n; JOBS], "every job counts to the end");
    }
    println!(
        "  threads: {:.1}x, pool: {:.1}x the serial speed",
        serial_took.as_secs_f64() / threads_took.as_secs_f64(),
        serial_took.as_secs_f64() / pool_took.as_secs_f64()
    );

    let ms = u64::try_from(WAIT.as_millis()).unwrap_or(u64::MAX);
    println!("\n== 2. I/O-bound: {JOBS} jobs waiting {ms} ms ==");
    let (threaded, threads_took) = timer("threads", || on_threads(wait_io, ms));
    let (processes, processes_took) = timer("processes", || on_processes(wait_io, ms));
    let processes = processes?;
    assert_eq!(threaded, vec![ms; JOBS]);
    assert_eq!(processes, vec![ms; JOBS]);
    // Waits overlap whatever runs them: about 1 s, where one after the other would take 5 s.
    for took in [threads_took, processes_took] {
        assert!(took >= WAIT, "each job waits {ms} ms");
        assert!(took < WAIT * 4, "the waits overlap");
    }
    println!("  both about {ms} ms: waiting needs no core, so threads do as well as processes");
    Ok(())
}
