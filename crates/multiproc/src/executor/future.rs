//! `Future`: the result of a task submitted to an executor, and `wait`/`as_completed`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sync::IgnorePoison;
use crate::sync::spin::spin_until;
use crate::sync::wait_until;

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const FINISHED: u8 = 2;
const CANCELLED: u8 = 3;

type DoneCallback<R> = Box<dyn FnOnce(std::result::Result<&R, &Error>) + Send>;

struct Inner<R> {
    outcome: Option<Result<R>>,
    /// The failure's message, kept after the outcome is taken.
    error_text: Option<String>,
    taken: bool,
    callbacks: Vec<DoneCallback<R>>,
    /// Told the index-free "some future finished" by `wait` and `as_completed`.
    watchers: Vec<mpsc::Sender<usize>>,
    watcher_tags: Vec<usize>,
    /// The task awaiting it (`.await`), if any.
    #[cfg(all(feature = "async", not(loom)))]
    waker: Option<std::task::Waker>,
}

/// The shared cell behind a [`Future`], filled by the executor.
pub(crate) struct Cell<R> {
    status: AtomicU8,
    failed: AtomicBool,
    /// For tasks whose start the executor does not report: asks whether it started.
    probe_running: Box<dyn Fn() -> bool + Send + Sync>,
    /// For process tasks: lets a waiter take results off the pool's queue itself.
    pump: Option<Arc<dyn crate::pool::Pump>>,
    inner: Mutex<Inner<R>>,
    done: Condvar,
    cancel: Box<dyn Fn() -> CancelOutcome + Send + Sync>,
}

/// What the executor says to a cancel request.
pub(crate) enum CancelOutcome {
    /// Removed before it started.
    Cancelled,
    /// Already running or done.
    TooLate,
}

impl<R> Cell<R> {
    pub(crate) fn new(
        cancel: impl Fn() -> CancelOutcome + Send + Sync + 'static,
        probe_running: impl Fn() -> bool + Send + Sync + 'static,
        pump: Option<Arc<dyn crate::pool::Pump>>,
    ) -> Arc<Self> {
        Arc::new(Cell {
            status: AtomicU8::new(PENDING),
            failed: AtomicBool::new(false),
            probe_running: Box::new(probe_running),
            pump,
            inner: Mutex::new(Inner {
                outcome: None,
                error_text: None,
                taken: false,
                callbacks: Vec::new(),
                watchers: Vec::new(),
                watcher_tags: Vec::new(),
                #[cfg(all(feature = "async", not(loom)))]
                waker: None,
            }),
            done: Condvar::new(),
            cancel: Box::new(cancel),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        self.inner.lock().ignore_poison()
    }

    /// Marks the task as started (thread executors know when).
    pub(crate) fn set_running(&self) -> bool {
        self.status
            .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Delivers the outcome: runs the done callbacks (here, on the delivering thread), then
    /// wakes waiters. A panicking callback is reported and the others still run.
    pub(crate) fn finish(&self, outcome: Result<R>) {
        let mut outcome = Some(outcome);
        let watchers = loop {
            let callbacks = {
                let mut inner = self.lock();
                if self.status.load(Ordering::Acquire) == CANCELLED {
                    return;
                }
                let callbacks = std::mem::take(&mut inner.callbacks);
                if callbacks.is_empty() {
                    // Done: from here on `add_done_callback` and `watch` see it (they look
                    // under the same lock), so nothing registered can be missed.
                    let outcome = outcome.take().expect("kept until stored");
                    self.failed.store(outcome.is_err(), Ordering::Release);
                    inner.error_text = outcome.as_ref().err().map(|e| e.to_string());
                    inner.outcome = Some(outcome);
                    self.status.store(FINISHED, Ordering::Release);
                    #[cfg(all(feature = "async", not(loom)))]
                    if let Some(w) = inner.waker.take() {
                        w.wake();
                    }
                    break std::mem::take(&mut inner.watchers)
                        .into_iter()
                        .zip(std::mem::take(&mut inner.watcher_tags))
                        .collect::<Vec<_>>();
                }
                callbacks
            };
            // Outside the lock: a callback may look at its future.
            let value = outcome.as_ref().expect("kept until stored");
            for callback in callbacks {
                run_callback(callback, value);
            }
        };
        self.done.notify_all();
        for (tx, tag) in watchers {
            let _ = tx.send(tag);
        }
    }

    fn is_done(&self) -> bool {
        self.status.load(Ordering::Acquire) >= FINISHED
    }

    /// Marks the task cancelled (the executor has already dropped it) and wakes waiters.
    pub(crate) fn mark_cancelled(&self) {
        let watchers = {
            let mut inner = self.lock();
            if self
                .status
                .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            inner.callbacks.clear();
            #[cfg(all(feature = "async", not(loom)))]
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
            std::mem::take(&mut inner.watchers)
                .into_iter()
                .zip(std::mem::take(&mut inner.watcher_tags))
                .collect::<Vec<_>>()
        };
        self.done.notify_all();
        for (tx, tag) in watchers {
            let _ = tx.send(tag);
        }
    }

    fn watch(&self, tx: mpsc::Sender<usize>, tag: usize) {
        let mut inner = self.lock();
        if self.is_done() {
            let _ = tx.send(tag);
        } else {
            inner.watchers.push(tx);
            inner.watcher_tags.push(tag);
        }
    }
}

fn run_callback<R>(callback: DoneCallback<R>, outcome: &Result<R>) {
    let call = std::panic::AssertUnwindSafe(|| callback(outcome.as_ref()));
    if std::panic::catch_unwind(call).is_err() {
        tracing::error!("a future's done callback panicked; the others still run");
    }
}

/// The pending result of a task given to an executor (Python's `concurrent.futures.Future`).
pub struct Future<R> {
    cell: Arc<Cell<R>>,
}

impl<R> fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.cell.status.load(Ordering::Acquire) {
            PENDING => "pending",
            RUNNING => "running",
            FINISHED => "finished",
            _ => "cancelled",
        };
        f.debug_struct("Future").field("status", &status).finish()
    }
}

impl<R> Future<R> {
    pub(crate) fn new(cell: Arc<Cell<R>>) -> Self {
        Future { cell }
    }

