//! Python's `ProcessPoolExecutor`, done with a `Pool`: `submit` is `apply_async`, and leaving
//! the `with` block is `close` + `join`.
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
//! A difference to keep in mind: the `with` block waits for the tasks when it ends, while a
//! dropped `Pool` terminates its workers (as `multiprocessing.Pool.__exit__` does). Close and
//! join a pool whose tasks must finish; the last part shows what a drop does.
//!
//! Run with `cargo run --example pool_executor -p multiproc`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

/// `time.sleep(d)` standing in for work: nothing unparks this thread, so `park_timeout` just
/// runs out (in a loop, as it may return early).
fn pause(d: Duration) {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::park_timeout(left);
    }
}

/// `def task(num)`; returns its pid for the checks.
fn task(num: u32) -> u32 {
    println!("  I am child process {num} (pid {})", std::process::id());
    pause(Duration::from_secs(1));
    std::process::id()
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. with ProcessPoolExecutor(4) as pool: pool.submit(task, i) ==");
    let start = Instant::now();
    let futures = {
        let pool = Pool::new(4)?;
        let futures = (0..10)
            .map(|i| pool.apply_async(task, i))
            .collect::<multiproc::Result<Vec<_>>>()?;
        // The end of the `with` block: no more tasks, then wait for those submitted.
        pool.close();
        pool.join()?;
        futures
    };
    let took = start.elapsed();
    let pids = futures
        .iter()
        .map(|f| f.get())
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

    println!("\n== 2. the same block, leaving without close() and join() ==");
    let start = Instant::now();
    let futures = {
        let pool = Pool::new(4)?;
        (0..10)
            .map(|i| pool.apply_async(task, i))
            .collect::<multiproc::Result<Vec<_>>>()?
        // The pool drops here: its workers are killed, whatever they were doing.
    };
    let mut failed = 0;
    for f in &futures {
        assert!(f.ready(), "a dropped pool settles each of its tasks");
        if !f.successful()? {
            let e = f.get().expect_err("an unsuccessful task has an error");
            assert_eq!(e.kind(), ErrorKind::InvalidState);
            if failed == 0 {
                println!("  the first failure: {e}");
            }
            failed += 1;
        }
    }
    println!(
        "  after {:.2} s, {failed} of 10 tasks failed",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(failed, 10, "a dropped pool finishes none of its tasks");
    Ok(())
}
