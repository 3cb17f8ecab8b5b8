//! A manager server that CPython's `BaseManager` clients can use: named queues, dicts and
//! locks, `SyncManager`'s typeids and user types served over TCP or a Unix socket, speaking
//! `multiprocessing.managers`' own protocol (see
//! `docs/cpython-manager-protocol.md` §3).
//!
//! Each connection gets its own thread, so a `get`, `join`, barrier or condition `wait` blocked
//! on one connection never holds up another. Requests are decoded with the crate's pickle codec, which never executes anything.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod array;
mod containers;
mod managed;
mod objects;
mod python;
mod stored;
mod sync_objects;
mod xmlrpc;

pub use managed::{Managed, MethodCall};
pub(crate) use xmlrpc::fuzz_decode as xmlrpc_fuzz;

use self::array::ServedArray;
use self::containers::{ServedDict, ServedList, py_error};
use self::managed::ManagedObject;
use self::objects::{
    LOCK_EXPOSED, Reply, ServedEvent, ServedLock, ServedNamespace, ServedObject, ServedSemaphore,
    ServedValue, exception,
};
use self::stored::{ProxyRefs, proxies_in};
use self::sync_objects::{ServedBarrier, ServedCondition};
use crate::connection::wire::{Address, Listener, WireConnection};
use crate::error::{Error, Result};
use crate::pickle::{self, Value};
use crate::sync::lock;
use crate::sync::wait_until;

/// What a CPython client sees as the methods of a queue (3.11's `queue.Queue`).
pub(crate) const QUEUE_EXPOSED: &[&str] = &[
    "empty",
    "full",
    "get",
    "get_nowait",
    "join",
    "put",
    "put_nowait",
    "qsize",
    "task_done",
];

struct QueueState {
    items: VecDeque<Value>,
    unfinished: u64,
    /// At most this many items (0: no limit), as `queue.Queue(maxsize)`.
    maxsize: usize,
}

impl QueueState {
    fn full(&self) -> bool {
        self.maxsize > 0 && self.items.len() >= self.maxsize
    }
}

/// A queue the server owns, shared by its remote clients and the serving process.
pub(crate) struct ServedQueue {
    name: String,
    state: Mutex<QueueState>,
    changed: Condvar,
    /// Futures of the serving process awaiting a change (feature `async`).
    #[cfg(all(feature = "async", not(loom)))]
    wakers: crate::aio::Wakers,
}

impl ServedQueue {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        lock(&self.state).full()
    }

    /// Items put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        lock(&self.state).unfinished
    }

    pub(crate) fn maxsize(&self) -> usize {
        lock(&self.state).maxsize
    }

    /// Wakes whoever waits for a change: threads and futures.
    fn notify(&self) {
        self.changed.notify_all();
        #[cfg(all(feature = "async", not(loom)))]
        self.wakers.wake_all();
    }

    /// What futures of the serving process wait on (feature `async`).
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn wakers(&self) -> &crate::aio::Wakers {
        &self.wakers
    }

    /// Puts an item once there is room, waiting until `deadline` (`None`: for ever) if
    /// `block`; whether it went in.
    pub(crate) fn put_waiting(&self, item: Value, block: bool, deadline: Option<Instant>) -> bool {
        let deadline = if block {
            deadline
        } else {
            Some(Instant::now())
        };
        let (mut s, room) = wait_until(&self.changed, lock(&self.state), deadline, |s| !s.full());
        if !room {
            return false;
        }
        s.items.push_back(item);
        s.unfinished += 1;
        self.notify();
        true
    }

    /// One more item dealt with; false if there was none left to finish.
    pub(crate) fn task_done(&self) -> bool {
        let mut s = lock(&self.state);
        if s.unfinished == 0 {
            return false;
        }
        s.unfinished -= 1;
        if s.unfinished == 0 {
            self.notify();
        }
        true
    }

    /// Waits until every item put is done (or `deadline`); whether they are.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> bool {
        wait_until(&self.changed, lock(&self.state), deadline, |s| {
            s.unfinished == 0
        })
        .1
    }

    /// Takes an item, waiting until `deadline` (`None`: for ever); `None` if none came.
    pub(crate) fn get(&self, block: bool, deadline: Option<Instant>) -> Option<Value> {
        let deadline = if block {
            deadline
        } else {
            Some(Instant::now())
        };
        let mut item = None;
        let _held = wait_until(&self.changed, lock(&self.state), deadline, |s| {
            item = s.items.pop_front();
            item.is_some()
        });
        if item.is_some() {
            // A putter may be waiting for room.
            self.notify();
        }
        item
    }
}

/// An object the server holds.
#[derive(Clone)]
enum Served {
    Queue(Arc<ServedQueue>),
    /// A lock, which a `Condition` may be built on.
    Lock(Arc<ServedLock>),
    Object(Arc<dyn ServedObject>),
}

impl Served {
    fn exposed(&self) -> &'static [&'static str] {
        match self {
            Served::Queue(_) => QUEUE_EXPOSED,
            Served::Lock(_) => LOCK_EXPOSED,
            Served::Object(o) => o.exposed(),
        }
    }

    /// `repr(obj)`, as `str(proxy)` shows it.
    fn repr(&self) -> String {
        match self {
            Served::Queue(q) => format!("<queue.Queue object {:?}>", q.name),
            Served::Lock(l) => l.repr(),
            Served::Object(o) => o.repr(),
        }
    }

    /// The idents of this server's objects that proxies stored in it refer to.
    fn stored_proxies(&self, refs: &dyn ProxyRefs) -> Vec<String> {
        match self {
            Served::Queue(q) => {
                let mut found = Vec::new();
                lock(&q.state)
                    .items
                    .iter()
                    .for_each(|v| proxies_in(refs, v, &mut found));
                found
            }
            Served::Lock(_) => Vec::new(),
            Served::Object(o) => o.stored_proxies(refs),
        }
    }
}

struct Entry {
    object: Served,
    refs: i64,
    /// Registered by name: lives as long as the server, whatever the counts say.
    pinned: bool,
}

