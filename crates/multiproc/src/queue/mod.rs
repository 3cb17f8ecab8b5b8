//! `Queue<T>`, `JoinableQueue<T>` and `SimpleQueue<T>`: one public type over private flavors
//! (crossbeam-channel's pattern), each in `flavors/`: a shared-memory ring between the
//! processes of one machine (`shm`), a queue held by a manager server (`manager`, with the
//! `manager` feature), or a Redis stream between machines (`redis`, with the `broker`
//! feature). `README.md` says what adding a flavor touches.

#[cfg(all(feature = "async", not(loom)))]
mod awaitable;
mod flavors;

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use self::flavors::QueueFlavor;
#[cfg(feature = "manager")]
use self::flavors::manager::{ManagerQueue, ServedFlavor};
#[cfg(feature = "broker")]
pub use self::flavors::redis::{
    BrokerQueueBuilder, ConsumerStatus, DeadLetter, QueueAdmin, QueueStatus,
};
#[cfg(feature = "broker")]
pub(crate) use self::flavors::redis::{Due, Leased, Packed, Reading, RedisQueue, pack};
pub use self::flavors::shm::QueueBuilder;
use self::flavors::shm::ShmQueue;
pub(crate) use self::flavors::shm::ShmQueueOf;
#[cfg(feature = "manager")]
use crate::connection::Address;
use crate::error::Result;
use crate::sync::deadline_after;

/// A queue shared between processes and threads (Python's `multiprocessing.Queue`).
///
/// Items are any `T: Serialize + DeserializeOwned`; handles inside them (queues, pipe ends,
/// locks, shared memory) arrive as handles to the same objects. Many producers and many
/// consumers, in any processes, may use it at once; each item is received exactly once, and
/// the items of one producer arrive in the order it put them.
///
/// Where the items live is the queue's flavor, chosen when it is made; every method means
/// the same on each:
/// - **shared memory** ([`Queue::new`], [`Queue::bounded`], [`Queue::builder`]): a ring in a
///   memory file that the processes of one machine map (1 MiB unless
///   [`QueueBuilder::ring_bytes`] says otherwise). A [`bounded`](Self::bounded) queue also
///   holds at most `maxsize` items; an unbounded one never makes `put` wait: what does not
///   fit waits in the producer's memory (see [`put`](Self::put)). An item larger than a
///   quarter of the ring travels beside it, in a memory file of its own.
/// - **a manager server** (`manager` feature: `Queue::connect_manager`,
///   `ManagerClient::queue`, `ManagerServer::register_queue`): a queue held by a server,
///   ours or CPython's, that other machines and Python programs use too.
/// - **a broker** (`broker` feature: `Queue::connect`, `Queue::broker`): a Redis stream,
///   with at-least-once delivery (see [`JoinableQueue`]).
///
/// A flavor that cannot do something fails with
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), never a panic.
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
/// child.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
/// A shared-memory queue without `maxsize` is unbounded in items but not in bytes: when its
/// ring is full, `put` waits for consumers (CPython buffers in the producer instead, and loses
/// that buffer if the producer dies).
pub struct Queue<T> {
    flavor: Flavor,
    _item: PhantomData<fn(T) -> T>,
}

/// Where a queue's items live: one variant per flavor.
#[derive(Clone)]
enum Flavor {
    Shm(Arc<ShmQueue>),
    #[cfg(feature = "manager")]
    Manager(Arc<ManagerQueue>),
    #[cfg(feature = "manager")]
    Served(Arc<ServedFlavor>),
    #[cfg(feature = "broker")]
    Redis(Arc<RedisQueue>),
}

/// Runs `$body` with `$q` bound to the flavor behind `$flavor`, whichever it is.
macro_rules! with_flavor {
    ($flavor:expr, $q:ident => $body:expr) => {
        match $flavor {
            Flavor::Shm($q) => $body,
            #[cfg(feature = "manager")]
            Flavor::Manager($q) => $body,
            #[cfg(feature = "manager")]
            Flavor::Served($q) => $body,
            #[cfg(feature = "broker")]
            Flavor::Redis($q) => $body,
        }
    };
}

impl<T> Queue<T> {
    /// The broker flavor behind this handle (the broker pool's streams).
    #[cfg(feature = "broker")]
    pub(crate) fn redis(&self) -> Result<&self::flavors::redis::RedisQueue> {
        match &self.flavor {
            Flavor::Redis(q) => Ok(q),
            #[allow(unreachable_patterns)]
            _ => Err(crate::error::Error::Unsupported {
                what: "queue".into(),
                operation: "redis",
                detail: "not a broker's queue".into(),
            }),
        }
    }

