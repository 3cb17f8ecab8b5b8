//! `Semaphore` (and its bounded form): a futex counter with a table of which processes hold
//! slots, so that slots held by a dead process come back.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::{LockResult, OwnerDied, deadline_after};
use super::raw_lock::LIVENESS_SLICE;
use super::shim::{
    AtomicU32, AtomicU64, FutexWait, Ordering, alive, fence, futex_wait, futex_wake, process_id,
};
use super::spin::spin_until;
use crate::error::{Error, Result};
use crate::shm::{Layout, Shared};

/// Processes whose held slots are tracked; beyond that, slots are counted but not tracked.
const HOLDERS: usize = 64;

/// # Layout
///
/// | field      | meaning                                                              |
/// |------------|----------------------------------------------------------------------|
/// | `count`    | free slots; the futex word waiters sleep on while it is 0            |
/// | `sleepers` | threads asleep (or about to be) on `count`; release wakes one if > 0 |
/// | `max`      | the bound (`u32::MAX` when unbounded), written before sharing        |
/// | `holders`  | per process: `pid << 32 | slots held through guards`, 0 when free    |
#[repr(C)]
pub(crate) struct SemaphoreLayout {
    magic: AtomicU32,
    count: AtomicU32,
    sleepers: AtomicU32,
    max: AtomicU32,
    holders: [AtomicU64; HOLDERS],
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for SemaphoreLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"SEM1");
    const WHAT: &'static str = "semaphore";
}

fn holder(pid: u32, slots: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(slots)
}

impl SemaphoreLayout {
    #[inline]
    fn try_take(&self) -> bool {
        let mut c = self.count.load(Ordering::Relaxed);
        while c > 0 {
            match self
                .count
                .compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes a slot; `None` on timeout, `Some(Some(pid))` if slots of dead `pid` came back.
    fn take_deadline(&self, deadline: Option<Instant>) -> Option<Option<u32>> {
        if self.try_take() {
            return Some(None);
        }
        if spin_until(|| self.count.load(Ordering::Relaxed) > 0) && self.try_take() {
            return Some(None);
        }
        let mut died = None;
        loop {
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            // Pairs with the fence in `give`: either it sees us, or we see its slot.
            fence(Ordering::SeqCst);
            let slice_end = Instant::now() + LIVENESS_SLICE;
            let wake_at = deadline.map_or(slice_end, |d| d.min(slice_end));
            let waited = if self.count.load(Ordering::Relaxed) == 0 {
                futex_wait(&self.count, 0, Some(wake_at))
            } else {
                FutexWait::Woken
            };
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            if self.try_take() {
                return Some(died);
            }
            if waited == FutexWait::TimedOut {
                if let Some(pid) = self.reclaim_dead() {
                    died = Some(pid);
                    continue;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
            }
        }
    }

    #[cold]
    fn reclaim_dead(&self) -> Option<u32> {
        let mut died = None;
        for slot in &self.holders {
            let h = slot.load(Ordering::Acquire);
            let pid = (h >> 32) as u32;
            if pid == 0 || alive(pid) {
                continue;
            }
            if slot
                .compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let slots = h as u32;
                if slots > 0 {
                    self.give(slots);
                    died = Some(pid);
                }
            }
        }
        died
    }

    /// Notes that this process holds one more slot.
    fn record(&self) {
        let pid = process_id();
        for pass in 0..2 {
            for slot in &self.holders {
                let h = slot.load(Ordering::Relaxed);
                let mine = (h >> 32) as u32 == pid;
                let free = pass == 1 && h == 0;
                if (mine || free)
                    && slot
                        .compare_exchange(
                            h,
                            holder(pid, h as u32 + 1),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    return;
                }
            }
        }
        // Table full: the slot is counted but would not come back if we died.
    }

    /// Notes that this process holds one slot less.
    fn unrecord(&self) {
        let pid = process_id();
        for slot in &self.holders {
            let mut h = slot.load(Ordering::Relaxed);
            while (h >> 32) as u32 == pid && h as u32 > 0 {
                let next = if h as u32 == 1 { 0 } else { h - 1 };
                match slot.compare_exchange(h, next, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(now) => h = now,
                }
            }
        }
    }

    /// Adds `n` slots and wakes sleepers.
    fn give(&self, n: u32) {
        self.count.fetch_add(n, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            futex_wake(&self.count, n);
        }
    }

    fn give_bounded(&self) -> std::result::Result<(), u32> {
        let max = self.max.load(Ordering::Relaxed);
        let mut c = self.count.load(Ordering::Relaxed);
        loop {
            if c >= max {
                return Err(max);
            }
            match self
                .count
                .compare_exchange_weak(c, c + 1, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            futex_wake(&self.count, 1);
        }
        Ok(())
    }
}

/// A counting semaphore shared between processes and threads (Python's
/// `multiprocessing.Semaphore`; [`Semaphore::bounded`] is its `BoundedSemaphore`).
///
/// Acquiring gives a guard that gives the slot back on drop. A process that dies holding
/// slots through guards does not keep them: a waiter that finds no free slot for a while takes
/// them back and is told with [`OwnerDied`].
///
/// # Examples
///
/// ```
/// let sem = multiproc::Semaphore::new(2)?;
/// let a = sem.acquire().unwrap();
/// let b = sem.acquire().unwrap();
/// assert!(sem.try_acquire().unwrap().is_none());
/// drop(a);
/// assert!(sem.try_acquire().unwrap().is_some());
/// # drop(b);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[doc(alias = "BoundedSemaphore")]
#[derive(Clone, Serialize, Deserialize)]
pub struct Semaphore {
    shared: Shared<SemaphoreLayout>,
}

impl Semaphore {
    /// A semaphore with `value` free slots, which [`release`](Self::release) may raise without
    /// limit.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new(value: u32) -> Result<Semaphore> {
        Semaphore::create(value, u32::MAX)
    }

    /// A semaphore with `value` free slots that never holds more than `value`: releasing
    /// beyond that is an error (Python's `BoundedSemaphore`).
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn bounded(value: u32) -> Result<Semaphore> {
        Semaphore::create(value, value)
    }

    fn create(value: u32, max: u32) -> Result<Semaphore> {
        let shared = Shared::create(0, |l: &SemaphoreLayout, _| {
            l.count.store(value, Ordering::Relaxed);
            l.max.store(max, Ordering::Relaxed);
        })?;
        Ok(Semaphore { shared })
    }

    fn layout(&self) -> &SemaphoreLayout {
        self.shared.layout()
    }

    fn finish(&self, got: Option<Option<u32>>) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let Some(died) = got else { return Ok(None) };
        self.layout().record();
        let guard = SemaphoreGuard {
            sem: self,
            _not_send: PhantomData,
        };
        match died {
            None => Ok(Some(guard)),
            Some(pid) => Err(OwnerDied::new(Some(guard), SemaphoreLayout::WHAT, pid)),
        }
    }

    /// Waits for a free slot and takes it.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if slots of a dead process were taken back first.
    pub fn acquire(&self) -> LockResult<SemaphoreGuard<'_>> {
        let got = self.layout().take_deadline(None);
        self.finish(got)
            .map(|g| g.expect("a wait without deadline ends with a slot"))
            .map_err(|e| e.map(|g| g.expect("a takeover yields a slot")))
    }

