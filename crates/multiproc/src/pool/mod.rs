//! `Pool`: worker processes that run tasks, where a worker that dies fails only its task.
//!
//! Each worker has a task queue of its own, and all report on one result queue. The pool
//! keeps, per worker, the tasks it sent in order: the first one is the one running. A
//! result-handler thread in the parent takes results, runs callbacks, and supervises: when a
//! worker dies it first drains the result queue (so nothing the worker finished is lost), then
//! fails the task the worker was running (`WorkerLost`, or `Timeout` if the pool killed it for
//! running too long, or retries it), hands the worker's other tasks to the rest, and starts a
//! replacement.

#![forbid(unsafe_code)]

mod result;
mod worker;

pub use result::{AsyncResult, IMapIter, MapResult};
pub(crate) use result::{Pump, spin_pumping};

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::result::Slot;
use self::worker::{
    FromWorker, FromWorkerRef, INITIALIZER_FAILED, TaskBytes, ToWorker, WorkerArgs, worker_main,
};
use crate::error::{Error, Result};
use crate::process::{Process, StartMethod, TaskTarget};
use crate::queue::ShmQueueOf;
use crate::sync::IgnorePoison;

/// Tasks sent ahead to one worker (one running, the next ready).
const AHEAD: usize = 2;
/// The most items of a chunk that are reserved room for up front (more grow as they come).
const CHUNK_BUFFER_ITEMS: usize = 1 << 16;
/// How often the handler looks whether waiters still take results themselves.
const PUMPING_LOOK: Duration = Duration::from_millis(1);
/// How often the handler looks at the workers when no result comes.
const SUPERVISE_EVERY: Duration = Duration::from_millis(20);

/// A task's serialized `Vec<Result<R, ItemFailure>>`, or why the task failed as a whole.
pub(crate) type TaskOutcome<'a> = std::result::Result<&'a [u8], Error>;
type Deliver = Box<dyn for<'a> FnOnce(TaskOutcome<'a>) + Send>;

struct TaskEntry {
    target: TaskTarget,
    items: TaskBytes,
    retries_left: u32,
    deliver: Deliver,
}

struct Worker {
    process: Option<Process<()>>,
    tasks: ShmQueueOf<ToWorker>,
    /// Task ids sent to this worker, oldest (running) first.
    sent: VecDeque<u64>,
    /// Since when the oldest sent task may have been running.
    front_since: Instant,
    name: String,
    pid: i32,
}

struct State {
    workers: Vec<Worker>,
    backlog: VecDeque<u64>,
    tasks: HashMap<u64, TaskEntry>,
    next_id: u64,
    closed: bool,
    /// Terminated, or joined: the handler stops.
    finished: bool,
    /// Why the pool cannot run tasks (its initializer fails): no more workers are started.
    broken: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Threads taking results themselves right now (see `Pump`); the handler steps aside.
    pumpers: std::sync::atomic::AtomicUsize,
    /// The handler thread, to wake when the last pumper goes to sleep.
    handler_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Signalled when the last task is done, and when the pool finishes.
    idle: Condvar,
    results: ShmQueueOf<FromWorker>,
    config: Config,
    /// Buffers of finished tasks, for the next tasks' arguments: memory already mapped, so a
    /// map after the first takes no page faults for them.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
}

/// The most spare argument buffers a pool keeps.
const SPARE_BUFFERS: usize = 8;
/// The largest buffer kept for reuse.
const SPARE_BUFFER_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct Config {
    processes: usize,
    initializer: Option<(TaskTarget, TaskBytes)>,
    max_tasks_per_child: u64,
    task_timeout: Option<Duration>,
    retries: u32,
    start_method: StartMethod,
}