    fn of(flavor: Flavor) -> Queue<T> {
        Queue {
            flavor,
            _item: PhantomData,
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue::of(self.flavor.clone())
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A shared-memory queue with no limit on items (see the caveat above).
    ///
    /// # Errors
    /// If the shared memory or the side channel cannot be created.
    pub fn new() -> Result<Queue<T>> {
        Queue::builder().build()
    }

    /// A shared-memory queue holding at most `maxsize` items; `put` waits while it is full.
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn bounded(maxsize: u32) -> Result<Queue<T>> {
        Queue::builder().maxsize(maxsize).build()
    }

    /// A builder for a shared-memory queue's other settings.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::new()
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// A builder for the queue `name` on the broker at `url`: `redis://host:port/db`,
    /// `rediss://…` (TLS, with the `tls` feature; the certificate is checked against the
    /// system's roots or `SSL_CERT_FILE`) or `redis+unix:///path/to/socket`. Items travel as
    /// JSON, so other languages can take part (the entry format is in `docs/broker.md`). The
    /// queue's keys are under the prefix `multiproc:` (the stream `multiproc:<name>`) unless
    /// [`BrokerQueueBuilder::prefix`] or the URL's `prefix=` says otherwise.
    pub fn broker(url: impl Into<String>, name: impl Into<String>) -> BrokerQueueBuilder<T> {
        BrokerQueueBuilder::new(url.into(), name.into())
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// The queue `name` on the broker at `url` (see [`Queue::broker`]), created there if it
    /// does not exist; its keys are under the prefix the URL's `prefix=` gives
    /// (`redis://host/0?prefix=app%3A`), `multiproc:` without one.
    ///
    /// # Errors
    /// A bad URL or prefix, or a broker that cannot be reached: the error names the URL.
    pub fn connect(url: &str, name: &str) -> Result<Queue<T>> {
        Queue::broker(url, name).build()
    }

    #[cfg(feature = "manager")]
    #[cfg_attr(docsrs, doc(cfg(feature = "manager")))]
    /// The queue a manager server at `address` registered as `typeid` (`get_task_queue`; ours
    /// or CPython's `BaseManager`), through its proxy. Items travel as pickles: they must map
    /// onto Python's data model. `maxsize` is the server's business (0 here).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerServer, Queue};
    ///
    /// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"key")?;
    /// server.register_queue::<i64>("get_task_queue");
    /// let running = server.serve_in_background()?;
    /// let tasks: Queue<i64> = Queue::connect_manager(running.address(), b"key", "get_task_queue")?;
    /// tasks.put(7)?;
    /// assert_eq!(tasks.get()?, 7);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// A server that cannot be reached, a wrong authkey, or no such typeid.
    pub fn connect_manager(address: &Address, authkey: &[u8], typeid: &str) -> Result<Queue<T>> {
        let queue = ManagerQueue::connect(address, authkey, typeid)?;
        Ok(Queue::of(Flavor::Manager(Arc::new(queue))))
    }

    /// Puts an item, waiting for room as long as it takes on a bounded queue.
    ///
    /// An unbounded shared-memory queue's `put` does not wait, as CPython's does not: when
    /// its ring stays full for a few milliseconds, the item waits in this process's memory
    /// and a feeder thread moves it in as consumers make room (this handle's items keep
    /// their order, and count as unfinished for [`JoinableQueue::join`]). Dropping the last
    /// handle in the process waits for that backlog to go in, while consumers take items.
    /// `try_put` does not use the backlog: it says [`Full`](crate::ErrorKind::Full) when the
    /// ring is.
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if the item cannot be
    /// serialized; [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) after
    /// [`close`](Self::close).
    pub fn put(&self, item: impl std::borrow::Borrow<T>) -> Result<()> {
        let item = item.borrow();
        with_flavor!(&self.flavor, q => q.put_until(item, None, true, Duration::ZERO))
    }

    /// Puts an item if there is room now (Python's `put_nowait`), without waiting for
    /// anything: not for room, and not for another thread or process in the middle of a
    /// `put` to the same shared-memory queue (then there is no room now either). On a
    /// manager or a broker it is one round trip.
    ///
    /// # Errors
    /// [`ErrorKind::Full`](crate::ErrorKind::Full) if there is no room; otherwise as for
    /// [`put`](Self::put).
    #[doc(alias = "put_nowait")]
    pub fn try_put(&self, item: impl std::borrow::Borrow<T>) -> Result<()> {
        let item = item.borrow();
        let now = Some(Instant::now());
        with_flavor!(&self.flavor, q => q.put_until(item, now, false, Duration::ZERO))
    }

    /// Puts an item, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if no room came; otherwise as for
    /// [`put`](Self::put).
    pub fn put_timeout(&self, item: impl std::borrow::Borrow<T>, timeout: Duration) -> Result<()> {
        let (item, deadline) = (item.borrow(), deadline_after(timeout));
        with_flavor!(&self.flavor, q => q.put_until(item, deadline, true, timeout))
    }

    /// Puts an item, waiting until `deadline` for room.
    ///
    /// # Errors
    /// As for [`put_timeout`](Self::put_timeout).
    pub fn put_deadline(&self, item: impl std::borrow::Borrow<T>, deadline: Instant) -> Result<()> {
        let item = item.borrow();
        let timeout = deadline.saturating_duration_since(Instant::now());
        with_flavor!(&self.flavor, q => q.put_until(item, Some(deadline), true, timeout))
    }

    /// Takes the next item, waiting as long as it takes.
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if the item does not
    /// deserialize as a `T`; [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) after
    /// [`close`](Self::close).
    pub fn get(&self) -> Result<T> {
        with_flavor!(&self.flavor, q => q.get_until(None, true, Duration::ZERO))
    }

    /// Takes the next item if there is one now (Python's `get_nowait`), without waiting for
    /// anything: as CPython's, it finds nothing while another thread or process is taking an
    /// item from the same shared-memory queue (or waits in `get` for one). On a manager or a
    /// broker it is one round trip.
    ///
    /// # Errors
    /// [`ErrorKind::Empty`](crate::ErrorKind::Empty) if there is none; otherwise as for
    /// [`get`](Self::get).
    #[doc(alias = "get_nowait")]
    pub fn try_get(&self) -> Result<T> {
        let now = Some(Instant::now());
        with_flavor!(&self.flavor, q => q.get_until(now, false, Duration::ZERO))
    }

    /// Takes the next item, waiting up to `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if none came; otherwise as for
    /// [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let deadline = deadline_after(timeout);
        with_flavor!(&self.flavor, q => q.get_until(deadline, true, timeout))
    }

    /// Takes the next item, waiting until `deadline`.
    ///
    /// # Errors
    /// As for [`get_timeout`](Self::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<T> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        with_flavor!(&self.flavor, q => q.get_until(Some(deadline), true, timeout))
    }

    /// The number of items in the queue now (Python's `qsize()`); on a broker, the items not
    /// yet taken by any consumer. 0 if a manager or broker cannot be asked: see
    /// [`JoinableQueue::unfinished`] for a count that can fail.
    #[doc(alias = "qsize")]
    pub fn len(&self) -> usize {
        with_flavor!(&self.flavor, q => q.len())
    }

    /// Whether the queue holds no item now (Python's `empty()`).
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a small item would not fit now (Python's `full()`).
    #[doc(alias = "full")]
    pub fn is_full(&self) -> bool {
        with_flavor!(&self.flavor, q => q.is_full())
    }

    /// The item limit, 0 for none (or, on a manager's queue this side did not make, not
    /// known here).
    pub fn maxsize(&self) -> u32 {
        with_flavor!(&self.flavor, q => q.maxsize())
    }

    /// Waits until every item put through this handle is stored in the queue, and tells of
    /// any that could not be.
    ///
    /// On a broker, [`put`](Self::put) writes the entry and goes on without waiting for the
    /// broker's reply (consumers see the item as soon as the broker reads it); replies are
    /// read in batches, and by this call. Dropping the handle flushes too, but can only log
    /// what went wrong. In shared memory and on a manager a `put` is stored when it returns,
    /// and this has nothing to do.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = multiproc::Queue::<u32>::new()?;
    /// q.put(1)?;
    /// q.flush()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the broker refused an item (out of
    /// memory, say: that item is not queued); [`ErrorKind::Io`](crate::ErrorKind::Io) if it
    /// cannot be reached before the usual command timeout.
    pub fn flush(&self) -> Result<()> {
        with_flavor!(&self.flavor, q => q.flush())
    }

    /// Closes this process's handles to the queue: later `put`s and `get`s through them fail
    /// with [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState). Other processes are
    /// not affected, and items already put stay in the queue for them.
    pub fn close(&self) {
        with_flavor!(&self.flavor, q => q.close())
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Queue");
        with_flavor!(&self.flavor, q => q.describe(&mut d));
        d.finish()
    }
}

/// Which flavor a serialized queue is. A queue its manager serves in this process travels as
/// a proxy to the same queue.
#[derive(Serialize, Deserialize)]
enum FlavorTag {
    Shm,
    #[cfg(feature = "broker")]
    Redis,
    #[cfg(feature = "manager")]
    Manager,
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        match &self.flavor {
            Flavor::Shm(q) => {
                t.serialize_element(&FlavorTag::Shm)?;
                t.serialize_element(&ShmParts(q))?;
            }
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => {
                t.serialize_element(&FlavorTag::Redis)?;
                t.serialize_element(&q.handle())?;
            }
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => {
                t.serialize_element(&FlavorTag::Manager)?;
                t.serialize_element(&q.handle())?;
            }
            #[cfg(feature = "manager")]
            Flavor::Served(q) => {
                t.serialize_element(&FlavorTag::Manager)?;
                t.serialize_element(&q.handle())?;
            }
        }
        t.end()
    }
}

/// The shared-memory flavor's serialized parts.
struct ShmParts<'a>(&'a ShmQueue);