    /// Takes a free slot if there is one; `Ok(None)` if not.
    ///
    /// # Errors
    /// Never [`OwnerDied`]: only waiting acquires take slots back from the dead.
    pub fn try_acquire(&self) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let got = self.layout().try_take().then_some(None);
        self.finish(got)
    }

    /// Waits up to `timeout` for a slot; `Ok(None)` if none came free.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if slots of a dead process were taken back first.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let got = self.layout().take_deadline(deadline_after(timeout));
        self.finish(got)
    }

    /// Adds a free slot without a guard (Python's `release()`): for semaphores used as
    /// counters between processes, or to give back a slot kept with
    /// [`SemaphoreGuard::forget`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the semaphore is bounded
    /// and already holds its bound.
    pub fn release(&self) -> Result<()> {
        self.layout().give_bounded().map_err(|max| {
            Error::invalid(
                SemaphoreLayout::WHAT,
                format!("released too many times (bound {max})"),
            )
        })
    }

    /// The number of free slots right now.
    pub fn get_value(&self) -> u32 {
        self.layout().count.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .finish()
    }
}

/// Holds one slot of a [`Semaphore`]; dropping it gives the slot back.
#[must_use = "the slot is given back when the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
    _not_send: PhantomData<*const ()>,
}

impl SemaphoreGuard<'_> {
    /// Keeps the slot taken without a guard; [`Semaphore::release`] gives it back later (from
    /// any process). A slot kept this way is no longer tracked: it stays taken if this process
    /// dies.
    pub fn forget(self) {
        self.sem.layout().unrecord();
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let layout = self.sem.layout();
        layout.unrecord();
        layout.give(1);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphoreGuard")
    }
}
