//! `Queue<T>`, `JoinableQueue<T>` and `SimpleQueue<T>`: one public type over private flavors
//! (crossbeam-channel's pattern): a shared-memory ring between the processes of one machine
//! (`shm.rs`), or a Redis stream between machines (`redis.rs`).

#[cfg(feature = "broker")]
mod admin;
#[cfg(feature = "manager")]
mod manager;
#[cfg(feature = "broker")]
mod redis;
mod shm;

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(feature = "broker")]
pub use self::admin::{ConsumerStatus, DeadLetter, QueueAdmin, QueueStatus};
#[cfg(feature = "manager")]
use self::manager::ManagerQueue;
#[cfg(feature = "broker")]
use self::redis::{BrokerSettings, RedisQueue};
use self::shm::{DEFAULT_RING_BYTES, NONBLOCKING_LOCK_WAIT, ShmQueue};
use crate::error::{Error, Result};
#[cfg(feature = "manager")]
use crate::manager::Address;
use crate::sync::deadline_after;

/// A queue shared between processes and threads (Python's `multiprocessing.Queue`).
///
/// Items are any `T: Serialize + DeserializeOwned`; handles inside them (queues, pipe ends,
/// locks, shared memory) arrive as handles to the same objects. Many producers and many
/// consumers, in any processes, may use it at once; each item is received exactly once, and
/// the items of one producer arrive in the order it put them.
///
/// Items live in a ring of shared memory (1 MiB unless [`QueueBuilder::ring_bytes`] says
/// otherwise). A [`bounded`](Self::bounded) queue also holds at most `maxsize` items; an
/// unbounded one never makes `put` wait: what does not fit waits in the producer's memory (see
/// [`put`](Self::put)). An item larger than a quarter of the ring travels beside it, in a
/// memory file of its own.
///
/// With the `broker` feature, the same type can sit on a broker instead
/// (`QueueBuilder::broker`, or `Queue::connect`): a Redis stream that processes on other machines use too, with
/// at-least-once delivery (see [`JoinableQueue`]).
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
    flavor: Flavor,
    _item: PhantomData<fn(T) -> T>,
}

/// Where a queue's items live.
#[derive(Clone)]
enum Flavor {
    Shm(Arc<ShmQueue>),
    #[cfg(feature = "broker")]
    Redis(Arc<RedisQueue>),
    #[cfg(feature = "manager")]
    Manager(Arc<ManagerQueue>),
}

impl<T> Queue<T> {
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
    #[cfg(feature = "broker")]
    broker: Option<String>,
    #[cfg(feature = "broker")]
    settings: BrokerSettings,
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

    /// A name for error messages (`queue "tasks": timed out after 1s`); on a broker, the name
    /// of the queue there (required).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// Put the queue on a broker instead of in shared memory: `redis://host:port/db`,
    /// `rediss://…` (TLS; the certificate is checked against the system's roots or
    /// `SSL_CERT_FILE`) or `redis+unix:///path/to/socket`. Items travel as JSON, so other
    /// languages can take part (the entry format is in `docs/broker.md`).
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.broker = Some(url.into());
        self
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// On a broker: how long a taken item stays leased to its consumer before another may
    /// take it (default 30 s). A live consumer's leases are renewed while it works; a dead
    /// one's run out and its items are delivered again.
    ///
    /// It is the queue's setting, shared by every handle (consumers with different leases
    /// would take each other's items): the first handle to connect stores it with the queue
    /// (`<name>:config`), later handles take it from there, and one that asks for another
    /// value is refused. Leave it unset to take the queue's.
    pub fn lease(mut self, lease: Duration) -> Self {
        // Stored in whole milliseconds: a handle asking for the same again must match.
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        self.settings.lease = Duration::from_millis(ms);
        self.settings.asked.lease = true;
        self
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// On a broker: after this many deliveries (default 5), an item that never got done goes
    /// to the dead-letter stream (`<name>:dead`) with its last error. The queue's setting,
    /// shared as [`lease`](Self::lease) is.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.settings.max_deliveries = n.max(1);
        self.settings.asked.max_deliveries = true;
        self
    }

    /// Creates the queue (or, on a broker, connects to it, creating it if it does not exist).
    ///
    /// # Errors
    /// If the shared memory or the side channel cannot be created; on a broker, a bad URL, a
    /// missing name, or a broker that cannot be reached (the error names the URL).
    pub fn build(self) -> Result<Queue<T>> {
        self.build_flavor(false)
    }

    /// Creates a [`JoinableQueue`].
    ///
    /// # Errors
    /// As for [`build`](Self::build).
    pub fn build_joinable(self) -> Result<JoinableQueue<T>> {
        self.build_flavor(true).map(|queue| JoinableQueue { queue })
    }

