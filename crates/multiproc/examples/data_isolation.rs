//! Each process has its own memory: a child's change to a global stays in the child.
//!
//! Run with `cargo run --example data_isolation -p multiproc`.

use std::sync::atomic::{AtomicI32, Ordering};

use multiproc::{Process, StartMethod};

/// `num = 100`
static NUM: AtomicI32 = AtomicI32::new(100);

/// `def run_task(name): global num; num += 1; print(f"{name} 进程中的 num值为{num}")`
fn run_task(name: String) -> i32 {
    let num = NUM.fetch_add(1, Ordering::SeqCst) + 1;
    println!("  in {name}'s process num is {num}");
    num
}

/// `def task(): global num; num = 666`
fn task(_: ()) -> (i32, i32) {
    let before = NUM.swap(666, Ordering::SeqCst);
    (before, NUM.load(Ordering::SeqCst))
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    // num = 1000 in the parent, then p1 = Process(target=task); p1.start(); p1.join()
    // Forking copies the parent's memory: the child starts from the parent's 1000, and its
    // `num = 666` changes only its copy.
    println!("== the child gets a copy (fork) ==");
    NUM.store(1000, Ordering::SeqCst);
    let p = Process::new(task, ())
        .start_method(StartMethod::Fork)
        .start()?;
    let (before, after) = p.into_result()?;
    println!("  child: num was {before}, set it to {after}");
    println!("  parent: num is {}", NUM.load(Ordering::SeqCst));
    assert_eq!((before, after), (1000, 666));
    assert_eq!(NUM.load(Ordering::SeqCst), 1000);

    // for i in ['user001', 'user002', 'user003']: p = Process(target=run_task, args=(i,)) ...
    // '''num的值并不会变成103,而是每一个进程拿到的num值都为100''': each child sees 100.
    // (A spawned child is a fresh run of this program, so it starts from `num = 100`.)
    println!("\n== three children each add 1 (spawn) ==");
    NUM.store(100, Ordering::SeqCst);
    let children = ["user001", "user002", "user003"]
        .into_iter()
        .map(|name| Process::new(run_task, name.to_string()).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in children {
        assert_eq!(p.into_result()?, 101);
    }
    println!("  parent: num is still {}", NUM.load(Ordering::SeqCst));
    assert_eq!(NUM.load(Ordering::SeqCst), 100);
    Ok(())
}
