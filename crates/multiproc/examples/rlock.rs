//! The seeds' recursive lock: a function holding the lock calls others that take it again.
//!
//! Mirrors seed 003's `RLock` snippet (threads there, processes here):
//!
//! ```python
//! def run1():
//!     print("grab the first part data"); lock.acquire(); num += 1; lock.release(); return num
//! def run2(): ...  # the same with num2
//! def run3():
//!     lock.acquire(); res = run1(); print('--------between run1 and run2-----')
//!     res2 = run2(); lock.release(); print(res, res2)
//! lock = threading.RLock()  # lock = threading.Lock() would block here
//! for i in range(10): threading.Thread(target=run3).start()
//! ```
//!
//! `num` and `num2` are `RawValue`s, shared memory without a lock of their own (Python's
//! `RawValue`): the `RLock` is what protects them.
//!
//! Run with `cargo run --example rlock -p multiproc`.

use std::time::Duration;

use multiproc::{Lock, Process, RLock, RawValue};

/// `def run1()` and `def run2()`: take the lock again and add one to `num`.
fn grab(part: &str, lock: &RLock, num: &RawValue<i64>) -> multiproc::Result<i64> {
    println!("grab the {part} part data");
    let _held = lock.acquire()?; // this process already holds it: the count goes to 2
    num.set(num.get() + 1);
    Ok(num.get())
}

/// `def run3()`: holds the lock across `run1` and `run2`, so both see the same round.
fn run3((lock, num, num2): (RLock, RawValue<i64>, RawValue<i64>)) -> Result<(i64, i64), String> {
    let locked = || -> multiproc::Result<(i64, i64)> {
        let _held = lock.acquire()?;
        let res = grab("first", &lock, &num)?;
        println!("--------between run1 and run2-----");
        let res2 = grab("second", &lock, &num2)?;
        Ok((res, res2))
    };
    let (res, res2) = locked().map_err(|e| e.to_string())?;
    println!("{res} {res2}");
    Ok((res, res2))
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. RLock: 10 processes run run3 ==");
    let lock = RLock::new()?;
    let (num, num2) = (RawValue::new(0i64)?, RawValue::new(0i64)?);
    let processes = (0..10)
        .map(|_| Process::new(run3, (lock.clone(), num.clone(), num2.clone())).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut rounds = Vec::new();
    for p in processes {
        rounds.push(p.into_result()?.expect("run3 takes its lock"));
    }
    println!("{} {}", num.get(), num2.get());
    assert_eq!((num.get(), num2.get()), (10, 10));
    rounds.sort_unstable();
    assert_eq!(
        rounds,
        (1..=10).map(|i| (i, i)).collect::<Vec<_>>(),
        "each run3 sees its own round in both parts"
    );

    // lock = threading.Lock(): the inner acquire would wait for ever; a timeout shows it.
    println!("\n== 2. the same nesting with a plain Lock ==");
    let plain = Lock::new()?;
    let _outer = plain.acquire()?;
    let inner = plain.acquire_timeout(Duration::from_millis(200))?;
    println!(
        "  inner acquire by the holder: {}",
        if inner.is_some() {
            "got it"
        } else {
            "timed out (it would block for ever)"
        }
    );
    assert!(inner.is_none(), "a Lock is not reentrant");
    Ok(())
}
