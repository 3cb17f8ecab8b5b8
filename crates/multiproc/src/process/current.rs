//! Who this process is: its name, its place in the tree, its parent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::platform;
use crate::sync::lock;

struct Identity {
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    parent: Option<(i32, String)>,
}

static IDENTITY: Mutex<Option<Identity>> = Mutex::new(None);
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Records who this child is (from its bootstrap message): its name, its place in the
/// tree, whether it is a daemon, and its parent's pid and name.
pub(crate) fn set_child(name: &str, identity: &[u32], daemon: bool, parent: (i32, &str)) {
    COUNTER.store(0, Ordering::Relaxed);
    *lock(&IDENTITY) = Some(Identity {
        name: name.to_string(),
        identity: identity.to_vec(),
        daemon,
        parent: Some((parent.0, parent.1.to_string())),
    });
}

/// The next child's identity and default name (`Process-1`, or `Process-2:1` in a child).
pub(crate) fn next_child_identity() -> (Vec<u32>, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let mut identity = lock(&IDENTITY)
        .as_ref()
        .map(|i| i.identity.clone())
        .unwrap_or_default();
    identity.push(n);
    let name = identity
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(":");
    (identity, format!("Process-{name}"))
}

/// This process, as Python's `multiprocessing.current_process()` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    name: String,
    pid: i32,
    daemon: bool,
}

impl ProcessInfo {
    /// Its name: `MainProcess` for the program itself, else the name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it was started as a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    pub(crate) fn new(name: String, pid: i32, daemon: bool) -> Self {
        ProcessInfo { name, pid, daemon }
    }
}

/// This process: `MainProcess` in the program, the child's name inside a child.
///
/// # Examples
///
/// ```
/// assert_eq!(multiproc::current_process().name(), "MainProcess");
/// assert_eq!(multiproc::current_process().pid(), std::process::id() as i32);
/// ```
pub fn current_process() -> ProcessInfo {
    let identity = lock(&IDENTITY);
    match identity.as_ref() {
        Some(i) => ProcessInfo::new(i.name.clone(), platform::getpid(), i.daemon),
        None => ProcessInfo::new("MainProcess".into(), platform::getpid(), false),
    }
}

/// The process that started this one, or `None` in the program's main process.
///
/// # Examples
///
/// ```
/// assert!(multiproc::parent_process().is_none());
/// ```
pub fn parent_process() -> Option<ProcessInfo> {
    let identity = lock(&IDENTITY);
    let (pid, name) = identity.as_ref()?.parent.clone()?;
    Some(ProcessInfo::new(name, pid, false))
}

/// The number of CPUs this process may use (affinity and cgroup limits included), at least 1.
///
/// # Examples
///
/// ```
/// assert!(multiproc::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
