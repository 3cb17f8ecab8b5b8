//! The seeds' semaphores: at most N holders at a time.
//!
//! Mirrors the `Semaphore` snippet of seed 004 (8 processes, 2 at a time, 1 s each: about 4 s):
//!
//! ```python
//! def task(s, msg):
//!     s.acquire(); print('hello, %s' % msg); time.sleep(1); s.release()
//! s = Semaphore(2)
//! for x in range(8): processes.append(Process(target=task, args=(s, x,)))
//! ```
//!
//! and the `BoundedSemaphore(5)` snippet of seed 003 (20 threads), with threads of this
//! process sharing the same kind of semaphore, and what "bounded" forbids.
//!
//! Run with `cargo run --example semaphore -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use multiproc::{Array, ErrorKind, Process, Semaphore};

/// Counts holders in `[inside, most]`: how many hold a slot now, and the most ever.
fn enter(holders: &Array<u32>) -> Result<(), String> {
    let mut h = holders.get_lock().map_err(|e| e.to_string())?;
    h[0] += 1;
    h[1] = h[1].max(h[0]);
    Ok(())
}

fn leave(holders: &Array<u32>) -> Result<(), String> {
    holders.get_lock().map_err(|e| e.to_string())?[0] -= 1;
    Ok(())
}

/// `def task(s, msg)`, printing the time since the parent started the processes.
fn task((s, msg, start, holders): (Semaphore, u32, SystemTime, Array<u32>)) -> Result<(), String> {
    let _slot = s.acquire().map_err(|e| e.to_string())?; // s.release() when it drops
    enter(&holders)?;
    let at = start.elapsed().unwrap_or_default().as_secs_f64();
    println!("  [{at:4.2}s] hello, {msg}");
    sleep(Duration::from_secs(1));
    leave(&holders)
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. Semaphore(2), 8 processes holding it 1 s each ==");
    let s = Semaphore::new(2)?;
    let holders = Array::new(&[0u32, 0])?;
    let start = Instant::now();
    let wall = SystemTime::now();
    let processes = (0..8)
        .map(|x| Process::new(task, (s.clone(), x, wall, holders.clone())).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in processes {
        p.into_result()?
            .expect("each task takes and gives back a slot");
    }
    let took = start.elapsed();
    let most = holders.get(1);
    println!(
        "  8 processes take {:.2} seconds; at most {most} held the semaphore at once",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(4),
        "8 holds of 1 s, 2 at a time"
    );
    assert!((1..=2).contains(&most), "never more than 2 holders");
    assert_eq!(s.get_value(), 2, "every slot is back");

    // semaphore = threading.BoundedSemaphore(5); 20 threads: run(n) holds it, prints, releases.
    // The seed holds it 1 s; 0.25 s keeps this part short (20 / 5 = 4 rounds).
    println!("\n== 2. BoundedSemaphore(5), 20 threads ==");
    let semaphore = Semaphore::bounded(5)?;
    let holders = Array::new(&[0u32, 0])?;
    let start = Instant::now();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20)
            .map(|n| {
                let (semaphore, holders) = (&semaphore, &holders);
                scope.spawn(move || -> Result<(), String> {
                    let _slot = semaphore.acquire().map_err(|e| e.to_string())?;
                    enter(holders)?;
                    println!("  run the thread: {n}");
                    sleep(Duration::from_millis(250));
                    leave(holders)
                })
            })
            .collect();
        for t in threads {
            let done = t.join().expect("a thread panicked");
            done.expect("each thread takes and gives back a slot");
        }
    });
    let most = holders.get(1);
    println!(
        "  20 threads took {:.2} s, at most {most} at once",
        start.elapsed().as_secs_f64()
    );
    assert!((1..=5).contains(&most), "never more than 5 holders");

    // Bounded: releasing a slot nobody took is an error, as Python's ValueError.
    let err = semaphore
        .release()
        .expect_err("a bounded semaphore refuses a sixth slot");
    println!("  one release too many: {err}");
    assert_eq!(err.kind(), ErrorKind::InvalidState);
    Ok(())
}
