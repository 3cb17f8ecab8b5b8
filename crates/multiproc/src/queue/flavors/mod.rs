//! Where a queue's items live. Each flavor is a type of its own implementing [`QueueFlavor`];
//! the public types in `queue/mod.rs` hold one in their `Flavor` enum. `queue/README.md` says
//! what adding one touches.

#[cfg(feature = "manager")]
pub(super) mod manager;
#[cfg(feature = "broker")]
pub(crate) mod redis;
pub(crate) mod shm;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// What every flavor does, with the same meaning as the public method of the same name
/// (`put_until` and `get_until` serve all four forms of `put` and `get`).
///
/// `deadline` is `None` for no limit; `block: false` is the `try_` form (fail with `Full` or
/// `Empty` rather than wait for room or an item); `waited` is what a `Timeout` error reports.
pub(super) trait QueueFlavor: Send + Sync {
    fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()>;

    fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T>;

    /// Items waiting to be taken (0 when it cannot be told: see `unfinished`).
    fn len(&self) -> usize;

    fn is_full(&self) -> bool;

    /// The item limit, 0 for none.
    fn maxsize(&self) -> u32;

    /// Waits until every put through this handle is stored. Flavors whose `put` returns
    /// once stored have nothing to do.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn close(&self);

    fn task_done(&self) -> Result<()>;

    /// Gives the oldest item this handle took back with `reason`, where the flavor redelivers;
    /// elsewhere it is done.
    fn task_failed(&self, reason: &str) -> Result<()> {
        let _ = reason;
        self.task_done()
    }

    /// Sends the oldest item this handle took to the dead letters with `reason` at once,
    /// where the flavor keeps them; elsewhere it is done.
    fn task_rejected(&self, reason: &str) -> Result<()> {
        let _ = reason;
        self.task_done()
    }

    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()>;

    fn unfinished(&self) -> Result<u64>;

    /// The fields `Debug` shows after the flavor's name.
    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>);
}

/// Whether this process's handles to a queue were closed ([`Queue::close`](super::Queue::close)),
/// for every flavor.
#[derive(Default)]
pub(super) struct Closed(AtomicBool);

impl Closed {
    pub(super) fn close(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// An error naming the queue once closed.
    pub(super) fn check(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            return Err(Error::invalid(what(), "closed"));
        }
        Ok(())
    }
}
