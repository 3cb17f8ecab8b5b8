//! [`ShmQueueOf`]: the shared-memory flavor with its item type, for the crate's own queues
//! (the pool's task and result queues), with the calls only this flavor can make: lending an
//! item's bytes to a reader that decodes them in place.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{NONBLOCKING_LOCK_WAIT, ShmQueue};
use crate::error::Result;
use crate::queue::flavors::QueueFlavor;
use crate::sync::deadline_after;

/// A shared-memory queue of `T`, not behind the public [`Queue`](crate::Queue).
pub(crate) struct ShmQueueOf<T> {
    queue: Arc<ShmQueue>,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> Clone for ShmQueueOf<T> {
    fn clone(&self) -> Self {
        ShmQueueOf {
            queue: self.queue.clone(),
            _item: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> ShmQueueOf<T> {
    /// A queue named `name` (for messages), its ring populated at once.
    pub(crate) fn preallocated(name: &str) -> Result<ShmQueueOf<T>> {
        let queue = super::QueueBuilder::<T>::new()
            .name(name)
            .preallocate(true)
            .create()?;
        Ok(ShmQueueOf {
            queue: Arc::new(queue),
            _item: PhantomData,
        })
    }

    /// `Queue::put`.
    pub(crate) fn put(&self, item: &T) -> Result<()> {
        self.queue.put_until(item, None, true, Duration::ZERO)
    }

    /// `Queue::try_put`, waiting at most a millisecond for another thread's short hold of
    /// the ring.
    pub(crate) fn try_put(&self, item: &T) -> Result<()> {
        let deadline = deadline_after(NONBLOCKING_LOCK_WAIT);
        self.queue.put_until(item, deadline, false, Duration::ZERO)
    }

    /// `Queue::get`.
    pub(crate) fn get(&self) -> Result<T> {
        self.queue.get_until(None, true, Duration::ZERO)
    }

    /// Waits up to `timeout` for an item without holding the queue's consumer side, so that
    /// other threads may take items with [`try_get_with`](Self::try_get_with) meanwhile (a
    /// pool's waiters take their own results while its handler thread waits here), and
    /// without spinning: the waiter sleeps at once, leaving the CPU to those who work. The
    /// item's bytes go to `decode` as they are in the receive buffer.
    pub(crate) fn get_timeout_shared_with<R>(
        &self,
        timeout: Duration,
        decode: impl FnMut(&str, &[u8], Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        self.queue.get_timeout_shared_with(timeout, decode)
    }

    /// Takes an item if there is one now, handing its bytes to `decode` as they are in the
    /// receive buffer: no copy for a reader that decodes in place.
    pub(crate) fn try_get_with<R>(
        &self,
        decode: impl FnOnce(&str, &[u8], Vec<OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        let deadline = deadline_after(NONBLOCKING_LOCK_WAIT);
        self.queue
            .get_until_with(deadline, false, Duration::ZERO, decode)
    }
}

impl<T> Serialize for ShmQueueOf<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ShmQueueOf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(ShmQueueOf {
            queue: Arc::new(ShmQueue::deserialize::<T, D>(d)?),
            _item: PhantomData,
        })
    }
}
