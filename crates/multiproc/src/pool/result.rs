//! What a pool hands back: `AsyncResult`, `MapResult`, and the `imap` iterators.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

// A slot's own primitives: loom's under `--cfg loom`, so that its model check runs this code.
#[cfg(loom)]
use loom::sync::{
    Condvar as SlotCondvar, Mutex as SlotMutex, atomic::AtomicBool as SlotFlag,
    atomic::AtomicUsize as SlotCount,
};
#[cfg(not(loom))]
use std::sync::{
    Condvar as SlotCondvar, Mutex as SlotMutex, atomic::AtomicBool as SlotFlag,
    atomic::AtomicUsize as SlotCount,
};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

/// A chunk's outcome kept for later (an `imap` iterator reads it when it is asked).
type OwnedOutcome = std::result::Result<Vec<u8>, Error>;
use super::chunk;
use crate::error::{Error, Result};
use crate::sync::IgnorePoison;
use crate::sync::spin::spin_until;
use crate::sync::wait_until;

type AnyValue = Box<dyn Any + Send>;

/// A task's serialized `Vec<Result<R, ItemFailure>>`, or why the task failed as a whole.
pub(crate) type TaskOutcome<'a> = std::result::Result<&'a [u8], Error>;

/// Decodes a chunk's results, one per item.
pub(crate) fn decode_chunk<R: DeserializeOwned + 'static>(blob: &[u8]) -> Result<Vec<Result<R>>> {
    let mut values = Vec::new();
    let failures = chunk::decode_results_appending(blob, &mut values)?;
    let n = values.len() + failures.len();
    let mut failures = failures.into_iter().peekable();
    let mut values = values.into_iter();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if failures.peek().is_some_and(|(at, _)| *at as usize == i) {
            let (_, f) = failures.next().expect("peeked");
            out.push(Err(f.into_error()));
        } else {
            let v = values
                .next()
                .ok_or_else(|| Error::protocol("pool", "a chunk's failures are out of order"))?;
            out.push(Ok(v));
        }
    }
    Ok(out)
}

/// Decodes a chunk of `n` results, appending its values to `out`; its first failure (index
/// within the chunk) if an item failed (then `out` holds only some of its values).
fn decode_chunk_appending<R: DeserializeOwned + 'static>(
    blob: &[u8],
    n: usize,
    out: &mut Vec<R>,
) -> Result<Option<(usize, Error)>> {
    let before = out.len();
    out.reserve(n);
    let failures = chunk::decode_results_appending(blob, out)?;
    if let Some((at, first)) = failures.into_iter().next() {
        return Ok(Some((at as usize, first.into_error())));
    }
    let got = out.len() - before;
    if got != n {
        out.truncate(before);
        return Err(Error::protocol(
            "pool",
            format!("a chunk of {n} came back with {got} results"),
        ));
    }
    Ok(None)
}

/// The value of a one-item task.
pub(crate) fn single<R: DeserializeOwned + 'static>(outcome: TaskOutcome<'_>) -> Result<R> {
    let mut items = decode_chunk::<R>(outcome?)?;
    match items.pop() {
        Some(item) if items.is_empty() => item,
        _ => Err(Error::protocol(
            "pool",
            "a single task came back with another count",
        )),
    }
}

/// The results of the chunk `start..start + n`, one per item (a chunk-wide failure is copied
/// to each of its items).
fn expand<R: DeserializeOwned + 'static>(n: usize, outcome: TaskOutcome<'_>) -> Vec<Result<R>> {
    let decoded = outcome.and_then(|blob| decode_chunk::<R>(blob));
    match decoded {
        Ok(items) if items.len() == n => items,
        Ok(items) => (0..n)
            .map(|_| {
                Err(Error::protocol(
                    "pool",
                    format!("a chunk of {n} came back with {} results", items.len()),
                ))
            })
            .collect(),
        Err(e) => {
            let mut all: Vec<Result<R>> = (1..n).map(|_| Err(e.clone())).collect();
            all.insert(0, Err(e));
            all
        }
    }
}

/// Something a waiter can turn to take results off the workers' queue itself, instead of
/// waiting for the handler thread to pass them on (a thread hand-off costs a wake-up).
pub(crate) trait Pump: Send + Sync {
    /// Takes one report off the result queue if there is one and delivers it; whether it did.
    fn pump(&self) -> bool;
    /// A waiter starts pumping: the handler thread steps aside.
    fn enter(&self);
    /// A waiter stops pumping; `sleeping` if it will now wait for the handler to deliver.
    fn leave(&self, sleeping: bool);
    /// Whether a result may come within a spin (results a network away never do).
    fn worth_spinning(&self) -> bool {
        true
    }
}

