//! `ThreadPool`: the [`Pool`](crate::Pool) API on threads (Python's
//! `multiprocessing.pool.ThreadPool`), built over [`ThreadPoolExecutor`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::{Future, ThreadPoolExecutor};
use crate::error::{Error, Result};

/// A pool of threads with the [`Pool`](crate::Pool) API (Python's
/// `multiprocessing.pool.ThreadPool`).
///
/// Unlike a process pool's, tasks are closures that may capture (anything `Send + 'static`);
/// nothing is serialized. A task that panics fails alone, with its message
/// ([`ErrorKind::Panicked`](crate::ErrorKind::Panicked)), and its thread carries on.
/// [`apply_async`](Self::apply_async) gives the crate's [`Future`], which plays the role of
/// Python's `AsyncResult` (`get()` is [`Future::result`]`(None)`, `ready()` is
/// [`Future::done`]). Threads start as tasks arrive, up to the pool's size.
///
/// Dropping the pool [terminates](Self::terminate) it, as CPython's context manager does:
/// tasks not started are cancelled and the drop waits for the running ones. Call
/// [`close`](Self::close) and [`join`](Self::join) to let queued tasks finish.
///
/// # Examples
///
/// ```
/// use multiproc::ThreadPool;
///
/// let pool = ThreadPool::new(4)?;
/// let offset = 100;
/// let shifted = pool.map(move |x: u32| x + offset, 0..5)?;
/// assert_eq!(shifted, [100, 101, 102, 103, 104]);
/// let name = String::from("ada");
/// let pending = pool.apply_async(move || name.len())?;
/// assert_eq!(pending.result()?, 3);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// Threads cannot be killed: [`terminate`](Self::terminate) (and so a drop) waits for the
/// tasks already running. A task that never returns makes it hang. Neither it nor
/// [`join`](Self::join) may be called from one of the pool's own tasks.
pub struct ThreadPool {
    executor: ThreadPoolExecutor,
    threads: usize,
    closed: AtomicBool,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish()
    }
}

impl ThreadPool {
    /// A pool of at most `threads` threads.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// assert_eq!(pool.apply(|| 6 * 7)?, 42);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for 0 threads.
    pub fn new(threads: usize) -> Result<ThreadPool> {
        Ok(ThreadPool {
            executor: ThreadPoolExecutor::new(threads)?,
            threads,
            closed: AtomicBool::new(false),
        })
    }

