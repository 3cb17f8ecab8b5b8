//! Readiness of many descriptors at once (epoll), for the async waits on descriptors: a
//! child's pidfd, a control socket.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// An epoll instance.
pub(crate) struct Poller {
    epfd: OwnedFd,
}

impl Poller {
    /// A new epoll instance (close-on-exec).
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes flags only.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a new descriptor, ours alone.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epfd })
    }

    /// Watches `fd` once: the next [`wait`](Self::wait) after it becomes readable (or hung
    /// up) reports `token`, then it is not reported again until it is watched anew.
    pub(crate) fn watch_readable_once(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are live; `ev` is a live epoll_event.
        cvt(unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })
        .map(drop)
    }

    /// Stops watching `fd`.
    pub(crate) fn forget(&self, fd: BorrowedFd<'_>) {
        // SAFETY: both descriptors are live; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits until something watched is ready; appends the tokens reported to `out`.
    pub(crate) fn wait(&self, out: &mut Vec<u64>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: `events` is a live array of 64 epoll_events; -1 waits for ever.
        let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
            Ok(n) => {
                out.extend(events[..n as usize].iter().map(|e| e.u64));
                Ok(())
            }
        }
    }
}