/// Makes a new user object for `create(typeid, *args, **kwds)`.
type Factory = Arc<dyn Fn(&MethodCall<'_>) -> Result<Arc<dyn Managed>> + Send + Sync>;

#[derive(Default)]
struct Registry {
    /// typeid (`get_task_queue`) → the ident of its (single) queue.
    by_typeid: HashMap<String, String>,
    /// typeid → a factory: each `create` makes a new object.
    factories: HashMap<String, Factory>,
    /// ident → the object and its reference count.
    by_ident: HashMap<String, Entry>,
}

/// Connections served at once unless set otherwise; more are closed at once (each costs a
/// thread).
const MAX_CONNECTIONS: usize = 1024;

struct ServerShared {
    connections: std::sync::atomic::AtomicUsize,
    max_connections: std::sync::atomic::AtomicUsize,
    registry: Mutex<Registry>,
    next_ident: AtomicU64,
    stop: AtomicBool,
    address: Address,
    /// Shared-memory segments `SharedMemoryManager` clients asked us to unlink at shutdown.
    segments: Mutex<Vec<String>>,
}

/// The most segments a server tracks for `SharedMemoryManager` clients.
const MAX_SEGMENTS: usize = 1 << 16;

/// A manager server for CPython clients (the server side of `BaseManager`): register named
/// queues, then serve. A CPython worker does
/// `QueueManager.register('get_task_queue'); m = QueueManager(address=..., authkey=...);
/// m.connect(); q = m.get_task_queue(); q.get(timeout=1)` against it, and `except queue.Empty`
/// works.
///
/// # Examples
///
/// ```
/// use multiproc::{Address, ManagerServer};
///
/// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?;
/// let tasks = server.register_queue::<i64>("get_task_queue");
/// tasks.put(7)?;
/// let running = server.serve_in_background()?;
/// // ... CPython workers connect to running.address() ...
/// running.shutdown();
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ManagerServer {
    listener: Listener,
    shared: Arc<ServerShared>,
}

impl fmt::Debug for ManagerServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerServer")
            .field("address", self.listener.address())
            .finish_non_exhaustive()
    }
}

impl ManagerServer {
    /// Listens on `address`; clients must know `authkey`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if it cannot bind.
    pub fn bind(address: &Address, authkey: &[u8]) -> Result<ManagerServer> {
        let listener = Listener::bind(address, authkey)?;
        let shared = Arc::new(ServerShared {
            connections: std::sync::atomic::AtomicUsize::new(0),
            max_connections: std::sync::atomic::AtomicUsize::new(MAX_CONNECTIONS),
            registry: Mutex::new(Registry::default()),
            next_ident: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            address: listener.address().clone(),
            segments: Mutex::new(Vec::new()),
        });
        Ok(ManagerServer { listener, shared })
    }

    /// The address clients connect to.
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// Registers a queue under `typeid` (see `ManagerServer::register_queue`, beside the
    /// manager flavor of `Queue`): the queue and its id on the server.
    pub(crate) fn serve_queue(&mut self, typeid: &str) -> (Arc<ServedQueue>, String) {
        let mut reg = lock(&self.shared.registry);
        let existing = reg
            .by_typeid
            .get(typeid)
            .and_then(|ident| reg.by_ident.get(ident));
        if let Some(Entry {
            object: Served::Queue(q),
            ..
        }) = existing
        {
            let ident = reg.by_typeid[typeid].clone();
            return (q.clone(), ident);
        }
        let ident = format!(
            "{:x}",
            self.shared.next_ident.fetch_add(1, Ordering::Relaxed)
        );
        let queue = new_queue(typeid, 0);
        reg.by_typeid.insert(typeid.to_string(), ident.clone());
        reg.by_ident.insert(
            ident.clone(),
            Entry {
                object: Served::Queue(queue.clone()),
                refs: 1,
                pinned: true,
            },
        );
        (queue, ident)
    }

    /// The authkey clients must know.
    pub(crate) fn authkey(&self) -> Vec<u8> {
        self.listener.credentials().0
    }

    /// Serves at most `n` connections at once (default 1024); a connection beyond is closed
    /// at once. Each connection has a thread of its own.
    pub fn set_max_connections(&mut self, n: usize) {
        self.shared
            .max_connections
            .store(n.max(1), Ordering::Relaxed);
    }

    /// Registers a user type under `typeid`: each client `create` (a CPython client calling
    /// `manager.Typeid()` after `Manager.register('Typeid')`) gets a new object from `factory`;
    /// return the same `Arc` each time for a shared one.
    pub fn register<M: Managed>(
        &mut self,
        typeid: &str,
        factory: impl Fn() -> Arc<M> + Send + Sync + 'static,
    ) {
        self.register_with_args(typeid, move |_: &MethodCall<'_>| Ok(factory()));
    }

    /// Like [`register`](Self::register), for a type made from the arguments of `create`
    /// (a CPython client's `manager.Typeid(5, name='x')`, our
    /// [`ManagerClient::create`](crate::ManagerClient::create)): the factory reads them as a
    /// method reads its own. An error it returns reaches the client as a remote error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use multiproc::{Address, Managed, ManagerClient, ManagerServer, MethodCall};
    ///
    /// struct Counter(Mutex<i64>);
    ///
    /// impl Managed for Counter {
    ///     fn methods(&self) -> &'static [&'static str] {
    ///         &["add"]
    ///     }
    ///     fn call(&self, _method: &str, call: &mut MethodCall<'_>) -> multiproc::Result<()> {
    ///         let mut n = self.0.lock().unwrap();
    ///         *n += call.arg::<i64>(0, "by")?;
    ///         call.ret(&*n)
    ///     }
    /// }
    ///
    /// let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"abc")?;
    /// server.register_with_args("Counter", |args: &MethodCall<'_>| {
    ///     Ok(Arc::new(Counter(Mutex::new(args.arg(0, "start")?))))
    /// });
    /// let running = server.serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"abc")?;
    /// let counter = manager.create("Counter", &(40,))?;
    /// assert_eq!(counter.call::<i64>("add", &(2,))?, 42);
    /// assert!(manager.create("Counter", &()).is_err(), "no start given");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn register_with_args<M: Managed>(
        &mut self,
        typeid: &str,
        factory: impl Fn(&MethodCall<'_>) -> Result<Arc<M>> + Send + Sync + 'static,
    ) {
        let factory: Factory = Arc::new(move |args: &MethodCall<'_>| -> Result<Arc<dyn Managed>> {
            Ok(factory(args)?)
        });
        lock(&self.shared.registry)
            .factories
            .insert(typeid.to_string(), factory);
    }

    /// Registers a dict under `typeid` (one dict for every client that asks for it).
    pub fn register_dict(&mut self, typeid: &str) {
        self.register_pinned(typeid, || Served::Object(Arc::new(ServedDict::default())));
    }

