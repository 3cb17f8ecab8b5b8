//! Who each thread is: names, idents, the table of live threads behind `enumerate`.
//!
//! A thread learns its [`ThreadInfo`] once and keeps it in a thread-local `CURRENT`: a thread
//! started by a [`ThreadBuilder`](super::ThreadBuilder) is given it before its closure runs;
//! the main thread is recognised by the platform; any other thread becomes a `Dummy-N` the
//! first time it asks. `LIVE` lists the live threads other than the main one; builder threads
//! leave it when their closure ends, dummies when their thread-locals are destroyed.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::platform;
use crate::sync::IgnorePoison;
use crate::sync::deadline_after;
use crate::sync::lock;

/// The main thread's ident; other threads count up from 2.
const MAIN_IDENT: u64 = 1;
static NEXT_IDENT: AtomicU64 = AtomicU64::new(MAIN_IDENT + 1);
/// One counter for `Thread-N` and `Dummy-N`, as CPython's `_newname` has.
static NEXT_NAME: AtomicU64 = AtomicU64::new(1);

struct Live {
    info: ThreadInfo,
    /// Set for builder threads, which `join_non_daemon` can wait for.
    run: Option<Arc<RunState>>,
}

static LIVE: Mutex<BTreeMap<u64, Live>> = Mutex::new(BTreeMap::new());

thread_local! {
    static CURRENT: OnceCell<Current> = const { OnceCell::new() };
}

struct Current {
    info: ThreadInfo,
    /// A foreign thread adopted as `Dummy-N`: leaves `LIVE` when its thread-locals go.
    dummy: bool,
}

impl Drop for Current {
    fn drop(&mut self) {
        if self.dummy {
            lock(&LIVE).remove(&self.info.ident);
        }
    }
}

/// A thread as Python's `threading` describes it: its name, ident and daemon flag.
///
/// # Examples
///
/// ```
/// let me = multiproc::current_thread();
/// assert_eq!(me, multiproc::main_thread());
/// assert_eq!(me.name(), "MainThread");
/// assert!(!me.daemon());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ThreadInfo {
    name: String,
    ident: u64,
    daemon: bool,
}

impl ThreadInfo {
    /// Its name: `MainThread`, the name given to the builder, `Thread-N` by default, or
    /// `Dummy-N` for a thread not started through this crate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A number that identifies the thread for the life of the process (never reused; `1` is
    /// the main thread). Not an OS thread id.
    pub fn ident(&self) -> u64 {
        self.ident
    }

    /// Its daemon flag; see [`ThreadBuilder::daemon`](super::ThreadBuilder::daemon).
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

fn main_info() -> ThreadInfo {
    ThreadInfo {
        name: "MainThread".into(),
        ident: MAIN_IDENT,
        daemon: false,
    }
}

fn next_ident() -> u64 {
    NEXT_IDENT.fetch_add(1, Ordering::Relaxed)
}

fn next_name(template: &str) -> String {
    format!("{template}-{}", NEXT_NAME.fetch_add(1, Ordering::Relaxed))
}

/// The calling thread, as Python's `threading.current_thread()`.
///
/// A thread started by a [`ThreadBuilder`](super::ThreadBuilder) gets its name; the program's
/// main thread is `MainThread`; any other thread (a plain `std::thread`, a test harness
/// thread) is named `Dummy-N` on its first call, is a daemon, and is listed by [`enumerate`]
/// from then until it exits.
///
/// # Examples
///
/// ```
/// use multiproc::{Thread, current_thread};
///
/// assert_eq!(current_thread().name(), "MainThread");
/// let t = Thread::builder().name("worker").spawn(|| current_thread().name().to_string())?;
/// assert_eq!(t.join()?, "worker");
///
/// let plain = std::thread::spawn(|| current_thread().name().to_string()).join().unwrap();
/// assert!(plain.starts_with("Dummy-"));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn current_thread() -> ThreadInfo {
    CURRENT
        .try_with(|c| c.get_or_init(adopt).info.clone())
        // Asked from a thread-local destructor at thread exit: answer without registering.
        .unwrap_or_else(|_| {
            if platform::is_main_thread() {
                main_info()
            } else {
                ThreadInfo {
                    name: next_name("Dummy"),
                    ident: next_ident(),
                    daemon: true,
                }
            }
        })
}

fn adopt() -> Current {
    if platform::is_main_thread() {
        return Current {
            info: main_info(),
            dummy: false,
        };
    }
    let info = ThreadInfo {
        name: next_name("Dummy"),
        ident: next_ident(),
        daemon: true,
    };
    lock(&LIVE).insert(
        info.ident,
        Live {
            info: info.clone(),
            run: None,
        },
    );
    Current { info, dummy: true }
}

/// The calling thread's info if it already has one, without adopting it.
fn peek_current() -> Option<ThreadInfo> {
    CURRENT
        .try_with(|c| c.get().map(|c| c.info.clone()))
        .ok()
        .flatten()
}

/// The main thread (`MainThread`, ident 1), as Python's `threading.main_thread()`.
///
/// # Examples
///
/// ```
/// let main = multiproc::main_thread();
/// assert_eq!((main.name(), main.ident(), main.daemon()), ("MainThread", 1, false));
/// ```
pub fn main_thread() -> ThreadInfo {
    main_info()
}

