//! The shared-memory queue's awaitable waits (feature `async`): attempts that take, put or
//! join without waiting, and otherwise say which word to wait on (see `crate::aio`).
//!
//! A blocking `get` waits for a frame while it holds the consumer lock; an attempt never
//! holds a lock while its future waits (the lock belongs to a thread, a future does not).
//! So an attempt that finds frames but the lock held wakes every consumer asleep on the tail
//! (the holder may be one whose wake came to a future instead) and waits for the lock.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ShmQueue, Wait, publish};
use crate::aio::{Attempt, Park, Sleeper, Word, reactor};
use crate::error::Result;
use crate::queue::flavors::QueueFlavor;
use crate::share::{self, with_scratch};
use crate::sync::raw_lock::{LIVENESS_SLICE, RawLock};
use crate::sync::ring::frame_len;
use crate::sync::shim::Ordering;
use crate::sync::spin::spin_until_batching;

/// Waits for `lock`, held by another thread while what the caller wants is there: wakes all
/// sleepers on `side` first (the holder may sleep there, its wake taken by a future). `None`
/// if the lock came free meanwhile.
fn wait_for_lock<'a>(lock: &'a RawLock, side: Word<'a>) -> Option<Park<'a>> {
    side.wake(u32::MAX);
    let expected = lock.mark_waited_for()?;
    let mut park = Park::one(Word::U32(lock.word()), expected, None);
    // An owner that died without the kernel marking its lock is found by looking again.
    park.recheck = Some(Instant::now() + LIVENESS_SLICE);
    Some(park)
}

impl ShmQueue {
    /// One try at taking an item. `as_waiter` says the last try waited for the consumer lock
    /// (so it is taken keeping its `WAITERS` mark); it is set when this one does.
    pub(in crate::queue) fn get_attempt<T: DeserializeOwned>(
        &self,
        as_waiter: &mut bool,
    ) -> Attempt<'_, Result<T>> {
        if let Err(e) = self.check_open() {
            return Attempt::Done(Err(e));
        }
        let ring = self.ring();
        let (tail, sleepers, lock) = ring.consumer_waits();
        let tail = Word::Low(tail);
        let mut spun = false;
        loop {
            if let Some(mut consumer) = ring.try_consumer(std::mem::take(as_waiter))
                && consumer.wait_frame(None, false).is_ok()
            {
                let got = self.take_from(consumer, |what, bytes, fds| {
                    share::decode::<T>(what, bytes, fds)
                });
                if !ring.is_empty() && sleepers.load(Ordering::Relaxed) > 0 {
                    // More frames: the next waiter's turn (a wake may have served two).
                    reactor().pass_on(tail);
                }
                return Attempt::Done(got);
            }
            // A peer running on another core answers within a microsecond or so: look again
            // for a while (as long as the spin governor says it pays) before parking, which
            // costs two thread wake-ups.
            if !spun {
                spun = true;
                if spin_until_batching(|| !ring.is_empty()) {
                    continue;
                }
            }
            let sleeper = Sleeper::count(sleepers);
            let seen = tail.load();
            if ring.is_empty() {
                let mut park = Park::one(tail, seen, Some(sleeper));
                park.keep = Some(self.shared.keep_alive());
                return Attempt::Wait(park);
            }
            drop(sleeper);
            if let Some(park) = wait_for_lock(lock, tail) {
                *as_waiter = true;
                return Attempt::Wait(park);
            }
        }
    }

    /// One try at putting `item`: as [`get_attempt`](Self::get_attempt), for room. An
    /// unbounded queue whose ring is full leaves the item to its backlog, as `put` does.
    pub(in crate::queue) fn put_attempt<T: Serialize>(
        &self,
        item: &T,
        as_waiter: &mut bool,
    ) -> Attempt<'_, Result<()>> {
        if let Err(e) = self.check_open() {
            return Attempt::Done(Err(e));
        }
        let ring = self.ring();
        let (head, sleepers, lock) = ring.producer_waits();
        let head = Word::Low(head);
        let unbounded = self.maxsize() == 0;
        let mut spun = false;
        loop {
            // `Some(frame)`: not put, and a frame of this size did not fit or the lock was held.
            let tried = with_scratch(|buf| -> Result<Option<u32>> {
                let fds = share::encode_into(&self.what, item, buf)?;
                let side = !fds.is_empty() || buf.len() > ring.capacity() as usize / 4;
                let frame =
                    frame_len(if side { 8 } else { buf.len() }).expect("inline frames are small");
                if unbounded && self.backlog.queued.load(Ordering::Acquire) > 0 {
                    // Behind this handle's earlier items.
                    return self.put_in_backlog(buf, fds).map(|()| None);
                }
                let wait = Wait::Not {
                    as_waiter: std::mem::take(as_waiter),
                };
                let side_tx = self.side_tx.as_fd();
                match publish(&self.shared, side_tx, &self.what, buf, &fds, wait, false)? {
                    Ok(()) => Ok(None),
                    Err(_) if unbounded && ring.is_full(frame) => {
                        self.put_in_backlog(buf, fds).map(|()| None)
                    }
                    Err(_) => Ok(Some(frame)),
                }
            });
            let frame = match tried {
                Ok(None) => return Attempt::Done(Ok(())),
                Err(e) => return Attempt::Done(Err(e)),
                Ok(Some(frame)) => frame,
            };
            if !spun {
                spun = true;
                if spin_until_batching(|| !ring.is_full(frame)) {
                    continue;
                }
            }
            let sleeper = Sleeper::count(sleepers);
            let seen = head.load();
            if ring.is_full(frame) {
                let mut park = Park::one(head, seen, Some(sleeper));
                park.keep = Some(self.shared.keep_alive());
                return Attempt::Wait(park);
            }
            drop(sleeper);
            if !lock.is_locked() {
                // Room, and the lock free: the side channel was full. Look again shortly.
                let mut park = Park::one(head, seen, None);
                park.recheck = Some(Instant::now() + Duration::from_millis(1));
                return Attempt::Wait(park);
            }
            if let Some(park) = wait_for_lock(lock, head) {
                *as_waiter = true;
                return Attempt::Wait(park);
            }
        }
    }

    /// One try at [`join`](super::QueueFlavor::join_until): done when every item put was
    /// marked done. While items wait in a producer's backlog, it looks again every few
    /// milliseconds, as the blocking `join` does.
    pub(in crate::queue) fn join_attempt(&self) -> Attempt<'_, Result<()>> {
        let sleepers = &self.shared.layout().sleepers;
        let done = sleepers.done.load(Ordering::Acquire);
        let backlogged = self.backlogged();
        if done == self.ring().put_count() && backlogged == 0 {
            return Attempt::Done(Ok(()));
        }
        let sleeper = Sleeper::count(&sleepers.joiners);
        if sleepers.done.load(Ordering::Acquire) != done {
            drop(sleeper);
            return self.join_attempt();
        }
        let mut park = Park::all(Word::U32(&sleepers.done), done, Some(sleeper));
        if backlogged > 0 {
            park.recheck = Some(Instant::now() + super::BACKLOG_POLL);
        }
        Attempt::Wait(park)
    }
}
