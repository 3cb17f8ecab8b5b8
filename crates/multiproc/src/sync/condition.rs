//! `Condition`: a condition variable with its own lock, shared between processes.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::{LockResult, OwnerDied, deadline_after, wrap, wrap_timed};
use super::raw_lock::{Acquired, RawLock};
use super::shim::{AtomicU32, FutexWait, Ordering, fence, futex_wait, futex_wake};
use crate::error::Result;
use crate::shm::{Layout, Shared};

/// # Layout
///
/// | field      | meaning                                                          |
/// |------------|------------------------------------------------------------------|
/// | `seq`      | bumped by every notify; the futex word waiters sleep on          |
/// | `sleepers` | threads waiting; notify skips the system call when it is 0       |
/// | `lock`     | the condition's lock ([`RawLock`])                               |
#[repr(C)]
pub(crate) struct ConditionLayout {
    magic: AtomicU32,
    seq: AtomicU32,
    sleepers: AtomicU32,
    _reserved: AtomicU32,
    lock: RawLock,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for ConditionLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"CND1");
    const WHAT: &'static str = "condition";

    fn held_here(&self) -> bool {
        self.lock.held_in_this_process()
    }
}

/// A condition variable shared between processes and threads, with its own lock (Python's
/// `multiprocessing.Condition`).
///
/// Take the lock with [`acquire`](Self::acquire), then wait on the guard: waiting releases the
/// lock and takes it back before returning. Wake-ups can be spurious; [`ConditionGuard::wait_for`]
/// loops on a predicate for you.
///
/// # Examples
///
/// ```
/// use multiproc::{Condition, Process, Value};
///
/// let cond = Condition::new()?;
/// let ready = Value::new(0u32)?;
/// let mut child = Process::new(|(cond, ready): (Condition, Value<u32>)| {
///     let _held = cond.acquire().unwrap();
///     ready.set(1);
///     cond.notify_all();
/// }, (cond.clone(), ready.clone())).start()?;
/// let mut held = cond.acquire().unwrap();
/// assert!(held.wait_for(|| ready.get() == 1, None).unwrap());
/// drop(held);
/// child.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    shared: Shared<ConditionLayout>,
}

impl Condition {
    /// A new condition variable with its own unlocked lock.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new() -> Result<Condition> {
        Ok(Condition {
            shared: Shared::create(0, |_, _| {})?,
        })
    }

    fn layout(&self) -> &ConditionLayout {
        self.shared.layout()
    }

    fn guard(&self) -> ConditionGuard<'_> {
        ConditionGuard {
            cond: self,
            _not_send: PhantomData,
        }
    }

    /// Waits for the condition's lock.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire(&self) -> LockResult<ConditionGuard<'_>> {
        let how = self.layout().lock.lock_deadline(None);
        wrap(
            how.expect("a wait without deadline ends with the lock"),
            self.guard(),
            ConditionLayout::WHAT,
        )
    }

    /// Waits up to `timeout` for the condition's lock; `Ok(None)` if it stayed taken.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<Option<ConditionGuard<'_>>> {
        self.acquire_until(deadline_after(timeout))
    }

    /// Waits until `deadline` for the condition's lock; `Ok(None)` if it stayed taken.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn acquire_deadline(&self, deadline: Instant) -> LockResult<Option<ConditionGuard<'_>>> {
        self.acquire_until(Some(deadline))
    }

    /// Takes the condition's lock if it is free; `Ok(None)` if not.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    pub fn try_acquire(&self) -> LockResult<Option<ConditionGuard<'_>>> {
        let how = self.layout().lock.try_lock();
        wrap_timed(how, || self.guard(), ConditionLayout::WHAT)
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> LockResult<Option<ConditionGuard<'_>>> {
        let how = self.layout().lock.lock_deadline(deadline);
        wrap_timed(how, || self.guard(), ConditionLayout::WHAT)
    }

    /// Waits for the condition's lock, as a future: the form of [`acquire`](Self::acquire)
    /// to `.await` (feature `async`). As [`Lock::acquire_async`](crate::Lock::acquire_async):
    /// the guard is not `Send`; cancel-safe.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if it was taken over from a dead owner.
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn acquire_async(
        &self,
    ) -> impl std::future::Future<Output = LockResult<ConditionGuard<'_>>> + Send + '_ {
        use crate::aio::WaitFor;
        let mut waiting_since = None;
        WaitFor::new(move || {
            self.layout()
                .lock
                .lock_attempt(&mut waiting_since)
                .map(|how| wrap(how, self.guard(), ConditionLayout::WHAT))
        })
    }

    /// Wakes up to `n` waiters. Python requires the lock for this; here it is optional.
    pub fn notify(&self, n: u32) {
        let l = self.layout();
        l.seq.fetch_add(1, Ordering::Release);
        // Pairs with the fence in `wait_until`: either we see the waiter, or the futex wait
        // sees the new sequence number and does not sleep.
        fence(Ordering::SeqCst);
        if l.sleepers.load(Ordering::Relaxed) > 0 {
            futex_wake(&l.seq, n);
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("locked", &self.layout().lock.is_locked())
            .finish()
    }
}

