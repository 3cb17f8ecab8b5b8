//! `Semaphore` (and its bounded form): a futex counter with a table of which processes hold
//! slots, so that slots held by a dead process come back.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::{LockResult, OwnerDied, deadline_after};
use super::process_counts::ProcessCounts;
use super::raw_lock::LIVENESS_SLICE;
use super::shim::{
    AtomicU32, AtomicU64, FutexWait, Ordering, fence, futex_wait, futex_wake, process_id,
};
use super::spin::spin_until;
use crate::error::{Error, Result};
use crate::shm::{Layout, Shared};

/// The fewest holder entries a semaphore has (8 KiB; the pages are only touched where pids
/// land).
const MIN_HOLDERS: u32 = 1024;
/// The most: 8 MiB of entries, for semaphores made with a value beyond a million.
const MAX_HOLDERS: u32 = 1 << 20;

/// How many processes can hold slots of a semaphore made with `value` slots at once: at least
/// `value` (so a bounded semaphore, whose holders can never outnumber its slots, never runs
/// out), and [`MIN_HOLDERS`].
fn holder_capacity(value: u32) -> u32 {
    value.clamp(MIN_HOLDERS, MAX_HOLDERS)
}

/// # Layout
///
/// | field      | meaning                                                              |
/// |------------|----------------------------------------------------------------------|
/// | `count`    | free slots; the futex word waiters sleep on while it is 0            |
/// | `sleepers` | threads asleep (or about to be) on `count`; release wakes one if > 0 |
/// | `max`      | the bound (`u32::MAX` when unbounded), written before sharing        |
/// | `holders`  | the number of holder entries after the layout, written before sharing |
///
/// After it, `holders` entries (`AtomicU64`): the slots each process holds through guards,
/// a [`ProcessCounts`] table.
#[repr(C)]
pub(crate) struct SemaphoreLayout {
    magic: AtomicU32,
    count: AtomicU32,
    sleepers: AtomicU32,
    max: AtomicU32,
    holders: AtomicU32,
    /// Makes the layout 24 bytes, so that the entries after it are 8-byte aligned.
    _reserved: AtomicU32,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for SemaphoreLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"SEM2");
    const WHAT: &'static str = "semaphore";
}

/// A semaphore's shared state: the layout and its table of holders.
struct SemaphoreState<'a> {
    layout: &'a SemaphoreLayout,
    holders: &'a [AtomicU64],
}

