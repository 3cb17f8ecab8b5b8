//! The awaitable forms of the queues' waits (feature `async`).

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Flavor, JoinableQueue, Queue};
use crate::aio::{Attempt, WaitFor};
use crate::error::{Error, Result};

/// The error of a flavor without awaitable waits yet.
fn not_awaitable(what: &str, operation: &'static str) -> Error {
    Error::Unsupported {
        what: what.to_string(),
        operation,
        detail: "a broker's queue cannot be joined by a future yet; use the blocking call \
                 in your runtime's blocking pool"
            .into(),
    }
}

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
    /// As for [`get`](Self::get); [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// on a manager's or a broker's queue (so far).
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
            #[allow(unreachable_patterns)]
            _ => Attempt::Done(Err(not_awaitable("queue", "get_async"))),
        })
    }

    /// Puts an item, as a future: the form of [`put`](Self::put) to `.await`. On a bounded
    /// queue it waits for room; an unbounded one's does not wait (as `put`).
    ///
    /// **Cancel-safe** in that the item was put if and only if the future completed with
    /// `Ok`: dropped before, it put nothing (and the item is dropped with it).
    ///
    /// # Errors
    /// As for [`put`](Self::put); [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// on a manager's or a broker's queue (so far).
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
            #[allow(unreachable_patterns)]
            _ => Attempt::Done(Err(not_awaitable("queue", "put_async"))),
        })
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// Waits until every item put so far is marked done, as a future: the form of
    /// [`join`](Self::join) to `.await`.
    ///
    /// **Cancel-safe**: dropping it changes nothing.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) on a manager's or a broker's
    /// queue (so far).
    pub fn join_async(&self) -> impl Future<Output = Result<()>> + Send + '_ {
        #[cfg(feature = "manager")]
        let mut in_flight = in_flight(&self.queue.flavor);
        WaitFor::new(move || match &self.queue.flavor {
            Flavor::Shm(q) => q.join_attempt(),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.join_attempt(in_flight.as_mut().expect("made for it")),
            #[cfg(feature = "manager")]
            Flavor::Served(q) => q.join_attempt(),
            #[allow(unreachable_patterns)]
            _ => Attempt::Done(Err(not_awaitable("queue", "join_async"))),
        })
    }
}