    /// Registers a list under `typeid` (one list for every client that asks for it).
    pub fn register_list(&mut self, typeid: &str) {
        self.register_pinned(typeid, || Served::Object(Arc::new(ServedList::default())));
    }

    /// Registers a lock under `typeid` (one lock for every client that asks for it). A lock
    /// whose holder's connection ends is released.
    pub fn register_lock(&mut self, typeid: &str) {
        self.register_pinned(typeid, || Served::Lock(Arc::new(ServedLock::default())));
    }

    fn register_pinned(&mut self, typeid: &str, make: impl FnOnce() -> Served) {
        let mut reg = lock(&self.shared.registry);
        if reg.by_typeid.contains_key(typeid) {
            return;
        }
        let ident = format!(
            "{:x}",
            self.shared.next_ident.fetch_add(1, Ordering::Relaxed)
        );
        reg.by_typeid.insert(typeid.to_string(), ident.clone());
        reg.by_ident.insert(
            ident,
            Entry {
                object: make(),
                refs: 1,
                pinned: true,
            },
        );
    }

    /// Serves on a background thread until [`RunningServer::shutdown`] or a client's
    /// `shutdown` request.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the thread cannot start.
    pub fn serve_in_background(self) -> Result<RunningServer> {
        let shared = self.shared.clone();
        let address = self.listener.address().clone();
        let thread = std::thread::Builder::new()
            .name("multiproc-manager".into())
            .spawn(move || self.serve_forever())
            .map_err(|e| Error::io("manager: cannot start its thread", e))?;
        Ok(RunningServer {
            shared,
            address,
            thread: Some(thread),
        })
    }

    /// Serves on this thread until a client's `shutdown` request (or
    /// [`RunningServer::shutdown`] from elsewhere).
    pub fn serve_forever(self) {
        let (authkey, timeout) = self.listener.credentials();
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut conn = match self.listener.accept_unauthenticated() {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors, say: do not spin on it.
                    tracing::warn!("manager: accept failed: {e}");
                    std::thread::park_timeout(Duration::from_millis(10));
                    continue;
                }
            };
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let shared = self.shared.clone();
            let max = shared.max_connections.load(Ordering::Relaxed);
            if shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("manager: {max} connections already; dropping one");
                continue;
            }
            let authkey = authkey.clone();
            let spawned = std::thread::Builder::new()
                .name("multiproc-manager-conn".into())
                .spawn(move || {
                    match conn.authenticate_as_server(&authkey, timeout) {
                        Ok(()) => serve_connection(&shared, &mut Peer::new(conn)),
                        Err(e) => tracing::warn!("manager: dropped a connection: {e}"),
                    }
                    shared.connections.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A server serving in the background.
#[derive(Debug)]
pub struct RunningServer {
    shared: Arc<ServerShared>,
    address: Address,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The address clients connect to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Stops accepting connections and waits for the accepting thread; connections being
    /// served finish their current request.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        wake_accept_loop(&self.address);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerShared")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Wakes a blocked `accept` with a connection of our own, so that it sees the stop flag.
fn wake_accept_loop(address: &Address) {
    match address {
        Address::Tcp(a) => drop(std::net::TcpStream::connect(a)),
        Address::Unix(p) => drop(std::os::unix::net::UnixStream::connect(p)),
    }
}

/// A client's connection, and the serializer it speaks: pickle, or XML-RPC
/// (`BaseManager(serializer='xmlrpclib')`), known from its first message.
struct Peer {
    wire: WireConnection,
    xmlrpc: bool,
}

impl Peer {
    fn new(wire: WireConnection) -> Peer {
        Peer {
            wire,
            xmlrpc: false,
        }
    }

    /// The next request, decoded; `None` when the connection is gone.
    fn request(&mut self) -> Option<std::result::Result<Request, String>> {
        let bytes = self.wire.recv_bytes().ok()?;
        let value = if xmlrpc::is_xmlrpc(&bytes) {
            self.xmlrpc = true;
            xmlrpc::decode(&bytes).map_err(|e| format!("bad request: {e}"))
        } else {
            pickle::decode(&bytes).map_err(|e| format!("bad request: {e}"))
        };
        Some(value.and_then(parse_request))
    }

    fn send(&mut self, kind: &str, value: Value) -> Result<()> {
        let message = Value::Tuple(vec![Value::str(kind), value]);
        if !self.xmlrpc {
            return self.wire.send_bytes(&pickle::encode(&message)?);
        }
        // XML-RPC has no exceptions or tokens: those go as a traceback's text.
        let message = match message {
            Value::Tuple(mut parts) if kind == "#ERROR" || kind == "#PROXY" => {
                let value = parts.pop().unwrap_or(Value::None);
                Value::List(vec![
                    Value::str("#TRACEBACK"),
                    Value::Str(format!("{kind} {value}")),
                ])
            }
            other => other,
        };
        let bytes = match xmlrpc::encode(&message) {
            Ok(bytes) => bytes,
            Err(e) => xmlrpc::encode(&Value::List(vec![
                Value::str("#TRACEBACK"),
                Value::Str(format!("TypeError: {e}")),
            ]))
            .map_err(|e| Error::protocol("manager: an XML-RPC reply", e))?,
        };
        self.wire.send_bytes(&bytes)
    }
}

/// A reply: `('#RETURN', value)`, `('#ERROR', exception)` or `('#TRACEBACK', text)`.
fn reply(conn: &mut Peer, kind: &str, value: Value) -> Result<()> {
    conn.send(kind, value)
}

fn traceback(conn: &mut Peer, text: String) -> Result<()> {
    reply(conn, "#TRACEBACK", Value::Str(text))
}

/// A request `(ident, funcname, args, kwds)`.
struct Request {
    ident: Option<String>,
    func: String,
    args: Vec<Value>,
    kwds: Vec<(Value, Value)>,
}

fn parse_request(value: Value) -> std::result::Result<Request, String> {
    let (Value::Tuple(mut parts) | Value::List(mut parts)) = value else {
        return Err("a request is a 4-tuple".into());
    };
    if parts.len() != 4 {
        return Err(format!("a request is a 4-tuple, not {} items", parts.len()));
    }
    let kwds = match parts.pop() {
        Some(Value::Dict(items)) => items,
        _ => return Err("kwds must be a dict".into()),
    };
    let args = match parts.pop() {
        Some(Value::Tuple(items) | Value::List(items)) => items,
        _ => return Err("args must be a tuple".into()),
    };
    let func = match parts.pop() {
        Some(Value::Str(s)) => s,
        _ => return Err("the function name must be a str".into()),
    };
    let ident = match parts.pop() {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    };
    Ok(Request {
        ident,
        func,
        args,
        kwds,
    })
}

impl Request {
    /// Argument `i` or keyword `name` (Python's binding of `get(block=True, timeout=None)`).
    fn arg(&self, i: usize, name: &str) -> Option<&Value> {
        self.args.get(i).or_else(|| {
            self.kwds
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v)
        })
    }

    fn flag(&self, i: usize, name: &str, default: bool) -> bool {
        match self.arg(i, name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Int(n)) => *n != 0,
            Some(Value::None) | None => default,
            Some(_) => true,
        }
    }

    /// The deadline of the `timeout` argument at `i` (`None`: wait for ever), or the
    /// `ValueError` to raise for a bad one.
    fn deadline(&self, i: usize) -> std::result::Result<Option<Instant>, Value> {
        match self.timeout(i) {
            Ok(t) => Ok(t.and_then(|t| Instant::now().checked_add(t))),
            Err(e) => Err(Value::reduce("builtins", "ValueError", vec![Value::Str(e)])),
        }
    }

    fn timeout(&self, i: usize) -> std::result::Result<Option<Duration>, String> {
        let secs = match self.arg(i, "timeout") {
            None | Some(Value::None) => return Ok(None),
            Some(Value::Int(n)) => *n as f64,
            Some(Value::Float(f)) => *f,
            Some(other) => {
                return Err(format!(
                    "timeout must be a number, not {}",
                    other.type_name()
                ));
            }
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err("'timeout' must be a non-negative number".into());
        }
        Ok(Some(Duration::from_secs_f64(secs.min(1e9))))
    }
}

fn serve_connection(shared: &ServerShared, conn: &mut Peer) {
    let Some(first) = conn.request() else { return };
    let request = match first {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("manager: malformed request: {e}");
            let _ = traceback(conn, e);
            return;
        }
    };
    let outcome = match request.func.as_str() {
        "dummy" => reply(conn, "#RETURN", Value::None),
        "create" => create(shared, conn, &request),
        "incref" | "decref" => refcount(shared, conn, &request),
        "number_of_objects" => {
            let n = lock(&shared.registry).by_ident.len() as i64;
            reply(conn, "#RETURN", Value::Int(n))
        }
        "debug_info" => reply(conn, "#RETURN", Value::Str(debug_info(shared))),
        // `SharedMemoryManager`'s: segments the clients made, unlinked at shutdown.
        "track_segment" | "release_segment" => segment(shared, conn, &request),
        "list_segments" => {
            let names = lock(&shared.segments).iter().map(Value::str).collect();
            reply(conn, "#RETURN", Value::List(names))
        }
        "shutdown" => {
            for name in std::mem::take(&mut *lock(&shared.segments)) {
                let _ = crate::platform::shm_unlink(&name);
            }
            shared.stop.store(true, Ordering::Release);
            // CPython's server answers twice; its clients read one reply.
            let _ = reply(conn, "#RETURN", Value::None);
            let sent = reply(conn, "#RETURN", Value::None);
            wake_accept_loop(&shared.address);
            sent
        }
        "accept_connection" => {
            if reply(conn, "#RETURN", Value::None).is_ok() {
                serve_proxy_calls(shared, conn);
            }
            return;
        }
        other => traceback(
            conn,
            format!("KeyError: {other:?} is not a public function"),
        ),
    };
    let _ = outcome;
}

