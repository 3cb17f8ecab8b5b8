//! `Process`: a Rust function run in a child process.

mod child;
mod current;
mod forkserver;
mod registry;
mod target;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use current::{ProcessInfo, cpu_count, current_process, parent_process};

use crate::connection::frame::{self, FrameKind};
use crate::error::{Error, Result};
use crate::platform::{self, ChildHandle, ExitStatus, Forked};
use crate::share;
use child::{Bootstrap, Report};
use registry::{ChildRecord, Delivery, Waiter};

// Every binary linking the crate checks before `main` whether it was started as a child.
platform::run_before_main!(CONSTRUCTOR = child::on_load);
pub(crate) use child::take_last_panic;
pub(crate) use target::{anchor_offset, assert_zero_sized, at_anchor_offset, conjure};

/// How a child process is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// Re-execute this program (`/proc/self/exe`); the child is diverted to the target before
    /// `main` runs. Always safe, also from multithreaded parents and test harnesses.
    #[default]
    Spawn,
    /// Ask a fork server (a clean, single-threaded copy of this program started on first use)
    /// to fork the child. Fast and safe.
    ForkServer,
    /// `fork()` this process. Fastest, but refused with [`Error::ForkUnsafe`] when this
    /// process runs more than one thread.
    Fork,
}

/// Something a child process can run: implement it on a serde type to write a process as a
/// struct (Python's subclass of `Process` overriding `run`), then start it with
/// [`Process::from_run`].
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Run};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Greeter { who: String }
/// impl Run for Greeter {
///     type Output = String;
///     fn run(self) -> String { format!("hello, {}", self.who) }
/// }
/// let p = Process::from_run(Greeter { who: "child".into() }).start()?;
/// assert_eq!(p.into_result()?, "hello, child");
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait Run: Serialize + DeserializeOwned + Send + 'static {
    /// What `run` returns to the parent.
    type Output: Serialize + DeserializeOwned;
    /// The body of the process.
    fn run(self) -> Self::Output;
}

fn run_target<T: Run>(job: T) -> T::Output {
    job.run()
}

type ArgsEncoder = Box<dyn FnOnce(&mut Vec<u8>) -> Result<Vec<OwnedFd>> + Send>;

/// A process not yet started: set its name, daemon flag and start method, then
/// [`start`](Self::start) it.
#[must_use = "a process builder does nothing until started"]
pub struct ProcessBuilder<R> {
    target: isize,
    args: ArgsEncoder,
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    method: StartMethod,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for ProcessBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessBuilder")
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("method", &self.method)
            .finish()
    }
}

/// A child process running a Rust function (Python's `multiprocessing.Process`).
///
/// Created by [`Process::new`] (a builder), running once [`started`](ProcessBuilder::start).
/// The target's return value comes back serialized: [`join`](Self::join) waits for the end,
/// [`into_result`](Self::into_result) also hands over the value.
///
/// # Examples
///
/// ```
/// use multiproc::Process;
/// fn square(x: u64) -> u64 { x * x }
///
/// let mut p = Process::new(square, 7).name("squarer").start()?;
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0));
/// assert_eq!(p.into_result()?, 49);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// Dropping a `Process` neither kills nor waits for the child (as in Python): it runs on and is
/// reaped in the background when it ends. Call [`terminate`](Self::terminate) or
/// [`kill`](Self::kill) to stop it.
pub struct Process<R = ()> {
    record: Arc<ChildRecord>,
    outcome: Outcome<R>,
}

enum Outcome<R> {
    Running,
    Value(R),
    Taken,
    Failed(Failure),
}

#[derive(Clone)]
enum Failure {
    Panicked {
        message: String,
        location: Option<String>,
    },
    Killed(i32),
    Exited {
        code: i32,
        detail: Option<String>,
    },
    Mismatch(String),
    Broken(String),
    StackOverflow,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.record.name)
            .field("pid", &self.record.pid)
            .field("daemon", &self.record.daemon)
            .finish()
    }
}

