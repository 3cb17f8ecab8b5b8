//! The seeds' process `Lock`: one holder at a time, for printing and for a shared file.
//!
//! Mirrors seed 003's `锁(Lock)` snippet:
//!
//! ```python
//! def ChildProcess(l, i):
//!     l.acquire(); print('hello world', i); l.release()
//! for num in range(10): Process(target=ChildProcess, args=(lock, num)).start()
//! ```
//!
//! and seed 004's two writers of one file (about 2 s, since the lock makes them take turns):
//!
//! ```python
//! def task1(lock, f):
//!     with lock: f = open(f, 'w+'); f.write('hello '); time.sleep(1); f.close()
//! def task2(lock, f):
//!     lock.acquire()
//!     try: f = open(f, 'a+'); time.sleep(1); f.write('world!')
//!     finally: f.close(); lock.release()
//! ```
//!
//! Run with `cargo run --example lock_basics -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::{Lock, Process};

/// `def ChildProcess(l, i)`
fn child_process((l, i): (Lock, u32)) -> Result<(), String> {
    let _held = l.acquire().map_err(|e| e.to_string())?;
    println!("  hello world {i}");
    Ok(())
}

/// `def task1(lock, f)`: `with lock:` truncates the file and writes "hello ".
fn task1((lock, f): (Lock, PathBuf)) -> Result<(), String> {
    let _held = lock.acquire().map_err(|e| e.to_string())?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true) // 'w+'
        .open(&f)
        .map_err(|e| e.to_string())?;
    file.write_all(b"hello ").map_err(|e| e.to_string())?;
    sleep(Duration::from_secs(1));
    Ok(())
}

/// `def task2(lock, f)`: appends "world!"; the guard is the `finally: lock.release()`.
fn task2((lock, f): (Lock, PathBuf)) -> Result<(), String> {
    let _held = lock.acquire().map_err(|e| e.to_string())?;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true) // 'a+'
        .open(&f)
        .map_err(|e| e.to_string())?;
    sleep(Duration::from_secs(1));
    file.write_all(b"world!").map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    multiproc::init();

    println!("== 1. 10 processes print under a lock ==");
    let lock = Lock::new()?;
    let processes = (0..10)
        .map(|num| Process::new(child_process, (lock.clone(), num)).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in processes {
        p.into_result()??;
    }

    println!("\n== 2. two processes write one file in turn ==");
    let path = std::env::temp_dir().join(format!("multiproc-lock-{}.txt", std::process::id()));
    let start = Instant::now();
    let p1 = Process::new(task1, (lock.clone(), path.clone())).start()?;
    let p2 = Process::new(task2, (lock.clone(), path.clone())).start()?;
    p1.into_result()??;
    p2.into_result()??;
    let took = start.elapsed();
    let text = fs::read_to_string(&path)?;
    fs::remove_file(&path)?;
    println!("  time cost: {:.2} seconds", took.as_secs_f64());
    println!("  {text}");
    assert!(
        took >= Duration::from_secs(2),
        "the lock makes the tasks take turns"
    );
    // task1 usually gets the lock first; if task2 does, task1's 'w+' truncates its "world!".
    assert!(
        text == "hello world!" || text == "hello ",
        "each task wrote whole: {text:?}"
    );
    Ok(())
}
