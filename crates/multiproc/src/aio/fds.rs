//! The one mechanism by which awaiting futures wait for descriptors (a child's pidfd and
//! control socket): one thread per process in epoll, however many futures wait.
//!
//! A registration holds its own duplicate of the descriptor, so the watched file stays open
//! while it is watched and the number epoll knows cannot be reused by another file; it is
//! watched once (`EPOLLONESHOT`): the future, woken, looks, and registers again if it must.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use crate::local_lock::IgnorePoison;
use crate::platform::{self, Poller};

struct Slot {
    waker: Mutex<Waker>,
    ready: AtomicBool,
}

/// The process's descriptor reactor.
pub(crate) struct FdReactor {
    pid: u32,
    poller: Poller,
    watched: Mutex<HashMap<u64, (OwnedFd, Arc<Slot>)>>,
    next: AtomicU64,
}

/// The reactor of this process, started on first use (and afresh in a forked child).
pub(crate) fn fd_reactor() -> io::Result<&'static FdReactor> {
    static CURRENT: AtomicPtr<FdReactor> = AtomicPtr::new(std::ptr::null_mut());
    let pid = platform::getpid_cached();
    let seen = CURRENT.load(Ordering::Acquire);
    // SAFETY: a non-null pointer in CURRENT is a leaked Box, never freed.
    if let Some(r) = unsafe { seen.as_ref() }
        && r.pid == pid
    {
        return Ok(r);
    }
    let fresh: &'static FdReactor = Box::leak(Box::new(FdReactor {
        pid,
        poller: Poller::new()?,
        watched: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
    }));
    let ptr = fresh as *const FdReactor as *mut FdReactor;
    match CURRENT.compare_exchange(seen, ptr, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            std::thread::Builder::new()
                .name("multiproc-async-fds".into())
                .spawn(move || fresh.run())
                .map_err(io::Error::other)?;
            Ok(fresh)
        }
        // Another thread won; ours is leaked unused (one epoll descriptor, once).
        // SAFETY: a leaked Box, as above.
        Err(other) => Ok(unsafe { &*other }),
    }
}

/// A future's registration for a descriptor's readiness; dropping it stops the watch.
pub(crate) struct FdRegistration {
    token: u64,
    slot: Arc<Slot>,
}

impl FdRegistration {
    /// Whether the descriptor became ready (or hung up) since the registration.
    pub(crate) fn ready(&self) -> bool {
        self.slot.ready.load(Ordering::Acquire)
    }

    /// Updates the waker to wake.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut w = self.slot.waker.lock().ignore_poison();
        if !w.will_wake(waker) {
            *w = waker.clone();
        }
    }
}

impl Drop for FdRegistration {
    fn drop(&mut self) {
        if let Ok(r) = fd_reactor()
            && let Some((fd, _)) = r.watched.lock().ignore_poison().remove(&self.token)
        {
            r.poller.forget(fd.as_fd());
        }
    }
}

impl FdReactor {
    /// Wakes `waker` once `own` (a duplicate the registration keeps) is readable (or hung
    /// up).
    pub(crate) fn readable(&self, own: OwnedFd, waker: &Waker) -> io::Result<FdRegistration> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            waker: Mutex::new(waker.clone()),
            ready: AtomicBool::new(false),
        });
        let mut watched = self.watched.lock().ignore_poison();
        self.poller.watch_readable_once(own.as_fd(), token)?;
        watched.insert(token, (own, slot.clone()));
        Ok(FdRegistration { token, slot })
    }

    fn run(&self) {
        let mut tokens = Vec::new();
        loop {
            tokens.clear();
            if self.poller.wait(&mut tokens).is_err() {
                // Nothing to do but try again (EINTR is handled; others do not happen for a
                // valid epoll descriptor).
                continue;
            }
            let wakers: Vec<Waker> = {
                let watched = self.watched.lock().ignore_poison();
                tokens
                    .iter()
                    .filter_map(|t| watched.get(t))
                    .map(|(_, slot)| {
                        slot.ready.store(true, Ordering::Release);
                        slot.waker.lock().ignore_poison().clone()
                    })
                    .collect()
            };
            for w in wakers {
                w.wake();
            }
        }
    }
}
