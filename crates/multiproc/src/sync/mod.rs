//! Locks, semaphores, events, conditions and barriers that work between processes.
//!
//! Each lives in a small shared-memory segment of its own. The algorithms are written against
//! [`shim`] (atomics and futex calls) so that they can be model-checked with loom; the raw lock
//! ([`raw_lock`]) is split from the typed wrappers, as `lock_api` does.

mod barrier;
mod condition;
mod event;
mod lock;
pub(crate) mod process_counts;
pub(crate) mod raw_lock;
pub(crate) mod ring;
mod semaphore;
pub(crate) mod shim;
pub(crate) mod spin;
mod value;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, LockResult, OwnerDied, RLock, RLockGuard};
pub use semaphore::{Semaphore, SemaphoreGuard};
pub use value::{Array, RawArray, RawValue, Value, ValueGuard};

pub(crate) use crate::local_lock::{IgnorePoison, lock};
pub(crate) use lock::deadline_after;

use std::sync::{Condvar, MutexGuard};
use std::time::Instant;

/// Waits on a process-local `cond` (with its mutex held through `guard`) until `ready` holds
/// or `deadline` passes (`None`: for ever); gives the guard back and whether `ready` held.
/// `ready` may change the state (take an item, a lock) when it says yes.
pub(crate) fn wait_until<'a, T>(
    cond: &Condvar,
    mut guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    mut ready: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    loop {
        if ready(&mut guard) {
            return (guard, true);
        }
        guard = match deadline {
            None => cond.wait(guard).ignore_poison(),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (guard, false);
                }
                cond.wait_timeout(guard, left).ignore_poison().0
            }
        };
    }
}
