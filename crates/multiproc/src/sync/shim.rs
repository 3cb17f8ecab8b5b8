//! What the shared-memory algorithms are written against: atomics, futex waits, thread ids and
//! owner liveness. Normally these are the real ones; under `--cfg loom` they are loom's model
//! atomics and a futex emulated with a loom mutex and condition variable, so the lock and ring
//! algorithms can be model-checked on heap memory.

#[cfg(not(loom))]
mod real {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
    use std::time::Instant;

    pub(crate) use crate::platform::FutexWait;

    /// Sleeps while `word == expected`, until woken or `deadline`.
    pub(crate) fn futex_wait(
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
    ) -> FutexWait {
        crate::platform::futex_wait(word, expected, deadline)
    }

    /// Wakes up to `count` sleepers on `word`.
    pub(crate) fn futex_wake(word: &AtomicU32, count: u32) {
        crate::platform::futex_wake(word, count)
    }

    /// The 32-bit half of `word` that holds its low bits, as the kernel sees it. Only its
    /// address is used (by the futex calls): Rust code never reads it, so no mixed-size
    /// access happens in the program.
    fn low_half(word: &AtomicU64) -> &AtomicU32 {
        let base = word.as_ptr().cast::<u32>();
        let low = if cfg!(target_endian = "little") {
            base
        } else {
            base.wrapping_add(1)
        };
        // SAFETY: `low` points inside `*word`, 4-byte aligned (AtomicU64 is 8-byte aligned),
        // and lives as long as the borrow; the reference is only turned back into an address.
        unsafe { &*low.cast::<AtomicU32>() }
    }

    /// Sleeps while the low 32 bits of `word` equal `expected_low`.
    pub(crate) fn futex_wait_low(
        word: &AtomicU64,
        expected_low: u32,
        deadline: Option<Instant>,
    ) -> FutexWait {
        crate::platform::futex_wait(low_half(word), expected_low, deadline)
    }

    /// Wakes up to `count` sleepers of [`futex_wait_low`] on `word`.
    pub(crate) fn futex_wake_low(word: &AtomicU64, count: u32) {
        crate::platform::futex_wake(low_half(word), count)
    }

    /// This thread's id, as recorded in lock words.
    pub(crate) fn thread_id() -> u32 {
        crate::platform::gettid()
    }

    /// This process's id.
    pub(crate) fn process_id() -> u32 {
        crate::platform::getpid_cached()
    }

    /// Whether the thread (or process) with this id still runs.
    pub(crate) fn alive(id: u32) -> bool {
        crate::platform::thread_alive(id)
    }

    pub(crate) use crate::platform::{
        RobustEntry, robust_done, robust_link, robust_pending, robust_unlink,
    };

    /// A pause inside a spin loop.
    #[inline]
    pub(crate) fn spin_hint() {
        std::hint::spin_loop()
    }
}

#[cfg(not(loom))]
pub(crate) use real::*;

#[cfg(loom)]
mod model {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
    use std::time::Instant;

    /// How a futex wait ended.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum FutexWait {
        Woken,
        TimedOut,
    }

    loom::lazy_static! {
        static ref PARK: (loom::sync::Mutex<u64>, loom::sync::Condvar) =
            (loom::sync::Mutex::new(0), loom::sync::Condvar::new());
    }

    /// One global wait queue: every wake wakes everybody, who then re-check their word. The
    /// model has no clock: a wait with a deadline sleeps like one without (the waits of the
    /// raw lock always carry one, for their liveness checks), so a lost wake-up shows as a
    /// deadlock.
    pub(crate) fn futex_wait(
        word: &AtomicU32,
        expected: u32,
        _deadline: Option<Instant>,
    ) -> FutexWait {
        let (lock, cond) = &*PARK;
        let mut wakes = lock.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return FutexWait::Woken;
        }
        let seen = *wakes;
        while *wakes == seen {
            wakes = cond.wait(wakes).unwrap();
        }
        FutexWait::Woken
    }

    pub(crate) fn futex_wake(_word: &AtomicU32, _count: u32) {
        let (lock, cond) = &*PARK;
        *lock.lock().unwrap() += 1;
        cond.notify_all();
    }

    pub(crate) fn futex_wait_low(
        word: &AtomicU64,
        expected_low: u32,
        _deadline: Option<Instant>,
    ) -> FutexWait {
        let (lock, cond) = &*PARK;
        let mut wakes = lock.lock().unwrap();
        if word.load(Ordering::SeqCst) as u32 != expected_low {
            return FutexWait::Woken;
        }
        let seen = *wakes;
        while *wakes == seen {
            wakes = cond.wait(wakes).unwrap();
        }
        FutexWait::Woken
    }

    pub(crate) fn futex_wake_low(_word: &AtomicU64, _count: u32) {
        let (lock, cond) = &*PARK;
        *lock.lock().unwrap() += 1;
        cond.notify_all();
    }

    pub(crate) fn thread_id() -> u32 {
        use std::sync::atomic::{AtomicU32 as Counter, Ordering as O};
        // 1-based so that 0 keeps meaning "nobody".
        static NEXT: Counter = Counter::new(1);
        loom::thread_local! { static ID: u32 = NEXT.fetch_add(1, O::Relaxed); }
        ID.with(|id| *id)
    }

    pub(crate) fn process_id() -> u32 {
        1
    }

    pub(crate) fn alive(_id: u32) -> bool {
        true
    }

    pub(crate) fn spin_hint() {
        loom::thread::yield_now()
    }

    /// No robust list in the model: the kernel is not there to walk it.
    #[derive(Debug, Default)]
    pub(crate) struct RobustEntry {
        _prev: usize,
        _next: usize,
    }

    pub(crate) fn robust_pending(_entry: &RobustEntry) -> bool {
        false
    }

    pub(crate) fn robust_done() {}

    pub(crate) unsafe fn robust_link(_entry: &RobustEntry) {}

    pub(crate) unsafe fn robust_unlink(_entry: &RobustEntry) {}

    /// Every interleaving with up to three preemptions: the usual bound that keeps the
    /// search tractable while still finding ordering bugs, which need few preemptions.
    #[cfg(test)]
    pub(crate) fn bounded_model(f: impl Fn() + Sync + Send + 'static) {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(f);
    }
}

#[cfg(loom)]
pub(crate) use model::*;