    /// Waits for the task and takes its value (Python's `result()`).
    ///
    /// # Errors
    /// The task's failure; [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if it
    /// was cancelled or its value already taken.
    pub fn result(&self) -> Result<R> {
        self.result_until(None, Duration::ZERO)
    }

    /// Takes the value if the task is done, without waiting.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if it is not done; otherwise as for
    /// [`result`](Self::result).
    pub fn try_result(&self) -> Result<R> {
        self.result_until(Some(Instant::now()), Duration::ZERO)
    }

    /// Waits at most `timeout` for the task and takes its value (Python's
    /// `result(timeout)`).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if `timeout` passed first (the task
    /// goes on); otherwise as for [`result`](Self::result).
    pub fn result_timeout(&self, timeout: Duration) -> Result<R> {
        self.result_until(Instant::now().checked_add(timeout), timeout)
    }

    /// Waits until `deadline` for the task and takes its value.
    ///
    /// # Errors
    /// As for [`result_timeout`](Self::result_timeout).
    pub fn result_deadline(&self, deadline: Instant) -> Result<R> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.result_until(Some(deadline), timeout)
    }

    fn result_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<R> {
        if !self.wait_until(deadline) {
            return Err(Error::timeout("future", waited));
        }
        if self.cancelled() {
            return Err(Error::invalid("future", "cancelled"));
        }
        let mut inner = self.cell.lock();
        match inner.outcome.take() {
            Some(outcome) => {
                inner.taken = true;
                outcome
            }
            None => Err(Error::invalid("future", "result already taken")),
        }
    }

    /// Waits for the task; its error if it failed (Python's `exception()`), `None` if it
    /// succeeded. Does not take the value.
    pub fn exception(&self) -> Option<String> {
        self.wait();
        self.cell.lock().error_text.clone()
    }

    /// Like [`exception`](Self::exception), waiting at most `timeout` (Python's
    /// `exception(timeout)`).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if `timeout` passed first.
    pub fn exception_timeout(&self, timeout: Duration) -> Result<Option<String>> {
        if !self.wait_timeout(timeout) {
            return Err(Error::timeout("future", timeout));
        }
        Ok(self.cell.lock().error_text.clone())
    }

