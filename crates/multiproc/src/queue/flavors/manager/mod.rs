//! The manager flavor of a queue: a queue served by a manager server (ours or CPython's),
//! used through its proxy. Items travel as pickles, so they must map onto Python's data model.

//! The manager flavor of a queue: a queue served by a manager server (ours or CPython's),
//! used through its proxy (`ManagerQueue`), or, in the process that serves it, directly
//! (`served.rs`). Items travel as pickles, so they must map onto Python's data model.
//!
//! The constructors are methods of [`ManagerClient`] and [`ManagerServer`](crate::ManagerServer)
//! defined here, beside the flavor they build: `manager/` knows nothing of queues but the
//! served object itself.

#[cfg(all(feature = "async", not(loom)))]
mod awaiting;
mod served;

#[cfg(all(feature = "async", not(loom)))]
pub(in crate::queue) use awaiting::InFlight;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(in crate::queue) use served::ServedFlavor;

use super::QueueFlavor;
use crate::connection::{Address, WireConnection};
use crate::error::{Error, ErrorKind, Result};
use crate::manager::{ManagerClient, Proxy};
use crate::pickle::{self, Value};
use crate::queue::{Flavor, JoinableQueue, Queue};
use crate::sync::IgnorePoison;

/// At most this many idle connections per handle (one per thread that used it at once).
const MAX_IDLE_CONNECTIONS: usize = 8;

impl ManagerClient {
    /// The queue the server registered as `typeid` (`get_task_queue`), through its proxy.
    /// It is a [`JoinableQueue`] if the server's queue counts `task_done`, as ours do and
    /// CPython's `JoinableQueue` does; on others its `task_done` fails with the server's
    /// error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?;
    /// server.register_queue::<i64>("get_task_queue").put(5)?;
    /// let running = server.serve_in_background()?;
    ///
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let tasks = manager.queue::<i64>("get_task_queue")?;
    /// assert_eq!(tasks.get_timeout(Duration::from_secs(1))?, 5);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no such typeid.
    pub fn queue<T: Serialize + DeserializeOwned>(&self, typeid: &str) -> Result<JoinableQueue<T>> {
        let flavor = self.queue_flavor(typeid, Vec::new(), 0)?;
        Ok(JoinableQueue::of(Queue::of(flavor)))
    }

    /// A new queue on the server holding at most `maxsize` items (`SyncManager.Queue(maxsize)`):
    /// `put` waits for room, `try_put` fails with [`ErrorKind::Full`](crate::ErrorKind::Full).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ErrorKind, ManagerClient, ManagerServer};
    ///
    /// let running = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"k")?.serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"k")?;
    /// let q = manager.bounded_queue::<u8>(1)?;
    /// q.put(1)?;
    /// assert!(q.is_full());
    /// assert_eq!(q.try_put(2).unwrap_err().kind(), ErrorKind::Full);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Queue` typeid.
    pub fn bounded_queue<T: Serialize + DeserializeOwned>(&self, maxsize: u32) -> Result<Queue<T>> {
        let args = vec![Value::Int(i64::from(maxsize))];
        self.queue_flavor("Queue", args, maxsize).map(Queue::of)
    }

    /// A new joinable queue on the server (`SyncManager.JoinableQueue()`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?;
    /// let running = server.serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let jobs = manager.joinable_queue::<u32>()?;
    /// jobs.put(1)?;
    /// let worker = jobs.clone();
    /// let t = std::thread::spawn(move || -> multiproc::Result<u32> {
    ///     let job = worker.get_timeout(Duration::from_secs(10))?;
    ///     worker.task_done()?;
    ///     Ok(job)
    /// });
    /// jobs.join()?; // returns once the worker called task_done
    /// assert_eq!(t.join().unwrap()?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `JoinableQueue`
    /// typeid.
    pub fn joinable_queue<T: Serialize + DeserializeOwned>(&self) -> Result<JoinableQueue<T>> {
        let flavor = self.queue_flavor("JoinableQueue", Vec::new(), 0)?;
        Ok(JoinableQueue::of(Queue::of(flavor)))
    }

    fn queue_flavor(&self, typeid: &str, args: Vec<Value>, maxsize: u32) -> Result<Flavor> {
        let what = format!("queue {typeid:?} on a manager");
        let proxy = self.proxy(typeid, args, what)?;
        let mut queue = ManagerQueue::from_proxy(proxy, typeid);
        queue.handle.maxsize = maxsize;
        Ok(Flavor::Manager(Arc::new(queue)))
    }
}

