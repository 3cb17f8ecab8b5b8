//! Threads share their process's memory: a global counter, `threading.Event`,
//! `threading.RLock`, and daemon threads, with `multiproc::Thread` and the crate's `Event` and
//! `RLock`.
//!
//! Mirrors seed 001's `线程间的资源共享` (resources shared between threads):
//!
//! ```python
//! num = 100
//! def run_task(i):
//!     global num
//!     num += 1
//!     # time.sleep(1)   # the second version: every thread then prints 104
//!     print(f"{i}子线程{os.getpid()}的num值为【{num}】!")
//! for i in range(1, 5): p = threading.Thread(target=run_task, args=(i,)); p.start() ...
//! ```
//!
//! seed 003's `Event` (ten `runthreading` threads, `event_obj.clear()`, then `set()` once the
//! user types `True`) and `RLock` (`run3` holding the lock across `run1` and `run2`), and the
//! daemon thread of seeds 001 and 003:
//!
//! ```python
//! def sleep(): time.sleep(3); print("子进程结束了")
//! thread = threading.Thread(target=sleep, daemon=True); thread.start()
//! print("主进程结束"); print(f"Child process status: {thread.is_alive()}")
//! ```
//!
//! Run with `cargo run --example threads_shared_state -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::sleep;
use std::time::Duration;

use multiproc::{Event, RLock, Thread, current_thread, join_non_daemon};

/// `num = 100`. Safe Rust has no unsynchronised mutable global (a `static mut` needs `unsafe`,
/// which this crate's examples forbid): an atomic is the nearest thing to Python's
/// `global num`, and every thread sees the same one.
static NUM: AtomicU64 = AtomicU64::new(100);

/// `def run_task(i): global num; num += 1; print(...)`: returns the value it printed.
fn run_task(i: u32) -> u64 {
    // `fetch_add` is `num += 1` in one step, so no two threads print the same number.
    let num = NUM.fetch_add(1, Ordering::SeqCst) + 1;
    println!(
        "  {i}: thread of process {}: num is {num}",
        std::process::id()
    );
    num
}

/// The same with `time.sleep(1)` between `num += 1` and the print. The seed's sleep gives the
/// other threads time to add their one; here a barrier waits for exactly that, so the output
/// does not depend on how fast the machine is.
fn run_task_slow(i: u32, all_added: &Barrier) -> u64 {
    NUM.fetch_add(1, Ordering::SeqCst);
    all_added.wait();
    let num = NUM.load(Ordering::SeqCst);
    println!(
        "  {i}: thread of process {}: num is {num}",
        std::process::id()
    );
    num
}

/// `def runthreading(event): print("Start..."); event.wait(); print("End...")`
fn runthreading(n: u32, event: &Event, started: &Barrier, ended: &AtomicUsize) -> bool {
    println!("  {n}: Start...");
    started.wait();
    event.wait();
    ended.fetch_add(1, Ordering::SeqCst);
    println!("  {n}: End...");
    event.is_set()
}

/// What `run3`'s lock protects: `num, num2 = 0, 0`.
#[derive(Default)]
struct Nums {
    num: AtomicI64,
    num2: AtomicI64,
}

/// `def run1()` and `def run2()`: take the lock again and add one. The read and the write
/// are separate steps, safe only because the lock is held.
fn grab(lock: &RLock, num: &AtomicI64) -> multiproc::Result<i64> {
    let _held = lock.acquire()?; // this thread already holds it: the count goes to 2
    let n = num.load(Ordering::Relaxed) + 1;
    num.store(n, Ordering::Relaxed);
    Ok(n)
}

/// `def run3()`: holds the lock across `run1` and `run2`, so both see the same round. (The
/// seed's "grab the first part data" and "----between run1 and run2----" lines are left out
/// to keep the output short: ten threads would print forty lines.)
fn run3(lock: &RLock, nums: &Nums) -> multiproc::Result<(i64, i64)> {
    let _held = lock.acquire()?;
    let res = grab(lock, &nums.num)?;
    let res2 = grab(lock, &nums.num2)?;
    println!("  {}: {res} {res2}", current_thread().name());
    Ok((res, res2))
}

