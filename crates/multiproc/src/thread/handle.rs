//! `ThreadBuilder` and `Thread`: a named `std::thread` with Python's join and identity.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::registry::{self, ExitGuard, RunState, ThreadInfo};
use crate::error::{Error, Result, panic_message};
use crate::sync::deadline_after;

/// A thread not yet started: set its name and daemon flag, then [`spawn`](Self::spawn) it.
///
/// # Examples
///
/// ```
/// use multiproc::ThreadBuilder;
///
/// let t = ThreadBuilder::new().name("adder").daemon(true).spawn(|| 2 + 3)?;
/// assert_eq!((t.name(), t.daemon()), ("adder", true));
/// assert_eq!(t.join()?, 5);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a thread builder does nothing until spawned"]
pub struct ThreadBuilder {
    name: Option<String>,
    daemon: Option<bool>,
}

impl ThreadBuilder {
    /// A builder with the defaults: name `Thread-N`, daemon flag of the spawning thread.
    pub fn new() -> Self {
        Self::default()
    }

    /// The thread's name, also given to the OS thread (seen in panic messages and debuggers).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Marks the thread as a daemon, or not; by default it inherits the flag of the thread
    /// that spawns it (the main thread is no daemon), as in CPython.
    ///
    /// The flag decides whether [`join_non_daemon`](crate::join_non_daemon) waits for the
    /// thread, and is shown by [`enumerate`](crate::enumerate).
    ///
    /// # Caveats
    /// Unlike Python, a Rust program does not wait for any thread when `main` returns, daemon
    /// or not: call [`join_non_daemon`](crate::join_non_daemon) (or join the threads) at the
    /// end of `main`.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = Some(daemon);
        self
    }

    /// Starts a thread running `f`; its return value comes back from [`Thread::join`].
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the name contains a NUL byte; [`Error::Io`] if the OS
    /// refuses a new thread.
    pub fn spawn<F, R>(self, f: F) -> Result<Thread<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if let Some(name) = &self.name
            && name.contains('\0')
        {
            return Err(Error::invalid(
                format!("thread {name:?}"),
                "a thread name cannot contain a NUL byte",
            ));
        }
        let info = registry::new_identity(self.name, self.daemon);
        let run = Arc::new(RunState::default());
        // Listed before it runs, so that `enumerate` shows it as soon as `spawn` returns.
        registry::register(&info, &run);
        let guard = ExitGuard {
            ident: info.ident(),
            run: run.clone(),
        };
        let mine = info.clone();
        let spawned = std::thread::Builder::new()
            .name(info.name().to_string())
            .spawn(move || {
                let _exit = guard;
                registry::enter(mine);
                f()
            });
        match spawned {
            Ok(handle) => Ok(Thread {
                info,
                run,
                handle: Some(handle),
            }),
            Err(e) => {
                // The closure (and the guard in it) is dropped: the thread is unlisted.
                Err(Error::io(
                    format!("thread {:?}: cannot spawn", info.name()),
                    e,
                ))
            }
        }
    }
}

/// A running thread (Python's `threading.Thread`), started by a [`ThreadBuilder`].
///
/// The closure's return value comes back from [`join`](Self::join); a panic comes back as
/// [`Error::Panicked`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use std::sync::mpsc;
/// use multiproc::Thread;
///
/// let (go, wait) = mpsc::channel();
/// let mut t = Thread::builder().name("waiter").spawn(move || wait.recv().unwrap() * 2)?;
/// assert!(t.is_alive());
/// assert_eq!(t.join_timeout(Duration::from_millis(10))?, None); // still waiting
/// go.send(21).unwrap();
/// assert_eq!(t.join_timeout(Duration::from_secs(10))?, Some(42));
/// assert!(!t.is_alive());
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// Dropping a `Thread` detaches it: the thread runs on, and
/// [`join_non_daemon`](crate::join_non_daemon) still waits for it unless it is a daemon.
pub struct Thread<R = ()> {
    info: ThreadInfo,
    run: Arc<RunState>,
    /// `None` once joined.
    handle: Option<JoinHandle<R>>,
}

