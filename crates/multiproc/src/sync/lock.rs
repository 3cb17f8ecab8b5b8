//! `Lock` and `RLock`: the safe, shareable locks over [`RawLock`].

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::raw_lock::{Acquired, RawLock};
use super::shim::{AtomicU32, Ordering};
use crate::shm::{Layout, Shared};

/// The lock was taken over from an owner that died holding it.
///
/// Like [`std::sync::PoisonError`], it carries the guard: the lock *is* held by the caller,
/// who may repair what the dead owner left half-done and go on
/// ([`into_inner`](Self::into_inner)), or turn it into an [`Error`](crate::Error) with `?`
/// (the guard is then dropped and the lock released). The takeover is reported once, to the
/// acquirer that made it.
pub struct OwnerDied<G> {
    guard: G,
    what: &'static str,
    pid: u32,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G, what: &'static str, pid: u32) -> Self {
        OwnerDied { guard, what, pid }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// The guard, borrowed mutably.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// The process id of the owner that died.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> OwnerDied<H> {
        OwnerDied {
            guard: f(self.guard),
            what: self.what,
            pid: self.pid,
        }
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("what", &self.what)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: its owner (pid {}) died holding it",
            self.what, self.pid
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

impl<G> From<OwnerDied<G>> for crate::Error {
    fn from(e: OwnerDied<G>) -> Self {
        crate::Error::OwnerDied {
            what: e.what.to_string(),
            pid: e.pid,
        }
    }
}

/// What acquiring gives: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

pub(crate) fn wrap<G>(how: Acquired, guard: G, what: &'static str) -> LockResult<G> {
    match how {
        Acquired::Clean => Ok(guard),
        Acquired::OwnerDied { pid } => Err(OwnerDied::new(guard, what, pid)),
    }
}

/// Turns the result of a timed acquire inside out: `Ok(None)` on timeout.
pub(crate) fn wrap_timed<G>(
    how: Option<Acquired>,
    guard: impl FnOnce() -> G,
    what: &'static str,
) -> LockResult<Option<G>> {
    match how {
        None => Ok(None),
        Some(how) => wrap(how, guard(), what).map(Some).map_err(|e| e.map(Some)),
    }
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct LockLayout {
    magic: AtomicU32,
    _reserved: AtomicU32,
    pub(crate) raw: RawLock,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for LockLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"LCK1");
    const WHAT: &'static str = "lock";

    fn held_here(&self) -> bool {
        self.raw.held_in_this_process()
    }
}

/// A lock shared between processes and threads (Python's `multiprocessing.Lock`).
///
/// Cloning gives another handle to the same lock; so does passing it to a child as (part of)
/// its argument, or through a [`Queue`](crate::Queue) or [`Connection`](crate::Connection).
/// Acquiring gives a guard that releases on drop.
///
/// If the thread holding the lock dies (its process is killed, say), the next thread that
/// takes the lock takes it over and is told with [`OwnerDied`], instead of waiting for ever
/// as CPython's lock would. The kernel reports the death at once (the lock is in its owner's
/// robust futex list while held); where it cannot, waiters notice within 200 ms.
///
/// # Examples
///
/// ```
/// use multiproc::{Lock, Process};
///
/// let lock = Lock::new()?;
/// let mut child = Process::new(|lock: Lock| {
///     let _held = lock.acquire().unwrap();
///     // ... the child has the lock here ...
/// }, lock.clone()).start()?;
/// child.join()?;
/// assert!(lock.try_acquire()?.is_some());
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Lock {
    shared: Shared<LockLayout>,
}

impl Lock {
    /// A new, unlocked lock in its own shared memory.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new() -> crate::Result<Lock> {
        Ok(Lock {
            shared: Shared::create(0, |_, _| {})?,
        })
    }

    fn raw(&self) -> &RawLock {
        &self.shared.layout().raw
    }

    /// Waits for the lock and takes it.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    ///
    /// # Caveats
    /// Acquiring again from the thread that holds it waits for ever (use [`RLock`]).
    pub fn acquire(&self) -> LockResult<LockGuard<'_>> {
        let how = self
            .raw()
            .lock_deadline(None)
            .expect("a wait without deadline ends with the lock");
        wrap(how, LockGuard::new(self), LockLayout::WHAT)
    }

    /// Takes the lock if it is free; `Ok(None)` if not.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from an owner the kernel found
    /// dead (an owner it does not watch is only noticed by a waiting acquire).
    pub fn try_acquire(&self) -> LockResult<Option<LockGuard<'_>>> {
        wrap_timed(
            self.raw().try_lock(),
            || LockGuard::new(self),
            LockLayout::WHAT,
        )
    }

    /// Waits up to `timeout` for the lock; `Ok(None)` if it stayed taken.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<Option<LockGuard<'_>>> {
        match deadline_after(timeout) {
            Some(deadline) => self.acquire_deadline(deadline),
            None => self.acquire().map(Some).map_err(|e| e.map(Some)),
        }
    }

    /// Waits until `deadline` for the lock; `Ok(None)` if it stayed taken.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire_deadline(&self, deadline: Instant) -> LockResult<Option<LockGuard<'_>>> {
        let how = self.raw().lock_deadline(Some(deadline));
        wrap_timed(how, || LockGuard::new(self), LockLayout::WHAT)
    }

    /// Whether some thread (in any process) holds the lock right now.
    pub fn is_locked(&self) -> bool {
        self.raw().is_locked()
    }

    /// Waits for the lock and takes it, as a future: the form of [`acquire`](Self::acquire)
    /// to `.await`, on any executor (feature `async`); no thread waits for it.
    ///
    /// The guard is not `Send`, as the blocking one: the thread that polled the future to its
    /// end holds the lock and must release it, so a task that holds it across an `.await`
    /// cannot move between threads (a multi-threaded runtime's `spawn` refuses it). Take it,
    /// do the work, drop it.
    ///
    /// **Cancel-safe**: the lock is taken only in the poll that returns the guard; a future
    /// dropped before holds nothing (and a wake it got goes to the next waiter).
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn acquire_async(
        &self,
    ) -> impl std::future::Future<Output = LockResult<LockGuard<'_>>> + Send + '_ {
        use crate::aio::WaitFor;
        let mut waiting_since = None;
        WaitFor::new(move || {
            self.raw()
                .lock_attempt(&mut waiting_since)
                .map(|how| wrap(how, LockGuard::new(self), LockLayout::WHAT))
        })
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.is_locked())
            .finish()
    }
}