/// Spins until `done()`, pumping results meanwhile; whether it is done.
pub(crate) fn spin_pumping(pump: &dyn Pump, done: impl Fn() -> bool) -> bool {
    if !pump.worth_spinning() {
        return done();
    }
    pump.enter();
    let got = spin_until(|| done() || (pump.pump() && done()));
    pump.leave(!got);
    got
}

/// A place one result is delivered to, with spin-then-block waiting.
pub(crate) struct Slot {
    ready: SlotFlag,
    /// Whether the task succeeded, kept after the value is taken.
    succeeded_once: SlotFlag,
    value: SlotMutex<Option<Result<AnyValue>>>,
    filled: SlotCondvar,
    /// Threads asleep on `filled` (counted with `value`'s lock held): a fill with none
    /// notifies nobody, which spares the filler a system call per result.
    sleepers: SlotCount,
    /// Futures awaiting it (`get_async`).
    #[cfg(all(feature = "async", not(loom)))]
    wakers: crate::aio::Wakers,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            ready: SlotFlag::new(false),
            succeeded_once: SlotFlag::new(false),
            value: SlotMutex::new(None),
            filled: SlotCondvar::new(),
            sleepers: SlotCount::new(0),
            #[cfg(all(feature = "async", not(loom)))]
            wakers: crate::aio::Wakers::default(),
        }
    }

    pub(crate) fn fill(&self, value: Result<AnyValue>) {
        self.succeeded_once.store(value.is_ok(), Ordering::Release);
        let sleepers = {
            let mut slot = self.value.lock().ignore_poison();
            *slot = Some(value);
            // Marked ready with the lock held: a waiter looks at `ready` with it held, then
            // sleeps; marked after the unlock, the notification could fall between its look
            // and its sleep, and it would sleep on (a wake-up lost). For the same reason the
            // sleepers are counted with it held.
            self.ready.store(true, Ordering::SeqCst);
            self.sleepers.load(Ordering::SeqCst)
        };
        if sleepers > 0 {
            self.filled.notify_all();
        }
        #[cfg(all(feature = "async", not(loom)))]
        self.wakers.wake_all();
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until filled or `deadline`; whether it is filled. While spinning it pumps
    /// results itself.
    fn wait(&self, deadline: Option<Instant>, pump: &dyn Pump) -> bool {
        if self.is_ready() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // The form that does not wait: one look for a report, no spinning.
            return pump.pump() && self.is_ready();
        }
        if spin_pumping(pump, || self.is_ready()) {
            return true;
        }
        let mut value = self.value.lock().ignore_poison();
        while !self.is_ready() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return false;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            value = match left {
                None => self.filled.wait(value).ignore_poison(),
                Some(left) => self.filled.wait_timeout(value, left).ignore_poison().0,
            };
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        true
    }

    fn take(&self) -> Option<Result<AnyValue>> {
        self.value.lock().ignore_poison().take()
    }

    fn succeeded(&self) -> Option<bool> {
        if !self.is_ready() {
            return None;
        }
        let value = self.value.lock().ignore_poison();
        Some(self.succeeded_once.load(Ordering::Acquire) && !matches!(&*value, Some(Err(_))))
    }
}

fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async), arriving later (Python's
/// `AsyncResult`).
pub struct AsyncResult<R> {
    slot: Arc<Slot>,
    pump: Arc<dyn Pump>,
    task_id: Option<String>,
    _value: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.slot.is_ready())
            .finish()
    }
}