/// The live threads: the main thread first, then by ident every thread started by a
/// [`ThreadBuilder`](super::ThreadBuilder) whose closure has not returned, and every other
/// thread that has called [`current_thread`] and not exited (Python's `threading.enumerate()`).
///
/// # Caveats
/// Threads started with plain `std::thread` (or by other libraries) are not seen until they
/// call [`current_thread`]; the list is a snapshot and may be stale when it is read.
///
/// # Examples
///
/// ```
/// use multiproc::{Thread, enumerate};
/// use std::sync::mpsc;
///
/// let (release, wait) = mpsc::channel::<()>();
/// let t = Thread::builder().name("busy").spawn(move || wait.recv())?;
/// let names: Vec<String> = enumerate().iter().map(|t| t.name().to_string()).collect();
/// assert_eq!(names[0], "MainThread");
/// assert!(names.contains(&"busy".to_string()));
/// release.send(()).unwrap();
/// t.join()?.unwrap();
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn enumerate() -> Vec<ThreadInfo> {
    let live = lock(&LIVE);
    std::iter::once(main_info())
        .chain(live.values().map(|l| l.info.clone()))
        .collect()
}

/// The number of threads [`enumerate`] would list (Python's `threading.active_count()`).
///
/// # Examples
///
/// ```
/// assert!(multiproc::active_count() >= 1);
/// ```
pub fn active_count() -> usize {
    1 + lock(&LIVE).len()
}

/// Waits until every non-daemon thread started by a
/// [`ThreadBuilder`](super::ThreadBuilder) has finished, as Python does at interpreter exit.
///
/// Rust does not wait for threads when `main` returns: the process exits and every thread
/// dies mid-work. Call this at the end of `main` for Python's behaviour. Threads started while
/// it waits are waited for too; the calling thread is never waited for.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use multiproc::{Thread, join_non_daemon};
///
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = done.clone();
/// drop(Thread::spawn(move || flag.store(true, Ordering::SeqCst))?); // detached
/// join_non_daemon();
/// assert!(done.load(Ordering::SeqCst));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn join_non_daemon() {
    wait_non_daemon(None);
}

/// [`join_non_daemon`], giving up after `timeout`: whether every non-daemon thread finished.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert!(multiproc::join_non_daemon_timeout(Duration::from_secs(10)));
/// ```
pub fn join_non_daemon_timeout(timeout: Duration) -> bool {
    wait_non_daemon(deadline_after(timeout))
}

fn wait_non_daemon(deadline: Option<Instant>) -> bool {
    let me = peek_current().map(|i| i.ident);
    loop {
        let next = lock(&LIVE)
            .values()
            .filter(|l| !l.info.daemon && Some(l.info.ident) != me)
            .find_map(|l| l.run.clone());
        match next {
            None => return true,
            // A finished thread has left `LIVE` before `done` is set: no thread comes twice.
            Some(run) if run.wait(deadline) => {}
            Some(_) => return false,
        }
    }
}

/// What a builder thread and its handle share: whether the closure has returned.
#[derive(Default)]
pub(super) struct RunState {
    done: Mutex<bool>,
    finished: Condvar,
}

impl RunState {
    pub(super) fn is_done(&self) -> bool {
        *lock(&self.done)
    }

    /// Waits until the closure has returned or `deadline` passes; whether it has returned.
    pub(super) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut done = lock(&self.done);
        while !*done {
            done = match deadline {
                None => self.finished.wait(done).ignore_poison(),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.finished.wait_timeout(done, left).ignore_poison().0
                }
            };
        }
        true
    }
}

/// The identity of a thread about to be spawned: name (given or `Thread-N`), fresh ident,
/// daemon flag (given, or inherited from the spawning thread as in CPython).
pub(super) fn new_identity(name: Option<String>, daemon: Option<bool>) -> ThreadInfo {
    ThreadInfo {
        name: name.unwrap_or_else(|| next_name("Thread")),
        ident: next_ident(),
        daemon: daemon.unwrap_or_else(|| match peek_current() {
            Some(me) => me.daemon,
            // Not adopted yet: the main thread is no daemon, a would-be dummy is one.
            None => !platform::is_main_thread(),
        }),
    }
}

/// Lists a thread about to be spawned.
pub(super) fn register(info: &ThreadInfo, run: &Arc<RunState>) {
    lock(&LIVE).insert(
        info.ident,
        Live {
            info: info.clone(),
            run: Some(run.clone()),
        },
    );
}

/// Removes a thread from the list (its closure ended, or it could not be spawned).
pub(super) fn unregister(ident: u64) {
    lock(&LIVE).remove(&ident);
}

/// Runs first in a builder thread: it knows who it is.
pub(super) fn enter(info: ThreadInfo) {
    let _ = CURRENT.try_with(|c| c.set(Current { info, dummy: false }));
}

/// Whether the calling thread is the one with `ident`.
pub(super) fn is_current(ident: u64) -> bool {
    peek_current().is_some_and(|me| me.ident == ident)
}

/// Dropped last in a builder thread, also when its closure panics: unlists the thread, then
/// wakes its joiners, so that a joined thread is never listed.
pub(super) struct ExitGuard {
    pub(super) ident: u64,
    pub(super) run: Arc<RunState>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        unregister(self.ident);
        *lock(&self.run.done) = true;
        self.run.finished.notify_all();
    }
}
