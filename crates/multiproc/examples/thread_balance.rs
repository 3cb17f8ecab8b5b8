//! Threads changing shared data under a lock: the seeds' `balance` and `number`.
//!
//! Mirrors the thread-lock snippet of seed 000:
//!
//! ```python
//! balance = 0
//! lock = threading.Lock()
//! def change_it(n):
//!     global balance
//!     balance = balance + n
//!     balance = balance - n
//! def run_thread(n):
//!     for i in range(100000):
//!         lock.acquire()
//!         try: change_it(n)
//!         finally: lock.release()
//! t1 = threading.Thread(target=run_thread, args=(5,)); t2 = ... args=(8,)
//! ```
//!
//! and seed 003's 100 threads doing `lock.acquire(); number += 1; lock.release()`.
//!
//! The seed's racy version is the same loop without the lock: each thread reads `balance`,
//! then writes it, and a write based on a stale read loses the other thread's change, so the
//! result may drift from 0. Safe Rust does not compile that (two threads writing a plain
//! global); the nearest is a separate atomic load and store, which loses updates the same way
//! but seldom shows it in a run this short. Only the fixed version is run here.
//!
//! Run with `cargo run --example thread_balance -p multiproc`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread;

use multiproc::Lock;

const ROUNDS: u32 = 100_000;

/// `change_it(n)`, given the balance the lock guards.
fn change_it(balance: &mut i64, n: i64) {
    *balance += n;
    *balance -= n;
}

fn main() -> multiproc::Result<()> {
    println!("== 1. balance, two threads ==");
    // In Rust the lock owns what it guards: the balance lives inside the Mutex.
    let balance = Mutex::new(0i64);
    thread::scope(|s| {
        for n in [5, 8] {
            let balance = &balance;
            // lock.acquire(); try: change_it(n) finally: lock.release()
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    change_it(&mut balance.lock().expect("no thread panics"), n);
                }
            });
        }
    });
    let balance = balance.into_inner().expect("no thread panics");
    println!("  balance = {balance}");
    assert_eq!(balance, 0);

    // The same with multiproc's Lock, used the Python way: a lock beside the data, taken
    // around each change. It works between threads as well as between processes.
    println!("\n== 2. number += 1 in 100 threads, under multiproc::Lock ==");
    let lock = Lock::new()?;
    let number = AtomicI64::new(0);
    thread::scope(|s| -> multiproc::Result<()> {
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let (lock, number) = (&lock, &number);
                s.spawn(move || -> multiproc::Result<()> {
                    let _held = lock.acquire()?;
                    // read, then write: safe only because the lock is held
                    let n = number.load(Ordering::Relaxed);
                    number.store(n + 1, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no thread panics")?;
        }
        Ok(())
    })?;
    let number = number.into_inner();
    println!("  Number: {number}");
    assert_eq!(number, 100);
    Ok(())
}
