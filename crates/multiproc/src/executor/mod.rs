//! `ProcessPoolExecutor` and `ThreadPoolExecutor` (Python's `concurrent.futures`), with
//! [`Future`], [`wait`] and [`as_completed`].

#![forbid(unsafe_code)]

mod future;
mod thread_pool;

pub use future::{
    AsCompleted, Future, ReturnWhen, Waitable, Waited, as_completed, as_completed_deadline,
    as_completed_timeout, wait, wait_deadline, wait_timeout,
};
pub use thread_pool::{ThreadIMapIter, ThreadPool};

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::future::{CancelOutcome, Cell};
use crate::error::{Error, Result};
use crate::pool::{IMapIter, Pool, PoolBuilder, TaskState};
use crate::sync::IgnorePoison;
use crate::sync::lock;
use crate::sync::spin::spin_until;

/// Marks the future of a task that the executor dropped unrun (on `shutdown`).
type MarkCancelled = Box<dyn FnOnce() + Send>;

/// Runs functions in worker processes, giving [`Future`]s (Python's
/// `concurrent.futures.ProcessPoolExecutor`). It is a [`Pool`] underneath, with the same
/// failure semantics: a task whose worker dies fails with
/// [`ErrorKind::WorkerLost`](crate::ErrorKind::WorkerLost), and the executor carries on.
///
/// # Examples
///
/// ```
/// use multiproc::ProcessPoolExecutor;
///
/// fn cube(x: i64) -> i64 { x * x * x }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let f = ex.submit(cube, 3)?;
/// assert_eq!(f.result()?, 27);
/// let cubes: Vec<i64> = ex.map(cube, 1..=4, None)?.collect::<Result<_, _>>()?;
/// assert_eq!(cubes, [1, 8, 27, 64]);
/// ex.shutdown(true, false)?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ProcessPoolExecutor {
    pool: Arc<Pool>,
    /// Tasks submitted and not yet finished, to mark cancelled on `shutdown`.
    pending: Arc<Mutex<HashMap<u64, MarkCancelled>>>,
}

impl fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPoolExecutor")
            .field("pool", &self.pool)
            .finish()
    }
}

impl ProcessPoolExecutor {
    /// An executor with `max_workers` worker processes.
    ///
    /// # Errors
    /// As for [`PoolBuilder::build`].
    pub fn new(max_workers: usize) -> Result<Self> {
        ProcessPoolExecutor::from_builder(Pool::builder().processes(max_workers))
    }

    /// An executor over a pool set up with a builder (initializer, task timeout, retries…).
    ///
    /// # Errors
    /// As for [`PoolBuilder::build`].
    pub fn from_builder(builder: PoolBuilder) -> Result<Self> {
        Ok(ProcessPoolExecutor::from_pool(builder.build()?))
    }

    /// An executor over a pool already built: one on a broker, whose workers are on other
    /// machines (`Pool::broker`, feature `broker`), or any other.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Pool, ProcessPoolExecutor};
    ///
    /// let executor = ProcessPoolExecutor::from_pool(Pool::new(2)?);
    /// assert_eq!(executor.submit(|x: u32| x * 2, 21)?.result()?, 42);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn from_pool(pool: Pool) -> Self {
        ProcessPoolExecutor {
            pool: Arc::new(pool),
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Starts `f(args)` in a worker.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) after
    /// [`shutdown`](Self::shutdown); arguments that cannot be serialized.
    pub fn submit<F, A, R>(&self, f: F, args: A) -> Result<Future<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let id = Arc::new(AtomicU64::new(u64::MAX));
        let pool: Weak<Pool> = Arc::downgrade(&self.pool);
        let (cancel_id, probe_id, probe_pool) = (id.clone(), id.clone(), pool.clone());
        let cell = Cell::new(
            move || match pool.upgrade() {
                Some(p) if p.cancel_task(cancel_id.load(Ordering::Acquire)) => {
                    CancelOutcome::Cancelled
                }
                _ => CancelOutcome::TooLate,
            },
            move || {
                probe_pool.upgrade().is_some_and(|p| {
                    p.task_state(probe_id.load(Ordering::Acquire)) == TaskState::Sent
                })
            },
            Some(self.pool.pump()),
        );
        let (finish, mark) = (cell.clone(), Arc::downgrade(&cell));
        let pending = self.pending.clone();
        let done_id = id.clone();
        // Registered before submitting, so a task that finishes at once finds its entry.
        let mut table = lock(&self.pending);
        let task = self.pool.submit_with(f, args, move |outcome| {
            lock(&pending).remove(&done_id.load(Ordering::Acquire));
            finish.finish(outcome);
        })?;
        id.store(task, Ordering::Release);
        table.insert(
            task,
            Box::new(move || {
                if let Some(cell) = mark.upgrade() {
                    cell.mark_cancelled();
                }
            }),
        );
        drop(table);
        Ok(Future::new(cell))
    }

    /// Applies `f` to every item in workers; yields results in order as they come. With a
    /// `timeout` (from this call), a result not there in time yields a
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error.
    ///
    /// # Errors
    /// As for [`submit`](Self::submit).
    pub fn map<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        timeout: Option<Duration>,
    ) -> Result<ExecutorMap<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let inner = self.pool.imap(f, items, None)?;
        Ok(ExecutorMap {
            inner: MapInner::Process(inner),
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            timeout: timeout.unwrap_or_default(),
        })
    }

    /// Accepts no more tasks; with `cancel_futures`, tasks not started are cancelled; with
    /// `wait`, waits for the rest and stops the workers (Python's `shutdown`).
    ///
    /// # Errors
    /// From stopping the workers.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) -> Result<()> {
        self.pool.close();
        if cancel_futures {
            for id in self.pool.cancel_queued() {
                if let Some(mark) = lock(&self.pending).remove(&id) {
                    mark();
                }
            }
        }
        if wait {
            self.pool.join()?;
        }
        Ok(())
    }
}

