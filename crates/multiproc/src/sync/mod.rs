//! Locks, semaphores, events, conditions and barriers that work between processes.
//!
//! Each lives in a small shared-memory segment of its own. The algorithms are written against
//! [`shim`] (atomics and futex calls) so that they can be model-checked with loom; the raw lock
//! ([`raw_lock`]) is split from the typed wrappers, as `lock_api` does.

mod barrier;
mod condition;
mod event;
mod lock;
pub(crate) mod raw_lock;
mod semaphore;
pub(crate) mod shim;
pub(crate) mod spin;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, LockResult, OwnerDied, RLock, RLockGuard};
pub use semaphore::{Semaphore, SemaphoreGuard};

pub(crate) use lock::deadline_after;
