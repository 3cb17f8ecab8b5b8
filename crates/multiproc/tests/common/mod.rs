//! Shared helpers for the cross-process tests.
#![allow(dead_code, unreachable_pub)]

pub mod netns;
pub mod redis;
pub mod redis_cluster;

use std::ops::{Deref, DerefMut};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use multiproc::Process;
use std::path::PathBuf;
use std::process::Command;

/// A started process that is killed and reaped when the test ends, also when it fails.
pub struct Guarded<R: serde::de::DeserializeOwned>(pub Option<Process<R>>);

impl<R: serde::de::DeserializeOwned> Guarded<R> {
    pub fn new(p: Process<R>) -> Self {
        Guarded(Some(p))
    }
    pub fn into_inner(mut self) -> Process<R> {
        self.0.take().expect("present")
    }
}

impl<R: serde::de::DeserializeOwned> Deref for Guarded<R> {
    type Target = Process<R>;
    fn deref(&self) -> &Process<R> {
        self.0.as_ref().expect("present")
    }
}

impl<R: serde::de::DeserializeOwned> DerefMut for Guarded<R> {
    fn deref_mut(&mut self) -> &mut Process<R> {
        self.0.as_mut().expect("present")
    }
}

impl<R: serde::de::DeserializeOwned> Drop for Guarded<R> {
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            let _ = p.kill();
            let _ = p.join_timeout(Duration::from_secs(5));
        }
    }
}

/// A pidfd for any live process (also one that is not our child).
pub fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `fd` has exited, at most `timeout`; true if it has.
pub fn wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n == 1
}

/// The state letter of `pid` in /proc (`Z` for a zombie), or None when no such process exists.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a zombie (or any process) still parented to us.
pub fn is_our_process(pid: i32) -> bool {
    proc_state(pid).is_some_and(|(_, ppid)| ppid == std::process::id() as i32)
}

/// Polls `cond` until it holds or `timeout` passes. Only for facts the kernel gives no event
/// for (another thread reaping a child).
#[allow(clippy::disallowed_methods)]
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The CPython interpreters to test against: `python3` and pyenv's, when present.
pub fn pythons() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        found.push(PathBuf::from("python3"));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    for v in ["3.8", "3.12", "3.13"] {
        let Ok(dir) = std::fs::read_dir(home.join(".pyenv/versions")) else {
            break;
        };
        let mut versions: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{v}.")))
            })
            .collect();
        versions.sort();
        if let Some(p) = versions.pop() {
            found.push(p.join("bin/python3"));
        }
    }
    if found.is_empty() {
        eprintln!("note: no CPython found; interop tests skipped");
    } else {
        eprintln!("interop with {found:?}");
    }
    found
}
