//! The parent's table of children: waiting, reaping, reports, and what happens at exit.
//!
//! Every started child has a [`ChildRecord`] here until it has been reaped. A child ends in two
//! observable ways at once: its *waiter* (a pidfd, or for a fork-server child the status socket
//! the server writes its exit status to) becomes readable, and its *control* socket delivers the
//! report frame (the result, or the panic) followed by end of file. Both are read together, so a
//! child writing a large result never blocks against a parent that waits for it to exit.
//!
//! A record whose `Process` handle is dropped while the child runs is adopted by the reaper
//! thread, which exists only while there are such orphans; it drains and reaps them so that no
//! zombie stays behind.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::connection::frame::{self, Frame, FrameReader, ReadError};
use crate::platform::{self, ChildHandle, ExitStatus};
use crate::sync::lock;

/// How the end of a child is observed (its pidfd signals it in both cases).
pub(crate) enum Waiter {
    /// Our own child: its pidfd becomes readable when it exits; `waitid` reaps it.
    Own,
    /// A fork-server child: the server reaps it and writes its exit status to this socket.
    ForkServer(OwnedFd),
}
/// What the child's control socket delivered.
pub(crate) enum Delivery {
    /// A report frame.
    Report(Frame),
    /// Nothing before end of file.
    Nothing,
    /// Garbage.
    Broken(String),
}

/// One child process as the parent sees it.
pub(crate) struct ChildRecord {
    pub(crate) pid: i32,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// Shared with the state: a signal goes out while another thread waits holding it.
    child: Arc<ChildHandle>,
    state: Mutex<ChildState>,
}

struct ChildState {
    child: Arc<ChildHandle>,
    waiter: Waiter,
    control: Option<OwnedFd>,
    reader: FrameReader,
    delivery: Option<Delivery>,
    status: Option<ExitStatus>,
}

impl ChildState {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        match &self.waiter {
            Waiter::Own => self.child.as_fd(),
            Waiter::ForkServer(status) => status.as_fd(),
        }
    }

    /// Reaps without blocking.
    fn try_reap(&self) -> std::io::Result<Option<ExitStatus>> {
        match &self.waiter {
            Waiter::Own => self.child.try_wait(),
            Waiter::ForkServer(status) => super::forkserver::try_read_status(status.as_fd()),
        }
    }

    fn finished(&self) -> bool {
        self.status.is_some() && self.control.is_none()
    }

    /// Reads the control socket until `deadline`; `true` if it is now done with.
    fn read_control(&mut self, deadline: Option<Instant>) -> bool {
        let Some(control) = self.control.as_ref() else {
            return true;
        };
        let outcome = self.reader.read(control.as_fd(), deadline, false);
        match outcome {
            Err(ReadError::Timeout) => return false,
            Ok(frame) => {
                if self.delivery.is_none() {
                    self.delivery = Some(Delivery::Report(frame));
                }
                // One report per child: anything after it is ignored until end of file.
                return false;
            }
            Err(ReadError::Eof) => {}
            // The child died with our bootstrap unread: the same as end of file.
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(ReadError::Protocol(e)) => self.delivery = Some(Delivery::Broken(e)),
            Err(ReadError::Io(e)) => self.delivery = Some(Delivery::Broken(e.to_string())),
        }
        self.delivery.get_or_insert(Delivery::Nothing);
        self.control = None;
        true
    }

    /// One step: wait until `deadline` for either fd, then read what is ready.
    fn step(&mut self, deadline: Option<Instant>) {
        if self.status.is_none() {
            match self.try_reap() {
                Ok(Some(s)) => self.status = Some(s),
                Ok(None) => {}
                // ECHILD: someone else reaped it (a SIGCHLD handler set to SIG_IGN, waitpid(-1)).
                Err(_) => self.status = Some(ExitStatus::Exited(255)),
            }
        }
        if self.status.is_some() {
            // The child is gone, so everything it wrote is already in the socket: a reader
            // that finds nothing ready has seen it all (a grandchild may hold the socket open).
            while !self.read_control(Some(Instant::now())) {
                if !self.reader.in_frame() && self.delivery.is_some() {
                    break;
                }
                if self.reader.in_frame() {
                    // A frame cut short by the child's death.
                    self.delivery
                        .get_or_insert(Delivery::Broken("report cut short".into()));
                    break;
                }
            }
            self.control = None;
            return;
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ready = {
            let mut fds = vec![self.wait_fd()];
            if let Some(c) = &self.control {
                fds.push(c.as_fd());
            }
            platform::poll_readable(&fds, timeout).unwrap_or_else(|_| vec![true; fds.len()])
        };
        if ready.get(1).copied().unwrap_or(false) {
            self.read_control(Some(Instant::now() + Duration::from_millis(1)));
        }
    }
}

