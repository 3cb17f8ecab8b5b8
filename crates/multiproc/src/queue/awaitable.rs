//! The awaitable forms of the queues' waits (feature `async`).

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Flavor, JoinableQueue, Queue};
use crate::aio::WaitFor;
use crate::error::Result;

/// A manager queue's request in flight, for the flavors that have one.
#[cfg(feature = "manager")]
fn in_flight(flavor: &Flavor) -> Option<super::flavors::manager::InFlight<'_>> {
    match flavor {
        Flavor::Manager(q) => Some(super::flavors::manager::InFlight::new(q)),
        _ => None,
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Takes the next item, as a future: the form of [`get`](Self::get) to `.await`, on any
    /// executor (tokio, smol, `futures::executor`); no thread waits for it. Bound it with your
    /// runtime's timeout (`tokio::time::timeout`).
    ///
    /// **Cancel-safe**: an item is taken only in the poll that returns it, so dropping the
    /// future loses nothing; the item stays for the next taker.
    ///
    /// # Errors
    /// As for [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Process, Queue};
    ///
    /// let q = Queue::new()?;
    /// let mut child = Process::new(|q: Queue<u32>| q.put(7).unwrap(), q.clone()).start()?;
    /// let got = futures::executor::block_on(q.get_async())?;
    /// assert_eq!(got, 7);
    /// child.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get_async(&self) -> impl Future<Output = Result<T>> + Send + '_ {
        let mut as_waiter = false;
        #[cfg(feature = "manager")]
        let mut in_flight = in_flight(&self.flavor);
        WaitFor::new(move || match &self.flavor {
            Flavor::Shm(q) => q.get_attempt::<T>(&mut as_waiter),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.get_attempt(in_flight.as_mut().expect("made for it")),
            #[cfg(feature = "manager")]
            Flavor::Served(q) => q.get_attempt::<T>(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.get_attempt::<T>(),
        })
    }

    /// Puts an item, as a future: the form of [`put`](Self::put) to `.await`. On a bounded
    /// queue it waits for room; an unbounded one's does not wait (as `put`).
    ///
    /// **Cancel-safe** in that the item was put if and only if the future completed with
    /// `Ok`: dropped before, it put nothing (and the item is dropped with it).
    ///
    /// # Errors
    /// As for [`put`](Self::put).
    pub fn put_async(&self, item: T) -> impl Future<Output = Result<()>> + Send + '_
    where
        T: Send,
    {
        let mut as_waiter = false;
        #[cfg(feature = "manager")]
        let mut in_flight = in_flight(&self.flavor);
        WaitFor::new(move || match &self.flavor {
            Flavor::Shm(q) => q.put_attempt(&item, &mut as_waiter),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.put_attempt(&item, in_flight.as_mut().expect("made for it")),
            #[cfg(feature = "manager")]
            Flavor::Served(q) => q.put_attempt(&item),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.put_attempt(&item),
        })
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// Waits until every item put so far is marked done, as a future: the form of
    /// [`join`](Self::join) to `.await`.
    ///
    /// **Cancel-safe**: dropping it changes nothing.
    ///
    /// On a broker's queue, while join futures of a handle wait, one thread of the handle
    /// looks at what is unfinished as the blocking `join` does (every 20 ms).
    ///
    /// # Errors
    /// As for [`join`](Self::join).
    pub fn join_async(&self) -> impl Future<Output = Result<()>> + Send + '_ {
        #[cfg(feature = "manager")]
        let mut in_flight = in_flight(&self.queue.flavor);
        #[cfg(feature = "broker")]
        let mut ticket = None;
        WaitFor::new(move || match &self.queue.flavor {
            Flavor::Shm(q) => q.join_attempt(),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.join_attempt(in_flight.as_mut().expect("made for it")),
            #[cfg(feature = "manager")]
            Flavor::Served(q) => q.join_attempt(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.join_attempt(&mut ticket),
        })
    }
}