enum MapInner<R> {
    Process(IMapIter<R>),
    Thread(std::vec::IntoIter<Future<R>>),
}

/// The iterator of an executor's `map`: results in item order.
pub struct ExecutorMap<R> {
    inner: MapInner<R>,
    deadline: Option<Instant>,
    timeout: Duration,
}

impl<R> fmt::Debug for ExecutorMap<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorMap").finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + 'static> Iterator for ExecutorMap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        match &mut self.inner {
            MapInner::Process(iter) => match left {
                None => iter.next(),
                Some(left) => iter
                    .next_timeout(left)
                    .map(|r| r.map_err(|e| retime(e, self.timeout))),
            },
            MapInner::Thread(futures) => {
                let f = futures.next()?;
                let result = match left {
                    None => f.result(),
                    Some(left) => f.result_timeout(left),
                };
                Some(result.map_err(|e| retime(e, self.timeout)))
            }
        }
    }
}

/// A timeout error names the map's whole timeout.
fn retime(e: Error, timeout: Duration) -> Error {
    match e {
        Error::Timeout { .. } => Error::timeout("executor map", timeout),
        other => other,
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct ThreadQueue {
    /// `(id, run, mark cancelled)`.
    jobs: VecDeque<(u64, Job, MarkCancelled)>,
    next_id: u64,
    shutdown: bool,
    threads: usize,
    idle: usize,
}

struct ThreadShared {
    queue: Mutex<ThreadQueue>,
    /// Jobs in the queue, readable without the lock (idle workers spin on it briefly).
    queued: AtomicUsize,
    work: Condvar,
    max_workers: usize,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// Runs closures on a pool of threads, giving [`Future`]s (Python's
/// `concurrent.futures.ThreadPoolExecutor`). Closures may capture; a panic fails its future
/// with the message and the thread carries on. Threads start as tasks arrive, up to
/// `max_workers`.
///
/// # Examples
///
/// ```
/// use multiproc::ThreadPoolExecutor;
///
/// let ex = ThreadPoolExecutor::new(4)?;
/// let word = String::from("captured");
/// let f = ex.submit(move || word.len())?;
/// assert_eq!(f.result()?, 8);
/// ex.shutdown(true, false);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ThreadPoolExecutor {
    shared: Arc<ThreadShared>,
}

impl fmt::Debug for ThreadPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolExecutor")
            .field("max_workers", &self.shared.max_workers)
            .finish()
    }
}