impl ChildRecord {
    pub(crate) fn new(
        pid: i32,
        name: String,
        daemon: bool,
        child: ChildHandle,
        waiter: Waiter,
        control: OwnedFd,
    ) -> Self {
        let child = Arc::new(child);
        ChildRecord {
            pid,
            name,
            daemon,
            state: Mutex::new(ChildState {
                child: child.clone(),
                waiter,
                control: Some(control),
                reader: FrameReader::new(frame::DEFAULT_MAX_FRAME),
                delivery: None,
                status: None,
            }),
            child,
        }
    }

    fn state(&self) -> MutexGuard<'_, ChildState> {
        lock(&self.state)
    }

    /// Waits until the child has ended and its report is read, or `deadline`. Returns the exit
    /// status once it has ended.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<ExitStatus> {
        let mut state = self.state();
        loop {
            if state.finished() {
                return state.status;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                state.step(Some(Instant::now()));
                return if state.finished() { state.status } else { None };
            }
            state.step(deadline);
        }
    }

    /// The exit status if the child has ended (reaping it), without blocking.
    pub(crate) fn poll(&self) -> Option<ExitStatus> {
        self.wait(Some(Instant::now()))
    }

    /// Like [`poll`](Self::poll) but gives up at once if another thread is waiting on it.
    fn poll_if_free(&self) -> Option<Option<ExitStatus>> {
        let mut state = self.state.try_lock().ok()?;
        if !state.finished() {
            state.step(Some(Instant::now()));
        }
        Some(if state.finished() { state.status } else { None })
    }

    /// Takes the delivery (after [`wait`](Self::wait) returned a status).
    pub(crate) fn take_delivery(&self) -> Delivery {
        self.state().delivery.take().unwrap_or(Delivery::Nothing)
    }

    /// Sends a signal through the pidfd: never another process, even after the child was
    /// reaped and its pid reused; nothing happens if it has already ended.
    pub(crate) fn signal(&self, signal: i32) -> std::io::Result<()> {
        self.child.send_signal(signal)
    }

    /// Duplicates of the descriptors that become readable when there is news of the child
    /// (its exit, its report), for an awaiting join to watch.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn news_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        let state = self.state();
        let mut fds = vec![state.wait_fd().try_clone_to_owned()?];
        if let Some(c) = &state.control {
            fds.push(c.try_clone()?);
        }
        Ok(fds)
    }

    fn wait_fds(&self) -> Option<Vec<std::os::fd::RawFd>> {
        use std::os::fd::AsRawFd;
        let state = self.state.try_lock().ok()?;
        let mut fds = vec![state.wait_fd().as_raw_fd()];
        if let Some(c) = &state.control {
            fds.push(c.as_raw_fd());
        }
        Some(fds)
    }
}

/// Every child started by this process and not yet reaped.
static CHILDREN: Mutex<Vec<Arc<ChildRecord>>> = Mutex::new(Vec::new());

pub(crate) fn register(record: Arc<ChildRecord>) {
    lock(&CHILDREN).push(record);
}

fn unregister(record: &Arc<ChildRecord>) {
    lock(&CHILDREN).retain(|r| !Arc::ptr_eq(r, record));
}

/// Called by a `Process` once its child has been reaped.
pub(crate) fn reaped(record: &Arc<ChildRecord>) {
    unregister(record);
}