/// `track_segment(name)` or `release_segment(name)` of a `SharedMemoryManager` client.
fn segment(shared: &ServerShared, conn: &mut Peer, request: &Request) -> Result<()> {
    let Some(name) = request.args.first().and_then(Value::as_str) else {
        return traceback(conn, "TypeError: a segment name must be a str".into());
    };
    let mut segments = lock(&shared.segments);
    if request.func == "track_segment" {
        if segments.len() >= MAX_SEGMENTS {
            drop(segments);
            return traceback(
                conn,
                format!("MemoryError: {MAX_SEGMENTS} segments tracked already"),
            );
        }
        segments.push(name.to_string());
    } else {
        segments.retain(|n| n != name);
        drop(segments);
        let _ = crate::platform::shm_unlink(name);
    }
    reply(conn, "#RETURN", Value::None)
}

/// What `_debug_info()` shows: each object's ident, reference count and the start of its
/// `repr`, as CPython's `Server.debug_info`.
fn debug_info(shared: &ServerShared) -> String {
    // Taken out of the registry before any object is locked for its repr: objects lock the
    // registry while locked themselves (counting references), never the other way round.
    let mut entries: Vec<(String, i64, Served)> = lock(&shared.registry)
        .by_ident
        .iter()
        .map(|(ident, e)| (ident.clone(), e.refs, e.object.clone()))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let lines: Vec<String> = entries
        .into_iter()
        .map(|(ident, refs, object)| {
            let repr: String = object.repr().chars().take(75).collect();
            format!("  {ident}:       refcount={refs}\n    {repr}")
        })
        .collect();
    lines.join("\n")
}

fn new_queue(name: &str, maxsize: usize) -> Arc<ServedQueue> {
    Arc::new(ServedQueue {
        name: name.to_string(),
        state: Mutex::new(QueueState {
            items: VecDeque::new(),
            unfinished: 0,
            maxsize,
        }),
        changed: Condvar::new(),
        #[cfg(all(feature = "async", not(loom)))]
        wakers: crate::aio::Wakers::default(),
    })
}