impl<'a> SemaphoreState<'a> {
    #[inline]
    fn try_take(&self) -> bool {
        let count = &self.layout.count;
        let mut c = count.load(Ordering::Relaxed);
        while c > 0 {
            match count.compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes a slot and records this process as its holder (the two together: a slot taken
    /// that cannot be recorded is given back).
    fn try_take_recorded(&self) -> bool {
        if !self.try_take() {
            return false;
        }
        if self.record() {
            return true;
        }
        self.give(1);
        false
    }

    /// Takes a slot; `None` on timeout, `Some(Some(pid))` if slots of dead `pid` came back.
    fn take_deadline(&self, deadline: Option<Instant>) -> Option<Option<u32>> {
        let layout = self.layout;
        if self.try_take_recorded() {
            return Some(None);
        }
        if spin_until(|| layout.count.load(Ordering::Relaxed) > 0) && self.try_take_recorded() {
            return Some(None);
        }
        let mut died = None;
        loop {
            layout.sleepers.fetch_add(1, Ordering::Relaxed);
            // Pairs with the fence in `give`: either it sees us, or we see its slot.
            fence(Ordering::SeqCst);
            let slice_end = Instant::now() + LIVENESS_SLICE;
            let wake_at = deadline.map_or(slice_end, |d| d.min(slice_end));
            let free = layout.count.load(Ordering::Relaxed);
            let waited = if free == 0 {
                futex_wait(&layout.count, 0, Some(wake_at))
            } else {
                // A slot is free but every holder entry is a live process's: wait a slice
                // (or until the count changes), then look for the dead again.
                futex_wait(&layout.count, free, Some(wake_at));
                FutexWait::TimedOut
            };
            layout.sleepers.fetch_sub(1, Ordering::Relaxed);
            if self.try_take_recorded() {
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

    /// One try at taking a slot for an awaiting future (see `crate::aio`): `Done` with the
    /// pid of a dead holder whose slots came back first, if any. `waiting_since` is when the
    /// future first waited: after each [`LIVENESS_SLICE`] of it, dead holders' slots are taken
    /// back, as a blocking waiter does.
    #[cfg(all(feature = "async", not(loom)))]
    fn take_attempt<'s>(
        &self,
        waiting_since: &mut Option<Instant>,
        died: &mut Option<u32>,
    ) -> crate::aio::Attempt<'s, Option<u32>>
    where
        Self: 's,
        'a: 's,
    {
        use crate::aio::{Attempt, Park, Sleeper, Word};
        let layout: &'a SemaphoreLayout = self.layout;
        loop {
            if self.try_take_recorded() {
                *waiting_since = None;
                return Attempt::Done(died.take());
            }
            if waiting_since.is_some_and(|t| t.elapsed() >= LIVENESS_SLICE) {
                *waiting_since = Some(Instant::now());
                if let Some(pid) = self.reclaim_dead() {
                    *died = Some(pid);
                    continue;
                }
            }
            let sleeper = Sleeper::count(&layout.sleepers);
            let free = layout.count.load(Ordering::Relaxed);
            if free > 0 && self.try_take_recorded() {
                *waiting_since = None;
                return Attempt::Done(died.take());
            }
            waiting_since.get_or_insert_with(Instant::now);
            let mut park = Park::one(Word::U32(&layout.count), free, Some(sleeper));
            park.recheck = Some(Instant::now() + LIVENESS_SLICE);
            return Attempt::Wait(park);
        }
    }

    /// Takes back the slots of holders that died; one of them, if any.
    #[cold]
    fn reclaim_dead(&self) -> Option<u32> {
        let mut died = None;
        ProcessCounts(self.holders).take_dead(|pid, slots| {
            self.give(slots);
            died = Some(pid);
        });
        died
    }

    /// Notes that this process holds one more slot; false if every entry belongs to another
    /// live process (more processes hold slots at once than the table has entries).
    fn record(&self) -> bool {
        let counts = ProcessCounts(self.holders);
        let pid = process_id();
        // Full: entries of the dead make room.
        counts.add(pid) || (self.reclaim_dead().is_some() && counts.add(pid))
    }

    /// Notes that this process holds one slot less.
    fn unrecord(&self) {
        ProcessCounts(self.holders).sub(process_id());
    }

    /// Adds `n` slots and wakes sleepers.
    fn give(&self, n: u32) {
        let layout = self.layout;
        layout.count.fetch_add(n, Ordering::Release);
        fence(Ordering::SeqCst);
        if layout.sleepers.load(Ordering::Relaxed) > 0 {
            futex_wake(&layout.count, n);
        }
    }

    fn give_bounded(&self) -> std::result::Result<(), u32> {
        let layout = self.layout;
        let max = layout.max.load(Ordering::Relaxed);
        let mut c = layout.count.load(Ordering::Relaxed);
        loop {
            if c >= max {
                return Err(max);
            }
            match layout
                .count
                .compare_exchange_weak(c, c + 1, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        fence(Ordering::SeqCst);
        if layout.sleepers.load(Ordering::Relaxed) > 0 {
            futex_wake(&layout.count, 1);
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
/// # Caveats
/// Holders are recorded in a table of `max(value, 1024)` entries (up to 2^20), one per
/// process holding slots. A bounded semaphore never fills it (its holders cannot outnumber its
/// slots); an unbounded one released far beyond its first value can: then one more process
/// waits for a slot as if none were free, until a holder lets go or dies. A slot is never held
/// without being recorded.
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
        let holders = holder_capacity(value);
        let extra = holders as usize * std::mem::size_of::<AtomicU64>();
        let shared = Shared::create(extra, |l: &SemaphoreLayout, _| {
            l.count.store(value, Ordering::Relaxed);
            l.max.store(max, Ordering::Relaxed);
            l.holders.store(holders, Ordering::Relaxed);
        })?;
        Ok(Semaphore { shared })
    }

    fn state(&self) -> SemaphoreState<'_> {
        let layout = self.shared.layout();
        // As many entries as the layout says and the segment holds (a segment from another
        // process is trusted no further than its length).
        let room = self.shared.extra_len() / std::mem::size_of::<AtomicU64>();
        let n = (layout.holders.load(Ordering::Relaxed) as usize).min(room);
        // SAFETY: the segment holds `room >= n` entries after the layout, which is 24 bytes
        // from a page-aligned start, so they are 8-byte aligned; all-zero is a valid
        // AtomicU64 and the entries are only accessed through shared references.
        let holders =
            unsafe { std::slice::from_raw_parts(self.shared.extra_ptr().cast::<AtomicU64>(), n) };
        SemaphoreState { layout, holders }
    }

    fn finish(&self, got: Option<Option<u32>>) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let Some(died) = got else { return Ok(None) };
        let guard = SemaphoreGuard {
            sem: self,
            _not_send: PhantomData,
        };
        match died {
            None => Ok(Some(guard)),
            Some(pid) => Err(OwnerDied::new(Some(guard), SemaphoreLayout::WHAT, pid)),
        }
    }

    /// Waits for a free slot and takes it, as a future: the form of
    /// [`acquire`](Self::acquire) to `.await`, on any executor (feature `async`).
    ///
    /// **Cancel-safe**: a slot is taken only in the poll that returns the guard; a future
    /// dropped before holds none.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if slots of a dead process were taken back first.
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn acquire_async(
        &self,
    ) -> impl std::future::Future<Output = LockResult<SemaphoreGuard<'_>>> + Send + '_ {
        use crate::aio::WaitFor;
        let (mut waiting_since, mut died) = (None, None);
        WaitFor::new(move || {
            self.state()
                .take_attempt(&mut waiting_since, &mut died)
                .map(|died| {
                    self.finish(Some(died))
                        .map(|g| g.expect("a slot was taken"))
                        .map_err(|e| e.map(|g| g.expect("a slot was taken")))
                })
        })
    }

    /// Waits for a free slot and takes it.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if slots of a dead process were taken back first.
    pub fn acquire(&self) -> LockResult<SemaphoreGuard<'_>> {
        let got = self.state().take_deadline(None);
        self.finish(got)
            .map(|g| g.expect("a wait without deadline ends with a slot"))
            .map_err(|e| e.map(|g| g.expect("a takeover yields a slot")))
    }

    /// Takes a free slot if there is one; `Ok(None)` if not.
    ///
    /// # Errors
    /// Never [`OwnerDied`]: only waiting acquires take slots back from the dead.
    pub fn try_acquire(&self) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let got = self.state().try_take_recorded().then_some(None);
        self.finish(got)
    }

    /// Waits up to `timeout` for a slot; `Ok(None)` if none came free.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if slots of a dead process were taken back first.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let got = self.state().take_deadline(deadline_after(timeout));
        self.finish(got)
    }

    /// Waits until `deadline` for a slot; `Ok(None)` if none came free.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if slots of a dead process were taken back first.
    pub fn acquire_deadline(&self, deadline: Instant) -> LockResult<Option<SemaphoreGuard<'_>>> {
        let got = self.state().take_deadline(Some(deadline));
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
        self.state().give_bounded().map_err(|max| {
            Error::invalid(
                SemaphoreLayout::WHAT,
                format!("released too many times (bound {max})"),
            )
        })
    }

    /// The number of free slots right now.
    pub fn get_value(&self) -> u32 {
        self.shared.layout().count.load(Ordering::Relaxed)
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
        self.sem.state().unrecord();
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let state = self.sem.state();
        state.unrecord();
        state.give(1);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphoreGuard")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_never_taken_without_a_holder_entry() {
        let sem = Semaphore::new(5).unwrap();
        let state = sem.state();
        assert_eq!(state.holders.len(), MIN_HOLDERS as usize);
        // A table whose every entry is another live process's (pid 1 never dies).
        let full = [AtomicU64::new(1 << 32 | 1), AtomicU64::new(1 << 32 | 2)];
        let cramped = SemaphoreState {
            layout: state.layout,
            holders: &full,
        };
        assert!(!cramped.try_take_recorded());
        assert_eq!(sem.get_value(), 5, "the slot was given back");
        // Room again: taken and recorded.
        full[0].store(0, Ordering::Relaxed);
        assert!(cramped.try_take_recorded());
        assert_eq!(
            full[0].load(Ordering::Relaxed),
            u64::from(process_id()) << 32 | 1
        );
        cramped.unrecord();
        assert_eq!(full[0].load(Ordering::Relaxed), 0);
        // Bounded semaphores have an entry per slot at least.
        assert_eq!(
            Semaphore::bounded(5000).unwrap().state().holders.len(),
            5000
        );
    }
}