/// Sets up a [`Pool`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// fn setup(greeting: String) { let _ = greeting; }
///
/// let pool = multiproc::Pool::builder()
///     .processes(2)
///     .initializer(setup, "hello".to_string())
///     .max_tasks_per_child(100)
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(pool.apply(|x: u32| x + 1, 41)?, 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "a builder does nothing until built"]
pub struct PoolBuilder {
    config: Config,
    error: Option<Error>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.config.processes)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    /// The number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.config.processes = n;
        self
    }

    /// A function each worker runs once when it starts (Python's `initializer`/`initargs`).
    pub fn initializer<F, A, R>(mut self, f: F, args: A) -> Self
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        match encode_args(&[args]) {
            Ok(bytes) => self.config.initializer = Some((TaskTarget::of(&f), bytes)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Replace each worker after it ran this many tasks (Python's `maxtasksperchild`; a chunk
    /// of `map` counts as one task).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.config.max_tasks_per_child = n;
        self
    }

    /// Kill a worker whose task runs longer than this and fail the task with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (not in CPython).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// Run a task again, up to `n` times, when its worker dies or times out under it.
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }

    /// How workers are started (default [`StartMethod::Spawn`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.config.start_method = method;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for 0 processes; a worker
    /// that cannot start; an initializer argument that cannot be serialized.
    pub fn build(self) -> Result<Pool> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.config.processes == 0 {
            return Err(Error::invalid("pool", "needs at least one process"));
        }
        let results = ShmQueueOf::preallocated("pool results")?;
        let shared = Arc::new(Shared {
            pumpers: std::sync::atomic::AtomicUsize::new(0),
            handler_thread: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                workers: Vec::new(),
                backlog: VecDeque::new(),
                tasks: HashMap::new(),
                next_id: 0,
                closed: false,
                finished: false,
                broken: None,
            }),
            idle: Condvar::new(),
            results,
            config: self.config,
            spare_buffers: Mutex::new(Vec::new()),
        });
        {
            let mut state = shared.lock();
            for slot in 0..shared.config.processes {
                let worker = shared.start_worker(slot as u32)?;
                state.workers.push(worker);
            }
        }
        let handler_shared = shared.clone();
        let handler = std::thread::Builder::new()
            .name("multiproc-pool-handler".into())
            .spawn(move || handler_shared.handle())
            .map_err(|e| Error::io("pool: cannot start its result handler", e))?;
        let _ = shared.handler_thread.set(handler.thread().clone());
        Ok(Pool {
            shared,
            handler: Mutex::new(Some(handler)),
        })
    }
}

/// Serializes a chunk of arguments.
fn encode_args<A: Serialize + 'static>(args: &[A]) -> Result<TaskBytes> {
    encode_args_into(args, Vec::new())
}

/// Serializes a chunk of arguments into `bytes` (emptied first).
fn encode_args_into<A: Serialize + 'static>(args: &[A], mut bytes: Vec<u8>) -> Result<TaskBytes> {
    bytes.clear();
    crate::process::chunk::encode_items("pool task arguments", args, &mut bytes)?;
    Ok(TaskBytes(Arc::new(bytes)))
}