impl<R: 'static> AsyncResult<R> {
    pub(crate) fn new(slot: Arc<Slot>, pump: Arc<dyn Pump>) -> Self {
        AsyncResult {
            slot,
            pump,
            task_id: None,
            _value: PhantomData,
        }
    }

    pub(crate) fn with_task_id(mut self, task_id: Option<String>) -> Self {
        self.task_id = task_id;
        self
    }

    /// The task's id on a broker (a pool from `Pool::broker`), by which any process with
    /// the authkey follows it and fetches its result (`TaskRecords`, feature `broker`);
    /// `None` for a local pool's task.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// Waits for the result and takes it.
    ///
    /// # Errors
    /// The task's failure; [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if the
    /// value was already taken.
    pub fn get(&self) -> Result<R> {
        self.get_until(None, Duration::ZERO)
    }

    /// Waits up to `timeout` for the result and takes it.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if it is not there yet (the task goes
    /// on); otherwise as for [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R> {
        self.get_until(deadline_after(timeout), timeout)
    }

    /// Takes the result if it is there, without waiting.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if it is not there yet; otherwise as
    /// for [`get`](Self::get).
    pub fn try_get(&self) -> Result<R> {
        self.get_until(Some(Instant::now()), Duration::ZERO)
    }

    /// Waits until `deadline` for the result and takes it.
    ///
    /// # Errors
    /// As for [`get_timeout`](Self::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<R> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.get_until(Some(deadline), timeout)
    }

    /// Waits for the result and takes it, as a future: the form of [`get`](Self::get) to
    /// `.await`, on any executor (feature `async`). The pool's result-handler thread
    /// delivers it; no thread waits for it.
    ///
    /// **Cancel-safe**: the value is taken only in the poll that returns it; dropped before,
    /// the result stays for [`get`](Self::get).
    ///
    /// # Errors
    /// As for [`get`](Self::get): a worker that died running the task is
    /// [`ErrorKind::WorkerLost`](crate::ErrorKind::WorkerLost).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::Pool;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let pending = pool.apply_async(square, 7)?;
    /// assert_eq!(futures::executor::block_on(pending.get_async())?, 49);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn get_async(&self) -> impl std::future::Future<Output = Result<R>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            if !self.slot.is_ready() {
                self.slot.wakers.register(cx.waker());
                if !self.slot.is_ready() {
                    return std::task::Poll::Pending;
                }
            }
            std::task::Poll::Ready(self.try_get())
        })
    }

    fn get_until(&self, deadline: Option<Instant>, timeout: Duration) -> Result<R> {
        if !self.slot.wait(deadline, &*self.pump) {
            return Err(Error::timeout("pool result", timeout));
        }
        match self.slot.take() {
            Some(Ok(value)) => value
                .downcast::<R>()
                .map(|b| *b)
                .map_err(|_| Error::invalid("pool result", "of another type")),
            Some(Err(e)) => Err(e),
            None => Err(Error::invalid("pool result", "already taken")),
        }
    }

    /// Waits until the result is there. [`ready`](Self::ready) is the form that does not
    /// wait.
    pub fn wait(&self) {
        self.slot.wait(None, &*self.pump);
    }

    /// Waits up to `timeout` until the result is there; whether it is.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot.wait(deadline_after(timeout), &*self.pump)
    }

    /// Waits until `deadline` for the result; whether it is there.
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        self.slot.wait(Some(deadline), &*self.pump)
    }

    /// Whether the result is there.
    pub fn ready(&self) -> bool {
        self.slot.is_ready()
    }

    /// Whether the task succeeded.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if it is not finished, as
    /// CPython raises `ValueError`.
    pub fn successful(&self) -> Result<bool> {
        self.slot
            .succeeded()
            .ok_or_else(|| Error::invalid("pool result", "not ready"))
    }
}

struct MapInner<R> {
    /// The values of items `0..out.len()`, in order: a chunk that arrives in turn is decoded
    /// straight onto the end (no copy later, and decoding overlaps the workers' work).
    out: Vec<R>,
    /// Chunks that arrived before their turn, decoded, by start.
    early: BTreeMap<usize, Vec<R>>,
    /// The first failing item seen so far (lowest index) and its error.
    failure: Option<(usize, Error)>,
    /// How many items were submitted, once all of them were.
    expected: Option<usize>,
    /// How many items' results came.
    received: usize,
    taken: bool,
    /// Futures awaiting them all (`get_async`).
    #[cfg(all(feature = "async", not(loom)))]
    wakers: crate::aio::Wakers,
}

impl<R> MapInner<R> {
    fn done(&self) -> bool {
        self.expected == Some(self.received)
    }
}

