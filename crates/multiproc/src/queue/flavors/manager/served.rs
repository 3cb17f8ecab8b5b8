//! A queue served by a [`ManagerServer`], used from the serving process itself: the master's
//! side of the seeds' distributed example. No connection: calls go straight to the queue the
//! server's clients use. Sent to another process, it arrives as a proxy to the same queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ManagerHandle, QueueFlavor};
use crate::connection::Address;
use crate::error::{Error, Result};
use crate::manager::{ManagerServer, QUEUE_EXPOSED, ServedQueue};
use crate::pickle;
use crate::queue::{Flavor, JoinableQueue, Queue};

impl ManagerServer {
    /// Registers a queue under `typeid` (the name a CPython client `register`s and calls, as
    /// `get_task_queue`) and returns the serving process's handle to it. Items cross to
    /// CPython as pickles: any serde value that maps onto Python's data model (numbers,
    /// strings, bytes, lists, tuples, dicts…). Registering a typeid again returns the same
    /// queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Address, ManagerServer};
    ///
    /// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?;
    /// let jobs = server.register_queue::<String>("get_jobs");
    /// jobs.put("job".to_string())?;
    /// assert_eq!(jobs.get_timeout(Duration::from_secs(1))?, "job");
    /// jobs.task_done()?;
    /// jobs.join_timeout(Duration::from_secs(1))?;
    /// assert!(jobs.task_done().is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn register_queue<T: Serialize + DeserializeOwned>(
        &mut self,
        typeid: &str,
    ) -> JoinableQueue<T> {
        let (queue, ident) = self.serve_queue(typeid);
        let exposed = QUEUE_EXPOSED.iter().map(|m| m.to_string()).collect();
        let handle = ManagerHandle::new(self.address(), &self.authkey(), typeid, &ident, exposed);
        let flavor = ServedFlavor {
            queue,
            handle,
            closed: super::super::Closed::default(),
        };
        JoinableQueue::of(Queue::of(Flavor::Served(Arc::new(flavor))))
    }
}

/// The serving process's handle to a queue its manager server serves.
pub(in crate::queue) struct ServedFlavor {
    queue: Arc<ServedQueue>,
    /// How another process reaches the same queue.
    handle: ManagerHandle,
    closed: super::super::Closed,
}

impl ServedFlavor {
    pub(in crate::queue) fn handle(&self) -> ManagerHandle {
        self.handle.clone()
    }

    fn what(&self) -> String {
        format!("served queue {:?}", self.queue.name())
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(|| self.what())
    }

    /// The server's address, for `Debug`.
    fn address(&self) -> Option<Address> {
        match (&self.handle.tcp, &self.handle.unix) {
            (Some(a), _) => Address::tcp(a.as_str()).ok(),
            (None, Some(p)) => Some(Address::unix(p.clone())),
            (None, None) => None,
        }
    }
}

impl QueueFlavor for ServedFlavor {
    fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        let value = pickle::to_value(item)?;
        if self.queue.put_waiting(value, block, deadline) {
            Ok(())
        } else if block {
            Err(Error::timeout(self.what(), waited))
        } else {
            Err(Error::Full { what: self.what() })
        }
    }

    fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T> {
        self.check_open()?;
        match self.queue.get(block, deadline) {
            Some(v) => Ok(pickle::from_value(v)?),
            None if block => Err(Error::timeout(self.what(), waited)),
            None => Err(Error::Empty { what: self.what() }),
        }
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    fn maxsize(&self) -> u32 {
        u32::try_from(self.queue.maxsize()).unwrap_or(u32::MAX)
    }

    fn close(&self) {
        self.closed.close();
    }

    fn task_done(&self) -> Result<()> {
        if self.queue.task_done() {
            Ok(())
        } else {
            Err(Error::invalid(
                self.what(),
                "task_done() called more times than items were put",
            ))
        }
    }

    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        if self.queue.join(deadline) {
            Ok(())
        } else {
            Err(Error::timeout(self.what(), waited))
        }
    }

    fn unfinished(&self) -> Result<u64> {
        Ok(self.queue.unfinished())
    }

    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        f.field("typeid", &self.handle.typeid)
            .field("served_at", &self.address())
            .field("len", &self.queue.len());
    }
}

/// The awaitable waits (feature `async`): the server's threads wake the serving process's
/// futures when the queue changes.
#[cfg(all(feature = "async", not(loom)))]
impl ServedFlavor {
    pub(in crate::queue) fn get_attempt<T: DeserializeOwned>(
        &self,
    ) -> crate::aio::Attempt<'_, Result<T>> {
        use crate::aio::Attempt;
        if let Err(e) = self.check_open() {
            return Attempt::Done(Err(e));
        }
        match self.queue.get(false, None) {
            Some(v) => Attempt::Done(pickle::from_value(v).map_err(Into::into)),
            None => Attempt::WaitWoken(self.queue.wakers()),
        }
    }

    pub(in crate::queue) fn put_attempt<T: Serialize>(
        &self,
        item: &T,
    ) -> crate::aio::Attempt<'_, Result<()>> {
        use crate::aio::Attempt;
        if let Err(e) = self.check_open() {
            return Attempt::Done(Err(e));
        }
        let value = match pickle::to_value(item) {
            Ok(v) => v,
            Err(e) => return Attempt::Done(Err(e.into())),
        };
        if self.queue.put_waiting(value, false, None) {
            Attempt::Done(Ok(()))
        } else {
            Attempt::WaitWoken(self.queue.wakers())
        }
    }

    pub(in crate::queue) fn join_attempt(&self) -> crate::aio::Attempt<'_, Result<()>> {
        use crate::aio::Attempt;
        if self.queue.unfinished() == 0 {
            Attempt::Done(Ok(()))
        } else {
            Attempt::WaitWoken(self.queue.wakers())
        }
    }
}