/// Holds a [`Lock`]; dropping it releases the lock. Not `Send`: the thread that took the lock
/// releases it.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    _not_send: PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    fn new(lock: &'a Lock) -> Self {
        LockGuard {
            lock,
            _not_send: PhantomData,
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while this thread holds the lock.
        unsafe { self.lock.raw().unlock() };
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RLockLayout {
    magic: AtomicU32,
    /// How many times the owner holds it; touched only by the owner.
    depth: AtomicU32,
    raw: RawLock,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for RLockLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"RLK1");
    const WHAT: &'static str = "rlock";

    fn held_here(&self) -> bool {
        self.raw.held_in_this_process()
    }
}

/// A reentrant lock shared between processes and threads (Python's `multiprocessing.RLock`):
/// the thread that holds it may acquire it again, and it is released when every guard is gone.
///
/// # Examples
///
/// ```
/// let lock = multiproc::RLock::new()?;
/// let outer = lock.acquire().unwrap();
/// let inner = lock.acquire().unwrap(); // the same thread: no deadlock
/// drop(inner);
/// drop(outer);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct RLock {
    shared: Shared<RLockLayout>,
}

impl RLock {
    /// A new, unlocked reentrant lock.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new() -> crate::Result<RLock> {
        Ok(RLock {
            shared: Shared::create(0, |_, _| {})?,
        })
    }

    fn layout(&self) -> &RLockLayout {
        self.shared.layout()
    }

    fn enter(&self, how: Option<Acquired>) -> LockResult<Option<RLockGuard<'_>>> {
        if how.is_some() {
            // A takeover starts counting afresh: the dead owner's depth means nothing now.
            self.layout().depth.store(1, Ordering::Relaxed);
        }
        wrap_timed(how, || RLockGuard::new(self), RLockLayout::WHAT)
    }

    fn reenter(&self) -> Option<RLockGuard<'_>> {
        let layout = self.layout();
        layout.raw.held_by_me().then(|| {
            layout.depth.fetch_add(1, Ordering::Relaxed);
            RLockGuard::new(self)
        })
    }

    /// Waits for the lock (or counts one more hold if this thread has it).
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire(&self) -> LockResult<RLockGuard<'_>> {
        if let Some(guard) = self.reenter() {
            return Ok(guard);
        }
        let how = self.layout().raw.lock_deadline(None);
        self.enter(how)
            .map(|g| g.expect("a wait without deadline ends with the lock"))
            .map_err(|e| e.map(|g| g.expect("a takeover yields the lock")))
    }

    /// Takes the lock if it is free or already ours; `Ok(None)` if not.
    ///
    /// # Errors
    /// [`OwnerDied`] as for [`Lock::try_acquire`].
    pub fn try_acquire(&self) -> LockResult<Option<RLockGuard<'_>>> {
        if let Some(guard) = self.reenter() {
            return Ok(Some(guard));
        }
        let taken = self.layout().raw.try_lock();
        self.enter(taken)
    }

    /// Waits up to `timeout`; `Ok(None)` if another thread kept it.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<Option<RLockGuard<'_>>> {
        self.acquire_until(deadline_after(timeout))
    }

    /// Waits until `deadline`; `Ok(None)` if another thread kept it.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire_deadline(&self, deadline: Instant) -> LockResult<Option<RLockGuard<'_>>> {
        self.acquire_until(Some(deadline))
    }

    /// Waits for the lock (or counts one more hold if the polling thread has it), as a
    /// future: the form of [`acquire`](Self::acquire) to `.await` (feature `async`). As
    /// [`Lock::acquire_async`]: the guard is not `Send`; cancel-safe.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn acquire_async(
        &self,
    ) -> impl std::future::Future<Output = LockResult<RLockGuard<'_>>> + Send + '_ {
        use crate::aio::{Attempt, WaitFor};
        let mut waiting_since = None;
        WaitFor::new(move || {
            if let Some(guard) = self.reenter() {
                return Attempt::Done(Ok(guard));
            }
            self.layout()
                .raw
                .lock_attempt(&mut waiting_since)
                .map(|how| {
                    self.enter(Some(how))
                        .map(|g| g.expect("entered"))
                        .map_err(|e| e.map(|g| g.expect("entered")))
                })
        })
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> LockResult<Option<RLockGuard<'_>>> {
        if let Some(guard) = self.reenter() {
            return Ok(Some(guard));
        }
        let how = self.layout().raw.lock_deadline(deadline);
        self.enter(how)
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("locked", &self.layout().raw.is_locked())
            .finish()
    }
}

/// One hold of an [`RLock`]; the lock is released when the last one is dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl<'a> RLockGuard<'a> {
    fn new(lock: &'a RLock) -> Self {
        RLockGuard {
            lock,
            _not_send: PhantomData,
        }
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let layout = self.lock.layout();
        if layout.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            // SAFETY: this thread holds the lock and this was its last hold.
            unsafe { layout.raw.unlock() };
        }
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RLockGuard")
    }
}
