//! The raw cross-process lock: one futex word in shared memory that names its owner.
//!
//! # The state word
//!
//! | bits    | meaning                                                            |
//! |---------|--------------------------------------------------------------------|
//! | 0..=29  | the owner's thread id (`gettid`), 0 when free                      |
//! | 30      | `OWNER_DIED`: the kernel found the owner gone (robust list)        |
//! | 31      | `WAITERS`: somebody may sleep on the word; unlock must wake one    |
//!
//! This is the kernel's robust-futex word. Taking the lock is one compare-and-swap from 0 to
//! our thread id, so the owner is recorded in the same instant the lock is taken: there is no
//! moment where the lock is held by nobody we could name. Releasing swaps in 0 and, if
//! `WAITERS` was set, wakes one sleeper. A waiter that sleeps sets `WAITERS` first and takes
//! the lock with `WAITERS` set after sleeping (it cannot know whether others still sleep), as
//! in Drepper's "Futexes are tricky", mutex 3.
//!
//! # Owners that die
//!
//! The owner links the lock into its thread's robust futex list while it holds it (see
//! `platform/robust.rs`; `robust` below is the list entry, 32 bytes after the word as the
//! kernel and glibc expect). When the thread ends, however it ends, the kernel sets
//! `OWNER_DIED` (and clears the thread id) in every word it still held and wakes a waiter:
//! the next taker, waiting or not, takes the lock over with one compare-and-swap and reports
//! [`Acquired::OwnerDied`], at once and with no doubt about who died.
//!
//! What the kernel cannot cover (a thread whose list glibc did not register, a lock taken
//! when that was so) the waiters still cover, as before robust lists: a waiter sleeps in
//! slices of at most [`LIVENESS_SLICE`]; when a slice ends (or its own deadline passes) it
//! asks whether the owner still lives and, if not, takes the lock over from the dead owner's
//! word. There a takeover is missed (never wrongly made) if a new thread got the dead owner's
//! id within the slice.

use std::time::{Duration, Instant};

use super::shim::{
    AtomicU32, FutexWait, Ordering, RobustEntry, alive, futex_wait, futex_wake, process_id,
    robust_done, robust_link, robust_pending, robust_unlink, thread_id,
};
use super::spin::spin_until_patient;

const OWNER: u32 = (1 << 30) - 1;
const OWNER_DIED: u32 = 1 << 30;
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

/// A lock word, its owner's process id, and its robust-list entry, `#[repr(C)]` for shared
/// memory (40 bytes).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU32,
    owner_pid: AtomicU32,
    _reserved: [AtomicU32; 4],
    /// In the owner's robust futex list while held: its `next` lies 32 bytes after `state`.
    robust: RobustEntry,
}

#[cfg(not(loom))]
const _: () = assert!(
    std::mem::offset_of!(RawLock, robust) + std::mem::size_of::<usize>()
        == crate::platform::NEXT_AFTER_WORD
);

impl Default for RawLock {
    fn default() -> Self {
        RawLock {
            state: AtomicU32::new(0),
            owner_pid: AtomicU32::new(0),
            _reserved: std::array::from_fn(|_| AtomicU32::new(0)),
            robust: RobustEntry::default(),
        }
    }
}

