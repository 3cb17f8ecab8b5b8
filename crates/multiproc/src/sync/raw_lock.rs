//! The raw cross-process lock: one futex word in shared memory that names its owner.
//!
//! # The state word
//!
//! | bits    | meaning                                                            |
//! |---------|--------------------------------------------------------------------|
//! | 0..=29  | the owner's thread id (`gettid`), 0 when free                      |
//! | 30      | unused (zero)                                                      |
//! | 31      | `WAITERS`: somebody may sleep on the word; unlock must wake one    |
//!
//! Taking the lock is one compare-and-swap from 0 to our thread id, so the owner is recorded
//! in the same instant the lock is taken: there is no moment where the lock is held by nobody
//! we could name. Releasing swaps in 0 and, if `WAITERS` was set, wakes one sleeper. A waiter
//! that sleeps sets `WAITERS` first and takes the lock with `WAITERS` set after sleeping (it
//! cannot know whether others still sleep), as in Drepper's "Futexes are tricky", mutex 3.
//!
//! # Owners that die
//!
//! Thread ids fit in 30 bits on Linux (`pid_max` ≤ 2^22). A waiter sleeps in slices of at most
//! [`LIVENESS_SLICE`]; when a slice ends (or its own deadline passes) it asks whether the owner
//! still lives. If not, it takes the lock over with one compare-and-swap from the dead owner's
//! word to its own, and reports [`Acquired::OwnerDied`]. The compare-and-swap makes the
//! takeover happen once even when several waiters notice together.
//!
//! A thread id can be reused after its thread ends; a takeover is missed (never wrongly made)
//! if a new thread got the dead owner's id within the slice. Non-blocking attempts never take
//! over: only a waiter checks liveness.

use std::time::{Duration, Instant};

use super::shim::{
    AtomicU32, FutexWait, Ordering, alive, futex_wait, futex_wake, process_id, thread_id,
};
use super::spin::spin_until_patient;

const OWNER: u32 = (1 << 30) - 1;
const WAITERS: u32 = 1 << 31;

/// How long a waiter sleeps before it checks that the owner still lives.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(200);

/// How a lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// From a live owner, or free.
    Clean,
    /// Taken over from an owner that died holding it; `pid` is the process it belonged to.
    OwnerDied { pid: u32 },
}

/// A lock word and its owner's process id, `#[repr(C)]` for shared memory (8 bytes).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU32,
    owner_pid: AtomicU32,
}

impl Default for RawLock {
    fn default() -> Self {
        RawLock {
            state: AtomicU32::new(0),
            owner_pid: AtomicU32::new(0),
        }
    }
}

impl RawLock {
    /// Takes the lock if it is free, without waiting (and without taking over from the dead).
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        let me = thread_id();
        let s = self.state.load(Ordering::Relaxed);
        if s & OWNER == 0
            && self
                .state
                .compare_exchange(s, me | (s & WAITERS), Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            self.owner_pid.store(process_id(), Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Takes the lock, waiting until `deadline` (`None`: for ever). `None` if the deadline
    /// passed first.
    #[inline]
    pub(crate) fn lock_deadline(&self, deadline: Option<Instant>) -> Option<Acquired> {
        let me = thread_id();
        if self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.owner_pid.store(process_id(), Ordering::Relaxed);
            return Some(Acquired::Clean);
        }
        self.lock_slow(me, deadline)
    }

    #[cold]
    fn lock_slow(&self, me: u32, deadline: Option<Instant>) -> Option<Acquired> {
        if spin_until_patient(|| self.state.load(Ordering::Relaxed) & OWNER == 0) && self.try_lock()
        {
            return Some(Acquired::Clean);
        }
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & OWNER == 0 {
                if self
                    .state
                    .compare_exchange(s, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.owner_pid.store(process_id(), Ordering::Relaxed);
                    return Some(Acquired::Clean);
                }
                continue;
            }
            if s & WAITERS == 0
                && self
                    .state
                    .compare_exchange(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let slice_end = Instant::now() + LIVENESS_SLICE;
            let wake_at = match deadline {
                Some(d) if d < slice_end => d,
                _ => slice_end,
            };
            if futex_wait(&self.state, s | WAITERS, Some(wake_at)) == FutexWait::TimedOut {
                if let Some(how) = self.take_over_if_dead(me, s | WAITERS) {
                    return Some(how);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
            }
        }
    }

    #[cold]
    fn take_over_if_dead(&self, me: u32, seen: u32) -> Option<Acquired> {
        let owner = seen & OWNER;
        if owner == 0 || owner == me || alive(owner) {
            return None;
        }
        let pid = self.owner_pid.load(Ordering::Relaxed);
        self.state
            .compare_exchange(seen, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.owner_pid.store(process_id(), Ordering::Relaxed);
        Some(Acquired::OwnerDied { pid })
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) & WAITERS != 0 {
            futex_wake(&self.state, 1);
        }
    }

    /// Whether some thread holds the lock.
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & OWNER != 0
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.state.load(Ordering::Relaxed) & OWNER == thread_id()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_dead_owner_is_taken_over_once() {
        let lock = RawLock::default();
        // A thread id that no thread has: the kernel's pid_max is at most 2^22.
        let dead = (1 << 22) + 7;
        lock.state.store(dead, Ordering::Relaxed);
        lock.owner_pid.store(4242, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            lock.lock_deadline(Some(deadline)),
            Some(Acquired::OwnerDied { pid: 4242 })
        );
        assert!(lock.held_by_me());
        // SAFETY: this thread holds the lock.
        unsafe { lock.unlock() };
        assert_eq!(lock.lock_deadline(None), Some(Acquired::Clean));
    }

    #[test]
    fn a_live_owner_is_waited_for() {
        let lock = RawLock::default();
        assert!(lock.try_lock());
        let deadline = Instant::now() + Duration::from_millis(20);
        // Our own thread is alive, so the attempt times out instead of taking over.
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(lock.lock_deadline(Some(deadline)), None));
        });
        // SAFETY: this thread holds the lock.
        unsafe { lock.unlock() };
        assert!(!lock.is_locked());
    }
}

/// Model checks (run with `RUSTFLAGS="--cfg loom" cargo test -p multiproc --lib --release loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::shim::bounded_model;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// Three threads increment a plain cell under the lock: loom checks every interleaving for
    /// a data race on the cell (mutual exclusion) and for a lost wake-up (a deadlock).
    #[test]
    fn loom_lock_excludes_and_wakes() {
        bounded_model(|| {
            let shared = Arc::new((RawLock::default(), UnsafeCell::new(0u32)));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let shared = shared.clone();
                    loom::thread::spawn(move || {
                        let (lock, cell) = &*shared;
                        assert_eq!(lock.lock_deadline(None), Some(Acquired::Clean));
                        cell.with_mut(|v| unsafe { *v += 1 });
                        // SAFETY: taken just above.
                        unsafe { lock.unlock() };
                    })
                })
                .collect();
            let (lock, cell) = &*shared;
            assert_eq!(lock.lock_deadline(None), Some(Acquired::Clean));
            cell.with_mut(|v| unsafe { *v += 1 });
            // SAFETY: taken just above.
            unsafe { lock.unlock() };
            threads.into_iter().for_each(|t| t.join().unwrap());
            assert!(lock.try_lock());
            assert_eq!(cell.with(|v| unsafe { *v }), 3);
        });
    }
}