impl<R: DeserializeOwned + 'static> MapInner<R> {
    fn fill(&mut self, start: usize, n: usize, outcome: TaskOutcome<'_>) {
        self.received += n;
        if self.failure.as_ref().is_some_and(|(at, _)| *at < start) {
            return; // the map has already failed at an earlier item
        }
        let in_turn = start == self.out.len();
        let mut early = Vec::new();
        let decoded = outcome.and_then(|blob| {
            let into = if in_turn { &mut self.out } else { &mut early };
            decode_chunk_appending(blob, n, into)
        });
        match decoded {
            Ok(None) if !in_turn => {
                self.early.insert(start, early);
            }
            Ok(None) => {}
            Ok(Some((i, e))) => self.fail(start + i, e),
            Err(e) => self.fail(start, e),
        }
        if self.failure.is_some() {
            self.early.clear();
            return;
        }
        while let Some(values) = self.early.remove(&self.out.len()) {
            self.out.extend(values);
        }
    }

    fn fail(&mut self, at: usize, e: Error) {
        if self.failure.as_ref().is_none_or(|(first, _)| at < *first) {
            self.failure = Some((at, e));
        }
    }
}

/// The shared state of one `map_async`, filled chunk by chunk.
pub(crate) struct MapState<R> {
    inner: Arc<(Mutex<MapInner<R>>, Condvar, AtomicBool)>,
}

impl<R> Clone for MapState<R> {
    fn clone(&self) -> Self {
        MapState {
            inner: self.inner.clone(),
        }
    }
}

impl<R: DeserializeOwned + 'static> MapState<R> {
    pub(crate) fn new() -> MapState<R> {
        MapState {
            inner: Arc::new((
                Mutex::new(MapInner {
                    out: Vec::new(),
                    early: BTreeMap::new(),
                    failure: None,
                    expected: None,
                    received: 0,
                    taken: false,
                    #[cfg(all(feature = "async", not(loom)))]
                    wakers: crate::aio::Wakers::default(),
                }),
                Condvar::new(),
                AtomicBool::new(false),
            )),
        }
    }

    /// Decodes the results of the chunk `start..start + n` into place.
    pub(crate) fn fill(&self, start: usize, n: usize, outcome: TaskOutcome<'_>) {
        self.update(|inner| inner.fill(start, n, outcome));
    }

    /// Every chunk was submitted: `count` items in all.
    pub(crate) fn submitted(&self, count: usize) {
        self.update(|inner| inner.expected = Some(count));
    }

    fn update(&self, change: impl FnOnce(&mut MapInner<R>)) {
        let (lock, cond, done) = &*self.inner;
        let mut inner = lock.lock().ignore_poison();
        change(&mut inner);
        if inner.done() {
            done.store(true, Ordering::SeqCst);
            cond.notify_all();
            #[cfg(all(feature = "async", not(loom)))]
            inner.wakers.wake_all();
        }
    }
}

/// The results of [`Pool::map_async`](crate::Pool::map_async), arriving together (Python's
/// `MapResult`).
pub struct MapResult<R> {
    state: MapState<R>,
    pump: Arc<dyn Pump>,
}

impl<R> fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> MapResult<R> {
    pub(crate) fn new(state: MapState<R>, pump: Arc<dyn Pump>) -> Self {
        MapResult { state, pump }
    }

    /// Whether every result is there.
    pub fn ready(&self) -> bool {
        self.state.inner.2.load(Ordering::Acquire)
    }

