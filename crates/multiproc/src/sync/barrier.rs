//! `Barrier`: a fixed number of parties wait for one another, across processes.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::deadline_after;
use super::raw_lock::RawLock;
use super::shim::{AtomicU32, FutexWait, Ordering, futex_wait, futex_wake};
use crate::error::{Error, Result};
use crate::shm::{Layout, Shared};

/// # Layout
///
/// | field        | meaning                                                              |
/// |--------------|----------------------------------------------------------------------|
/// | `generation` | bumped when a round ends (all arrived, or broken); the futex word    |
/// | `arrived`    | parties waiting in the current round                                 |
/// | `parties`    | how many must arrive; written before sharing                         |
/// | `broken`     | 1 while the barrier is broken                                        |
/// | `outcomes`   | bit `g % 32` set if round `g` ended broken, cleared if it passed     |
/// | `lock`       | guards `arrived`, `broken` and the bump of `generation`              |
#[repr(C)]
pub(crate) struct BarrierLayout {
    magic: AtomicU32,
    generation: AtomicU32,
    arrived: AtomicU32,
    parties: AtomicU32,
    broken: AtomicU32,
    outcomes: AtomicU32,
    lock: RawLock,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for BarrierLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"BAR1");
    const WHAT: &'static str = "barrier";
}

impl BarrierLayout {
    fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        // A dead owner of this internal lock left it mid-update of a few counters at worst;
        // the barrier stays usable (and `reset` mends the counts).
        let _ = self.lock.lock_deadline(None);
        let r = f();
        // SAFETY: taken just above by this thread.
        unsafe { self.lock.unlock() };
        r
    }

    /// Ends the current round (the lock is held).
    fn end_round(&self, broken: bool) {
        let g = self.generation.load(Ordering::Relaxed);
        let bit = 1 << (g % 32);
        if broken {
            self.outcomes.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.outcomes.fetch_and(!bit, Ordering::Relaxed);
        }
        self.arrived.store(0, Ordering::Relaxed);
        self.generation.store(g.wrapping_add(1), Ordering::Release);
        futex_wake(&self.generation, u32::MAX);
    }

    fn break_round(&self) {
        self.broken.store(1, Ordering::Relaxed);
        if self.arrived.load(Ordering::Relaxed) > 0 {
            self.end_round(true);
        }
    }
}

/// A barrier for a fixed number of parties, shared between processes and threads (Python's
/// `multiprocessing.Barrier`).
///
/// Each party calls [`wait`](Self::wait); all return together once the last one arrives, each
/// with a distinct index in `0..parties`. Aborting, resetting while parties wait, or a wait
/// timing out breaks the barrier: waiting parties and later waits fail with
/// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier) until [`reset`](Self::reset).
///
/// # Examples
///
/// ```
/// use multiproc::{Barrier, Process};
///
/// let barrier = Barrier::new(2)?;
/// let child = Process::new(|b: Barrier| b.wait().unwrap(), barrier.clone()).start()?;
/// let mine = barrier.wait()?;
/// let theirs = child.into_result()?;
/// assert_eq!(mine + theirs, 1); // indexes 0 and 1
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    shared: Shared<BarrierLayout>,
}