impl Serialize for ShmParts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct FlavorVisitor<T>(PhantomData<fn(T) -> T>);
        impl<'de, T> serde::de::Visitor<'de> for FlavorVisitor<T> {
            type Value = Queue<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a queue")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Queue<T>, A::Error> {
                use serde::de::Error as _;
                let tag: FlavorTag = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let flavor = match tag {
                    FlavorTag::Shm => Flavor::Shm(Arc::new(
                        seq.next_element_seed(ShmSeed::<T>(PhantomData))?
                            .ok_or_else(|| A::Error::invalid_length(1, &self))?,
                    )),
                    #[cfg(feature = "broker")]
                    FlavorTag::Redis => {
                        let handle = seq
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                        let queue = RedisQueue::reopen(handle)
                            .map_err(|e| crate::share::handle_error_de(e.to_string()))?;
                        Flavor::Redis(Arc::new(queue))
                    }
                    #[cfg(feature = "manager")]
                    FlavorTag::Manager => {
                        let handle = seq
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                        let queue = ManagerQueue::reopen(handle)
                            .map_err(|e| crate::share::handle_error_de(e.to_string()))?;
                        Flavor::Manager(Arc::new(queue))
                    }
                };
                Ok(Queue::of(flavor))
            }
        }
        d.deserialize_tuple(2, FlavorVisitor::<T>(PhantomData))
    }
}

