//! Start all children, then join them (concurrent), versus start-and-join in the loop
//! (one after the other), with the time each takes.
//!
//! Run with `cargo run --example join_patterns -p multiproc`.

use std::time::{Duration, Instant};

use multiproc::{Process, active_children, cpu_count};

const N: u32 = 3;

/// `def task(msg): print('hello, %s' % msg); time.sleep(1)`
#[allow(clippy::disallowed_methods)] // simulates a second of work, as the seed's time.sleep(1)
fn task(i: u32) {
    println!("  task {i}: hello from pid {}", std::process::id());
    std::thread::sleep(Duration::from_secs(1));
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    // for i in ...: p.start(); p_list.append(p)
    // for p in p_list: p.join()
    println!("== start all, then join all ==");
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 1..=N {
        children.push(Process::new(task, i).start()?);
    }
    // print("The number of CPU is:" + str(multiprocessing.cpu_count()))
    // for p in multiprocessing.active_children(): print("child p.name: " + p.name ...)
    println!("  the number of CPUs is {}", cpu_count());
    for child in active_children() {
        println!("  child name: {}\tpid: {}", child.name(), child.pid());
    }
    for p in &mut children {
        p.join()?;
    }
    let concurrent = start.elapsed();
    println!(
        "{N} processes took {:.2} s (they ran at the same time)",
        concurrent.as_secs_f64()
    );

    // for i in ...: p.start(); p.join()   # "同步阻塞, 巨慢无比": synchronous, very slow
    println!("\n== start and join in the loop ==");
    let start = Instant::now();
    for i in 1..=N {
        let mut p = Process::new(task, i).start()?;
        p.join()?;
    }
    let serial = start.elapsed();
    println!(
        "{N} processes took {:.2} s (one after the other)",
        serial.as_secs_f64()
    );
    assert!(serial > concurrent);
    Ok(())
}
