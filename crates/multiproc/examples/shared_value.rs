//! A counter shared by 100 processes: `Value` and its lock, then an `Array`.
//!
//! Mirrors seed 003's lock snippet, where 100 threads add one to a global under a lock:
//!
//! ```python
//! def Princ():
//!     lock.acquire(); global number; number += 1; lock.release()
//! for i in range(100): t = threading.Thread(target=Princ); t.start()
//! print('Number:', number)
//! ```
//!
//! Processes do not share globals (see `data_isolation`), so the number lives in shared memory:
//! a `Value`, whose own lock makes `+= 1` whole. (`v.set(v.get() + 1)` would take the lock
//! twice, for the read and for the write, and lose increments when processes interleave.)
//!
//! Run with `cargo run --example shared_value -p multiproc`.

use std::time::Instant;

use multiproc::{Array, Process, Value};

/// `def Princ()`: `number += 1` under the value's lock.
fn princ(number: Value<i64>) -> Result<(), String> {
    *number.get_lock().map_err(|e| e.to_string())? += 1;
    Ok(())
}

/// Writes `i * i` into its own slot of the array.
fn square_into((squares, i): (Array<i64>, usize)) {
    let n = i as i64;
    squares.set(i, n * n);
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    println!("== 1. 100 processes add one to a Value ==");
    let start = Instant::now();
    let number = Value::new(0i64)?;
    let processes = (0..100)
        .map(|_| Process::new(princ, number.clone()).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in processes {
        p.into_result()?.expect("each process adds one");
    }
    println!(
        "  Number: {} ({:.2} s for 100 processes)",
        number.get(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(number.get(), 100);

    // Array('i', 10): one shared block, each child writing its own slot.
    println!("\n== 2. 10 processes fill an Array ==");
    let squares = Array::new(&[0i64; 10])?;
    let processes = (0..10)
        .map(|i| Process::new(square_into, (squares.clone(), i)).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in processes {
        p.into_result()?;
    }
    let got = squares.to_vec();
    println!("  {got:?}");
    assert_eq!(got, (0..10).map(|i| i * i).collect::<Vec<i64>>());
    Ok(())
}