impl Process<()> {
    /// A process that will run `target(args)`; see [`ProcessBuilder`].
    ///
    /// `target` is a `fn` item or a closure that captures nothing (checked at compile time);
    /// `args` is any serde value (a tuple for several arguments) and may contain shareable
    /// handles such as [`Connection`](crate::Connection), which the child receives as the same
    /// object, not a copy. The return value (any serde type, or `()`) comes back to the parent;
    /// a `Result::Err` return makes the exit code 1, as a Python target that raised.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::Process;
    /// let p = Process::new(|(a, b): (i32, i32)| a + b, (2, 3)).start()?;
    /// assert_eq!(p.into_result()?, 5);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[allow(clippy::new_ret_no_self)] // a process is built, then started
    pub fn new<F, A, R>(target: F, args: A) -> ProcessBuilder<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned,
    {
        let (identity, name) = current::next_child_identity();
        ProcessBuilder {
            target: target::offset_of::<F, A, R>(&target),
            args: Box::new(move |buf| share::encode_into("process arguments", &args, buf)),
            name,
            identity,
            daemon: false,
            method: StartMethod::default(),
            _result: PhantomData,
        }
    }

    /// A process that will call `job.run()`; see [`Run`].
    pub fn from_run<T: Run>(job: T) -> ProcessBuilder<T::Output> {
        Process::new(run_target::<T>, job)
    }
}

