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

/// Checks between clock reads.
const CHECKS_PER_CLOCK: u32 = 64;

/// Spins until `ready()` holds or the budget is spent; true if it became ready.
#[inline]
pub(crate) fn spin_until(mut ready: impl FnMut() -> bool) -> bool {
    if cfg!(loom) {
        return ready();
    }
    let mut start = None;
    let mut i = 0u32;
    loop {
        if ready() {
            return true;
        }
        spin_hint();
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
