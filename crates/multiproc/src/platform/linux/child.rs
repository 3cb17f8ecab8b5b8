//! Child handles: pidfds, which name a child so that no later process with its pid can be confused
//! with it, become readable when it ends, and reap it.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::cvt;
use super::process::ExitStatus;

/// A child process, named so that no later process that reuses its pid can be mistaken for
/// it (a pidfd): it can be signalled, polled (its descriptor is readable once the child has
/// ended) and reaped.
#[derive(Debug)]
pub(crate) struct ChildHandle(OwnedFd);

impl ChildHandle {
    /// A handle on our child `pid`, which must not have been reaped yet.
    pub(crate) fn open(pid: i32) -> io::Result<ChildHandle> {
        pidfd_open(pid).map(ChildHandle)
    }

    /// A handle that another process opened and sent (the fork server's children). A
    /// descriptor that is not one makes every call fail; it never reaches another process.
    pub(crate) fn from_fd(fd: OwnedFd) -> ChildHandle {
        ChildHandle(fd)
    }

    /// Sends `signal` to the child; nothing happens if it has already ended.
    pub(crate) fn send_signal(&self, signal: i32) -> io::Result<()> {
        pidfd_send_signal(self.0.as_fd(), signal)
    }

    /// Reaps the child if it has ended; `None` while it runs.
    pub(crate) fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        try_wait_pidfd(self.0.as_fd())
    }
}

impl AsFd for ChildHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A pidfd for `pid`, which must be our child not yet reaped (or a process we know lives).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` through a pidfd (no pid-reuse race). A process that already exited is not an
/// error.
fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Kills our child `pid` (if it still runs) and reaps it, so that it leaves no zombie.
pub(crate) fn kill_and_reap(pid: i32) {
    // SAFETY: kill takes a pid and a signal; `pid` is a child of ours not yet reaped (only
    // this call reaps it), so it cannot have been recycled.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return; // reaped, or someone else did (ECHILD)
        }
    }
}

/// Reaps the child behind `pidfd` if it has ended; `None` while it runs.
fn try_wait_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid out-pointer; the pidfd is open for the call.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    // SAFETY: waitid succeeded, so si_pid/si_status are the fields it fills for SIGCHLD info.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}