/// Forgets every record without waiting (in a freshly forked child, whose table is a copy of
/// its parent's: those are not its children).
pub(crate) fn forget_all() {
    lock(&CHILDREN).clear();
    lock(&ORPHANS).clear();
}

/// Live children, reaping those that ended (Python's `active_children()`).
pub(crate) fn active() -> Vec<Arc<ChildRecord>> {
    let children: Vec<_> = lock(&CHILDREN).clone();
    let mut alive = Vec::new();
    for child in children {
        match child.poll_if_free() {
            Some(Some(_)) => unregister(&child),
            _ => alive.push(child),
        }
    }
    alive
}

/// Joins non-daemon children and terminates daemon ones, as CPython does at interpreter exit.
pub(crate) fn join_all_at_exit() {
    let children: Vec<_> = lock(&CHILDREN).clone();
    for child in &children {
        if child.daemon {
            let _ = child.signal(platform::SIGTERM);
        }
    }
    for child in &children {
        child.wait(None);
        unregister(child);
    }
}

static ORPHANS: Mutex<Vec<Arc<ChildRecord>>> = Mutex::new(Vec::new());
static REAPER_WAKE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();

/// Hands a running child whose handle was dropped to the reaper thread.
pub(crate) fn adopt_orphan(record: Arc<ChildRecord>) {
    if record.poll().is_some() {
        unregister(&record);
        return;
    }
    let mut orphans = lock(&ORPHANS);
    let start = orphans.is_empty();
    orphans.push(record);
    drop(orphans);
    let Some((wake_tx, _)) = wake_pair() else {
        return;
    };
    if start {
        // If no thread can be started, the orphans are reaped by active_children() or at exit.
        let _ = std::thread::Builder::new()
            .name("multiproc-reaper".into())
            .spawn(reaper);
    } else {
        let _ = platform::send_with_fds(wake_tx.as_fd(), &[std::io::IoSlice::new(&[1])], &[]);
    }
}

fn wake_pair() -> Option<&'static (OwnedFd, OwnedFd)> {
    if let Some(p) = REAPER_WAKE.get() {
        return Some(p);
    }
    let pair = platform::socketpair().ok()?;
    Some(REAPER_WAKE.get_or_init(|| pair))
}

/// The reaper thread: waits on all orphans at once and reaps each as it ends; exits when none
/// are left.
fn reaper() {
    use std::os::fd::BorrowedFd;
    let Some((_, wake_rx)) = wake_pair() else {
        return;
    };
    loop {
        let orphans: Vec<_> = lock(&ORPHANS).clone();
        let mut fds = vec![wake_rx.as_fd()];
        let mut owners = vec![None];
        for (i, orphan) in orphans.iter().enumerate() {
            for fd in orphan.wait_fds().unwrap_or_default() {
                // SAFETY: the record (held in `orphans`) owns these descriptors and keeps them
                // open at least until this iteration ends; only this thread closes orphans'.
                fds.push(unsafe { BorrowedFd::borrow_raw(fd) });
                owners.push(Some(i));
            }
        }
        let ready = platform::poll_readable(&fds, Some(Duration::from_secs(1))).unwrap_or_default();
        if ready.first().copied().unwrap_or(false) {
            let mut buf = [std::mem::MaybeUninit::uninit(); 64];
            let _ = platform::recv_with_fds(wake_rx.as_fd(), &mut buf, &mut Vec::new(), true);
        }
        for (i, orphan) in orphans.iter().enumerate() {
            let touched = owners.iter().zip(&ready).any(|(o, r)| *o == Some(i) && *r);
            if (touched || ready.is_empty()) && orphan.poll().is_some() {
                unregister(orphan);
                lock(&ORPHANS).retain(|r| !Arc::ptr_eq(r, orphan));
            }
        }
        let mut left = lock(&ORPHANS);
        if left.is_empty() {
            // Exiting while holding the lock: a new orphan either sees an empty list (and
            // starts a new reaper) or was already seen here.
            drop(std::mem::take(&mut *left));
            return;
        }
    }
}
