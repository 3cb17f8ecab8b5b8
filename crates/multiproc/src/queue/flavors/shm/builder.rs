//! [`QueueBuilder`]: the shared-memory flavor's settings.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{DEFAULT_RING_BYTES, ShmQueue};
use crate::error::Result;
use crate::queue::{Flavor, JoinableQueue, Queue};

/// Sets up a [`Queue`] or [`JoinableQueue`] in shared memory (from [`Queue::builder`]).
///
/// # Examples
///
/// ```
/// let q = multiproc::Queue::<u64>::builder().maxsize(100).ring_bytes(64 << 10).name("tasks").build()?;
/// q.put(1)?;
/// assert_eq!(q.len(), 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct QueueBuilder<T> {
    maxsize: u32,
    ring_bytes: usize,
    preallocate: bool,
    name: Option<String>,
    _item: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> QueueBuilder<T> {
    pub(in crate::queue) fn new() -> QueueBuilder<T> {
        QueueBuilder {
            maxsize: 0,
            ring_bytes: DEFAULT_RING_BYTES,
            preallocate: false,
            name: None,
            _item: PhantomData,
        }
    }

    /// At most `maxsize` items at a time (0: no limit on items).
    pub fn maxsize(mut self, maxsize: u32) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// The size of the shared ring, rounded up to a power of two between 4 KiB and 1 GiB
    /// (default 1 MiB). Pages are only allocated when first used.
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// Allocate every page of the ring now (default: when first used). A queue that will
    /// carry a lot soon then takes no page fault per page on its first laps, at the cost of
    /// its whole ring in memory from the start.
    pub fn preallocate(mut self, preallocate: bool) -> Self {
        self.preallocate = preallocate;
        self
    }

    /// A name for error messages (`queue "tasks": timed out after 1s`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Creates the queue.
    ///
    /// # Errors
    /// If the shared memory or the side channel cannot be created.
    pub fn build(self) -> Result<Queue<T>> {
        Ok(Queue::of(Flavor::Shm(Arc::new(self.create()?))))
    }

    /// Creates a [`JoinableQueue`].
    ///
    /// # Errors
    /// As for [`build`](Self::build).
    pub fn build_joinable(self) -> Result<JoinableQueue<T>> {
        self.build().map(JoinableQueue::of)
    }

    /// The flavor itself, for the crate's own typed uses (the pool's queues).
    pub(in crate::queue) fn create(self) -> Result<ShmQueue> {
        let what = match &self.name {
            Some(n) => format!("queue {n:?}"),
            None => "queue".to_string(),
        };
        ShmQueue::create::<T>(what, self.ring_bytes, self.maxsize, self.preallocate)
    }
}