    /// Waits until the task is done or cancelled. [`done`](Self::done) is the form that does
    /// not wait.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` until the task is done or cancelled; whether it is.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline` for the task to be done or cancelled; whether it is.
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        self.wait_until(Some(deadline))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let done = || self.cell.is_done();
        if done() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let spun = match &self.cell.pump {
            Some(pump) => crate::pool::spin_pumping(&**pump, done),
            None => spin_until(done),
        };
        if done() || spun {
            return true;
        }
        wait_until(&self.cell.done, self.cell.lock(), deadline, |_| {
            self.cell.is_done()
        })
        .1
    }

    /// Whether the task finished (or was cancelled).
    pub fn done(&self) -> bool {
        self.cell.is_done()
    }

    /// Whether the task is running now (for a process executor: handed to a worker).
    pub fn running(&self) -> bool {
        match self.cell.status.load(Ordering::Acquire) {
            RUNNING => true,
            PENDING => (self.cell.probe_running)(),
            _ => false,
        }
    }

    /// Whether the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.cell.status.load(Ordering::Acquire) == CANCELLED
    }

    /// Cancels the task if it has not started; whether it is cancelled now.
    pub fn cancel(&self) -> bool {
        match self.cell.status.load(Ordering::Acquire) {
            CANCELLED => return true,
            FINISHED | RUNNING => return false,
            _ => {}
        }
        match (self.cell.cancel)() {
            CancelOutcome::Cancelled => {
                self.cell.mark_cancelled();
                true
            }
            CancelOutcome::TooLate => false,
        }
    }

    /// Runs `callback` with the outcome when the task finishes, on the thread that delivers
    /// it; at once, on this thread, if it already has. Not run if the task is cancelled.
    pub fn add_done_callback(
        &self,
        callback: impl FnOnce(std::result::Result<&R, &Error>) + Send + 'static,
    ) {
        let mut inner = self.cell.lock();
        if !self.cell.is_done() {
            inner.callbacks.push(Box::new(callback));
            return;
        }
        if let Some(outcome) = &inner.outcome {
            let callback: DoneCallback<R> = Box::new(callback);
            run_callback(callback, outcome);
        }
    }
}

/// Something [`wait`] and [`as_completed`] can watch: any [`Future`], whatever its value type.
pub trait Waitable {
    /// Whether it is done (finished or cancelled).
    fn is_done(&self) -> bool;
    /// Whether it finished with an error.
    fn failed(&self) -> bool;
    #[doc(hidden)]
    fn watch(&self, tx: mpsc::Sender<usize>, tag: usize);
}

/// Awaiting a `Future` (feature `async`) takes its value, as [`result`](Future::result)
/// does, without a thread waiting: the executor's thread (or a process pool's result handler)
/// wakes the awaiting task. Cancel-safe: the value is taken only in the poll that returns it.
///
/// ```
/// use multiproc::ThreadPoolExecutor;
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let fut = ex.submit(|| 6 * 7)?;
/// assert_eq!(futures::executor::block_on(fut)?, 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[cfg(all(feature = "async", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
impl<R> std::future::Future for Future<R> {
    type Output = Result<R>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<R>> {
        if !self.cell.is_done() {
            let mut inner = self.cell.lock();
            // The outcome is stored, and the status set, under this lock.
            if !self.cell.is_done() {
                match &inner.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => inner.waker = Some(cx.waker().clone()),
                }
                return std::task::Poll::Pending;
            }
        }
        std::task::Poll::Ready(self.try_result())
    }
}

impl<R> Waitable for Future<R> {
    fn is_done(&self) -> bool {
        self.cell.is_done()
    }
    fn failed(&self) -> bool {
        self.cell.failed.load(Ordering::Acquire)
    }
    fn watch(&self, tx: mpsc::Sender<usize>, tag: usize) {
        self.cell.watch(tx, tag);
    }
}

/// When [`wait`] returns (Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`, `ALL_COMPLETED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as one future is done.
    FirstCompleted,
    /// As soon as one future fails (or all are done).
    FirstException,
    /// When all are done.
    AllCompleted,
}

/// Which futures are done: indexes into the slice given to [`wait`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waited {
    /// Indexes of the futures that are done.
    pub done: Vec<usize>,
    /// Indexes of the others.
    pub not_done: Vec<usize>,
}

/// Waits for some or all of `futures` (Python's `concurrent.futures.wait`), at most `timeout`.
///
/// # Examples
///
/// ```
/// use multiproc::{ReturnWhen, ThreadPoolExecutor, Waitable, wait};
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let a = ex.submit(|| 1)?;
/// let b = ex.submit(|| 2)?;
/// let futures: [&dyn Waitable; 2] = [&a, &b];
/// let waited = wait(&futures, ReturnWhen::AllCompleted);
/// assert_eq!(waited.done, [0, 1]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn wait(futures: &[&dyn Waitable], when: ReturnWhen) -> Waited {
    wait_for(futures, None, when)
}