fn create(shared: &ServerShared, conn: &mut Peer, request: &Request) -> Result<()> {
    let Some(typeid) = request.args.first().and_then(Value::as_str) else {
        return traceback(conn, "create needs a typeid".into());
    };
    let rest = &request.args[1..];
    let kwds = &request.kwds;
    let mut reg = lock(&shared.registry);
    if let Some(ident) = reg.by_typeid.get(typeid).cloned() {
        // A registered object: the same one for everybody.
        let exposed = match reg.by_ident.get_mut(&ident) {
            Some(entry) => {
                entry.refs += 1;
                entry.object.exposed()
            }
            None => &[],
        };
        drop(reg);
        return created(conn, ident, exposed);
    }
    let factory = reg.factories.get(typeid).cloned();
    let condition_lock = (typeid == "Condition").then(|| condition_lock(&reg, rest, kwds));
    // Objects are made without the registry locked: a big array, or user code, takes time.
    drop(reg);
    let object = |o: Arc<dyn ServedObject>| Served::Object(o);
    let traceback_of = |text: String| Reply::Traceback(text);
    // SyncManager's own typeids first (a new object per call), then the user's.
    let made: std::result::Result<Served, Reply> = match typeid {
        "dict" => ServedDict::new(rest, kwds)
            .map(|d| object(Arc::new(d)))
            .map_err(py_error),
        "list" => ServedList::new(rest)
            .map(|l| object(Arc::new(l)))
            .map_err(py_error),
        "Queue" | "JoinableQueue" => queue_maxsize(rest, kwds)
            .map(|n| Served::Queue(new_queue(typeid, n)))
            .map_err(traceback_of),
        "Lock" => Ok(Served::Lock(Arc::new(ServedLock::default()))),
        "RLock" => Ok(Served::Lock(Arc::new(ServedLock::reentrant()))),
        "Event" => Ok(object(Arc::new(ServedEvent::default()))),
        "Value" => Ok(object(Arc::new(ServedValue::from_args(rest)))),
        "Namespace" => Ok(object(Arc::new(ServedNamespace::from_kwds(kwds)))),
        "Semaphore" => Ok(object(Arc::new(ServedSemaphore::from_args(rest, false)))),
        "BoundedSemaphore" => Ok(object(Arc::new(ServedSemaphore::from_args(rest, true)))),
        "Array" => ServedArray::from_args(rest)
            .map(|a| object(Arc::new(a)))
            .map_err(traceback_of),
        "Barrier" => ServedBarrier::from_args(rest, kwds)
            .map(|b| object(Arc::new(b)))
            .map_err(traceback_of),
        "Condition" => match condition_lock {
            Some(Ok(l)) => Ok(object(Arc::new(ServedCondition::new(l)))),
            Some(Err(e)) => Err(traceback_of(e)),
            None => Err(traceback_of("the condition's lock went missing".into())),
        },
        _ => match factory {
            Some(make) => {
                let args = MethodCall::new(rest, kwds);
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make(&args))) {
                    Ok(Ok(made)) => Ok(object(Arc::new(ManagedObject(made)))),
                    Ok(Err(e)) => Err(traceback_of(format!(
                        "the factory of {typeid:?} failed: {e}"
                    ))),
                    Err(_) => Err(traceback_of(format!("the factory of {typeid:?} panicked"))),
                }
            }
            None => Err(traceback_of(format!(
                "KeyError: {typeid:?} is not registered"
            ))),
        },
    };
    let made = match made {
        Ok(made) => made,
        Err(Reply::Error(e)) => return reply(conn, "#ERROR", e),
        Err(Reply::Traceback(t)) => return traceback(conn, t),
        Err(Reply::Return(_)) => return traceback(conn, "create failed".into()),
    };
    // Proxies among its first contents (`manager.list([other_proxy])`) are held by it.
    let held = made.stored_proxies(&Refs::of(shared));
    if !held.is_empty() {
        Refs::of(shared).changed(Vec::new(), held);
    }
    let exposed = made.exposed();
    let ident = format!("{:x}", shared.next_ident.fetch_add(1, Ordering::Relaxed));
    lock(&shared.registry).by_ident.insert(
        ident.clone(),
        Entry {
            object: made,
            refs: 1,
            pinned: false,
        },
    );
    created(conn, ident, exposed)
}

/// `create`'s reply: `(ident, exposed)`.
fn created(conn: &mut Peer, ident: String, exposed: &[&str]) -> Result<()> {
    let exposed = exposed.iter().map(|m| Value::str(*m)).collect();
    reply(
        conn,
        "#RETURN",
        Value::Tuple(vec![Value::Str(ident), Value::Tuple(exposed)]),
    )
}

/// The lock a `Condition(lock)` is built on: `None` for none given (the condition makes an
/// `RLock`), or one of this server's locks passed as a proxy (CPython's `RebuildProxy` with
/// its `Token`; found by ident whatever address the token names).
fn condition_lock(
    reg: &Registry,
    args: &[Value],
    kwds: &[(Value, Value)],
) -> std::result::Result<Option<Arc<ServedLock>>, String> {
    let given = args.first().or_else(|| {
        kwds.iter()
            .find(|(k, _)| k.as_str() == Some("lock"))
            .map(|(_, v)| v)
    });
    let proxy = match given {
        None | Some(Value::None) => return Ok(None),
        Some(v) => v,
    };
    let ident = proxy_ident(proxy)
        .ok_or("TypeError: Condition() takes a lock proxy of this manager or nothing")?;
    match reg.by_ident.get(ident).map(|e| &e.object) {
        Some(Served::Lock(l)) => Ok(Some(l.clone())),
        _ => Err(format!("KeyError: no lock {ident:?} on this server")),
    }
}

/// The object ident in a pickled proxy:
/// `RebuildProxy(proxytype, Token, serializer, kwds)`, the `Token` built by `NEWOBJ` +
/// `BUILD((typeid, address, id))` or `REDUCE`.
fn proxy_ident(value: &Value) -> Option<&str> {
    proxy_token(value).map(|(_, ident)| ident)
}

/// The address and ident of a pickled proxy's `Token`.
fn proxy_token(value: &Value) -> Option<(&Value, &str)> {
    let rebuild = value.as_object()?;
    if rebuild.global() != Some(("multiprocessing.managers", "RebuildProxy")) {
        return None;
    }
    let token = rebuild.args.get(1)?.as_object()?;
    if token.global() != Some(("multiprocessing.managers", "Token")) {
        return None;
    }
    let fields = match &token.state {
        Some(Value::Tuple(fields)) => fields,
        _ => &token.args,
    };
    Some((fields.get(1)?, fields.get(2)?.as_str()?))
}

/// Whether a token's `address` can be this server's: the same socket path, or the same port
/// on a host that is not plainly another (a name, one of our addresses, any loopback one for a
/// loopback server).
fn is_our_address(ours: &Address, address: &Value) -> bool {
    match (ours, address) {
        (Address::Unix(path), Value::Str(p)) => path.as_os_str() == p.as_str(),
        (Address::Tcp(ours), Value::Tuple(hp) | Value::List(hp)) => {
            let (Some(Value::Str(host)), Some(Value::Int(port))) = (hp.first(), hp.get(1)) else {
                return false;
            };
            if i64::from(ours.port()) != *port {
                return false;
            }
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    ip == ours.ip()
                        || ours.ip().is_unspecified()
                        || (ip.is_loopback() && ours.ip().is_loopback())
                }
                Err(_) => true,
            }
        }
        _ => false,
    }
}