    /// Waits until every result is there. [`ready`](Self::ready) is the form that does not
    /// wait.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits up to `timeout` until every result is there; whether they are.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Waits until `deadline` for every result; whether they are there.
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        self.wait_until(Some(deadline))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.ready() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if spin_pumping(&*self.pump, || self.ready()) {
            return true;
        }
        let (lock, cond, _) = &*self.state.inner;
        let inner = lock.lock().ignore_poison();
        wait_until(cond, inner, deadline, |inner| inner.done()).1
    }

    /// Whether every item succeeded.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if not finished.
    pub fn successful(&self) -> Result<bool> {
        if !self.ready() {
            return Err(Error::invalid("pool map result", "not ready"));
        }
        let inner = self.state.inner.0.lock().ignore_poison();
        Ok(inner.failure.is_none())
    }

    /// Waits for every result and takes them, in item order.
    ///
    /// # Errors
    /// The first failing item's error, in item order.
    pub fn get(&self) -> Result<Vec<R>> {
        self.get_until(None, Duration::ZERO)
    }

    /// Like [`get`](Self::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if not every result is there yet.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>> {
        self.get_until(deadline_after(timeout), timeout)
    }

    /// Takes every result if they are all there, without waiting.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if not every result is there yet;
    /// otherwise as for [`get`](Self::get).
    pub fn try_get(&self) -> Result<Vec<R>> {
        self.get_until(Some(Instant::now()), Duration::ZERO)
    }

    /// Like [`get`](Self::get), waiting until `deadline`.
    ///
    /// # Errors
    /// As for [`get_timeout`](Self::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<Vec<R>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.get_until(Some(deadline), timeout)
    }

    /// Waits for every result and takes them, as a future: the form of [`get`](Self::get)
    /// to `.await` (feature `async`). Cancel-safe, as
    /// [`AsyncResult::get_async`](crate::AsyncResult::get_async).
    ///
    /// # Errors
    /// As for [`get`](Self::get).
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn get_async(&self) -> impl std::future::Future<Output = Result<Vec<R>>> + Send + '_
    where
        R: Send,
    {
        std::future::poll_fn(move |cx| {
            let done = || self.state.inner.2.load(Ordering::SeqCst);
            if !done() {
                self.state
                    .inner
                    .0
                    .lock()
                    .ignore_poison()
                    .wakers
                    .register(cx.waker());
                if !done() {
                    return std::task::Poll::Pending;
                }
            }
            std::task::Poll::Ready(self.try_get())
        })
    }

    fn get_until(&self, deadline: Option<Instant>, timeout: Duration) -> Result<Vec<R>> {
        if !self.wait_until(deadline) {
            return Err(Error::timeout("pool map result", timeout));
        }
        let mut inner = self.state.inner.0.lock().ignore_poison();
        if inner.taken {
            return Err(Error::invalid("pool map result", "already taken"));
        }
        inner.taken = true;
        if let Some((_, e)) = inner.failure.take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut inner.out))
    }
}

/// Feeds an [`IMapIter`] from the result handler.
#[derive(Clone)]
pub(crate) struct IMapSender {
    tx: mpsc::Sender<(usize, usize, OwnedOutcome)>,
    /// The task polling the iterator as a stream, if one does.
    #[cfg(all(feature = "async", not(loom)))]
    wakers: Arc<crate::aio::Wakers>,
}

impl IMapSender {
    pub(crate) fn send(&self, start: usize, n: usize, outcome: TaskOutcome<'_>) {
        // The iterator may be gone: then nobody wants the results.
        let _ = self.tx.send((start, n, outcome.map(<[u8]>::to_vec)));
        #[cfg(all(feature = "async", not(loom)))]
        self.wakers.wake_all();
    }
}

/// The iterator of [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): yields each item's result as it
/// becomes available (in item order for `imap`).
pub struct IMapIter<R> {
    rx: mpsc::Receiver<(usize, usize, OwnedOutcome)>,
    total: usize,
    yielded: usize,
    ordered: bool,
    early: BTreeMap<usize, Result<R>>,
    #[cfg(all(feature = "async", not(loom)))]
    wakers: Arc<crate::aio::Wakers>,
    _value: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for IMapIter<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMapIter")
            .field("total", &self.total)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl<R: DeserializeOwned + 'static> IMapIter<R> {
    pub(crate) fn new(total: usize, ordered: bool) -> (Self, IMapSender) {
        let (tx, rx) = mpsc::channel();
        #[cfg(all(feature = "async", not(loom)))]
        let wakers = Arc::new(crate::aio::Wakers::default());
        let iter = IMapIter {
            rx,
            total,
            yielded: 0,
            ordered,
            early: BTreeMap::new(),
            #[cfg(all(feature = "async", not(loom)))]
            wakers: wakers.clone(),
            _value: PhantomData,
        };
        let sender = IMapSender {
            tx,
            #[cfg(all(feature = "async", not(loom)))]
            wakers,
        };
        (iter, sender)
    }

    /// The next result in turn among those received, if it is there.
    fn take_early(&mut self) -> Option<Result<R>> {
        let item = if self.ordered {
            self.early.remove(&self.yielded)
        } else {
            self.early.pop_first().map(|(_, item)| item)
        };
        if item.is_some() {
            self.yielded += 1;
        }
        item
    }

    /// Decodes a chunk's results into the ones waiting their turn.
    fn absorb(&mut self, (start, n, outcome): (usize, usize, OwnedOutcome)) {
        let bytes;
        let outcome = match outcome {
            Ok(b) => {
                bytes = b;
                Ok(bytes.as_slice())
            }
            Err(e) => Err(e),
        };
        for (i, item) in expand::<R>(n, outcome).into_iter().enumerate() {
            self.early.insert(start + i, item);
        }
    }