/// A queue on a manager server, through its proxy.
pub(in crate::queue) struct ManagerQueue {
    proxy: Proxy,
    /// Connections to the server not in use: a thread takes one for its call (or opens one)
    /// and gives it back, so that one thread's blocking `get` does not hold up another's
    /// `put` (CPython gives each thread a connection of its own).
    idle: Mutex<Vec<WireConnection>>,
    handle: ManagerHandle,
    closed: super::Closed,
    /// A `join` waiting on a connection of its own: a manager's `join` has no timeout, so
    /// `join_timeout` leaves one waiting in a thread and asks it, and the next `join` or
    /// `join_timeout` picks it up (at most one per handle).
    joiner: Mutex<Option<mpsc::Receiver<Result<()>>>>,
    /// Connections on which an awaited `get` was asked and then dropped before its reply:
    /// the next `get` takes the reply (see `awaiting.rs`).
    #[cfg(all(feature = "async", not(loom)))]
    in_flight: Mutex<Vec<WireConnection>>,
}

/// What a handle sent to another process carries: enough to connect again (the authkey
/// included, as CPython's children inherit it).
#[derive(Clone, Serialize, Deserialize)]
pub(in crate::queue) struct ManagerHandle {
    tcp: Option<String>,
    unix: Option<PathBuf>,
    authkey: Vec<u8>,
    typeid: String,
    /// The server's id of this very queue, and the methods it exposes.
    ident: String,
    exposed: Vec<String>,
    /// The item limit the queue was made with, if this side made it (0: none, or unknown).
    #[serde(default)]
    maxsize: u32,
}

impl ManagerHandle {
    fn new(
        address: &Address,
        authkey: &[u8],
        typeid: &str,
        ident: &str,
        exposed: Vec<String>,
    ) -> Self {
        let (tcp, unix) = match address {
            Address::Tcp(a) => (Some(a.to_string()), None),
            Address::Unix(p) => (None, Some(p.clone())),
        };
        ManagerHandle {
            tcp,
            unix,
            authkey: authkey.to_vec(),
            typeid: typeid.to_string(),
            ident: ident.to_string(),
            exposed,
            maxsize: 0,
        }
    }
}

impl ManagerQueue {
    fn from_proxy(proxy: Proxy, typeid: &str) -> ManagerQueue {
        let manager = proxy.manager();
        let (ident, exposed) = proxy.token();
        let handle = ManagerHandle::new(
            manager.address(),
            manager.authkey(),
            typeid,
            ident,
            exposed.to_vec(),
        );
        ManagerQueue {
            proxy,
            idle: Mutex::new(Vec::new()),
            handle,
            closed: super::Closed::default(),
            joiner: Mutex::new(None),
            #[cfg(all(feature = "async", not(loom)))]
            in_flight: Mutex::new(Vec::new()),
        }
    }

    /// Connects to the queue the server at `address` registered as `typeid`.
    pub(in crate::queue) fn connect(
        address: &Address,
        authkey: &[u8],
        typeid: &str,
    ) -> Result<Self> {
        let manager = ManagerClient::connect(address, authkey)?;
        let what = format!("queue {typeid:?} on a manager");
        Ok(ManagerQueue::from_proxy(
            manager.proxy(typeid, Vec::new(), what)?,
            typeid,
        ))
    }

    /// Attaches again, from a handle sent by another process, to the very queue it named
    /// (not a new one: a typeid such as `Queue` makes a new queue per call).
    pub(in crate::queue) fn reopen(handle: ManagerHandle) -> Result<Self> {
        let address = match (&handle.tcp, &handle.unix) {
            (Some(a), _) => Address::tcp(a.as_str())?,
            (None, Some(p)) => Address::unix(p.clone()),
            (None, None) => {
                return Err(Error::protocol("queue", "a manager handle without address"));
            }
        };
        let manager = ManagerClient::connect(&address, &handle.authkey)?;
        let what = format!("queue {:?} on a manager", handle.typeid);
        let proxy = manager.attach(&handle.ident, handle.exposed.clone(), what)?;
        Ok(ManagerQueue {
            proxy,
            idle: Mutex::new(Vec::new()),
            handle,
            closed: super::Closed::default(),
            joiner: Mutex::new(None),
            #[cfg(all(feature = "async", not(loom)))]
            in_flight: Mutex::new(Vec::new()),
        })
    }

