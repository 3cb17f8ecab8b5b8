//! `Pool`: worker processes that run tasks, where a worker that dies fails only its task.
//!
//! - `builder.rs`: the settings, and starting a pool.
//! - `supervisor.rs`: the record of tasks and workers, the result-handler thread, what happens
//!   when a worker dies.
//! - `transport.rs`: how the supervisor reaches its workers (the local pool's is shared-memory
//!   queues to worker processes of this machine).
//! - `worker.rs`: what travels to and from a worker, and the worker's loop.
//! - `task.rs`, `chunk.rs`: the target a task runs, and the bytes of a chunk of arguments and
//!   of its results.
//! - `options.rs`: one task's own options (`Pool::task`): priority, delayed start, retries.
//! - `result.rs`: `AsyncResult`, `MapResult`, `IMapIter`.

#![deny(unsafe_code)] // allowed in `task.rs` and `worker.rs` only, where targets are named

mod builder;
mod chunk;
mod metrics;
mod options;
#[cfg(feature = "broker")]
mod remote;
mod result;
mod supervisor;
mod task;
mod transport;
mod worker;

pub use builder::PoolBuilder;
pub use metrics::{DURATION_BUCKETS, DurationHistogram, PoolMetrics};
pub use options::{Priority, RetryPolicy, TaskCall};
#[cfg(feature = "broker")]
pub use remote::{
    BrokerPoolBuilder, BrokerWorker, TaskRecords, TaskRegistry, TaskStatus, WorkerStopper,
};
#[cfg(all(feature = "async", not(loom)))]
pub use result::IMapStream;
pub use result::{AsyncResult, IMapIter, MapResult};
pub(crate) use result::{Pump, spin_pumping};
pub(crate) use supervisor::TaskState;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::options::TaskOptions;
use self::result::Slot;
use self::supervisor::{Deliver, Supervisor, encode_args};
use self::task::TaskTarget;
use crate::error::{Error, Result};
use crate::sync::IgnorePoison;