impl RawLock {
    /// Takes the lock if it is free, or taken over from an owner the kernel found dead,
    /// without waiting; `None` if another thread holds it.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<Acquired> {
        let me = thread_id();
        robust_pending(&self.robust);
        let got = self.try_take(me, self.state.load(Ordering::Relaxed));
        robust_done();
        got
    }

    /// One attempt from the word `s`: taken (linked into the robust list), or `None`.
    #[inline]
    fn try_take(&self, me: u32, s: u32) -> Option<Acquired> {
        if !takeable(s) {
            return None;
        }
        // Free, or left by a dead owner: keep `WAITERS` for whoever sleeps.
        let waiters = if s & OWNER_DIED != 0 {
            WAITERS
        } else {
            s & WAITERS
        };
        self.state
            .compare_exchange(s, me | waiters, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(self.taken(s & OWNER_DIED != 0))
    }

    /// Records this process as the owner and links the lock into this thread's robust
    /// list; how it was taken.
    #[inline]
    fn taken(&self, owner_died: bool) -> Acquired {
        let how = if owner_died {
            Acquired::OwnerDied {
                pid: self.owner_pid.load(Ordering::Relaxed),
            }
        } else {
            Acquired::Clean
        };
        self.owner_pid.store(process_id(), Ordering::Relaxed);
        // SAFETY: this thread has just taken the lock; the entry is in no list (its last
        // owner unlinked it, or died and took its list with it); the memory stays mapped
        // while the lock is held (`Layout::held_here` keeps a mapping whose last handle goes
        // while a thread of ours holds a lock in it).
        unsafe { robust_link(&self.robust) };
        how
    }

    /// Takes the lock, waiting until `deadline` (`None`: for ever). `None` if the deadline
    /// passed first; a deadline already past makes it a `try_lock`.
    #[inline]
    pub(crate) fn lock_deadline(&self, deadline: Option<Instant>) -> Option<Acquired> {
        let me = thread_id();
        robust_pending(&self.robust);
        let got = if self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(self.taken(false))
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            // Out of time already: one more look, no spinning or sleeping.
            self.try_take(me, self.state.load(Ordering::Relaxed))
        } else {
            self.lock_slow(me, deadline)
        };
        robust_done();
        got
    }

    #[cold]
    fn lock_slow(&self, me: u32, deadline: Option<Instant>) -> Option<Acquired> {
        if spin_until_patient(|| takeable(self.state.load(Ordering::Relaxed)))
            && let Some(how) = self.try_take(me, self.state.load(Ordering::Relaxed))
        {
            return Some(how);
        }
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if takeable(s) {
                // After sleeping we cannot know whether others still sleep: keep `WAITERS`.
                let died = s & OWNER_DIED != 0;
                if self
                    .state
                    .compare_exchange(s, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(self.taken(died));
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

    /// The fallback for owners the kernel does not watch: takes over from an owner that no
    /// longer runs.
    #[cold]
    fn take_over_if_dead(&self, me: u32, seen: u32) -> Option<Acquired> {
        let owner = seen & OWNER;
        if owner == 0 || owner == me || alive(owner) {
            return None;
        }
        self.state
            .compare_exchange(seen, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(self.taken(true))
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        robust_pending(&self.robust);
        // SAFETY: the caller holds the lock, which `taken` linked on this thread.
        unsafe { robust_unlink(&self.robust) };
        if self.state.swap(0, Ordering::Release) & WAITERS != 0 {
            futex_wake(&self.state, 1);
        }
        robust_done();
    }

    /// Takes the lock if it can be taken now, keeping `WAITERS` set, as a waiter that slept
    /// must (it cannot know whether others still sleep); `None` if another thread holds it.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn try_lock_as_waiter(&self) -> Option<Acquired> {
        let me = thread_id();
        robust_pending(&self.robust);
        let s = self.state.load(Ordering::Relaxed);
        let got = if takeable(s) {
            self.state
                .compare_exchange(s, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| self.taken(s & OWNER_DIED != 0))
        } else {
            None
        };
        robust_done();
        got
    }

    /// For a waiter that sleeps elsewhere than in [`lock_deadline`](Self::lock_deadline) (an
    /// awaiting future): marks the lock as waited for, so that its release wakes a sleeper,
    /// and returns the word's value then, to wait on; `None` if the lock can be taken now.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn mark_waited_for(&self) -> Option<u32> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if takeable(s) {
                return None;
            }
            if s & WAITERS != 0 {
                return Some(s);
            }
            if self
                .state
                .compare_exchange(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Some(s | WAITERS);
            }
        }
    }

    /// The futex word waiters sleep on.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.state
    }

    /// One try at taking the lock for an awaiting future (see `crate::aio`). `waiting_since`
    /// is when the future first waited for it (it then takes the lock keeping `WAITERS`, and
    /// after [`LIVENESS_SLICE`] takes it over from an owner that no longer runs, as a blocking
    /// waiter does); it is set when this try waits.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn lock_attempt<'a>(
        &'a self,
        waiting_since: &mut Option<Instant>,
    ) -> crate::aio::Attempt<'a, Acquired> {
        use crate::aio::{Attempt, Park, Word};
        loop {
            let got = match *waiting_since {
                None => self.try_lock(),
                Some(since) => self.try_lock_as_waiter().or_else(|| {
                    if since.elapsed() < LIVENESS_SLICE {
                        return None;
                    }
                    let me = thread_id();
                    robust_pending(&self.robust);
                    let got = self.take_over_if_dead(me, self.state.load(Ordering::Relaxed));
                    robust_done();
                    got
                }),
            };
            if let Some(how) = got {
                *waiting_since = None;
                return Attempt::Done(how);
            }
            if let Some(expected) = self.mark_waited_for() {
                waiting_since.get_or_insert_with(Instant::now);
                let mut park = Park::one(Word::U32(&self.state), expected, None);
                park.recheck = Some(Instant::now() + LIVENESS_SLICE);
                return Attempt::Wait(park);
            }
        }
    }

    /// Whether some (live) thread holds the lock.
    pub(crate) fn is_locked(&self) -> bool {
        !takeable(self.state.load(Ordering::Relaxed))
    }

    /// Whether a thread of this process holds the lock.
    pub(crate) fn held_in_this_process(&self) -> bool {
        self.is_locked() && self.owner_pid.load(Ordering::Relaxed) == process_id()
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        s & OWNER_DIED == 0 && s & OWNER == thread_id()
    }
}