    /// On a broker a plain queue's `get` removes the item at once; a joinable queue's leases
    /// it until `task_done`.
    #[cfg_attr(not(feature = "broker"), allow(unused_variables))]
    fn build_flavor(self, joinable: bool) -> Result<Queue<T>> {
        #[cfg(feature = "broker")]
        if let Some(url) = &self.broker {
            let name = self.name.as_deref().ok_or_else(|| {
                Error::invalid(
                    "queue",
                    "a queue on a broker needs a name (QueueBuilder::name)",
                )
            })?;
            let mut settings = self.settings.clone();
            settings.maxsize = self.maxsize;
            settings.joinable = joinable;
            let queue = RedisQueue::connect(url, name, settings)?;
            return Ok(Queue::of(Flavor::Redis(Arc::new(queue))));
        }
        let what = match &self.name {
            Some(n) => format!("queue {n:?}"),
            None => "queue".to_string(),
        };
        let queue = ShmQueue::create::<T>(what, self.ring_bytes, self.maxsize, self.preallocate)?;
        Ok(Queue::of(Flavor::Shm(Arc::new(queue))))
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

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// The queue `name` on the broker at `url` (see [`QueueBuilder::broker`]), created there
    /// if it does not exist.
    ///
    /// # Errors
    /// A bad URL, or a broker that cannot be reached: the error names the URL.
    pub fn connect(url: &str, name: &str) -> Result<Queue<T>> {
        Queue::builder().broker(url).name(name).build()
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
    /// server.register_queue("get_task_queue");
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

    /// A builder for the other settings.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            maxsize: 0,
            ring_bytes: DEFAULT_RING_BYTES,
            preallocate: false,
            name: None,
            #[cfg(feature = "broker")]
            broker: None,
            #[cfg(feature = "broker")]
            settings: BrokerSettings::default(),
            _item: PhantomData,
        }
    }

    /// Puts an item, waiting for room as long as it takes on a bounded queue.
    ///
    /// An unbounded queue's `put` does not wait, as CPython's does not: when its ring stays
    /// full for a few milliseconds, the item waits in this process's memory and a feeder
    /// thread moves it in as consumers make room (this handle's items keep their order, and
    /// count as unfinished for [`JoinableQueue::join`]). Dropping the last handle in the
    /// process waits for that backlog to go in, while consumers take items. `try_put` does
    /// not use the backlog: it says [`Full`](crate::ErrorKind::Full) when the ring is.
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

    fn put_until(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        match &self.flavor {
            Flavor::Shm(q) => q.put_until(item, deadline, block, waited),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.put_until(item, deadline, block, waited),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.put_until(item, deadline, block, waited),
        }
    }

    fn get_until(&self, deadline: Option<Instant>, block: bool, waited: Duration) -> Result<T> {
        match &self.flavor {
            Flavor::Shm(q) => q.get_until(deadline, block, waited),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.get_until(deadline, block, waited),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.get_until(deadline, block, waited),
        }
    }

