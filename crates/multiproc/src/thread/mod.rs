//! Python's `threading` over `std::thread`: named threads with idents and daemon flags,
//! `current_thread`/`enumerate`, a join with timeout, `threading.local` and `Timer`.
//!
//! ```
//! use multiproc::{Thread, current_thread, enumerate};
//!
//! let t = Thread::builder().name("worker-1").spawn(|| {
//!     let me = current_thread();
//!     assert!(enumerate().contains(&me));
//!     format!("hello from {}", me.name())
//! })?;
//! assert_eq!(t.join()?, "hello from worker-1");
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # Locks and friends
//! There is no thread-only copy of `Lock`, `RLock`, `Semaphore`, `Event`, `Condition` or
//! `Barrier`: the crate's [`Lock`](crate::Lock) and the others work between threads as well as
//! between processes (each lives in a small shared-memory segment; for data shared only by
//! threads, `std::sync` is lighter).
//!
//! # Differences from CPython
//! - A thread is configured on a [`ThreadBuilder`] and spawned into a [`Thread`]: its name and
//!   daemon flag cannot change after start. The closure's return value comes back from
//!   [`Thread::join`], a panic as [`Error::Panicked`](crate::Error::Panicked).
//! - A timed join says whether it joined (`Ok(None)`: still running) instead of leaving it to
//!   `is_alive()`.
//! - The process does not wait for non-daemon threads when `main` returns: call
//!   [`join_non_daemon`] for that. The daemon flag is otherwise only recorded.
//! - `ident` is a counter (main thread 1), not the pthread id; there is no `native_id`.
//! - [`ThreadLocal`] holds one typed value per thread instead of arbitrary attributes.

#![forbid(unsafe_code)]

mod handle;
mod local;
mod registry;
mod timer;

pub use handle::{Thread, ThreadBuilder};
pub use local::ThreadLocal;
pub use registry::{
    ThreadInfo, active_count, current_thread, enumerate, join_non_daemon, join_non_daemon_timeout,
    main_thread,
};
pub use timer::{Timer, TimerBuilder};