    /// Calls `method` on a connection no other thread is using.
    fn call(&self, method: &str, args: Vec<Value>, kwds: Vec<(Value, Value)>) -> Result<Value> {
        // The proxy's own connection first: a handle used by one thread at a time needs no
        // other.
        if let Some(mut conn) = self.proxy.own_connection() {
            return self.proxy.call_on(&mut conn, method, args, kwds);
        }
        let idle = self.idle.lock().ignore_poison().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.proxy.connection()?,
        };
        let reply = self.proxy.call_on(&mut conn, method, args, kwds);
        // A connection that failed may be half way through a message: it goes.
        let broken = reply.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                ErrorKind::Io | ErrorKind::Closed | ErrorKind::Protocol
            )
        });
        let mut idle = self.idle.lock().ignore_poison();
        if !broken && idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
        reply
    }

    pub(in crate::queue) fn handle(&self) -> ManagerHandle {
        self.handle.clone()
    }

    fn what(&self) -> String {
        format!("queue {:?} on a manager", self.handle.typeid)
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(|| self.what())
    }

    /// `queue.Empty`/`queue.Full` after a wait with a timeout is our `Timeout`, as for the
    /// other flavors.
    fn waited_out(&self, e: Error, kind: ErrorKind, timed: bool, waited: Duration) -> Error {
        if timed && e.kind() == kind {
            Error::timeout(self.what(), waited)
        } else {
            e
        }
    }

    fn joiner_lost(&self) -> Error {
        Error::protocol(
            self.what(),
            "the thread waiting in join() ended without an answer",
        )
    }

    fn join(&self) -> Result<()> {
        self.call("join", Vec::new(), Vec::new()).map(drop)
    }
}

impl QueueFlavor for ManagerQueue {
    fn close(&self) {
        self.closed.close();
    }

    fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        let item = pickle::to_value(item)?;
        let (method, kwds) = call_form("put", deadline, block);
        self.call(method, vec![item], kwds)
            .map(drop)
            .map_err(|e| self.waited_out(e, ErrorKind::Full, block && deadline.is_some(), waited))
    }

    fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T> {
        self.check_open()?;
        #[cfg(all(feature = "async", not(loom)))]
        {
            // A reply a dropped awaiting `get` left comes first.
            let patience = match (block, deadline) {
                (false, _) => Some(Duration::ZERO),
                (true, None) => None,
                (true, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            };
            if let Some(v) = self.adopt_in_flight(patience) {
                return Ok(pickle::from_value(v?)?);
            }
        }
        let (method, kwds) = call_form("get", deadline, block);
        let v = self.call(method, Vec::new(), kwds).map_err(|e| {
            self.waited_out(e, ErrorKind::Empty, block && deadline.is_some(), waited)
        })?;
        Ok(pickle::from_value(v)?)
    }

    fn task_done(&self) -> Result<()> {
        self.call("task_done", Vec::new(), Vec::new()).map(drop)
    }

    /// Waits until every item put is marked done, until `deadline` if there is one.
    fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
        let mut joiner = self.joiner.lock().ignore_poison();
        let Some(deadline) = deadline else {
            return match joiner.take() {
                Some(waiting) => waiting.recv().unwrap_or_else(|_| Err(self.joiner_lost())),
                None => self.join(),
            };
        };
        let waiting = match joiner.take() {
            Some(waiting) => waiting,
            None => {
                let (tx, rx) = mpsc::channel();
                let handle = self.handle.clone();
                std::thread::Builder::new()
                    .name("multiproc-join".into())
                    .spawn(move || {
                        let joined = ManagerQueue::reopen(handle).and_then(|q| q.join());
                        let _ = tx.send(joined);
                    })
                    .map_err(|e| Error::io("starting a thread to join a manager's queue", e))?;
                rx
            }
        };
        match waiting.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(joined) => joined,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                *joiner = Some(waiting);
                Err(Error::timeout(self.what(), waited))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.joiner_lost()),
        }
    }

    fn len(&self) -> usize {
        self.call("qsize", Vec::new(), Vec::new())
            .and_then(|v| Ok(pickle::from_value(v)?))
            .unwrap_or(0)
    }

    fn is_full(&self) -> bool {
        self.call("full", Vec::new(), Vec::new())
            .and_then(|v| Ok(pickle::from_value(v)?))
            .unwrap_or(false)
    }

    fn maxsize(&self) -> u32 {
        self.handle.maxsize
    }

    fn unfinished(&self) -> Result<u64> {
        Err(Error::Unsupported {
            what: self.what(),
            operation: "unfinished",
            detail: "a manager's queue does not expose its count of unfinished items".into(),
        })
    }

    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        f.field("typeid", &self.handle.typeid)
            .field("ident", &self.handle.ident);
    }
}

#[cfg(all(feature = "async", not(loom)))]
impl Drop for ManagerQueue {
    fn drop(&mut self) {
        self.return_in_flight();
    }
}

/// The method and keyword arguments of a `put`/`get` that blocks until `deadline`, or not.
fn call_form(
    method: &'static str,
    deadline: Option<Instant>,
    block: bool,
) -> (&'static str, Vec<(Value, Value)>) {
    match (block, deadline) {
        (false, _) => (
            if method == "put" {
                "put_nowait"
            } else {
                "get_nowait"
            },
            Vec::new(),
        ),
        (true, None) => (method, Vec::new()),
        (true, Some(d)) => {
            let left = d.saturating_duration_since(Instant::now());
            (
                method,
                vec![(Value::str("timeout"), Value::Float(left.as_secs_f64()))],
            )
        }
    }
}
