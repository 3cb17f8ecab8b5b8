//! What a pool hands back: `AsyncResult`, `MapResult`, and the `imap` iterators.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::TaskOutcome;
use super::worker::ItemOutcome;
use crate::error::{Error, Result};
use crate::sync::spin::spin_until;

type AnyValue = Box<dyn Any + Send>;

/// Decodes one item's outcome.
pub(crate) fn decode_item<R: DeserializeOwned>(outcome: ItemOutcome) -> Result<R> {
    match outcome {
        ItemOutcome::Value(bytes) => crate::share::decode("pool task result", &bytes, Vec::new()),
        ItemOutcome::Panicked {
            message,
            location,
            pid,
        } => Err(Error::Panicked {
            name: "pool task".into(),
            pid,
            message,
            location,
        }),
        ItemOutcome::Broken(why) => Err(Error::serialization("pool task", why)),
    }
}

/// The value of a one-item task.
pub(crate) fn single<R: DeserializeOwned>(outcome: TaskOutcome) -> Result<R> {
    let mut items = outcome?;
    match items.pop() {
        Some(item) if items.is_empty() => decode_item(item),
        _ => Err(Error::protocol(
            "pool",
            "a single task came back with another count",
        )),
    }
}

/// Something a waiter can turn to take results off the workers' queue itself, instead of
/// waiting for the handler thread to pass them on (a thread hand-off costs a wake-up).
pub(crate) trait Pump: Send + Sync {
    /// Takes one report off the result queue if there is one and delivers it; whether it did.
    fn pump(&self) -> bool;
}

