//! The seeds' `threading.local`: one global object, a separate `student` in each thread.
//!
//! Mirrors the `ThreadLocal` snippet of seed 000:
//!
//! ```python
//! local_school = threading.local()
//! def process_student():
//!     std = local_school.student
//!     print("hello, %s (in %s)" % (std, threading.current_thread().name))
//! def process_thread(name):
//!     local_school.student = name
//!     process_student()
//! t1 = threading.Thread(target=process_thread, args=("alice",), name='Thread-A')
//! t2 = threading.Thread(target=process_thread, args=("bob",), name='Thread-B')
//! t1.start(); t2.start(); t1.join(); t2.join()
//! ```
//!
//! Run with `cargo run --example thread_local -p multiproc`.

use multiproc::{Thread, ThreadLocal, current_thread};

/// `local_school = threading.local()`: a global whose value is per thread.
static LOCAL_SCHOOL: ThreadLocal<String> = ThreadLocal::new();

fn process_student() -> String {
    let std = LOCAL_SCHOOL
        .get()
        .expect("process_thread sets the student first");
    let line = format!("hello, {std} (in {})", current_thread().name());
    println!("{line}");
    line
}

fn process_thread(name: &str) -> String {
    LOCAL_SCHOOL.set(name.to_string());
    process_student()
}

fn main() -> multiproc::Result<()> {
    let t1 = Thread::builder()
        .name("Thread-A")
        .spawn(|| process_thread("alice"))?;
    let t2 = Thread::builder()
        .name("Thread-B")
        .spawn(|| process_thread("bob"))?;
    assert_eq!(t1.join()?, "hello, alice (in Thread-A)");
    assert_eq!(t2.join()?, "hello, bob (in Thread-B)");

    // The main thread never set a student: it has none, whatever the threads did.
    assert_eq!(current_thread().name(), "MainThread");
    assert_eq!(LOCAL_SCHOOL.get(), None);
    assert_eq!(process_thread("carol"), "hello, carol (in MainThread)");
    Ok(())
}