/// Deserializes the shared-memory flavor, checking the item type.
struct ShmSeed<T>(PhantomData<fn(T) -> T>);

impl<'de, T> serde::de::DeserializeSeed<'de> for ShmSeed<T> {
    type Value = ShmQueue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<ShmQueue, D::Error> {
        ShmQueue::deserialize::<T, D>(d)
    }
}

/// Python's `multiprocessing.SimpleQueue`: here simply a [`Queue`], which is already as lean.
pub type SimpleQueue<T> = Queue<T>;

/// A [`Queue`] that also counts items done (Python's `multiprocessing.JoinableQueue`):
/// consumers call [`task_done`](Self::task_done) once per item they finished, and
/// [`join`](Self::join) waits until every item ever put is done.
///
/// On a broker (with the `broker` feature) delivery is at least once: `get` takes a lease on
/// the item, `task_done` (for the oldest item this handle took and has not finished)
/// acknowledges it, `task_failed` gives it back with an error. An item whose consumer dies is
/// delivered again once its lease runs out; after `max_deliveries` it goes to the dead-letter
/// stream.
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
/// # let _ = w.join();
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> JoinableQueue<T> {
    fn of(queue: Queue<T>) -> JoinableQueue<T> {
        JoinableQueue { queue }
    }
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
    /// A joinable shared-memory queue with no limit on items.
    ///
    /// # Errors
    /// As for [`Queue::new`].
    pub fn new() -> Result<JoinableQueue<T>> {
        Queue::builder().build_joinable()
    }

    /// A joinable shared-memory queue holding at most `maxsize` items.
    ///
    /// # Errors
    /// As for [`Queue::new`].
    pub fn bounded(maxsize: u32) -> Result<JoinableQueue<T>> {
        Queue::builder().maxsize(maxsize).build_joinable()
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// The joinable queue `name` on the broker at `url` (see [`Queue::broker`]), its keys
    /// under the URL's `prefix=` or `multiproc:` (as for [`Queue::connect`]).
    ///
    /// # Errors
    /// As for [`Queue::connect`].
    pub fn connect(url: &str, name: &str) -> Result<JoinableQueue<T>> {
        Queue::broker(url, name).build_joinable()
    }

    #[cfg(feature = "manager")]
    #[cfg_attr(docsrs, doc(cfg(feature = "manager")))]
    /// The joinable queue a manager server registered as `typeid` (see
    /// [`Queue::connect_manager`]); `task_done` and `join` are the server's.
    ///
    /// # Errors
    /// As for [`Queue::connect_manager`].
    pub fn connect_manager(
        address: &Address,
        authkey: &[u8],
        typeid: &str,
    ) -> Result<JoinableQueue<T>> {
        Queue::connect_manager(address, authkey, typeid).map(JoinableQueue::of)
    }

    /// Marks one item as done (on a broker: acknowledges the oldest item this handle took; the
    /// acknowledgement goes to the broker with this handle's next call, usually the next
    /// `get`, or when the handle is dropped).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if more items were marked
    /// done than were ever put (taken, on a broker); on a manager or a broker, one that
    /// cannot be reached.
    pub fn task_done(&self) -> Result<()> {
        with_flavor!(&self.queue.flavor, q => q.task_done())
    }

    /// Marks the oldest item this handle took as failed with `reason`. On a broker it is
    /// given back at once to be delivered again (to any consumer), or sent to the dead-letter
    /// stream with `reason` if it had its `max_deliveries` (a setting of the broker queue's
    /// builder). The other flavors do
    /// not deliver again: there this is [`task_done`](Self::task_done).
    ///
    /// # Errors
    /// As for [`task_done`](Self::task_done).
    pub fn task_failed(&self, reason: &str) -> Result<()> {
        with_flavor!(&self.queue.flavor, q => q.task_failed(reason))
    }

    /// Marks the oldest item this handle took as one that must never be handed out again (a
    /// forged or foreign task): on a broker it goes to the dead-letter stream with `reason` at
    /// once, whatever its deliveries; the other flavors keep no dead letters, and there this is
    /// [`task_done`](Self::task_done).
    ///
    /// # Errors
    /// As for [`task_done`](Self::task_done).
    pub fn task_rejected(&self, reason: &str) -> Result<()> {
        with_flavor!(&self.queue.flavor, q => q.task_rejected(reason))
    }

    /// The broker flavor behind this handle, for leases finished out of turn (the broker
    /// pool's workers): [`Leased`] items and `finish_lease`, `fail_lease`, `reject_lease`.
    #[cfg(feature = "broker")]
    pub(crate) fn leases(&self) -> Result<&self::flavors::redis::RedisQueue> {
        self.queue.redis()
    }

    /// Waits until every item put so far is marked done.
    ///
    /// # Errors
    /// On a manager or a broker, one that cannot be reached; in shared memory, none.
    pub fn join(&self) -> Result<()> {
        with_flavor!(&self.queue.flavor, q => q.join_until(None, Duration::ZERO))
    }

    /// Like [`join`](Self::join), for at most `timeout`.
    ///
    /// On a manager, whose `join` cannot time out, a thread of this handle waits in `join`
    /// on a connection of its own; a call that times out leaves it waiting for the next
    /// `join` or `join_timeout` to pick up (one such thread per handle at most).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if items were still unfinished.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        let deadline = deadline_after(timeout);
        with_flavor!(&self.queue.flavor, q => q.join_until(deadline, timeout))
    }

    /// Like [`join`](Self::join), until `deadline`.
    ///
    /// # Errors
    /// As for [`join_timeout`](Self::join_timeout).
    pub fn join_deadline(&self, deadline: Instant) -> Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        with_flavor!(&self.queue.flavor, q => q.join_until(Some(deadline), timeout))
    }

    /// The number of items put and not yet marked done (on a broker: in the stream, taken
    /// or not; dead-lettered items are done).
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) through a manager's proxy
    /// (CPython's queues do not expose the count; the serving process's own handle does);
    /// on a broker, one that cannot be reached.
    pub fn unfinished(&self) -> Result<u64> {
        with_flavor!(&self.queue.flavor, q => q.unfinished())
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
        Queue::deserialize(d).map(JoinableQueue::of)
    }
}
