//! `Event`: a flag that threads in any process can wait for.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::deadline_after;
use super::shim::{AtomicU32, FutexWait, Ordering, fence, futex_wait, futex_wake};
use super::spin::spin_until;
use crate::error::Result;
use crate::shm::{Layout, Shared};

/// # Layout
///
/// | field      | meaning                                                      |
/// |------------|--------------------------------------------------------------|
/// | `flag`     | 1 when set, 0 when clear; the futex word waiters sleep on    |
/// | `sleepers` | threads asleep (or about to be); `set` wakes them if > 0     |
#[repr(C)]
pub(crate) struct EventLayout {
    magic: AtomicU32,
    flag: AtomicU32,
    sleepers: AtomicU32,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for EventLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"EVT1");
    const WHAT: &'static str = "event";
}

/// An event shared between processes and threads (Python's `multiprocessing.Event`): waiters
/// block until some thread sets the flag.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Event, Process};
///
/// let ready = Event::new()?;
/// assert!(!ready.wait_timeout(Duration::from_millis(1)));
/// let mut child = Process::new(|e: Event| e.set(), ready.clone()).start()?;
/// ready.wait();
/// assert!(ready.is_set());
/// child.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    shared: Shared<EventLayout>,
}

impl Event {
    /// A new, clear event.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new() -> Result<Event> {
        Ok(Event {
            shared: Shared::create(0, |_, _| {})?,
        })
    }

    fn layout(&self) -> &EventLayout {
        self.shared.layout()
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let l = self.layout();
        let was = l.flag.swap(1, Ordering::Release);
        // Pairs with the fence in `wait_until`: either we see the waiter, or it sees the flag.
        fence(Ordering::SeqCst);
        if was == 0 && l.sleepers.load(Ordering::Relaxed) > 0 {
            futex_wake(&l.flag, u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.layout().flag.store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.layout().flag.load(Ordering::Acquire) == 1
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits up to `timeout` for the flag; whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Waits until `deadline` for the flag; whether it is set.
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        self.wait_until(Some(deadline))
    }

    /// Waits until the flag is set, as a future (feature `async`): the form of
    /// [`wait`](Self::wait) to `.await`, on any executor; no thread waits for it.
    ///
    /// Cancel-safe: dropping it changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Event, Process};
    ///
    /// let ready = Event::new()?;
    /// let mut child = Process::new(|e: Event| e.set(), ready.clone()).start()?;
    /// futures::executor::block_on(ready.wait_async());
    /// assert!(ready.is_set());
    /// child.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn wait_async(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        use crate::aio::{Attempt, Park, Sleeper, WaitFor, Word};
        let l = self.layout();
        WaitFor::new(move || {
            if self.is_set() {
                return Attempt::Done(());
            }
            let sleeper = Sleeper::count(&l.sleepers);
            match l.flag.load(Ordering::Acquire) {
                0 => Attempt::Wait(Park::all(Word::U32(&l.flag), 0, Some(sleeper))),
                _ => Attempt::Done(()),
            }
        })
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.is_set() || spin_until(|| self.is_set()) {
            return true;
        }
        let l = self.layout();
        loop {
            l.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let waited = if l.flag.load(Ordering::Acquire) == 0 {
                futex_wait(&l.flag, 0, deadline)
            } else {
                FutexWait::Woken
            };
            l.sleepers.fetch_sub(1, Ordering::Relaxed);
            if self.is_set() {
                return true;
            }
            if waited == FutexWait::TimedOut {
                return false;
            }
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
