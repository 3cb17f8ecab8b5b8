//! Process-local locks (`std::sync::Mutex`) taken whether poisoned or not.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Takes what a poisoned lock holds anyway. The crate's process-local locks guard state that
/// is valid whenever the lock is free (a panic while holding one leaves nothing half-done),
/// so a panic elsewhere must not make every later call fail.
pub(crate) trait IgnorePoison<T> {
    /// The guard (or other value), poisoned or not.
    fn ignore_poison(self) -> T;
}

impl<T> IgnorePoison<T> for Result<T, PoisonError<T>> {
    fn ignore_poison(self) -> T {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

/// Locks `m`, poisoned or not (see [`IgnorePoison`]).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().ignore_poison()
}
