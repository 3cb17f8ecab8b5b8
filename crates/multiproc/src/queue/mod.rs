//! `Queue<T>`, `JoinableQueue<T>` and `SimpleQueue<T>`: typed queues between processes over a
//! shared ring, with a side channel for messages too big for it or carrying handles.

mod ring;

use std::cell::RefCell;
use std::fmt;
use std::io::IoSlice;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use self::ring::{Corrupt, Ring, RingLayout, WaitFailed, frame_len};
use crate::error::{Error, Result};
use crate::platform;
use crate::share::{self, FdIn, FdOut};
use crate::shm::{Segment, Shared};
use crate::sync::deadline_after;
use crate::sync::shim::{FutexWait, Ordering, fence, futex_wait, futex_wake};

/// A frame whose payload is the message.
const INLINE: u32 = 0;
/// A frame whose payload is an id: the message went through the side channel.
const SIDE: u32 = 1;

/// Ring size when none is asked for.
const DEFAULT_RING_BYTES: usize = 1 << 20;
const MIN_RING_BYTES: usize = 4096;
const MAX_RING_BYTES: usize = 1 << 30;

/// How long a non-blocking call may wait for another thread's short hold of the ring.
const NONBLOCKING_LOCK_WAIT: Duration = Duration::from_millis(1);

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a reusable buffer (a fresh one if the thread's is in use).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

fn type_hash<T>() -> u64 {
    // FNV-1a of the type's name: the same binary on both sides gives the same name.
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

struct Inner {
    shared: Shared<RingLayout>,
    /// Both ends of a seqpacket pair every handle holds: producers send on one, consumers
    /// receive on the other, the kernel keeps what is in flight.
    side_tx: OwnedFd,
    side_rx: OwnedFd,
    what: String,
    closed: AtomicBool,
}

impl Inner {
    fn ring(&self) -> Ring<'_> {
        // SAFETY: the extra bytes of the segment are the ring data, `capacity` long; the
        // capacity was checked to be a power of two ≥ 64 that fits, at creation or on receipt.
        unsafe { Ring::new(self.shared.layout(), self.shared.extra_ptr()) }
    }
}

/// A queue shared between processes and threads (Python's `multiprocessing.Queue`).
///
/// Items are any `T: Serialize + DeserializeOwned`; handles inside them (queues, pipe ends,
/// locks, shared memory) arrive as handles to the same objects. Many producers and many
/// consumers, in any processes, may use it at once; each item is received exactly once, and
/// the items of one producer arrive in the order it put them.
///
/// Items live in a ring of shared memory (1 MiB unless [`QueueBuilder::ring_bytes`] says
/// otherwise). A [`bounded`](Self::bounded) queue also holds at most `maxsize` items. An item
/// larger than a quarter of the ring travels beside it, in a memory file of its own.
///
/// Blocking calls come in four forms: `get` (wait for ever), `try_get` (do not wait; Python's
/// `get_nowait`), `get_timeout` and `get_deadline`; likewise for `put`.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Queue};
///
/// fn writer(q: Queue<String>) {
///     for word in ["A", "B", "C"] {
///         q.put(word.to_string()).unwrap();
///     }
/// }
///
/// let q = Queue::new()?;
/// let mut child = Process::new(writer, q.clone()).start()?;
/// let got: Vec<String> = (0..3).map(|_| q.get()).collect::<Result<_, _>>()?;
/// assert_eq!(got, ["A", "B", "C"]);
/// child.join(None)?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// A queue without `maxsize` is unbounded in items but not in bytes: when its ring is full,
/// `put` waits for consumers (CPython buffers in the producer instead, and loses that buffer if
/// the producer dies).
pub struct Queue<T> {
    inner: Arc<Inner>,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> Queue<T> {
    fn from_parts(
        shared: Shared<RingLayout>,
        side_tx: OwnedFd,
        side_rx: OwnedFd,
        what: String,
    ) -> Queue<T> {
        Queue {
            inner: Arc::new(Inner {
                shared,
                side_tx,
                side_rx,
                what,
                closed: AtomicBool::new(false),
            }),
            _item: PhantomData,
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _item: PhantomData,
        }
    }
}

/// Sets up a [`Queue`] or [`JoinableQueue`].
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
    /// At most `maxsize` items at a time (0: no limit on items).
    pub fn maxsize(mut self, maxsize: u32) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// The size of the shared ring, rounded up to a power of two between 4 KiB and 1 GiB.
    /// Pages are only allocated when first used.
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
        let what = match &self.name {
            Some(n) => format!("queue {n:?}"),
            None => "queue".to_string(),
        };
        let capacity = self
            .ring_bytes
            .clamp(MIN_RING_BYTES, MAX_RING_BYTES)
            .next_power_of_two();
        let shared = Shared::create_populated(capacity, self.preallocate, |l: &RingLayout, _| {
            l.capacity.store(capacity as u32, Ordering::Relaxed);
            l.maxsize.store(self.maxsize, Ordering::Relaxed);
            if self.preallocate {
                l.flags.store(ring::PREALLOCATED, Ordering::Relaxed);
            }
            l.type_hash.store(type_hash::<T>(), Ordering::Relaxed);
        })?;
        let (side_tx, side_rx) = platform::seqpacket_pair()
            .map_err(|e| Error::io(format!("{what}: cannot create side channel"), e))?;
        for fd in [&side_tx, &side_rx] {
            platform::set_nonblocking(fd.as_fd())
                .map_err(|e| Error::io(format!("{what}: cannot set up side channel"), e))?;
        }
        Ok(Queue::from_parts(shared, side_tx, side_rx, what))
    }

    /// Creates a [`JoinableQueue`].
    ///
    /// # Errors
    /// As for [`build`](Self::build).
    pub fn build_joinable(self) -> Result<JoinableQueue<T>> {
        self.build().map(|queue| JoinableQueue { queue })
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue with no limit on items (see the caveat above).
    ///
    /// # Errors
    /// If the shared memory or the side channel cannot be created.
    pub fn new() -> Result<Queue<T>> {
        Queue::builder().build()
    }

    /// A queue holding at most `maxsize` items; `put` waits while it is full.
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn bounded(maxsize: u32) -> Result<Queue<T>> {
        Queue::builder().maxsize(maxsize).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            maxsize: 0,
            ring_bytes: DEFAULT_RING_BYTES,
            preallocate: false,
            name: None,
            _item: PhantomData,
        }
    }

    /// Puts an item, waiting for room as long as it takes.
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if the item cannot be
    /// serialized; [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) after
    /// [`close`](Self::close).
    pub fn put(&self, item: impl std::borrow::Borrow<T>) -> Result<()> {
        self.put_until(item.borrow(), None, true, Duration::ZERO)
    }

    /// Puts an item if there is room now (Python's `put_nowait`).
    ///
    /// # Errors
    /// [`ErrorKind::Full`](crate::ErrorKind::Full) if there is no room; otherwise as for
    /// [`put`](Self::put).
    #[doc(alias = "put_nowait")]
    pub fn try_put(&self, item: impl std::borrow::Borrow<T>) -> Result<()> {
        let deadline = deadline_after(NONBLOCKING_LOCK_WAIT);
        self.put_until(item.borrow(), deadline, false, Duration::ZERO)
    }

    /// Puts an item, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if no room came; otherwise as for
    /// [`put`](Self::put).
    pub fn put_timeout(&self, item: impl std::borrow::Borrow<T>, timeout: Duration) -> Result<()> {
        self.put_until(item.borrow(), deadline_after(timeout), true, timeout)
    }

    /// Puts an item, waiting until `deadline` for room.
    ///
    /// # Errors
    /// As for [`put_timeout`](Self::put_timeout).
    pub fn put_deadline(&self, item: impl std::borrow::Borrow<T>, deadline: Instant) -> Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.put_until(item.borrow(), Some(deadline), true, timeout)
    }

    /// Takes the next item, waiting as long as it takes.
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if the item does not
    /// deserialize as a `T`; [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) after
    /// [`close`](Self::close).
    pub fn get(&self) -> Result<T> {
        self.get_until(None, true, Duration::ZERO)
    }

    /// Takes the next item if there is one now (Python's `get_nowait`).
    ///
    /// # Errors
    /// [`ErrorKind::Empty`](crate::ErrorKind::Empty) if there is none; otherwise as for
    /// [`get`](Self::get).
    #[doc(alias = "get_nowait")]
    pub fn try_get(&self) -> Result<T> {
        self.get_until(deadline_after(NONBLOCKING_LOCK_WAIT), false, Duration::ZERO)
    }

    /// Takes the next item, waiting up to `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if none came; otherwise as for
    /// [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(deadline_after(timeout), true, timeout)
    }

    /// Takes the next item, waiting until `deadline`.
    ///
    /// # Errors
    /// As for [`get_timeout`](Self::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<T> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.get_until(Some(deadline), true, timeout)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::invalid(self.inner.what.as_str(), "closed"));
        }
        Ok(())
    }

    fn failed(&self, why: WaitFailed, block: bool, waited: Duration) -> Error {
        let what = self.inner.what.clone();
        match (why, block) {
            (WaitFailed::WouldBlock, _) => Error::Full { what },
            (WaitFailed::TimedOut, false) => Error::Full { what },
            (WaitFailed::TimedOut, true) => Error::timeout(what, waited),
        }
    }

    fn put_until(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        with_scratch(|buf| {
            let fds = share::encode_into(&self.inner.what, item, buf)?;
            let ring = self.inner.ring();
            let side = !fds.is_empty() || buf.len() > ring.capacity() as usize / 4;
            // A big message is copied into its memory file before the ring is locked.
            let side_file = if side {
                Some(self.side_file(buf)?)
            } else {
                None
            };
            let payload_len = if side { 8 } else { buf.len() };
            let frame = frame_len(payload_len).expect("inline frames are small");
            let mut producer = ring
                .producer(deadline)
                .ok_or_else(|| self.failed(WaitFailed::TimedOut, block, waited))?;
            producer
                .wait_room(frame, deadline, block)
                .map_err(|why| self.failed(why, block, waited))?;
            match side_file {
                None => producer.publish(INLINE, buf),
                Some(file) => {
                    let id = producer.next_side_id();
                    self.send_side(id, buf.len(), file, &fds, deadline, block, waited)?;
                    producer.publish(SIDE, &id.to_le_bytes());
                }
            }
            Ok(())
        })
    }

    fn side_file(&self, bytes: &[u8]) -> Result<Arc<Segment>> {
        let segment = Segment::create(&self.inner.what, bytes.len().max(1), true)?;
        // SAFETY: the segment was just created and nobody else has it yet.
        unsafe { segment.as_mut_slice()[..bytes.len()].copy_from_slice(bytes) };
        Ok(segment)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_side(
        &self,
        id: u64,
        len: usize,
        file: Arc<Segment>,
        fds: &[OwnedFd],
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&id.to_le_bytes());
        header[8..].copy_from_slice(&(len as u64).to_le_bytes());
        let mut all: Vec<BorrowedFd<'_>> = vec![file.fd()];
        all.extend(fds.iter().map(|f| f.as_fd()));
        loop {
            match platform::send_with_fds(
                self.inner.side_tx.as_fd(),
                &[IoSlice::new(&header)],
                &all,
            ) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let ready = block
                        && platform::poll_writable(self.inner.side_tx.as_fd(), deadline).map_err(
                            |e| Error::io(format!("{}: side channel", self.inner.what), e),
                        )?;
                    if !ready {
                        return Err(self.failed(WaitFailed::TimedOut, block, waited));
                    }
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("{}: cannot send through side channel", self.inner.what),
                        e,
                    ));
                }
            }
        }
    }

    fn get_until(&self, deadline: Option<Instant>, block: bool, waited: Duration) -> Result<T> {
        self.check_open()?;
        let empty = |why| match (why, block) {
            (WaitFailed::TimedOut, true) => Error::timeout(self.inner.what.clone(), waited),
            _ => Error::Empty {
                what: self.inner.what.clone(),
            },
        };
        let ring = self.inner.ring();
        with_scratch(|buf| {
            let mut consumer = ring
                .consumer(deadline)
                .ok_or_else(|| empty(WaitFailed::TimedOut))?;
            consumer.wait_frame(deadline, block).map_err(empty)?;
            let kind = consumer.take(buf).map_err(|Corrupt(e)| {
                Error::protocol(self.inner.what.as_str(), format!("corrupt ring: {e}"))
            })?;
            match kind {
                INLINE => {
                    drop(consumer);
                    share::decode(&self.inner.what, buf, Vec::new())
                }
                SIDE => {
                    let id = buf
                        .as_slice()
                        .try_into()
                        .map(u64::from_le_bytes)
                        .map_err(|_| self.corrupt("side frame without an id"))?;
                    // Received while the consumer lock is held, so side messages are taken
                    // in ring order.
                    let (file, len, fds) = self.recv_side(id)?;
                    drop(consumer);
                    // SAFETY: the memory file came to us alone: its sender closed it after
                    // sending, and we did not share it.
                    let bytes = unsafe { file.as_slice() };
                    let bytes = bytes
                        .get(..len)
                        .ok_or_else(|| self.corrupt("side message longer than its file"))?;
                    share::decode(&self.inner.what, bytes, fds)
                }
                other => Err(self.corrupt(&format!("unknown frame kind {other}"))),
            }
        })
    }

    /// Like [`get_timeout`](Self::get_timeout), but waits for an item without holding the
    /// queue's consumer side, so that other threads may take items with `try_get` meanwhile
    /// (a pool's waiters take their own results while its handler thread waits here), and
    /// without spinning: the waiter sleeps at once, leaving the CPU to those who work.
    pub(crate) fn get_timeout_shared(&self, timeout: Duration) -> Result<T> {
        let deadline = deadline_after(timeout);
        loop {
            if self.inner.ring().wait_readable(deadline, false).is_err() {
                return Err(Error::timeout(self.inner.what.clone(), timeout));
            }
            match self.get_until(deadline, false, timeout) {
                Err(e) if e.kind() == crate::ErrorKind::Empty => continue,
                other => return other,
            }
        }
    }

    fn corrupt(&self, detail: &str) -> Error {
        Error::protocol(self.inner.what.as_str(), detail)
    }

    fn recv_side(&self, want: u64) -> Result<(Arc<Segment>, usize, Vec<OwnedFd>)> {
        loop {
            let mut buf = [MaybeUninit::<u8>::uninit(); 16];
            let mut fds = Vec::new();
            let n = platform::recv_with_fds(self.inner.side_rx.as_fd(), &mut buf, &mut fds, true)
                .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock => self.corrupt("side message missing"),
                _ => Error::io(format!("{}: side channel", self.inner.what), e),
            })?;
            if n != 16 || fds.is_empty() {
                return Err(self.corrupt("malformed side message"));
            }
            // SAFETY: recvmsg initialised the first `n` (= 16) bytes.
            let bytes: [u8; 16] = std::array::from_fn(|i| unsafe { buf[i].assume_init() });
            let id = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
            if id < want {
                // Left by a producer that died before publishing its frame, or by a
                // consumer that died after taking the frame: nobody will ask for it.
                continue;
            }
            if id > want {
                return Err(self.corrupt(&format!("side message {id} where {want} was due")));
            }
            let file = fds.remove(0);
            let file = Segment::from_fd(&self.inner.what, file)?;
            let len = usize::try_from(len).map_err(|_| self.corrupt("side message too long"))?;
            return Ok((file, len, fds));
        }
    }

    /// The number of items in the queue now (Python's `qsize()`).
    #[doc(alias = "qsize")]
    pub fn len(&self) -> usize {
        self.inner.ring().len() as usize
    }

    /// Whether the queue holds no item now (Python's `empty()`).
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a small item would not fit now (Python's `full()`).
    #[doc(alias = "full")]
    pub fn is_full(&self) -> bool {
        self.inner.ring().is_full(ring::HEADER + 8)
    }

    /// The item limit, 0 for none.
    pub fn maxsize(&self) -> u32 {
        self.inner.shared.layout().maxsize.load(Ordering::Relaxed)
    }

    /// Closes this process's handles to the queue: later `put`s and `get`s through them fail
    /// with [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState). Other processes are
    /// not affected, and items already put stay in the queue for them.
    pub fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.inner.what)
            .field("len", &self.inner.ring().len())
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let i = &self.inner;
        (
            &i.shared,
            FdOut(i.side_tx.as_fd()),
            FdOut(i.side_rx.as_fd()),
            &i.what,
        )
            .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (shared, FdIn(side_tx), FdIn(side_rx), what) =
            <(Shared<RingLayout>, FdIn, FdIn, String)>::deserialize(d)?;
        let l = shared.layout();
        let capacity = l.capacity.load(Ordering::Relaxed) as usize;
        if !capacity.is_power_of_two() || capacity < 64 || capacity > shared.extra_len() {
            return Err(share::handle_error_de(format!(
                "{what}: ring of {capacity} bytes in a segment of {}",
                shared.extra_len()
            )));
        }
        if l.type_hash.load(Ordering::Relaxed) != type_hash::<T>() {
            return Err(share::handle_error_de(format!(
                "{what}: received as a queue of {}, which it is not",
                std::any::type_name::<T>()
            )));
        }
        if l.flags.load(Ordering::Relaxed) & ring::PREALLOCATED != 0 {
            shared.populate();
        }
        Ok(Queue::from_parts(shared, side_tx, side_rx, what))
    }
}

