//! The seeds' `Event`: processes wait until the main process sets a flag.
//!
//! Mirrors the `Event` snippet of seed 004: one process waits for ever, one gives up after a
//! timeout, and the main process sets the event later.
//!
//! ```python
//! def task1(e, msg):
//!     e.wait(); time.sleep(1); print('hello, %s, e.is_set(): %s' % (msg, e.is_set()))
//! def task2(e, msg): e.wait(msg); print('hello, %s, e.is_set(): %s' % (msg, e.is_set()))
//! p1 = Process(target=task1, args=(e, 1)); p2 = Process(target=task2, args=(e, 2))
//! p1.start(); p2.start(); time.sleep(3); e.set(); print('main: event is set')
//! ```
//!
//! and seed 003's ten waiters (`print("Start..."); event.wait(); print("End...")`, set once
//! the user types `True`), with processes instead of threads.
//!
//! Run with `cargo run --example event -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::{Barrier, Event, Process};

/// `def task1(e, msg)`: waits for ever; returns `e.is_set()`.
fn task1((e, msg): (Event, u32)) -> bool {
    println!("task1 is waiting...");
    e.wait();
    sleep(Duration::from_secs(1));
    println!("hello, {msg}, e.is_set(): {}", e.is_set());
    e.is_set()
}

/// `def task2(e, msg)`: `msg` (2) doubles as the timeout in seconds; returns `e.is_set()`.
fn task2((e, msg): (Event, u64)) -> bool {
    println!("task2 is waiting...");
    let set = e.wait_timeout(Duration::from_secs(msg)); // false: it timed out
    println!("hello, {msg}, e.is_set(): {set}");
    set
}

/// `def runthreading(event)`: meets the others at the barrier, then waits for the event.
fn run_waiter((i, started, event): (u32, Barrier, Event)) -> Result<bool, String> {
    println!("  {i}: Start...");
    started.wait().map_err(|e| e.to_string())?;
    event.wait();
    println!("  {i}: End...");
    Ok(event.is_set())
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. one waits for ever, one with a timeout ==");
    let start = Instant::now();
    let e = Event::new()?;
    let p1 = Process::new(task1, (e.clone(), 1)).start()?;
    let p2 = Process::new(task2, (e.clone(), 2)).start()?;
    // The seed sleeps 3 s before e.set(); waiting for task2 to give up (after its 2 s) instead
    // makes the order certain on a busy machine.
    let task2_saw = p2.into_result()?;
    e.set();
    println!(
        "main: event is set (after {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    let task1_saw = p1.into_result()?;
    println!("both joined after {:.1} s", start.elapsed().as_secs_f64());
    assert!(!task2_saw, "task2 timed out before the event was set");
    assert!(task1_saw, "task1 waited until the event was set");

    println!("\n== 2. ten processes wait until main sets the event ==");
    let event = Event::new()?;
    let started = Barrier::new(11)?; // ten waiters and main
    let waiters = (0..10)
        .map(|i| Process::new(run_waiter, (i, started.clone(), event.clone())).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    started.wait()?;
    event.clear();
    // inp = input("True/False?>> "); if inp == "True": event_obj.set()
    println!("  True/False?>> True");
    event.set();
    for w in waiters {
        let saw = w.into_result()?.expect("each waiter meets the others");
        assert!(saw, "every waiter saw the event set");
    }
    println!("  all 10 ended");
    Ok(())
}