impl ThreadPoolExecutor {
    /// An executor with at most `max_workers` threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for 0 workers.
    pub fn new(max_workers: usize) -> Result<Self> {
        if max_workers == 0 {
            return Err(Error::invalid("thread pool", "needs at least one thread"));
        }
        Ok(ThreadPoolExecutor {
            shared: Arc::new(ThreadShared {
                queue: Mutex::new(ThreadQueue {
                    jobs: VecDeque::new(),
                    next_id: 0,
                    shutdown: false,
                    threads: 0,
                    idle: 0,
                }),
                queued: AtomicUsize::new(0),
                work: Condvar::new(),
                max_workers,
                handles: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` on a pool thread.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) after
    /// [`shutdown`](Self::shutdown); a thread that cannot be started.
    pub fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<Future<R>> {
        let id = Arc::new(AtomicU64::new(u64::MAX));
        let shared = Arc::downgrade(&self.shared);
        let cancel_id = id.clone();
        let cell = Cell::new(
            move || {
                let Some(shared) = shared.upgrade() else {
                    return CancelOutcome::TooLate;
                };
                let mut q = lock(&shared.queue);
                let target = cancel_id.load(Ordering::Acquire);
                match q.jobs.iter().position(|(id, _, _)| *id == target) {
                    Some(at) => {
                        q.jobs.remove(at);
                        shared.queued.fetch_sub(1, Ordering::Release);
                        CancelOutcome::Cancelled
                    }
                    None => CancelOutcome::TooLate,
                }
            },
            || false,
            None,
        );
        let run = cell.clone();
        let unrun = Arc::downgrade(&cell);
        let mark: MarkCancelled = Box::new(move || {
            if let Some(cell) = unrun.upgrade() {
                cell.mark_cancelled();
            }
        });
        let job: Job = Box::new(move || {
            if !run.set_running() {
                return; // cancelled meanwhile
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            run.finish(outcome.map_err(|payload| {
                let message = crate::error::panic_message(&*payload);
                Error::Panicked {
                    name: std::thread::current()
                        .name()
                        .unwrap_or("thread pool worker")
                        .to_string(),
                    pid: std::process::id() as i32,
                    message,
                    location: None,
                }
            }));
        });
        let mut q = lock(&self.shared.queue);
        if q.shutdown {
            return Err(Error::invalid("thread pool", "shut down: no new tasks"));
        }
        let task = q.next_id;
        q.next_id += 1;
        id.store(task, Ordering::Release);
        q.jobs.push_back((task, job, mark));
        self.shared.queued.fetch_add(1, Ordering::Release);
        if q.idle > 0 {
            self.shared.work.notify_one();
        } else if q.threads < self.shared.max_workers {
            q.threads += 1;
            let n = q.threads;
            drop(q);
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ThreadPoolExecutor-{n}"))
                .spawn(move || shared.work_loop())
                .map_err(|e| Error::io("thread pool: cannot start a thread", e))?;
            lock(&self.shared.handles).push(handle);
        }
        Ok(Future::new(cell))
    }

    /// Applies `f` to every item on the pool's threads; yields results in order. With a
    /// `timeout` (from this call), a result not there in time yields a
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error.
    ///
    /// # Errors
    /// As for [`submit`](Self::submit).
    pub fn map<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl Fn(A) -> R + Send + Sync + 'static,
        items: impl IntoIterator<Item = A>,
        timeout: Option<Duration>,
    ) -> Result<ExecutorMap<R>> {
        let f = Arc::new(f);
        let futures = items
            .into_iter()
            .map(|a| {
                let f = f.clone();
                self.submit(move || f(a))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ExecutorMap {
            inner: MapInner::Thread(futures.into_iter()),
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            timeout: timeout.unwrap_or_default(),
        })
    }

    /// Accepts no more tasks; with `cancel_futures`, tasks not started are cancelled; with
    /// `wait`, waits for the threads to finish the rest (Python's `shutdown`).
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        let dropped = {
            let mut q = lock(&self.shared.queue);
            q.shutdown = true;
            let dropped: Vec<(u64, Job, MarkCancelled)> = if cancel_futures {
                self.shared.queued.store(0, Ordering::Release);
                q.jobs.drain(..).collect()
            } else {
                Vec::new()
            };
            self.shared.work.notify_all();
            dropped
        };
        for (_, _, mark) in dropped {
            mark();
        }
        if wait {
            let handles: Vec<_> = lock(&self.shared.handles).drain(..).collect();
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

impl ThreadShared {
    fn take_job(&self) -> Option<Job> {
        let mut q = lock(&self.queue);
        loop {
            if let Some((_, job, _)) = q.jobs.pop_front() {
                self.queued.fetch_sub(1, Ordering::Release);
                return Some(job);
            }
            if q.shutdown {
                return None;
            }
            // Spin briefly outside the lock: the next task often comes within microseconds,
            // and a wake-up through the kernel costs tens.
            drop(q);
            spin_until(|| self.queued.load(Ordering::Acquire) > 0);
            q = lock(&self.queue);
            if !q.jobs.is_empty() || q.shutdown {
                continue;
            }
            q.idle += 1;
            q = self.work.wait(q).ignore_poison();
            q.idle -= 1;
        }
    }

    fn work_loop(&self) {
        while let Some(job) = self.take_job() {
            job();
        }
    }
}

impl Drop for ThreadPoolExecutor {
    fn drop(&mut self) {
        self.shutdown(true, false);
    }
}

impl Drop for ProcessPoolExecutor {
    fn drop(&mut self) {
        let _ = self.shutdown(true, false);
    }
}
