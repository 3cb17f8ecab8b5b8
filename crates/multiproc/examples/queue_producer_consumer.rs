//! The seeds' producer and consumer: one process writes to a `Queue`, another reads from it.
//!
//! Mirrors the "进程间通信 -- Queue" snippet (seed 000):
//!
//! ```python
//! def write(q):
//!     for value in ['A', 'B', 'C']:
//!         print('put %s to queue...' % value)
//!         q.put(value)
//!         time.sleep(random.random())
//! def read(q):
//!     while True:
//!         value = q.get(True)
//!         print('Get %s from queue.' % value)
//! pw.start(); pr.start(); pw.join(); pr.terminate()
//! ```
//!
//! then ends the reader in two cleaner ways: a sentinel, and a `JoinableQueue`.
//!
//! Run with `cargo run --example queue_producer_consumer -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::thread::sleep;
use std::time::Duration;

use multiproc::{ErrorKind, JoinableQueue, Process, Queue};

/// `random.random()`: every `RandomState` is seeded afresh.
fn random() -> f64 {
    let bits = RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// `def write(q)`: puts A, B and C, with a random pause after each.
fn write(q: Queue<String>) -> Result<(), String> {
    println!("Process to write: {}", std::process::id());
    for value in ["A", "B", "C"] {
        println!("put {value} to queue...");
        q.put(value.to_string()).map_err(|e| e.to_string())?;
        sleep(Duration::from_secs_f64(random()));
    }
    Ok(())
}

/// `def read(q)`: gets for ever; the parent terminates it.
fn read(q: Queue<String>) -> Result<(), String> {
    println!("Process to read: {}", std::process::id());
    loop {
        let value = q.get().map_err(|e| e.to_string())?;
        println!("Get {value} from queue.");
    }
}

/// The reader again, ending at the `None` sentinel and returning what it got.
fn read_until_none(q: Queue<Option<String>>) -> Result<Vec<String>, String> {
    let mut got = Vec::new();
    while let Some(value) = q.get().map_err(|e| e.to_string())? {
        println!("  Get {value} from queue.");
        got.push(value);
    }
    Ok(got)
}

/// A consumer that marks each item done, so that the producer can `join` the queue.
fn consume(q: JoinableQueue<String>) -> Result<(), String> {
    loop {
        let value = q.get().map_err(|e| e.to_string())?;
        println!("  consumed {value}");
        q.task_done().map_err(|e| e.to_string())?;
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    // q = Queue(); pw = Process(target=write, args=(q,)); pr = Process(target=read, args=(q,))
    println!("== 1. the seed: write, read, terminate the reader ==");
    let q = Queue::new()?;
    let pw = Process::new(write, q.clone()).name("writer").start()?;
    let mut pr = Process::new(read, q.clone()).name("reader").start()?;
    pw.into_result()?.expect("the writer puts three items");
    // pr.terminate(): the reader loops for ever. As in Python, an item the reader had not taken
    // yet would be left behind; the writer's pause after C gives it time (sections 2 and 3 do
    // not rely on that).
    pr.terminate()?;
    match pr.join() {
        Err(e) if e.kind() == ErrorKind::ProcessFailed => println!("reader stopped: {e}"),
        other => panic!("a terminated reader should fail to return, got {other:?}"),
    }
    assert_eq!(pr.exitcode(), Some(-15), "SIGTERM ends the reader");

    // Sentinel: the parent puts None once the writer is done; the reader returns its items.
    println!("\n== 2. ending the reader with a sentinel ==");
    let q = Queue::new()?;
    let reader = Process::new(read_until_none, q.clone()).start()?;
    for value in ["A", "B", "C"] {
        println!("  put {value} to queue...");
        q.put(Some(value.to_string()))?;
    }
    q.put(None)?;
    let got = reader.into_result()?.expect("the reader gets every item");
    println!("  reader returned {got:?}");
    assert_eq!(got, ["A", "B", "C"]);

    // JoinableQueue: join() returns once every item put was marked done by task_done().
    println!("\n== 3. a JoinableQueue: wait until every item is done ==");
    let q = JoinableQueue::new()?;
    let mut consumer = Process::new(consume, q.clone()).daemon(true).start()?;
    for value in ["A", "B", "C"] {
        q.put(value.to_string())?;
    }
    q.join()?;
    println!("  join() returned: {} items unfinished", q.unfinished()?);
    assert_eq!(q.unfinished()?, 0);
    consumer.terminate()?;
    let _ = consumer.join(); // Err(Killed): it was terminated
    Ok(())
}