/// A place one result is delivered to, with spin-then-block waiting.
pub(crate) struct Slot {
    ready: AtomicBool,
    value: Mutex<Option<Result<AnyValue>>>,
    filled: Condvar,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            ready: AtomicBool::new(false),
            value: Mutex::new(None),
            filled: Condvar::new(),
        }
    }

    pub(crate) fn fill(&self, value: Result<AnyValue>) {
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        self.ready.store(true, Ordering::Release);
        self.filled.notify_all();
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until filled or `deadline`; whether it is filled. While spinning it pumps
    /// results itself.
    fn wait(&self, deadline: Option<Instant>, pump: &dyn Pump) -> bool {
        if self.is_ready() || spin_until(|| self.is_ready() || (pump.pump() && self.is_ready())) {
            return true;
        }
        let mut value = self.value.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_ready() {
            value = match deadline {
                None => self.filled.wait(value).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.filled
                        .wait_timeout(value, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    fn take(&self) -> Option<Result<AnyValue>> {
        self.value.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn succeeded(&self) -> Option<bool> {
        if !self.is_ready() {
            return None;
        }
        let value = self.value.lock().unwrap_or_else(|p| p.into_inner());
        Some(matches!(&*value, Some(Ok(_)) | None))
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
            _value: PhantomData,
        }
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

    /// Waits (up to `timeout`, or for ever) until the result is there; whether it is.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        self.slot
            .wait(timeout.and_then(deadline_after), &*self.pump)
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

enum Cell {
    Pending,
    Done(ItemOutcome),
    Failed(Error),
}

struct MapInner {
    cells: Vec<Cell>,
    remaining: usize,
}

/// The shared state of one `map_async`, filled chunk by chunk.
#[derive(Clone)]
pub(crate) struct MapState {
    inner: Arc<(Mutex<MapInner>, Condvar, AtomicBool)>,
}

impl MapState {
    pub(crate) fn new(len: usize) -> MapState {
        let cells = (0..len).map(|_| Cell::Pending).collect();
        MapState {
            inner: Arc::new((
                Mutex::new(MapInner {
                    cells,
                    remaining: len,
                }),
                Condvar::new(),
                AtomicBool::new(len == 0),
            )),
        }
    }

    pub(crate) fn fill(&self, start: usize, n: usize, outcome: TaskOutcome) {
        let (lock, cond, done) = &*self.inner;
        let mut inner = lock.lock().unwrap_or_else(|p| p.into_inner());
        for (i, cell) in split(outcome, n).into_iter().enumerate() {
            if let Some(slot) = inner.cells.get_mut(start + i) {
                *slot = cell;
            }
        }
        inner.remaining = inner.remaining.saturating_sub(n);
        if inner.remaining == 0 {
            done.store(true, Ordering::Release);
            cond.notify_all();
        }
    }
}

/// One cell per item of a chunk.
fn split(outcome: TaskOutcome, n: usize) -> Vec<Cell> {
    match outcome {
        Ok(items) if items.len() == n => items.into_iter().map(Cell::Done).collect(),
        Ok(items) => (0..n)
            .map(|_| {
                Cell::Failed(Error::protocol(
                    "pool",
                    format!("a chunk of {n} came back with {} results", items.len()),
                ))
            })
            .collect(),
        Err(e) => {
            let mut cells: Vec<Cell> = (1..n)
                .map(|_| Cell::Failed(super::copy_error(&e)))
                .collect();
            cells.insert(0, Cell::Failed(e));
            cells
        }
    }
}

/// The results of [`Pool::map_async`](crate::Pool::map_async), arriving together (Python's
/// `MapResult`).
pub struct MapResult<R> {
    state: MapState,
    _value: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> MapResult<R> {
    pub(crate) fn new(state: MapState) -> Self {
        MapResult {
            state,
            _value: PhantomData,
        }
    }

    /// Whether every result is there.
    pub fn ready(&self) -> bool {
        self.state.inner.2.load(Ordering::Acquire)
    }

    /// Waits (up to `timeout`, or for ever) until every result is there; whether they are.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(deadline_after);
        if self.ready() || spin_until(|| self.ready()) {
            return true;
        }
        let (lock, cond, _) = &*self.state.inner;
        let mut inner = lock.lock().unwrap_or_else(|p| p.into_inner());
        while inner.remaining > 0 {
            inner = match deadline {
                None => cond.wait(inner).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    cond.wait_timeout(inner, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// Whether every item succeeded.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if not finished.
    pub fn successful(&self) -> Result<bool> {
        if !self.ready() {
            return Err(Error::invalid("pool map result", "not ready"));
        }
        let inner = self.state.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner
            .cells
            .iter()
            .all(|c| matches!(c, Cell::Done(ItemOutcome::Value(_)))))
    }
}

impl<R: DeserializeOwned> MapResult<R> {
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

    fn get_until(&self, deadline: Option<Instant>, timeout: Duration) -> Result<Vec<R>> {
        let waited = match deadline {
            None => self.wait(None),
            Some(d) => self.wait(Some(d.saturating_duration_since(Instant::now()))),
        };
        if !waited {
            return Err(Error::timeout("pool map result", timeout));
        }
        let cells = {
            let mut inner = self.state.inner.0.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut inner.cells)
        };
        cells
            .into_iter()
            .map(|cell| match cell {
                Cell::Done(item) => decode_item(item),
                Cell::Failed(e) => Err(e),
                Cell::Pending => Err(Error::invalid("pool map result", "already taken")),
            })
            .collect()
    }
}

/// Feeds an [`IMapIter`] from the result handler.
#[derive(Clone)]
pub(crate) struct IMapSender {
    tx: mpsc::Sender<(usize, Cell)>,
}

impl IMapSender {
    pub(crate) fn send(&self, start: usize, n: usize, outcome: TaskOutcome) {
        for (i, cell) in split(outcome, n).into_iter().enumerate() {
            // The iterator may be gone: then nobody wants the results.
            let _ = self.tx.send((start + i, cell));
        }
    }
}

/// The iterator of [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): yields each item's result as it
/// becomes available (in item order for `imap`).
pub struct IMapIter<R> {
    rx: mpsc::Receiver<(usize, Cell)>,
    total: usize,
    yielded: usize,
    ordered: bool,
    early: BTreeMap<usize, Cell>,
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

impl<R: DeserializeOwned> IMapIter<R> {
    pub(crate) fn new(total: usize, ordered: bool) -> (Self, IMapSender) {
        let (tx, rx) = mpsc::channel();
        let iter = IMapIter {
            rx,
            total,
            yielded: 0,
            ordered,
            early: BTreeMap::new(),
            _value: PhantomData,
        };
        (iter, IMapSender { tx })
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
            if self.ordered {
                if let Some(cell) = self.early.remove(&self.yielded) {
                    self.yielded += 1;
                    return Some(resolve(cell));
                }
            } else if let Some((_, cell)) = self.early.pop_first() {
                self.yielded += 1;
                return Some(resolve(cell));
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
                Ok((index, cell)) => {
                    self.early.insert(index, cell);
                }
                Err(Some(())) => return Some(Err(Error::timeout("pool imap", timeout))),
                Err(None) => {
                    self.yielded = self.total;
                    return Some(Err(Error::invalid(
                        "pool",
                        "terminated before the results came",
                    )));
                }
            }
        }
    }
}

fn resolve<R: DeserializeOwned>(cell: Cell) -> Result<R> {
    match cell {
        Cell::Done(item) => decode_item(item),
        Cell::Failed(e) => Err(e),
        Cell::Pending => Err(Error::invalid("pool", "a result went missing")),
    }
}

impl<R: DeserializeOwned> Iterator for IMapIter<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_until(None, Duration::ZERO)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.yielded;
        (left, Some(left))
    }
}