fn main() -> multiproc::Result<()> {
    println!("== 1. four threads add one to a global ==");
    let threads = (1..=4)
        .map(|i| Thread::spawn(move || run_task(i)))
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut seen = threads
        .into_iter()
        .map(Thread::join)
        .collect::<multiproc::Result<Vec<_>>>()?;
    seen.sort_unstable();
    println!("  main: num is {}", NUM.load(Ordering::SeqCst));
    assert_eq!(
        seen,
        [101, 102, 103, 104],
        "each thread saw the others' changes"
    );

    println!("\n== 2. the same, waiting after the increment: everyone prints 104 ==");
    NUM.store(100, Ordering::SeqCst);
    let all_added = Arc::new(Barrier::new(4));
    let threads = (1..=4)
        .map(|i| {
            let all_added = all_added.clone();
            Thread::spawn(move || run_task_slow(i, &all_added))
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    for t in threads {
        assert_eq!(t.join()?, 104);
    }
    // (Processes would each print 101: see the `data_isolation` example.)

    println!("\n== 3. Event: ten threads wait until main sets it ==");
    let event = Event::new()?;
    let started = Arc::new(Barrier::new(11)); // ten waiters and main
    let ended = Arc::new(AtomicUsize::new(0));
    let waiters = (0..10)
        .map(|n| {
            let (event, started, ended) = (event.clone(), started.clone(), ended.clone());
            Thread::spawn(move || runthreading(n, &event, &started, &ended))
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    started.wait();
    event_obj_clear_then_set(&event, &ended);
    for w in waiters {
        assert!(w.join()?, "every waiter saw the event set");
    }
    assert_eq!(ended.load(Ordering::SeqCst), 10);

    println!("\n== 4. RLock: ten threads run run3 ==");
    let lock = RLock::new()?;
    let nums = Arc::new(Nums::default());
    let threads = (0..10)
        .map(|_| {
            let (lock, nums) = (lock.clone(), nums.clone());
            Thread::spawn(move || run3(&lock, &nums))
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut rounds = Vec::new();
    for t in threads {
        rounds.push(t.join()??);
    }
    let (num, num2) = (
        nums.num.load(Ordering::SeqCst),
        nums.num2.load(Ordering::SeqCst),
    );
    println!("  {num} {num2}");
    assert_eq!((num, num2), (10, 10));
    rounds.sort_unstable();
    assert_eq!(
        rounds,
        (1..=10).map(|i| (i, i)).collect::<Vec<_>>(),
        "each run3 sees its own round in both parts"
    );

    // Last, as the program ends with it.
    println!("\n== 5. a daemon thread does not outlive main ==");
    let running = Event::new()?;
    let flag = running.clone();
    let thread = Thread::builder()
        .name("sleeper")
        .daemon(true)
        .spawn(move || {
            println!("  {}: starts a 3 s task", current_thread().name());
            flag.set();
            sleep(Duration::from_secs(3)); // the seed's time.sleep(3)
            println!("  the daemon thread ended"); // never printed
        })?;
    running.wait();
    // Python's exit waits for the non-daemon threads only; so does join_non_daemon.
    join_non_daemon();
    println!("  main thread ends");
    println!("  daemon thread status: is_alive() = {}", thread.is_alive());
    assert!(thread.daemon() && thread.is_alive());
    // Returning from main ends the process, and the sleeper with it, mid-pause.
    Ok(())
}

/// `event_obj.clear(); inp = input("True/False?>> "); if inp == "True": event_obj.set()`,
/// with the answer written in instead of read from the terminal.
fn event_obj_clear_then_set(event: &Event, ended: &AtomicUsize) {
    event.clear();
    sleep(Duration::from_millis(20)); // the user takes a moment to answer...
    assert_eq!(ended.load(Ordering::SeqCst), 0, "no waiter got past wait()");
    println!("  True/False?>> True");
    event.set();
}