/// Python's `multiprocessing.SimpleQueue`: here simply a [`Queue`], which is already as lean.
pub type SimpleQueue<T> = Queue<T>;

/// A [`Queue`] that also counts items done (Python's `multiprocessing.JoinableQueue`):
/// consumers call [`task_done`](Self::task_done) once per item they finished, and
/// [`join`](Self::join) waits until every item ever put is done.
///
/// It dereferences to its [`Queue`] for `put`, `get` and the rest.
///
/// # Examples
///
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     while let Ok(n) = q.get() {
///         let _ = n * 2; // the work
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new()?;
/// let mut w = Process::new(worker, q.clone()).daemon(true).start()?;
/// for n in 0..10 {
///     q.put(n)?;
/// }
/// q.join()?; // all ten done
/// w.terminate()?;
/// # let _ = w.join(None);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A joinable queue with no limit on items.
    ///
    /// # Errors
    /// As for [`Queue::new`].
    pub fn new() -> Result<JoinableQueue<T>> {
        Queue::builder().build_joinable()
    }

    /// A joinable queue holding at most `maxsize` items.
    ///
    /// # Errors
    /// As for [`Queue::new`].
    pub fn bounded(maxsize: u32) -> Result<JoinableQueue<T>> {
        Queue::builder().maxsize(maxsize).build_joinable()
    }

    /// Marks one item as done.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if more items were marked
    /// done than were ever put.
    pub fn task_done(&self) -> Result<()> {
        let inner = &self.queue.inner;
        let ring = inner.ring();
        let sleepers = &inner.shared.layout().sleepers;
        let mut done = sleepers.done.load(Ordering::Acquire);
        loop {
            let put = ring.put_count();
            if done == put {
                return Err(Error::invalid(
                    inner.what.as_str(),
                    "task_done() called more times than items were put",
                ));
            }
            match sleepers.done.compare_exchange_weak(
                done,
                done.wrapping_add(1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        // Pairs with the fence in `join_until`: either we see the joiner, or it sees `done`.
        fence(Ordering::SeqCst);
        if sleepers.joiners.load(Ordering::Relaxed) > 0 {
            futex_wake(&sleepers.done, u32::MAX);
        }
        Ok(())
    }

    /// Waits until every item put so far is marked done.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for a queue that breaks.
    pub fn join(&self) -> Result<()> {
        self.join_until(None, Duration::ZERO)
    }

    /// Like [`join`](Self::join), for at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if items were still unfinished.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_until(deadline_after(timeout), timeout)
    }

    /// The number of items put and not yet marked done.
    pub fn unfinished(&self) -> u32 {
        let inner = &self.queue.inner;
        let done = inner.shared.layout().sleepers.done.load(Ordering::Acquire);
        inner.ring().put_count().wrapping_sub(done)
    }

    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        let inner = &self.queue.inner;
        let sleepers = &inner.shared.layout().sleepers;
        loop {
            let done = sleepers.done.load(Ordering::Acquire);
            if done == inner.ring().put_count() {
                return Ok(());
            }
            sleepers.joiners.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let waited_out = if sleepers.done.load(Ordering::Acquire) == done {
                futex_wait(&sleepers.done, done, deadline)
            } else {
                FutexWait::Woken
            };
            sleepers.joiners.fetch_sub(1, Ordering::Relaxed);
            if waited_out == FutexWait::TimedOut
                && sleepers.done.load(Ordering::Acquire) != inner.ring().put_count()
            {
                return Err(Error::timeout(inner.what.clone(), waited));
            }
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.queue).finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(d).map(|queue| JoinableQueue { queue })
    }
}
