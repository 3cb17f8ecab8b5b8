//! Bounded spinning before a futex sleep.
//!
//! A wake-up through the kernel costs 15–65 µs on the machines we measure; a peer that is running
//! on another core usually answers within a microsecond. So a waiter first re-checks its
//! condition for a short while (`SPIN_LIMIT`), yielding now and then in case the peer shares its
//! core, and only then sleeps on the futex. Idle waiters therefore cost nothing.

use std::time::{Duration, Instant};

use super::shim::spin_hint;

/// How long a waiter spins before it sleeps.
const SPIN_LIMIT: Duration = Duration::from_micros(20);

/// Pauses before the second look of [`spin_until_batching`].
const BATCHING_FIRST_PAUSES: u32 = 32;
/// The most pauses between two looks (about a microsecond).
const MAX_PAUSES: u32 = 64;
/// The same for locks.
const MAX_PAUSES_PATIENT: u32 = 256;

/// Checks between clock reads.
const CHECKS_PER_CLOCK: u32 = 64;

/// Spins until `ready()` holds or the budget is spent; true if it became ready.
#[inline]
pub(crate) fn spin_until(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(1, MAX_PAUSES, ready)
}

/// [`spin_until`] that waits a little before its second look: for a queue consumer (or
/// producer) whose peer is mid-stream, so that the peer can add several frames while it owns
/// the cache lines, instead of paying a miss per frame. Costs about half a microsecond of
/// latency; doubles throughput when the peer is busy.
#[inline]
pub(crate) fn spin_until_batching(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(BATCHING_FIRST_PAUSES, MAX_PAUSES, ready)
}

/// [`spin_until`] with a longer back-off: for a lock, where looking less often leaves the
/// holder's cache line alone and lets it finish (and even re-take the lock) without misses.
#[inline]
pub(crate) fn spin_until_patient(ready: impl FnMut() -> bool) -> bool {
    spin_until_with(1, MAX_PAUSES_PATIENT, ready)
}

#[inline]
fn spin_until_with(first_pauses: u32, max_pauses: u32, mut ready: impl FnMut() -> bool) -> bool {
    if cfg!(loom) {
        return ready();
    }
    let mut start = None;
    let mut i = 0u32;
    let mut pauses = first_pauses;
    loop {
        if ready() {
            return true;
        }
        // Back off between looks: each look pulls the watched cache line away from the
        // writer, who then pays a miss to write it again.
        for _ in 0..pauses {
            spin_hint();
        }
        pauses = (pauses * 2).min(max_pauses);
        i = i.wrapping_add(1);
        if i.is_multiple_of(CHECKS_PER_CLOCK) {
            let start = *start.get_or_insert_with(Instant::now);
            let spent = start.elapsed();
            if spent >= SPIN_LIMIT {
                return false;
            }
            if spent >= SPIN_LIMIT / 2 {
                std::thread::yield_now();
            }
        }
    }
}