    /// The pool went before the results came: the end, with that error.
    fn cut_short(&mut self) -> Option<Result<R>> {
        self.yielded = self.total;
        Some(Err(Error::invalid(
            "pool",
            "terminated before the results came",
        )))
    }

    /// The next result, waiting at most `timeout` (Python's `next(timeout)`); `None` at the
    /// end.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if the next result did not come in
    /// time (call again to keep waiting); otherwise the item's own failure.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_until(deadline_after(timeout), timeout)
    }

    fn next_until(&mut self, deadline: Option<Instant>, timeout: Duration) -> Option<Result<R>> {
        if self.yielded >= self.total {
            return None;
        }
        loop {
            if let Some(item) = self.take_early() {
                return Some(item);
            }
            let received = match deadline {
                None => self.rx.recv().map_err(|_| None),
                Some(d) => self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .map_err(|e| match e {
                        mpsc::RecvTimeoutError::Timeout => Some(()),
                        mpsc::RecvTimeoutError::Disconnected => None,
                    }),
            };
            match received {
                Ok(chunk) => self.absorb(chunk),
                Err(Some(())) => return Some(Err(Error::timeout("pool imap", timeout))),
                Err(None) => return self.cut_short(),
            }
        }
    }
}

impl<R: DeserializeOwned + 'static> Iterator for IMapIter<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_until(None, Duration::ZERO)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.yielded;
        (left, Some(left))
    }
}

impl<R: DeserializeOwned + 'static> IMapIter<R> {
    /// The results as a [`Stream`](futures_core::Stream) (feature `async`): each item's
    /// result as it becomes available (in item order for `imap`), the pool's result-handler
    /// thread waking the polling task; no thread waits for it.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use multiproc::Pool;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let results = pool.imap(square, 0..10u64, Some(3))?.into_stream();
    /// let got: Vec<u64> = futures::executor::block_on(results.map(Result::unwrap).collect());
    /// assert_eq!(got, (0..10).map(square).collect::<Vec<_>>());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(all(feature = "async", not(loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn into_stream(self) -> IMapStream<R> {
        IMapStream(self)
    }
}

/// The results of [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) as a stream: see
/// [`IMapIter::into_stream`]. Dropping it drops the results not yet taken.
#[cfg(all(feature = "async", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
#[derive(Debug)]
pub struct IMapStream<R>(IMapIter<R>);

#[cfg(all(feature = "async", not(loom)))]
impl<R: DeserializeOwned + 'static> futures_core::Stream for IMapStream<R> {
    type Item = Result<R>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<R>>> {
        use std::task::Poll;
        let this = &mut self.0;
        let mut registered = false;
        loop {
            if this.yielded >= this.total {
                return Poll::Ready(None);
            }
            if let Some(item) = this.take_early() {
                return Poll::Ready(Some(item));
            }
            match this.rx.try_recv() {
                Ok(chunk) => this.absorb(chunk),
                Err(mpsc::TryRecvError::Disconnected) => return Poll::Ready(this.cut_short()),
                Err(mpsc::TryRecvError::Empty) if registered => return Poll::Pending,
                Err(mpsc::TryRecvError::Empty) => {
                    // Registered, then looked at once more: a chunk sent after that wakes us.
                    this.wakers.register(cx.waker());
                    registered = true;
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.0.total - self.0.yielded;
        (left, Some(left))
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::shim::bounded_model;

    /// A waiter with no one to pump for it.
    struct NoPump;

    impl Pump for NoPump {
        fn pump(&self) -> bool {
            false
        }
        fn enter(&self) {}
        fn leave(&self, _sleeping: bool) {}
        fn worth_spinning(&self) -> bool {
            false
        }
    }

    /// The handler fills a slot while its caller waits on it: in every interleaving the
    /// caller wakes with the value (a fill between its look and its sleep once lost the
    /// wake-up: loom reports that as a deadlock).
    #[test]
    fn loom_a_filled_slot_wakes_its_waiter() {
        bounded_model(|| {
            let slot = loom::sync::Arc::new(Slot::new());
            let filler = {
                let slot = slot.clone();
                loom::thread::spawn(move || slot.fill(Ok(Box::new(7u32))))
            };
            assert!(slot.wait(None, &NoPump));
            let value = slot.take().expect("filled").expect("a value");
            assert_eq!(value.downcast_ref::<u32>(), Some(&7));
            filler.join().unwrap();
        });
    }
}
