//! A pool of 4 worker processes takes 5 tasks of random length, started with `apply_async`.
//!
//! Mirrors the `Pool` snippet of seed 000 (its tasks sleep up to 3 s; these up to 2 s):
//!
//! ```python
//! def long_time_task(name):
//!     print('Run task %s (%s)...' % (name, os.getpid()))
//!     start = time.time(); time.sleep(random.random() * 3); end = time.time()
//!     print('Task %s runs %0.2f seconds.' % (name, (end - start)))
//! p = Pool(4)
//! for i in range(5): p.apply_async(long_time_task, args=(i,))
//! print('Waiting for all subprocesses done...'); p.close(); p.join()
//! ```
//!
//! Five tasks on four workers: one worker runs two of them, one after the other.
//!
//! Run with `cargo run --example pool_apply_async -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::Pool;

/// `random.random() * 2` seconds, without a random-number crate: each `RandomState` is keyed
/// from the OS's randomness, so hashing the task's name and pid gives a fresh number each run.
fn random_duration(name: u32) -> Duration {
    let h = std::collections::hash_map::RandomState::new().hash_one((name, std::process::id()));
    Duration::from_millis(h % 2000)
}

/// `def long_time_task(name)`; returns who ran it and for how long, for the checks below.
fn long_time_task(name: u32) -> (u32, u32, Duration) {
    let pid = std::process::id();
    println!("Run task {name} ({pid})...");
    let start = Instant::now();
    sleep(random_duration(name));
    let took = start.elapsed();
    println!("Task {name} runs {:.2} seconds.", took.as_secs_f64());
    (name, pid, took)
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    let parent = std::process::id();
    println!("Parent process {parent}.");
    let p = Pool::new(4)?;
    let workers: HashSet<u32> = p
        .worker_pids()
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect();
    let start = Instant::now();
    // The seed drops what apply_async returns; these are kept for the checks.
    let pending = (0..5)
        .map(|i| p.apply_async(long_time_task, i))
        .collect::<multiproc::Result<Vec<_>>>()?;
    println!("Waiting for all subprocesses done...");
    p.close();
    p.join()?;
    let took = start.elapsed();
    println!("All subprocesses done ({:.2} s).", took.as_secs_f64());

    let mut longest = Duration::ZERO;
    for (i, r) in (0..5).zip(&pending) {
        let (name, pid, task_took) = r.get()?;
        assert_eq!(name, i, "each result belongs to its own task");
        assert!(
            workers.contains(&pid) && pid != parent,
            "task {name} ran in a worker, not in {pid}"
        );
        assert!(
            task_took < Duration::from_millis(2500),
            "task {name} waits under 2 s"
        );
        longest = longest.max(task_took);
    }
    assert!(took >= longest, "join waits for the longest task");
    Ok(())
}