/// The server's side of [`ProxyRefs`]: a proxy stored in an object holds a reference at once;
/// one that leaves gives it back when the client that took it out makes its next request
/// (`deferred`), or at once when there is no such client.
struct Refs<'a> {
    shared: &'a ServerShared,
    deferred: Option<&'a mut Vec<String>>,
}

impl<'a> Refs<'a> {
    fn of(shared: &'a ServerShared) -> Refs<'a> {
        Refs {
            shared,
            deferred: None,
        }
    }
}

impl ProxyRefs for Refs<'_> {
    fn ident_of(&self, v: &Value) -> Option<String> {
        let (address, ident) = proxy_token(v)?;
        is_our_address(&self.shared.address, address).then(|| ident.to_string())
    }

    fn changed(&mut self, before: Vec<String>, after: Vec<String>) {
        let mut net: HashMap<String, i64> = HashMap::new();
        for ident in before {
            *net.entry(ident).or_default() -= 1;
        }
        for ident in after {
            *net.entry(ident).or_default() += 1;
        }
        net.retain(|_, n| *n != 0);
        if net.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        {
            let mut reg = lock(&self.shared.registry);
            for (ident, n) in net {
                if n > 0 {
                    if let Some(entry) = reg.by_ident.get_mut(&ident) {
                        entry.refs += n;
                    }
                } else {
                    gone.extend(std::iter::repeat_n(ident, n.unsigned_abs() as usize));
                }
            }
        }
        match &mut self.deferred {
            Some(later) => later.append(&mut gone),
            None => release(self.shared, gone),
        }
    }
}

/// Gives back one reference to each of `idents`; an object left with none goes, and gives
/// back the references its stored proxies held, and so on. The registry is never locked
/// while an object is (objects lock it when they count references).
fn release(shared: &ServerShared, mut idents: Vec<String>) {
    while !idents.is_empty() {
        let mut gone = Vec::new();
        {
            let mut reg = lock(&shared.registry);
            for ident in idents.drain(..) {
                if let Some(entry) = reg.by_ident.get_mut(&ident) {
                    entry.refs -= 1;
                    // Registered objects stay whatever the count says; others go at zero.
                    if entry.refs <= 0 && !entry.pinned {
                        gone.extend(reg.by_ident.remove(&ident).map(|e| e.object));
                    }
                }
            }
        }
        let refs = Refs::of(shared);
        for object in gone {
            idents.extend(object.stored_proxies(&refs));
        }
    }
}

fn refcount(shared: &ServerShared, conn: &mut Peer, request: &Request) -> Result<()> {
    let Some(ident) = request.args.first().and_then(Value::as_str) else {
        return traceback(conn, "TypeError: incref/decref take an ident".into());
    };
    if request.func == "incref" {
        let mut reg = lock(&shared.registry);
        match reg.by_ident.get_mut(ident) {
            Some(entry) => entry.refs += 1,
            // As CPython 3.9+: an object already gone cannot come back.
            None => {
                drop(reg);
                return traceback(conn, format!("KeyError: no object {ident:?} to incref"));
            }
        }
    } else {
        release(shared, vec![ident.to_string()]);
    }
    reply(conn, "#RETURN", Value::None)
}

fn serve_proxy_calls(shared: &ServerShared, conn: &mut Peer) {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
    let me = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    // The objects this connection holds part of (locks, conditions' locks), each once.
    let mut holds: Vec<Arc<dyn ServedObject>> = Vec::new();
    // References to give back once this client has rebuilt the proxies it was sent.
    let mut deferred: Vec<String> = Vec::new();
    while let Some(request) = conn.request() {
        release(shared, std::mem::take(&mut deferred));
        let sent = match request {
            Ok(request) => call(shared, conn, &request, me, &mut holds, &mut deferred),
            Err(e) => traceback(conn, e),
        };
        if sent.is_err() {
            break;
        }
    }
    release(shared, deferred);
    // The client is gone: locks it held would otherwise be held for ever.
    for object in holds {
        object.connection_closed(me);
    }
}

/// Keeps `holds` up to date after connection `me` called `object`: in it while the
/// connection holds part of the object, out of it (and not kept alive) otherwise.
fn note_hold(holds: &mut Vec<Arc<dyn ServedObject>>, object: &Arc<dyn ServedObject>, me: u64) {
    let at = holds
        .iter()
        .position(|h| std::ptr::addr_eq(Arc::as_ptr(h), Arc::as_ptr(object)));
    match (object.held_by(me), at) {
        (true, None) => holds.push(object.clone()),
        (false, Some(i)) => drop(holds.swap_remove(i)),
        _ => {}
    }
}

/// Makes `object` a new server object and answers `('#PROXY', (exposed, Token))`: the
/// client builds a proxy of `typeid` for it (then increfs it and drops `create`'s reference).
fn proxy_reply(
    shared: &ServerShared,
    conn: &mut Peer,
    typeid: &str,
    object: Arc<dyn ServedObject>,
) -> Result<()> {
    let ident = format!("{:x}", shared.next_ident.fetch_add(1, Ordering::Relaxed));
    let exposed = object.exposed().iter().map(|m| Value::str(*m)).collect();
    lock(&shared.registry).by_ident.insert(
        ident.clone(),
        Entry {
            object: Served::Object(object),
            refs: 1,
            pinned: false,
        },
    );
    let address = match &shared.address {
        Address::Tcp(a) => Value::Tuple(vec![
            Value::str(a.ip().to_string()),
            Value::Int(i64::from(a.port())),
        ]),
        Address::Unix(p) => Value::str(p.display().to_string()),
    };
    let token = Value::reduce(
        "multiprocessing.managers",
        "Token",
        vec![Value::str(typeid), address, Value::Str(ident)],
    );
    reply(
        conn,
        "#PROXY",
        Value::Tuple(vec![Value::Tuple(exposed), token]),
    )
}