/// The most items of a chunk that are reserved room for up front (more grow as they come).
const CHUNK_BUFFER_ITEMS: usize = 1 << 16;
/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// Tasks are `fn` items or non-capturing closures with a serde argument, as for
/// [`Process`](crate::Process). Results come back as values; a task that panics fails with its message and the
/// worker carries on. Beyond CPython, failure never hangs the pool: a worker that dies fails the
/// task it was running with [`ErrorKind::WorkerLost`](crate::ErrorKind::WorkerLost) and is
/// replaced; with [`PoolBuilder::task_timeout`] a stuck task fails with
/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout).
///
/// Dropping the pool terminates it (as CPython's context manager does); call
/// [`close`](Self::close) and [`join`](Self::join) to let queued tasks finish.
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(2)?;
/// let squares = pool.map(square, 0..10)?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// let pending = pool.apply_async(square, 7)?;
/// assert_eq!(pending.get()?, 49);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Pool {
    shared: Arc<Supervisor>,
    handler: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (processes, pending, closed) = self.shared.counts();
        f.debug_struct("Pool")
            .field("processes", &processes)
            .field("pending", &pending)
            .field("closed", &closed)
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers.
    ///
    /// # Errors
    /// As for [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// Runs `f(args)` in a worker and waits for the result.
    ///
    /// # Errors
    /// The task's failure (a panic, [`ErrorKind::WorkerLost`](crate::ErrorKind::WorkerLost),
    /// a timeout), or [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool
    /// is closed.
    pub fn apply<F, A, R>(&self, f: F, args: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, args)?.get()
    }

    /// Starts `f(args)` in a worker; the result arrives in the returned [`AsyncResult`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool is closed;
    /// arguments that cannot be serialized.
    pub fn apply_async<F, A, R>(&self, f: F, args: A) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_with(f, args, |_: &R| {}, |_: &Error| {})
    }

    /// [`apply_async`](Self::apply_async) with a `callback` for the value and an
    /// `error_callback` for a failure, run on the pool's result-handler thread (keep them
    /// short). A callback that panics is reported on stderr; the pool carries on.
    ///
    /// # Errors
    /// As for [`apply_async`](Self::apply_async).
    pub fn apply_async_with<F, A, R>(
        &self,
        f: F,
        args: A,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&Error) + Send + 'static,
    ) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_one(f, args, callback, error_callback, TaskOptions::default())
    }

    /// One task `f(args)` with options of its own (priority, a delayed start, retries, a
    /// timeout): see [`TaskCall`].
    pub fn task<F, A, R>(&self, f: F, args: A) -> TaskCall<'_, F, A, R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        TaskCall::new(self, f, args)
    }

    fn submit_one<F, A, R>(
        &self,
        f: F,
        args: A,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&Error) + Send + 'static,
        options: TaskOptions,
    ) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items = encode_args(&[args])?;
        let slot = Arc::new(Slot::new());
        let sink = slot.clone();
        let deliver: Deliver = Box::new(move |outcome| {
            let value = result::single(outcome);
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &value {
                Ok(v) => callback(v),
                Err(e) => error_callback(e),
            }));
            // The task's outcome stands whatever its callback did.
            sink.fill(value.map(|v| Box::new(v) as Box<dyn std::any::Any + Send>));
            if called.is_err() {
                tracing::error!("a pool callback panicked; the pool carries on");
            }
        });
        let id = self
            .shared
            .submit_with_options(TaskTarget::of(&f), items, deliver, options)?;
        Ok(AsyncResult::new(slot, self.shared.clone()).with_task_id(self.shared.task_key(id)))
    }

    /// Applies `f` to every item, in chunks of about `len / (4 × processes)` items (CPython's
    /// default), and returns the results in order.
    ///
    /// # Errors
    /// The first failing item's error (in item order).
    pub fn map<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async(f, items, None)?.get()
    }

    /// [`map`](Self::map) with an explicit `chunksize`.
    ///
    /// # Errors
    /// As for [`map`](Self::map).
    pub fn map_chunked<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async(f, items, Some(chunksize))?.get()
    }

    /// Python's `starmap`: `map` where each item is the tuple of the target's arguments (in
    /// Rust every target already takes one argument, so this is [`map`](Self::map)).
    ///
    /// # Errors
    /// As for [`map`](Self::map).
    pub fn starmap<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map(f, items)
    }

    /// Starts a `map`; the results arrive together in the returned [`MapResult`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool is closed;
    /// items that cannot be serialized.
    pub fn map_async<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<MapResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        // An iterator of known length is encoded chunk by chunk as it goes; others are
        // counted first (CPython makes a list), for the default chunksize.
        let items = items.into_iter();
        match items.size_hint() {
            (low, Some(high)) if low == high => self.map_items(f, items, low, chunksize),
            _ => {
                let items: Vec<A> = items.collect();
                let len = items.len();
                self.map_items(f, items.into_iter(), len, chunksize)
            }
        }
    }

    /// `map_async` of `items`, which says it has `len` of them.
    fn map_items<F, A, R>(
        &self,
        f: F,
        items: impl Iterator<Item = A>,
        len: usize,
        chunksize: Option<usize>,
    ) -> Result<MapResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let chunksize = chunksize
            .unwrap_or_else(|| default_chunksize(len, self.shared.limits().processes))
            .max(1);
        let map = result::MapState::new();
        let count = self.submit_chunks(TaskTarget::of(&f), items, chunksize, |start, n| {
            let sink = map.clone();
            Box::new(move |outcome| sink.fill(start, n, outcome))
        })?;
        // The iterator's word is not to be trusted with the end of the map.
        map.submitted(count);
        Ok(MapResult::new(map, self.shared.clone()))
    }

    /// Like [`map`](Self::map), but yields results in order as they come, without waiting for
    /// the last (Python's `imap`; chunks of `chunksize`, default 1).
    ///
    /// # Errors
    /// As for [`map_async`](Self::map_async); each item's own failure comes from the iterator.
    pub fn imap<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<IMapIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_inner(f, items, chunksize, true)
    }

    /// Like [`imap`](Self::imap), but yields each result as soon as it arrives, in any order
    /// (Python's `imap_unordered`).
    ///
    /// # Errors
    /// As for [`imap`](Self::imap).
    pub fn imap_unordered<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<IMapIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_inner(f, items, chunksize, false)
    }

    fn imap_inner<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        ordered: bool,
    ) -> Result<IMapIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunksize = chunksize.unwrap_or(1).max(1);
        let (iter, sender) = IMapIter::<R>::new(items.len(), ordered);
        self.submit_chunks(
            TaskTarget::of(&f),
            items.into_iter(),
            chunksize,
            |start, n| {
                let sender = sender.clone();
                Box::new(move |outcome| sender.send(start, n, outcome))
            },
        )?;
        Ok(iter)
    }

    /// Submits `items` in chunks of `chunksize`; `deliver(start, len)` makes the delivery of
    /// the chunk of items `start..start + len`. How many items there were.
    fn submit_chunks<A: Serialize + 'static>(
        &self,
        target: TaskTarget,
        mut items: impl Iterator<Item = A>,
        chunksize: usize,
        mut deliver: impl FnMut(usize, usize) -> Deliver,
    ) -> Result<usize> {
        let mut chunk = Vec::with_capacity(chunksize.min(CHUNK_BUFFER_ITEMS));
        let mut start = 0;
        loop {
            chunk.clear();
            chunk.extend(items.by_ref().take(chunksize));
            if chunk.is_empty() {
                return Ok(start);
            }
            self.shared.submit(
                target,
                self.shared.encode_args(&chunk)?,
                deliver(start, chunk.len()),
            )?;
            start += chunk.len();
        }
    }

    /// Accepts no more tasks; those queued still run (Python's `close`).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Waits for every queued task, then stops the workers (Python's `join`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool was not closed
    /// first, as in CPython.
    pub fn join(&self) -> Result<()> {
        self.shared.finish()?;
        self.stop_handler();
        Ok(())
    }

    /// Stops the workers at once; tasks not finished fail with
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) (Python's `terminate`).
    pub fn terminate(&self) {
        self.shared.terminate();
        self.stop_handler();
    }

    fn stop_handler(&self) {
        let handler = self.handler.lock().ignore_poison().take();
        if let Some(h) = handler
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }

    /// Submits `f(args)` with its own delivery; the task's id (for the executor).
    pub(crate) fn submit_with<F, A, R>(
        &self,
        f: F,
        args: A,
        deliver: impl FnOnce(Result<R>) + Send + 'static,
    ) -> Result<u64>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items = encode_args(&[args])?;
        let deliver: Deliver = Box::new(move |outcome| deliver(result::single(outcome)));
        self.shared.submit(TaskTarget::of(&f), items, deliver)
    }

    /// Something a waiter can turn to take results itself (see [`Pump`]).
    pub(crate) fn pump(&self) -> Arc<dyn Pump> {
        self.shared.clone()
    }

    /// Where task `id` is.
    pub(crate) fn task_state(&self, id: u64) -> TaskState {
        self.shared.task_state(id)
    }

    /// Removes task `id` if no worker has it yet; whether it did (its delivery never runs).
    pub(crate) fn cancel_task(&self, id: u64) -> bool {
        self.shared.cancel_task(id)
    }

    /// Takes every task that no worker has yet out of the pool; their ids (their deliveries
    /// never run).
    pub(crate) fn cancel_queued(&self) -> Vec<u64> {
        self.shared.cancel_queued()
    }

    /// The pids of the current workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.shared.worker_pids()
    }

    /// What the pool has done and holds now: tasks submitted, succeeded and failed, workers
    /// replaced, tasks waiting and running, and how long tasks took; in Prometheus' text format
    /// with [`PoolMetrics::to_prometheus`], for a service to export.
    pub fn metrics(&self) -> PoolMetrics {
        self.shared.metrics()
    }

    /// A pool whose tasks run on [`BrokerWorker`]s, runs of this same program on any machine
    /// that reaches the broker at `url` (feature `broker`): the same methods, with the
    /// functions sent by the names a [`TaskRegistry`] gives them. See [`BrokerPoolBuilder`].
    #[cfg(feature = "broker")]
    pub fn broker(url: impl Into<String>, queue: impl Into<String>) -> BrokerPoolBuilder {
        BrokerPoolBuilder::new(url.into(), queue.into())
    }

    /// Runs `target` over a chunk of arguments already encoded (a broker worker's task),
    /// delivering the chunk's encoded results.
    #[cfg(feature = "broker")]
    pub(crate) fn submit_raw(
        &self,
        target: TaskTarget,
        items: worker::TaskBytes,
        deliver: Deliver,
        options: TaskOptions,
    ) -> Result<u64> {
        self.shared
            .submit_with_options(target, items, deliver, options)
    }

    /// Sends up to `n` tasks ahead to each worker process from now on (2 by default: one
    /// running, the next ready). For a broker worker of quick tasks, whose processes would
    /// otherwise run dry between two wake-ups of the pool's handler.
    #[cfg(feature = "broker")]
    pub(crate) fn set_tasks_ahead(&self, n: usize) {
        self.shared.set_tasks_ahead(n);
    }

    fn from_parts(shared: Arc<Supervisor>, handler: JoinHandle<()>) -> Pool {
        Pool {
            shared,
            handler: Mutex::new(Some(handler)),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.shared.is_finished() {
            self.terminate();
        } else {
            self.stop_handler();
        }
    }
}

/// CPython's choice: `ceil(len / (4 × processes))`.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}
