//! The hand-written thread pool of seed 003 (`线程池`, "thread pool"), done with
//! [`multiproc::ThreadPool`].
//!
//! The seed builds its own: a `queue.Queue` of `(func, args, callback)` tasks, worker threads
//! started as tasks arrive up to `max_num`, each calling `callback(success, result)` after its
//! task, and a `StopEvent` sentinel per thread to stop them:
//!
//! ```python
//! class ThreadPool(object):
//!     def __init__(self, max_num, max_task_num=None): ...
//!     def run(self, func, args, callback=None): ...   # queue a task, maybe start a thread
//!     def close(self): ...       # after the queued tasks, every thread stops
//!     def terminate(self): ...   # stop the threads whatever is left
//!
//! pool = ThreadPool(5)
//! def callback(status, result): pass   # status: did the task succeed; result: its value
//! def action(i): print(i)
//! for i in range(30):
//!     ret = pool.run(action, (i,), callback)
//! time.sleep(5)
//! pool.close()
//! pool.terminate()
//! ```
//!
//! `pool.run(func, args, callback)` is [`ThreadPool::apply_async_with`] with a callback for the
//! value and one for the failure; `close` then `join` replaces `time.sleep(5)` (wait for the
//! work, not for a time). The checks: every task ran and was called back, failures too, and
//! never more than 5 threads at once. The last part shows `terminate` dropping queued tasks.
//!
//! Run with `cargo run --example thread_pool -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::sleep;
use std::time::Duration;

use multiproc::{ErrorKind, ThreadPool};

/// How many tasks run now, and the most at once.
#[derive(Default)]
struct Load {
    now: AtomicUsize,
    most: AtomicUsize,
}

fn main() -> multiproc::Result<()> {
    println!("== 1. pool = ThreadPool(5); pool.run(action, (i,), callback) for 30 tasks ==");
    let pool = ThreadPool::new(5)?;
    let load = Arc::new(Load::default());
    let threads = Arc::new(Mutex::new(HashSet::new()));
    // `callback(status, result)`: one channel gets both kinds of call.
    let (called, calls) = mpsc::channel::<(bool, Option<u32>)>();
    for i in 0..30u32 {
        let (load, threads) = (load.clone(), threads.clone());
        // `def action(i): print(i)`; task 13 fails (its panic is printed), to show the other
        // status.
        let action = move || {
            let running = load.now.fetch_add(1, Ordering::SeqCst) + 1;
            load.most.fetch_max(running, Ordering::SeqCst);
            let me = std::thread::current();
            threads.lock().unwrap().insert(me.id());
            println!("  {i} on {}", me.name().unwrap_or("?"));
            sleep(Duration::from_millis(20));
            load.now.fetch_sub(1, Ordering::SeqCst);
            if i == 13 {
                panic!("task {i} is unlucky");
            }
            i * i
        };
        let (ok, failed) = (called.clone(), called.clone());
        pool.apply_async_with(
            action,
            move |result: &u32| ok.send((true, Some(*result))).unwrap(),
            move |_| failed.send((false, None)).unwrap(),
        )?;
    }
    drop(called);
    // Instead of `time.sleep(5)`: no more tasks, then wait for those queued.
    pool.close();
    pool.join()?;

    let calls: Vec<_> = calls.iter().collect();
    let succeeded: u32 = calls.iter().filter_map(|(_, r)| *r).sum();
    let failures = calls.iter().filter(|(ok, _)| !ok).count();
    println!(
        "  {} callbacks: {failures} failure, values summing to {succeeded}",
        calls.len()
    );
    let (most, distinct) = (
        load.most.load(Ordering::SeqCst),
        threads.lock().unwrap().len(),
    );
    println!("  at most {most} tasks at once, on {distinct} threads");
    assert_eq!(calls.len(), 30, "every task is called back");
    assert_eq!(failures, 1);
    assert_eq!(succeeded, (0..30).map(|i| i * i).sum::<u32>() - 13 * 13);
    assert!(
        most <= 5 && distinct <= 5,
        "never more than max_num threads"
    );

    println!("\n== 2. pool.terminate() with tasks still queued ==");
    let pool = ThreadPool::new(2)?;
    let (started_tx, started) = mpsc::channel();
    // Each task, once running, holds until no one can send on `release` any more: the queued
    // tasks carry the senders, so the running ones end when terminate drops the queued.
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let tasks = (0..10)
        .map(|i| {
            let (started_tx, release, gate) = (started_tx.clone(), release.clone(), gate.clone());
            pool.apply_async(move || {
                drop(release);
                let _ = started_tx.send(());
                let _ = gate.lock().unwrap().recv();
                i
            })
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    drop(release);
    for _ in 0..2 {
        started.recv().expect("both threads take a task");
    }
    // Threads cannot be killed: terminate cancels the queued tasks and waits for the running.
    pool.terminate();
    let finished = tasks.iter().filter(|t| t.result().is_ok()).count();
    let cancelled = tasks.iter().filter(|t| t.cancelled()).count();
    println!("  {finished} tasks were running and finished, {cancelled} were cancelled");
    assert_eq!((finished, cancelled), (2, 8));
    assert_eq!(
        pool.apply(|| 0).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    Ok(())
}