impl<R: DeserializeOwned> ProcessBuilder<R> {
    /// Sets the name (default `Process-N`, numbered like Python).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Makes it a daemon: it is killed when this process exits or dies, even by SIGKILL, and
    /// terminated by [`init`]'s exit handler instead of being joined.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Chooses how the child is created (default [`StartMethod::Spawn`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = method;
        self
    }

    /// Starts the child.
    ///
    /// # Errors
    /// [`Error::ForkUnsafe`] for [`StartMethod::Fork`] in a multithreaded process;
    /// [`Error::Serialization`] if the arguments cannot be serialized; [`Error::Io`] if the
    /// system cannot create the process.
    pub fn start(self) -> Result<Process<R>> {
        // Keeps the constructor that diverts children linked into every program that starts one.
        std::hint::black_box(&CONSTRUCTOR);
        registry::active(); // reap children that ended since the last start, as Python does
        let mut args = Vec::new();
        let fds = (self.args)(&mut args)?;
        let (ours, theirs) =
            platform::socketpair().map_err(|e| Error::io("process: socketpair", e))?;
        let what = format!("process {:?}", self.name);
        let direct_main = platform::is_main_thread();
        let (pid, handle, waiter) = match self.method {
            StartMethod::Spawn => {
                let fd = theirs.as_raw_fd().to_string();
                let pid = platform::spawn_self((child::ENV, &fd), theirs.as_fd())
                    .map_err(|e| Error::io(format!("{what}: spawn"), e))?;
                let handle =
                    ChildHandle::open(pid).map_err(|e| Error::io(format!("{what}: pidfd"), e))?;
                (pid, handle, Waiter::Own)
            }
            StartMethod::ForkServer => {
                let (pid, handle, status) = forkserver::start_child(&theirs)?;
                (pid, handle, Waiter::ForkServer(status))
            }
            StartMethod::Fork => {
                let threads = platform::thread_count()
                    .map_err(|e| Error::io(format!("{what}: thread count"), e))?;
                if threads > 1 {
                    return Err(Error::ForkUnsafe { threads });
                }
                // SAFETY: the process has exactly one thread (checked just above), so the child
                // inherits no lock that another thread held.
                match unsafe { platform::fork() }
                    .map_err(|e| Error::io(format!("{what}: fork"), e))?
                {
                    Forked::Child => {
                        drop(ours);
                        let _ = platform::stdin_to_devnull();
                        child::child_main(theirs);
                    }
                    Forked::Parent(pid) => {
                        let handle = ChildHandle::open(pid)
                            .map_err(|e| Error::io(format!("{what}: pidfd"), e))?;
                        (pid, handle, Waiter::Own)
                    }
                }
            }
        };
        drop(theirs);
        let me = current_process();
        let bootstrap = Bootstrap {
            fingerprint: child::fingerprint(),
            target: self.target,
            name: self.name.clone(),
            identity: self.identity,
            parent_pid: me.pid(),
            parent_name: me.name().to_string(),
            daemon: self.daemon,
            death_signal: direct_main && self.method != StartMethod::ForkServer,
            args,
        };
        let record = Arc::new(ChildRecord::new(
            pid,
            self.name,
            self.daemon,
            handle,
            waiter,
            ours.try_clone()
                .map_err(|e| Error::io(format!("{what}: dup"), e))?,
        ));
        registry::register(record.clone());
        let payload =
            postcard::to_allocvec(&bootstrap).map_err(|e| Error::serialization(&what, e))?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let process = Process {
            record,
            outcome: Outcome::Running,
        };
        if let Err(e) = frame::write_frame(ours.as_fd(), FrameKind::Value, &payload, &borrowed) {
            // The child died before reading its bootstrap (or could not run at all): its own
            // report, if any, says more than EPIPE does.
            let _ = process.record.signal(platform::SIGKILL);
            let _ = e;
        }
        Ok(process)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to end (Python's `p.join()`).
    ///
    /// Returns `Ok(())` once the target has returned (also when it returned a `Result::Err`:
    /// see [`exitcode`](Self::exitcode) and [`into_result`](Self::into_result)); joining again
    /// returns the same. [`try_join`](Self::try_join), [`join_timeout`](Self::join_timeout)
    /// and [`join_deadline`](Self::join_deadline) wait less.
    ///
    /// # Errors
    /// [`Error::Panicked`] (with message and location), [`Error::Killed`] or
    /// [`Error::Exited`] if the child ended without a result; [`Error::BinaryMismatch`] if the
    /// child is not the same executable.
    pub fn join(&mut self) -> Result<()> {
        self.join_until(None, Duration::ZERO)
    }

    /// Like [`join`](Self::join) if the child has ended, without waiting.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it still runs; otherwise as for [`join`](Self::join).
    pub fn try_join(&mut self) -> Result<()> {
        self.join_until(Some(Instant::now()), Duration::ZERO)
    }

    /// Like [`join`](Self::join), waiting at most `timeout` (Python's `p.join(timeout)`).
    ///
    /// # Errors
    /// [`Error::Timeout`] if the child still runs after `timeout` (it keeps running; join
    /// again later); otherwise as for [`join`](Self::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.join_until(Instant::now().checked_add(timeout), timeout)
    }

    /// Like [`join`](Self::join), waiting until `deadline`.
    ///
    /// # Errors
    /// As for [`join_timeout`](Self::join_timeout).
    pub fn join_deadline(&mut self, deadline: Instant) -> Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.join_until(Some(deadline), timeout)
    }

    /// Waits for the child to end, as a future: the form of [`join`](Self::join) to
    /// `.await`, on any executor (feature `async`). The child's pidfd and control socket are
    /// watched by the process's one epoll thread; no thread waits for this child.
    ///
    /// **Cancel-safe**: dropping it changes nothing; join again later.
    ///
    /// # Errors
    /// As for [`join`](Self::join).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::Process;
    ///
    /// let mut child = Process::new(|x: u32| x + 1, 41).start()?;
    /// futures::executor::block_on(child.join_async())?;
    /// assert_eq!(child.take_result()?, 42);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn join_async(&mut self) -> impl std::future::Future<Output = Result<()>> + '_ {
        use std::task::Poll;

        use crate::aio::fds::{FdRegistration, fd_reactor};
        let mut watching: Vec<FdRegistration> = Vec::new();
        std::future::poll_fn(move |cx| {
            if !watching.is_empty() {
                let news = || watching.iter().any(FdRegistration::ready);
                if !news() {
                    watching.iter().for_each(|w| w.set_waker(cx.waker()));
                    if !news() {
                        return Poll::Pending;
                    }
                }
                watching.clear();
            }
            match self.try_join() {
                Err(e) if e.kind() == crate::ErrorKind::Timeout => {}
                done => return Poll::Ready(done),
            }
            let what = format!("process {:?}: async join", self.record.name);
            let watch = || -> std::io::Result<Vec<FdRegistration>> {
                let reactor = fd_reactor()?;
                self.record
                    .news_fds()?
                    .into_iter()
                    .map(|fd| reactor.readable(fd, cx.waker()))
                    .collect()
            };
            match watch() {
                // A descriptor already readable is reported at once: no news is missed.
                Ok(w) => {
                    watching = w;
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(Error::io(what, e))),
            }
        })
    }

    fn join_until(&mut self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        if let Outcome::Running = self.outcome {
            let Some(status) = self.record.wait(deadline) else {
                return Err(Error::Timeout {
                    what: format!("process {:?}", self.record.name),
                    after: waited,
                });
            };
            registry::reaped(&self.record);
            self.outcome = self.settle(status);
        }
        match &self.outcome {
            Outcome::Running => unreachable!("settled above"),
            Outcome::Value(_) | Outcome::Taken => Ok(()),
            Outcome::Failed(f) => Err(self.error(f.clone())),
        }
    }

    /// Waits for the child and returns what the target returned.
    ///
    /// # Errors
    /// As [`join`](Self::join) without a timeout; [`Error::InvalidState`] if the value was
    /// already taken by [`take_result`](Self::take_result).
    pub fn into_result(mut self) -> Result<R> {
        self.join()?;
        self.take_result()
    }

    /// Takes the target's return value after a successful [`join`](Self::join).
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the child has not been joined yet or the value was taken.
    pub fn take_result(&mut self) -> Result<R> {
        match std::mem::replace(&mut self.outcome, Outcome::Taken) {
            Outcome::Value(v) => Ok(v),
            Outcome::Failed(f) => {
                self.outcome = Outcome::Failed(f.clone());
                Err(self.error(f))
            }
            other => {
                let detail = if matches!(other, Outcome::Running) {
                    "not joined yet"
                } else {
                    "result already taken"
                };
                self.outcome = other;
                Err(Error::invalid(
                    format!("process {:?}", self.record.name),
                    detail,
                ))
            }
        }
    }

    fn settle(&mut self, status: ExitStatus) -> Outcome<R> {
        let what = format!("process {:?} result", self.record.name);
        match self.record.take_delivery() {
            Delivery::Report(frame) => match postcard::from_bytes::<Report>(&frame.payload) {
                Ok(Report::Returned { value, .. }) => match share::decode(&what, &value, frame.fds)
                {
                    Ok(v) => Outcome::Value(v),
                    Err(e) => Outcome::Failed(Failure::Broken(e.to_string())),
                },
                Ok(Report::Panicked { message, location }) => {
                    Outcome::Failed(Failure::Panicked { message, location })
                }
                Ok(Report::StackOverflow) => Outcome::Failed(Failure::StackOverflow),
                Ok(Report::Refused {
                    message,
                    mismatch: true,
                }) => Outcome::Failed(Failure::Mismatch(message)),
                Ok(Report::Refused {
                    message,
                    mismatch: false,
                }) => Outcome::Failed(Failure::Exited {
                    code: status.code(),
                    detail: Some(message),
                }),
                Err(e) => Outcome::Failed(Failure::Broken(format!("bad report: {e}"))),
            },
            Delivery::Broken(detail) => Outcome::Failed(Failure::Broken(detail)),
            Delivery::Nothing => match status {
                ExitStatus::Signaled(signal) => Outcome::Failed(Failure::Killed(signal)),
                ExitStatus::Exited(code) => Outcome::Failed(Failure::Exited { code, detail: None }),
            },
        }
    }

    fn error(&self, failure: Failure) -> Error {
        let (name, pid) = (self.record.name.clone(), self.record.pid);
        match failure {
            Failure::Panicked { message, location } => Error::Panicked {
                name,
                pid,
                message,
                location,
            },
            Failure::Killed(signal) => Error::Killed { name, pid, signal },
            Failure::StackOverflow => Error::StackOverflow { name, pid },
            Failure::Exited { code, detail } => Error::Exited {
                name,
                pid,
                code,
                detail,
            },
            Failure::Mismatch(detail) => Error::BinaryMismatch { detail },
            Failure::Broken(detail) => Error::protocol(format!("process {name:?}"), detail),
        }
    }
}

