//! Python's `ProcessPoolExecutor`, with [`multiproc::ProcessPoolExecutor`]: `submit` gives a
//! [`Future`](multiproc::Future), and leaving the `with` block is `shutdown(wait=True)`.
//!
//! Mirrors the third way to start processes in seed 002, `第三种进程池` (ten tasks of 1 s, at
//! most 4 at a time: about 3 s):
//!
//! ```python
//! def task(num): print('我是子进程', num); time.sleep(1)   # "I am child process", num
//! with ProcessPoolExecutor(4) as pool:  # the most processes running at once
//!     for i in range(10): pool.submit(task, i)
//! ```
//!
//! Rust has no `with`; dropping the executor does what leaving the block does (shut down and
//! wait for the tasks), and part 1 relies on it. Part 2 is `pool.map`, part 3
//! `shutdown(cancel_futures=True)`, which drops the tasks no worker has taken yet.
//!
//! Run with `cargo run --example pool_executor -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::collections::HashSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, ProcessPoolExecutor};

/// `def task(num)`; returns its pid for the checks.
fn task(num: u32) -> u32 {
    println!("  I am child process {num} (pid {})", std::process::id());
    sleep(Duration::from_secs(1));
    std::process::id()
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. with ProcessPoolExecutor(4) as pool: pool.submit(task, i) ==");
    let start = Instant::now();
    let futures = {
        let pool = ProcessPoolExecutor::new(4)?;
        (0..10)
            .map(|i| pool.submit(task, i))
            .collect::<multiproc::Result<Vec<_>>>()?
        // The end of the `with` block: the executor drops here, which is
        // `pool.shutdown(true, false)`: no more tasks, then wait for those submitted.
    };
    let took = start.elapsed();
    assert!(
        futures.iter().all(|f| f.done()),
        "the block waited for every task"
    );
    let pids = futures
        .iter()
        .map(|f| f.result())
        .collect::<multiproc::Result<HashSet<_>>>()?;
    println!(
        "  10 tasks ran in {} worker processes in {:.2} s",
        pids.len(),
        took.as_secs_f64()
    );
    assert!(pids.len() <= 4, "never more than the pool's 4 processes");
    assert!(!pids.contains(&std::process::id()), "all in workers");
    assert!(
        took >= Duration::from_secs(3),
        "10 tasks of 1 s, 4 at a time, take three rounds"
    );

    println!("\n== 2. pool.map(task, range(4)): results in order ==");
    let pool = ProcessPoolExecutor::new(4)?;
    let start = Instant::now();
    let pids = pool
        .map(task, 0..4, Some(Duration::from_secs(60)))?
        .collect::<multiproc::Result<Vec<_>>>()?;
    println!(
        "  4 results in {:.2} s from pids {pids:?}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(pids.len(), 4);
    pool.shutdown(true, false)?;
    assert_eq!(
        pool.submit(task, 0).unwrap_err().kind(),
        ErrorKind::InvalidState,
        "no tasks after shutdown"
    );

    println!("\n== 3. pool.shutdown(wait=True, cancel_futures=True) ==");
    let pool = ProcessPoolExecutor::new(4)?;
    let futures = (0..10)
        .map(|i| pool.submit(task, i))
        .collect::<multiproc::Result<Vec<_>>>()?;
    pool.shutdown(true, true)?;
    let cancelled = futures.iter().filter(|f| f.cancelled()).count();
    let finished = futures.iter().filter(|f| f.result().is_ok()).count();
    println!("  {finished} tasks finished, {cancelled} were cancelled before a worker took them");
    assert_eq!(finished + cancelled, 10);
    assert!(finished >= 4, "the tasks workers already had still finish");
    Ok(())
}
