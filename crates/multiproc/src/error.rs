//! The one error type of the crate.

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong, for callers that branch on it; see [`Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A blocking call ran out of time; the operation may be retried.
    Timeout,
    /// The other end is gone (peer closed the connection, end of file).
    Closed,
    /// A child process ended without delivering a result: it was killed, or it exited.
    ProcessFailed,
    /// The target panicked: in a child process, a thread, or a pool or executor worker (the
    /// error's message carries the panic's).
    Panicked,
    /// The call does not fit the object's state (start twice, join before start, …).
    InvalidState,
    /// Bytes from another process did not make a valid message.
    Protocol,
    /// A value could not be serialized or deserialized.
    Serialization,
    /// The child is not the same executable as the parent.
    BinaryMismatch,
    /// The `Fork` start method was refused because the parent runs several threads.
    ForkUnsafe,
    /// A lock (or semaphore slot) was taken over from a process that died holding it.
    OwnerDied,
    /// A non-blocking put found the queue full.
    Full,
    /// A non-blocking get found the queue empty.
    Empty,
    /// A barrier was broken (aborted, reset, or a wait timed out).
    BrokenBarrier,
    /// A pool worker died while it ran the task.
    WorkerLost,
    /// The peer did not prove it knows the authkey, or refused ours.
    AuthenticationFailed,
    /// A remote server (a manager) reported a failure.
    Remote,
    /// An operating-system call failed.
    Io,
    /// The object cannot do this at all: a queue flavor without the operation (the count of
    /// unfinished items of a queue on a CPython manager, say). Retrying will not help.
    Unsupported,
    /// The task was cancelled before it started (a broker pool's task cancelled by id).
    Cancelled,
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of the library.
///
/// Messages are lowercase and name the object they concern. Match on [`Error::kind`] to branch.
/// Errors clone (an OS error is shared): a pool hands one failure to every task it concerns.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A blocking call ran out of time.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// The object waited on.
        what: String,
        /// How long the call waited.
        after: Duration,
    },
    /// The peer closed its end.
    #[error("{what}: closed by the other end")]
    Closed {
        /// The object concerned.
        what: String,
    },
    /// The target panicked: in a child process, or in a thread or thread-pool worker of
    /// this process (`name` says which).
    #[error("{name:?} (pid {pid}) panicked{}: {message}", location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panicked {
        /// The child's (or thread's) name.
        name: String,
        /// The child's pid.
        pid: i32,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The child was killed by a signal before it delivered a result.
    #[error("process {name:?} (pid {pid}) was killed by signal {signal} ({})", crate::platform::signal_name(*signal))]
    Killed {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: i32,
        /// The signal number.
        signal: i32,
    },
    /// The child's target ran off the end of its stack (unbounded recursion, say): it was
    /// aborted, as a Rust program is.
    #[error("process {name:?} (pid {pid}) overflowed its stack and was aborted")]
    StackOverflow {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: i32,
    },
    /// The child exited without delivering a result.
    #[error("process {name:?} (pid {pid}) exited with code {code} before delivering a result{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Exited {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: i32,
        /// Its exit code.
        code: i32,
        /// What the child said about its failure, if anything.
        detail: Option<String>,
    },
    /// The call does not fit the object's state.
    #[error("{what}: {detail}")]
    InvalidState {
        /// The object concerned.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// Malformed bytes from another process.
    #[error("{what}: protocol error: {detail}")]
    Protocol {
        /// The object concerned.
        what: String,
        /// What is wrong with the bytes.
        detail: String,
    },
    /// Serialization failed.
    #[error("{what}: {detail}")]
    Serialization {
        /// The value or object concerned.
        what: String,
        /// The serializer's message.
        detail: String,
    },
    /// The child runs another executable than the parent.
    #[error("child process is not the same executable as its parent: {detail}")]
    BinaryMismatch {
        /// What differs.
        detail: String,
    },
    /// Forking a multithreaded parent was refused.
    #[error(
        "start method Fork refused: this process runs {threads} threads and a forked child could deadlock; use Spawn or ForkServer"
    )]
    ForkUnsafe {
        /// Threads counted in the parent.
        threads: usize,
    },
    /// A lock was taken over from an owner that died holding it; what it protects may be
    /// half-updated.
    #[error("{what}: its owner (pid {pid}) died holding it")]
    OwnerDied {
        /// The object concerned.
        what: String,
        /// The process the dead owner belonged to.
        pid: u32,
    },
    /// A non-blocking put found no room.
    #[error("{what}: full")]
    Full {
        /// The queue concerned.
        what: String,
    },
    /// A non-blocking get found nothing.
    #[error("{what}: empty")]
    Empty {
        /// The queue concerned.
        what: String,
    },
    /// The pool worker running the task died (killed, aborted, out of memory).
    #[error("pool worker {name:?} (pid {pid}) was lost while running the task: {detail}")]
    WorkerLost {
        /// The worker's name.
        name: String,
        /// The worker's pid.
        pid: i32,
        /// How it ended (`killed by signal 9 (SIGKILL)`, …).
        detail: String,
    },
    /// The connection handshake failed: wrong authkey on one side, or not a peer at all.
    #[error("{what}: authentication failed: {detail}")]
    AuthenticationFailed {
        /// The connection concerned (`connection to 127.0.0.1:5000`).
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// A manager server reported a failure of the call (an exception or a traceback).
    #[error("{what}: remote error: {detail}")]
    Remote {
        /// The remote object concerned.
        what: String,
        /// The exception or traceback text.
        detail: String,
    },
    /// The object cannot do this at all.
    #[error("{what}: {operation} is not supported: {detail}")]
    Unsupported {
        /// The object concerned.
        what: String,
        /// The call it cannot make (`unfinished`).
        operation: &'static str,
        /// Why not.
        detail: String,
    },
    /// The task was cancelled before it started.
    #[error("{what}: cancelled before it started")]
    Cancelled {
        /// The task concerned (its id).
        what: String,
    },
    /// The barrier is broken.
    #[error("{what}: broken")]
    BrokenBarrier {
        /// The barrier concerned.
        what: String,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation that failed.
        what: String,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
}

impl Error {
    /// The category of this error.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Error, ErrorKind};
    /// let e = Error::Closed { what: "connection".into() };
    /// assert_eq!(e.kind(), ErrorKind::Closed);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Closed { .. } => ErrorKind::Closed,
            Error::Panicked { .. } => ErrorKind::Panicked,
            Error::Killed { .. } | Error::Exited { .. } | Error::StackOverflow { .. } => {
                ErrorKind::ProcessFailed
            }
            Error::InvalidState { .. } => ErrorKind::InvalidState,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Serialization { .. } => ErrorKind::Serialization,
            Error::BinaryMismatch { .. } => ErrorKind::BinaryMismatch,
            Error::ForkUnsafe { .. } => ErrorKind::ForkUnsafe,
            Error::OwnerDied { .. } => ErrorKind::OwnerDied,
            Error::Full { .. } => ErrorKind::Full,
            Error::Empty { .. } => ErrorKind::Empty,
            Error::BrokenBarrier { .. } => ErrorKind::BrokenBarrier,
            Error::WorkerLost { .. } => ErrorKind::WorkerLost,
            Error::AuthenticationFailed { .. } => ErrorKind::AuthenticationFailed,
            Error::Remote { .. } => ErrorKind::Remote,
            Error::Io { .. } => ErrorKind::Io,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
        }
    }

    pub(crate) fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            after,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn protocol(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Protocol {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidState {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn serialization(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Serialization {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// The message of a caught panic (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".into())
}