impl<R> Process<R> {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.record.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Whether the child is a daemon.
    pub fn daemon(&self) -> bool {
        self.record.daemon
    }

    /// `None` while the child runs; then `0` (returned), `1` (panicked, returned
    /// `Result::Err`, or failed to start) or `-N` (killed by signal N), as in Python.
    pub fn exitcode(&self) -> Option<i32> {
        let status = self.record.poll()?;
        registry::reaped(&self.record);
        Some(status.code())
    }

    /// Whether the child still runs.
    pub fn is_alive(&self) -> bool {
        self.exitcode().is_none()
    }

    /// Asks the child to stop with SIGTERM (its exit code becomes `-15` unless it handles it).
    ///
    /// # Errors
    /// [`Error::Io`] if the signal cannot be sent. A child that already ended is not an error.
    pub fn terminate(&self) -> Result<()> {
        self.record
            .signal(platform::SIGTERM)
            .map_err(|e| Error::io(format!("process {:?}: terminate", self.record.name), e))
    }

    /// Kills the child with SIGKILL (exit code `-9`).
    ///
    /// # Errors
    /// As [`terminate`](Self::terminate).
    pub fn kill(&self) -> Result<()> {
        self.record
            .signal(platform::SIGKILL)
            .map_err(|e| Error::io(format!("process {:?}: kill", self.record.name), e))
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if let Outcome::Running = self.outcome {
            registry::adopt_orphan(self.record.clone());
        }
    }
}