/// Holds a [`Condition`]'s lock; dropping it releases the lock.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    _not_send: PhantomData<*const ()>,
}

impl<'a> ConditionGuard<'a> {
    /// Releases the lock, waits for a notify, and takes the lock back.
    ///
    /// # Errors
    /// [`OwnerDied`] if the lock had to be taken over from a dead owner on the way back (the
    /// lock is held all the same).
    pub fn wait(&mut self) -> std::result::Result<(), OwnerDied<()>> {
        self.wait_until(None).map(drop)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; false if it timed out.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::result::Result<bool, OwnerDied<()>> {
        self.wait_until(deadline_after(timeout))
    }

    /// Like [`wait`](Self::wait), until `deadline`; false if it timed out.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_deadline(&mut self, deadline: Instant) -> std::result::Result<bool, OwnerDied<()>> {
        self.wait_until(Some(deadline))
    }

    /// Waits until `predicate` holds (checked with the lock held), for at most `timeout`
    /// (`None`: for ever); the predicate's last value.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_for(
        &mut self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> std::result::Result<bool, OwnerDied<()>> {
        let deadline = timeout.and_then(deadline_after);
        while !predicate() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.wait_until(deadline)?;
        }
        Ok(true)
    }

    fn wait_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> std::result::Result<bool, OwnerDied<()>> {
        let l = self.cond.layout();
        let seq = l.seq.load(Ordering::Relaxed);
        l.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // SAFETY: the guard proves this thread holds the lock.
        unsafe { l.lock.unlock() };
        let waited = futex_wait(&l.seq, seq, deadline);
        l.sleepers.fetch_sub(1, Ordering::Relaxed);
        let how = l
            .lock
            .lock_deadline(None)
            .expect("a wait without deadline ends with the lock");
        match how {
            Acquired::Clean => Ok(waited == FutexWait::Woken),
            Acquired::OwnerDied { pid } => Err(OwnerDied::new((), ConditionLayout::WHAT, pid)),
        }
    }

    /// Releases the lock, waits for a notify, and takes the lock back, as a future: the
    /// form of [`wait`](Self::wait) to `.await` (feature `async`). It takes the guard and
    /// gives it back, so that a cancelled wait leaves no guard behind that does not hold the
    /// lock: the lock is released when this is called, and a future dropped before it
    /// completes holds nothing. Wake-ups can be spurious, as for `wait`.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the lock had to be taken over from a dead owner on
    /// the way back.
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn wait_async(
        self,
    ) -> impl std::future::Future<Output = LockResult<ConditionGuard<'a>>> + 'a {
        use crate::aio::{Attempt, Park, Sleeper, WaitFor, Word};
        let cond = self.cond;
        let l = cond.layout();
        let seq = l.seq.load(Ordering::Relaxed);
        let mut counted = Some(Sleeper::count(&l.sleepers));
        // The lock is released here, not by the guard.
        std::mem::forget(self);
        // SAFETY: the guard proved this thread holds the lock, and it is gone.
        unsafe { l.lock.unlock() };
        let mut notified = false;
        let mut waiting_since = None;
        WaitFor::new(move || {
            if !notified {
                drop(counted.take());
                let sleeper = Sleeper::count(&l.sleepers);
                if l.seq.load(Ordering::Acquire) == seq {
                    return Attempt::Wait(Park::all(Word::U32(&l.seq), seq, Some(sleeper)));
                }
                notified = true;
            }
            l.lock
                .lock_attempt(&mut waiting_since)
                .map(|how| wrap(how, cond.guard(), ConditionLayout::WHAT))
        })
    }

    /// Wakes up to `n` waiters (see [`Condition::notify`]).
    pub fn notify(&self, n: u32) {
        self.cond.notify(n);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.cond.notify_all();
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while this thread holds the lock.
        unsafe { self.cond.layout().lock.unlock() };
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConditionGuard")
    }
}