/// `queue.Queue(maxsize=0)`'s argument: 0 or less means no limit, as in CPython.
fn queue_maxsize(args: &[Value], kwds: &[(Value, Value)]) -> std::result::Result<usize, String> {
    let given = args.first().or_else(|| {
        kwds.iter()
            .find(|(k, _)| k.as_str() == Some("maxsize"))
            .map(|(_, v)| v)
    });
    match given {
        None | Some(Value::None) => Ok(0),
        Some(Value::Int(n)) => Ok(usize::try_from(*n).unwrap_or(0)),
        Some(other) => Err(format!(
            "TypeError: maxsize must be an int, not {}",
            other.type_name()
        )),
    }
}

fn empty_error() -> Value {
    Value::reduce("queue", "Empty", Vec::new())
}

fn call(
    shared: &ServerShared,
    conn: &mut Peer,
    request: &Request,
    me: u64,
    holds: &mut Vec<Arc<dyn ServedObject>>,
    deferred: &mut Vec<String>,
) -> Result<()> {
    let ident = request.ident.as_deref().unwrap_or("");
    let object = lock(&shared.registry)
        .by_ident
        .get(ident)
        .map(|e| e.object.clone());
    let Some(object) = object else {
        return traceback(conn, format!("KeyError: no object {ident:?}"));
    };
    let answer = |conn: &mut Peer, r: Reply| match r {
        Reply::Return(v) => reply(conn, "#RETURN", v),
        Reply::Error(e) => reply(conn, "#ERROR", e),
        Reply::Traceback(t) => traceback(conn, t),
    };
    // What CPython's server answers for any object (its `fallback_mapping`).
    match request.func.as_str() {
        "__repr__" | "__str__" => return reply(conn, "#RETURN", Value::Str(object.repr())),
        "#GETVALUE" => {
            let value = match &object {
                Served::Object(o) => o.value(),
                _ => None,
            };
            return match value {
                Some(v) => reply(conn, "#RETURN", v),
                None => traceback(conn, "AttributeError: no value to copy".into()),
            };
        }
        _ => {}
    }
    if !object.exposed().contains(&request.func.as_str()) {
        let exposed: Vec<Value> = object.exposed().iter().map(|m| Value::str(*m)).collect();
        // Not the object's repr: a big dict's would cost as much as the dict.
        let message = format!(
            "method '{}' of the object is not in exposed={}",
            request.func,
            Value::Tuple(exposed)
        );
        return answer(conn, exception("AttributeError", vec![Value::Str(message)]));
    }
    let queue = match object {
        Served::Queue(q) => q,
        Served::Object(o) if request.func == "__iter__" => {
            return match o.iterator() {
                Some(it) => proxy_reply(shared, conn, "Iterator", it),
                None => traceback(conn, "TypeError: the object is not iterable".into()),
            };
        }
        Served::Object(o) => {
            let mut refs = Refs {
                shared,
                deferred: Some(deferred),
            };
            let r = o.call_storing(me, &mut refs, &request.func, &request.args, &request.kwds);
            note_hold(holds, &o, me);
            return answer(conn, r);
        }
        Served::Lock(l) => {
            let object: Arc<dyn ServedObject> = l;
            let r = object.call_from(me, &request.func, &request.args, &request.kwds);
            note_hold(holds, &object, me);
            return answer(conn, r);
        }
    };
    match request.func.as_str() {
        "get" | "get_nowait" => {
            let block = request.func == "get" && request.flag(0, "block", true);
            let deadline = match request.deadline(1) {
                Ok(d) => d,
                Err(e) => return reply(conn, "#ERROR", e),
            };
            match queue.get(block, deadline) {
                Some(item) => {
                    // Proxies in the item go with it: the client rebuilds them.
                    proxies_in(&Refs::of(shared), &item, deferred);
                    reply(conn, "#RETURN", item)
                }
                None => reply(conn, "#ERROR", empty_error()),
            }
        }
        "put" | "put_nowait" => {
            let Some(item) = request.arg(0, "item") else {
                return traceback(conn, "TypeError: put() missing 'item'".into());
            };
            let block = request.func == "put" && request.flag(1, "block", true);
            let deadline = match request.deadline(2) {
                Ok(d) => d,
                Err(e) => return reply(conn, "#ERROR", e),
            };
            let mut carried = Vec::new();
            proxies_in(&Refs::of(shared), item, &mut carried);
            if !carried.is_empty() {
                // Held while queued: taken before the item can be got.
                Refs::of(shared).changed(Vec::new(), carried.clone());
            }
            if queue.put_waiting(item.clone(), block, deadline) {
                reply(conn, "#RETURN", Value::None)
            } else {
                release(shared, carried);
                reply(conn, "#ERROR", Value::reduce("queue", "Full", Vec::new()))
            }
        }
        "qsize" => reply(
            conn,
            "#RETURN",
            Value::Int(lock(&queue.state).items.len() as i64),
        ),
        "empty" => reply(
            conn,
            "#RETURN",
            Value::Bool(lock(&queue.state).items.is_empty()),
        ),
        "full" => reply(conn, "#RETURN", Value::Bool(lock(&queue.state).full())),
        "task_done" => {
            if queue.task_done() {
                reply(conn, "#RETURN", Value::None)
            } else {
                let e = Value::reduce(
                    "builtins",
                    "ValueError",
                    vec![Value::str("task_done() called too many times")],
                );
                reply(conn, "#ERROR", e)
            }
        }
        // Blocks this connection's thread only: every connection has its own.
        "join" => {
            queue.join(None);
            reply(conn, "#RETURN", Value::None)
        }
        other => traceback(
            conn,
            format!("AttributeError: method {other:?} of a queue is not exposed"),
        ),
    }
}

/// For the fuzz targets: an authenticated peer's proxy calls, against objects of each kind
/// that never blocks.
pub(crate) mod fuzz {
    use std::io::Read;

    use super::*;

    /// The objects served, by ident: a dict, a list, a namespace, a value and an array (a
    /// lock, queue or event could block the connection for ever, as it may a real client).
    pub(crate) const IDENTS: [&str; 5] = ["1", "2", "3", "4", "5"];

    /// `data` as CPython-framed messages: each chunk is a little-endian `u16` length and that
    /// many bytes (the last one cut short by the end of `data`), framed with its true length.
    fn frames(mut data: &[u8]) -> Vec<u8> {
        let mut stream = Vec::with_capacity(data.len() * 2);
        while let [lo, hi, rest @ ..] = data {
            let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
            let len = u32::try_from(n).unwrap_or(u32::MAX);
            stream.extend(len.to_be_bytes());
            stream.extend(&rest[..n]);
            data = &rest[n..];
        }
        stream
    }