/// Whether a lock in state `s` can be taken: it is free, or its owner died. The kernel clears
/// a dead owner's id when it marks the word; glibc, when a thread it made returns with locks
/// in its list, marks them and leaves the id.
#[inline]
fn takeable(s: u32) -> bool {
    s & OWNER == 0 || s & OWNER_DIED != 0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_ends_holding_the_lock_is_reported_at_once() {
        assert!(
            crate::platform::robust_list_available(),
            "glibc's robust list"
        );
        let lock = std::sync::Arc::new(RawLock::default());
        let held = lock.clone();
        std::thread::spawn(move || assert_eq!(held.try_lock(), Some(Acquired::Clean)))
            .join()
            .unwrap();
        // No waiting, no liveness check: the list said it.
        assert_eq!(
            lock.try_lock(),
            Some(Acquired::OwnerDied { pid: process_id() })
        );
        assert!(lock.held_by_me() && lock.is_locked());
        // SAFETY: this thread holds the lock.
        unsafe { lock.unlock() };
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
        // SAFETY: as above.
        unsafe { lock.unlock() };
    }

    /// A `pthread_mutex_t` made robust, on the heap.
    struct RobustMutex(Box<std::cell::UnsafeCell<libc::pthread_mutex_t>>);

    // SAFETY: a pthread mutex is made to be shared between threads.
    unsafe impl Send for RobustMutex {}
    // SAFETY: as above.
    unsafe impl Sync for RobustMutex {}

    impl RobustMutex {
        fn new() -> RobustMutex {
            // SAFETY: the attribute and the mutex are initialised before use and live on.
            unsafe {
                let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
                assert_eq!(libc::pthread_mutexattr_init(&mut attr), 0);
                assert_eq!(
                    libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST),
                    0
                );
                let m = Box::new(std::cell::UnsafeCell::new(std::mem::zeroed()));
                assert_eq!(libc::pthread_mutex_init(m.get(), &attr), 0);
                libc::pthread_mutexattr_destroy(&mut attr);
                RobustMutex(m)
            }
        }

        fn lock(&self) -> i32 {
            // SAFETY: an initialised mutex.
            unsafe { libc::pthread_mutex_lock(self.0.get()) }
        }

        fn unlock(&self) {
            // SAFETY: an initialised mutex this thread holds.
            unsafe { assert_eq!(libc::pthread_mutex_unlock(self.0.get()), 0) };
        }

        fn make_consistent(&self) {
            // SAFETY: an initialised mutex this thread holds after EOWNERDEAD.
            unsafe { assert_eq!(libc::pthread_mutex_consistent(self.0.get()), 0) };
        }
    }

    #[test]
    fn our_locks_and_glibcs_robust_mutexes_share_the_list() {
        let ours: Vec<std::sync::Arc<RawLock>> = (0..3)
            .map(|_| std::sync::Arc::new(RawLock::default()))
            .collect();
        let theirs = std::sync::Arc::new([RobustMutex::new(), RobustMutex::new()]);
        let (o, t) = (ours.clone(), theirs.clone());
        std::thread::spawn(move || {
            // Interleaved, released out of order; one of each left held at the end.
            assert_eq!(o[0].try_lock(), Some(Acquired::Clean));
            assert_eq!(t[0].lock(), 0);
            assert_eq!(o[1].try_lock(), Some(Acquired::Clean));
            assert_eq!(t[1].lock(), 0);
            assert_eq!(o[2].try_lock(), Some(Acquired::Clean));
            // SAFETY: this thread holds them.
            unsafe { o[1].unlock() };
            t[1].unlock();
            // SAFETY: as above.
            unsafe { o[2].unlock() };
        })
        .join()
        .unwrap();
        // Held at the thread's end: ours[0] and theirs[0]; the rest were released cleanly.
        assert_eq!(
            ours[0].try_lock(),
            Some(Acquired::OwnerDied { pid: process_id() })
        );
        assert_eq!(theirs[0].lock(), libc::EOWNERDEAD);
        theirs[0].make_consistent();
        theirs[0].unlock();
        assert_eq!(ours[1].try_lock(), Some(Acquired::Clean));
        assert_eq!(ours[2].try_lock(), Some(Acquired::Clean));
        assert_eq!(theirs[1].lock(), 0);
        theirs[1].unlock();
        for lock in &ours {
            // SAFETY: this thread holds each.
            unsafe { lock.unlock() };
        }
    }

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
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
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
            assert_eq!(lock.try_lock(), Some(Acquired::Clean));
            assert_eq!(cell.with(|v| unsafe { *v }), 3);
        });
    }
}
