//! Starting processes without `join`: the main process runs ahead of its children; a pause
//! instead of `join` only hopes they are done.
//!
//! Mirrors two snippets of seed 001's `p.join()方法介绍` (about `p.join()`). The wrong one,
//! without `join`:
//!
//! ```python
//! def run_task(i): print(f"{i} 进程{os.getpid()}正在 运行")
//! print("-----主进程开始-----")
//! for i in range(1, 5):
//!     p = Process(target=run_task, args=(i,)); p.start()
//! print("-----主进程结束-----")     # printed before the children's lines
//! ```
//!
//! and the one where `time.sleep(1)` stands in for `join` ("因为目的就是阻塞", since the point
//! is to block):
//!
//! ```python
//! for i in range(1, 5): p = Process(target=run_task, args=(i,)); p.start(); p_list.append(p)
//! # for p in p_list: p.join()
//! time.sleep(1)
//! print("-----主进程结束-----")
//! ```
//!
//! Start and join in the same loop, and start all then join all, are in the `join_patterns`
//! example.
//!
//! Run with `cargo run --example no_join -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`
#![forbid(unsafe_code)]

use std::thread::sleep;
use std::time::{Duration, Instant};

use multiproc::Process;

/// The seed's `time.sleep(1)`, shortened: long enough for four children to start and print
/// on an idle machine, with no promise on a busy one. (Longer than [`STARTUP`].)
const PAUSE: Duration = Duration::from_millis(300);

/// How long a child takes before it prints. A Python child spends tens of milliseconds
/// starting its interpreter, which is what lets the seed's main process print first; a Rust
/// child is running within a millisecond or two, so it waits this long to play that part.
const STARTUP: Duration = Duration::from_millis(50);

/// `def run_task(i): print(f"{i} 进程{os.getpid()}正在 运行")`
fn run_task(i: u32) {
    sleep(STARTUP);
    println!("  {i}: process {} is running", std::process::id());
}

/// Joins what the main process left running, so that no child outlives it as an orphan.
/// (`init()`'s exit hook would join them too, when `main` returns; joining here keeps each
/// section's output in its section.)
fn join_leftovers(children: &mut [Process]) -> multiproc::Result<()> {
    for p in children.iter_mut() {
        p.join()?;
    }
    println!(
        "  (the {} children are joined now, after the fact)",
        children.len()
    );
    Ok(())
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. no join: the main process ends first ==");
    println!("  -----main process starts-----");
    // The seed drops each `p`; a dropped `Process` is neither killed nor waited for. They are
    // kept here only to be joined at the end of the section.
    let mut not_joined = (1..=4)
        .map(|i| Process::new(run_task, i).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    let alive = not_joined.iter().filter(|p| p.is_alive()).count();
    println!("  -----main process ends----- ({alive} of 4 children still running)");
    join_leftovers(&mut not_joined)?;

    println!("\n== 2. a pause instead of join ==");
    println!("  -----main process starts-----");
    let start = Instant::now();
    let mut p_list = (1..=4)
        .map(|i| Process::new(run_task, i).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    sleep(PAUSE);
    let ended = p_list.iter().filter(|p| !p.is_alive()).count();
    println!(
        "  -----main process ends----- after {:.0} ms; {ended} of 4 children had ended",
        start.elapsed().as_secs_f64() * 1e3
    );
    println!("  (a pause is a guess at how long they take; join waits exactly as long)");
    join_leftovers(&mut p_list)?;
    Ok(())
}
