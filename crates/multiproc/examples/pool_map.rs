//! `Pool::map`: one call hands a pool every task and gives back the results in order.
//!
//! Mirrors the `map` snippet of seed 004 (ten tasks of 1 s on 4 workers: about 3 s):
//!
//! ```python
//! def task(msg): print('hello, %s' % msg); time.sleep(1); return 'msg: %s' % msg
//! pool = Pool(processes=4)
//! results = pool.map(task, [x for x in range(10)])
//! pool.close(); pool.join()
//! print('processes done, result:')
//! for x in results: print(x)
//! ```
//!
//! The workers print `hello` in whatever order they run; `map` returns `msg: 0` to `msg: 9`
//! in the order of the items all the same.
//!
//! Run with `cargo run --example pool_map -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::Pool;

/// `def task(msg)`.
fn task(msg: u32) -> String {
    println!("hello, {msg} (pid {})", std::process::id());
    sleep(Duration::from_secs(1));
    format!("msg: {msg}")
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    let pool = Pool::builder().processes(4).build()?;
    let msgs: Vec<u32> = (0..10).collect();
    let start = Instant::now();
    let results = pool.map(task, msgs)?;
    let took = start.elapsed();
    pool.close();
    pool.join()?;
    println!("processes done, result:");
    for x in &results {
        println!("{x}");
    }
    println!("map took {:.2} s", took.as_secs_f64());

    let expected: Vec<String> = (0..10).map(|x| format!("msg: {x}")).collect();
    assert_eq!(results, expected, "map keeps the order of the items");
    assert!(
        took >= Duration::from_secs(3),
        "10 tasks of 1 s, 4 at a time, take three rounds"
    );
    Ok(())
}