impl Shared {
    /// Encodes a chunk of arguments into a spare buffer if there is one.
    fn encode_args<A: Serialize + 'static>(&self, args: &[A]) -> Result<TaskBytes> {
        let spare = self.spare_buffers.lock().ignore_poison().pop();
        encode_args_into(args, spare.unwrap_or_default())
    }

    /// Keeps a finished task's buffer for the next tasks, if nothing else holds it.
    fn recycle(&self, items: TaskBytes) {
        if let Ok(bytes) = Arc::try_unwrap(items.0)
            && bytes.capacity() <= SPARE_BUFFER_BYTES
        {
            let mut spare = self.spare_buffers.lock().ignore_poison();
            if spare.len() < SPARE_BUFFERS {
                spare.push(bytes);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().ignore_poison()
    }

    fn start_worker(&self, slot: u32) -> Result<Worker> {
        let tasks = ShmQueueOf::preallocated("pool tasks")?;
        let args = WorkerArgs {
            tasks: tasks.clone(),
            results: self.results.clone(),
            slot,
            initializer: self.config.initializer.clone(),
            max_tasks: self.config.max_tasks_per_child,
        };
        static WORKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = WORKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let process = Process::new(worker_main, args)
            .name(format!("PoolWorker-{n}"))
            .daemon(true)
            .start_method(self.config.start_method)
            .start()?;
        Ok(Worker {
            pid: process.pid(),
            name: process.name().to_string(),
            process: Some(process),
            tasks,
            sent: VecDeque::new(),
            front_since: Instant::now(),
        })
    }

    /// Adds a task and sends it if a worker has room.
    fn submit(&self, target: TaskTarget, items: TaskBytes, deliver: Deliver) -> Result<u64> {
        let mut state = self.lock();
        if let Some(why) = &state.broken {
            return Err(Error::invalid("pool", format!("broken: {why}")));
        }
        if state.closed || state.finished {
            return Err(Error::invalid("pool", "closed: no new tasks"));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.tasks.insert(
            id,
            TaskEntry {
                target,
                items,
                retries_left: self.config.retries,
                deliver,
            },
        );
        state.backlog.push_back(id);
        dispatch(&mut state);
        Ok(id)
    }

    /// The result-handler thread.
    fn handle(&self) {
        let mut last_look = Instant::now();
        loop {
            // While threads take their own results (see `Pump`) stay out of their way: racing
            // them for each result, or sleeping on the queue so that every result costs the
            // worker a wake-up call, would slow both. Look again shortly.
            if self.pumpers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                std::thread::park_timeout(PUMPING_LOOK);
            } else {
                let _ = self
                    .results
                    .get_timeout_shared_with(SUPERVISE_EVERY, |what, bytes, _| {
                        self.on_report(FromWorkerRef::decode(what, bytes)?);
                        Ok(())
                    });
            }
            if last_look.elapsed() >= SUPERVISE_EVERY {
                last_look = Instant::now();
                if !self.supervise() {
                    return;
                }
            }
        }
    }

    fn on_report(&self, report: FromWorkerRef<'_>) {
        if report.id == INITIALIZER_FAILED {
            return self.break_pool(report.outcome.err().unwrap_or_default());
        }
        let (entry, now_idle) = {
            let mut state = self.lock();
            if let Some(w) = state.workers.get_mut(report.slot as usize) {
                if let Some(pos) = w.sent.iter().position(|id| *id == report.id) {
                    w.sent.remove(pos);
                }
                w.front_since = Instant::now();
            }
            let entry = state.tasks.remove(&report.id);
            dispatch(&mut state);
            (entry, state.tasks.is_empty())
        };
        if let Some(entry) = entry {
            let outcome = report
                .outcome
                .map_err(|why| Error::serialization("pool task", why));
            self.recycle(entry.items);
            run_delivery(entry.deliver, outcome);
        }
        if now_idle {
            self.idle.notify_all();
        }
    }

    /// The initializer fails: every task fails with why, and no worker is started again (a
    /// pool that would only restart failing workers would hang its callers).
    fn break_pool(&self, why: String) {
        let failed: Vec<TaskEntry> = {
            let mut state = self.lock();
            if state.broken.is_none() {
                state.broken = Some(format!("the initializer failed in a worker: {why}"));
            }
            state.backlog.clear();
            for w in &mut state.workers {
                w.sent.clear();
            }
            state.tasks.drain().map(|(_, t)| t).collect()
        };
        let message = self.lock().broken.clone().unwrap_or_default();
        for entry in failed {
            run_delivery(entry.deliver, Err(Error::invalid("pool", message.clone())));
        }
        self.idle.notify_all();
    }

    /// Looks for dead and overdue workers; false once the pool is finished.
    fn supervise(&self) -> bool {
        let mut ended = Vec::new();
        {
            let mut state = self.lock();
            if state.finished {
                return false;
            }
            for (slot, w) in state.workers.iter_mut().enumerate() {
                let Some(p) = &w.process else { continue };
                let overdue = self
                    .config
                    .task_timeout
                    .is_some_and(|t| !w.sent.is_empty() && w.front_since.elapsed() > t);
                if overdue {
                    let _ = p.kill();
                    ended.push((slot, true));
                } else if !p.is_alive() {
                    ended.push((slot, false));
                }
            }
        }
        if ended.is_empty() {
            return true;
        }
        // Whatever the dead finished is in the result queue: take it first.
        while self.pump() {}
        let mut failed = Vec::new();
        {
            let mut state = self.lock();
            for (slot, timed_out) in ended {
                let Some(mut process) = state.workers[slot].process.take() else {
                    continue;
                };
                let how = process.join(None);
                let w = &mut state.workers[slot];
                let mut sent = std::mem::take(&mut w.sent);
                let running = match how {
                    // A clean exit (max_tasks_per_child): what it was sent never started.
                    Ok(()) => None,
                    Err(e) => sent.pop_front().map(|id| {
                        let error = if timed_out {
                            Error::timeout(
                                format!("pool task on worker {:?}", w.name),
                                self.config.task_timeout.unwrap_or_default(),
                            )
                        } else {
                            lost(w, e)
                        };
                        (id, error)
                    }),
                };
                for id in sent.into_iter().rev() {
                    state.backlog.push_front(id);
                }
                if let Some((id, error)) = running {
                    let retry = state.tasks.get_mut(&id).is_some_and(|t| {
                        let again = t.retries_left > 0;
                        t.retries_left = t.retries_left.saturating_sub(1);
                        again
                    });
                    if retry {
                        state.backlog.push_front(id);
                    } else if let Some(entry) = state.tasks.remove(&id) {
                        failed.push((entry, error));
                    }
                }
                if !state.finished && state.broken.is_none() {
                    match self.start_worker(slot as u32) {
                        Ok(worker) => state.workers[slot] = worker,
                        Err(e) => {
                            // Without workers the tasks would wait for ever: fail them.
                            for (_, entry) in state.tasks.drain() {
                                failed.push((entry, clone_error(&e)));
                            }
                            state.backlog.clear();
                        }
                    }
                }
            }
            dispatch(&mut state);
        }
        let now_idle = !failed.is_empty() && self.lock().tasks.is_empty();
        for (entry, error) in failed {
            run_delivery(entry.deliver, Err(error));
        }
        if now_idle {
            self.idle.notify_all();
        }
        true
    }
}

impl Pump for Shared {
    fn enter(&self) {
        self.pumpers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn leave(&self, sleeping: bool) {
        let was = self
            .pumpers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // The last pumper goes to sleep: the handler must deliver now, not at its next look.
        if sleeping
            && was == 1
            && let Some(handler) = self.handler_thread.get()
        {
            handler.unpark();
        }
    }

    fn pump(&self) -> bool {
        self.results
            .try_get_with(|what, bytes, _| {
                self.on_report(FromWorkerRef::decode(what, bytes)?);
                Ok(())
            })
            .is_ok()
    }
}

fn lost(w: &Worker, e: Error) -> Error {
    match e {
        Error::Killed { signal, .. } => Error::WorkerLost {
            name: w.name.clone(),
            pid: w.pid,
            detail: format!(
                "killed by signal {signal} ({})",
                crate::platform::signal_name(signal)
            ),
        },
        // panic = "abort": the panic itself is the news.
        e @ Error::Panicked { .. } => e,
        other => Error::WorkerLost {
            name: w.name.clone(),
            pid: w.pid,
            detail: other.to_string(),
        },
    }
}

fn clone_error(e: &Error) -> Error {
    Error::invalid("pool", format!("cannot replace a worker: {e}"))
}

/// Runs a delivery; a panicking callback is reported and does not take the handler down.
fn run_delivery(deliver: Deliver, outcome: TaskOutcome<'_>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver(outcome))).is_err() {
        tracing::error!("a pool callback panicked; the pool carries on");
    }
}

/// Sends backlog tasks to workers with room (state locked).
fn dispatch(state: &mut State) {
    while let Some(&id) = state.backlog.front() {
        // The least loaded worker; among equals the one that finished last, which is likely
        // still spinning for work rather than asleep (a wake-up costs tens of microseconds).
        let Some((slot, _)) = state
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.process.is_some() && w.sent.len() < AHEAD)
            .min_by_key(|(_, w)| (w.sent.len(), std::cmp::Reverse(w.front_since)))
        else {
            return;
        };
        let Some(entry) = state.tasks.get(&id) else {
            state.backlog.pop_front();
            continue;
        };
        let message = ToWorker::Task {
            id,
            target: entry.target,
            items: entry.items.clone(),
        };
        let w = &mut state.workers[slot];
        if w.tasks.try_put(&message).is_err() {
            return;
        }
        if w.sent.is_empty() {
            w.front_since = Instant::now();
        }
        w.sent.push_back(id);
        state.backlog.pop_front();
    }
}

