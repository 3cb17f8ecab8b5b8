//! Python's `multiprocessing` for Rust: real OS processes running Rust functions, with the
//! pipes, start methods and lifecycle Python programmers know.
//!
//! ```
//! use multiproc::{Pipe, Process};
//!
//! fn shout((conn, word): (multiproc::Connection<String>, String)) {
//!     conn.send(&word.to_uppercase()).unwrap();
//! }
//!
//! let (parent, child) = Pipe::new(true)?;
//! let mut p = Process::new(shout, (child, "hello".to_string())).name("shouter").start()?;
//! assert_eq!(parent.recv()?, "HELLO");
//! p.join()?;
//! assert_eq!(p.exitcode(), Some(0));
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # How a child starts
//! A target is a `fn` item or a closure that captures nothing, taking one serde argument. By
//! default ([`StartMethod::Spawn`]) the child is a fresh copy of the running executable: a
//! constructor that this crate links into the program diverts it to the target *before
//! `main`*, so programs, tests, examples and doctests need no set-up. Call [`init`] at the top
//! of `main` to have children joined at exit as Python does.
//!
//! # Awaiting
//! With the `async` feature, each wait has an awaitable form named after it with `_async`
//! (`Queue::get_async`, `Process::join_async`, `Lock::acquire_async`, …), on any executor,
//! and the executors' [`Future`] is a [`std::future::Future`]. Each method's documentation
//! says what dropping its future does. No thread waits per future: one reactor thread per
//! process watches the shared-memory words (in `futex_waitv`), and one the descriptors (a
//! child's pidfd, a pipe's socket, a manager's connection). Queues of every flavor (shared
//! memory, manager, broker) and the manager proxies' waits are awaitable.
//!
//! # Differences from CPython
//! - A process is configured on a [`ProcessBuilder`] and started into a [`Process`]: setting
//!   the name or daemon flag after start is a compile error instead of a runtime one.
//! - The target's return value comes back ([`Process::into_result`]), and a panic comes back as
//!   [`Error::Panicked`] with its message and location.
//! - [`StartMethod::Fork`] refuses to fork a multithreaded process instead of warning.
//! - A daemon child dies with its parent even when the parent is SIGKILLed.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(all(feature = "async", not(loom)))]
mod aio;
mod connection;
mod durations;
mod error;
mod executor;
mod local_lock;
#[cfg(feature = "manager")]
mod manager;
#[cfg(feature = "manager")]
mod pickle;
mod platform;
mod pool;
mod process;
mod queue;
mod share;
mod shm;
mod sync;
mod thread;

#[cfg(feature = "manager")]
#[cfg_attr(docsrs, doc(cfg(feature = "manager")))]
pub use connection::{Address, Client, Listener, WireConnection};
pub use connection::{Connection, Pipe};
pub use error::{Error, ErrorKind, Result};
pub use executor::{
    AsCompleted, ExecutorMap, Future, ProcessPoolExecutor, ReturnWhen, ThreadIMapIter, ThreadPool,
    ThreadPoolExecutor, Waitable, Waited, as_completed, as_completed_deadline,
    as_completed_timeout, wait, wait_deadline, wait_timeout,
};
#[cfg(feature = "manager")]
#[cfg_attr(docsrs, doc(cfg(feature = "manager")))]
pub use manager::{
    ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy, Managed,
    ManagerClient, ManagerProcess, ManagerServer, MethodCall, NamespaceProxy, ObjectProxy,
    RunningServer, SemaphoreProxy, ValueProxy,
};
#[cfg(all(feature = "async", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use pool::IMapStream;
pub use pool::{
    AsyncResult, DURATION_BUCKETS, DurationHistogram, IMapIter, MapResult, Pool, PoolBuilder,
    PoolMetrics, Priority, RetryPolicy, TaskCall,
};
#[cfg(feature = "broker")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
pub use pool::{
    BrokerPoolBuilder, BrokerWorker, TaskRecords, TaskRegistry, TaskStatus, WorkerStopper,
};
pub use process::{
    ChildInfo, Process, ProcessBuilder, ProcessInfo, Run, StartMethod, active_children, cpu_count,
    current_process, init, parent_process,
};
#[cfg(feature = "broker")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
pub use queue::{BrokerQueueBuilder, ConsumerStatus, DeadLetter, QueueAdmin, QueueStatus};
pub use queue::{JoinableQueue, Queue, QueueBuilder, SimpleQueue};
pub use share::Descriptor;
pub use shm::SharedMemory;
pub use sync::{
    Array, Barrier, Condition, ConditionGuard, Event, Lock, LockGuard, LockResult, OwnerDied,
    RLock, RLockGuard, RawArray, RawValue, Semaphore, SemaphoreGuard, Value, ValueGuard,
};
pub use thread::{
    Thread, ThreadBuilder, ThreadInfo, ThreadLocal, Timer, TimerBuilder, active_count,
    current_thread, enumerate, join_non_daemon, join_non_daemon_timeout, main_thread,
};

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
#[cfg(feature = "manager")]
pub mod __fuzz {
    /// Decodes untrusted pickle bytes (and re-encodes what decodes); must never panic.
    pub fn pickle_decode(data: &[u8]) {
        crate::pickle::fuzz_decode(data)
    }

    /// Reads CPython-framed messages from untrusted bytes; must never panic.
    pub fn wire_frames(data: &[u8]) {
        crate::manager::fuzz::frames(data)
    }

    /// Runs the server side of the authentication handshake against untrusted bytes.
    pub fn wire_handshake(data: &[u8]) {
        crate::manager::fuzz::handshake(data)
    }

    /// Serves an authenticated peer's proxy calls, framed from untrusted bytes (chunks of a
    /// little-endian `u16` length and that many bytes), against a dict, a list, a namespace,
    /// a value and an array with idents `"1"` to `"5"`; must end and never panic.
    pub fn manager_calls(data: &[u8]) {
        let _ = crate::manager::server_fuzz::proxy_calls(data);
    }

    /// Decodes an untrusted XML-RPC message (`BaseManager(serializer='xmlrpclib')`), and
    /// re-encodes what decodes; must never panic.
    pub fn xmlrpc_decode(data: &[u8]) {
        crate::manager::xmlrpc_fuzz(data)
    }
}