    /// Like [`get_timeout`](Self::get_timeout), but waits for an item without holding the
    /// queue's consumer side, so that other threads may take items with `try_get` meanwhile
    /// (a pool's waiters take their own results while its handler thread waits here), and
    /// without spinning: the waiter sleeps at once, leaving the CPU to those who work. The
    /// item's bytes go to `decode` as they are in the receive buffer (shared memory only).
    pub(crate) fn get_timeout_shared_with<R>(
        &self,
        timeout: Duration,
        decode: impl FnMut(&str, &[u8], Vec<std::os::fd::OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        match &self.flavor {
            Flavor::Shm(q) => q.get_timeout_shared_with(timeout, decode),
            #[allow(unreachable_patterns)] // the other flavors, when built in
            _ => Err(Error::invalid(
                "queue",
                "only a shared-memory queue lends its bytes",
            )),
        }
    }

    /// Takes an item if there is one now, handing its bytes to `decode` as they are in the
    /// receive buffer (shared memory only): no copy for a reader that decodes in place.
    pub(crate) fn try_get_with<R>(
        &self,
        decode: impl FnOnce(&str, &[u8], Vec<std::os::fd::OwnedFd>) -> Result<R>,
    ) -> Result<R> {
        match &self.flavor {
            Flavor::Shm(q) => q.get_until_with(
                deadline_after(NONBLOCKING_LOCK_WAIT),
                false,
                Duration::ZERO,
                decode,
            ),
            #[allow(unreachable_patterns)] // the other flavors, when built in
            _ => Err(Error::invalid(
                "queue",
                "only a shared-memory queue lends its bytes",
            )),
        }
    }

    /// The number of items in the queue now (Python's `qsize()`); on a broker, the items not
    /// yet taken by any consumer (0 if the broker cannot be asked: see
    /// [`JoinableQueue::unfinished`] for a count that can fail).
    #[doc(alias = "qsize")]
    pub fn len(&self) -> usize {
        match &self.flavor {
            Flavor::Shm(q) => q.len(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.waiting().unwrap_or(0),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.len().unwrap_or(0),
        }
    }

    /// Whether the queue holds no item now (Python's `empty()`).
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a small item would not fit now (Python's `full()`).
    #[doc(alias = "full")]
    pub fn is_full(&self) -> bool {
        match &self.flavor {
            Flavor::Shm(q) => q.is_full(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.is_full(),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.is_full().unwrap_or(false),
        }
    }

    /// The item limit, 0 for none.
    pub fn maxsize(&self) -> u32 {
        match &self.flavor {
            Flavor::Shm(q) => q.maxsize(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.maxsize(),
            #[cfg(feature = "manager")]
            Flavor::Manager(_) => 0,
        }
    }

    /// Waits until every item put through this handle is stored in the queue, and tells of
    /// any that could not be.
    ///
    /// On a broker, [`put`](Self::put) writes the entry and goes on without waiting for the
    /// broker's reply (consumers see the item as soon as the broker reads it); replies are
    /// read in batches, and by this call. Dropping the handle flushes too, but can only log
    /// what went wrong. In shared memory and on a manager a `put` is stored when it returns,
    /// and this does nothing.
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
        match &self.flavor {
            Flavor::Shm(_) => Ok(()),
            #[cfg(feature = "manager")]
            Flavor::Manager(_) => Ok(()),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.flush(Some(Instant::now() + self::redis::COMMAND_TIMEOUT)),
        }
    }

    /// Closes this process's handles to the queue: later `put`s and `get`s through them fail
    /// with [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState). Other processes are
    /// not affected, and items already put stay in the queue for them.
    pub fn close(&self) {
        match &self.flavor {
            Flavor::Shm(q) => q.close(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.close(),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.close(),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.flavor {
            Flavor::Shm(q) => f
                .debug_struct("Queue")
                .field("name", &q.what())
                .field("len", &q.len())
                .finish(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => f
                .debug_struct("Queue")
                .field("name", &q.name())
                .field("broker", &q.url())
                .finish(),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => f
                .debug_struct("Queue")
                .field("typeid", &q.typeid())
                .finish_non_exhaustive(),
        }
    }
}

/// Whether this process's handles to a queue were closed ([`Queue::close`]), for every flavor.
#[derive(Default)]
struct Closed(std::sync::atomic::AtomicBool);

impl Closed {
    fn close(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// An error naming the queue once closed.
    fn check(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::invalid(what(), "closed"));
        }
        Ok(())
    }
}

/// Which flavor a serialized queue is.
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
/// On a broker (`QueueBuilder::broker`, with the `broker` feature) delivery is at least once:
/// `get` takes a lease on the item, `task_done` (for the oldest item this handle took and has
/// not finished) acknowledges it, `task_failed` gives it back with an error. An item whose
/// consumer dies is delivered again once its lease runs out; after `max_deliveries` it goes
/// to the dead-letter stream.
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

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// The joinable queue `name` on the broker at `url` (see [`Queue::connect`]).
    ///
    /// # Errors
    /// As for [`Queue::connect`].
    pub fn connect(url: &str, name: &str) -> Result<JoinableQueue<T>> {
        Queue::builder().broker(url).name(name).build_joinable()
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
        Queue::connect_manager(address, authkey, typeid).map(|queue| JoinableQueue { queue })
    }

    /// Marks one item as done (on a broker: acknowledges the oldest item this handle took; the
    /// acknowledgement goes to the broker with this handle's next call, usually the next
    /// `get`, or when the handle is dropped).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) if more items were marked
    /// done than were ever put (taken, on a broker); on a broker, a broker that cannot be
    /// reached.
    pub fn task_done(&self) -> Result<()> {
        match &self.queue.flavor {
            Flavor::Shm(q) => q.task_done(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.task_done(),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.task_done(),
        }
    }

    #[cfg(feature = "broker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
    /// Marks the oldest item this handle took as failed with `reason`. On a broker it is
    /// given back at once to be delivered again (to any consumer), or sent to the dead-letter
    /// stream with `reason` if it had its [`max_deliveries`](QueueBuilder::max_deliveries).
    /// In shared memory there is no redelivery: this is [`task_done`](Self::task_done).
    ///
    /// # Errors
    /// As for [`task_done`](Self::task_done).
    pub fn task_failed(&self, reason: &str) -> Result<()> {
        match &self.queue.flavor {
            Flavor::Shm(q) => q.task_done(),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.task_failed(reason),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.task_done(),
        }
    }

    /// Waits until every item put so far is marked done.
    ///
    /// # Errors
    /// On a broker, a broker that cannot be reached; in shared memory, none.
    pub fn join(&self) -> Result<()> {
        self.join_until(None, Duration::ZERO)
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
        self.join_until(deadline_after(timeout), timeout)
    }

    /// The number of items put and not yet marked done (on a broker: in the stream, taken
    /// or not; dead-lettered items are done).
    ///
    /// # Errors
    /// On a broker, a broker that cannot be reached.
    pub fn unfinished(&self) -> Result<u64> {
        match &self.queue.flavor {
            Flavor::Shm(q) => Ok(u64::from(q.unfinished())),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.unfinished(),
            #[cfg(feature = "manager")]
            Flavor::Manager(_) => Err(Error::invalid(
                "queue on a manager",
                "the count of unfinished items is not exposed by a manager",
            )),
        }
    }

    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        match &self.queue.flavor {
            Flavor::Shm(q) => q.join_until(deadline, waited),
            #[cfg(feature = "broker")]
            Flavor::Redis(q) => q.join_until(deadline, waited),
            #[cfg(feature = "manager")]
            Flavor::Manager(q) => q.join_until(deadline, waited),
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