/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// Tasks are `fn` items or non-capturing closures with a serde argument, as for
/// [`Process`]. Results come back as values; a task that panics fails with its message and the
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
    shared: Arc<Shared>,
    handler: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Pool")
            .field("processes", &state.workers.len())
            .field("pending", &state.tasks.len())
            .field("closed", &state.closed)
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
        PoolBuilder {
            config: Config {
                processes: crate::cpu_count(),
                initializer: None,
                max_tasks_per_child: 0,
                task_timeout: None,
                retries: 0,
                start_method: StartMethod::default(),
            },
            error: None,
        }
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
        self.shared.submit(TaskTarget::of(&f), items, deliver)?;
        Ok(AsyncResult::new(slot, self.shared.clone()))
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
            .unwrap_or_else(|| default_chunksize(len, self.shared.config.processes))
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
        self.shared.lock().closed = true;
    }

    /// Waits for every queued task, then stops the workers (Python's `join`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the pool was not closed
    /// first, as in CPython.
    pub fn join(&self) -> Result<()> {
        let mut state = self.shared.lock();
        if !state.closed && !state.finished {
            return Err(Error::invalid(
                "pool",
                "join() needs close() or terminate() first",
            ));
        }
        while !state.tasks.is_empty() && !state.finished {
            state = self.shared.idle.wait(state).ignore_poison();
        }
        state.finished = true;
        let mut processes = Vec::new();
        for w in &mut state.workers {
            let _ = w.tasks.try_put(&ToWorker::Stop);
            processes.extend(w.process.take());
        }
        drop(state);
        for mut p in processes {
            if p.join(Some(Duration::from_secs(5))).is_err() {
                let _ = p.kill();
                let _ = p.join(None);
            }
        }
        self.stop_handler();
        Ok(())
    }

    /// Stops the workers at once; tasks not finished fail with
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) (Python's `terminate`).
    pub fn terminate(&self) {
        let (processes, tasks) = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.finished = true;
            state.backlog.clear();
            let processes: Vec<_> = state
                .workers
                .iter_mut()
                .filter_map(|w| w.process.take())
                .collect();
            (processes, std::mem::take(&mut state.tasks))
        };
        for p in &processes {
            let _ = p.kill();
        }
        for mut p in processes {
            let _ = p.join(None);
        }
        for (_, entry) in tasks {
            run_delivery(
                entry.deliver,
                Err(Error::invalid(
                    "pool",
                    "terminated before the task finished",
                )),
            );
        }
        self.shared.idle.notify_all();
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
        let state = self.shared.lock();
        if !state.tasks.contains_key(&id) {
            TaskState::Gone
        } else if state.backlog.contains(&id) {
            TaskState::Queued
        } else {
            TaskState::Sent
        }
    }

    /// Removes task `id` if no worker has it yet; whether it did (its delivery never runs).
    pub(crate) fn cancel_task(&self, id: u64) -> bool {
        let mut state = self.shared.lock();
        let Some(at) = state.backlog.iter().position(|t| *t == id) else {
            return false;
        };
        state.backlog.remove(at);
        state.tasks.remove(&id);
        let idle = state.tasks.is_empty();
        drop(state);
        if idle {
            self.shared.idle.notify_all();
        }
        true
    }

    /// Takes every task that no worker has yet out of the pool; their ids (their deliveries
    /// never run).
    pub(crate) fn cancel_queued(&self) -> Vec<u64> {
        let mut state = self.shared.lock();
        let queued: Vec<u64> = state.backlog.drain(..).collect();
        for id in &queued {
            state.tasks.remove(id);
        }
        let idle = state.tasks.is_empty();
        drop(state);
        if idle {
            self.shared.idle.notify_all();
        }
        queued
    }

    /// The pids of the current workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.shared
            .lock()
            .workers
            .iter()
            .filter(|w| w.process.is_some())
            .map(|w| w.pid)
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let finished = self.shared.lock().finished;
        if !finished {
            self.terminate();
        } else {
            self.stop_handler();
        }
    }
}

/// Where a task is, for [`Pool::task_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Sent to a worker (running, or next in its queue).
    Sent,
    /// Finished, failed or cancelled.
    Gone,
}

/// CPython's choice: `ceil(len / (4 × processes))`.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}