/// Like [`wait`], returning when `timeout` passes too (Python's `wait(fs, timeout,
/// return_when)`); a zero timeout looks without waiting.
pub fn wait_timeout(futures: &[&dyn Waitable], timeout: Duration, when: ReturnWhen) -> Waited {
    wait_for(futures, Instant::now().checked_add(timeout), when)
}

/// Like [`wait`], returning at `deadline` too.
pub fn wait_deadline(futures: &[&dyn Waitable], deadline: Instant, when: ReturnWhen) -> Waited {
    wait_for(futures, Some(deadline), when)
}

fn wait_for(futures: &[&dyn Waitable], deadline: Option<Instant>, when: ReturnWhen) -> Waited {
    let (tx, rx) = mpsc::channel();
    for (i, f) in futures.iter().enumerate() {
        f.watch(tx.clone(), i);
    }
    drop(tx);
    let split = || {
        let (done, not_done) = (0..futures.len()).partition(|i| futures[*i].is_done());
        Waited { done, not_done }
    };
    loop {
        let now = split();
        let enough = match when {
            ReturnWhen::FirstCompleted => !now.done.is_empty() || futures.is_empty(),
            ReturnWhen::FirstException => {
                now.not_done.is_empty() || now.done.iter().any(|i| futures[*i].failed())
            }
            ReturnWhen::AllCompleted => now.not_done.is_empty(),
        };
        if enough {
            return now;
        }
        let received = match deadline {
            None => rx.recv().is_ok(),
            Some(d) => rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .is_ok(),
        };
        if !received {
            return split();
        }
    }
}

/// Yields the indexes of `futures` as they finish (Python's `as_completed`); with a
/// `timeout`, stops (yielding an error) if it passes before all are done.
///
/// # Examples
///
/// ```
/// use multiproc::{ThreadPoolExecutor, Waitable, as_completed};
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let futures: Vec<_> = (0..4).map(|i| ex.submit(move || i * 10)).collect::<Result<_, _>>()?;
/// let watch: Vec<&dyn Waitable> = futures.iter().map(|f| f as &dyn Waitable).collect();
/// let mut sum = 0;
/// for i in as_completed(&watch) {
///     sum += futures[i?].result()?;
/// }
/// assert_eq!(sum, 60);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn as_completed(futures: &[&dyn Waitable]) -> AsCompleted {
    as_completed_until(futures, None, Duration::ZERO)
}

/// Like [`as_completed`], stopping (with an error of kind
/// [`Timeout`](crate::ErrorKind::Timeout)) if `timeout` passes before all are done (Python's
/// `as_completed(fs, timeout)`).
pub fn as_completed_timeout(futures: &[&dyn Waitable], timeout: Duration) -> AsCompleted {
    as_completed_until(futures, Instant::now().checked_add(timeout), timeout)
}

/// Like [`as_completed`], stopping (with an error of kind
/// [`Timeout`](crate::ErrorKind::Timeout)) at `deadline` if not all are done.
pub fn as_completed_deadline(futures: &[&dyn Waitable], deadline: Instant) -> AsCompleted {
    let timeout = deadline.saturating_duration_since(Instant::now());
    as_completed_until(futures, Some(deadline), timeout)
}

fn as_completed_until(
    futures: &[&dyn Waitable],
    deadline: Option<Instant>,
    timeout: Duration,
) -> AsCompleted {
    let (tx, rx) = mpsc::channel();
    for (i, f) in futures.iter().enumerate() {
        f.watch(tx.clone(), i);
    }
    AsCompleted {
        rx,
        left: futures.len(),
        deadline,
        timeout,
    }
}

/// The iterator of [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted {
    rx: mpsc::Receiver<usize>,
    left: usize,
    deadline: Option<Instant>,
    timeout: Duration,
}

impl Iterator for AsCompleted {
    type Item = Result<usize>;

    fn next(&mut self) -> Option<Result<usize>> {
        if self.left == 0 {
            return None;
        }
        let got = match self.deadline {
            None => self.rx.recv().ok(),
            Some(d) => self
                .rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok(),
        };
        match got {
            Some(i) => {
                self.left -= 1;
                Some(Ok(i))
            }
            None => {
                self.left = 0;
                Some(Err(Error::timeout("as_completed", self.timeout)))
            }
        }
    }
}