impl Thread<()> {
    /// A builder for a thread; see [`ThreadBuilder`].
    pub fn builder() -> ThreadBuilder {
        ThreadBuilder::new()
    }

    /// Starts an unnamed (`Thread-N`) thread running `f`: `ThreadBuilder::new().spawn(f)`.
    ///
    /// # Examples
    ///
    /// ```
    /// let t = multiproc::Thread::spawn(|| "done")?;
    /// assert!(t.name().starts_with("Thread-"));
    /// assert_eq!(t.join()?, "done");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`ThreadBuilder::spawn`].
    pub fn spawn<F, R>(f: F) -> Result<Thread<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        ThreadBuilder::new().spawn(f)
    }
}

impl<R> Thread<R> {
    /// Its name.
    pub fn name(&self) -> &str {
        self.info.name()
    }

    /// Its ident, the same as [`current_thread`](crate::current_thread)`().ident()` inside
    /// it: unique for the life of the process.
    pub fn ident(&self) -> u64 {
        self.info.ident()
    }

    /// Its daemon flag.
    pub fn daemon(&self) -> bool {
        self.info.daemon()
    }

    /// Its name, ident and daemon flag together, as [`enumerate`](crate::enumerate) lists it.
    pub fn info(&self) -> &ThreadInfo {
        &self.info
    }

    /// Whether its closure is still running (from `spawn` until it returns or panics).
    pub fn is_alive(&self) -> bool {
        !self.run.is_done()
    }

    /// Waits for the thread to finish and returns what its closure returned.
    ///
    /// # Errors
    /// [`Error::Panicked`] with the panic message if the closure panicked (the message reads
    /// `"<thread name>" (pid …) panicked: …`, and carries no location);
    /// [`Error::InvalidState`] if the thread was already joined by
    /// [`join_timeout`](Self::join_timeout), or if a thread tries to join itself.
    pub fn join(mut self) -> Result<R> {
        self.join_until(None)
            .map(|r| r.expect("a join without deadline always finishes"))
    }

    /// [`join`](Self::join) if the thread has finished, without waiting: `Ok(None)` if it
    /// still runs.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn try_join(&mut self) -> Result<Option<R>> {
        self.join_until(Some(Instant::now()))
    }

    /// Waits at most `timeout`: `Ok(None)` if the thread still runs (join again later),
    /// else what [`join`](Self::join) returns.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>> {
        self.join_until(deadline_after(timeout))
    }

    /// Waits until `deadline`: `Ok(None)` if the thread still runs, else what
    /// [`join`](Self::join) returns.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_deadline(&mut self, deadline: Instant) -> Result<Option<R>> {
        self.join_until(Some(deadline))
    }

    fn join_until(&mut self, deadline: Option<Instant>) -> Result<Option<R>> {
        let what = || format!("thread {:?}", self.info.name());
        if self.handle.is_none() {
            return Err(Error::invalid(what(), "already joined"));
        }
        if registry::is_current(self.info.ident()) {
            return Err(Error::invalid(what(), "a thread cannot join itself"));
        }
        if !self.run.wait(deadline) {
            return Ok(None);
        }
        let handle = self.handle.take().expect("checked above");
        // The closure has returned: this join only waits for the OS thread to end.
        handle.join().map(Some).map_err(|payload| Error::Panicked {
            name: self.info.name().to_string(),
            pid: std::process::id() as i32,
            message: panic_message(payload.as_ref()),
            location: None,
        })
    }
}

impl<R> fmt::Debug for Thread<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread")
            .field("name", &self.info.name())
            .field("ident", &self.info.ident())
            .field("daemon", &self.info.daemon())
            .field("alive", &self.is_alive())
            .finish()
    }
}
