//! A broker's queue, awaited (feature `async`). The redis crate's async connections need a
//! runtime, and ours are runtime-agnostic: instead, while futures of a handle wait, one
//! thread of that handle (not one per future) reads new entries with a blocking
//! `XREADGROUP … BLOCK` and keeps them ahead, leased to the handle as a `get` reading ahead
//! keeps them, then wakes the futures; a future takes an entry without waiting. A future
//! dropped loses nothing: an entry read for it stays ahead for the next `get`, and goes back
//! to the stream when the handle is dropped, as any entry read ahead does.
//!
//! A `join` is awaited the same way: while join futures of a handle wait, one thread of that
//! handle looks at the stream's length as the blocking `join` does, and answers them when
//! nothing is left unfinished.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Reading, RedisQueue};
use crate::aio::{Attempt, Wakers};
use crate::error::{Error, ErrorKind, Result};
use crate::local_lock::IgnorePoison;
use crate::queue::flavors::QueueFlavor;

/// A handle's futures waiting for entries, and whether its reading thread runs; its join
/// futures and what its joining thread answered.
#[derive(Default)]
pub(in crate::queue) struct Awaiting {
    wakers: Wakers,
    reading: Mutex<bool>,
    joiners: Wakers,
    joins: Mutex<Joins>,
}

/// The join futures' tickets: each future takes the next one when first polled; the joining
/// thread answers all tickets taken before a look that found nothing unfinished.
#[derive(Default)]
struct Joins {
    taken: u64,
    answered: u64,
    /// A look that failed, and the tickets taken before it.
    failed: Option<(u64, Error)>,
    watching: bool,
}

impl RedisQueue {
    /// One try at taking an item for an awaiting future: what is read ahead, or an entry
    /// whose lease ran out; otherwise the reading thread reads new ones for it (a future's
    /// try never reads: the reading thread may be blocked in a read on the handle's reading
    /// connection).
    pub(in crate::queue) fn get_attempt<T: DeserializeOwned>(
        self: &Arc<Self>,
    ) -> Attempt<'_, Result<T>> {
        match self.take_until::<T>(None, false, Duration::ZERO, Reading::No) {
            Err(e) if e.kind() == ErrorKind::Empty => {}
            done => return Attempt::Done(done),
        }
        self.read_for_futures();
        Attempt::WaitWoken(&self.awaiting.wakers)
    }

    /// One try at putting: a put does not wait for a broker (the queue's `maxsize`, if any,
    /// is checked by the blocking call).
    pub(in crate::queue) fn put_attempt<T: Serialize>(&self, item: &T) -> Attempt<'_, Result<()>> {
        Attempt::Done(self.put_until(item, None, true, Duration::ZERO))
    }

    /// One try at a join for an awaiting future holding `ticket` (none before its first try).
    pub(in crate::queue) fn join_attempt(
        self: &Arc<Self>,
        ticket: &mut Option<u64>,
    ) -> Attempt<'_, Result<()>> {
        let mut joins = self.awaiting.joins.lock().ignore_poison();
        let mine = *ticket.get_or_insert_with(|| {
            joins.taken += 1;
            joins.taken
        });
        if joins.answered >= mine {
            return Attempt::Done(Ok(()));
        }
        if let Some((up_to, e)) = &joins.failed
            && *up_to >= mine
        {
            return Attempt::Done(Err(e.clone()));
        }
        if !joins.watching {
            let weak = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("multiproc-broker-joiner".into())
                .spawn(move || join_while_awaited(&weak));
            match started {
                Ok(_) => joins.watching = true,
                Err(e) => return Attempt::Done(Err(Error::io(self.what(), e))),
            }
        }
        Attempt::WaitWoken(&self.awaiting.joiners)
    }

    /// Starts the handle's reading thread unless it runs.
    fn read_for_futures(self: &Arc<Self>) {
        let mut reading = self.awaiting.reading.lock().ignore_poison();
        if *reading {
            return;
        }
        let weak = Arc::downgrade(self);
        let started = std::thread::Builder::new()
            .name("multiproc-broker-reader".into())
            .spawn(move || read_while_awaited(&weak));
        match started {
            Ok(_) => *reading = true,
            // No thread: the futures are woken at once and try again (a read each).
            Err(_) => self.awaiting.wakers.wake_all(),
        }
    }
}

/// The reading thread: while futures of the handle wait, reads new entries (a blocking read of
/// up to a second) and wakes them; ends when none waits or the handle is gone.
fn read_while_awaited(weak: &Weak<RedisQueue>) {
    loop {
        let Some(queue) = weak.upgrade() else {
            return;
        };
        {
            let mut reading = queue.awaiting.reading.lock().ignore_poison();
            if queue.awaiting.wakers.is_empty() {
                *reading = false;
                return;
            }
        }
        let read = queue.read_new(None, true, Reading::Paced);
        match read {
            Ok(Some(first)) => {
                queue.lock_prefetched().push_front(first);
                queue.start_renewer();
            }
            Ok(None) => {}
            Err(e) => {
                // The futures see it on their next try.
                tracing::debug!(queue = %queue.name, error = %e, "reading ahead for awaiting gets failed");
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
        queue.awaiting.wakers.wake_all();
    }
}

/// The joining thread: while tickets wait for an answer, looks at what is unfinished every
/// `POLL` (as the blocking `join` does) and answers them when nothing is; ends when every
/// ticket is answered or the handle is gone.
fn join_while_awaited(weak: &Weak<RedisQueue>) {
    loop {
        let Some(queue) = weak.upgrade() else {
            return;
        };
        let asked = {
            let mut joins = queue.awaiting.joins.lock().ignore_poison();
            let failed_up_to = joins.failed.as_ref().map_or(0, |(up_to, _)| *up_to);
            if joins.answered.max(failed_up_to) >= joins.taken {
                joins.watching = false;
                return;
            }
            joins.taken
        };
        let looked = queue.unfinished();
        let answered = {
            let mut joins = queue.awaiting.joins.lock().ignore_poison();
            match looked {
                Ok(0) => joins.answered = asked,
                Ok(_) => {}
                Err(e) => joins.failed = Some((asked, e)),
            }
            joins.answered >= asked || joins.failed.as_ref().is_some_and(|(n, _)| *n >= asked)
        };
        if answered {
            queue.awaiting.joiners.wake_all();
        } else {
            drop(queue);
            super::link::pause_until(None, super::POLL);
        }
    }
}