    /// Runs `f` on a pool thread and waits for its value.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// let words = vec!["a", "bc"];
    /// assert_eq!(pool.apply(move || words.concat())?, "abc");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The task's panic ([`ErrorKind::Panicked`](crate::ErrorKind::Panicked));
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool is closed or the
    /// task was cancelled by [`terminate`](Self::terminate).
    pub fn apply<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        self.apply_async(f)?.result()
    }

    /// Starts `f` on a pool thread; its value arrives in the returned [`Future`] (Python's
    /// `AsyncResult`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let pending: Vec<_> = (0..4u64)
    ///     .map(|i| pool.apply_async(move || i * i))
    ///     .collect::<Result<_, _>>()?;
    /// let squares: Vec<u64> = pending.iter().map(|f| f.result()).collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [0, 1, 4, 9]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool is closed; a
    /// thread that cannot be started.
    pub fn apply_async<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<Future<R>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        self.executor.submit(f)
    }

    /// [`apply_async`](Self::apply_async) with a `callback` for the value and an
    /// `error_callback` for a failure. They run on the pool thread that ran the task, before
    /// the [`Future`] is done (CPython runs them on its result-handler thread); keep them
    /// short. A callback that panics is reported on stderr; the task's outcome stands.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let f = pool.apply_async_with(|| 21 * 2, move |v: &i32| tx.send(*v).unwrap(), |_| {})?;
    /// assert_eq!(f.result()?, 42);
    /// assert_eq!(rx.try_recv().unwrap(), 42, "the callback ran before the result was ready");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`apply_async`](Self::apply_async).
    ///
    /// # Caveats
    /// Neither callback runs for a task cancelled by [`terminate`](Self::terminate); its
    /// future fails with [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState).
    pub fn apply_async_with<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&Error) + Send + 'static,
    ) -> Result<Future<R>> {
        // The task waits at this gate until its callbacks are registered, so they are there
        // before it can finish.
        let (open, gate) = mpsc::channel::<()>();
        let future = self.apply_async(move || {
            let _ = gate.recv();
            f()
        })?;
        future.add_done_callback(move |outcome| match outcome {
            Ok(value) => callback(value),
            Err(e) => error_callback(e),
        });
        drop(open);
        Ok(future)
    }

    /// Applies `f` to every item on the pool's threads and returns the values in item order,
    /// once all are done.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(3)?;
    /// let lens = pool.map(|s: &str| s.len(), ["a", "bb", "ccc"])?;
    /// assert_eq!(lens, [1, 2, 3]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first failing item's error (in item order);
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool is closed.
    pub fn map<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl Fn(A) -> R + Send + Sync + 'static,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        let futures = self.submit_each(f, items, None)?;
        // Wait for every item, as CPython does, before giving the first failure.
        let outcomes: Vec<Result<R>> = futures.iter().map(|f| f.result()).collect();
        outcomes.into_iter().collect()
    }

    /// Python's `starmap`: `map` where each item is the tuple of the target's arguments (in
    /// Rust every target already takes one argument, so this is [`map`](Self::map)).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let sums = pool.starmap(|(a, b): (i32, i32)| a + b, [(1, 2), (3, 4)])?;
    /// assert_eq!(sums, [3, 7]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`map`](Self::map).
    pub fn starmap<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl Fn(A) -> R + Send + Sync + 'static,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        self.map(f, items)
    }

    /// Like [`map`](Self::map), but yields results in item order as they come, without
    /// waiting for the last (Python's `imap`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let mut doubled = pool.imap(|x: u32| x * 2, 1..=3)?;
    /// assert_eq!(doubled.next().transpose()?, Some(2));
    /// assert_eq!(doubled.collect::<Result<Vec<_>, _>>()?, [4, 6]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool is closed; each
    /// item's own failure comes from the iterator.
    pub fn imap<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl Fn(A) -> R + Send + Sync + 'static,
        items: impl IntoIterator<Item = A>,
    ) -> Result<ThreadIMapIter<R>> {
        let futures = self.submit_each(f, items, None)?;
        Ok(ThreadIMapIter {
            inner: IMapInner::Ordered(futures.into()),
        })
    }

    /// Like [`imap`](Self::imap), but yields each result as soon as its task finishes, in any
    /// order (Python's `imap_unordered`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let mut squares = pool
    ///     .imap_unordered(|x: u32| x * x, 1..=4)?
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// squares.sort();
    /// assert_eq!(squares, [1, 4, 9, 16]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`imap`](Self::imap).
    pub fn imap_unordered<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl Fn(A) -> R + Send + Sync + 'static,
        items: impl IntoIterator<Item = A>,
    ) -> Result<ThreadIMapIter<R>> {
        let (tx, finished) = mpsc::channel();
        let futures = self.submit_each(f, items, Some(tx))?;
        let left = futures.len();
        Ok(ThreadIMapIter {
            inner: IMapInner::Unordered {
                futures: futures.into_iter().map(Some).collect(),
                finished,
                left,
            },
        })
    }

    /// Submits `f(item)` for each item; with `finished`, each task sends its index there
    /// when it is over (returned, panicked, or dropped unrun).
    fn submit_each<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl Fn(A) -> R + Send + Sync + 'static,
        items: impl IntoIterator<Item = A>,
        finished: Option<mpsc::Sender<usize>>,
    ) -> Result<Vec<Future<R>>> {
        let f = Arc::new(f);
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let f = f.clone();
                let over = finished.clone().map(|tx| Finished { tx, index });
                self.apply_async(move || {
                    let _over = over;
                    f(item)
                })
            })
            .collect()
    }

    /// Accepts no more tasks; those queued still run (Python's `close`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// pool.close();
    /// assert!(pool.apply(|| 1).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.executor.shutdown(false, false);
    }

    /// Waits for every queued task, then for the threads to end (Python's `join`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let f = pool.apply_async(|| "done")?;
    /// assert!(pool.join().is_err(), "close() first");
    /// pool.close();
    /// pool.join()?;
    /// assert!(f.done());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool was not closed
    /// (or terminated) first, as in CPython.
    ///
    /// # Caveats
    /// Not from one of the pool's own tasks: a thread cannot wait for itself.
    pub fn join(&self) -> Result<()> {
        if !self.closed.load(Ordering::Acquire) {
            return Err(Error::invalid(
                "thread pool",
                "join() needs close() or terminate() first",
            ));
        }
        self.executor.shutdown(true, false);
        Ok(())
    }

    /// Accepts no more tasks, cancels those not started (their futures fail with
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState)), then waits for the
    /// running ones (Python's `terminate`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// let (started_tx, started) = mpsc::channel();
    /// let (release, gate) = mpsc::channel::<()>();
    /// let running = pool.apply_async(move || {
    ///     started_tx.send(()).unwrap();
    ///     gate.recv().is_err() // ends when the last sender is gone
    /// })?;
    /// started.recv().unwrap();
    /// // The only sender goes with this task: cancelled unrun, it lets the running one end.
    /// let queued = pool.apply_async(move || {
    ///     drop(release);
    ///     2
    /// })?;
    /// pool.terminate();
    /// assert!(running.result()?);
    /// assert!(queued.cancelled());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Caveats
    /// Threads cannot be killed: unlike [`Pool::terminate`](crate::Pool::terminate), this
    /// waits for the tasks already running, and hangs if one never returns.
    pub fn terminate(&self) {
        self.closed.store(true, Ordering::Release);
        self.executor.shutdown(true, true);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn closed() -> Error {
    Error::invalid("thread pool", "closed: no new tasks")
}

/// Sends a task's index when the task is over: dropped after it ran, while it unwinds, or
/// unrun when cancelled.
struct Finished {
    tx: mpsc::Sender<usize>,
    index: usize,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.tx.send(self.index);
    }
}

