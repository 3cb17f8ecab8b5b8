//! `apply_async` with a callback: each result goes to a function in the parent as it arrives.
//!
//! Mirrors the `进程池` (process pool) snippet of seed 003 (ten tasks of 2 s on 5 workers:
//! about 4 s):
//!
//! ```python
//! def myFun(i): time.sleep(2); return i+100
//! def end_call(arg): print("end_call>>", arg)
//! p = Pool(5)
//! for i in range(10):
//!     p.apply_async(func=myFun, args=(i,), callback=end_call)  # the main process calls back
//! print("end"); p.close(); p.join()
//! ```
//!
//! As in Python, the callback runs in the parent process, on the pool's result-handler thread
//! (not the main thread): keep it short, and hand what it collects over through a channel or a
//! mutex. The seed's commented-out `p.apply(func=Foo)  # 串行执行` (serial) is shown last.
//!
//! Run with `cargo run --example pool_callback -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::Pool;

/// `def myFun(i)`.
fn my_fun(i: u32) -> u32 {
    sleep(Duration::from_secs(2));
    i + 100
}

/// What the callback saw: the value, and the process and thread it ran on.
type Called = (u32, u32, ThreadId);

fn main() -> multiproc::Result<()> {
    multiproc::init();

    let called: Arc<Mutex<Vec<Called>>> = Arc::default();
    let p = Pool::new(5)?;
    let start = Instant::now();
    for i in 0..10 {
        let called = called.clone();
        // def end_call(arg): print("end_call>>", arg)
        let end_call = move |arg: &u32| {
            println!("end_call>> {arg}");
            let me = (*arg, std::process::id(), std::thread::current().id());
            called.lock().unwrap_or_else(|e| e.into_inner()).push(me);
        };
        let error_call = |e: &multiproc::Error| eprintln!("error_call>> {e}");
        // The seed drops what apply_async returns: the callback is how the values come back.
        drop(p.apply_async_with(my_fun, i, end_call, error_call)?);
    }
    println!("end");
    p.close();
    p.join()?;
    let took = start.elapsed();
    println!(
        "10 tasks of 2 s on 5 workers took {:.2} s",
        took.as_secs_f64()
    );

    let mut called = std::mem::take(&mut *called.lock().unwrap_or_else(|e| e.into_inner()));
    assert_eq!(called.len(), 10, "join waits for every callback");
    let main_thread = std::thread::current().id();
    for &(_, pid, thread) in &called {
        assert_eq!(pid, std::process::id(), "callbacks run in the parent");
        assert_ne!(
            thread, main_thread,
            "on the pool's thread, not the main one"
        );
    }
    called.sort_unstable_by_key(|&(arg, ..)| arg);
    assert!(called.iter().map(|&(arg, ..)| arg).eq(100..110));
    assert!(took >= Duration::from_secs(4), "two rounds of 2 s");

    // p.apply(func=Foo)  # 串行执行: apply waits for its task, so tasks run one at a time.
    let p = Pool::new(5)?;
    let start = Instant::now();
    let serial = (0..2)
        .map(|i| p.apply(my_fun, i))
        .collect::<multiproc::Result<Vec<_>>>()?;
    let took = start.elapsed();
    p.close();
    p.join()?;
    println!(
        "apply, twice: {serial:?} after {:.2} s (one after the other)",
        took.as_secs_f64()
    );
    assert_eq!(serial, [100, 101]);
    assert!(
        took >= Duration::from_secs(4),
        "apply runs one task at a time"
    );
    Ok(())
}