/// A live child, as [`active_children`] lists it.
pub type ChildInfo = ProcessInfo;

/// The children of this process that are still running; those that ended are reaped on the
/// way (Python's `active_children()`).
///
/// # Examples
///
/// ```
/// let p = multiproc::Process::new(|()| (), ()).start()?;
/// assert!(multiproc::active_children().len() <= 1);
/// p.into_result()?;
/// assert!(multiproc::active_children().is_empty());
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn active_children() -> Vec<ChildInfo> {
    registry::active()
        .iter()
        .map(|c| ProcessInfo::new(c.name.clone(), c.pid, c.daemon))
        .collect()
}

/// Makes this program a proper multiprocessing main, as Python does for its interpreter: at
/// normal exit (return from `main` or `std::process::exit`) daemon children are terminated and
/// every other child is joined.
///
/// Children need no call at all: a child is diverted into its target before `main` runs, so
/// code at the top of `main` never runs twice, and tests, examples and doctests work as they
/// are. Calling `init` more than once is harmless.
///
/// # Examples
///
/// ```
/// fn main() {
///     multiproc::init();
///     // ... start processes; non-daemon ones are joined when main returns.
/// }
/// # main();
/// ```
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::hint::black_box(&CONSTRUCTOR);
        let _ = platform::at_exit(exit_hook);
    });
}

extern "C" fn exit_hook() {
    // A child never gets here: it leaves through `_exit` after joining its own children.
    registry::join_all_at_exit();
}