enum IMapInner<R> {
    Ordered(VecDeque<Future<R>>),
    Unordered {
        futures: Vec<Option<Future<R>>>,
        /// Indexes of the tasks that are over, in the order they ended.
        finished: mpsc::Receiver<usize>,
        left: usize,
    },
}

/// The iterator of [`ThreadPool::imap`] and [`ThreadPool::imap_unordered`]: yields each
/// item's result as it becomes available (in item order for `imap`).
pub struct ThreadIMapIter<R> {
    inner: IMapInner<R>,
}

impl<R> fmt::Debug for ThreadIMapIter<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ordered, left) = match &self.inner {
            IMapInner::Ordered(futures) => (true, futures.len()),
            IMapInner::Unordered { left, .. } => (false, *left),
        };
        f.debug_struct("ThreadIMapIter")
            .field("ordered", &ordered)
            .field("left", &left)
            .finish()
    }
}

impl<R> ThreadIMapIter<R> {
    /// The next result, waiting at most `timeout` (Python's `next(timeout)`); `None` at the
    /// end.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// let mut it = pool.imap(|x: u8| x + 1, [1])?;
    /// assert_eq!(it.next_timeout(Duration::from_secs(30)).transpose()?, Some(2));
    /// assert!(it.next_timeout(Duration::from_secs(30)).is_none());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if the next result did not come in
    /// time (call again to keep waiting); otherwise the item's own failure.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_within(Some(timeout))
    }

    fn next_within(&mut self, timeout: Option<Duration>) -> Option<Result<R>> {
        match &mut self.inner {
            IMapInner::Ordered(futures) => {
                let next = futures.front()?;
                let done = match timeout {
                    None => {
                        next.wait();
                        true
                    }
                    Some(t) => next.wait_timeout(t),
                };
                if !done {
                    return Some(Err(imap_timeout(timeout)));
                }
                futures.pop_front().map(|f| f.result())
            }
            IMapInner::Unordered {
                futures,
                finished,
                left,
            } => {
                if *left == 0 {
                    return None;
                }
                let index = match timeout {
                    None => finished.recv().ok(),
                    Some(t) => match finished.recv_timeout(t) {
                        Ok(index) => Some(index),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            return Some(Err(imap_timeout(timeout)));
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    },
                };
                // Every task reports once; should the reports stop, take the rest in order.
                let future = index
                    .and_then(|i| futures.get_mut(i).and_then(Option::take))
                    .or_else(|| futures.iter_mut().find_map(Option::take))?;
                *left -= 1;
                Some(future.result())
            }
        }
    }
}

fn imap_timeout(timeout: Option<Duration>) -> Error {
    Error::timeout("thread pool imap", timeout.unwrap_or_default())
}

impl<R> Iterator for ThreadIMapIter<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_within(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match &self.inner {
            IMapInner::Ordered(futures) => futures.len(),
            IMapInner::Unordered { left, .. } => *left,
        };
        (left, Some(left))
    }
}
