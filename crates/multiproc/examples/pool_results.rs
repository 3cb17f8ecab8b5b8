//! Tasks handed to a pool with `apply_async`, first without and then with their results.
//!
//! Mirrors the first two `Pool` snippets of seed 004. Ten tasks of 1 s on 4 workers take three
//! rounds, about 3 s (the seed: "10 processes take 3.09226489067 seconds"):
//!
//! ```python
//! def task(msg): print('hello, %s' % msg); time.sleep(1)
//! pool = Pool(processes=4)
//! for x in range(10): pool.apply_async(task, args=(x,))
//! pool.close(); pool.join(); print('processes done.')
//! ```
//!
//! and, keeping what `apply_async` returns to read each task's value once all are done:
//!
//! ```python
//! def task(msg): print('hello, %s' % msg); time.sleep(1); return 'msg: %s' % msg
//! for x in range(10): ret = pool.apply_async(task, args=(x,)); results.append(ret)
//! pool.close(); pool.join()
//! for x in results: print(x.get())
//! ```
//!
//! Run with `cargo run --example pool_results -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

/// The first snippet's `def task(msg)`: it returns nothing.
fn task(msg: u32) {
    println!("  hello, {msg}");
    sleep(Duration::from_secs(1));
}

/// The second snippet's `def task(msg)`, returning `'msg: %s' % msg`.
fn task_with_result(msg: u32) -> String {
    println!("  hello, {msg}");
    sleep(Duration::from_secs(1));
    format!("msg: {msg}")
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. 10 tasks, results dropped ==");
    let pool = Pool::builder().processes(4).build()?;
    let start = Instant::now();
    for x in 0..10 {
        // Dropping the `AsyncResult` does not cancel the task: `join` still waits for it.
        drop(pool.apply_async(task, x)?);
    }
    pool.close();
    pool.join()?;
    let took = start.elapsed();
    println!("  processes done.");
    println!("  10 processes take {:.2} seconds", took.as_secs_f64());
    assert!(
        took >= Duration::from_secs(3),
        "10 tasks of 1 s, 4 at a time, take three rounds"
    );

    println!("\n== 2. 10 tasks, results read after join ==");
    let pool = Pool::builder().processes(4).build()?;
    let results = (0..10)
        .map(|x| pool.apply_async(task_with_result, x))
        .collect::<multiproc::Result<Vec<_>>>()?;
    pool.close();
    pool.join()?;
    println!("  processes done, result:");
    assert!(
        results.iter().all(|r| r.ready()),
        "after join every result is there"
    );
    for (x, ret) in (0..10).zip(&results) {
        assert!(ret.successful()?, "task {x} succeeded");
        let value = ret.get()?;
        println!("  {value}");
        assert_eq!(value, format!("msg: {x}"));
    }

    // A difference from Python: `get` hands the value over, so a second `get` has nothing.
    let again = results[0].get().expect_err("the value was taken");
    println!("  a second get(): {again}");
    assert_eq!(again.kind(), ErrorKind::InvalidState);
    Ok(())
}