impl Barrier {
    /// A barrier for `parties` parties.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if `parties` is 0; or if
    /// the shared memory cannot be created.
    pub fn new(parties: u32) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::invalid(
                BarrierLayout::WHAT,
                "needs at least one party",
            ));
        }
        let shared = Shared::create(0, |l: &BarrierLayout, _| {
            l.parties.store(parties, Ordering::Relaxed);
        })?;
        Ok(Barrier { shared })
    }

    fn layout(&self) -> &BarrierLayout {
        self.shared.layout()
    }

    /// Waits for all parties; this party's arrival index (0 for the first to arrive, `parties
    /// - 1` for the last, as in Python).
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier) if the barrier is or
    /// becomes broken.
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait) for at most `timeout`; timing out breaks the barrier.
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier) if the barrier is broken,
    /// becomes broken, or this wait timed out (and broke it).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(deadline_after(timeout))
    }

    /// Like [`wait`](Self::wait) until `deadline`; timing out breaks the barrier.
    ///
    /// # Errors
    /// As for [`wait_timeout`](Self::wait_timeout).
    pub fn wait_deadline(&self, deadline: Instant) -> Result<u32> {
        self.wait_until(Some(deadline))
    }

    /// Waits for the other parties, as a future: the form of [`wait`](Self::wait) to
    /// `.await`, on any executor (feature `async`).
    ///
    /// This party arrives in the first poll. **Not cancel-safe** in the sense that an arrival
    /// cannot be taken back: dropping the future after its first poll and before the round
    /// ends breaks the barrier, as a timed-out [`wait_timeout`](Self::wait_timeout) does, so
    /// that the other parties are not left waiting for a party that went away.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn wait_async(&self) -> impl std::future::Future<Output = Result<u32>> + Send + '_ {
        use crate::aio::{Attempt, Park, WaitFor, Word};

        /// This party's place in a round; breaks the round if dropped while it waits.
        struct Arrived<'a> {
            l: &'a BarrierLayout,
            generation: u32,
            index: u32,
        }

        impl Drop for Arrived<'_> {
            fn drop(&mut self) {
                let (l, g) = (self.l, self.generation);
                if l.generation.load(Ordering::Acquire) == g {
                    l.locked(|| {
                        if l.generation.load(Ordering::Relaxed) == g {
                            l.break_round();
                        }
                    });
                }
            }
        }

        let l = self.layout();
        let broken = || Error::BrokenBarrier {
            what: BarrierLayout::WHAT.into(),
        };
        let mut arrived: Option<Arrived<'_>> = None;
        WaitFor::new(move || {
            let Some(a) = &arrived else {
                match self.arrive() {
                    None => return Attempt::Done(Err(broken())),
                    Some((_, index, true)) => return Attempt::Done(Ok(index)),
                    Some((generation, index, false)) => {
                        arrived = Some(Arrived {
                            l,
                            generation,
                            index,
                        });
                        return Attempt::Wait(Park::all(
                            Word::U32(&l.generation),
                            generation,
                            None,
                        ));
                    }
                }
            };
            let (generation, index) = (a.generation, a.index);
            if l.generation.load(Ordering::Acquire) == generation {
                return Attempt::Wait(Park::all(Word::U32(&l.generation), generation, None));
            }
            // The round ended: nothing to break on the way out.
            arrived = None;
            let bit = 1 << (generation % 32);
            Attempt::Done(if l.outcomes.load(Ordering::Relaxed) & bit != 0 {
                Err(broken())
            } else {
                Ok(index)
            })
        })
    }

    /// Arrives in the current round: `(generation, index, whether it was the last)`, or
    /// `None` if the barrier is broken.
    fn arrive(&self) -> Option<(u32, u32, bool)> {
        let l = self.layout();
        l.locked(|| {
            if l.broken.load(Ordering::Relaxed) != 0 {
                return None;
            }
            let generation = l.generation.load(Ordering::Relaxed);
            let arrived = l.arrived.load(Ordering::Relaxed) + 1;
            let parties = l.parties.load(Ordering::Relaxed);
            let index = arrived - 1;
            if arrived >= parties {
                l.end_round(false);
            } else {
                l.arrived.store(arrived, Ordering::Relaxed);
            }
            Some((generation, index, arrived >= parties))
        })
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        let l = self.layout();
        let broken = || Error::BrokenBarrier {
            what: BarrierLayout::WHAT.into(),
        };
        let Some((generation, index, last)) = self.arrive() else {
            return Err(broken());
        };
        if last {
            return Ok(index);
        }
        loop {
            let waited = futex_wait(&l.generation, generation, deadline);
            if l.generation.load(Ordering::Acquire) != generation {
                let bit = 1 << (generation % 32);
                return if l.outcomes.load(Ordering::Relaxed) & bit != 0 {
                    Err(broken())
                } else {
                    Ok(index)
                };
            }
            if waited == FutexWait::TimedOut {
                let ended = l.locked(|| {
                    if l.generation.load(Ordering::Relaxed) == generation {
                        l.break_round();
                        true
                    } else {
                        false
                    }
                });
                if ended {
                    return Err(broken());
                }
            }
        }
    }

    /// Breaks the barrier: waiting parties and later waits fail until [`reset`](Self::reset).
    pub fn abort(&self) {
        let l = self.layout();
        l.locked(|| l.break_round());
    }

    /// Returns the barrier to its empty, unbroken state; parties waiting now fail as broken.
    pub fn reset(&self) {
        let l = self.layout();
        l.locked(|| {
            if l.arrived.load(Ordering::Relaxed) > 0 {
                l.end_round(true);
            }
            l.broken.store(0, Ordering::Relaxed);
        });
    }

    /// How many parties must arrive.
    pub fn parties(&self) -> u32 {
        self.layout().parties.load(Ordering::Relaxed)
    }

    /// How many parties wait right now.
    pub fn n_waiting(&self) -> u32 {
        self.layout().arrived.load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.layout().broken.load(Ordering::Relaxed) != 0
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .finish()
    }
}