    /// Serves the proxy calls of `data` (see [`frames`]) on one connection, as after
    /// `accept_connection`; returns the bytes of the replies. Must end (the peer's sending
    /// side is closed after them), never panic, and keep memory bounded.
    pub(crate) fn proxy_calls(data: &[u8]) -> Vec<u8> {
        // Lists multiplied call after call would grow to millions of items: bounded lower,
        // so that a run explores calls rather than copies.
        super::python::lower_max_items(1 << 12);
        let Some((conn, mut peer)) = crate::connection::wire::fuzz::connection_fed(&frames(data))
        else {
            return Vec::new();
        };
        let shared = ServerShared {
            connections: std::sync::atomic::AtomicUsize::new(0),
            max_connections: std::sync::atomic::AtomicUsize::new(MAX_CONNECTIONS),
            registry: Mutex::new(Registry::default()),
            next_ident: AtomicU64::new(100),
            stop: AtomicBool::new(false),
            address: Address::Unix("/fuzz".into()),
            segments: Mutex::new(Vec::new()),
        };
        let array =
            match ServedArray::from_args(&[Value::str("i"), Value::List(vec![Value::Int(0); 4])]) {
                Ok(a) => a,
                Err(_) => return Vec::new(),
            };
        let objects = [
            Served::Object(Arc::new(ServedDict::default())),
            Served::Object(Arc::new(ServedList::default())),
            Served::Object(Arc::new(ServedNamespace::from_kwds(&[]))),
            Served::Object(Arc::new(ServedValue::from_args(&[
                Value::str("i"),
                Value::Int(0),
            ]))),
            Served::Object(Arc::new(array)),
        ];
        {
            let mut reg = lock(&shared.registry);
            for (ident, object) in IDENTS.iter().zip(objects) {
                let entry = Entry {
                    object,
                    refs: 1,
                    pinned: true,
                };
                reg.by_ident.insert((*ident).to_string(), entry);
            }
        }
        // Our replies must not fill the socket: the peer reads them all.
        let _ = peer.set_nonblocking(false);
        let reader = std::thread::spawn(move || {
            let mut replies = Vec::new();
            let _ = peer.read_to_end(&mut replies);
            replies
        });
        let mut peer_conn = Peer::new(conn);
        serve_proxy_calls(&shared, &mut peer_conn);
        drop(peer_conn);
        reader.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    use super::fuzz::{IDENTS, proxy_calls};
    use crate::pickle::{self, Value};

    /// Small pickleable values, nested a little.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (-3i64..20).prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            "[a-z_]{0,8}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Tuple),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                proptest::collection::vec((inner.clone(), inner), 0..3).prop_map(Value::Dict),
            ]
        })
    }

    /// The methods of the served objects, some that exist nowhere, and `#GETVALUE`.
    fn methods() -> Vec<&'static str> {
        let others = [
            "__getattribute__",
            "__setattr__",
            "__delattr__",
            "__getslice__",
            "__setslice__",
            "set",
            "#GETVALUE",
            "__repr__",
            "__str__",
            "no_such_method",
        ];
        let served = super::containers::DICT_EXPOSED
            .iter()
            .chain(super::containers::LIST_EXPOSED);
        served.copied().chain(others).collect()
    }

    /// A proxy call `(ident, method, args, kwds)`, as a client pickles it.
    fn call() -> impl Strategy<Value = Vec<u8>> {
        let ident = prop_oneof![
            proptest::sample::select(&IDENTS[..]).prop_map(Value::str),
            "[0-9a-f]{1,3}".prop_map(Value::Str),
            value(),
        ];
        let kwds = proptest::collection::vec(("[a-z]{1,6}".prop_map(Value::Str), value()), 0..2);
        (
            ident,
            proptest::sample::select(methods()),
            proptest::collection::vec(value(), 0..4),
            kwds,
        )
            .prop_map(|(ident, method, args, kwds)| {
                let request = Value::Tuple(vec![
                    ident,
                    Value::str(method),
                    Value::Tuple(args),
                    Value::Dict(kwds),
                ]);
                pickle::encode(&request).unwrap_or_default()
            })
    }

    /// Chunks as the fuzz target reads them: a little-endian `u16` length, then the bytes.
    fn chunked(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut data = Vec::new();
        for m in messages {
            data.extend((m.len() as u16).to_le_bytes());
            data.extend(m);
        }
        data
    }

    /// The harness does reach the objects: a stored item comes back.
    #[test]
    fn the_harness_serves_real_calls() {
        let call = |ident: &str, method: &str, args: Vec<Value>| {
            let request = Value::Tuple(vec![
                Value::str(ident),
                Value::str(method),
                Value::Tuple(args),
                Value::Dict(vec![]),
            ]);
            pickle::encode(&request).unwrap()
        };
        let replies = proxy_calls(&chunked(&[
            call("1", "__setitem__", vec![Value::str("k"), Value::Int(41)]),
            call("1", "__getitem__", vec![Value::str("k")]),
            call("2", "append", vec![Value::str("x")]),
            call("2", "__len__", vec![]),
        ]));
        // Four framed replies; the second and fourth carry 41 and 1.
        let mut rest = &replies[..];
        let mut got = Vec::new();
        while let [a, b, c, d, tail @ ..] = rest {
            let n = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            got.push(pickle::decode(&tail[..n]).unwrap());
            rest = &tail[n..];
        }
        assert_eq!(got.len(), 4, "{got:?}");
        let returned = |v: &Value| match v {
            Value::Tuple(t) if t.len() == 2 && t[0].as_str() == Some("#RETURN") => t[1].clone(),
            other => panic!("not a return: {other}"),
        };
        assert!(pickle::same(&returned(&got[1]), &Value::Int(41)));
        assert!(pickle::same(&returned(&got[3]), &Value::Int(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Well-formed calls with any arguments, on any object: each answered (a value or an
        /// error), never a panic or a hang.
        #[test]
        fn arbitrary_proxy_calls_never_panic(calls in proptest::collection::vec(call(), 1..24)) {
            let _ = proxy_calls(&chunked(&calls));
        }

        /// Well-formed calls with a byte or two changed, and bytes with no form at all.
        #[test]
        fn damaged_proxy_calls_never_panic(
            calls in proptest::collection::vec(call(), 1..8),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut data = chunked(&calls);
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] ^= byte;
            }
            data.extend(noise);
            let _ = proxy_calls(&data);
        }
    }
}
